//! Calls to backends: each `http://` instance's own pooled connections for its REST, GraphQL,
//! gRPC ([`grpc`], over HTTP/2) and pass-through calls ([`pass`]); one pooled HTTP client for
//! `https://` instances (keep-alive; another for those that speak HTTP/2) and health checks, and
//! one lazily connected tonic channel for each `https://` gRPC instance; and the per-request
//! context every call carries downstream (identity, request id, `traceparent`, deadline).
//!
//! A call's path: the version (primary, or the alternate of a traffic [`split`]) picked by the
//! caller's subject; an instance picked by the balancer; the concurrency cap; the breaker;
//! injected [`fault`]s, if configured; the call itself; retries and hedges around all of it for
//! idempotent calls. Each version has its own instances, connections, breaker, cap and retry
//! budget, so a failing canary never opens the primary's circuit.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use serde_json::Value;
use tower::retry::budget::{Budget as _, TpsBudget};

pub mod balance;
pub mod breaker;
pub mod discovery;
pub mod fault;
pub mod forward;
pub mod grpc;
mod pass;
pub mod split;

use crate::auth::Principal;
use crate::cache::coalesce::{Coalescer, Role};
use crate::config::{ConfigError, PRIMARY_VARIANT, UpstreamConfig};
use crate::edge::{REQUEST_ID, RequestFacts, RequestId, TRACEPARENT, TraceContext};
use crate::error::GatewayError;
use balance::{Balance, Dial, Instance, InstanceSet};
use breaker::{Breaker, BreakerSettings, BreakerState};
use discovery::Discovery;
use fault::{Faults, Injected};
use split::{Cohort, Variants};

/// Bound on a REST upstream's response body.
const MAX_UPSTREAM_BODY: usize = 8 * 1024 * 1024;
/// Ceiling of the first retry's jittered backoff; it doubles with each retry.
const RETRY_BASE: Duration = Duration::from_millis(10);
/// Header carrying the remaining request budget to REST backends, in milliseconds.
pub const DEADLINE_HEADER: &str = "x-request-deadline-ms";
/// [`DEADLINE_HEADER`] as the name a request's headers take.
static DEADLINE: HeaderName = HeaderName::from_static(DEADLINE_HEADER);

/// The HTTP version of an upstream's REST and pass-through calls (`[upstreams.NAME] protocol`).
/// gRPC calls are HTTP/2 whatever this says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1 to `http://` instances: one connection per call in flight, kept alive between
    /// calls. To `https://` instances, what TLS negotiates (HTTP/2 when the backend offers it).
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (cleartext `h2c` to `http://`, `h2` to `https://`), no
    /// fallback: calls in flight share connections, up to 100 on each.
    Http2,
}

/// Why an upstream call produced no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// The call did not finish within its deadline.
    #[error("timed out")]
    Timeout,
    /// The resource does not exist upstream.
    #[error("not found")]
    NotFound,
    /// The upstream refused the request as invalid.
    #[error("rejected: {0}")]
    Rejected(String),
    /// Connection failure, 5xx, or an answer we could not decode.
    #[error("failed: {0}")]
    Failed(String),
    /// Not called: the upstream's circuit breaker is open.
    #[error("circuit open")]
    CircuitOpen,
    /// Not called: the upstream already has its maximum of calls in flight.
    #[error("too many calls in flight")]
    Overloaded,
}

impl From<tonic::Status> for UpstreamError {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code;
        match s.code() {
            Code::NotFound => Self::NotFound,
            // A server that enforces our `grpc-timeout` answers CANCELLED when it expires.
            Code::DeadlineExceeded | Code::Cancelled => Self::Timeout,
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::AlreadyExists
            | Code::OutOfRange => Self::Rejected(s.message().to_owned()),
            code => Self::Failed(format!("grpc {code:?}")),
        }
    }
}

/// One backend: its primary version and, with a traffic split, an alternate version.
pub struct Upstream {
    /// Its name in the configuration.
    pub name: String,
    /// Per-call timeout.
    pub timeout: Duration,
    /// The name as a metrics label: cloning it on every call costs a reference count, not an
    /// allocation.
    label: metrics::SharedString,
    /// `primary`, or the split's name for an alternate version, as a metrics label.
    variant: metrics::SharedString,
    instances: Arc<InstanceSet>,
    balance: Balance,
    next: AtomicUsize,
    http: reqwest::Client,
    breaker: Breaker,
    in_flight: Option<Arc<tokio::sync::Semaphore>>,
    retries: u32,
    retry_budget: TpsBudget,
    hedge_after: Option<Duration>,
    faults: Option<Faults>,
    split: Option<Split>,
    /// Identical reads in flight, shared ("single flight").
    reads: Coalescer<Result<Value, UpstreamError>>,
    /// `bff_upstream_calls_total` of this version, one series per outcome, registered once.
    calls: [metrics::Counter; Outcome::LABELS.len()],
}

/// A traffic split: the cohort's calls go to `target`, a whole upstream of its own.
struct Split {
    cohort: Cohort,
    target: Box<Upstream>,
}

impl Upstream {
    /// Runs one call (made by `make` for the instance picked) through the circuit breaker:
    /// refused at once while the circuit is open; its outcome feeds the breaker. Not retried.
    /// `ctx`'s subject picks the version when the upstream has a split.
    ///
    /// Not an `async fn`, nor is `call_once`: each would keep room for `make` beside the call's
    /// own future, and a pass-through forward's future carries both.
    pub fn call<T, F, Fut>(
        &self,
        ctx: &CallContext,
        make: F,
    ) -> impl Future<Output = Result<T, UpstreamError>>
    where
        F: FnOnce(Arc<Instance>) -> Fut,
        Fut: Future<Output = Result<T, UpstreamError>>,
    {
        self.version(ctx).call_once(make)
    }

    /// The version serving `ctx`: the alternate one when the upstream has a split and the
    /// subject is in its cohort; otherwise (anonymous calls included) this one. The choice is
    /// noted for the request's access-log line.
    fn version(&self, ctx: &CallContext) -> &Upstream {
        let Some(split) = &self.split else {
            return self;
        };
        let version = match &ctx.principal {
            Some(p) if split.cohort.contains(&p.subject) => &*split.target,
            _ => self,
        };
        if let Some(variants) = &ctx.variants {
            variants.record(&self.label, &version.variant);
        }
        tracing::debug!(upstream = %self.name, variant = %version.variant, "call routed");
        version
    }

