//! Partner credentials are refused before the rate limiter creates any state: the answer carries
//! no limit headers and, with a real `redis-server` holding the limits, no key is written.

use bff_tests::{RedisServer, Stack, TestBff};
use reqwest::StatusCode;
use serde_json::Value;

fn redis_keys(url: &str) -> Vec<String> {
    let client = redis::Client::open(url).expect("redis client");
    let mut con = client.get_connection().expect("redis connection");
    redis::cmd("KEYS").arg("*").query(&mut con).expect("KEYS")
}

#[tokio::test]
async fn refused_partner_credentials_create_no_limiter_state() {
    let Some(redis) = RedisServer::start("refused_partner_credentials_create_no_limiter_state")
    else {
        return;
    };
    let stack = Stack::start().await;
    let partner = TestBff::start(&bff_partner::BFF, &stack, |c| {
        c.redis.url = Some(redis.url.clone());
    })
    .await;
    let url = format!("{}/v1/subscriptions", partner.url);
    let http = reqwest::Client::new();
    let jwt = stack.user_token("user-0042", "profile:read").await;
    let refused = [
        ("x-api-key", "bffk_unknown".to_owned()),
        ("authorization", "Bearer bffk_unknown_too".to_owned()),
        ("authorization", format!("Bearer {jwt}")),
        ("x-api-key", "x".repeat(4000)),
    ];
    for round in 0..5 {
        for (name, value) in &refused {
            let res = http
                .get(&url)
                .header(*name, format!("{value}{round}"))
                .send()
                .await
                .expect("request");
            assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{name}");
            for h in [
                "x-ratelimit-limit",
                "x-ratelimit-remaining",
                "ratelimit",
                "retry-after",
            ] {
                assert!(!res.headers().contains_key(h), "{name}: {h} on a 401");
            }
            let body: Value = res.json().await.expect("problem");
            assert_eq!(body["code"], "API_KEY_INVALID", "{name}");
        }
    }
    let keys = redis_keys(&redis.url);
    assert!(keys.is_empty(), "refused credentials wrote {keys:?}");

    // The same check sees the state a known key creates.
    let key = stack.partner_key("acme").await;
    let res = http
        .get(&url)
        .header("x-api-key", &key)
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().contains_key("x-ratelimit-limit"));
    let keys = redis_keys(&redis.url);
    // The rate and the daily quota of the known partner, nothing else.
    let mut keys = keys;
    keys.sort();
    assert_eq!(
        keys,
        [
            "bff:rl:{bff-partner:standard:acme}",
            "bff:rlq:{bff-partner:standard:acme}"
        ],
        "the limiter state of the known partner"
    );
}
