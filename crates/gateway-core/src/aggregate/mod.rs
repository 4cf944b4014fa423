//! Parallel fan-out with honest partial answers.
//!
//! A route declares its parts as data: a name, whether it is required, a timeout, and the call. All
//! parts run at once, each under its own timeout, so the whole costs the slowest part, not the sum.
//! A required part that fails ends the request at once (502, or 504 on timeout) and cancels the
//! others; an optional one is reported in `_meta` and named in `X-Degraded`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::GatewayError;
use crate::upstream::UpstreamError;

/// `X-Degraded`: the parts left out of a partial answer.
pub static X_DEGRADED: HeaderName = HeaderName::from_static("x-degraded");
/// `X-Cache`: `HIT`, `MISS` or `STALE`.
pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// Whether a route can answer without a part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Without it there is no answer.
    Required,
    /// Without it the answer is partial.
    Optional,
}

/// What became of a part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It answered.
    Ok,
    /// It did not answer in time.
    Timeout,
    /// It failed.
    Error,
    /// Its circuit breaker is open, so it was not called.
    CircuitOpen,
    /// Served from a stale cache entry.
    Stale,
    /// Not called.
    Skipped,
}

struct Part {
    name: &'static str,
    need: Need,
    timeout: Duration,
    call: BoxFuture<'static, Result<Value, UpstreamError>>,
}

/// A set of parts to run in parallel.
#[derive(Default)]
pub struct FanOut {
    parts: Vec<Part>,
}

/// A part's report in `_meta`.
#[derive(Debug, Clone, Serialize)]
pub struct PartReport {
    /// What became of it.
    pub outcome: Outcome,
    /// How long it took, in milliseconds.
    pub latency_ms: f64,
    /// Whether the route needs it.
    pub required: bool,
}

