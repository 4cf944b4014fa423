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

/// Reads an event stream until `done` holds for what arrived, or 10 s pass; returns the text.
async fn read_until(res: &mut reqwest::Response, done: impl Fn(&str) -> bool) -> String {
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done(&text) {
        let chunk = tokio::time::timeout_at(deadline, res.chunk()).await;
        match chunk {
            Ok(Ok(Some(bytes))) => text.push_str(&String::from_utf8_lossy(&bytes)),
            _ => break,
        }
    }
    text
}

#[tokio::test]
async fn events_stream_state_changes_and_heartbeats_and_end_on_drain() {
    use demo_backends::proto::subscription::CreateSubscriptionRequest;
    use demo_backends::proto::subscription::subscription_service_client::SubscriptionServiceClient;

    let stack = Stack::start().await;
    let web = TestBff::start(&bff_web::BFF, &stack, |c| {
        c.client.events_poll_ms = 100;
        c.client.events_heartbeat_secs = 1;
    })
    .await;
    let http = reqwest::Client::new();
    let no_scope = stack.user_token("user-0042", "profile:read").await;
    let res = http
        .get(format!("{}/api/events", web.url))
        .bearer_auth(&no_scope)
        .send()
        .await
        .expect("events");
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    let token = stack.user_token("user-0042", "events:read").await;
    let mut res = http
        .get(format!("{}/api/events", web.url))
        .bearer_auth(&token)
        .send()
        .await
        .expect("events");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    assert!(
        res.headers().contains_key("x-ratelimit-remaining"),
        "same limits as every route"
    );
    let first = read_until(&mut res, |t| {
        t.contains("event: subscription") && t.contains("event: recommendations")
    })
    .await;
    assert!(
        first.contains("event: subscription") && first.contains("event: recommendations"),
        "{first}"
    );

    let heartbeat = read_until(&mut res, |t| t.contains(": heartbeat")).await;
    assert!(heartbeat.contains(": heartbeat"), "{heartbeat}");
    assert!(
        !heartbeat.contains("event: subscription"),
        "no event without a change: {heartbeat}"
    );

    let mut grpc = SubscriptionServiceClient::connect(stack.grpc.clone())
        .await
        .expect("grpc");
    let created = grpc
        .create_subscription(CreateSubscriptionRequest {
            user_id: "user-0042".into(),
            plan: "premium".into(),
            partner_id: "acme".into(),
        })
        .await
        .expect("create")
        .into_inner();
    let change = read_until(&mut res, |t| t.contains(&created.id)).await;
    assert!(
        change.contains("event: subscription") && change.contains(&created.id),
        "{change}"
    );

    web.shutdown();
    let rest = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Ok(Some(_)) = res.chunk().await {}
    })
    .await;
    assert!(rest.is_ok(), "the stream ends when the gateway drains");
}

/// The title page takes the item and its related items from the content service's GraphQL API in
/// one query, beside the user's recommendations over REST.
#[tokio::test]
async fn the_title_page_is_one_graphql_query_and_a_rest_call() {
    let stack = Stack::start().await;
    let web = TestBff::start(&bff_web::BFF, &stack, |_| {}).await;
    let token = stack.user_token("user-0042", "feed:read").await;
    let http = reqwest::Client::new();
    let get = |path: &str| {
        http.get(format!("{}{path}", web.url))
            .bearer_auth(&token)
            .send()
    };
    let before = stack.hits().await["content"].as_u64().expect("hits");
    let res = get("/api/items/item-018").await.expect("item");
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["item"]["id"], "item-018");
    assert!(body["item"]["description"].is_string());
    assert!(
        body["item"]["image"]
            .as_str()
            .is_some_and(|i| i.ends_with("?w=1280"))
    );
    let related = body["item"]["related"].as_array().expect("related");
    assert!(!related.is_empty() && related.len() <= 6, "{body}");
    assert!(related[0]["title"].is_string());
    assert!(body["for_you"].is_array(), "{body}");
    assert_eq!(body["_meta"]["parts"]["item"]["outcome"], "ok");
    assert!(!body.to_string().contains("internal"));
    let calls = stack.hits().await["content"].as_u64().expect("hits") - before;
    assert_eq!(calls, 1, "item and related items in one GraphQL call");

    assert_eq!(
        get("/api/items/item-999999").await.expect("item").status(),
        StatusCode::NOT_FOUND
    );

    // Recommendations failing leave a partial page; the content service failing, none.
    stack.fault("recommendations", 0, 1.0).await;
    let res = get("/api/items/item-019").await.expect("item");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-degraded"], "for_you");
    stack.fault("content", 0, 1.0).await;
    let res = get("/api/items/item-020").await.expect("item");
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);

    // The GraphQL API itself bounds what one query may ask for.
    stack.reset().await;
    let deep = "{ item(id: \"item-018\") { related { related { related { related { related { related { id } } } } } } } }";
    let res: Value = http
        .post(format!("{}/graphql", stack.rest))
        .json(&serde_json::json!({ "query": deep }))
        .send()
        .await
        .expect("graphql")
        .json()
        .await
        .expect("json");
    assert!(res["errors"].is_array(), "{res}");
}
