//! The [`Gateway`]: one BFF's shared machinery, the composition of the pipeline around its routes,
//! and the server runner with graceful shutdown.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use crate::aggregate::{ApiResponse, CacheStatus, Shaped};
use crate::app::App;
use crate::auth::apikey::{
    ApiKeyStore, KeyHash, LayeredApiKeyStore, MemoryApiKeyStore, RedisApiKeyStore,
};
use crate::auth::jwt::JwtVerifier;
use crate::auth::{self, Authenticator};
use crate::cache::{CacheStore, Lookup, MemoryCache, RedisCache, ResponseCache, coalesce};
use crate::config::{AuthMode, Config, ConfigError};
use crate::edge::RequestFacts;
use crate::error::GatewayError;
use crate::idempotency::Idempotency;
use crate::listener::Connections;
use crate::proxy::{ProxyRoute, ProxyTable};
use crate::ratelimit::{self, RateLimitStore, RateLimiter, redis::RedisStore};
use crate::stage::{Stage, StageLayer};
use crate::store::Redis;
use crate::upstream::{CallContext, Upstreams};
use crate::{edge, telemetry};

/// One BFF's machinery, shared by all its handlers. Cheap to clone.
pub struct Gateway<C> {
    inner: Arc<Shared<C>>,
}

impl<C> Clone for Gateway<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

/// What a [`Gateway`] holds.
pub struct Shared<C> {
    /// The BFF's name, as in logs and metrics (`bff-mobile`).
    pub bff: &'static str,
    /// Its validated configuration.
    pub config: Config<C>,
    /// How callers authenticate.
    pub auth: Arc<Authenticator>,
    /// Rate limits.
    pub limiter: Arc<RateLimiter>,
    /// Response cache.
    pub cache: ResponseCache,
    /// Idempotency records of writes.
    pub idempotency: Idempotency,
    /// Pass-through routes.
    pub proxies: Vec<Arc<ProxyRoute>>,
    /// How its listener accepts and bounds connections (TLS included).
    pub connections: Connections,
    /// Backends.
    pub upstreams: Upstreams,
    /// Shared Redis, when configured.
    pub redis: Option<Redis>,
    /// Cached routes' computations in flight, for coalescing concurrent misses.
    inflight: coalesce::Coalescer<Result<ApiResponse, GatewayError>>,
    /// Edge settings.
    pub edge: edge::Edge,
    ready: AtomicBool,
    drain: CancellationToken,
}

impl<C> Deref for Gateway<C> {
    type Target = Shared<C>;
    fn deref(&self) -> &Shared<C> {
        &self.inner
    }
}

/// Builds a [`Gateway`] from a validated configuration.
pub struct GatewayBuilder<C> {
    bff: &'static str,
    config: Config<C>,
    api_keys: Option<Arc<dyn ApiKeyStore>>,
}

impl<C: Send + Sync + 'static> Gateway<C> {
    /// Starts building the gateway of `bff` from `config`.
    pub fn builder(bff: &'static str, config: Config<C>) -> GatewayBuilder<C> {
        GatewayBuilder {
            bff,
            config,
            api_keys: None,
        }
    }
}

