//! Logs, metrics and the access log.
//!
//! One access line per request (target `access`), Prometheus metrics from one process-wide recorder
//! rendered at `/metrics`, every series labelled with the BFF's name.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::auth::Principal;
use crate::config::{LogFormat, TelemetryConfig};
use crate::edge::RequestFacts;
use crate::error::ErrorCode;
use crate::proxy::MatchedRoute;
use crate::upstream::split::Variants;

/// Latency buckets (seconds), from sub-millisecond cache hits to slow fan-outs.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the global log subscriber once; later calls do nothing (tests build many gateways).
pub fn init_logging(cfg: &TelemetryConfig) {
    init(cfg, "bff");
}

/// Installs logging and, with `telemetry.otlp_endpoint`, OpenTelemetry tracing for `service`:
/// one server span per request, continuing the caller's `traceparent`, exported over OTLP/gRPC
/// in batches. Call inside the runtime; call [`shutdown_tracing`] before exiting so the last
/// batch is sent.
pub fn init(cfg: &TelemetryConfig, service: &'static str) {
    type Base = tracing_subscriber::layer::Layered<EnvFilter, tracing_subscriber::Registry>;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let mut layers: Vec<Box<dyn Layer<Base> + Send + Sync>> = vec![match cfg.log_format {
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
        LogFormat::Pretty => fmt.boxed(),
    }];
    if let Some(endpoint) = &cfg.otlp_endpoint {
        match otlp_tracer(endpoint, cfg.trace_sample_ratio, service) {
            Ok(tracer) => layers.push(tracing_opentelemetry::layer().with_tracer(tracer).boxed()),
            Err(err) => eprintln!("{service}: OpenTelemetry export disabled: {err}"),
        }
    }
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(layers)
        .try_init();
}

static TRACER_PROVIDER: OnceLock<opentelemetry_sdk::trace::SdkTracerProvider> = OnceLock::new();

fn otlp_tracer(
    endpoint: &str,
    ratio: f64,
    service: &'static str,
) -> Result<opentelemetry_sdk::trace::Tracer, String> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build();
    let tracer = provider.tracer(service);
    TRACER_PROVIDER
        .set(provider)
        .map_err(|_| "a tracer provider is already installed".to_owned())?;
    Ok(tracer)
}

/// Sends the spans still buffered and stops the exporter; a no-op without OTLP.
pub async fn shutdown_tracing() {
    if let Some(provider) = TRACER_PROVIDER.get() {
        let provider = provider.clone();
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
}

/// Whether access lines are written (the `access` target at `info`): what only the line needs
/// (the subject on the answer, upstream timings) is gathered only then.
pub(crate) fn access_lines() -> bool {
    tracing::enabled!(target: "access", tracing::Level::INFO)
}

/// Whether request spans are exported.
fn tracing_exported() -> bool {
    TRACER_PROVIDER.get().is_some()
}

/// The server span of one request, continuing the caller's trace; the request's trace context
/// ([`crate::edge::EdgeFacts`]) then names this span, so every backend call's `traceparent`
/// points at it.
fn request_span(req: &mut Request, route: &str, bff: &'static str) -> tracing::Span {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{} {route}", req.method()),
        otel.kind = "server",
        http.request.method = %req.method(),
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        bff,
    );
    let Some(trace) = RequestFacts::edge_of(req.extensions()).map(|f| f.trace) else {
        return span;
    };
    if let Some(parent) = trace.parent_id {
        let remote = SpanContext::new(
            TraceId::from_bytes(trace.trace_id),
            SpanId::from_bytes(parent),
            TraceFlags::new(trace.flags),
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
    let context = span.context();
    let own = context.span().span_context().clone();
    if let Some(facts) = req
        .extensions_mut()
        .get_mut::<RequestFacts>()
        .and_then(|f| f.edge.as_mut())
        && own.is_valid()
    {
        facts.trace = crate::edge::TraceContext {
            trace_id: own.trace_id().to_bytes(),
            span_id: own.span_id().to_bytes(),
            flags: own.trace_flags().to_u8(),
            parent_id: trace.parent_id,
            exported: true,
        };
    }
    span
}

static RECORDER_INSTALLED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Whether the gateway's recorder is the process's: a series handle kept for good is then one
/// that counts (one taken before would count nowhere, for ever).
pub(crate) fn recorder_installed() -> bool {
    RECORDER_INSTALLED.load(std::sync::atomic::Ordering::Acquire)
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
            if metrics::set_global_recorder(recorder).is_ok() {
                RECORDER_INSTALLED.store(true, std::sync::atomic::Ordering::Release);
                keep_up(handle.clone());
            }
            handle
        })
        .clone()
}

