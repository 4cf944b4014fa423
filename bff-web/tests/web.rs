//! The web BFF on real sockets.

use bff_tests::{Stack, TestBff};
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn web_profile_is_richer_than_mobile_profile() {
    let stack = Stack::start().await;
    let web = TestBff::start(&bff_web::BFF, &stack, |_| {}).await;
    let mobile = TestBff::start(&bff_mobile::BFF, &stack, |_| {}).await;
    let token = stack.user_token("user-0042", "profile:read").await;
    let http = reqwest::Client::new();
    let web_res = http
        .get(format!("{}/api/profile", web.url))
        .bearer_auth(&token)
        .send()
        .await
        .expect("web");
    assert_eq!(web_res.status(), StatusCode::OK);
    let web_body: Value = web_res.json().await.expect("json");
    let mobile_body: Value = http
        .get(format!("{}/api/v2/user/profile", mobile.url))
        .bearer_auth(&token)
        .send()
        .await
        .expect("mobile")
        .json()
        .await
        .expect("json");
    assert_eq!(web_body["user"]["id"], "user-0042");
    assert!(web_body["user"]["email"].is_string(), "web shows the email");
    assert!(web_body["preferences"]["favourite_genres"].is_array());
    assert!(web_body.to_string().len() > mobile_body.to_string().len());
    assert!(!web_body.to_string().contains("internal"));
}

#[tokio::test]
async fn cors_allows_configured_origins_only() {
    let stack = Stack::start().await;
    let web = TestBff::start(&bff_web::BFF, &stack, |c| {
        c.client.cors_origins = vec!["https://app.example.com".into()]
    })
    .await;
    let http = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, format!("{}/api/profile", web.url))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let ok = preflight("https://app.example.com")
        .await
        .expect("preflight");
    assert_eq!(
        ok.headers()
            .get("access-control-allow-origin")
            .map(|v| v.as_bytes()),
        Some(&b"https://app.example.com"[..])
    );
    let other = preflight("https://evil.example").await.expect("preflight");
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

#[test]
fn the_shipped_configuration_is_valid() {
    let file = bff_tests::repo_path("deploy/config/web.toml");
    let out = bff_tests::check_config(env!("CARGO_BIN_EXE_bff-web"), &file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
