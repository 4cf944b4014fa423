//! Several instances of a BFF on one Redis behave as one: what one instance cached, the others
//! serve. (Exact shared limits and shared idempotency records are in `redis.rs`.)

use bff_tests::{RedisServer, Stack, TestBff};
use reqwest::StatusCode;

#[tokio::test]
async fn three_instances_on_one_redis_share_the_response_cache() {
    let Some(redis) = RedisServer::start("three_instances_on_one_redis_share_the_response_cache")
    else {
        return;
    };
    let stack = Stack::start().await;
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(
            TestBff::start(&bff_mobile::BFF, &stack, |c| {
                c.redis.url = Some(redis.url.clone());
                c.cache.timeout_ms = 2_000;
            })
            .await,
        );
    }
    let token = stack.user_token("user-0077", "profile:read").await;
    let http = reqwest::Client::new();
    let user_calls = || async { stack.hits().await["user"].as_u64().expect("user hits") };
    let before = user_calls().await;
    let mut caches = Vec::new();
    let mut bodies = Vec::new();
    for bff in &instances {
        let res = http
            .get(format!("{}/api/v2/user/profile", bff.url))
            .bearer_auth(&token)
            .send()
            .await
            .expect("profile");
        assert_eq!(res.status(), StatusCode::OK);
        caches.push(
            res.headers()["x-cache"]
                .to_str()
                .expect("x-cache")
                .to_owned(),
        );
        bodies.push(res.text().await.expect("body"));
    }
    assert_eq!(caches, ["MISS", "HIT", "HIT"]);
    assert!(bodies.iter().all(|b| *b == bodies[0]), "one answer");
    assert_eq!(
        user_calls().await - before,
        1,
        "one backend call for three instances"
    );
}
