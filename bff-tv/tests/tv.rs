//! The TV BFF on real sockets.

use std::time::Duration;

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

#[tokio::test]
async fn with_one_of_two_instances_killed_no_client_sees_an_error() {
    let stack = Stack::start().await;
    let (_, second, stop_second) = Stack::extra_backends().await;
    let tv = TestBff::start(&bff_tv::BFF, &stack, |c| {
        c.cache.enabled = false;
        for up in c.upstreams.values_mut() {
            up.instances = vec![second.clone()];
            up.health_check_interval_ms = 100;
            up.health_path = Some("/healthz".into());
        }
    })
    .await;
    let token = stack.user_token("user-0042", "feed:read").await;
    let http = reqwest::Client::new();
    let home = || {
        http.get(format!("{}/api/home", tv.url))
            .bearer_auth(&token)
            .send()
    };
    for _ in 0..4 {
        let res = home().await.expect("home");
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers().get("x-degraded").is_none());
    }
    let second_hits: Value = http
        .get(format!("{second}/admin/hits"))
        .send()
        .await
        .expect("hits")
        .json()
        .await
        .expect("json");
    assert!(
        second_hits["content"].as_u64().unwrap_or(0) > 0,
        "both instances serve: {second_hits}"
    );

    stop_second.cancel();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let metrics = http
        .get(format!("{}/metrics", tv.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let down =
        format!("bff_upstream_instance_healthy{{upstream=\"content\",instance=\"{second}\"}} 0");
    assert!(
        metrics.contains(&down),
        "the health check took it out: {down}\n{metrics}"
    );
    for i in 0..20 {
        let res = home().await.expect("home");
        assert_eq!(res.status(), StatusCode::OK, "call {i}");
        assert!(
            res.headers().get("x-degraded").is_none(),
            "call {i} degraded: {:?}",
            res.headers().get("x-degraded")
        );
    }
}

#[tokio::test]
async fn hedging_hides_a_slow_instance() {
    let stack = Stack::start().await;
    let (_, slow, _stop) = Stack::extra_backends().await;
    let http = reqwest::Client::new();
    let fault = serde_json::json!({"service": "content", "latency_ms": 400});
    let res = http
        .post(format!("{slow}/admin/faults"))
        .json(&fault)
        .send()
        .await
        .expect("fault");
    assert!(res.status().is_success());
    let tv = TestBff::start(&bff_tv::BFF, &stack, |c| {
        c.cache.enabled = false;
        let content = c.upstreams.get_mut("content").expect("content");
        content.instances = vec![slow.clone()];
        content.hedge_after_ms = Some(50);
    })
    .await;
    let token = stack.user_token("user-0042", "feed:read").await;
    for i in 0..8 {
        let start = std::time::Instant::now();
        let res = http
            .get(format!("{}/api/home", tv.url))
            .bearer_auth(&token)
            .send()
            .await
            .expect("home");
        let elapsed = start.elapsed();
        assert_eq!(res.status(), StatusCode::OK);
        // Round robin sends half the calls to the slow instance; the hedge answers them from the
        // other one long before its 400 ms.
        assert!(
            elapsed < Duration::from_millis(350),
            "call {i}: {elapsed:?}"
        );
    }
    let metrics = http
        .get(format!("{}/metrics", tv.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("bff_upstream_hedges_total{upstream=\"content\",variant=\"primary\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn for_you_is_one_batched_lookup_fed_by_the_recommendations() {
    let stack = Stack::start().await;
    let tv = TestBff::start(&bff_tv::BFF, &stack, |c| c.cache.enabled = false).await;
    let token = stack.user_token("user-0042", "feed:read").await;
    let http = reqwest::Client::new();
    let home = || async {
        let res = http
            .get(format!("{}/api/home", tv.url))
            .bearer_auth(&token)
            .send()
            .await
            .expect("home");
        let degraded = res
            .headers()
            .get("x-degraded")
            .map(|v| v.to_str().expect("ascii").to_owned());
        (
            res.status(),
            degraded,
            res.json::<Value>().await.expect("json"),
        )
    };

    let calls = |before: &Value, after: &Value, service: &str| {
        after[service].as_u64().unwrap_or(0) - before[service].as_u64().unwrap_or(0)
    };
    let before = stack.hits().await;
    let (status, degraded, body) = home().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(degraded, None, "{body}");
    let for_you = body["rows"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["id"] == "for_you"))
        .expect("for_you row");
    let tiles = for_you["tiles"].as_array().expect("tiles");
    assert!(tiles.len() > 1, "{for_you}");
    assert!(tiles.iter().all(|t| t["title"].is_string()), "{for_you}");
    // featured, trending and the one batched lookup: never one call per recommended item.
    let after = stack.hits().await;
    assert_eq!(calls(&before, &after, "content"), 3, "{after}");
    assert_eq!(calls(&before, &after, "recommendations"), 1, "{after}");
    let parts = &body["_meta"]["parts"];
    assert_eq!(parts["recommendations"]["outcome"], "ok");
    assert_eq!(parts["for_you"]["outcome"], "ok");

    // Without recommendations there is nothing to look up: skipped, and said so.
    stack.fault("recommendations", 0, 1.0).await;
    let before = stack.hits().await;
    let (status, degraded, body) = home().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(degraded.as_deref(), Some("for_you,recommendations"));
    assert_eq!(body["_meta"]["parts"]["for_you"]["outcome"], "skipped");
    assert!(
        body["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .all(|r| r["id"] != "for_you"),
        "{body}"
    );
    assert_eq!(calls(&before, &stack.hits().await, "content"), 2);
}
