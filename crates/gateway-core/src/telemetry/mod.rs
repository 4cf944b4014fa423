//! Logs, metrics and the access log.
//!
//! One access line per request (target `access`), Prometheus metrics from one process-wide recorder
//! rendered at `/metrics`, every series labelled with the BFF's name.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::auth::Principal;
use crate::config::{LogFormat, TelemetryConfig};
use crate::edge::RequestId;
use crate::error::ErrorCode;

/// Latency buckets (seconds), from sub-millisecond cache hits to slow fan-outs.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the global log subscriber once; later calls do nothing (tests build many gateways).
pub fn init_logging(cfg: &TelemetryConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
                .map(PrometheusBuilder::build_recorder)
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Another recorder may exist in an embedding process; then our handle renders nothing
            // rather than failing start-up.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Middleware: one access line and the request metrics per request.
pub async fn access_log(State(bff): State<&'static str>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let request_id = req.extensions().get::<RequestId>().cloned();
    let res = next.run(req).await;
    let elapsed = start.elapsed();
    let status = res.status().as_u16();
    let subject = res
        .extensions()
        .get::<Principal>()
        .map(|p| p.subject.clone());
    let code = res.extensions().get::<ErrorCode>().map(|c| c.0);
    tracing::info!(
        target: "access",
        bff,
        method = %method,
        path = %path,
        route = %route,
        status,
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        request_id = request_id.as_ref().and_then(|r| r.0.to_str().ok()).unwrap_or(""),
        subject = subject.as_deref().unwrap_or(""),
        problem = code.unwrap_or(""),
        cache = res.headers().get("x-cache").and_then(|v| v.to_str().ok()).unwrap_or(""),
        degraded = res.headers().get("x-degraded").and_then(|v| v.to_str().ok()).unwrap_or(""),
    );
    let status_label = status.to_string();
    metrics::counter!("bff_requests_total", "bff" => bff, "route" => route.clone(), "status" => status_label)
        .increment(1);
    metrics::histogram!("bff_request_duration_seconds", "bff" => bff, "route" => route)
        .record(elapsed.as_secs_f64());
    res
}