    fn call_once<T, F, Fut>(&self, make: F) -> impl Future<Output = Result<T, UpstreamError>>
    where
        F: FnOnce(Arc<Instance>) -> Fut,
        Fut: Future<Output = Result<T, UpstreamError>>,
    {
        let instance = balance::pick(&self.instances.snapshot(), self.balance, &self.next).clone();
        self.call_on(instance, make)
    }

    async fn call_on<T, F, Fut>(&self, instance: Arc<Instance>, make: F) -> Result<T, UpstreamError>
    where
        F: FnOnce(Arc<Instance>) -> Fut,
        Fut: Future<Output = Result<T, UpstreamError>>,
    {
        // A full upstream sheds the call at once: queueing would only spend the part's deadline.
        let _slot = match &self.in_flight {
            Some(slots) => Some(slots.clone().try_acquire_owned().map_err(|_| {
                self.calls[Outcome::Overloaded as usize].increment(1);
                UpstreamError::Overloaded
            })?),
            None => None,
        };
        let _inflight = instance.enter();
        let permit = self.breaker.try_acquire()?;
        let injected = self
            .faults
            .map(|f| f.draw())
            .filter(|i| i.delay.is_some() || i.error);
        let result = match injected {
            // Boxed: calls without injected faults carry no room for them.
            Some(injected) => {
                Box::pin(self.call_with_faults(injected, instance.clone(), make)).await
            }
            None => make(instance.clone()).await,
        };
        let before = self.breaker.state();
        permit.record(&result);
        let after = self.breaker.state();
        if before != after {
            let open = f64::from(u8::from(after != BreakerState::Closed));
            metrics::gauge!("bff_upstream_circuit_open", "upstream" => self.label.clone(), "variant" => self.variant.clone())
                .set(open);
            tracing::warn!(upstream = %self.name, variant = %self.variant, state = ?after, "circuit breaker changed state");
        }
        self.calls[Outcome::of(&result) as usize].increment(1);
        result
    }

    /// One call with injected faults: the delay first, spent out of the call's timeout as real
    /// latency would be; then the error instead of the call.
    async fn call_with_faults<T, F, Fut>(
        &self,
        injected: Injected,
        instance: Arc<Instance>,
        make: F,
    ) -> Result<T, UpstreamError>
    where
        F: FnOnce(Arc<Instance>) -> Fut,
        Fut: Future<Output = Result<T, UpstreamError>>,
    {
        let mut left = self.timeout;
        if let Some(delay) = injected.delay {
            self.count_fault("delay");
            if delay >= left {
                tokio::time::sleep(left).await;
                return Err(UpstreamError::Timeout);
            }
            tokio::time::sleep(delay).await;
            left -= delay;
        }
        if injected.error {
            self.count_fault("error");
            return Err(fault::injected_error());
        }
        tokio::time::timeout(left, make(instance))
            .await
            .unwrap_or(Err(UpstreamError::Timeout))
    }

    fn count_fault(&self, kind: &'static str) {
        metrics::counter!("bff_upstream_faults_injected_total", "upstream" => self.label.clone(), "variant" => self.variant.clone(), "kind" => kind)
            .increment(1);
        tracing::debug!(upstream = %self.name, variant = %self.variant, kind, "fault injected");
    }

    /// Runs an idempotent call, made afresh by `make` for each attempt: a failure (connection
    /// error, 5xx, UNAVAILABLE) is retried up to `retries` times with jittered exponential
    /// backoff, as long as the upstream's retry budget allows, so retries can never multiply the
    /// load of an upstream that is already failing. Timeouts are not retried: the part's deadline
    /// is spent. Not for writes. `ctx`'s subject picks the version when the upstream has a split;
    /// retries and hedges stay on that version.
    pub async fn call_idempotent<T, F, Fut>(
        &self,
        ctx: &CallContext,
        make: F,
    ) -> Result<T, UpstreamError>
    where
        F: Fn(Arc<Instance>) -> Fut,
        Fut: Future<Output = Result<T, UpstreamError>>,
    {
        self.version(ctx).retried(make).await
    }

    async fn retried<T, F, Fut>(&self, make: F) -> Result<T, UpstreamError>
    where
        F: Fn(Arc<Instance>) -> Fut,
        Fut: Future<Output = Result<T, UpstreamError>>,
    {
        self.retry_budget.deposit();
        let mut attempt = 0u32;
        loop {
            // Each attempt picks again, so a retry tends to land on another instance.
            let result = self.hedged(&make).await;
            if !matches!(result, Err(UpstreamError::Failed(_)))
                || attempt >= self.retries
                || !self.retry_budget.withdraw()
            {
                return result;
            }
            attempt += 1;
            metrics::counter!("bff_upstream_retries_total", "upstream" => self.label.clone(), "variant" => self.variant.clone())
                .increment(1);
            // Full jitter over an exponential ceiling: 10 ms, 20 ms, 40 ms, ...
            let ceiling = RETRY_BASE.saturating_mul(1 << attempt.min(6));
            tokio::time::sleep(ceiling.mul_f64(rand::random::<f64>())).await;
        }
    }

    /// One attempt, hedged: if it has not answered after `hedge_after`, a second goes to another
    /// instance (budget permitting) and the first answer wins; the other is dropped, which
    /// cancels it.
    async fn hedged<T, F, Fut>(&self, make: &F) -> Result<T, UpstreamError>
    where
        F: Fn(Arc<Instance>) -> Fut,
        Fut: Future<Output = Result<T, UpstreamError>>,
    {
        let instances = self.instances.snapshot();
        let Some(delay) = self.hedge_after.filter(|_| instances.len() > 1) else {
            return self.call_once(make).await;
        };
        let instance = balance::pick(&instances, self.balance, &self.next).clone();
        let other = balance::pick_other(&instances, &instance, &self.next).clone();
        drop(instances);
        let first = self.call_on(instance, make);
        tokio::pin!(first);
        tokio::select! {
            result = &mut first => return result,
            () = tokio::time::sleep(delay) => {}
        }
        if !self.retry_budget.withdraw() {
            return first.await;
        }
        metrics::counter!("bff_upstream_hedges_total", "upstream" => self.label.clone(), "variant" => self.variant.clone())
            .increment(1);
        let second = self.call_on(other, make);
        tokio::pin!(second);
        tokio::select! {
            result = &mut first => result,
            result = &mut second => result,
        }
    }