/// The answers of a fan-out: values of the parts that answered, and a report for every part.
#[derive(Debug, Default)]
pub struct Gathered {
    values: Vec<(&'static str, Value)>,
    reports: Vec<(&'static str, PartReport)>,
}

impl FanOut {
    /// An empty fan-out.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a part.
    pub fn part<F>(mut self, name: &'static str, need: Need, timeout: Duration, call: F) -> Self
    where
        F: Future<Output = Result<Value, UpstreamError>> + Send + 'static,
    {
        self.parts.push(Part {
            name,
            need,
            timeout,
            call: Box::pin(call),
        });
        self
    }

    /// Adds every part of `other`, so two sets of parts run as one.
    pub fn merge(mut self, other: FanOut) -> Self {
        self.parts.extend(other.parts);
        self
    }

    /// Runs every part at once. A required part's failure returns early and drops (cancels) the rest.
    pub async fn run(self) -> Result<Gathered, GatewayError> {
        let start = Instant::now();
        let mut running: FuturesUnordered<_> = self
            .parts
            .into_iter()
            .map(|p| async move {
                let result = match tokio::time::timeout(p.timeout, p.call).await {
                    Ok(r) => r,
                    Err(_) => Err(UpstreamError::Timeout),
                };
                (p.name, p.need, start.elapsed(), result)
            })
            .collect();
        let mut gathered = Gathered::default();
        while let Some((name, need, latency, result)) = running.next().await {
            let outcome = match &result {
                Ok(_) => Outcome::Ok,
                Err(UpstreamError::Timeout) => Outcome::Timeout,
                Err(UpstreamError::CircuitOpen) => Outcome::CircuitOpen,
                Err(_) => Outcome::Error,
            };
            metrics::counter!("bff_upstream_parts_total", "part" => name, "outcome" => outcome_label(outcome))
                .increment(1);
            match (result, need) {
                (Ok(value), _) => gathered.values.push((name, value)),
                (Err(err), Need::Required) => {
                    tracing::warn!(part = name, error = %err, "required part failed");
                    return Err(match err {
                        UpstreamError::Timeout => GatewayError::UpstreamTimeout(name.to_owned()),
                        UpstreamError::NotFound => GatewayError::NotFound(name.to_owned()),
                        UpstreamError::Rejected(_) => GatewayError::Unprocessable {
                            code: "REQUEST_REJECTED",
                            detail: format!("The `{name}` service refused the request as invalid."),
                        },
                        _ => GatewayError::UpstreamFailed(name.to_owned()),
                    });
                }
                (Err(err), Need::Optional) => {
                    tracing::info!(part = name, error = %err, "optional part left out");
                }
            }
            gathered.reports.push((
                name,
                PartReport {
                    outcome,
                    latency_ms: (latency.as_secs_f64() * 1000.0 * 10.0).round() / 10.0,
                    required: need == Need::Required,
                },
            ));
        }
        Ok(gathered)
    }
}

fn outcome_label(o: Outcome) -> &'static str {
    match o {
        Outcome::Ok => "ok",
        Outcome::Timeout => "timeout",
        Outcome::Error => "error",
        Outcome::CircuitOpen => "circuit_open",
        Outcome::Stale => "stale",
        Outcome::Skipped => "skipped",
    }
}

impl Gathered {
    /// Takes the value of part `name`, if it answered.
    pub fn take(&mut self, name: &str) -> Option<Value> {
        let i = self.values.iter().position(|(n, _)| *n == name)?;
        Some(self.values.swap_remove(i).1)
    }

    /// Names of the parts that did not answer, in declaration-independent (alphabetical) order.
    pub fn degraded(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self
            .reports
            .iter()
            .filter(|(_, r)| r.outcome != Outcome::Ok)
            .map(|(n, _)| *n)
            .collect();
        names.sort_unstable();
        names
    }

    /// The `_meta` object: every part with its outcome and latency.
    pub fn meta(&self) -> Value {
        let parts: Map<String, Value> = self
            .reports
            .iter()
            .map(|(n, r)| {
                (
                    (*n).to_owned(),
                    serde_json::to_value(r).unwrap_or(Value::Null),
                )
            })
            .collect();
        serde_json::json!({ "parts": parts, "complete": self.degraded().is_empty() })
    }

    /// Finishes a body: adds `_meta` and returns the answer, marked partial when parts are missing.
    pub fn respond(&self, mut body: Map<String, Value>) -> Shaped {
        body.insert("_meta".to_owned(), self.meta());
        Shaped {
            body: Value::Object(body),
            degraded: self.degraded(),
            upstreams: Some(self.timings()),
        }
    }

    /// Each part's outcome and latency for the access log: `user:ok:2.1ms,ads:timeout:250.3ms`.
    pub fn timings(&self) -> Arc<str> {
        use std::fmt::Write;
        let mut out = String::with_capacity(self.reports.len() * 24);
        for (i, (name, r)) in self.reports.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(
                out,
                "{sep}{name}:{}:{}ms",
                outcome_label(r.outcome),
                r.latency_ms
            );
        }
        out.into()
    }
}

/// The upstream timings of an answer, for the access log (a response extension).
#[derive(Debug, Clone)]
pub struct UpstreamTimings(pub Arc<str>);

/// A shaped answer, before it is cached and sent.
#[derive(Debug, Clone)]
pub struct Shaped {
    /// The JSON body.
    pub body: Value,
    /// Parts left out; empty for a complete answer.
    pub degraded: Vec<&'static str>,
    /// Each part's outcome and latency, for the access log.
    pub upstreams: Option<Arc<str>>,
}

impl Shaped {
    /// A complete answer without parts.
    pub fn complete(body: Value) -> Self {
        Self {
            body,
            degraded: Vec::new(),
            upstreams: None,
        }
    }
}

/// How the cache took part in an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from a fresh entry.
    Hit,
    /// Computed (and stored if complete).
    Miss,
    /// Served from a stale entry because computing failed.
    Stale,
}

