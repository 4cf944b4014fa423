//! The BFF binaries' command line: `check --config`, exit codes, serving and draining on SIGTERM.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use bff_tests::{Process, Stack, binary, free_port, wait_healthy};

fn repo_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

#[test]
fn shipped_configurations_are_valid() {
    for bff in ["mobile", "web", "tv", "partner"] {
        let out = Command::new(binary(&format!("bff-{bff}")))
            .args(["check", "--config"])
            .arg(repo_file(&format!("deploy/config/{bff}.toml")))
            .output()
            .expect("run check");
        assert!(
            out.status.success(),
            "{bff}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_bad_configuration_exits_64_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("bff-cli-{}", std::process::id()));
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
        let out = Command::new(binary("bff-mobile"))
            .args(["check", "--config"])
            .arg(&file)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(64), "{toml}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
    }
}

#[tokio::test]
async fn a_bff_binary_serves_and_exits_0_on_sigterm() {
    let stack = Stack::start().await;
    let config = stack.config_file(&bff_mobile::BFF, |_| {});
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut bff = Process::spawn(
        "bff-mobile",
        &[
            "--config",
            config.to_str().expect("path"),
            "--listen",
            &listen,
        ],
        &[],
    );
    wait_healthy(&format!("http://{listen}/readyz"), Duration::from_secs(10)).await;
    let token = stack.user_token("user-0042", "profile:read").await;
    let res = reqwest::Client::new()
        .get(format!("http://{listen}/api/v2/user/profile"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("profile");
    assert_eq!(res.status(), 200);
    assert_eq!(bff.terminate(), Some(0));
}