    /// The primary version's breaker state (an alternate version's breaker is its own).
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// `GET {base}{path_and_query}` and decode a JSON answer, through the breaker, retried as an
    /// idempotent call.
    pub async fn get_json(
        &self,
        ctx: &CallContext,
        path_and_query: &str,
    ) -> Result<Value, UpstreamError> {
        let version = self.version(ctx);
        version
            .coalesced(ctx, path_and_query, None, || {
                version.retried(|instance| version.fetch_json(instance, ctx, path_and_query, None))
            })
            .await
    }

    /// Runs a read once for every identical read in flight: same version, same caller, same path
    /// and body. Followers get the leader's answer; if the leader's caller goes away, they read
    /// for themselves. The caller is part of the identity because backends see who is calling.
    async fn coalesced<F, Fut>(
        &self,
        ctx: &CallContext,
        path: &str,
        body: Option<&Value>,
        read: F,
    ) -> Result<Value, UpstreamError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Value, UpstreamError>>,
    {
        use std::fmt::Write;
        let subject = ctx.principal.as_ref().map_or("", |p| &p.subject);
        let mut key = String::with_capacity(subject.len() + path.len() + 2);
        let _ = write!(key, "{subject}\0{path}");
        if let Some(body) = body {
            let _ = write!(key, "\0{body}");
        }
        match self.reads.join(&key) {
            Role::Leader(leader) => {
                let result = read().await;
                leader.finish(result.clone());
                result
            }
            Role::Follower(follower) => match follower.wait().await {
                Some(result) => {
                    metrics::counter!("bff_upstream_coalesced_total", "upstream" => self.label.clone(), "variant" => self.variant.clone())
                        .increment(1);
                    result
                }
                None => read().await,
            },
        }
    }

    /// A GraphQL query: `POST {base}/graphql` with `{"query", "variables"}`, through the breaker,
    /// retried as an idempotent call (queries are reads; never send a mutation this way). Returns
    /// `data`. A response with `errors` and no `data` is a rejection (the query was refused);
    /// `data` with some `errors` is returned as it is, the fields that failed being null.
    pub async fn graphql(
        &self,
        ctx: &CallContext,
        query: &str,
        variables: Value,
    ) -> Result<Value, UpstreamError> {
        let body = serde_json::json!({ "query": query, "variables": variables });
        let version = self.version(ctx);
        let mut answer = version
            .coalesced(ctx, "/graphql", Some(&body), || {
                version
                    .retried(|instance| version.fetch_json(instance, ctx, "/graphql", Some(&body)))
            })
            .await?;
        match answer.get_mut("data").map(Value::take) {
            Some(data) if !data.is_null() => Ok(data),
            _ => {
                let message = answer
                    .pointer("/errors/0/message")
                    .and_then(Value::as_str)
                    .unwrap_or("no data");
                Err(UpstreamError::Rejected(format!("graphql: {message}")))
            }
        }
    }

