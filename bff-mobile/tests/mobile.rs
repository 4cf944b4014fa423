//! The mobile BFF on real sockets, against the real demo backends and identity provider.

use std::time::{Duration, Instant};

use bff_tests::{Stack, TestBff};
use reqwest::StatusCode;
use serde_json::{Value, json};

const PROFILE: &str = "/api/v2/user/profile";

async fn setup() -> (Stack, TestBff, String) {
    let stack = Stack::start().await;
    let bff = TestBff::start(&bff_mobile::BFF, &stack, |_| {}).await;
    let token = stack
        .user_token("user-0042", "profile:read feed:read")
        .await;
    (stack, bff, token)
}

/// The BFF's `/metrics` page.
async fn metrics(bff: &TestBff) -> String {
    reqwest::get(format!("{}/metrics", bff.url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

async fn get(bff: &TestBff, path: &str, token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{}{path}", bff.url))
        .bearer_auth(token)
        .send()
        .await
        .expect("request")
}

/// `POST /api/catalog/search` for `query`, its body streamed through the pass-through route:
/// the backend's answer, which names the query it read.
async fn search(bff: &TestBff, token: &str, query: &str) -> Value {
    let res = reqwest::Client::new()
        .post(format!("{}/api/catalog/search", bff.url))
        .bearer_auth(token)
        .json(&json!({"query": query, "limit": 3}))
        .send()
        .await
        .expect("search");
    assert_eq!(res.status(), StatusCode::OK);
    let found: Value = res.json().await.expect("json");
    assert_eq!(found["query"], query);
    found
}

fn header<'a>(res: &'a reqwest::Response, name: &str) -> &'a str {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn profile_aggregates_trims_and_caches() {
    let (stack, bff, token) = setup().await;
    let first = get(&bff, PROFILE, &token).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(header(&first, "x-cache"), "MISS");
    assert_eq!(header(&first, "x-ratelimit-remaining"), "99");
    assert!(!header(&first, "x-request-id").is_empty());
    let body: Value = first.json().await.expect("json");
    assert_eq!(body["user"]["id"], "user-0042");
    assert!(body["user"]["name"].is_string());
    assert!(body["subscription"]["plan"].is_string());
    assert!(body["preferences"]["language"].is_string());
    assert_eq!(body["_meta"]["complete"], true);
    let text = body.to_string();
    for secret in ["internal", "password", "billing", "email"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }

    let hits = stack.total_hits().await;
    let second = get(&bff, PROFILE, &token).await;
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(header(&second, "x-cache"), "HIT");
    assert_eq!(header(&second, "x-ratelimit-remaining"), "98");
    let cached: Value = second.json().await.expect("json");
    assert_eq!(cached, body);
    assert_eq!(
        stack.total_hits().await,
        hits,
        "a cache hit reaches no backend"
    );

    // Another user never sees this user's cached profile.
    let other = stack.user_token("user-0007", "profile:read").await;
    let res = get(&bff, PROFILE, &other).await;
    assert_eq!(header(&res, "x-cache"), "MISS");
    assert_eq!(
        res.json::<Value>().await.expect("json")["user"]["id"],
        "user-0007"
    );
}

#[tokio::test]
async fn credentials_are_checked() {
    let (stack, bff, _) = setup().await;
    let res = reqwest::get(format!("{}{PROFILE}", bff.url))
        .await
        .expect("request");
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(header(&res, "content-type"), "application/problem+json");
    assert!(header(&res, "www-authenticate").starts_with("Bearer"));
    assert_eq!(
        res.json::<Value>().await.expect("json")["code"],
        "CREDENTIALS_MISSING"
    );

    let expired = stack
        .token(json!({"sub": "user-0042", "scope": "profile:read", "ttl": -120}))
        .await;
    let res = get(&bff, PROFILE, &expired).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        header(&res, "www-authenticate"),
        "Bearer error=\"invalid_token\""
    );
    assert_eq!(
        res.json::<Value>().await.expect("json")["code"],
        "TOKEN_EXPIRED"
    );

    let other_audience = stack
        .token(json!({"sub": "user-0042", "scope": "profile:read", "aud": "bff-web"}))
        .await;
    let res = get(&bff, PROFILE, &other_audience).await;
    assert_eq!(
        res.json::<Value>().await.expect("json")["code"],
        "TOKEN_AUDIENCE_MISMATCH"
    );

    let res = get(&bff, PROFILE, "not.a.token").await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.json::<Value>().await.expect("json")["code"],
        "TOKEN_INVALID"
    );

    let feed_only = stack.user_token("user-0042", "feed:read").await;
    let res = get(&bff, PROFILE, &feed_only).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(header(&res, "www-authenticate").contains("insufficient_scope"));
    assert_eq!(
        res.json::<Value>().await.expect("json")["code"],
        "INSUFFICIENT_SCOPE"
    );
}

