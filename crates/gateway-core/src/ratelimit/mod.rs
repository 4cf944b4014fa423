//! Rate limiting: decisions per principal and route policy (GCRA with a burst, or a sliding window
//! that keeps "N per period" literally), against an in-memory store or a shared Redis store with an
//! explicit failure policy, and the limit headers on every answer.
//!
//! Headers written on every limited response (2xx included):
//! `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` (seconds until the bucket is
//! full again), IETF `RateLimit-Policy: "name";q=limit;w=period` and `RateLimit: "name";r=R;t=T`;
//! on 429 also `Retry-After` (whole seconds, rounded up).

pub mod gcra;
pub mod memory;
pub mod quota;
pub mod redis;
pub mod window;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

pub use crate::config::Algorithm;
use crate::config::{FailureMode, LimitKey, RateLimitConfig};
use crate::edge::RequestFacts;
use crate::error::GatewayError;
use crate::store::StoreError;
use crate::upstream::Upstream;
use crate::upstream::Upstreams;
use crate::upstream::breaker::BreakerState;
use memory::MemoryStore;

/// A resolved policy: `limit` per `period`, `burst` at once.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Name, as in the configuration and the `RateLimit-Policy` header.
    pub name: Arc<str>,
    /// How requests are counted.
    pub algorithm: Algorithm,
    /// Requests per period.
    pub limit: u64,
    /// The period.
    pub period: Duration,
    /// Requests admitted back to back.
    pub burst: u64,
    /// Microseconds between two admissions at the sustained rate.
    pub interval_us: u64,
    /// A fixed quota per longer window, on top of the rate.
    pub quota: Option<quota::Quota>,
    policy_header: HeaderValue,
}

impl Policy {
    /// A policy of `limit` per `period` with `burst`.
    pub fn new(name: &str, algorithm: Algorithm, limit: u64, period: Duration, burst: u64) -> Self {
        let interval_us = (period.as_micros() as u64 / limit.max(1)).max(1);
        let policy_header = HeaderValue::from_str(&format!(
            "\"{name}\";q={limit};w={}",
            period.as_secs().max(1)
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("\"default\""));
        Self {
            name: name.into(),
            algorithm,
            limit,
            period,
            burst: burst.max(1),
            interval_us,
            quota: None,
            policy_header,
        }
    }

    /// The same policy with a quota of `limit` per `window` on top.
    pub fn with_quota(mut self, limit: u64, window: Duration) -> Self {
        let window_ms = (window.as_millis() as u64).max(1);
        self.quota = Some(quota::Quota { limit, window_ms });
        let header = format!(
            "{}, \"{}-quota\";q={limit};w={}",
            self.policy_header.to_str().unwrap_or_default(),
            self.name,
            window.as_secs().max(1)
        );
        if let Ok(v) = HeaderValue::from_str(&header) {
            self.policy_header = v;
        }
        self
    }

    /// The period in whole milliseconds (at least 1).
    pub fn period_ms(&self) -> u64 {
        (self.period.as_millis() as u64).max(1)
    }

    /// GCRA's tolerance: how far ahead of now the TAT may run.
    pub fn tolerance_us(&self) -> u64 {
        self.interval_us * self.burst
    }

    /// The same policy (quota included) for one of `n` gateways deciding alone.
    fn share(&self, n: u32) -> Self {
        let n = u64::from(n.max(1));
        let share = Self::new(
            &self.name,
            self.algorithm,
            self.limit.div_ceil(n),
            self.period,
            self.burst.div_ceil(n),
        );
        match self.quota {
            Some(q) => share.with_quota(q.limit.div_ceil(n), Duration::from_millis(q.window_ms)),
            None => share,
        }
    }
}

/// The outcome of one decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Requests that would still be admitted right now.
    pub remaining: u64,
    /// Microseconds until the bucket is full again.
    pub reset_us: u64,
    /// Microseconds until the next request would be admitted (0 when allowed).
    pub retry_after_us: u64,
    /// Requests left in the quota window, when the policy has a quota.
    pub quota_remaining: Option<u64>,
    /// Microseconds until the quota window ends.
    pub quota_reset_us: u64,
}