    /// One JSON call to `instance`: `GET`, or `POST` of `body`; the answer's body decoded. An
    /// `http://` instance is called on its own pooled connections, those of pass-through calls,
    /// under the same `max_connections` cap; an `https://` one through the shared client.
    async fn fetch_json(
        &self,
        instance: Arc<Instance>,
        ctx: &CallContext,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<Value, UpstreamError> {
        let timeout = ctx.budget(self.timeout);
        let answer = match (
            instance.plain_pool(),
            instance.plain_target_for(path_and_query),
        ) {
            (Some(pool), Some(uri)) => {
                let req = json_request(&instance, ctx, uri, body, timeout)?;
                // The bound covers the answer's body too, as the client's own timeout does.
                tokio::time::timeout(timeout, read_json_answer(pool.send(req)))
                    .await
                    .unwrap_or(Err(UpstreamError::Timeout))?
            }
            _ => {
                self.fetch_with_client(&instance, ctx, path_and_query, body, timeout)
                    .await?
            }
        };
        serde_json::from_slice(&answer).map_err(|_| UpstreamError::Failed("invalid JSON".into()))
    }

    /// [`Self::fetch_json`]'s call through the shared client: the answer's body, undecoded.
    async fn fetch_with_client(
        &self,
        instance: &Instance,
        ctx: &CallContext,
        path_and_query: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<bytes::Bytes, UpstreamError> {
        let url = format!("{}{path_and_query}", instance.base());
        let mut req = match body {
            None => self.http.get(url),
            Some(body) => self.http.post(url).json(body),
        }
        .header(axum::http::header::ACCEPT, "application/json")
        .timeout(timeout);
        for (name, value) in ctx.headers(timeout) {
            req = req.header(name, value);
        }
        let client_failure = |e: reqwest::Error, what: &str| {
            if e.is_timeout() {
                UpstreamError::Timeout
            } else {
                UpstreamError::Failed(what.into())
            }
        };
        let res = req.send().await.map_err(|e| client_failure(e, "connect"))?;
        judge_status(res.status())?;
        within_bound(res.content_length())?;
        res.bytes().await.map_err(|e| client_failure(e, "body"))
    }
}

/// A JSON call to an `http://` instance, as its pool sends it: the target in origin form, `Host`,
/// the context's headers and, for a `POST`, the body.
fn json_request(
    instance: &Instance,
    ctx: &CallContext,
    uri: http::Uri,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<http::Request<axum::body::Body>, UpstreamError> {
    use axum::http::header;
    let mut req = match body {
        None => http::Request::new(axum::body::Body::empty()),
        Some(body) => {
            let json = serde_json::to_vec(body)
                .map_err(|_| UpstreamError::Failed("request body".into()))?;
            let mut req = http::Request::new(axum::body::Body::from(json));
            *req.method_mut() = http::Method::POST;
            req.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            req
        }
    };
    *req.uri_mut() = uri;
    let headers = req.headers_mut();
    headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    if let Some(host) = instance.plain_host() {
        headers.insert(header::HOST, host.clone());
    }
    for (name, value) in ctx.headers(timeout) {
        headers.insert(name, value);
    }
    Ok(req)
}

/// The body of a JSON answer from a pooled connection, read whole (at most
/// [`MAX_UPSTREAM_BODY`]) whatever the status, so that the connection goes back to the pool.
async fn read_json_answer(
    answer: impl Future<Output = Result<http::Response<axum::body::Body>, pass::PassError>>,
) -> Result<bytes::Bytes, UpstreamError> {
    use http_body_util::BodyExt;
    let res = answer
        .await
        .map_err(|_| UpstreamError::Failed("connect".into()))?;
    let status = res.status();
    if let Err(too_large) = within_bound(axum::body::HttpBody::size_hint(res.body()).exact()) {
        judge_status(status)?;
        return Err(too_large);
    }
    let body = http_body_util::Limited::new(res.into_body(), MAX_UPSTREAM_BODY)
        .collect()
        .await;
    // The status decides first: a refusal is one whether or not its body could be read.
    judge_status(status)?;
    match body {
        Ok(body) => Ok(body.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(UpstreamError::Failed("body too large".into()))
        }
        Err(_) => Err(UpstreamError::Failed("body".into())),
    }
}

/// What a JSON answer's status says: 404 is not found, another 4xx a rejection, anything else
/// but success a failure.
fn judge_status(status: http::StatusCode) -> Result<(), UpstreamError> {
    if status == http::StatusCode::NOT_FOUND {
        return Err(UpstreamError::NotFound);
    }
    if status.is_client_error() {
        return Err(UpstreamError::Rejected(format!("status {status}")));
    }
    if !status.is_success() {
        return Err(UpstreamError::Failed(format!("status {status}")));
    }
    Ok(())
}

/// A JSON answer whose declared length is over [`MAX_UPSTREAM_BODY`] is a failure, unread.
fn within_bound(declared: Option<u64>) -> Result<(), UpstreamError> {
    match declared {
        Some(n) if n > MAX_UPSTREAM_BODY as u64 => {
            Err(UpstreamError::Failed("body too large".into()))
        }
        _ => Ok(()),
    }
}

impl Upstream {
    /// One version of upstream `name` at `urls`, with the upstream's settings and its own
    /// instances, connections, health checks, breaker, concurrency cap and retry budget.
    fn version_of<'a>(
        name: &str,
        variant: &str,
        urls: impl Iterator<Item = &'a String>,
        c: &UpstreamConfig,
        http: &reqwest::Client,
    ) -> Self {
        let timeout = Duration::from_millis(c.timeout_ms);
        let dial = Dial {
            connect_timeout: timeout,
            protocol: c.protocol,
            max_idle: max_idle(c),
            max_open: c.max_connections as usize,
        };
        let urls: Vec<&String> = urls.collect();
        // With DNS discovery the URLs as written serve until the first resolution, moments later.
        let instances = Arc::new(InstanceSet::new(
            urls.iter()
                .map(|url| Arc::new(Instance::new(url, dial)))
                .collect(),
        ));
        let (label, variant) = (
            metrics::SharedString::from_shared(Arc::<str>::from(name)),
            metrics::SharedString::from_shared(Arc::<str>::from(variant)),
        );
        metrics::gauge!("bff_upstream_instances", "upstream" => label.clone(), "variant" => variant.clone())
            .set(urls.len() as f64);
        let dns = c.discovery == Discovery::Dns;
        if dns {
            discovery::spawn_dns(
                name.to_owned(),
                variant.clone(),
                urls.iter()
                    .filter_map(|u| discovery::Target::parse(u))
                    .collect(),
                Arc::downgrade(&instances),
                Duration::from_millis(c.dns_refresh_ms),
                dial,
                discovery::system_resolver(),
            );
        }
        if dns || urls.len() > 1 || c.health_path.is_some() {
            balance::spawn_health_checks(
                name.to_owned(),
                Arc::downgrade(&instances),
                Duration::from_millis(c.health_check_interval_ms.max(10)),
                c.health_path.clone(),
                http.clone(),
            );
        }
        // The breaker's series exists from the start: closed until it opens.
        metrics::gauge!("bff_upstream_circuit_open", "upstream" => label.clone(), "variant" => variant.clone())
            .set(0.0);
        let calls = Outcome::LABELS.map(|o| {
            metrics::counter!("bff_upstream_calls_total", "upstream" => label.clone(), "variant" => variant.clone(), "outcome" => o)
        });
        Upstream {
            name: name.to_owned(),
            label,
            variant,
            timeout,
            instances,
            balance: c.balance,
            next: AtomicUsize::new(0),
            http: http.clone(),
            breaker: Breaker::new(BreakerSettings {
                failure_threshold: c.breaker_failures,
                open_for: Duration::from_millis(c.breaker_open_ms),
                error_rate: c.breaker_error_rate,
            }),
            in_flight: (c.max_concurrent > 0)
                .then(|| Arc::new(tokio::sync::Semaphore::new(c.max_concurrent as usize))),
            hedge_after: c.hedge_after_ms.map(Duration::from_millis),
            retries: c.retries,
            retry_budget: TpsBudget::new(
                Duration::from_secs(10),
                c.retry_min_per_sec,
                c.retry_budget_percent as f32 / 100.0,
            ),
            faults: c.fault.as_ref().and_then(Faults::new),
            split: None,
            reads: Coalescer::default(),
            calls,
        }
    }
}

/// Idle connections an instance of the upstream keeps, at most: as many as its calls in flight
/// may be, so that a burst's connections are there for the next one rather than closed and
/// opened again; idle ones are closed after 90 s.
fn max_idle(c: &UpstreamConfig) -> usize {
    match c.max_concurrent {
        0 => pass::DEFAULT_MAX_IDLE,
        cap => cap as usize,
    }
}

/// The pooled client of calls to `https://` instances (REST, GraphQL and pass-through) and of
/// health checks, for the upstreams that speak `protocol`, keeping `max_idle` idle connections
/// per host at most.
fn rest_client(protocol: Protocol, max_idle: usize) -> Result<reqwest::Client, ConfigError> {
    let builder = reqwest::Client::builder()
        // A redirect is an answer: passed through to the client or failed, never followed to
        // wherever a backend points.
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(max_idle)
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2))
        .connector_layer(tower::layer::layer_fn(CountConnections));
    match protocol {
        Protocol::Http1 => builder,
        Protocol::Http2 => builder
            .http2_prior_knowledge()
            .http2_keep_alive_interval(Duration::from_secs(30))
            .http2_keep_alive_timeout(Duration::from_secs(10)),
    }
    .build()
    .map_err(|e| ConfigError(format!("upstreams: cannot build HTTP client: {e}")))
}

/// Every upstream of one BFF, by name.
pub struct Upstreams {
    /// By the names the configuration gives them, which no client chooses: foldhash, not
    /// SipHash, for the lookups every call makes.
    by_name: HashMap<String, Arc<Upstream>, foldhash::fast::RandomState>,
}

