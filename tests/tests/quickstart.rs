//! The README's quick start, as a newcomer runs it: start devstack, take the printed token, call
//! the profile; stop it with SIGTERM.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use bff_tests::{Process, free_port, wait_healthy};
use serde_json::Value;

#[tokio::test]
async fn devstack_serves_the_profile_with_the_printed_token() {
    let ports: Vec<u16> = (0..7).map(|_| free_port()).collect();
    let p = |i: usize| ports[i].to_string();
    let mut devstack = Process::spawn(
        "devstack",
        &[
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
    let stdout = devstack.child.stdout.take().expect("stdout");
    let (token, key) = tokio::task::spawn_blocking(move || {
        let (mut token, mut key) = (None, None);
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("line");
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
        (
            token.expect("banner prints a token"),
            key.expect("banner prints a partner key"),
        )
    })
    .await
    .expect("banner");

    let mobile = format!("http://127.0.0.1:{}", ports[3]);
    wait_healthy(&format!("{mobile}/healthz"), Duration::from_secs(10)).await;
    let http = reqwest::Client::new();
    let res = http
        .get(format!("{mobile}/api/v2/user/profile"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("profile");
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["user"]["id"], "user-0042");

    let res = http
        .get(format!("{mobile}/api/v2/user/profile"))
        .send()
        .await
        .expect("profile");
    assert_eq!(res.status(), 401);

    for (port, path) in [(ports[4], "/api/profile"), (ports[5], "/api/home")] {
        let res = http
            .get(format!("http://127.0.0.1:{port}{path}"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("call");
        assert_eq!(res.status(), 200, "{path}");
    }
    let res = http
        .get(format!("http://127.0.0.1:{}/v1/subscriptions", ports[6]))
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