/// How often the recorded latencies are folded into their histograms' buckets.
pub const METRICS_UPKEEP_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

/// Folds the latencies recorded since the last time into their histograms' buckets, every
/// [`METRICS_UPKEEP_PERIOD`], on a thread of its own (`bff-metrics`). The recorder keeps each
/// sample (16 bytes) until a scrape or an upkeep folds it in: without this, a gateway that nobody
/// scrapes grows by 16 bytes a request for ever (a gigabyte an hour at 17,000 requests a second),
/// and a scrape folds in everything since the last one at once, on a runtime thread. Folding
/// costs about 5 ns a sample: a millisecond a second at 200,000 requests a second.
fn keep_up(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("bff-metrics".into())
        .spawn(move || {
            loop {
                std::thread::sleep(METRICS_UPKEEP_PERIOD);
                handle.run_upkeep();
            }
        });
    if let Err(err) = spawned {
        tracing::warn!(error = %err, "cannot start the metrics upkeep; scrapes fold the samples in");
    }
}

/// What the access log needs to know of its BFF.
#[derive(Debug, Clone)]
pub struct AccessLog {
    /// The BFF's name, on every line and series.
    pub bff: &'static str,
    /// Whether some upstream has a traffic split: then each line names the variants the
    /// request's calls reached (`variants = "content=v2,ads=primary"`); otherwise the field is
    /// empty and costs nothing.
    pub variants: bool,
    series: Arc<RequestSeries>,
}

impl AccessLog {
    /// The access log of BFF `bff`; `variants` as the field says.
    pub fn new(bff: &'static str, variants: bool) -> Self {
        Self {
            bff,
            variants,
            series: Arc::new(RequestSeries::default()),
        }
    }
}

/// Routes whose series handles are kept; more (there are not, in a BFF) are registered per
/// request, as if nothing were kept.
const MAX_ROUTES_KEPT: usize = 512;
/// Statuses kept per route.
const MAX_STATUSES_KEPT: usize = 64;

/// The handles of `bff_requests_total` and `bff_request_duration_seconds`, kept per route and
/// status: a request then costs a lookup under a read lock, not the building, hashing and
/// registering of a labelled key.
#[derive(Debug, Default)]
struct RequestSeries {
    // Keyed by route patterns, the configuration's and the router's, never by a client's path:
    // a hasher without SipHash's flooding defence is enough.
    routes: RwLock<HashMap<Box<str>, Arc<RouteSeries>, foldhash::fast::RandomState>>,
}

#[derive(Debug)]
struct RouteSeries {
    route: metrics::SharedString,
    duration: metrics::Histogram,
    by_status: RwLock<Vec<(u16, metrics::Counter)>>,
}

impl RequestSeries {
    fn record(&self, bff: &'static str, route: &str, status: u16, elapsed: f64) {
        let Some(series) = self.route(bff, route) else {
            metrics::counter!("bff_requests_total", "bff" => bff, "route" => route.to_owned(), "status" => status.to_string())
                .increment(1);
            metrics::histogram!("bff_request_duration_seconds", "bff" => bff, "route" => route.to_owned())
                .record(elapsed);
            return;
        };
        series.duration.record(elapsed);
        series.count(bff, status);
    }

    fn route(&self, bff: &'static str, route: &str) -> Option<Arc<RouteSeries>> {
        if let Some(series) = read(&self.routes).get(route) {
            return Some(series.clone());
        }
        let mut routes = write(&self.routes);
        if routes.len() >= MAX_ROUTES_KEPT {
            return routes.get(route).cloned();
        }
        let label = metrics::SharedString::from_shared(Arc::<str>::from(route));
        let series = routes.entry(route.into()).or_insert_with(|| {
            Arc::new(RouteSeries {
                duration: metrics::histogram!("bff_request_duration_seconds", "bff" => bff, "route" => label.clone()),
                route: label,
                by_status: RwLock::default(),
            })
        });
        Some(series.clone())
    }
}

