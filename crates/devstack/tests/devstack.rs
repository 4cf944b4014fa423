//! The README's quick start, as a newcomer runs it: start devstack, take the printed token, call
//! the BFFs; stop it with SIGTERM. And the same with `--redis`.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use bff_tests::{DevstackPorts, Process, RedisServer, wait_healthy};
use redis::AsyncCommands;
use serde_json::Value;

const DEVSTACK: &str = env!("CARGO_BIN_EXE_devstack");

/// Starts devstack and reads the token and partner key from its banner; stdout is drained after,
/// as a terminal would.
async fn start(ports: &DevstackPorts, extra: &[&str]) -> (Process, String, String) {
    let mut args: Vec<String> = ports.args();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut devstack = Process::spawn(DEVSTACK, &args, &[]);
    let stdout = devstack.child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut token, mut key) = (None, None);
        let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
        for line in lines.by_ref() {
            if let Some(t) = line.trim().strip_prefix("export TOKEN=") {
                token = Some(t.to_owned());
            }
            if let Some(k) = line.trim().strip_prefix("export PARTNER_KEY=") {
                key = Some(k.to_owned());
            }
            if line.starts_with("Ctrl-C stops everything") {
                break;
            }
        }
        let _ = tx.send((token, key));
        lines.for_each(drop);
    });
    let (token, key) =
        tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
            .await
            .expect("join")
            .expect("banner within 30 s");
    let token = token.expect("banner prints a token");
    let key = key.expect("banner prints a partner key");
    wait_healthy(
        &format!("{}/healthz", ports.mobile()),
        Duration::from_secs(10),
    )
    .await;
    (devstack, token, key)
}

#[tokio::test]
async fn devstack_serves_every_bff_with_the_printed_credentials_and_stops_on_sigterm() {
    let ports = DevstackPorts::free();
    let (mut devstack, token, key) = start(&ports, &[]).await;
    let http = reqwest::Client::new();
    let res = http
        .get(format!("{}/api/v2/user/profile", ports.mobile()))
        .bearer_auth(&token)
        .send()
        .await
        .expect("profile");
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["user"]["id"], "user-0042");
    let res = http
        .get(format!("{}/api/v2/user/profile", ports.mobile()))
        .send()
        .await
        .expect("profile");
    assert_eq!(res.status(), 401);

    for url in [
        format!("{}/api/home-feed", ports.mobile()),
        format!("{}/api/profile", ports.web()),
        format!("{}/api/home", ports.tv()),
    ] {
        let res = http
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .expect("call");
        assert_eq!(res.status(), 200, "{url}");
    }
    let res = http
        .get(format!("{}/v1/subscriptions", ports.partner()))
        .header("x-api-key", &key)
        .send()
        .await
        .expect("partner");
    assert_eq!(res.status(), 200, "the printed partner key works at once");

    assert_eq!(
        devstack.terminate(),
        Some(0),
        "SIGTERM stops devstack cleanly"
    );
}

#[tokio::test]
async fn with_redis_shared_state_lives_there_and_every_key_expires() {
    let Some(redis) = RedisServer::start("devstack with_redis") else {
        return;
    };
    let ports = DevstackPorts::free();
    let (_devstack, token, _) = start(&ports, &["--redis", &redis.url]).await;
    let http = reqwest::Client::new();
    let call = || {
        http.get(format!("{}/api/v2/user/profile", ports.mobile()))
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
    assert!(
        keys.iter().any(|k| k.starts_with("bff:apikey:")),
        "devstack's partner key is in Redis: {keys:?}"
    );
    for k in keys.iter().filter(|k| !k.starts_with("bff:apikey:")) {
        let ttl: i64 = conn.pttl(k).await.expect("pttl");
        assert!(ttl > 0, "{k} has no TTL ({ttl})");
    }
}