impl<C: Send + Sync + 'static> GatewayBuilder<C> {
    /// Uses `store` as the shared API-key store (devstack shares one with its identity provider).
    pub fn api_key_store(mut self, store: Arc<dyn ApiKeyStore>) -> Self {
        self.api_keys = Some(store);
        self
    }

    /// Builds every component. Nothing here touches the network: Redis and JWKS are reached lazily,
    /// so a backend that is down at start-up delays nothing.
    pub fn build(self) -> Result<Gateway<C>, ConfigError> {
        let cfg = self.config;
        // Installed now, not on the first scrape: what happens before it must be counted too.
        telemetry::metrics_handle();
        let redis = Redis::from_config(&cfg.redis)?;
        let redis_bound = Duration::from_millis(cfg.redis.timeout_ms);
        let auth = match cfg.auth.mode {
            AuthMode::Jwt => {
                let http = reqwest::Client::builder()
                    .build()
                    .map_err(|e| ConfigError(format!("auth: cannot build HTTP client: {e}")))?;
                Authenticator::Jwt(JwtVerifier::new(&cfg.auth, http)?)
            }
            AuthMode::ApiKey => {
                let shared: Arc<dyn ApiKeyStore> = match (self.api_keys, &redis) {
                    (Some(store), _) => store,
                    (None, Some(r)) => Arc::new(RedisApiKeyStore::new(r.clone(), redis_bound)),
                    (None, None) => Arc::new(MemoryApiKeyStore::default()),
                };
                let configured = cfg
                    .auth
                    .api_keys
                    .iter()
                    .filter_map(|k| {
                        let record = auth::apikey::ApiKeyRecord {
                            partner: k.partner.clone(),
                            tier: k.tier.clone(),
                            version: k.version.clone(),
                        };
                        Some((KeyHash::from_hex(&k.sha256.to_ascii_lowercase())?, record))
                    })
                    .collect();
                Authenticator::ApiKey(Arc::new(LayeredApiKeyStore { configured, shared }))
            }
        };
        let limit_store = redis.clone().map(|r| {
            let bound = Duration::from_millis(cfg.ratelimit.decision_timeout_ms);
            Arc::new(RedisStore::new(r, bound)) as Arc<dyn RateLimitStore>
        });
        let cache_store: Arc<dyn CacheStore> = match &redis {
            Some(r) => Arc::new(RedisCache::new(
                r.clone(),
                Duration::from_millis(cfg.cache.timeout_ms),
            )),
            None => Arc::new(MemoryCache::new(cfg.cache.max_entries, cfg.cache.max_bytes)),
        };
        let upstreams = Upstreams::new(&cfg.upstreams)?;
        let proxies = ProxyRoute::resolve(&cfg.proxy, &upstreams, cfg.server.body_limit_bytes)?;
        let connections = Connections::from_config(&cfg.server)?;
        let trusted = cfg
            .server
            .trusted_proxies
            .iter()
            .filter_map(|c| edge::proxies::Cidr::parse(c))
            .collect();
        let edge = edge::Edge {
            trusted_proxies: trusted,
            max_uri_bytes: cfg.server.max_uri_bytes,
        };
        let shared = Shared {
            bff: self.bff,
            auth: Arc::new(auth),
            limiter: Arc::new(RateLimiter::new(
                self.bff,
                &cfg.ratelimit,
                limit_store,
                &upstreams,
            )),
            cache: ResponseCache::new(self.bff, &cfg.cache, Some(cache_store)),
            idempotency: Idempotency::new(&cfg.idempotency, redis.as_ref()),
            proxies,
            connections,
            upstreams,
            redis,
            edge,
            inflight: coalesce::Coalescer::default(),
            config: cfg,
            ready: AtomicBool::new(true),
            drain: CancellationToken::new(),
        };
        Ok(Gateway {
            inner: Arc::new(shared),
        })
    }
}

