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

/// `POST /v1/subscriptions` with a key.
async fn create(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    idempotency_key: Option<&str>,
    body: Value,
) -> reqwest::Response {
    let mut req = http
        .post(format!("{url}/v1/subscriptions"))
        .header("x-api-key", key)
        .json(&body);
    if let Some(k) = idempotency_key {
        req = req.header("idempotency-key", k);
    }
    req.send().await.expect("POST /v1/subscriptions")
}

async fn creates(stack: &Stack) -> u64 {
    stack.hits().await["subscription_create"]
        .as_u64()
        .expect("subscription_create count")
}

#[tokio::test]
async fn a_retried_post_replays_its_answer_without_a_second_write() {
    let stack = Stack::start().await;
    let partner = TestBff::start(&bff_partner::BFF, &stack, |_| {}).await;
    let key = stack.partner_key("acme").await;
    let http = reqwest::Client::new();
    let body = serde_json::json!({"user_id": "user-0042", "plan": "premium"});
    let before = creates(&stack).await;

    let first = create(&http, &partner.url, &key, Some("order-1"), body.clone()).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(!first.headers().contains_key("idempotent-replayed"));
    let location = first.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let first: Value = first.json().await.expect("json");
    assert_eq!(first["user_id"], "user-0042");
    assert_eq!(first["plan"], "premium");
    assert!(first["price"]["amount_cents"].as_i64().is_some(), "{first}");
    assert_eq!(
        location,
        format!("/v1/subscriptions/{}", first["id"].as_str().expect("id"))
    );

    let again = create(&http, &partner.url, &key, Some("order-1"), body.clone()).await;
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.expect("json"), first);
    assert_eq!(creates(&stack).await - before, 1, "one backend write");

    // The same key for another write is a client bug, refused precisely.
    let other = serde_json::json!({"user_id": "user-0042", "plan": "basic"});
    let reused = create(&http, &partner.url, &key, Some("order-1"), other).await;
    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        reused.json::<Value>().await.expect("json")["code"],
        "IDEMPOTENCY_KEY_REUSED"
    );

    // Keys belong to one partner: another partner's identical key is its own write.
    let globex = stack.partner_key("globex").await;
    let theirs = create(&http, &partner.url, &globex, Some("order-1"), body).await;
    assert_eq!(theirs.status(), StatusCode::CREATED);
    assert!(!theirs.headers().contains_key("idempotent-replayed"));
    assert_eq!(creates(&stack).await - before, 2);

    // The created subscription is readable by its partner only.
    let mine = http
        .get(format!("{}{location}", partner.url))
        .header("x-api-key", &key)
        .send()
        .await
        .expect("get");
    assert_eq!(mine.status(), StatusCode::OK);
    assert_eq!(mine.json::<Value>().await.expect("json"), first);
    let not_theirs = http
        .get(format!("{}{location}", partner.url))
        .header("x-api-key", &globex)
        .send()
        .await
        .expect("get");
    assert_eq!(not_theirs.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn twenty_concurrent_duplicates_write_once() {
    let stack = Stack::start().await;
    let partner = TestBff::start(&bff_partner::BFF, &stack, |_| {}).await;
    let key = stack.partner_key("acme").await;
    // Slow writes, so the duplicates really overlap the first.
    stack.fault("subscription", 200, 0.0).await;
    let http = reqwest::Client::new();
    let body = serde_json::json!({"user_id": "user-0007", "plan": "standard"});
    let before = creates(&stack).await;
    let answers = futures::future::join_all(
        (0..20).map(|_| create(&http, &partner.url, &key, Some("burst-1"), body.clone())),
    )
    .await;
    let mut bodies = Vec::new();
    for res in answers {
        assert_eq!(res.status(), StatusCode::CREATED);
        bodies.push(res.json::<Value>().await.expect("json"));
    }
    assert!(bodies.iter().all(|b| *b == bodies[0]), "identical answers");
    assert_eq!(creates(&stack).await - before, 1, "one backend write");
}

#[tokio::test]
async fn bad_writes_get_precise_problems() {
    let stack = Stack::start().await;
    let partner = TestBff::start(&bff_partner::BFF, &stack, |_| {}).await;
    let key = stack.partner_key("acme").await;
    let http = reqwest::Client::new();
    let before = creates(&stack).await;
    let good = serde_json::json!({"user_id": "user-0042", "plan": "basic"});
    for (idem, body, status, code) in [
        (None, good.clone(), 400, "IDEMPOTENCY_KEY_MISSING"),
        (
            Some("has space"),
            good.clone(),
            400,
            "IDEMPOTENCY_KEY_INVALID",
        ),
        (
            Some("k1"),
            serde_json::json!({"plan": "basic"}),
            400,
            "BODY_INVALID",
        ),
        (
            Some("k2"),
            serde_json::json!({"user_id": "user-0042", "plan": "gold"}),
            422,
            "VALIDATION_FAILED",
        ),
        (
            Some("k3"),
            serde_json::json!({"user_id": "user-9999", "plan": "basic"}),
            422,
            "USER_UNKNOWN",
        ),
    ] {
        let res = create(&http, &partner.url, &key, idem, body.clone()).await;
        assert_eq!(res.status().as_u16(), status, "{body}");
        assert_eq!(
            res.headers()["content-type"],
            "application/problem+json",
            "{body}"
        );
        assert_eq!(
            res.json::<Value>().await.expect("json")["code"],
            code,
            "{body}"
        );
    }
    let not_json = http
        .post(format!("{}/v1/subscriptions", partner.url))
        .header("x-api-key", &key)
        .header("idempotency-key", "k4")
        .body("user_id=1")
        .send()
        .await
        .expect("post");
    assert_eq!(not_json.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        creates(&stack).await - before,
        1,
        "only the unknown user, which only the backend can tell, reached it"
    );
    // A refused write frees its key: the corrected request goes through.
    let res = create(&http, &partner.url, &key, Some("k3"), good).await;
    assert_eq!(res.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn dated_versions_have_their_own_shapes() {
    let stack = Stack::start().await;
    let partner = TestBff::start(&bff_partner::BFF, &stack, |_| {}).await;
    let key = stack.partner_key("acme").await;
    let http = reqwest::Client::new();
    // Created in the oldest version's words: `user` and the plan then called `starter`.
    let res = http
        .post(format!("{}/v1/subscriptions", partner.url))
        .header("x-api-key", &key)
        .header("idempotency-key", "v-1")
        .header("partner-version", "2024-01-01")
        .json(&serde_json::json!({"user": "user-0100", "plan": "starter"}))
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["partner-version"], "2024-01-01");
    let old: Value = res.json().await.expect("json");
    assert_eq!(old["user"], "user-0100");
    assert_eq!(old["plan"], "starter");
    assert!(old["started_at"].is_i64(), "{old}");
    assert!(old.get("user_id").is_none());
    let id = old["id"].as_str().expect("id").to_owned();

    let get = |version: Option<&'static str>| {
        let mut req = http
            .get(format!("{}/v1/subscriptions/{id}", partner.url))
            .header("x-api-key", &key);
        if let Some(v) = version {
            req = req.header("partner-version", v);
        }
        req.send()
    };
    let now: Value = get(None).await.expect("get").json().await.expect("json");
    assert_eq!(now["user_id"], "user-0100");
    assert_eq!(now["plan"], "basic");
    assert!(now["started_at"].is_string(), "{now}");
    assert!(now["price"]["currency"].is_string(), "{now}");
    let middle: Value = get(Some("2024-09-01"))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(middle["user_id"], "user-0100");
    assert!(middle["price_cents"].is_i64(), "{middle}");
    assert_ne!(now, middle);
    assert_ne!(middle, old);

    let unknown = get(Some("2023-02-30")).await.expect("get");
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        unknown.json::<Value>().await.expect("json")["code"],
        "VERSION_UNKNOWN"
    );

    // Lists changed shape too.
    let list = |version: &'static str| {
        http.get(format!("{}/v1/subscriptions", partner.url))
            .header("x-api-key", &key)
            .header("partner-version", version)
            .send()
    };
    let old_list: Value = list("2024-01-01")
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(old_list["has_more"], false);
    assert_eq!(old_list["subscriptions"][0]["user"], "user-0100");
    let new_list: Value = list("2025-06-01")
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(new_list["data"][0], now);

    // A key pinned to the oldest version gets it without asking.
    let pinned = stack.partner_key_pinned("acme", Some("2024-01-01")).await;
    let res = http
        .get(format!("{}/v1/subscriptions/{id}", partner.url))
        .header("x-api-key", &pinned)
        .send()
        .await
        .expect("get");
    assert_eq!(res.headers()["partner-version"], "2024-01-01");
    assert_eq!(res.json::<Value>().await.expect("json"), old);
}

