//! Shared state in a real `redis-server` (a private one per test, on a free port): exact limits
//! under concurrency with either algorithm, the failure modes when Redis dies, and recovery.
//!
//! Without `redis-server` on the machine these tests say SKIPPED and pass, unless
//! `BFF_REQUIRE_REDIS=1`, which makes them fail instead (CI sets it).

use std::time::Duration;

use bff_tests::{RedisServer, Stack, TestBff};
use gateway_core::config::{Algorithm, PolicyConfig};
use reqwest::StatusCode;

/// 150 concurrent requests by one user against a limit of 100, in memory and (when the machine
/// has one) in Redis, with either algorithm: exactly 100 pass.
#[tokio::test]
async fn concurrent_requests_admit_exactly_the_limit_in_either_store_with_either_algorithm() {
    let redis = RedisServer::start("concurrent_requests_admit_exactly_the_limit");
    let stack = Stack::start().await;
    let stores: Vec<Option<String>> = std::iter::once(None)
        .chain(redis.as_ref().map(|r| Some(r.url.clone())))
        .collect();
    for url in stores {
        for algorithm in [Algorithm::SlidingWindow, Algorithm::Gcra] {
            let bff = TestBff::start(&bff_mobile::BFF, &stack, |c| {
                c.redis.url = url.clone();
                c.redis.key_prefix = format!("t-{algorithm:?}");
                // Generous bounds: this test is about exactness, not about the machine's speed.
                // Past `redis.timeout_ms` waiting for one of the pool's connections, a decision
                // falls back to the local share, as it should in production.
                c.redis.timeout_ms = 2_000;
                c.ratelimit.decision_timeout_ms = 2_000;
                c.ratelimit.policies.insert(
                    "default".into(),
                    PolicyConfig {
                        algorithm,
                        burst: (algorithm == Algorithm::Gcra).then_some(100),
                        ..PolicyConfig::per_minute(100)
                    },
                );
            })
            .await;
            let token = stack.user_token("user-0042", "profile:read").await;
            let profile = format!("{}/api/v2/user/profile", bff.url);
            assert_eq!(
                bff_tests::burst(&[profile], &token, 150).await,
                (100, 50, 0),
                "{algorithm:?} in {}",
                url.as_deref().unwrap_or("memory")
            );
        }
    }
}

