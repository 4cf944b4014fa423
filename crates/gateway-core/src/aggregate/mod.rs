//! Parallel fan-out with honest partial answers.
//!
//! A route declares its parts as data: a name, whether it is required, a timeout, the call, and
//! optionally a fallback value. All parts run at once, each under its own timeout, so the whole
//! costs the slowest part, not the sum. A required part that fails ends the request at once (502,
//! or 504 on timeout) and cancels the others; an optional one is reported in `_meta` and named in
//! `X-Degraded`, and its fallback, if it has one, stands in for its answer.
//!
//! A dependent part ([`FanOut::part_after`]) is fed by another part's answer: it starts the moment
//! that part answers (or falls back), while the others still run, so a chain costs the sum of its
//! links and nothing more. Per-item enrichment is one such part: the ids of one answer, fetched in
//! one batched call. A dependent part whose source failed is `skipped`.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::GatewayError;
use crate::telemetry;
use crate::upstream::UpstreamError;

pub mod shape;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
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

type Call = BoxFuture<'static, Result<Value, UpstreamError>>;

/// Makes a dependent part's call from its source's answer; `None` when there is nothing to fetch
/// (an empty list of ids, say), and the part then answers `null` at once.
type Follow = Box<dyn FnOnce(&Value) -> Option<Call> + Send>;

enum Start {
    /// Starts with the fan-out.
    Now(Call),
    /// Starts when the part named answers.
    After(&'static str, Follow),
}

struct Part {
    name: &'static str,
    need: Need,
    timeout: Duration,
    fallback: Option<Value>,
}

/// A set of parts to run in parallel.
#[derive(Default)]
pub struct FanOut {
    parts: Vec<(Part, Start)>,
}

/// A part's report in `_meta`. Its fields are declared in the order of their keys, which is the
/// order they are written in.
#[derive(Debug, Clone, Serialize)]
pub struct PartReport {
    /// Whether its fallback stood in for an answer.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fallback: bool,
    /// How long it took, in milliseconds.
    pub latency_ms: f64,
    /// What became of it.
    pub outcome: Outcome,
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
        let part = Part {
            name,
            need,
            timeout,
            fallback: None,
        };
        self.parts.push((part, Start::Now(Box::pin(call))));
        self
    }

    /// Adds a part fed by part `source`'s answer: `make` turns that answer into the call, or into
    /// `None` when there is nothing to fetch (the part then answers `null` at once). It starts as
    /// soon as `source` answers, its timeout counted from then. If `source` fails without a
    /// fallback, this part is `skipped` (and the route fails with 502 if this part is required).
    pub fn part_after<F, Fut>(
        mut self,
        name: &'static str,
        need: Need,
        timeout: Duration,
        source: &'static str,
        make: F,
    ) -> Self
    where
        F: FnOnce(&Value) -> Option<Fut> + Send + 'static,
        Fut: Future<Output = Result<Value, UpstreamError>> + Send + 'static,
    {
        let part = Part {
            name,
            need,
            timeout,
            fallback: None,
        };
        let follow: Follow = Box::new(move |v| make(v).map(|f| Box::pin(f) as Call));
        self.parts.push((part, Start::After(source, follow)));
        self
    }

    /// Gives the part added last a fallback: should it fail (it must be optional), `value` stands
    /// in for its answer and feeds its dependent parts; `_meta` still reports the failure, with
    /// `"fallback": true`, and the answer is still partial.
    pub fn or(mut self, value: Value) -> Self {
        if let Some((last, _)) = self.parts.last_mut() {
            last.fallback = Some(value);
        }
        self
    }

    /// Adds every part of `other`, so two sets of parts run as one.
    pub fn merge(mut self, other: FanOut) -> Self {
        self.parts.extend(other.parts);
        self
    }

