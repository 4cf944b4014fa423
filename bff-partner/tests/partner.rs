//! The partner BFF on real sockets.

use bff_tests::{Stack, TestBff};
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn partner_keys_authenticate_and_users_tokens_do_not() {
    let stack = Stack::start().await;
    let partner = TestBff::start(&bff_partner::BFF, &stack, |_| {}).await;
    let key = stack.partner_key("acme").await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/subscriptions", partner.url);

    let res = http
        .get(&url)
        .header("x-api-key", &key)
        .send()
        .await
        .expect("list");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-ratelimit-limit"], "20");
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["data"], Value::Array(vec![]));

    let res = http.get(&url).bearer_auth(&key).send().await.expect("list");
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "Authorization: Bearer works too"
    );

    let res = http
        .get(&url)
        .header("x-api-key", "bffk_nope")
        .send()
        .await
        .expect("list");
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.json::<Value>().await.expect("json")["code"],
        "API_KEY_INVALID"
    );

    let jwt = stack.user_token("user-0042", "profile:read").await;
    let res = http.get(&url).bearer_auth(&jwt).send().await.expect("list");
    assert_eq!(
        res.status(),
        StatusCode::UNAUTHORIZED,
        "user tokens are not partner keys"
    );

    let res = http
        .get(format!("{url}?page_size=1000"))
        .header("x-api-key", &key)
        .send()
        .await
        .expect("list");
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        res.json::<Value>().await.expect("json")["code"],
        "QUERY_INVALID"
    );
}

#[tokio::test]
async fn a_burst_past_twenty_meets_429s() {
    let stack = Stack::start().await;
    let partner = TestBff::start(&bff_partner::BFF, &stack, |_| {}).await;
    let key = stack.partner_key("acme").await;
    let http = reqwest::Client::new();
    let mut limited = 0;
    for _ in 0..40 {
        let res = http
            .get(format!("{}/v1/subscriptions", partner.url))
            .header("x-api-key", &key)
            .send()
            .await
            .expect("list");
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(res.headers().contains_key("retry-after"));
            limited += 1;
        }
    }
    assert!(
        limited > 0,
        "40 back-to-back calls on a standard key meet 429s"
    );
}

#[test]
fn the_shipped_configuration_is_valid() {
    let file = bff_tests::repo_path("deploy/config/partner.toml");
    let out = bff_tests::check_config(env!("CARGO_BIN_EXE_bff-partner"), &file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