impl Decision {
    /// Applies a quota check to a rate decision: refused if either refuses.
    pub fn with_quota(mut self, q: Option<quota::QuotaCheck>) -> Self {
        if let Some(q) = q {
            self.quota_remaining = Some(q.remaining);
            self.quota_reset_us = q.reset_ms.saturating_mul(1000);
            if self.allowed && !q.allowed {
                self.allowed = false;
                self.retry_after_us = self.quota_reset_us;
            }
        }
        self
    }
}

/// A store of limiter state shared between gateways.
#[async_trait]
pub trait RateLimitStore: Send + Sync + 'static {
    /// Decides one request for `key` under `policy`, atomically.
    async fn decide(&self, key: &str, policy: &Policy) -> Result<Decision, StoreError>;
}

/// A policy as the shared store applies it, and this gateway's share of it for deciding alone.
#[derive(Clone)]
pub struct Resolved {
    /// The policy as configured.
    pub policy: Policy,
    /// `limit / instances`, for `fail_open_local`.
    pub local_share: Policy,
    /// What requests are counted per.
    pub key: LimitKey,
    adaptive: Option<Arc<Adaptive>>,
}

/// An adaptive policy's shrunk form, in force while any of `upstreams` has an open circuit.
struct Adaptive {
    upstreams: Vec<Arc<Upstream>>,
    shrunk: Resolved,
}

impl Resolved {
    fn new(policy: Policy, instances: u32) -> Self {
        let local_share = policy.share(instances);
        Self {
            policy,
            local_share,
            key: LimitKey::Subject,
            adaptive: None,
        }
    }

    /// The policy in force now: the shrunk one while an upstream the routes need has its circuit
    /// open (or probing), the configured one otherwise.
    pub fn in_force(&self) -> &Resolved {
        match &self.adaptive {
            Some(a)
                if a.upstreams
                    .iter()
                    .any(|u| u.breaker_state() != BreakerState::Closed) =>
            {
                &a.shrunk
            }
            _ => self,
        }
    }
}

/// One BFF's limiter: policies, the store, and what to do when the store fails.
pub struct RateLimiter {
    bff: &'static str,
    // The configuration's names, looked up on every request with SipHash's cost for nothing:
    // nobody can insert into these maps, so nobody can flood them.
    policies: HashMap<String, Resolved, foldhash::fast::RandomState>,
    tiers: HashMap<String, String, foldhash::fast::RandomState>,
    routes: HashMap<String, String, foldhash::fast::RandomState>,
    shared: Option<Arc<dyn RateLimitStore>>,
    local: MemoryStore,
    failure_mode: FailureMode,
    instances: u32,
    degraded: AtomicBool,
    epoch: Instant,
    decisions: Decisions,
}

impl RateLimiter {
    /// Builds the limiter; `shared` is the Redis store when one is configured, `upstreams` are
    /// those adaptive policies watch.
    pub fn new(
        bff: &'static str,
        cfg: &RateLimitConfig,
        shared: Option<Arc<dyn RateLimitStore>>,
        upstreams: &Upstreams,
    ) -> Self {
        let policies = cfg
            .policies
            .iter()
            .map(|(name, p)| {
                let period = Duration::from_secs(p.period_secs);
                let burst = p.burst.unwrap_or(p.limit);
                let with_quota = |policy: Policy| match &p.quota {
                    Some(q) => policy.with_quota(q.limit, Duration::from_secs(q.window_secs)),
                    None => policy,
                };
                let mut resolved = Resolved::new(
                    with_quota(Policy::new(name, p.algorithm, p.limit, period, burst)),
                    cfg.instances,
                );
                resolved.key = p.key;
                if let Some(a) = &p.adaptive {
                    let scale = |n: u64| ((n as f64 * a.factor).floor() as u64).max(1);
                    let shrunk = with_quota(Policy::new(
                        name,
                        p.algorithm,
                        scale(p.limit),
                        period,
                        scale(burst),
                    ));
                    resolved.adaptive = Some(Arc::new(Adaptive {
                        upstreams: a
                            .upstreams
                            .iter()
                            .filter_map(|u| upstreams.get(u))
                            .collect(),
                        shrunk: Resolved {
                            key: p.key,
                            ..Resolved::new(shrunk, cfg.instances)
                        },
                    }));
                }
                (name.clone(), resolved)
            })
            .collect();
        Self {
            bff,
            policies,
            tiers: cfg.tiers.clone().into_iter().collect(),
            routes: cfg.routes.clone().into_iter().collect(),
            shared,
            local: MemoryStore::new(cfg.max_keys),
            failure_mode: cfg.failure_mode,
            instances: cfg.instances,
            degraded: AtomicBool::new(false),
            epoch: Instant::now(),
            decisions: Decisions::default(),
        }
    }

