//! The TV BFF on real sockets.

use bff_tests::{Stack, TestBff};
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn home_is_rows_of_tiles_and_served_stale_when_backends_fail() {
    let stack = Stack::start().await;
    // A TTL of zero makes every entry stale at once, as it would be after five minutes.
    let tv = TestBff::start(&bff_tv::BFF, &stack, |c| {
        c.cache.ttl_secs.insert("/api/home".into(), 0);
    })
    .await;
    let token = stack.user_token("user-0042", "feed:read").await;
    let http = reqwest::Client::new();
    let res = http
        .get(format!("{}/api/home", tv.url))
        .bearer_auth(&token)
        .send()
        .await
        .expect("home");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-cache"], "MISS");
    let fresh: Value = res.json().await.expect("json");
    let rows = fresh["rows"].as_array().expect("rows");
    let ids: Vec<&str> = rows.iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(ids, ["featured", "for_you", "trending", "sponsored"]);
    let tile = &rows[0]["tiles"][0];
    assert!(tile["title"].is_string());
    assert!(
        tile["image"]
            .as_str()
            .is_some_and(|u| u.ends_with("?size=640x360"))
    );
    assert!(
        tile["deep_link"]
            .as_str()
            .is_some_and(|u| u.starts_with("app://title/item-"))
    );

    stack.fault("content", 0, 1.0).await;
    stack.fault("recommendations", 0, 1.0).await;
    let res = http
        .get(format!("{}/api/home", tv.url))
        .bearer_auth(&token)
        .send()
        .await
        .expect("home");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-cache"], "STALE");
    assert_eq!(res.json::<Value>().await.expect("json"), fresh);

    // Without a stale entry the failure is honest.
    let other = stack.user_token("user-0043", "feed:read").await;
    let res = http
        .get(format!("{}/api/home", tv.url))
        .bearer_auth(&other)
        .send()
        .await
        .expect("home");
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
}

#[test]
fn the_shipped_configuration_is_valid() {
    let file = bff_tests::repo_path("deploy/config/tv.toml");
    let out = bff_tests::check_config(env!("CARGO_BIN_EXE_bff-tv"), &file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