#[tokio::test]
async fn the_101st_call_in_a_minute_is_refused() {
    let (_stack, bff, token) = setup().await;
    for i in 0..100 {
        let res = get(&bff, PROFILE, &token).await;
        assert_eq!(res.status(), StatusCode::OK, "call {}", i + 1);
        assert_eq!(header(&res, "x-ratelimit-remaining"), (99 - i).to_string());
    }
    let res = get(&bff, PROFILE, &token).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = header(&res, "retry-after")
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry));
    assert_eq!(header(&res, "x-ratelimit-remaining"), "0");
    assert_eq!(header(&res, "ratelimit-policy"), "\"default\";q=100;w=60");
    assert_eq!(
        res.json::<Value>().await.expect("json")["code"],
        "RATE_LIMITED"
    );
}

#[tokio::test]
async fn a_slow_optional_part_gives_an_uncached_partial_answer() {
    let (stack, bff, token) = setup().await;
    stack.fault("subscription", 2000, 0.0).await;
    let start = Instant::now();
    let res = get(&bff, PROFILE, &token).await;
    assert!(
        start.elapsed() < Duration::from_millis(1900),
        "answered within the part timeout"
    );
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "x-degraded"), "subscription");
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["_meta"]["parts"]["subscription"]["outcome"], "timeout");
    assert_eq!(body["_meta"]["parts"]["user"]["outcome"], "ok");
    assert_eq!(body["subscription"], Value::Null);
    assert_eq!(body["user"]["id"], "user-0042");

    stack.reset().await;
    let res = get(&bff, PROFILE, &token).await;
    assert_eq!(
        header(&res, "x-cache"),
        "MISS",
        "the partial answer was not cached"
    );
    assert_eq!(header(&res, "x-degraded"), "");
}

#[tokio::test]
async fn a_failing_required_part_is_a_502() {
    let (stack, bff, token) = setup().await;
    stack.fault("user", 0, 1.0).await;
    let res = get(&bff, PROFILE, &token).await;
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["code"], "UPSTREAM_ERROR");
    assert!(
        !body.to_string().contains("injected"),
        "no upstream text reaches clients"
    );
}

#[tokio::test]
async fn home_feed_parts_run_in_parallel() {
    let (stack, bff, token) = setup().await;
    // Warm the connections so the measurement is about the parts.
    assert_eq!(
        get(
            &bff,
            "/api/home-feed",
            &stack.user_token("user-0001", "feed:read").await
        )
        .await
        .status(),
        StatusCode::OK
    );
    for service in ["content", "ads", "recommendations"] {
        stack.fault(service, 150, 0.0).await;
    }
    let start = Instant::now();
    let res = get(&bff, "/api/home-feed", &token).await;
    let elapsed = start.elapsed();
    assert_eq!(res.status(), StatusCode::OK);
    // Three 150 ms parts in sequence could not answer before 450 ms.
    assert!(
        elapsed >= Duration::from_millis(150) && elapsed < Duration::from_millis(450),
        "{elapsed:?}"
    );
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["_meta"]["complete"], true);
    assert!(
        body["feed"]
            .as_array()
            .is_some_and(|f| f.iter().any(|t| t["type"] == "ad"))
    );
    assert!(body["for_you"].as_array().is_some_and(|f| !f.is_empty()));
}

