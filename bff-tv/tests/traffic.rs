//! Traffic experiments and fault injection through the TV BFF, on real sockets: a split sends its
//! cohort's calls to the alternate backend; injected faults degrade or fail the home screen as a
//! real outage would.

use std::time::Duration;

use bff_tests::{Process, Stack, TestBff, free_port, wait_healthy};
use gateway_core::config::{FaultConfig, SplitConfig};
use gateway_core::upstream::split::Cohort;
use reqwest::StatusCode;
use serde_json::Value;

const UPSTREAMS: [&str; 3] = ["content", "ads", "recommendations"];

async fn content_hits(http: &reqwest::Client, rest: &str) -> u64 {
    let hits: Value = http
        .get(format!("{rest}/admin/hits"))
        .send()
        .await
        .expect("hits")
        .json()
        .await
        .expect("json");
    hits["content"].as_u64().expect("content hits")
}

/// The real binary, configured by file: 10% of principals go to a second backend instance,
/// always the same ones, and the metrics say which variant served.
#[tokio::test]
async fn a_split_sends_its_cohort_to_the_alternate_backend_and_always_the_same() {
    let stack = Stack::start().await;
    let (_, alternate, _stop) = Stack::extra_backends().await;
    let config = stack.config_file(&bff_tv::BFF, |c| {
        c.cache.enabled = false;
        for name in UPSTREAMS {
            let up = c.upstreams.get_mut(name).expect("upstream");
            up.split = Some(SplitConfig {
                url: alternate.clone(),
                instances: Vec::new(),
                percent: 10.0,
                name: "v2".into(),
            });
        }
    });
    let listen = format!("127.0.0.1:{}", free_port());
    let mut bff = Process::spawn(
        env!("CARGO_BIN_EXE_bff-tv"),
        &[
            "--config",
            config.to_str().expect("path"),
            "--listen",
            &listen,
        ],
        &[],
    );
    let url = format!("http://{listen}");
    wait_healthy(&format!("{url}/readyz"), Duration::from_secs(10)).await;

    let cohort = Cohort::new("v2", 10.0);
    let users: Vec<String> = (1..=1_000).map(|i| format!("user-{i:04}")).collect();
    let inside: Vec<&String> = users
        .iter()
        .filter(|u| cohort.contains(u))
        .take(3)
        .collect();
    let outside: Vec<&String> = users
        .iter()
        .filter(|u| !cohort.contains(u))
        .take(3)
        .collect();
    assert_eq!((inside.len(), outside.len()), (3, 3));

    let http = reqwest::Client::new();
    for round in 0..2 {
        for (user, in_cohort) in inside
            .iter()
            .map(|u| (u, true))
            .chain(outside.iter().map(|u| (u, false)))
        {
            let token = stack.user_token(user, "feed:read").await;
            let before = (
                content_hits(&http, &stack.rest).await,
                content_hits(&http, &alternate).await,
            );
            let res = http
                .get(format!("{url}/api/home"))
                .bearer_auth(&token)
                .send()
                .await
                .expect("home");
            assert_eq!(res.status(), StatusCode::OK, "{user}");
            assert!(res.headers().get("x-degraded").is_none(), "{user}");
            let after = (
                content_hits(&http, &stack.rest).await,
                content_hits(&http, &alternate).await,
            );
            let (primary_calls, alternate_calls) = (after.0 - before.0, after.1 - before.1);
            if in_cohort {
                assert!(
                    primary_calls == 0 && alternate_calls > 0,
                    "round {round}: {user} is in the cohort: primary {primary_calls}, alternate {alternate_calls}"
                );
            } else {
                assert!(
                    primary_calls > 0 && alternate_calls == 0,
                    "round {round}: {user} is not in the cohort: primary {primary_calls}, alternate {alternate_calls}"
                );
            }
        }
    }

    let metrics = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for variant in ["v2", "primary"] {
        let series = format!(
            "bff_upstream_calls_total{{upstream=\"content\",variant=\"{variant}\",outcome=\"ok\"}}"
        );
        assert!(metrics.contains(&series), "{series}\n{metrics}");
    }
    assert_eq!(bff.terminate(), Some(0));
}

async fn home(stack: &Stack, tv: &TestBff, user: &str) -> (StatusCode, String, Value) {
    let token = stack.user_token(user, "feed:read").await;
    let res = reqwest::Client::new()
        .get(format!("{}/api/home", tv.url))
        .bearer_auth(&token)
        .send()
        .await
        .expect("home");
    let degraded = res
        .headers()
        .get("x-degraded")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (res.status(), degraded, res.json().await.expect("json"))
}

async fn with_fault(stack: &Stack, upstream: &str, fault: FaultConfig) -> TestBff {
    TestBff::start(&bff_tv::BFF, stack, |c| {
        c.cache.enabled = false;
        c.upstreams.get_mut(upstream).expect("upstream").fault = Some(fault);
    })
    .await
}

#[tokio::test]
async fn injected_errors_degrade_an_optional_part_and_fail_a_required_one() {
    let stack = Stack::start().await;
    let errors = FaultConfig {
        error_percent: 100.0,
        ..FaultConfig::default()
    };
    let tv = with_fault(&stack, "ads", errors.clone()).await;
    let (status, degraded, body) = home(&stack, &tv, "user-0042").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(degraded, "sponsored");
    assert_eq!(body["_meta"]["parts"]["sponsored"]["outcome"], "error");
    assert_eq!(body["_meta"]["parts"]["featured"]["outcome"], "ok");
    assert_eq!(
        stack.hits().await["ads"],
        0,
        "the ads backend is never called"
    );
    let metrics = reqwest::get(format!("{}/metrics", tv.url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let series =
        "bff_upstream_faults_injected_total{upstream=\"ads\",variant=\"primary\",kind=\"error\"}";
    assert!(metrics.contains(series), "{series}\n{metrics}");

    // `featured` needs the content service.
    let tv = with_fault(&stack, "content", errors).await;
    let (status, _, body) = home(&stack, &tv, "user-0042").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body["code"], "UPSTREAM_ERROR");
}

#[tokio::test]
async fn an_injected_delay_past_the_timeout_times_the_part_out() {
    let stack = Stack::start().await;
    // The ads part's timeout is 300 ms.
    let tv = with_fault(
        &stack,
        "ads",
        FaultConfig {
            delay_ms: 2_000,
            delay_percent: 100.0,
            error_percent: 0.0,
        },
    )
    .await;
    let start = std::time::Instant::now();
    let (status, degraded, body) = home(&stack, &tv, "user-0042").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(degraded, "sponsored");
    assert_eq!(body["_meta"]["parts"]["sponsored"]["outcome"], "timeout");
    assert!(
        start.elapsed() < Duration::from_millis(1_500),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn faults_at_zero_percent_change_nothing() {
    let stack = Stack::start().await;
    let tv = with_fault(
        &stack,
        "ads",
        FaultConfig {
            delay_ms: 2_000,
            delay_percent: 0.0,
            error_percent: 0.0,
        },
    )
    .await;
    let (status, degraded, body) = home(&stack, &tv, "user-0042").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(degraded, "");
    assert_eq!(body["_meta"]["complete"], true);
    assert!(stack.hits().await["ads"].as_u64().unwrap_or(0) > 0);
}