    /// The policy for a request: by route first, then by tier, then `default`.
    pub fn resolve(&self, route: Option<&str>, tier: Option<&str>) -> &Resolved {
        let named = route
            .and_then(|r| self.routes.get(r))
            .or_else(|| tier.and_then(|t| self.tiers.get(t)))
            .and_then(|name| self.policies.get(name));
        // `default` always exists: configuration validation refuses a limiter without it.
        named.unwrap_or_else(|| &self.policies["default"])
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// What [`RateLimiter::decide`] answers when it can without waiting: with no shared store,
    /// the in-memory decision. `None` when the shared store is to be asked.
    fn decide_now(&self, key: &str, resolved: &Resolved) -> Option<Decision> {
        if self.shared.is_some() {
            return None;
        }
        let d = self.local.decide(key, &resolved.policy, self.now_us());
        self.decisions.record(self.bff, d.allowed, Mode::Memory);
        Some(d)
    }

    /// Decides one request for `key`, applying the failure policy when the shared store fails.
    pub async fn decide(&self, key: &str, resolved: &Resolved) -> Result<Decision, GatewayError> {
        let Resolved {
            policy,
            local_share,
            ..
        } = resolved;
        let Some(shared) = &self.shared else {
            let d = self.local.decide(key, policy, self.now_us());
            self.decisions.record(self.bff, d.allowed, Mode::Memory);
            return Ok(d);
        };
        match shared.decide(key, policy).await {
            Ok(d) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        bff = self.bff,
                        "rate-limit store recovered; shared limits back in force"
                    );
                }
                self.decisions.record(self.bff, d.allowed, Mode::Shared);
                Ok(d)
            }
            Err(err) => {
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(bff = self.bff, error = %err, mode = ?self.failure_mode, instances = self.instances,
                        "rate-limit store unavailable; applying failure mode until it recovers");
                }
                match self.failure_mode {
                    FailureMode::FailOpenLocal => {
                        let d = self.local.decide(key, local_share, self.now_us());
                        self.decisions
                            .record(self.bff, d.allowed, Mode::FailOpenLocal);
                        Ok(d)
                    }
                    FailureMode::FailOpen => {
                        self.decisions.record(self.bff, true, Mode::FailOpen);
                        Ok(Decision {
                            allowed: true,
                            remaining: policy.burst,
                            reset_us: 0,
                            retry_after_us: 0,
                            ..Decision::default()
                        })
                    }
                    FailureMode::FailClosed => {
                        self.decisions.record(self.bff, false, Mode::FailClosed);
                        Err(GatewayError::LimiterUnavailable)
                    }
                }
            }
        }
    }
}

/// How a decision was made: the `mode` label of `bff_ratelimit_decisions_total`.
#[derive(Clone, Copy)]
enum Mode {
    Memory,
    Shared,
    FailOpenLocal,
    FailOpen,
    FailClosed,
}

impl Mode {
    const LABELS: [&str; 5] = [
        "memory",
        "shared",
        "fail_open_local",
        "fail_open",
        "fail_closed",
    ];
}

/// The decision counters, each registered on its first use (a series that never happened is
/// not shown) and then incremented without a registry lookup.
#[derive(Default)]
struct Decisions([[OnceLock<metrics::Counter>; 2]; Mode::LABELS.len()]);

impl Decisions {
    fn record(&self, bff: &'static str, allowed: bool, mode: Mode) {
        let mode = mode as usize;
        self.0[mode][usize::from(allowed)]
            .get_or_init(|| {
                let decision = if allowed { "allowed" } else { "limited" };
                metrics::counter!("bff_ratelimit_decisions_total", "bff" => bff, "decision" => decision, "mode" => Mode::LABELS[mode])
            })
            .increment(1);
    }
}