#[tokio::test]
async fn redis_outage_fails_open_locally_for_users_and_closed_for_partners_then_recovers() {
    let Some(redis) = RedisServer::start("redis_outage") else {
        return;
    };
    let port = redis.port;
    let stack = Stack::start().await;
    let mobile = TestBff::start(&bff_mobile::BFF, &stack, |c| {
        c.redis.url = Some(redis.url.clone())
    })
    .await;
    let partner = TestBff::start(&bff_partner::BFF, &stack, |c| {
        c.redis.url = Some(redis.url.clone())
    })
    .await;
    let token = stack.user_token("user-0042", "profile:read").await;
    let key = stack.partner_key("acme").await;
    let http = reqwest::Client::new();
    let profile = || {
        http.get(format!("{}/api/v2/user/profile", mobile.url))
            .bearer_auth(&token)
            .send()
    };
    let list = || {
        http.get(format!("{}/v1/subscriptions", partner.url))
            .header("x-api-key", &key)
            .send()
    };
    assert_eq!(profile().await.expect("profile").status(), StatusCode::OK);
    assert_eq!(list().await.expect("list").status(), StatusCode::OK);

    drop(redis);
    for _ in 0..5 {
        assert_eq!(
            profile().await.expect("profile").status(),
            StatusCode::OK,
            "users keep being served under local limits"
        );
        let res = list().await.expect("list");
        assert_eq!(
            res.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "partners fail closed"
        );
        assert!(res.headers().contains_key("retry-after"));
    }

    let _redis = RedisServer::start_on(port);
    let mut recovered = false;
    for _ in 0..100 {
        if list().await.expect("list").status() == StatusCode::OK {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recovered,
        "partner limits came back with Redis, without a restart"
    );
}

#[tokio::test]
async fn a_frozen_redis_costs_each_decision_no_more_than_its_bound() {
    let Some(redis) = RedisServer::start("a_frozen_redis") else {
        return;
    };
    let stack = Stack::start().await;
    let mobile = TestBff::start(&bff_mobile::BFF, &stack, |c| {
        c.redis.url = Some(redis.url.clone());
        c.cache.enabled = false;
    })
    .await;
    let token = stack.user_token("user-0042", "profile:read").await;
    let http = reqwest::Client::new();
    let profile = || {
        http.get(format!("{}/api/v2/user/profile", mobile.url))
            .bearer_auth(&token)
            .send()
    };
    assert_eq!(profile().await.expect("warm").status(), StatusCode::OK);

    redis.freeze();
    for _ in 0..3 {
        let start = std::time::Instant::now();
        let res = profile().await.expect("profile");
        let elapsed = start.elapsed();
        assert_eq!(res.status(), StatusCode::OK, "decided locally");
        // The decision is bounded by 50 ms; a hang would take the whole request budget (10 s).
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    }
    redis.thaw();
}

#[tokio::test]
async fn a_quota_caps_what_the_rate_admits_in_memory_and_in_redis() {
    use gateway_core::config::QuotaConfig;
    let redis = RedisServer::start("a_quota_caps_what_the_rate_admits");
    let stack = Stack::start().await;
    let key = stack.partner_key("acme").await;
    let stores: Vec<Option<String>> = std::iter::once(None)
        .chain(redis.as_ref().map(|r| Some(r.url.clone())))
        .collect();
    let combos = stores.iter().flat_map(|u| {
        [
            (u.clone(), Algorithm::Gcra),
            (u.clone(), Algorithm::SlidingWindow),
        ]
    });
    for (i, (url, algorithm)) in combos.enumerate() {
        let partner = TestBff::start(&bff_partner::BFF, &stack, |c| {
            c.redis.url = url.clone();
            c.redis.key_prefix = format!("quota-{i}");
            c.ratelimit.decision_timeout_ms = 2_000;
            for p in c.ratelimit.policies.values_mut() {
                p.algorithm = algorithm;
                p.burst = (algorithm == Algorithm::Gcra).then_some(20);
                p.quota = Some(QuotaConfig {
                    limit: 5,
                    window_secs: 86_400,
                });
            }
        })
        .await;
        let list = format!("{}/v1/subscriptions", partner.url);
        assert_eq!(
            bff_tests::burst(std::slice::from_ref(&list), &key, 12).await,
            (5, 7, 0),
            "redis: {url:?}, {algorithm:?}"
        );
        let res = reqwest::Client::new()
            .get(&list)
            .header("x-api-key", &key)
            .send()
            .await
            .expect("list");
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        let h = res.headers();
        assert_eq!(h["x-ratelimit-quota-limit"], "5");
        assert_eq!(h["x-ratelimit-quota-remaining"], "0");
        let retry: u64 = h["retry-after"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("seconds");
        let reset: u64 = h["x-ratelimit-quota-reset"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("seconds");
        assert!(
            retry > 0 && retry <= 86_400 && retry == reset,
            "retry {retry}, reset {reset}"
        );
        assert!(
            h["ratelimit-policy"]
                .to_str()
                .expect("ascii")
                .contains("\"standard-quota\";q=5;w=86400")
        );
    }
}

/// Three partner gateways on one Redis share idempotency records: a retry sent to another
/// instance gets the stored answer, 20 concurrent duplicates spread over all three write once, and
/// with Redis unreachable a write answers 503 rather than risk writing twice.
#[tokio::test]
async fn three_partner_instances_share_idempotency_records() {
    let Some(redis) = RedisServer::start("three_partner_instances_share_idempotency_records")
    else {
        return;
    };
    let stack = Stack::start().await;
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(
            TestBff::start(&bff_partner::BFF, &stack, |c| {
                c.redis.url = Some(redis.url.clone());
                // Limits fail open here, so what a Redis outage does to writes shows on its own.
                c.ratelimit.failure_mode = gateway_core::config::FailureMode::FailOpen;
                c.ratelimit.policies.insert(
                    "standard".into(),
                    PolicyConfig {
                        algorithm: Algorithm::Gcra,
                        burst: Some(1_000),
                        ..PolicyConfig::per_minute(60_000)
                    },
                );
            })
            .await,
        );
    }
    let key = stack.partner_key("acme").await;
    let http = reqwest::Client::new();
    let creates = || async {
        stack.hits().await["subscription_create"]
            .as_u64()
            .expect("count")
    };
    let post = |i: usize, idem: &'static str, plan: &'static str| {
        http.post(format!("{}/v1/subscriptions", instances[i % 3].url))
            .header("x-api-key", &key)
            .header("idempotency-key", idem)
            .json(&serde_json::json!({"user_id": "user-0300", "plan": plan}))
            .send()
    };
    let before = creates().await;

    let first = post(0, "shared-1", "basic").await.expect("post");
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: serde_json::Value = first.json().await.expect("json");
    let retry = post(1, "shared-1", "basic").await.expect("post");
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(
        retry.json::<serde_json::Value>().await.expect("json"),
        first
    );
    let reused = post(2, "shared-1", "premium").await.expect("post");
    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(creates().await - before, 1);

    stack.fault("subscription", 150, 0.0).await;
    let answers = futures::future::join_all((0..20).map(|i| post(i, "shared-2", "standard"))).await;
    let bodies: Vec<serde_json::Value> = futures::future::join_all(answers.into_iter().map(|r| {
        let r = r.expect("post");
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json()
    }))
    .await
    .into_iter()
    .map(|b| b.expect("json"))
    .collect();
    assert!(bodies.iter().all(|b| *b == bodies[0]), "one answer for all");
    assert_eq!(creates().await - before, 2, "20 duplicates, one write");
    stack.reset().await;

    redis.freeze();
    let res = post(0, "shared-3", "basic").await.expect("post");
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    redis.thaw();
    assert_eq!(
        creates().await - before,
        2,
        "nothing written without a record"
    );
    let res = post(0, "shared-3", "basic").await.expect("post");
    assert_eq!(res.status(), StatusCode::CREATED, "recovered");
}