impl<C: Send + Sync + 'static> Gateway<C> {
    /// Wraps a BFF's API routes in the pipeline and adds the operational endpoints and the
    /// pass-through routes.
    ///
    /// Routing (matching the path to a route) comes first and does nothing else: a pass-through
    /// route's prefix takes its paths ahead of axum's router (see [`App`]). Then, outermost
    /// first, with the reason for each position:
    /// 1. edge hygiene: request id and trace context exist before anything logs; identity headers a
    ///    client forged are gone before anything reads them; then the path check, before any
    ///    handler, authentication or backend work, so the path that is authorised is the path a
    ///    backend would see (it runs around the not-found and method-not-allowed answers too);
    /// 2. access log and metrics: see every answer after the path check, rejections included;
    /// 3. deadline and body limit: bound the work any request can cause;
    /// 4. authentication (API routes only): before limits, so limits apply per subject;
    /// 5. rate limit: after authentication, before any cache or upstream work; then the BFF's
    ///    own [`RequestCheck`], if it has one;
    /// 6. the route: cache lookup, fan-out, shaping; or the forward of a pass-through route.
    ///
    /// An API route runs 1 to 5 as one layer, an operational or public route 1 to 3: axum gives
    /// each layer of a router a boxed service of its own for every route, and each request clones
    /// the services beneath every such box it passes. A pass-through route runs all six as one
    /// future.
    pub fn router(&self, api: Router<Gateway<C>>) -> App {
        self.pipeline(api, Router::new(), None)
    }

    /// As [`Gateway::router`], plus `public` routes that skip authentication and rate limits
    /// (an API description, say) but get everything else: edge hygiene, access log, bounds.
    pub fn router_with_public(&self, api: Router<Gateway<C>>, public: Router<Gateway<C>>) -> App {
        self.pipeline(api, public, None)
    }

    /// As [`Gateway::router`], with `check` run on every request of the API and pass-through
    /// routes, after authentication and rate limits and before the route. Cheaper than a
    /// `from_fn` layer on the API routes, which would be a layer of its own for each.
    pub fn router_with_check(&self, api: Router<Gateway<C>>, check: RequestCheck) -> App {
        self.pipeline(api, Router::new(), Some(check))
    }

    fn pipeline(
        &self,
        api: Router<Gateway<C>>,
        public: Router<Gateway<C>>,
        check: Option<RequestCheck>,
    ) -> App {
        let guard = Arc::new(Guard {
            auth: self.auth.clone(),
            limiter: self.limiter.clone(),
            check,
        });
        let outer = Arc::new(Outer {
            edge: self.edge.clone(),
            log: telemetry::AccessLog::new(self.bff, self.upstreams.has_splits()),
            bounds: Bounds {
                timeout: Duration::from_millis(self.config.server.request_timeout_ms),
                body_limit: self.config.server.body_limit_bytes,
                body_idle: Duration::from_millis(self.config.server.body_read_timeout_ms),
            },
        });
        let bounded = || {
            ServiceBuilder::new()
                .layer(StageLayer::<Outer>::new(outer.clone()))
                // Bodies read by extractors are bounded even when no length was declared.
                .layer(DefaultBodyLimit::max(self.config.server.body_limit_bytes))
        };
        let api = api
            .method_not_allowed_fallback(|| async { GatewayError::MethodNotAllowed })
            .with_state(self.clone())
            .layer(bounded().layer(StageLayer::<Guard>::new(guard.clone())));
        // The not-found answer is the operational router's, so it passes the same layers.
        let ops = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz::<C>))
            .route("/metrics", get(metrics))
            .merge(public)
            .fallback(|| async { GatewayError::NotFound("such route".into()) })
            .method_not_allowed_fallback(|| async { GatewayError::MethodNotAllowed })
            .with_state(self.clone())
            .layer(bounded());
        let router = ops.merge(api);
        let table = Arc::new(ProxyTable::new(&self.proxies));
        let passes = PassThroughs(Arc::new(PassStages {
            table: table.clone(),
            outer,
            guard,
        }));
        App::new(router, table, BoxCloneSyncService::new(passes))
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Marks the gateway draining: `/readyz` answers 503 from now on.
    pub fn set_draining(&self) {
        self.ready.store(false, Ordering::Relaxed);
        self.drain.cancel();
    }

    /// Resolves when the gateway starts draining: long-lived answers (event streams) end then, so
    /// the drain is not held up by them.
    pub fn draining(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.drain.clone().cancelled_owned()
    }

    /// Serves a cached JSON route: a fresh entry answers at once (`HIT`); otherwise `compute` runs
    /// (once for all concurrent misses of the key) and a complete answer is stored (`MISS`); if
    /// computing fails with a server-side error and a stale entry exists within `stale_for`, that
    /// is served (`STALE`). Partial answers are never stored.
    pub async fn cached<F, Fut>(
        &self,
        route: &str,
        key: &str,
        ttl: Duration,
        stale_for: Duration,
        compute: F,
    ) -> Result<ApiResponse, GatewayError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Shaped, GatewayError>>,
    {
        let stale = match self.cache.lookup(key).await {
            Lookup::Fresh(body) => {
                return Ok(ApiResponse {
                    body,
                    cache: Some(CacheStatus::Hit),
                    degraded: Vec::new(),
                    upstreams: None,
                });
            }
            Lookup::Stale(body) => Some(body),
            Lookup::Miss => None,
        };
        // Concurrent misses for one key share one computation: the leader computes, the others
        // take its answer. If the leader's client hangs up, the others compute for themselves.
        let leader = match self.inflight.join(key) {
            coalesce::Role::Leader(leader) => Some(leader),
            coalesce::Role::Follower(follower) => match follower.wait().await {
                Some(result) => return result,
                None => None,
            },
        };
        let result = self
            .compute_and_store(route, key, ttl, stale_for, stale, compute)
            .await;
        if let Some(leader) = leader {
            leader.finish(result.clone());
        }
        result
    }

    async fn compute_and_store<F, Fut>(
        &self,
        route: &str,
        key: &str,
        ttl: Duration,
        stale_for: Duration,
        stale: Option<bytes::Bytes>,
        compute: F,
    ) -> Result<ApiResponse, GatewayError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Shaped, GatewayError>>,
    {
        match compute().await {
            Ok(shaped) => {
                let res = ApiResponse::from_shaped(&shaped, Some(CacheStatus::Miss));
                if shaped.degraded.is_empty() {
                    let ttl = self.cache.ttl(route, ttl);
                    self.cache
                        .store(key, res.body.clone(), ttl, stale_for)
                        .await;
                }
                Ok(res)
            }
            Err(err) if err.status().is_server_error() => match stale {
                Some(body) => Ok(ApiResponse {
                    body,
                    cache: Some(CacheStatus::Stale),
                    degraded: Vec::new(),
                    upstreams: None,
                }),
                None => Err(err),
            },
            Err(err) => Err(err),
        }
    }
}