/// A JSON answer with its cache and degradation headers.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    /// Serialized JSON.
    pub body: Bytes,
    /// `X-Cache`, when the route is cached.
    pub cache: Option<CacheStatus>,
    /// `X-Degraded` names.
    pub degraded: Vec<&'static str>,
    /// Each part's outcome and latency, for the access log.
    pub upstreams: Option<Arc<str>>,
}

impl ApiResponse {
    /// Serializes a shaped answer.
    pub fn from_shaped(shaped: &Shaped, cache: Option<CacheStatus>) -> Self {
        Self {
            body: Bytes::from(serde_json::to_vec(&shaped.body).unwrap_or_default()),
            cache,
            degraded: shaped.degraded.clone(),
            upstreams: shaped.upstreams.clone(),
        }
    }
}

impl IntoResponse for ApiResponse {
    fn into_response(self) -> Response {
        let mut res = (StatusCode::OK, self.body).into_response();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(cache) = self.cache {
            let v = match cache {
                CacheStatus::Hit => "HIT",
                CacheStatus::Miss => "MISS",
                CacheStatus::Stale => "STALE",
            };
            h.insert(X_CACHE.clone(), HeaderValue::from_static(v));
        }
        if !self.degraded.is_empty()
            && let Ok(v) = HeaderValue::from_str(&self.degraded.join(","))
        {
            h.insert(X_DEGRADED.clone(), v);
        }
        if let Some(t) = self.upstreams {
            res.extensions_mut().insert(UpstreamTimings(t));
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    async fn after(ms: u64, v: Result<Value, UpstreamError>) -> Result<Value, UpstreamError> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        v
    }

    #[tokio::test(start_paused = true)]
    async fn parts_run_in_parallel() {
        let start = tokio::time::Instant::now();
        let mut g = FanOut::new()
            .part(
                "a",
                Need::Required,
                Duration::from_secs(1),
                after(150, Ok(json!(1))),
            )
            .part(
                "b",
                Need::Optional,
                Duration::from_secs(1),
                after(150, Ok(json!(2))),
            )
            .part(
                "c",
                Need::Optional,
                Duration::from_secs(1),
                after(150, Ok(json!(3))),
            )
            .run()
            .await
            .expect("complete");
        assert_eq!(start.elapsed(), Duration::from_millis(150));
        assert_eq!(g.take("b"), Some(json!(2)));
        assert!(g.degraded().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_optional_timeout_is_a_partial_answer() {
        let g = FanOut::new()
            .part(
                "user",
                Need::Required,
                Duration::from_secs(1),
                after(10, Ok(json!({}))),
            )
            .part(
                "subscription",
                Need::Optional,
                Duration::from_millis(300),
                after(2000, Ok(json!({}))),
            )
            .run()
            .await
            .expect("partial");
        assert_eq!(g.degraded(), vec!["subscription"]);
        let meta = g.meta();
        assert_eq!(meta["parts"]["subscription"]["outcome"], "timeout");
        assert_eq!(meta["parts"]["user"]["outcome"], "ok");
        assert_eq!(meta["complete"], false);
    }

    #[tokio::test(start_paused = true)]
    async fn a_required_failure_ends_early() {
        let start = tokio::time::Instant::now();
        let err = FanOut::new()
            .part(
                "user",
                Need::Required,
                Duration::from_secs(1),
                after(5, Err(UpstreamError::Failed("x".into()))),
            )
            .part(
                "slow",
                Need::Optional,
                Duration::from_secs(5),
                after(5000, Ok(json!(1))),
            )
            .run()
            .await
            .expect_err("required failed");
        assert!(matches!(err, GatewayError::UpstreamFailed(ref p) if p == "user"));
        assert_eq!(start.elapsed(), Duration::from_millis(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_required_timeout_is_504() {
        let err = FanOut::new()
            .part(
                "user",
                Need::Required,
                Duration::from_millis(100),
                after(1000, Ok(json!(1))),
            )
            .run()
            .await
            .expect_err("timeout");
        assert_eq!(err.status(), StatusCode::GATEWAY_TIMEOUT);
    }
}