/// Middleware: decide, then answer 429/503 or pass on, writing the limit headers either way.
pub async fn limit(State(limiter): State<Arc<RateLimiter>>, req: Request, next: Next) -> Response {
    limited(&limiter, req, |req| next.run(req)).await
}

/// What [`limit`] does, around `next` (the rest of the pipeline), so that the gateway can run
/// authentication and rate limits as one layer.
///
/// Not an `async fn`, for the reason [`crate::auth::authenticated`] gives: the in-memory limiter
/// decides at once, and then the future returned is `next`'s and the limit headers to write.
/// Only a decision by the shared store, which waits on it, gets a boxed future.
pub fn limited<'a, F, Fut>(
    limiter: &'a RateLimiter,
    req: Request,
    next: F,
) -> impl Future<Output = Response> + Send + 'a
where
    F: FnOnce(Request) -> Fut + Send + 'a,
    Fut: Future<Output = Response> + Send + 'a,
{
    use futures::future::{BoxFuture, Either};
    let facts = RequestFacts::of(req.extensions());
    let principal = facts.and_then(|f| f.principal.as_ref());
    let matched = crate::proxy::MatchedRoute::of(req.extensions());
    let route = matched.as_ref().map(crate::proxy::MatchedRoute::as_str);
    let policy = limiter
        .resolve(route, principal.and_then(|p| p.tier.as_deref()))
        .in_force();
    let subject = subject_of(limiter.bff, policy, facts);
    match limiter.decide_now(&subject, policy) {
        Some(d) => Either::Left(decided(Ok(d), &policy.policy, req, next)),
        None => {
            let waited: BoxFuture<'a, Response> = Box::pin(async move {
                let decision = limiter.decide(&subject, policy).await;
                decided(decision, &policy.policy, req, next).await
            });
            Either::Right(waited)
        }
    }
}

/// What a request with `facts` is counted as under `policy`, in `bff`: per subject by default;
/// per client address when the policy says so, or when nobody authenticated (no such route
/// today). Written without the formatting machinery: this runs on every request.
fn subject_of(bff: &str, policy: &Resolved, facts: Option<&RequestFacts>) -> String {
    let principal = facts.and_then(|f| f.principal.as_ref());
    let mut subject = String::with_capacity(64);
    subject.push_str(bff);
    subject.push(':');
    subject.push_str(&policy.policy.name);
    subject.push(':');
    match (policy.key, principal) {
        (LimitKey::Subject, Some(p)) => subject.push_str(&p.subject),
        _ => {
            subject.push_str("ip:");
            if let Some(edge) = facts.and_then(|f| f.edge.as_ref()) {
                crate::edge::push_ip(&mut subject, edge.client_ip.0);
            }
        }
    }
    subject
}

/// The request once decided: passed on, its answer carrying the limit headers; or answered 429
/// (with them) or, when the decision failed, with the failure.
fn decided<F, Fut>(
    decision: Result<Decision, GatewayError>,
    policy: &Policy,
    req: Request,
    next: F,
) -> impl Future<Output = Response>
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    use futures::future::Either;
    let refused = match decision {
        Ok(d) if d.allowed => {
            return Either::Left(futures::FutureExt::map(next(req), move |mut res| {
                write_headers(res.headers_mut(), policy, &d);
                res
            }));
        }
        Ok(d) => {
            let retry_after_secs = d.retry_after_us.div_ceil(1_000_000).max(1);
            let mut res = GatewayError::RateLimited { retry_after_secs }.into_response();
            write_headers(res.headers_mut(), policy, &d);
            res
        }
        Err(err) => err.into_response(),
    };
    Either::Right(std::future::ready(refused))
}

static X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
static POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static X_QUOTA_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-quota-limit");
static X_QUOTA_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-quota-remaining");
static X_QUOTA_RESET: HeaderName = HeaderName::from_static("x-ratelimit-quota-reset");

