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
    spawn_with(config, &[]).await
}

/// [`spawn`] with `env` set for the process.
async fn spawn_with(config: &std::path::Path, env: &[(&str, &str)]) -> (Process, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let bff = Process::spawn(
        BIN,
        &[
            "--config",
            config.to_str().expect("path"),
            "--listen",
            &listen,
        ],
        env,
    );
    wait_healthy(&format!("http://{listen}/readyz"), Duration::from_secs(10)).await;
    (bff, format!("http://{listen}"))
}

#[tokio::test]
async fn the_binary_serves_and_exits_0_on_sigterm() {
    let stack = Stack::start().await;
    let (mut bff, url) = spawn(&stack.config_file(&bff_mobile::BFF, |_| {})).await;
    let token = stack.user_token("user-0042", "profile:read").await;
    assert_eq!(profile(&url, &token).await, StatusCode::OK);
    assert_eq!(bff.terminate(), Some(0));
}

/// `GET /api/v2/user/profile` (three gRPC parts aggregated) on the BFF at `url`: its status.
async fn profile(url: &str, token: &str) -> StatusCode {
    reqwest::Client::new()
        .get(format!("{url}/api/v2/user/profile"))
        .bearer_auth(token)
        .send()
        .await
        .expect("profile")
        .status()
}

/// The threads a process runs, by name.
#[cfg(target_os = "linux")]
fn threads(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("/proc")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect();
    names.sort();
    names
}

/// The name jemalloc gives the thread that returns freed memory to the system.
#[cfg(target_os = "linux")]
const ALLOCATOR_THREAD: &str = "jemalloc_bg_thd";

/// jemalloc returns freed memory from one background thread of its own, as the workspace's build
/// settings (`.cargo/config.toml`) tell it, and `_RJEM_MALLOC_CONF` at start overrides them.
#[cfg(all(target_os = "linux", feature = "jemalloc", not(feature = "mimalloc")))]
#[tokio::test]
async fn jemalloc_returns_memory_from_one_background_thread_unless_told_otherwise() {
    let stack = Stack::start().await;
    let token = stack.user_token("user-0042", "profile:read").await;
    let config = stack.config_file(&bff_mobile::BFF, |_| {});
    for (env, expected) in [
        (&[][..], 1),
        (&[("_RJEM_MALLOC_CONF", "background_thread:false")][..], 0),
    ] {
        let (mut bff, url) = spawn_with(&config, env).await;
        assert_eq!(profile(&url, &token).await, StatusCode::OK, "{env:?}");
        let names = threads(bff.child.id());
        let allocator = names.iter().filter(|n| *n == ALLOCATOR_THREAD).count();
        assert_eq!(allocator, expected, "{env:?}: {names:?}");
        assert_eq!(bff.terminate(), Some(0), "{env:?}");
    }
}

/// `server.workers = 1` serves everything, an aggregated route included, on the one thread of a
/// single-threaded runtime and still drains on SIGTERM; three workers are three runtime threads
/// beside the main one. The only other thread folds latency samples into the metrics.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn server_workers_sets_the_runtime_threads() {
    let stack = Stack::start().await;
    let token = stack.user_token("user-0042", "profile:read").await;
    for (workers, runtime_threads) in [(1, 0), (3, 3)] {
        let config = stack.config_file(&bff_mobile::BFF, |c| c.server.workers = workers);
        let (mut bff, url) = spawn(&config).await;
        assert_eq!(
            profile(&url, &token).await,
            StatusCode::OK,
            "workers = {workers}"
        );
        let mut names = threads(bff.child.id());
        names.retain(|n| n != ALLOCATOR_THREAD);
        let runtime = names.iter().filter(|n| n.starts_with("tokio")).count();
        assert_eq!(runtime, runtime_threads, "workers = {workers}: {names:?}");
        // Beside them: the main thread and the metrics upkeep's (and the allocator's, below).
        assert!(names.iter().any(|n| n == "bff-metrics"), "{names:?}");
        assert_eq!(names.len(), runtime_threads + 2, "{names:?}");
        assert_eq!(bff.terminate(), Some(0), "workers = {workers}");
    }
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

mod otlp {
    //! A minimal OTLP/gRPC collector that keeps the spans it receives.

    use std::sync::{Arc, Mutex};

    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::trace::v1::Span;

    #[derive(Clone, Default)]
    pub struct Collector(pub Arc<Mutex<Vec<Span>>>);

    #[tonic::async_trait]
    impl TraceService for Collector {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let spans = request
                .into_inner()
                .resource_spans
                .into_iter()
                .flat_map(|r| r.scope_spans)
                .flat_map(|s| s.spans);
            self.0.lock().expect("spans").extend(spans);
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    /// Serves a collector on a free port until the test ends; and that port. The port is bound
    /// before it is named, so no other test can take it in between.
    pub fn start() -> (Collector, u16) {
        let collector = Collector::default();
        let service = TraceServiceServer::new(collector.clone());
        let incoming = tonic::transport::server::TcpIncoming::bind(([127, 0, 0, 1], 0).into())
            .expect("bind the collector");
        let port = incoming.local_addr().expect("collector address").port();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        (collector, port)
    }
}

/// With `telemetry.otlp_endpoint`, the binary exports a server span per request that continues the
/// client's trace, and the backend calls name that span as their parent; the last batch is sent
/// on SIGTERM. (Several worker threads: the collector must run while the test waits for the
/// process to exit.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_reach_an_otlp_collector_in_the_callers_trace() {
    let (collector, port) = otlp::start();
    let stack = Stack::start().await;
    let config = stack.config_file(&bff_mobile::BFF, |c| {
        c.telemetry.otlp_endpoint = Some(format!("http://127.0.0.1:{port}"));
    });
    let (mut bff, url) = spawn(&config).await;
    let token = stack.user_token("user-0042", "profile:read").await;
    let res = reqwest::Client::new()
        .get(format!("{url}/api/v2/user/profile"))
        .bearer_auth(&token)
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .send()
        .await
        .expect("profile");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(bff.terminate(), Some(0));

    let mut spans = Vec::new();
    for _ in 0..100 {
        spans = collector.0.lock().expect("spans").clone();
        if !spans.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let span = spans
        .iter()
        .find(|s| s.name == "GET /api/v2/user/profile")
        .unwrap_or_else(|| panic!("no request span among {spans:?}"));
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    assert_eq!(hex(&span.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(hex(&span.parent_span_id), "00f067aa0ba902b7");
    let seen: serde_json::Value = stack
        .http
        .get(format!("{}/admin/last-traceparent", stack.rest))
        .send()
        .await
        .expect("traceparent")
        .json()
        .await
        .expect("json");
    let user = seen["user"].as_str().expect("user saw a traceparent");
    assert_eq!(
        user,
        format!(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
            hex(&span.span_id)
        ),
        "the backend call's parent is the exported span"
    );
}