#[tokio::test]
async fn outdated_apps_are_told_to_upgrade() {
    let (_stack, bff, token) = setup().await;
    let http = reqwest::Client::new();
    let call = |path: &'static str, v: &'static str| {
        http.get(format!("{}{path}", bff.url))
            .bearer_auth(&token)
            .header("x-client-version", v)
            .send()
    };
    // The API routes and the pass-through ones alike; the refusal counts against the limits.
    for path in [PROFILE, "/api/catalog/items/item-018"] {
        let res = call(path, "iOS-1.9.9").await.expect("request");
        assert_eq!(res.status(), StatusCode::UPGRADE_REQUIRED, "{path}");
        assert!(
            res.headers().contains_key("x-ratelimit-remaining"),
            "{path}"
        );
        let body: Value = res.json().await.expect("json");
        assert_eq!(body["code"], "CLIENT_VERSION_UNSUPPORTED");
        assert_eq!(body["minimum_version"], "2.0.0");
        assert_eq!(
            call(path, "Android-2.3.1").await.expect("request").status(),
            StatusCode::OK,
            "{path}"
        );
        assert_eq!(
            call(path, "banana").await.expect("request").status(),
            StatusCode::BAD_REQUEST,
            "{path}"
        );
    }
    // A client that names no version is served; the operational routes ask for none.
    let res = http
        .get(format!("{}{PROFILE}", bff.url))
        .bearer_auth(&token)
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), StatusCode::OK);
    let res = http
        .get(format!("{}/healthz", bff.url))
        .header("x-client-version", "iOS-1.0.0")
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn identity_and_trace_reach_backends_and_forged_identity_does_not() {
    let (stack, bff, token) = setup().await;
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let res = reqwest::Client::new()
        .get(format!("{}{PROFILE}", bff.url))
        .bearer_auth(&token)
        .header("x-user-id", "user-0001")
        .header("traceparent", trace)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "content-encoding"), "gzip");
    let last: Value = stack
        .http
        .get(format!("{}/admin/last-traceparent", stack.rest))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let seen = last["user"].as_str().expect("user saw a traceparent");
    assert!(
        seen.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{seen}"
    );
    assert!(
        !seen.contains("00f067aa0ba902b7"),
        "each hop gets its own span id"
    );
    let identity: Value = stack
        .http
        .get(format!("{}/admin/last-identity", stack.rest))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(
        identity["user"], "user-0042",
        "backends hear the token's subject, not the forged header"
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let (_stack, bff, token) = setup().await;
    let res = get(&bff, "/api/nope", &token).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(header(&res, "content-type"), "application/problem+json");
    let res = reqwest::Client::new()
        .delete(format!("{}{PROFILE}", bff.url))
        .bearer_auth(&token)
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            reqwest::get(format!("{}{path}", bff.url))
                .await
                .expect("request")
                .status(),
            StatusCode::OK,
            "{path}"
        );
    }
}