impl Upstreams {
    /// Builds the registry: the upstreams share one pooled REST client (and another, those that
    /// speak HTTP/2); pass-through calls to an `http://` instance use the instance's own pooled
    /// connections.
    pub fn new(cfg: &BTreeMap<String, UpstreamConfig>) -> Result<Self, ConfigError> {
        // Installed before the series below are registered, so none is registered nowhere.
        crate::telemetry::metrics_handle();
        let idle = |protocol| {
            cfg.values()
                .filter(|c| c.protocol == protocol)
                .map(max_idle)
                .max()
                .unwrap_or(pass::DEFAULT_MAX_IDLE)
        };
        let http = rest_client(Protocol::Http1, idle(Protocol::Http1))?;
        // Built only when some upstream speaks HTTP/2.
        let http2 = cfg
            .values()
            .any(|c| c.protocol == Protocol::Http2)
            .then(|| rest_client(Protocol::Http2, idle(Protocol::Http2)))
            .transpose()?;
        let by_name = cfg
            .iter()
            .map(|(name, c)| {
                let http = match (&http2, c.protocol) {
                    (Some(http2), Protocol::Http2) => http2,
                    _ => &http,
                };
                let primary = std::iter::once(&c.url).chain(&c.instances);
                let mut up = Upstream::version_of(name, PRIMARY_VARIANT, primary, c, http);
                if let Some(s) = &c.split {
                    let alternate = std::iter::once(&s.url).chain(&s.instances);
                    up.split = Some(Split {
                        cohort: Cohort::new(&s.name, s.percent),
                        target: Box::new(Upstream::version_of(name, &s.name, alternate, c, http)),
                    });
                }
                (name.clone(), Arc::new(up))
            })
            .collect();
        Ok(Self { by_name })
    }

    /// Whether some upstream has a traffic split, so requests note the variants they reach.
    pub fn has_splits(&self) -> bool {
        self.by_name.values().any(|u| u.split.is_some())
    }

    /// The upstream called `name`; BFFs check at build time that theirs exist (see [`Self::require`]).
    pub fn get(&self, name: &str) -> Option<Arc<Upstream>> {
        self.by_name.get(name).cloned()
    }

    /// The upstream called `name` for a handler. BFFs declare their upstreams and start-up checks
    /// them ([`Self::require`]), so a miss here is a bug, answered 500 rather than a panic.
    pub fn expect(&self, name: &str) -> Result<Arc<Upstream>, GatewayError> {
        self.get(name).ok_or_else(|| {
            tracing::error!(upstream = name, "route calls an undeclared upstream");
            GatewayError::Internal
        })
    }

    /// Fails with a configuration error naming the first missing upstream.
    pub fn require(&self, names: &[&str]) -> Result<(), ConfigError> {
        match names.iter().find(|n| !self.by_name.contains_key(**n)) {
            Some(missing) => Err(ConfigError(format!(
                "upstreams.{missing} must be configured: this BFF calls it"
            ))),
            None => Ok(()),
        }
    }
}

/// What every upstream call of one request carries: who is calling, the request id, the trace and
/// the request's deadline.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The authenticated principal, if any.
    pub principal: Option<Principal>,
    request_id: Option<RequestId>,
    trace: Option<TraceContext>,
    deadline: Option<Instant>,
    /// Where the request notes the variants its calls reach, when some upstream has a split.
    variants: Option<Variants>,
}

impl<S: Send + Sync> FromRequestParts<S> for CallContext {
    type Rejection = GatewayError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::of(&parts.extensions))
    }
}

impl CallContext {
    /// The context the pipeline left in a request's `extensions`.
    pub fn of(extensions: &axum::http::Extensions) -> Self {
        let facts = RequestFacts::of(extensions);
        let edge = facts.and_then(|f| f.edge.as_ref());
        Self {
            principal: facts.and_then(|f| f.principal.clone()),
            request_id: edge.map(|f| f.request_id.clone()),
            trace: edge.map(|f| f.trace),
            deadline: facts.and_then(|f| f.deadline),
            variants: extensions.get::<Variants>().cloned(),
        }
    }

    /// A context for calls made outside any request (health checks, tests).
    pub fn detached() -> Self {
        Self {
            principal: None,
            request_id: None,
            trace: None,
            deadline: None,
            variants: None,
        }
    }

    /// The principal's subject; routes behind authentication always have one.
    pub fn subject(&self) -> Result<&str, GatewayError> {
        self.principal
            .as_ref()
            .map(|p| &*p.subject)
            .ok_or(GatewayError::Internal)
    }

    /// The smaller of `timeout` and what is left of the request's deadline.
    pub fn budget(&self, timeout: Duration) -> Duration {
        match self.deadline {
            Some(d) => timeout.min(d.saturating_duration_since(Instant::now())),
            None => timeout,
        }
    }

    /// The headers (or metadata) a backend call carries, made as they are taken (nothing
    /// collected first). The request id, `traceparent` and the deadline differ on every call, so
    /// they are marked never to be indexed: over HTTP/2 an indexed value enters the connection's
    /// header table (HPACK) and pushes out entries later calls could have reused (the path, the
    /// identity headers), for nothing.
    pub(crate) fn headers(
        &self,
        timeout: Duration,
    ) -> impl Iterator<Item = (HeaderName, HeaderValue)> + '_ {
        self.carried().chain(std::iter::once_with(move || {
            (
                DEADLINE.clone(),
                unique(HeaderValue::from(timeout.as_millis() as u64)),
            )
        }))
    }

    /// What every call carries, HTTP or gRPC: the identity headers, the request id and
    /// `traceparent` (the deadline is said differently by each). The names are the gateway's own
    /// statics: cloned for nothing, where a name made from text is checked byte by byte.
    fn carried(&self) -> impl Iterator<Item = (HeaderName, HeaderValue)> + '_ {
        let identity = self.principal.iter().flat_map(|p| p.identity_headers());
        identity
            .cloned()
            .chain(
                self.request_id
                    .as_ref()
                    .map(|id| (REQUEST_ID.clone(), unique(id.0.clone()))),
            )
            .chain(
                self.trace
                    .as_ref()
                    .map(|trace| (TRACEPARENT.clone(), unique(trace.child_header_value()))),
            )
    }

    /// A gRPC request carrying identity, request id and `traceparent` as metadata, and the budget
    /// as `grpc-timeout`.
    pub fn grpc<T>(&self, message: T, timeout: Duration) -> tonic::Request<T> {
        let budget = self.budget(timeout);
        // Made as the HTTP/2 headers they become: static names, and the values taken as they
        // are, where metadata keys would be parsed and the values copied for every call.
        let mut headers = http::HeaderMap::with_capacity(6);
        for (name, value) in self.carried() {
            headers.insert(name, value);
        }
        headers.insert(grpc::TIMEOUT.clone(), grpc::timeout_value(budget));
        tonic::Request::from_parts(
            tonic::metadata::MetadataMap::from_headers(headers),
            http::Extensions::new(),
            message,
        )
    }
}

