//! Shared state in a real Redis Cluster: three primaries on free ports, private to each test,
//! reached through `redis.cluster_urls`. Three gateways on it admit exactly the limit (a rate and
//! its quota are updated by one script, so they must share a hash slot), and share partner keys,
//! idempotency records and cached answers.
//!
//! Without `redis-server` and `redis-cli` on the machine these tests say SKIPPED and pass, unless
//! `BFF_REQUIRE_REDIS=1`, which makes them fail instead (CI sets it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bff_tests::{RedisCluster, Stack, TestBff};
use gateway_core::Config;
use gateway_core::auth::apikey::RedisApiKeyStore;
use gateway_core::config::{Algorithm, PolicyConfig, QuotaConfig, RedisConfig};
use gateway_core::store::Redis;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Points a BFF at the cluster. Bounds are generous: these tests are about exactness and sharing,
/// not about a loaded machine's latency (a late decision would fall back to local limits).
fn on_cluster<C>(c: &mut Config<C>, cluster: &RedisCluster, prefix: &str) {
    c.redis.cluster_urls.clone_from(&cluster.urls);
    c.redis.key_prefix = prefix.to_owned();
    c.redis.timeout_ms = 2_000;
    c.ratelimit.decision_timeout_ms = 2_000;
    c.cache.timeout_ms = 2_000;
    c.idempotency.timeout_ms = 2_000;
}

/// 150 concurrent requests by one user, spread over three gateways, against a limit of 100: exactly
/// 100 pass with either algorithm. A partner's daily quota of 5 holds the same way over three
/// partner gateways. Other users' keys land on other primaries, so routing by slot is exercised.
#[tokio::test]
async fn three_gateways_on_a_redis_cluster_admit_exactly_the_limit() {
    let started = Instant::now();
    let Some(cluster) = RedisCluster::start("three_gateways_on_a_redis_cluster_admit_exactly")
    else {
        return;
    };
    eprintln!("cluster up in {:?}", started.elapsed());
    let stack = Stack::start().await;
    let token = stack.user_token("user-0042", "profile:read").await;

    for algorithm in [Algorithm::SlidingWindow, Algorithm::Gcra] {
        let mut gateways = Vec::new();
        for _ in 0..3 {
            gateways.push(
                TestBff::start(&bff_mobile::BFF, &stack, |c| {
                    on_cluster(c, &cluster, &format!("limit-{algorithm:?}"));
                    c.ratelimit.policies.insert(
                        "default".into(),
                        PolicyConfig {
                            algorithm,
                            burst: (algorithm == Algorithm::Gcra).then_some(100),
                            ..PolicyConfig::per_minute(100)
                        },
                    );
                })
                .await,
            );
        }
        let urls: Vec<String> = gateways
            .iter()
            .map(|g| format!("{}/api/v2/user/profile", g.url))
            .collect();
        assert_eq!(
            bff_tests::burst(&urls, &token, 150).await,
            (100, 50, 0),
            "{algorithm:?} over three gateways on a cluster"
        );
    }

    // Twenty more users, one request each: their keys spread over the primaries, and every
    // decision is made in Redis (a failed one would pass here too, but leave no key behind).
    let mobile = TestBff::start(&bff_mobile::BFF, &stack, |c| {
        on_cluster(c, &cluster, "spread");
        c.cache.enabled = false;
    })
    .await;
    let http = reqwest::Client::new();
    for i in 0..20 {
        let token = stack
            .user_token(&format!("user-{:04}", 100 + i), "profile:read")
            .await;
        let res = http
            .get(format!("{}/api/v2/user/profile", mobile.url))
            .bearer_auth(&token)
            .send()
            .await
            .expect("profile");
        assert_eq!(res.status(), StatusCode::OK);
    }
    let per_node = cluster.keys_per_node("spread:*");
    assert_eq!(per_node.iter().sum::<usize>(), 20, "{per_node:?}");
    assert!(
        per_node.iter().all(|n| *n > 0),
        "keys on every primary: {per_node:?}"
    );

    // A partner's rate and quota: two keys, one script, one slot. Partner limits fail closed, so
    // a cross-slot script would answer 503 rather than pass unnoticed.
    let key = stack.partner_key("acme").await;
    let mut partners = Vec::new();
    for _ in 0..3 {
        partners.push(
            TestBff::start(&bff_partner::BFF, &stack, |c| {
                on_cluster(c, &cluster, "quota");
                for p in c.ratelimit.policies.values_mut() {
                    p.quota = Some(QuotaConfig {
                        limit: 5,
                        window_secs: 86_400,
                    });
                }
            })
            .await,
        );
    }
    let lists: Vec<String> = partners
        .iter()
        .map(|g| format!("{}/v1/subscriptions", g.url))
        .collect();
    assert_eq!(bff_tests::burst(&lists, &key, 12).await, (5, 7, 0));
    eprintln!("done in {:?}", started.elapsed());
}