impl RouteSeries {
    fn count(&self, bff: &'static str, status: u16) {
        if let Some((_, counter)) = read(&self.by_status).iter().find(|(s, _)| *s == status) {
            counter.increment(1);
            return;
        }
        let counter = metrics::counter!("bff_requests_total", "bff" => bff, "route" => self.route.clone(), "status" => status.to_string());
        counter.increment(1);
        let mut by_status = write(&self.by_status);
        if by_status.len() < MAX_STATUSES_KEPT && !by_status.iter().any(|(s, _)| *s == status) {
            by_status.push((status, counter));
        }
    }
}

/// A read guard; a poisoned lock still holds whole entries (each is inserted in one step).
pub(crate) fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Middleware: one access line and the request metrics per request.
pub async fn access_log(State(log): State<AccessLog>, req: Request, next: Next) -> Response {
    logged(&log, req, |req| next.run(req)).await
}

/// What [`access_log`] does, around `next` (the rest of the pipeline), so that the gateway can
/// run it and the request bounds as one layer. Not an `async fn`: what it notes of the request
/// is taken when it is called, so its future holds the rest's future and those notes, not the
/// request as well.
pub fn logged<F, Fut>(log: &AccessLog, mut req: Request, next: F) -> impl Future<Output = Response>
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    use futures::future::Either;
    use tracing::Instrument;
    let bff = log.bff;
    let start = Instant::now();
    let variants = log.variants.then(|| {
        let v = Variants::default();
        req.extensions_mut().insert(v.clone());
        v
    });
    // Held for the span and the line.
    let matched = MatchedRoute::of(req.extensions());
    // What only the line needs is taken only when the line is written.
    let line = access_lines().then(|| {
        (
            req.method().clone(),
            req.uri().path().to_owned(),
            RequestFacts::edge_of(req.extensions()).map(|f| f.request_id.clone()),
        )
    });
    let (call, span) = if tracing_exported() {
        let span = request_span(&mut req, route_of(matched.as_ref()), bff);
        (Either::Left(next(req).instrument(span.clone())), Some(span))
    } else {
        (Either::Right(next(req)), None)
    };
    // A combinator, not an `async` block: a block would keep the future it awaits twice.
    futures::FutureExt::map(call, move |res| {
        if let Some(span) = span {
            span.record("http.response.status_code", res.status().as_u16());
        }
        let route = route_of(matched.as_ref());
        let elapsed = start.elapsed();
        let status = res.status().as_u16();
        if let Some((method, path, request_id)) = line {
            let header = |name: &str| res.headers().get(name).and_then(|v| v.to_str().ok());
            let variants = variants.map(|v| v.render());
            tracing::info!(
                target: "access",
                bff,
                method = %method,
                path = %path,
                route = %route,
                status,
                latency_ms = elapsed.as_secs_f64() * 1000.0,
                request_id = request_id.as_ref().and_then(|r| r.0.to_str().ok()).unwrap_or(""),
                subject = res.extensions().get::<Principal>().map_or("", |p| &*p.subject),
                problem = res.extensions().get::<ErrorCode>().map_or("", |c| c.0),
                cache = header("x-cache").unwrap_or(""),
                degraded = header("x-degraded").unwrap_or(""),
                variants = variants.as_deref().unwrap_or(""),
                upstreams = res
                    .extensions()
                    .get::<crate::aggregate::UpstreamTimings>()
                    .map_or("", |t| &*t.0),
            );
        }
        log.series.record(bff, route, status, elapsed.as_secs_f64());
        res
    })
}