async fn readyz<C: Send + Sync + 'static>(State(gw): State<Gateway<C>>) -> Response {
    if gw.is_ready() {
        "ready".into_response()
    } else {
        GatewayError::Unavailable.into_response()
    }
}

async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        telemetry::metrics_handle().render(),
    )
        .into_response()
}

/// A BFF's own rule for the requests of its API and pass-through routes
/// ([`Gateway::router_with_check`]): `Some(answer)` refuses a request with that answer, `None`
/// lets it on to its route. It runs after authentication and rate limits, so a refusal carries the
/// limit headers and counts against the limit, as any answer does.
#[derive(Clone)]
pub struct RequestCheck(Arc<CheckFn>);

type CheckFn = dyn Fn(&Request) -> Option<Response> + Send + Sync;

impl RequestCheck {
    /// A check made of `check`.
    pub fn new(check: impl Fn(&Request) -> Option<Response> + Send + Sync + 'static) -> Self {
        Self(Arc::new(check))
    }
}

/// Authentication, then rate limits, then the BFF's check, as one stage, run in the API routes'
/// layer beneath [`Outer`] and by the pass-through routes (the first two are also middleware of
/// their own: [`auth::authenticate`], [`ratelimit::limit`]).
struct Guard {
    auth: Arc<Authenticator>,
    limiter: Arc<RateLimiter>,
    check: Option<RequestCheck>,
}

impl Stage for Guard {
    fn run<'a, N, F>(&'a self, req: Request, next: N) -> impl Future<Output = Response> + Send + 'a
    where
        N: FnOnce(Request) -> F + Send + 'a,
        F: Future<Output = Response> + Send + 'a,
    {
        use futures::future::Either;
        auth::authenticated(&self.auth, req, |req| {
            ratelimit::limited(&self.limiter, req, |req| {
                match self.check.as_ref().and_then(|check| (check.0)(&req)) {
                    Some(refused) => Either::Left(std::future::ready(refused)),
                    None => Either::Right(next(req)),
                }
            })
        })
    }
}

/// Edge hygiene, then the access log and metrics around the request bounds, as one layer (each
/// is also a middleware of its own: [`edge::hygiene`], [`telemetry::access_log`]). The log sees
/// every answer past the path check, a refusal by the bounds included.
struct Outer {
    edge: edge::Edge,
    log: telemetry::AccessLog,
    bounds: Bounds,
}

impl Stage for Outer {
    fn run<'a, N, F>(&'a self, req: Request, next: N) -> impl Future<Output = Response> + Send + 'a
    where
        N: FnOnce(Request) -> F + Send + 'a,
        F: Future<Output = Response> + Send + 'a,
    {
        edge::screened(&self.edge, req, |req| {
            telemetry::logged(&self.log, req, |req| bounds(self.bounds, req, next))
        })
    }
}

/// The pass-through routes' whole pipeline ([`Outer`], [`Guard`], the forward) as one service.
#[derive(Clone)]
struct PassThroughs(Arc<PassStages>);

struct PassStages {
    table: Arc<ProxyTable>,
    outer: Arc<Outer>,
    guard: Arc<Guard>,
}

impl tower::Service<Request> for PassThroughs {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        Box::pin(self.0.clone().serve(req))
    }
}