    /// Runs every part at once, each dependent part as soon as its source answers. A required
    /// part's failure returns early and drops (cancels) the rest.
    pub async fn run(self) -> Result<Gathered, GatewayError> {
        let mut running = FuturesUnordered::new();
        let mut waiting: Vec<(Part, &'static str, Follow)> = Vec::new();
        let names: Vec<&'static str> = self.parts.iter().map(|(p, _)| p.name).collect();
        let mut gathered = Gathered::default();
        for (part, start) in self.parts {
            match start {
                Start::Now(call) => running.push(launch(part, call)),
                Start::After(source, follow) if names.contains(&source) => {
                    waiting.push((part, source, follow));
                }
                Start::After(source, _) => {
                    tracing::error!(part = part.name, source, "dependent part names no part");
                    gathered.skip(&part)?;
                }
            }
        }
        while let Some((part, latency, result)) = running.next().await {
            let outcome = match &result {
                Ok(_) => Outcome::Ok,
                Err(UpstreamError::Timeout) => Outcome::Timeout,
                Err(UpstreamError::CircuitOpen) => Outcome::CircuitOpen,
                Err(_) => Outcome::Error,
            };
            let name = part.name;
            count_part(name, outcome);
            let mut fell_back = false;
            let value = match (result, part.need) {
                (Ok(value), _) => Some(value),
                (Err(err), Need::Required) => {
                    tracing::warn!(part = name, error = %err, "required part failed");
                    return Err(required_failed(name, err));
                }
                (Err(err), Need::Optional) => {
                    tracing::info!(part = name, error = %err, "optional part left out");
                    fell_back = part.fallback.is_some();
                    part.fallback
                }
            };
            // Its dependents start now, fed by its answer (or fallback); without one they are
            // skipped, and theirs with them.
            let mut skipped = Vec::new();
            follow_up(
                &mut waiting,
                name,
                value.as_ref(),
                |p, call| running.push(launch(p, call)),
                &mut skipped,
            );
            // A skipped part with a fallback feeds its dependents with it; without one, they
            // are skipped too.
            while let Some(dependent) = skipped.pop() {
                gathered.skip(&dependent)?;
                follow_up(
                    &mut waiting,
                    dependent.name,
                    dependent.fallback.as_ref(),
                    |p, call| running.push(launch(p, call)),
                    &mut skipped,
                );
            }
            if let Some(value) = value {
                gathered.values.push((name, value));
            }
            gathered.reports.push((
                name,
                PartReport {
                    outcome,
                    latency_ms: (latency.as_secs_f64() * 1000.0 * 10.0).round() / 10.0,
                    required: part.need == Need::Required,
                    fallback: fell_back,
                },
            ));
        }
        // Parts waiting on each other in a cycle never start.
        for (part, source, _) in waiting {
            tracing::error!(
                part = part.name,
                source,
                "dependent part never started (a cycle)"
            );
            gathered.skip(&part)?;
        }
        Ok(gathered)
    }
}

/// A part's call under its timeout, its latency counted from its own start.
async fn launch(part: Part, call: Call) -> (Part, Duration, Result<Value, UpstreamError>) {
    // Tokio's clock: the same as the system's, and paused with it in tests.
    let started = tokio::time::Instant::now();
    let result = match tokio::time::timeout(part.timeout, call).await {
        Ok(r) => r,
        Err(_) => Err(UpstreamError::Timeout),
    };
    (part, started.elapsed(), result)
}

/// Starts the parts waiting on `source`, fed by `value` (its answer or fallback); a part with
/// nothing to fetch answers `null` at once. Without a value they go to `skipped`.
fn follow_up(
    waiting: &mut Vec<(Part, &'static str, Follow)>,
    source: &str,
    value: Option<&Value>,
    mut start: impl FnMut(Part, Call),
    skipped: &mut Vec<Part>,
) {
    for (dependent, follow) in take_dependents(waiting, source) {
        match value.map(follow) {
            Some(Some(call)) => start(dependent, call),
            Some(None) => start(dependent, Box::pin(async { Ok(Value::Null) })),
            None => skipped.push(dependent),
        }
    }
}

/// Removes and returns the parts waiting on `source`.
fn take_dependents(
    waiting: &mut Vec<(Part, &'static str, Follow)>,
    source: &str,
) -> impl Iterator<Item = (Part, Follow)> {
    let (now, later): (Vec<_>, Vec<_>) = std::mem::take(waiting)
        .into_iter()
        .partition(|(_, s, _)| *s == source);
    *waiting = later;
    now.into_iter().map(|(p, _, f)| (p, f))
}

/// The answer for a required part that failed.
fn required_failed(name: &'static str, err: UpstreamError) -> GatewayError {
    match err {
        UpstreamError::Timeout => GatewayError::UpstreamTimeout(name.to_owned()),
        UpstreamError::NotFound => GatewayError::NotFound(name.to_owned()),
        UpstreamError::Rejected(_) => GatewayError::Unprocessable {
            code: "REQUEST_REJECTED",
            detail: format!("The `{name}` service refused the request as invalid."),
        },
        _ => GatewayError::UpstreamFailed(name.to_owned()),
    }
}

/// Series of `bff_upstream_parts_total` kept at most; past them (there are not as many part names
/// in a BFF) a count registers its series each time, as if nothing were kept.
const MAX_PART_SERIES: usize = 256;

/// Counts a part's outcome in `bff_upstream_parts_total`. The series' handle is kept per part name
/// and outcome, so a count costs a lookup under a read lock rather than a labelled key built,
/// hashed and registered for every part of every request.
fn count_part(name: &'static str, outcome: Outcome) {
    type Series = HashMap<(&'static str, Outcome), metrics::Counter, foldhash::fast::RandomState>;
    static KEPT: LazyLock<RwLock<Series>> = LazyLock::new(RwLock::default);
    if let Some(counter) = telemetry::read(&KEPT).get(&(name, outcome)) {
        counter.increment(1);
        return;
    }
    let counter = metrics::counter!("bff_upstream_parts_total", "part" => name, "outcome" => outcome_label(outcome));
    counter.increment(1);
    // Kept only once the gateway's recorder is in place: a handle taken before counts nowhere.
    if telemetry::recorder_installed() {
        let mut kept = telemetry::write(&KEPT);
        if kept.len() < MAX_PART_SERIES {
            kept.entry((name, outcome)).or_insert(counter);
        }
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
    /// Reports `part` skipped, its fallback standing in; a required part cannot be skipped.
    fn skip(&mut self, part: &Part) -> Result<(), GatewayError> {
        if part.need == Need::Required {
            tracing::warn!(part = part.name, "required part could not start");
            return Err(GatewayError::UpstreamFailed(part.name.to_owned()));
        }
        count_part(part.name, Outcome::Skipped);
        if let Some(value) = &part.fallback {
            self.values.push((part.name, value.clone()));
        }
        self.reports.push((
            part.name,
            PartReport {
                outcome: Outcome::Skipped,
                latency_ms: 0.0,
                required: false,
                fallback: part.fallback.is_some(),
            },
        ));
        Ok(())
    }

    /// The value of part `name`, if it answered (or fell back).
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Takes the value of part `name`, if it answered (or fell back).
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
        serde_json::to_value(self.report()).unwrap_or(Value::Null)
    }

    /// What `_meta` says, kept to be written with the body.
    fn report(&self) -> Meta {
        let complete = self.reports.iter().all(|(_, r)| r.outcome == Outcome::Ok);
        // In the order of their names; a name given twice keeps its last report.
        let mut parts: Vec<_> = self.reports.iter().rev().cloned().collect();
        parts.sort_by_key(|(name, _)| *name);
        parts.dedup_by_key(|(name, _)| *name);
        Meta { complete, parts }
    }

    /// Finishes a body: adds `_meta` and returns the answer, marked partial when parts are missing.
    /// `_meta` is kept beside the body and written with it ([`ApiResponse::from_shaped`]), not
    /// built as JSON values of its own.
    pub fn respond(&self, body: Map<String, Value>) -> Shaped {
        Shaped {
            body: Value::Object(body),
            meta: Some(self.report()),
            degraded: self.degraded(),
            // Formatted only for the access line.
            upstreams: crate::telemetry::access_lines().then(|| self.timings()),
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

/// The `_meta` object of an answer: whether it is complete, and each part's report by name.
#[derive(Debug, Clone)]
pub struct Meta {
    complete: bool,
    /// Sorted by name, each name once.
    parts: Vec<(&'static str, PartReport)>,
}

impl Serialize for Meta {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Parts<'a>(&'a [(&'static str, PartReport)]);
        impl Serialize for Parts<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(self.0.iter().map(|(name, report)| (name, report)))
            }
        }
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry("complete", &self.complete)?;
        map.serialize_entry("parts", &Parts(&self.parts))?;
        map.end()
    }
}

/// The key `_meta` is written under.
const META: &str = "_meta";

/// A body with its `_meta`, written where the key sorts among the body's own (as the body's
/// other keys are written), in place of any `_meta` the body has.
struct WithMeta<'a> {
    body: &'a Map<String, Value>,
    meta: &'a Meta,
}

impl Serialize for WithMeta<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let own = self.body.len() - usize::from(self.body.contains_key(META));
        let mut map = s.serialize_map(Some(own + 1))?;
        let mut meta = Some(self.meta);
        for (key, value) in self.body {
            if key == META {
                continue;
            }
            if key.as_str() > META
                && let Some(meta) = meta.take()
            {
                map.serialize_entry(META, meta)?;
            }
            map.serialize_entry(key, value)?;
        }
        if let Some(meta) = meta {
            map.serialize_entry(META, meta)?;
        }
        map.end()
    }
}

/// A shaped answer, before it is cached and sent.
#[derive(Debug, Clone)]
pub struct Shaped {
    /// The JSON body.
    pub body: Value,
    /// The `_meta` written with an object body ([`Gathered::respond`] sets it); `None` for none.
    pub meta: Option<Meta>,
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
            meta: None,
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
        let body = match (&shaped.body, &shaped.meta) {
            (Value::Object(body), Some(meta)) => serde_json::to_vec(&WithMeta { body, meta }),
            (body, _) => serde_json::to_vec(body),
        };
        Self {
            body: Bytes::from(body.unwrap_or_default()),
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

    /// Ids of `{"items": [{"id"}]}`, joined, for a batched call.
    fn ids(v: &Value) -> Option<String> {
        let ids: Vec<&str> = v["items"]
            .as_array()?
            .iter()
            .filter_map(|i| i["id"].as_str())
            .collect();
        (!ids.is_empty()).then(|| ids.join(","))
    }

    #[tokio::test(start_paused = true)]
    async fn a_dependent_part_starts_when_its_source_answers() {
        let start = tokio::time::Instant::now();
        let mut g = FanOut::new()
            .part(
                "recs",
                Need::Optional,
                Duration::from_secs(1),
                after(100, Ok(json!({"items": [{"id": "a"}, {"id": "b"}]}))),
            )
            .part(
                "profile",
                Need::Required,
                Duration::from_secs(1),
                after(250, Ok(json!("p"))),
            )
            .part_after(
                "cards",
                Need::Optional,
                Duration::from_secs(1),
                "recs",
                |recs| ids(recs).map(|ids| after(100, Ok(json!({ "batched": ids })))),
            )
            .run()
            .await
            .expect("complete");
        // The chain (100 + 100) ran beside the slower part (250): the whole costs 250.
        assert_eq!(start.elapsed(), Duration::from_millis(250));
        assert_eq!(g.take("cards"), Some(json!({"batched": "a,b"})));
        assert!(g.degraded().is_empty());
        assert_eq!(g.meta()["parts"]["cards"]["latency_ms"], json!(100.0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_source_skips_its_dependents_unless_it_falls_back() {
        let failing = || after(10, Err(UpstreamError::Failed("x".into())));
        let mut g = FanOut::new()
            .part("recs", Need::Optional, Duration::from_secs(1), failing())
            .part_after(
                "cards",
                Need::Optional,
                Duration::from_secs(1),
                "recs",
                |_| Some(after(1, Ok(json!("never")))),
            )
            .part_after(
                "more",
                Need::Optional,
                Duration::from_secs(1),
                "cards",
                |_| Some(after(1, Ok(json!("never")))),
            )
            .run()
            .await
            .expect("partial");
        assert_eq!(g.take("cards"), None);
        assert_eq!(g.degraded(), ["cards", "more", "recs"]);
        assert_eq!(g.meta()["parts"]["more"]["outcome"], json!("skipped"));

        // With a fallback the dependents run on it, and the answer is still partial.
        let mut g = FanOut::new()
            .part("recs", Need::Optional, Duration::from_secs(1), failing())
            .or(json!({"items": [{"id": "popular"}]}))
            .part_after(
                "cards",
                Need::Optional,
                Duration::from_secs(1),
                "recs",
                |recs| ids(recs).map(|ids| after(1, Ok(json!(ids)))),
            )
            .run()
            .await
            .expect("partial");
        assert_eq!(g.take("cards"), Some(json!("popular")));
        assert_eq!(g.degraded(), ["recs"]);
        assert_eq!(g.meta()["parts"]["recs"]["fallback"], json!(true));
        assert!(g.meta()["parts"]["cards"].get("fallback").is_none());

        // A skipped part's fallback feeds its own dependents.
        let mut g = FanOut::new()
            .part("recs", Need::Optional, Duration::from_secs(1), failing())
            .part_after(
                "cards",
                Need::Optional,
                Duration::from_secs(1),
                "recs",
                |_| Some(after(1, Ok(json!("never")))),
            )
            .or(json!({"items": [{"id": "house"}]}))
            .part_after(
                "more",
                Need::Optional,
                Duration::from_secs(1),
                "cards",
                |cards| ids(cards).map(|ids| after(1, Ok(json!(ids)))),
            )
            .run()
            .await
            .expect("partial");
        assert_eq!(g.take("more"), Some(json!("house")));
        assert_eq!(g.degraded(), ["cards", "recs"]);
        assert_eq!(g.meta()["parts"]["cards"]["fallback"], json!(true));

        // Nothing to fetch is an empty answer, not a failure.
        let mut g = FanOut::new()
            .part(
                "recs",
                Need::Optional,
                Duration::from_secs(1),
                after(1, Ok(json!({"items": []}))),
            )
            .part_after(
                "cards",
                Need::Required,
                Duration::from_secs(1),
                "recs",
                |recs| ids(recs).map(|ids| after(1, Ok(json!(ids)))),
            )
            .run()
            .await
            .expect("complete");
        assert_eq!(g.take("cards"), Some(Value::Null));
        assert!(g.degraded().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_required_dependent_of_a_failed_source_is_502() {
        let err = FanOut::new()
            .part(
                "recs",
                Need::Optional,
                Duration::from_secs(1),
                after(10, Err(UpstreamError::Failed("x".into()))),
            )
            .part_after(
                "cards",
                Need::Required,
                Duration::from_secs(1),
                "recs",
                |_| Some(after(1, Ok(json!(1)))),
            )
            .run()
            .await
            .expect_err("required dependent");
        assert!(matches!(err, GatewayError::UpstreamFailed(ref p) if p == "cards"));
        // A dependent's timeout counts from its own start.
        let err = FanOut::new()
            .part(
                "a",
                Need::Required,
                Duration::from_secs(1),
                after(300, Ok(json!(1))),
            )
            .part_after("b", Need::Required, Duration::from_millis(200), "a", |_| {
                Some(after(250, Ok(json!(2))))
            })
            .run()
            .await
            .expect_err("dependent timeout");
        assert_eq!(err.status(), StatusCode::GATEWAY_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_is_written_as_its_body_with_meta_inserted_would_be() {
        let g = FanOut::new()
            .part(
                "user",
                Need::Required,
                Duration::from_secs(1),
                after(20, Ok(json!({"id": "u1"}))),
            )
            .part(
                "ads",
                Need::Optional,
                Duration::from_secs(1),
                after(5, Err(UpstreamError::Failed("down".into()))),
            )
            .or(json!([]))
            .part(
                "news",
                Need::Optional,
                Duration::from_millis(30),
                after(100, Ok(json!(1))),
            )
            .run()
            .await
            .expect("partial");
        // Keys before `_meta` (upper case), after it, and a `_meta` of the body's own, replaced.
        let body = json!({"Z": 1, "_meta": "mine", "a": [true], "user": {"id": "u1"}});
        let Value::Object(map) = body else {
            unreachable!("an object")
        };
        let shaped = g.respond(map);
        let written = ApiResponse::from_shaped(&shaped, None).body;
        let expected = json!({
            "Z": 1,
            "_meta": {
                "complete": false,
                "parts": {
                    "ads": {"fallback": true, "latency_ms": 5.0, "outcome": "error", "required": false},
                    "news": {"latency_ms": 30.0, "outcome": "timeout", "required": false},
                    "user": {"latency_ms": 20.0, "outcome": "ok", "required": true},
                },
            },
            "a": [true],
            "user": {"id": "u1"},
        });
        assert_eq!(
            std::str::from_utf8(&written).expect("utf-8"),
            serde_json::to_string(&expected).expect("json")
        );
        assert_eq!(g.meta(), expected["_meta"]);
        // A body that is no object is written as it is.
        let plain = ApiResponse::from_shaped(&Shaped::complete(json!([1, 2])), None).body;
        assert_eq!(&plain[..], b"[1,2]");
    }

    #[tokio::test]
    async fn each_part_and_outcome_is_counted_every_time() {
        let handle = crate::telemetry::metrics_handle();
        let count = |outcome: &str| {
            let series =
                format!("bff_upstream_parts_total{{part=\"counted\",outcome=\"{outcome}\"}} ");
            handle
                .render()
                .lines()
                .find_map(|line| line.strip_prefix(&series)?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let fan = |answer: Result<Value, UpstreamError>| {
            FanOut::new()
                .part("counted", Need::Optional, Duration::from_secs(1), async {
                    answer
                })
                .run()
        };
        for _ in 0..3 {
            fan(Ok(json!(1))).await.expect("complete");
        }
        fan(Err(UpstreamError::Failed("down".into())))
            .await
            .expect("partial");
        assert_eq!(count("ok"), 3);
        assert_eq!(count("error"), 1);
    }
}