/// The route a request matched, as series and lines name it.
fn route_of(matched: Option<&MatchedRoute>) -> &str {
    matched.map_or("unmatched", MatchedRoute::as_str)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::body::Body;
    use axum::middleware;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;
    use crate::auth::PrincipalKind;
    use crate::config::{SplitConfig, UpstreamConfig};
    use crate::upstream::{CallContext, Upstreams};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut out) = self.0.lock() {
                out.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_access_line_names_the_variants_the_calls_reached() {
        let split = UpstreamConfig {
            split: Some(SplitConfig {
                url: "http://127.0.0.1:8".into(),
                instances: Vec::new(),
                percent: 100.0,
                name: "v2".into(),
            }),
            ..UpstreamConfig::at("http://127.0.0.1:9")
        };
        let upstreams = Arc::new(
            Upstreams::new(
                &[
                    ("content".to_owned(), split),
                    ("ads".to_owned(), UpstreamConfig::at("http://127.0.0.1:9")),
                ]
                .into(),
            )
            .expect("upstreams"),
        );
        let principal = Principal::new("user-1".into(), Arc::new([]), None, PrincipalKind::User);
        let app = Router::new()
            .route(
                "/x",
                get(move |ctx: CallContext| async move {
                    for name in ["content", "ads", "content"] {
                        let up = upstreams.get(name).expect("upstream");
                        let _ = up.call(&ctx, |_| async { Ok(()) }).await;
                    }
                    "ok"
                }),
            )
            .layer(middleware::from_fn(move |mut req: Request, next: Next| {
                RequestFacts::of_mut(req.extensions_mut()).principal = Some(principal.clone());
                next.run(req)
            }))
            .layer(middleware::from_fn_with_state(
                AccessLog::new("test", true),
                access_log,
            ));
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let res = app
            .oneshot(Request::get("/x").body(Body::empty()).expect("request"))
            .await
            .expect("response");
        assert!(res.status().is_success());
        let logs = String::from_utf8(out.0.lock().expect("logs").clone()).expect("utf-8");
        let line = logs
            .lines()
            .find(|l| l.contains("\"target\":\"access\""))
            .expect("an access line");
        assert!(line.contains("\"variants\":\"content=v2\""), "{line}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_access_line_carries_each_parts_outcome_and_latency() {
        use crate::aggregate::{FanOut, Need};
        use crate::upstream::UpstreamError;
        use std::time::Duration;
        let app = Router::new()
            .route(
                "/x",
                get(|| async {
                    let gathered = FanOut::new()
                        .part("user", Need::Required, Duration::from_secs(1), async {
                            Ok(serde_json::json!({}))
                        })
                        .part("ads", Need::Optional, Duration::from_secs(1), async {
                            Err(UpstreamError::Failed("down".into()))
                        })
                        .run()
                        .await
                        .expect("gathered");
                    let shaped = gathered.respond(serde_json::Map::new());
                    crate::aggregate::ApiResponse::from_shaped(&shaped, None)
                }),
            )
            .layer(middleware::from_fn_with_state(
                AccessLog::new("test", false),
                access_log,
            ));
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let res = app
            .oneshot(Request::get("/x").body(Body::empty()).expect("request"))
            .await
            .expect("response");
        assert!(res.status().is_success());
        let logs = String::from_utf8(out.0.lock().expect("logs").clone()).expect("utf-8");
        let line = logs
            .lines()
            .find(|l| l.contains("\"target\":\"access\""))
            .expect("an access line");
        assert!(line.contains("user:ok:"), "{line}");
        assert!(line.contains("ads:error:"), "{line}");
    }

    /// Runs `app` on `req` with a JSON log captured; the access line.
    async fn access_line(app: Router, req: Request) -> String {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let res = app.oneshot(req).await.expect("response");
        assert!(res.status().is_success(), "{}", res.status());
        let logs = String::from_utf8(out.0.lock().expect("logs").clone()).expect("utf-8");
        logs.lines()
            .find(|l| l.contains("\"target\":\"access\""))
            .expect("an access line")
            .to_owned()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_access_line_carries_a_pass_through_calls_timing() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let backend = Router::new().route("/items/1", get(|| async { "{}" }));
        tokio::spawn(async move { axum::serve(listener, backend).await });
        let upstreams = Upstreams::new(&[("catalog".to_owned(), UpstreamConfig::at(&url))].into())
            .expect("upstreams");
        let config = crate::config::ProxyConfig {
            prefix: "/api/catalog".into(),
            upstream: "catalog".into(),
            rewrite: Some("/".into()),
            scopes: Vec::new(),
            methods: vec!["GET".into()],
        };
        let route = crate::proxy::ProxyRoute::resolve(&[config], &upstreams, 1024)
            .expect("route")
            .remove(0);
        let app =
            Router::new()
                .route(
                    "/api/catalog/{*rest}",
                    get(move |ctx: CallContext, req: Request| async move {
                        route.forward(ctx, req).await
                    }),
                )
                .layer(middleware::from_fn_with_state(
                    AccessLog::new("test", false),
                    access_log,
                ));
        let req = Request::get("/api/catalog/items/1")
            .body(Body::empty())
            .expect("request");
        let line = access_line(app, req).await;
        assert!(line.contains("\"upstreams\":\"catalog:200:"), "{line}");
        assert!(
            line.contains("\"route\":\"/api/catalog/{*rest}\""),
            "{line}"
        );
    }
}
