//! Shared state in a real `redis-server` (a private one per test, on a free port): exact limits
//! across instances, the failure modes when Redis dies, recovery, and TTLs on every key.
//!
//! Without `redis-server` on the machine these tests say SKIPPED and pass, unless
//! `BFF_REQUIRE_REDIS=1`, which makes them fail instead (CI sets it).

use std::time::Duration;

use bff_tests::{Process, RedisServer, Stack, TestBff, free_port, wait_healthy};
use gateway_core::config::{Algorithm, PolicyConfig};
use redis::AsyncCommands;
use reqwest::StatusCode;

/// Sends `n` requests at once (HTTP/2, so they really are concurrent) and counts each status.
async fn burst(urls: &[String], token: &str, n: usize) -> (usize, usize, usize) {
    let http = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let req = http
                .get(&urls[i % urls.len()])
                .bearer_auth(token)
                .header("x-api-key", token)
                .send();
            tokio::spawn(req)
        })
        .collect();
    let (mut ok, mut limited, mut other) = (0, 0, 0);
    for t in tasks {
        match t.await.expect("task").map(|r| r.status()) {
            Ok(StatusCode::OK) => ok += 1,
            Ok(StatusCode::TOO_MANY_REQUESTS) => limited += 1,
            _ => other += 1,
        }
    }
    (ok, limited, other)
}

#[tokio::test]
async fn three_instances_on_one_redis_admit_exactly_the_limit() {
    let Some(redis) = RedisServer::start("three_instances_on_one_redis_admit_exactly_the_limit")
    else {
        return;
    };
    let stack = Stack::start().await;
    let config = stack.config_file(&bff_mobile::BFF, |c| {
        c.redis.url = Some(redis.url.clone());
        // Generous bounds: this test is about exactness, not about the machine's speed.
        c.ratelimit.decision_timeout_ms = 2_000;
        c.redis.timeout_ms = 2_000;
    });
    let mut urls = Vec::new();
    let mut procs = Vec::new();
    for _ in 0..3 {
        let listen = format!("127.0.0.1:{}", free_port());
        procs.push(Process::spawn(
            "bff-mobile",
            &[
                "--config",
                config.to_str().expect("path"),
                "--listen",
                &listen,
            ],
            &[],
        ));
        wait_healthy(&format!("http://{listen}/readyz"), Duration::from_secs(10)).await;
        urls.push(format!("http://{listen}/api/v2/user/profile"));
    }
    let token = stack.user_token("user-0042", "profile:read").await;
    let (ok, limited, other) = burst(&urls, &token, 1000).await;
    assert_eq!((ok, limited, other), (100, 900, 0));
}

#[tokio::test]
async fn concurrent_requests_admit_exactly_the_limit_with_either_algorithm() {
    let Some(redis) =
        RedisServer::start("concurrent_requests_admit_exactly_the_limit_with_either_algorithm")
    else {
        return;
    };
    let stack = Stack::start().await;
    for algorithm in [Algorithm::SlidingWindow, Algorithm::Gcra] {
        let bff = TestBff::start(&bff_mobile::BFF, &stack, |c| {
            c.redis.url = Some(redis.url.clone());
            c.redis.key_prefix = format!("t-{algorithm:?}");
            c.ratelimit.decision_timeout_ms = 2_000;
            c.ratelimit.policies.insert(
                "default".into(),
                PolicyConfig {
                    algorithm,
                    limit: 100,
                    period_secs: 60,
                    burst: (algorithm == Algorithm::Gcra).then_some(100),
                },
            );
        })
        .await;
        let token = stack.user_token("user-0042", "profile:read").await;
        let url = format!("{}/api/v2/user/profile", bff.url);
        assert_eq!(
            burst(&[url], &token, 150).await,
            (100, 50, 0),
            "{algorithm:?}"
        );
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
async fn devstack_with_redis_keeps_shared_state_there_and_every_key_expires() {
    let Some(redis) = RedisServer::start("devstack_with_redis") else {
        return;
    };
    let ports: Vec<u16> = (0..7).map(|_| free_port()).collect();
    let p = |i: usize| ports[i].to_string();
    let _devstack = Process::spawn(
        "devstack",
        &[
            "--redis",
            &redis.url,
            "--grpc-port",
            &p(0),
            "--rest-port",
            &p(1),
            "--idp-port",
            &p(2),
            "--mobile-port",
            &p(3),
            "--web-port",
            &p(4),
            "--tv-port",
            &p(5),
            "--partner-port",
            &p(6),
        ],
        &[],
    );
    let mobile = format!("http://127.0.0.1:{}", ports[3]);
    let idp = format!("http://127.0.0.1:{}", ports[2]);
    wait_healthy(&format!("{mobile}/healthz"), Duration::from_secs(10)).await;
    wait_healthy(&format!("{idp}/healthz"), Duration::from_secs(10)).await;
    let http = reqwest::Client::new();
    let token: serde_json::Value = http
        .post(format!("{idp}/token"))
        .json(&serde_json::json!({"sub": "user-0007", "scope": "profile:read"}))
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    let token = token["access_token"].as_str().expect("token").to_owned();
    let call = || {
        http.get(format!("{mobile}/api/v2/user/profile"))
            .bearer_auth(&token)
            .send()
    };
    assert_eq!(call().await.expect("first").headers()["x-cache"], "MISS");
    assert_eq!(call().await.expect("second").headers()["x-cache"], "HIT");

    let client = redis::Client::open(redis.url.as_str()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let keys: Vec<String> = conn.keys("*").await.expect("keys");
    assert!(keys.iter().any(|k| k.starts_with("bff:cache:")), "{keys:?}");
    assert!(keys.iter().any(|k| k.starts_with("bff:rl:")), "{keys:?}");
    for k in keys.iter().filter(|k| !k.starts_with("bff:apikey:")) {
        let ttl: i64 = conn.pttl(k).await.expect("pttl");
        assert!(ttl > 0, "{k} has no TTL ({ttl})");
    }
}
