//! The `bff-mobile` binary as operators run it: `check --config`, exit codes, serving, SIGTERM, and
//! three instances sharing one Redis.

use std::time::Duration;

use bff_tests::{Process, RedisServer, Stack, check_config, free_port, repo_path, wait_healthy};
use reqwest::StatusCode;

const BIN: &str = env!("CARGO_BIN_EXE_bff-mobile");

#[test]
fn the_shipped_configuration_is_valid() {
    let out = check_config(BIN, &repo_path("deploy/config/mobile.toml"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_bad_configuration_exits_64_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("bff-mobile-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    for (toml, expected) in [
        (
            "[server]\nlisten_adress = \"127.0.0.1:1\"\n",
            "server.listen_adress",
        ),
        (
            "[ratelimit.policies.default]\nlimit = 0\nperiod_secs = 60\n",
            "ratelimit.policies.default.limit must be > 0, got 0",
        ),
        (
            "[upstreams.user]\nurl = \"ftp://x\"\n",
            "upstreams.user.url must be an http(s) URL",
        ),
    ] {
        let file = dir.join("bad.toml");
        std::fs::write(&file, toml).expect("write");
        let out = check_config(BIN, &file);
        assert_eq!(out.status.code(), Some(64), "{toml}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
    }
}

async fn spawn(config: &std::path::Path) -> (Process, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let bff = Process::spawn(
        BIN,
        &[
            "--config",
            config.to_str().expect("path"),
            "--listen",
            &listen,
        ],
        &[],
    );
    wait_healthy(&format!("http://{listen}/readyz"), Duration::from_secs(10)).await;
    (bff, format!("http://{listen}"))
}

#[tokio::test]
async fn the_binary_serves_and_exits_0_on_sigterm() {
    let stack = Stack::start().await;
    let (mut bff, url) = spawn(&stack.config_file(&bff_mobile::BFF, |_| {})).await;
    let token = stack.user_token("user-0042", "profile:read").await;
    let res = reqwest::Client::new()
        .get(format!("{url}/api/v2/user/profile"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("profile");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(bff.terminate(), Some(0));
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
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(spawn(&config).await);
    }
    let urls: Vec<String> = instances
        .iter()
        .map(|(_, url)| format!("{url}/api/v2/user/profile"))
        .collect();
    let token = stack.user_token("user-0042", "profile:read").await;
    let (ok, limited, other) = bff_tests::burst(&urls, &token, 1000).await;
    assert_eq!((ok, limited, other), (100, 900, 0));
}

/// SIGTERM with 20 slow requests in flight: readiness turns 503 at once, every request finishes
/// with 200, and the process exits 0.
#[tokio::test]
async fn sigterm_lets_twenty_slow_requests_finish_then_exits_0() {
    let stack = Stack::start().await;
    let (mut bff, url) = spawn(&stack.config_file(&bff_mobile::BFF, |_| {})).await;
    let token = stack.user_token("user-0042", "feed:read").await;
    // Each call spends 400 ms in the content service (its timeout is 500 ms).
    stack.fault("content", 400, 0.0).await;
    let http = reqwest::Client::new();
    let requests: Vec<_> = (0..20)
        .map(|i| {
            let req = http
                .get(format!("{url}/api/catalog/items/item-{:03}", i + 1))
                .bearer_auth(&token)
                .send();
            tokio::spawn(req)
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    bff.signal("-TERM");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let ready = http.get(format!("{url}/readyz")).send().await;
    assert!(
        ready.is_err() || ready.is_ok_and(|r| r.status() == StatusCode::SERVICE_UNAVAILABLE),
        "draining: not ready, or no longer accepting"
    );
    for req in requests {
        let res = req.await.expect("task").expect("answered");
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert_eq!(bff.wait(), Some(0));
}