/// `value`, marked never to be indexed by HTTP/2's header compression.
fn unique(mut value: HeaderValue) -> HeaderValue {
    value.set_sensitive(true);
    value
}

/// How a call ended: the `outcome` label of `bff_upstream_calls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Timeout,
    NotFound,
    Rejected,
    Error,
    CircuitOpen,
    Overloaded,
}

impl Outcome {
    /// The labels, in the order of the variants.
    const LABELS: [&str; 7] = [
        "ok",
        "timeout",
        "not_found",
        "rejected",
        "error",
        "circuit_open",
        "overloaded",
    ];

    fn of<T>(r: &Result<T, UpstreamError>) -> Self {
        match r {
            Ok(_) => Self::Ok,
            Err(UpstreamError::Timeout) => Self::Timeout,
            Err(UpstreamError::NotFound) => Self::NotFound,
            Err(UpstreamError::Rejected(_)) => Self::Rejected,
            Err(UpstreamError::Failed(_)) => Self::Error,
            Err(UpstreamError::CircuitOpen) => Self::CircuitOpen,
            Err(UpstreamError::Overloaded) => Self::Overloaded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::PrincipalKind;
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn each_outcome_has_its_own_label() {
        let cases = [
            (Outcome::Ok, "ok"),
            (Outcome::Timeout, "timeout"),
            (Outcome::NotFound, "not_found"),
            (Outcome::Rejected, "rejected"),
            (Outcome::Error, "error"),
            (Outcome::CircuitOpen, "circuit_open"),
            (Outcome::Overloaded, "overloaded"),
        ];
        for (outcome, label) in cases {
            assert_eq!(Outcome::LABELS[outcome as usize], label);
        }
        assert_eq!(Outcome::of(&Ok::<(), _>(())), Outcome::Ok);
        assert_eq!(
            Outcome::of::<()>(&Err(UpstreamError::Failed("x".into()))),
            Outcome::Error
        );
    }

    fn upstream(retries: u32, min_per_sec: u32, percent: u32) -> Arc<Upstream> {
        let cfg = UpstreamConfig {
            retries,
            retry_min_per_sec: min_per_sec,
            retry_budget_percent: percent,
            breaker_failures: 0,
            ..UpstreamConfig::at("http://127.0.0.1:9")
        };
        Upstreams::new(&[("u".to_owned(), cfg)].into())
            .expect("upstreams")
            .get("u")
            .expect("u")
    }

    async fn attempts(up: &Upstream, error: UpstreamError) -> u32 {
        let n = AtomicU32::new(0);
        let _ = up
            .call_idempotent(&CallContext::detached(), |_| {
                n.fetch_add(1, Ordering::Relaxed);
                let e = error.clone();
                async move { Err::<(), _>(e) }
            })
            .await;
        n.load(Ordering::Relaxed)
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_retried_within_the_budget_and_timeouts_are_not() {
        let up = upstream(2, 10, 20);
        assert_eq!(attempts(&up, UpstreamError::Failed("x".into())).await, 3);
        assert_eq!(attempts(&up, UpstreamError::Timeout).await, 1);
        assert_eq!(attempts(&up, UpstreamError::NotFound).await, 1);
    }

    #[test]
    fn instances_keep_as_many_idle_connections_as_calls_may_be_in_flight() {
        let capped = UpstreamConfig {
            max_concurrent: 8,
            ..UpstreamConfig::at("http://127.0.0.1:9")
        };
        assert_eq!(max_idle(&capped), 8);
        let uncapped = UpstreamConfig {
            max_concurrent: 0,
            ..capped
        };
        assert_eq!(max_idle(&uncapped), pass::DEFAULT_MAX_IDLE);
        assert_eq!(
            max_idle(&UpstreamConfig::at("http://127.0.0.1:9")),
            1024,
            "the default cap on calls in flight"
        );
    }

    #[tokio::test]
    async fn calls_past_the_cap_are_shed_at_once() {
        let cfg = UpstreamConfig {
            max_concurrent: 1,
            ..UpstreamConfig::at("http://127.0.0.1:9")
        };
        let up = Upstreams::new(&[("u".to_owned(), cfg)].into())
            .expect("upstreams")
            .get("u")
            .expect("u");
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let up = up.clone();
            tokio::spawn(async move {
                up.call(&CallContext::detached(), |_| async {
                    wait.await.map_err(|_| UpstreamError::Timeout)
                })
                .await
            })
        };
        tokio::task::yield_now().await;
        while up
            .in_flight
            .as_ref()
            .is_some_and(|s| s.available_permits() > 0)
        {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            up.call(&CallContext::detached(), |_| async { Ok(()) })
                .await,
            Err(UpstreamError::Overloaded)
        );
        let _ = release.send(());
        assert_eq!(first.await.expect("join"), Ok(()));
        assert_eq!(
            up.call(&CallContext::detached(), |_| async { Ok(()) })
                .await,
            Ok(())
        );
    }

    const PRIMARY: &str = "http://127.0.0.1:9";
    const ALTERNATE: &str = "http://127.0.0.1:8";

    fn split(percent: f64, tweak: impl FnOnce(&mut UpstreamConfig)) -> Arc<Upstream> {
        let mut cfg = UpstreamConfig {
            split: Some(crate::config::SplitConfig {
                url: ALTERNATE.into(),
                instances: Vec::new(),
                percent,
                name: "v2".into(),
            }),
            ..UpstreamConfig::at(PRIMARY)
        };
        tweak(&mut cfg);
        Upstreams::new(&[("u".to_owned(), cfg)].into())
            .expect("upstreams")
            .get("u")
            .expect("u")
    }

    fn as_user(subject: &str) -> CallContext {
        CallContext {
            principal: Some(Principal::new(
                subject.into(),
                Arc::new([]),
                None,
                PrincipalKind::User,
            )),
            ..CallContext::detached()
        }
    }

    /// The instance a call for `ctx` reaches.
    async fn reached(up: &Upstream, ctx: &CallContext) -> String {
        up.call_idempotent(ctx, |i| async move { Ok(i.base().to_owned()) })
            .await
            .expect("answer")
    }

    #[tokio::test]
    async fn a_ten_percent_split_sends_ten_percent_of_principals_and_always_the_same() {
        let up = split(10.0, |_| {});
        let subjects: Vec<String> = (1..=2_000).map(|i| format!("user-{i:04}")).collect();
        let mut alternate = Vec::new();
        for s in &subjects {
            if reached(&up, &as_user(s)).await == ALTERNATE {
                alternate.push(s.clone());
            }
        }
        let share = alternate.len() as f64 * 100.0 / subjects.len() as f64;
        assert!(
            (8.0..=12.0).contains(&share),
            "{share}% went to the alternate"
        );
        for s in &subjects {
            let expected = if alternate.contains(s) {
                ALTERNATE
            } else {
                PRIMARY
            };
            for _ in 0..3 {
                assert_eq!(reached(&up, &as_user(s)).await, expected, "{s}");
            }
        }
        assert_eq!(reached(&up, &CallContext::detached()).await, PRIMARY);
    }

    #[tokio::test]
    async fn a_failing_alternate_leaves_the_primary_breaker_closed() {
        let up = split(50.0, |c| c.breaker_failures = 2);
        let cohort = Cohort::new("v2", 50.0);
        let subjects: Vec<String> = (0..100).map(|i| format!("u{i}")).collect();
        let inside = subjects
            .iter()
            .find(|s| cohort.contains(s))
            .expect("one in");
        let outside = subjects
            .iter()
            .find(|s| !cohort.contains(s))
            .expect("one out");
        let fail = |_| async { Err::<(), _>(UpstreamError::Failed("down".into())) };
        for _ in 0..2 {
            let _ = up.call(&as_user(inside), fail).await;
        }
        assert_eq!(
            up.call(&as_user(inside), |_| async { Ok(()) }).await,
            Err(UpstreamError::CircuitOpen)
        );
        assert_eq!(up.breaker_state(), BreakerState::Closed);
        assert_eq!(
            up.call(&as_user(outside), |_| async { Ok(()) }).await,
            Ok(())
        );
    }

    fn faulty(timeout_ms: u64, fault: crate::config::FaultConfig) -> Arc<Upstream> {
        let cfg = UpstreamConfig {
            timeout_ms,
            breaker_failures: 3,
            retries: 0,
            fault: Some(fault),
            ..UpstreamConfig::at(PRIMARY)
        };
        Upstreams::new(&[("u".to_owned(), cfg)].into())
            .expect("upstreams")
            .get("u")
            .expect("u")
    }

    #[tokio::test]
    async fn injected_errors_are_upstream_failures_and_open_the_breaker() {
        let up = faulty(
            1_000,
            crate::config::FaultConfig {
                error_percent: 100.0,
                ..Default::default()
            },
        );
        let (made, ctx) = (AtomicU32::new(0), CallContext::detached());
        let call = || {
            up.call(&ctx, |_| {
                made.fetch_add(1, Ordering::Relaxed);
                async { Ok(()) }
            })
        };
        for _ in 0..3 {
            assert_eq!(
                call().await,
                Err(UpstreamError::Failed("injected fault".into()))
            );
        }
        assert_eq!(call().await, Err(UpstreamError::CircuitOpen));
        assert_eq!(
            made.load(Ordering::Relaxed),
            0,
            "the upstream is never called"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_injected_delay_is_spent_out_of_the_timeout() {
        let delay = |delay_ms| crate::config::FaultConfig {
            delay_ms,
            delay_percent: 100.0,
            ..Default::default()
        };
        let slow = faulty(100, delay(300));
        let start = tokio::time::Instant::now();
        let result = slow
            .call(&CallContext::detached(), |_| async { Ok(()) })
            .await;
        assert_eq!(result, Err(UpstreamError::Timeout));
        assert_eq!(start.elapsed(), Duration::from_millis(100));

        let delayed = faulty(100, delay(30));
        let start = tokio::time::Instant::now();
        let answer = |_| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(())
        };
        assert_eq!(delayed.call(&CallContext::detached(), answer).await, Ok(()));
        assert_eq!(start.elapsed(), Duration::from_millis(80));
        // 30 ms of delay leave 70 ms of the timeout: an 80 ms answer is too late.
        let late = |_| async {
            tokio::time::sleep(Duration::from_millis(80)).await;
            Ok(())
        };
        assert_eq!(
            delayed.call(&CallContext::detached(), late).await,
            Err(UpstreamError::Timeout)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_budget_allows_no_retry() {
        let up = upstream(2, 0, 0);
        assert_eq!(attempts(&up, UpstreamError::Failed("x".into())).await, 1);
    }

    /// A REST backend on a free port that answers `{"n": hits}` after `delay`; and its hit count.
    async fn counting_backend(delay: Duration) -> (String, Arc<AtomicU32>) {
        let hits = Arc::new(AtomicU32::new(0));
        let counter = hits.clone();
        let app = axum::Router::new().route(
            "/{*path}",
            axum::routing::get(move || {
                let counter = counter.clone();
                async move {
                    let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    tokio::time::sleep(delay).await;
                    axum::Json(serde_json::json!({ "n": n }))
                }
            }),
        );
        (crate::testing::serve(app).await, hits)
    }

    #[tokio::test]
    async fn identical_concurrent_reads_reach_the_backend_once_per_caller() {
        let (url, hits) = counting_backend(Duration::from_millis(100)).await;
        let up = Upstreams::new(&[("u".to_owned(), UpstreamConfig::at(&url))].into())
            .expect("upstreams")
            .get("u")
            .expect("u");
        let (alice, bob) = (as_user("alice"), as_user("bob"));
        let reads = (0..20).map(|i| {
            let ctx = if i % 2 == 0 { &alice } else { &bob };
            up.get_json(ctx, "/items/1")
        });
        let answers = futures::future::join_all(reads).await;
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        assert_eq!(
            hits.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "one call per caller"
        );
        // Once finished, the next read goes to the backend again: this is not a cache.
        up.get_json(&alice, "/items/1").await.expect("again");
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_http2_upstream_gets_its_calls_over_http2_and_the_others_do_not() {
        let app = axum::Router::new().fallback(|req: axum::extract::Request| async move {
            axum::Json(serde_json::json!({ "version": format!("{:?}", req.version()) }))
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let mux = UpstreamConfig {
            protocol: Protocol::Http2,
            ..UpstreamConfig::at(&url)
        };
        let ups = Upstreams::new(
            &[
                ("mux".to_owned(), mux),
                ("plain".to_owned(), UpstreamConfig::at(&url)),
            ]
            .into(),
        )
        .expect("upstreams");
        for (name, version) in [("mux", "HTTP/2.0"), ("plain", "HTTP/1.1")] {
            let up = ups.get(name).expect("upstream");
            let answer = up
                .get_json(&CallContext::detached(), "/v")
                .await
                .expect("answer");
            assert_eq!(answer["version"], version, "{name}");
        }
    }

    /// A JSON backend on a free port that answers after `delay` with what it saw of the call,
    /// `404` under `/missing`; and the client ports it was called from, one per connection.
    async fn json_backend(delay: Duration) -> (String, Arc<std::sync::Mutex<HashSet<u16>>>) {
        use axum::extract::ConnectInfo;
        use axum::response::IntoResponse;
        let ports = Arc::new(std::sync::Mutex::new(HashSet::new()));
        let seen = ports.clone();
        let app = axum::Router::new().fallback(
            move |ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
                  req: axum::extract::Request| {
                let seen = seen.clone();
                async move {
                    seen.lock().expect("ports").insert(peer.port());
                    tokio::time::sleep(delay).await;
                    if req.uri().path() == "/missing" {
                        return (axum::http::StatusCode::NOT_FOUND, "no such thing")
                            .into_response();
                    }
                    // Read in a block of its own: a borrow of the request (its body is not
                    // `Sync`) may not live across the body's read.
                    let (method, path, host, accept, kind, user) = {
                        let header = |name: &str| {
                            req.headers()
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned()
                        };
                        (
                            req.method().to_string(),
                            req.uri().to_string(),
                            header("host"),
                            header("accept"),
                            header("content-type"),
                            header("x-user-id"),
                        )
                    };
                    let body = axum::body::to_bytes(req.into_body(), 1024)
                        .await
                        .unwrap_or_default();
                    let seen = serde_json::json!({
                        "method": method, "path": path, "host": host, "accept": accept,
                        "content_type": kind, "user": user,
                        "body": String::from_utf8_lossy(&body),
                    });
                    // A GraphQL endpoint answers in `data`.
                    match path.as_str() {
                        "/graphql" => axum::Json(serde_json::json!({ "data": seen })),
                        _ => axum::Json(seen),
                    }
                    .into_response()
                }
            },
        );
        (crate::testing::serve(app).await, ports)
    }

    #[tokio::test]
    async fn json_calls_to_a_plain_instance_keep_within_its_connection_cap() {
        let (url, ports) = json_backend(Duration::from_millis(50)).await;
        let cfg = UpstreamConfig {
            max_connections: 2,
            ..UpstreamConfig::at(&url)
        };
        let up = Upstreams::new(&[("u".to_owned(), cfg)].into())
            .expect("upstreams")
            .get("u")
            .expect("u");
        let alice = as_user("alice");
        // Six different reads at once (identical ones would be coalesced into one call).
        let paths: Vec<String> = (0..6).map(|i| format!("/items/{i}?full=1")).collect();
        let answers = futures::future::join_all(paths.iter().map(|p| up.get_json(&alice, p))).await;
        for (answer, path) in answers.iter().zip(&paths) {
            let answer = answer.as_ref().expect("answer");
            assert_eq!(answer["path"], path.as_str());
            assert_eq!(answer["method"], "GET");
            assert_eq!(answer["host"], url.trim_start_matches("http://"));
            assert_eq!(answer["accept"], "application/json");
            assert_eq!(answer["user"], "alice");
        }
        assert_eq!(
            ports.lock().expect("ports").len(),
            2,
            "two connections, reused"
        );
    }

    #[tokio::test]
    async fn a_refused_json_call_gives_its_connection_back_and_a_post_sends_its_body() {
        let (url, ports) = json_backend(Duration::ZERO).await;
        let up = Upstreams::new(&[("u".to_owned(), UpstreamConfig::at(&url))].into())
            .expect("upstreams")
            .get("u")
            .expect("u");
        let ctx = CallContext::detached();
        assert!(matches!(
            up.get_json(&ctx, "/missing").await,
            Err(UpstreamError::NotFound)
        ));
        let data = up
            .graphql(&ctx, "{ item }", serde_json::json!({ "id": 7 }))
            .await
            .expect("data");
        assert_eq!(data["method"], "POST");
        assert_eq!(data["content_type"], "application/json");
        let sent: Value = serde_json::from_str(data["body"].as_str().expect("body")).expect("json");
        assert_eq!(
            sent,
            serde_json::json!({ "query": "{ item }", "variables": { "id": 7 } })
        );
        let answer = up.get_json(&ctx, "/echo").await.expect("answer");
        assert_eq!(answer["method"], "GET");
        assert_eq!(
            ports.lock().expect("ports").len(),
            1,
            "one connection throughout"
        );
    }

    #[tokio::test]
    async fn dns_discovery_calls_the_addresses_a_name_resolves_to() {
        let (url, hits) = counting_backend(Duration::ZERO).await;
        let port = url.rsplit(':').next().expect("port");
        let cfg = UpstreamConfig {
            discovery: Discovery::Dns,
            dns_refresh_ms: 100,
            health_check_interval_ms: 50,
            ..UpstreamConfig::at(format!("http://localhost:{port}/"))
        };
        let up = Upstreams::new(&[("u".to_owned(), cfg)].into())
            .expect("upstreams")
            .get("u")
            .expect("u");
        // The name gives way to its addresses; an address where nothing listens (`::1`, say,
        // when the backend listens on IPv4 alone) is found unhealthy by the checks.
        let v4 = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = up.instances.snapshot();
            let bases: Vec<&str> = now.iter().map(|i| i.base()).collect();
            let settled = bases.contains(&v4.as_str())
                && now.iter().all(|i| i.base() == v4 || !i.is_healthy());
            if settled {
                break;
            }
            assert!(Instant::now() < deadline, "not discovered: {bases:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for _ in 0..10 {
            up.get_json(&CallContext::detached(), "/items/1")
                .await
                .expect("call");
        }
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 10);
    }
}

/// Counts the connections the REST client and the pass-through pools open
/// (`bff_upstream_http_connections_total`): with `bff_upstream_calls_total` of the HTTP upstreams
/// it gives connection reuse, `1 - connections / calls`.
#[derive(Clone)]
pub(crate) struct CountConnections<S>(S);

impl<S: tower::Service<R>, R> tower::Service<R> for CountConnections<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        metrics::counter!("bff_upstream_http_connections_total").increment(1);
        self.0.call(req)
    }
}