impl PassStages {
    async fn serve(
        self: Arc<Self>,
        mut req: Request,
    ) -> Result<Response, std::convert::Infallible> {
        // [`App`] sends only paths the table takes.
        let Some((route, pattern)) = self.table.find(req.uri().path()) else {
            return Ok(GatewayError::NotFound("such route".into()).into_response());
        };
        RequestFacts::of_mut(req.extensions_mut()).route = Some(pattern.clone());
        let res = self
            .outer
            .run(req, |req| {
                self.guard.run(req, |req| {
                    let ctx = CallContext::of(req.extensions());
                    // Boxed: the call to the backend is most of the pipeline's future (3 KB of
                    // its 5), and every stage above moves the future it wraps as it builds its
                    // own. Boxed once here, what they move is a pointer.
                    Box::pin(route.forward(ctx, req))
                })
            })
            .await;
        Ok(res)
    }
}

#[derive(Clone, Copy)]
struct Bounds {
    timeout: Duration,
    body_limit: usize,
    body_idle: Duration,
}

/// A body that fails with [`BodyTimedOut`] when the client pauses longer than `idle` between
/// chunks: a slow client cannot hold a handler (and its memory) indefinitely.
fn idle_bounded(body: axum::body::Body, idle: Duration) -> axum::body::Body {
    use futures::StreamExt;
    let chunks = body.into_data_stream();
    axum::body::Body::from_stream(
        futures::stream::unfold(Some(chunks), move |chunks| async move {
            let mut chunks = chunks?;
            match tokio::time::timeout(idle, chunks.next()).await {
                Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(chunks))),
                Ok(Some(Err(err))) => Some((Err(axum::Error::new(err)), None)),
                Ok(None) => None,
                Err(_) => Some((Err(axum::Error::new(BodyTimedOut)), None)),
            }
        })
        // Fused: a consumer may poll once more after the end.
        .fuse(),
    )
}

/// The client paused too long while sending a body.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received in time")]
pub struct BodyTimedOut;

/// Refuses a declared body over the limit before reading it, and bounds the time to produce the
/// response head (a streamed body, such as server-sent events, is not cut by this bound). Not an
/// `async fn`, so that its future does not hold the request beside the rest's future.
fn bounds<N, F>(b: Bounds, mut req: Request, next: N) -> impl Future<Output = Response>
where
    N: FnOnce(Request) -> F,
    F: Future<Output = Response>,
{
    use futures::future::Either;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > b.body_limit as u64) {
        return Either::Left(std::future::ready(
            GatewayError::PayloadTooLarge.into_response(),
        ));
    }
    RequestFacts::of_mut(req.extensions_mut()).deadline = Some(Instant::now() + b.timeout);
    if !axum::body::HttpBody::is_end_stream(req.body()) {
        let body = std::mem::take(req.body_mut());
        *req.body_mut() = idle_bounded(body, b.body_idle);
    }
    // A combinator, not an `async` block: a block would keep the future it awaits twice.
    Either::Right(futures::FutureExt::map(
        tokio::time::timeout(b.timeout, next(req)),
        |bounded| match bounded {
            Ok(res) => res,
            Err(_) => GatewayError::UpstreamTimeout("request".into()).into_response(),
        },
    ))
}

/// Serves `app` on `listener` with the default connection bounds, plain HTTP, until `shutdown`
/// resolves; then calls `on_drain`, stops accepting, lets in-flight requests finish within
/// `grace`, and returns. Gateways use [`crate::listener::serve`] with their own
/// [`Gateway::connections`].
pub async fn serve(
    app: impl Into<App>,
    listener: TcpListener,
    grace: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_drain: impl FnOnce() + Send + 'static,
) -> std::io::Result<()> {
    crate::listener::serve(app, listener, Connections::plain(grace), shutdown, on_drain).await
}

/// Resolves on Ctrl-C or SIGTERM.
///
/// The handlers are installed when this is called, not when the future is first polled: a SIGTERM
/// that arrives between start-up and the first poll must drain the process, not kill it. Call it
/// inside the runtime, before announcing that the process is listening.
#[cfg(unix)]
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    async move {
        let wait = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
            match s {
                Ok(mut s) => {
                    s.recv().await;
                }
                // No handler could be installed: the default action (exit) stays in force.
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = wait(interrupt) => {}
            () = wait(terminate) => {}
        }
    }
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