#[tokio::test]
async fn the_openapi_document_is_public_and_current() {
    let stack = Stack::start().await;
    let partner = TestBff::start(&bff_partner::BFF, &stack, |_| {}).await;
    let res = reqwest::get(format!("{}/openapi.json", partner.url))
        .await
        .expect("openapi");
    assert_eq!(res.status(), StatusCode::OK);
    let doc: Value = res.json().await.expect("json");
    assert!(doc["openapi"].as_str().expect("openapi").starts_with("3.1"));
    assert_eq!(doc["info"]["version"], "2025-06-01");
    for path in ["/v1/subscriptions", "/v1/subscriptions/{id}"] {
        assert!(doc["paths"][path].is_object(), "{path} documented");
    }
    assert!(doc["paths"]["/v1/subscriptions"]["post"].is_object());
    assert!(doc["components"]["securitySchemes"]["api_key"].is_object());
}

#[tokio::test]
async fn a_partner_cancels_its_own_subscriptions_once() {
    let stack = Stack::start().await;
    let partner = TestBff::start(&bff_partner::BFF, &stack, |_| {}).await;
    let key = stack.partner_key("acme").await;
    let http = reqwest::Client::new();
    let created: Value = create(
        &http,
        &partner.url,
        &key,
        Some("create-9"),
        serde_json::json!({"user_id": "user-0009", "plan": "standard"}),
    )
    .await
    .json()
    .await
    .expect("json");
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(created["status"], "active");
    let cancel = |key: &str, idem: &str| {
        http.post(format!("{}/v1/subscriptions/{id}/cancel", partner.url))
            .header("x-api-key", key)
            .header("idempotency-key", idem)
            .send()
    };

    let globex = stack.partner_key("globex").await;
    let res = cancel(&globex, "c-1").await.expect("cancel");
    assert_eq!(
        res.status(),
        StatusCode::NOT_FOUND,
        "not globex's to cancel"
    );

    let res = cancel(&key, "c-1").await.expect("cancel");
    assert_eq!(res.status(), StatusCode::OK);
    let cancelled: Value = res.json().await.expect("json");
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["id"], created["id"]);
    let again = cancel(&key, "c-1").await.expect("cancel");
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let missing = http
        .post(format!("{}/v1/subscriptions/{id}/cancel", partner.url))
        .header("x-api-key", &key)
        .send()
        .await
        .expect("cancel");
    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
    let now: Value = http
        .get(format!("{}/v1/subscriptions/{id}", partner.url))
        .header("x-api-key", &key)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(now["status"], "cancelled");
}