/// Three partner gateways on a cluster find a key the identity provider wrote there, replay an
/// idempotent write sent to another instance, and let 20 concurrent duplicates write once; two
/// mobile gateways share a cached profile.
#[tokio::test]
async fn gateways_on_a_redis_cluster_share_keys_idempotency_records_and_cache() {
    let started = Instant::now();
    let Some(cluster) = RedisCluster::start("gateways_on_a_redis_cluster_share") else {
        return;
    };
    let redis = Redis::from_config(&RedisConfig {
        cluster_urls: cluster.urls.clone(),
        timeout_ms: 2_000,
        ..RedisConfig::default()
    })
    .expect("cluster configuration")
    .expect("a cluster client");
    let keys = Arc::new(RedisApiKeyStore::new(redis, Duration::from_secs(2)));
    let stack = Stack::start_with_keys(keys).await;
    let key = stack.partner_key("acme").await;

    let mut partners = Vec::new();
    for _ in 0..3 {
        partners.push(
            TestBff::start(&bff_partner::BFF, &stack, |c| {
                // The default prefix: the identity provider wrote the key under it.
                on_cluster(c, &cluster, "bff");
                c.ratelimit.policies.insert(
                    "standard".into(),
                    PolicyConfig {
                        algorithm: Algorithm::Gcra,
                        burst: Some(1_000),
                        quota: Some(QuotaConfig {
                            limit: 1_000,
                            window_secs: 86_400,
                        }),
                        ..PolicyConfig::per_minute(60_000)
                    },
                );
            })
            .await,
        );
    }
    let http = reqwest::Client::new();
    let creates = || async {
        stack.hits().await["subscription_create"]
            .as_u64()
            .expect("count")
    };
    let post = |i: usize, idem: &'static str, plan: &'static str| {
        http.post(format!("{}/v1/subscriptions", partners[i % 3].url))
            .header("x-api-key", &key)
            .header("idempotency-key", idem)
            .json(&json!({"user_id": "user-0300", "plan": plan}))
            .send()
    };
    let before = creates().await;

    let first = post(0, "cluster-1", "basic").await.expect("post");
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.expect("json");
    let retry = post(1, "cluster-1", "basic").await.expect("post");
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.json::<Value>().await.expect("json"), first);
    let reused = post(2, "cluster-1", "premium").await.expect("post");
    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(creates().await - before, 1);

    stack.fault("subscription", 150, 0.0).await;
    let answers =
        futures::future::join_all((0..20).map(|i| post(i, "cluster-2", "standard"))).await;
    let mut bodies = Vec::new();
    for answer in answers {
        let answer = answer.expect("post");
        assert_eq!(answer.status(), StatusCode::CREATED);
        bodies.push(answer.json::<Value>().await.expect("json"));
    }
    assert!(bodies.iter().all(|b| *b == bodies[0]), "one answer for all");
    assert_eq!(creates().await - before, 2, "20 duplicates, one write");
    stack.reset().await;

    let mut mobiles = Vec::new();
    for _ in 0..2 {
        mobiles.push(
            TestBff::start(&bff_mobile::BFF, &stack, |c| {
                on_cluster(c, &cluster, "bff");
            })
            .await,
        );
    }
    let token = stack.user_token("user-0042", "profile:read").await;
    let profile = |i: usize| {
        http.get(format!("{}/api/v2/user/profile", mobiles[i].url))
            .bearer_auth(&token)
            .send()
    };
    let users = || async { stack.hits().await["user"].as_u64().expect("count") };
    let miss = profile(0).await.expect("profile");
    assert_eq!(miss.status(), StatusCode::OK);
    assert_eq!(miss.headers()["x-cache"], "MISS");
    let miss: Value = miss.json().await.expect("json");
    let calls = users().await;
    let hit = profile(1).await.expect("profile");
    assert_eq!(hit.status(), StatusCode::OK);
    assert_eq!(
        hit.headers()["x-cache"],
        "HIT",
        "cached by the other gateway"
    );
    assert_eq!(hit.json::<Value>().await.expect("json"), miss);
    assert_eq!(users().await, calls, "no backend call for a hit");
    eprintln!("done in {:?}", started.elapsed());
}