/// Writes the limit headers of `decision` under `policy`.
pub fn write_headers(headers: &mut HeaderMap, policy: &Policy, decision: &Decision) {
    let reset = decision.reset_us.div_ceil(1_000_000);
    // Every value is written into one buffer and split off it: one allocation for all of them
    // rather than one each.
    let mut buf = bytes::BytesMut::with_capacity(2 * policy.name.len() + 192);
    let put = |headers: &mut HeaderMap, name: &HeaderName, buf: &mut bytes::BytesMut| {
        if let Ok(v) = HeaderValue::from_maybe_shared(buf.split().freeze()) {
            headers.insert(name.clone(), v);
        }
    };
    let mut number = |headers: &mut HeaderMap, name: &HeaderName, n: u64| {
        buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        put(headers, name, &mut buf);
    };
    number(headers, &X_LIMIT, policy.burst);
    number(headers, &X_REMAINING, decision.remaining);
    number(headers, &X_RESET, reset);
    let quota = match (policy.quota, decision.quota_remaining) {
        (Some(quota), Some(left)) => {
            let quota_reset = decision.quota_reset_us.div_ceil(1_000_000);
            number(headers, &X_QUOTA_LIMIT, quota.limit);
            number(headers, &X_QUOTA_REMAINING, left);
            number(headers, &X_QUOTA_RESET, quota_reset);
            Some((left, quota_reset))
        }
        _ => None,
    };
    headers.insert(POLICY.clone(), policy.policy_header.clone());
    // `"name";r=remaining;t=reset`, and the quota's after it.
    let item = |out: &mut bytes::BytesMut, suffix: &str, left: u64, reset: u64| {
        out.extend_from_slice(b"\"");
        out.extend_from_slice(policy.name.as_bytes());
        out.extend_from_slice(suffix.as_bytes());
        out.extend_from_slice(b"\";r=");
        out.extend_from_slice(itoa::Buffer::new().format(left).as_bytes());
        out.extend_from_slice(b";t=");
        out.extend_from_slice(itoa::Buffer::new().format(reset).as_bytes());
    };
    item(&mut buf, "", decision.remaining, reset);
    if let Some((left, quota_reset)) = quota {
        buf.extend_from_slice(b", ");
        item(&mut buf, "-quota", left, quota_reset);
    }
    put(headers, &RATELIMIT, &mut buf);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PolicyConfig;

    struct Down;

    #[async_trait]
    impl RateLimitStore for Down {
        async fn decide(&self, _: &str, _: &Policy) -> Result<Decision, StoreError> {
            Err(StoreError::Timeout)
        }
    }

    fn no_upstreams() -> Upstreams {
        Upstreams::new(&Default::default()).expect("upstreams")
    }

    fn cfg(mode: FailureMode, instances: u32) -> RateLimitConfig {
        RateLimitConfig {
            failure_mode: mode,
            instances,
            policies: [(
                "default".to_owned(),
                PolicyConfig {
                    algorithm: Algorithm::Gcra,
                    ..PolicyConfig::per_minute(10)
                },
            )]
            .into(),
            ..RateLimitConfig::default()
        }
    }

    #[tokio::test]
    async fn memory_limiter_admits_exactly_the_limit_under_concurrency() {
        let limiter = Arc::new(RateLimiter::new(
            "t",
            &cfg(FailureMode::FailOpenLocal, 1),
            None,
            &no_upstreams(),
        ));
        let tasks: Vec<_> = (0..15)
            .map(|_| {
                let l = limiter.clone();
                tokio::spawn(async move {
                    let p = l.resolve(None, None).clone();
                    l.decide("user", &p)
                        .await
                        .map(|d| d.allowed)
                        .unwrap_or(false)
                })
            })
            .collect();
        let mut admitted = 0;
        for t in tasks {
            admitted += usize::from(t.await.unwrap_or(false));
        }
        assert_eq!(admitted, 10);
    }

    #[tokio::test]
    async fn fail_open_local_divides_the_limit_by_instances() {
        let limiter = RateLimiter::new(
            "t",
            &cfg(FailureMode::FailOpenLocal, 2),
            Some(Arc::new(Down)),
            &no_upstreams(),
        );
        let p = limiter.resolve(None, None).clone();
        let mut admitted = 0;
        for _ in 0..10 {
            admitted += usize::from(
                limiter
                    .decide("u", &p)
                    .await
                    .map(|d| d.allowed)
                    .unwrap_or(false),
            );
        }
        assert_eq!(admitted, 5);
    }

    #[tokio::test]
    async fn fail_closed_refuses_with_503() {
        let limiter = RateLimiter::new(
            "t",
            &cfg(FailureMode::FailClosed, 1),
            Some(Arc::new(Down)),
            &no_upstreams(),
        );
        let p = limiter.resolve(None, None).clone();
        assert!(matches!(
            limiter.decide("u", &p).await,
            Err(GatewayError::LimiterUnavailable)
        ));
    }

    #[tokio::test]
    async fn an_adaptive_policy_shrinks_while_its_upstream_circuit_is_open() {
        let mut ads = crate::config::UpstreamConfig::at("http://127.0.0.1:9");
        ads.breaker_failures = 1;
        let upstreams = Upstreams::new(&[("ads".to_owned(), ads)].into()).expect("upstreams");
        let mut cfg = cfg(FailureMode::FailOpenLocal, 1);
        cfg.policies.insert(
            "default".into(),
            PolicyConfig {
                adaptive: Some(crate::config::AdaptiveConfig {
                    upstreams: vec!["ads".into()],
                    factor: 0.5,
                }),
                ..PolicyConfig::per_minute(10)
            },
        );
        let limiter = RateLimiter::new("t", &cfg, None, &upstreams);
        assert_eq!(limiter.resolve(None, None).in_force().policy.limit, 10);
        let up = upstreams.get("ads").expect("ads");
        let _ = up
            .call(&crate::CallContext::detached(), |_| async {
                Err::<(), _>(crate::upstream::UpstreamError::Timeout)
            })
            .await;
        let in_force = limiter.resolve(None, None).in_force();
        assert_eq!(in_force.policy.limit, 5);
        let mut admitted = 0;
        for _ in 0..10 {
            admitted += usize::from(
                limiter
                    .decide("u", in_force)
                    .await
                    .map(|d| d.allowed)
                    .unwrap_or(false),
            );
        }
        assert_eq!(admitted, 5);
    }

    #[test]
    fn headers_follow_the_decision() {
        let p = Policy::new(
            "default",
            Algorithm::SlidingWindow,
            100,
            Duration::from_secs(60),
            100,
        );
        let mut h = HeaderMap::new();
        write_headers(
            &mut h,
            &p,
            &Decision {
                allowed: true,
                remaining: 42,
                reset_us: 1_500_000,
                retry_after_us: 0,
                ..Decision::default()
            },
        );
        assert_eq!(h["x-ratelimit-limit"], "100");
        assert_eq!(h["x-ratelimit-remaining"], "42");
        assert_eq!(h["x-ratelimit-reset"], "2");
        assert_eq!(h["ratelimit-policy"], "\"default\";q=100;w=60");
        assert_eq!(h["ratelimit"], "\"default\";r=42;t=2");
    }

    #[test]
    fn each_mode_has_its_own_label() {
        let cases = [
            (Mode::Memory, "memory"),
            (Mode::Shared, "shared"),
            (Mode::FailOpenLocal, "fail_open_local"),
            (Mode::FailOpen, "fail_open"),
            (Mode::FailClosed, "fail_closed"),
        ];
        for (mode, label) in cases {
            assert_eq!(Mode::LABELS[mode as usize], label);
        }
    }

    #[test]
    fn a_quota_adds_its_item_to_the_ratelimit_header() {
        let p = Policy::new("partner", Algorithm::Gcra, 10, Duration::from_secs(1), 20)
            .with_quota(10_000, Duration::from_secs(86_400));
        let mut h = HeaderMap::new();
        write_headers(
            &mut h,
            &p,
            &Decision {
                allowed: true,
                remaining: 19,
                reset_us: 100_000,
                quota_remaining: Some(9_999),
                quota_reset_us: 3_600_000_001,
                ..Decision::default()
            },
        );
        assert_eq!(
            h["ratelimit"],
            "\"partner\";r=19;t=1, \"partner-quota\";r=9999;t=3601"
        );
        assert_eq!(h["x-ratelimit-quota-remaining"], "9999");
        assert_eq!(h["x-ratelimit-quota-reset"], "3601");
    }
}