#[tokio::test]
async fn a_failing_optional_upstream_is_cut_off_by_its_breaker() {
    let (stack, bff, token) = setup().await;
    stack.fault("ads", 0, 1.0).await;
    let before = stack.hits().await["ads"].as_u64().expect("ads hits");
    let mut outcomes = Vec::new();
    for _ in 0..20 {
        let res = get(&bff, "/api/home-feed", &token).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(header(&res, "x-degraded"), "ads");
        let body: Value = res.json().await.expect("json");
        outcomes.push(
            body["_meta"]["parts"]["ads"]["outcome"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    let calls = stack.hits().await["ads"].as_u64().expect("ads hits") - before;
    // Each feed tries ads up to three times (two retries): the first feed fails three times, the
    // second twice more and then meets the open circuit; later feeds never reach ads.
    assert_eq!(
        calls, 5,
        "the breaker opens after five consecutive failures"
    );
    assert_eq!(outcomes[0], "error", "{outcomes:?}");
    assert!(
        outcomes[1..].iter().all(|o| o == "circuit_open"),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn per_address_limits_believe_forwarded_for_only_from_trusted_proxies() {
    use gateway_core::config::{LimitKey, PolicyConfig};
    let stack = Stack::start().await;
    let token = stack.user_token("user-0042", "profile:read").await;
    for (trusted, second_client) in [
        (vec!["127.0.0.1/32".to_owned()], StatusCode::OK),
        (vec![], StatusCode::TOO_MANY_REQUESTS),
    ] {
        let bff = TestBff::start(&bff_mobile::BFF, &stack, |c| {
            c.server.trusted_proxies = trusted.clone();
            c.ratelimit.policies.insert(
                "default".into(),
                PolicyConfig {
                    key: LimitKey::ClientIp,
                    ..PolicyConfig::per_minute(1)
                },
            );
        })
        .await;
        let call = |client: &'static str| {
            reqwest::Client::new()
                .get(format!("{}{PROFILE}", bff.url))
                .bearer_auth(&token)
                .header("x-forwarded-for", format!("6.6.6.6, {client}"))
                .send()
        };
        assert_eq!(
            call("198.51.100.1").await.expect("a").status(),
            StatusCode::OK
        );
        assert_eq!(
            call("198.51.100.1").await.expect("a again").status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            call("198.51.100.2").await.expect("b").status(),
            second_client,
            "trusted: {trusted:?}"
        );
    }
}

#[tokio::test]
async fn concurrent_misses_for_one_profile_reach_the_backend_once() {
    let (stack, bff, token) = setup().await;
    // Slow enough that all 50 arrive while the first is still computing.
    stack.fault("user", 200, 0.0).await;
    let before = stack.hits().await["user"].as_u64().expect("user hits");
    let url = format!("{}{PROFILE}", bff.url);
    let (ok, limited, other) = bff_tests::burst(&[url], &token, 50).await;
    assert_eq!((ok, limited, other), (50, 0, 0));
    let calls = stack.hits().await["user"].as_u64().expect("user hits") - before;
    assert_eq!(
        calls, 1,
        "50 concurrent identical requests on a cold cache share one call"
    );
}

#[tokio::test]
async fn a_failed_read_is_retried_twice_then_left_out() {
    let (stack, bff, token) = setup().await;
    stack.fault("preferences", 0, 1.0).await;
    let before = stack.hits().await["preferences"].as_u64().expect("hits");
    let res = get(&bff, PROFILE, &token).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "x-degraded"), "preferences");
    let calls = stack.hits().await["preferences"].as_u64().expect("hits") - before;
    assert_eq!(calls, 3, "one call and two retries");
}

/// Sends one raw HTTP/1.1 request (no client library to tidy the path) and returns the response head.
async fn raw(bff: &TestBff, target: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(bff.addr)
        .await
        .expect("connect");
    let request = format!("GET {target} HTTP/1.1\r\nHost: bff\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    conn.read_to_end(&mut response).await.expect("read");
    let text = String::from_utf8_lossy(&response);
    text.split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

#[tokio::test]
async fn ambiguous_paths_are_refused_before_routing() {
    let (_stack, bff, _) = setup().await;
    assert!(raw(&bff, "/healthz").await.starts_with("http/1.1 200"));
    for target in [
        "/api/v2/user/../../healthz",
        "/api/v2/user/%2e%2e/profile",
        "/api/v2/user%2fprofile",
        "/api//v2/user/profile",
        "/api/v2/user/./profile",
        "/api\\v2",
    ] {
        let head = raw(&bff, target).await;
        assert!(head.starts_with("http/1.1 400"), "{target}: {head}");
        assert!(
            head.contains("content-type: application/problem+json"),
            "{target}: {head}"
        );
        assert!(head.contains("x-request-id:"), "{target}: {head}");
    }
    let long = format!("/api/v2/user/profile?q={}", "a".repeat(9000));
    assert!(raw(&bff, &long).await.starts_with("http/1.1 414"));
}

#[tokio::test]
async fn the_start_screen_is_one_call_of_six_parallel_parts() {
    let (stack, bff, token) = setup().await;
    for service in ["user", "content", "ads", "recommendations"] {
        stack.fault(service, 150, 0.0).await;
    }
    let start = Instant::now();
    let res = get(&bff, "/api/v2/start", &token).await;
    let elapsed = start.elapsed();
    assert_eq!(res.status(), StatusCode::OK);
    // Four 150 ms parts in sequence could not answer before 600 ms.
    assert!(elapsed < Duration::from_millis(600), "{elapsed:?}");
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["user"]["id"], "user-0042");
    assert!(body["feed"].as_array().is_some_and(|f| !f.is_empty()));
    assert_eq!(body["_meta"]["parts"].as_object().map(|p| p.len()), Some(6));

    let profile_only = stack.user_token("user-0042", "profile:read").await;
    let res = get(&bff, "/api/v2/start", &profile_only).await;
    assert_eq!(
        res.status(),
        StatusCode::FORBIDDEN,
        "both scopes are required"
    );
}

/// `/api/catalog/*` is passed through to the content service's public catalogue, under the same
/// authentication, scopes and limits, with the gateway's headers and none of the client's
/// credentials or forged claims.
#[tokio::test]
async fn the_catalog_is_passed_through_under_auth_and_limits() {
    let (stack, bff, token) = setup().await;
    let http = reqwest::Client::new();

    let res = get(&bff, "/api/catalog/items/item-018", &token).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers().contains_key("x-ratelimit-limit"),
        "limits apply"
    );
    assert!(!res.headers().contains_key("server"));
    let item: Value = res.json().await.expect("json");
    assert_eq!(item["id"], "item-018");
    assert!(item.get("internal_cost_cents").is_none(), "{item}");

    // A client's traceparent reaches the backend; its forged identity does not.
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let res = http
        .get(format!("{}/api/catalog/items?limit=2&offset=3", bff.url))
        .bearer_auth(&token)
        .header("traceparent", trace)
        .header("x-user-id", "someone-else")
        .send()
        .await
        .expect("list");
    assert_eq!(res.status(), StatusCode::OK);
    let page: Value = res.json().await.expect("json");
    assert_eq!(
        page["items"].as_array().map(Vec::len),
        Some(2),
        "query kept"
    );
    let seen: Value = http
        .get(format!("{}/admin/last-identity", stack.rest))
        .send()
        .await
        .expect("identity")
        .json()
        .await
        .expect("json");
    assert_eq!(seen["content"], "user-0042");
    let traces: Value = http
        .get(format!("{}/admin/last-traceparent", stack.rest))
        .send()
        .await
        .expect("traces")
        .json()
        .await
        .expect("json");
    assert!(
        traces["content"]
            .as_str()
            .is_some_and(|t| t.contains("4bf92f3577b34da6a3ce929d0e0e4736")),
        "{traces}"
    );

    // A request body is streamed through.
    let found = search(&bff, &token, "kingdom").await;
    assert!(
        found["items"].as_array().is_some_and(|i| !i.is_empty()),
        "{found}"
    );

    // The backend's own errors pass through; the route's rules are the gateway's.
    let res = get(&bff, "/api/catalog/items/item-999999", &token).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = http
        .delete(format!("{}/api/catalog/items/item-018", bff.url))
        .bearer_auth(&token)
        .send()
        .await
        .expect("delete");
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    let res = get(&bff, "/api/catalogue", &token).await;
    assert_eq!(
        res.status(),
        StatusCode::NOT_FOUND,
        "prefixes end on a segment"
    );
    let res = http
        .get(format!("{}/api/catalog/items/item-018", bff.url))
        .send()
        .await
        .expect("anonymous");
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let profile_only = stack.user_token("user-0042", "profile:read").await;
    let res = get(&bff, "/api/catalog/items/item-018", &profile_only).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}

/// With `protocol = "http2"` on the content service (the demo backends speak it without TLS),
/// the feed's REST call and the pass-through route reach it over HTTP/2: answers, queries and a
/// streamed request body as over HTTP/1.1, calls at once sharing a connection.
#[tokio::test]
async fn the_content_service_can_be_reached_over_http2() {
    let stack = Stack::start().await;
    let bff = TestBff::start(&bff_mobile::BFF, &stack, |c| {
        c.upstreams.get_mut("content").expect("content").protocol =
            gateway_core::upstream::Protocol::Http2;
    })
    .await;
    let token = stack
        .user_token("user-0042", "profile:read feed:read")
        .await;
    let http = reqwest::Client::new();

    let res = get(&bff, "/api/home-feed", &token).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["_meta"]["complete"], true, "{body}");

    let pages = futures::future::join_all((0..20).map(|i| {
        http.get(format!("{}/api/catalog/items?limit=2&offset={i}", bff.url))
            .bearer_auth(&token)
            .send()
    }))
    .await;
    for (i, res) in pages.into_iter().enumerate() {
        let res = res.expect("list");
        assert_eq!(res.status(), StatusCode::OK);
        let page: Value = res.json().await.expect("json");
        let first = page["items"][0]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert_eq!(first, format!("item-{:03}", i + 1), "offset {i}: {page}");
    }
    search(&bff, &token, "kingdom").await;
    let res = get(&bff, "/api/catalog/items/item-999999", &token).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

/// A compressed pass-through answer ends cleanly: the whole backend body arrives, encoded as
/// asked, and (the backend gave its length, so it is compressed whole) says its own length.
#[tokio::test]
async fn a_passed_through_answer_is_compressed_whole() {
    use std::io::Read;
    let (_stack, bff, token) = setup().await;
    let mut texts = Vec::new();
    for (accept, coding) in [("gzip", "gzip"), ("br, gzip", "br")] {
        let res = reqwest::Client::new()
            .get(format!("{}/api/catalog/items?limit=20", bff.url))
            .bearer_auth(&token)
            .header("accept-encoding", accept)
            .send()
            .await
            .expect("request");
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(header(&res, "content-encoding"), coding);
        let length = header(&res, "content-length").to_owned();
        let packed = res.bytes().await.expect("the whole body");
        assert_eq!(length, packed.len().to_string(), "{coding}");
        let mut text = String::new();
        if coding == "gzip" {
            flate2::read::GzDecoder::new(&packed[..])
                .read_to_string(&mut text)
                .expect("valid gzip");
        } else {
            brotli::Decompressor::new(&packed[..], 4096)
                .read_to_string(&mut text)
                .expect("valid brotli");
        }
        let page: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(page["items"].as_array().map(Vec::len), Some(20), "{page}");
        texts.push(text);
    }
    assert_eq!(texts[0], texts[1]);
}

#[tokio::test]
async fn a_dead_catalog_backend_is_a_502_problem() {
    let stack = Stack::start().await;
    let dead = format!("http://127.0.0.1:{}", bff_tests::free_port());
    let bff = TestBff::start(&bff_mobile::BFF, &stack, |c| {
        c.upstreams.get_mut("content").expect("content").url = dead;
    })
    .await;
    let token = stack.user_token("user-0042", "feed:read").await;
    let res = get(&bff, "/api/catalog/items/item-018", &token).await;
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["code"], "UPSTREAM_ERROR");
    assert!(!body.to_string().contains("127.0.0.1"), "{body}");
}

/// After a short load, `/metrics` carries every series operators alert on: requests and latency by
/// route and status, upstream calls by outcome, limiter decisions with their mode, cache lookups,
/// breaker state and the REST connections opened (for connection reuse).
#[tokio::test]
async fn metrics_show_every_series_after_a_short_load() {
    let (_stack, bff, token) = setup().await;
    for _ in 0..5 {
        assert_eq!(get(&bff, PROFILE, &token).await.status(), StatusCode::OK);
        assert_eq!(
            get(&bff, "/api/home-feed", &token).await.status(),
            StatusCode::OK
        );
    }
    // A pass-through route is named by its pattern, as the others are.
    let res = get(&bff, "/api/catalog/items/item-018", &token).await;
    assert_eq!(res.status(), StatusCode::OK);
    let text = metrics(&bff).await;
    for series in [
        r#"bff_requests_total{bff="bff-mobile",route="/api/v2/user/profile",status="200"}"#,
        r#"bff_request_duration_seconds_bucket{bff="bff-mobile",route="/api/v2/user/profile""#,
        r#"bff_requests_total{bff="bff-mobile",route="/api/catalog/{*rest}",status="200"}"#,
        r#"bff_upstream_calls_total{upstream="user",variant="primary",outcome="ok"}"#,
        r#"bff_upstream_calls_total{upstream="content",variant="primary",outcome="ok"}"#,
        r#"bff_ratelimit_decisions_total{bff="bff-mobile",decision="allowed",mode="memory"}"#,
        r#"bff_cache_lookups_total{bff="bff-mobile",result="hit"}"#,
        r#"bff_upstream_circuit_open{upstream="ads",variant="primary"}"#,
        "bff_upstream_http_connections_total",
        r#"bff_upstream_parts_total{part="user",outcome="ok"}"#,
    ] {
        assert!(text.contains(series), "missing {series}\n{text}");
    }
}

/// Catalog calls past the content upstream's `max_connections` wait for one of its connections:
/// thirty at once reach the backend over two, every one answered, the waits counted.
#[tokio::test]
async fn catalog_calls_past_the_connection_cap_wait_for_a_connection() {
    use axum::extract::ConnectInfo;
    use std::collections::HashSet;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    let peers = Arc::new(Mutex::new(HashSet::new()));
    let seen = peers.clone();
    let backend =
        axum::Router::new().fallback(move |ConnectInfo(peer): ConnectInfo<SocketAddr>| {
            let seen = seen.clone();
            async move {
                seen.lock().expect("peers").insert(peer);
                tokio::time::sleep(Duration::from_millis(20)).await;
                axum::Json(json!({"id": "item-001"}))
            }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        axum::serve(
            listener,
            backend.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    let stack = Stack::start().await;
    let bff = TestBff::start(&bff_mobile::BFF, &stack, |c| {
        let content = c.upstreams.get_mut("content").expect("content");
        content.url = url;
        content.max_connections = 2;
    })
    .await;
    let token = stack.user_token("user-0042", "feed:read").await;
    let http = reqwest::Client::new();
    let answers = futures::future::join_all((0..30).map(|i| {
        http.get(format!("{}/api/catalog/items/item-{i:03}", bff.url))
            .bearer_auth(&token)
            .send()
    }))
    .await;
    for res in answers {
        assert_eq!(res.expect("answer").status(), StatusCode::OK);
    }
    let used = peers.lock().expect("peers").len();
    assert_eq!(used, 2, "backend connections used for 30 calls at once");
    let text = metrics(&bff).await;
    let waits = text
        .lines()
        .find_map(|l| l.strip_prefix("bff_upstream_connection_waits_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_default();
    assert!(waits >= 1.0, "no call counted as waiting\n{text}");
}
