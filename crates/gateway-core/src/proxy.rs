//! Pass-through routes (`[[proxy]]`): a path prefix forwarded to one upstream as it is, the way
//! Kong or Envoy route, under the same authentication, scopes, rate limits and edge hygiene as
//! every other route.
//!
//! Bodies are streamed both ways, never buffered: the request body within `server.body_limit_bytes`,
//! the answer chunk by chunk, each chunk within the upstream's timeout. What the backend receives:
//! the client's method, headers (less hop-by-hop headers, the client's credentials and anything it
//! claimed about identity or forwarding) and body; the path with the prefix rewritten; and the
//! gateway's own headers (identity, request id, `traceparent`, remaining deadline,
//! `X-Forwarded-For` with the client's address as the gateway established it). What the client
//! receives: the backend's status, headers (less hop-by-hop headers and `Server` /
//! `X-Powered-By`) and body. The backend's 5xx answers pass through; connection failures and
//! timeouts answer 502 and 504 and feed the upstream's circuit breaker.
//!
//! Only backends whose API is fit for clients belong behind a proxy route: nothing is filtered
//! out of the answer.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::http::Method;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};

use crate::config::ProxyConfig;
use crate::edge::{RequestFacts, X_FORWARDED_FOR};
use crate::error::GatewayError;
use crate::stall::Stall;
use crate::upstream::forward::BODY_TOO_LARGE;
use crate::upstream::{CallContext, Upstream, UpstreamError, Upstreams};

/// Headers that describe one connection, not the message: never forwarded (RFC 9110 §7.6.1).
pub(crate) const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether [`strip_request_headers`] removes `name` (lowercase, as `HeaderName` holds it): the
/// [`HOP_BY_HOP`] headers; the client's credentials (the backend learns who is calling from the
/// identity headers instead) and what only the gateway may say about the request (forwarding,
/// [`IDENTITY_HEADERS`](crate::edge::IDENTITY_HEADERS), the deadline). A `match`, which compares
/// by length first, rather than 22 comparisons per header; a test keeps it in step with the
/// lists.
fn request_stripped(name: &str) -> bool {
    hop_by_hop(name)
        || matches!(
            name,
            "host"
                | "authorization"
                | "x-api-key"
                | "x-forwarded-for"
                | "x-forwarded-host"
                | "x-forwarded-proto"
                | "forwarded"
                | "x-user-id"
                | "x-user-scopes"
                | "x-user-tier"
                | "x-partner-id"
                | "x-api-version"
                | "x-request-deadline-ms"
        )
}

/// Whether a backend's answer header `name` is removed before the client sees it: the
/// [`HOP_BY_HOP`] headers, and those that would tell a client what runs behind the gateway.
fn answer_stripped(name: &str) -> bool {
    hop_by_hop(name) || matches!(name, "server" | "x-powered-by")
}

/// Whether `name` is one of [`HOP_BY_HOP`], as a `match`.
fn hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Removes the headers `stripped` selects and those a `Connection` header names. The names
/// present are looked at once ([`crate::edge::remove_where`]): a request carries a handful of
/// headers, and looking each of the ~25 stripped names up would hash every one of them.
fn strip(headers: &mut HeaderMap, stripped: fn(&str) -> bool) {
    // The names a `Connection` header lists are hop-by-hop too, read before that header goes. A
    // token is looked up as it is written, so one that names no header present (`keep-alive`,
    // `close`) allocates nothing.
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|token| headers.contains_key(*token))
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .collect();
    crate::edge::remove_where(headers, stripped);
    for name in listed {
        headers.remove(name);
    }
}

/// The pass-through routes by prefix, longest first, so that a nested prefix wins over the one
/// it lies in. A prefix takes the path equal to it and the paths below it on a segment boundary
/// with something after the `/`: `/api/catalog` and `/api/catalog/items`, not `/api/catalog/`
/// nor `/api/catalogue`.
pub struct ProxyTable {
    entries: Vec<ProxyEntry>,
}

struct ProxyEntry {
    route: Arc<ProxyRoute>,
    /// The route pattern in metrics, logs and `ratelimit.routes` for the prefix itself...
    exact: RoutePattern,
    /// ...and for the paths below it.
    below: RoutePattern,
}

/// The pattern of the pass-through route a request was matched to (`/api/catalog/{*rest}`), in
/// its extensions as axum's `MatchedPath` is for the other routes.
#[derive(Debug, Clone)]
pub(crate) struct RoutePattern(pub(crate) Arc<str>);

/// The route a request was matched to, held apart from the request: a pass-through route's
/// pattern or axum's matched path. Both are shared strings, so holding one costs no copy.
#[derive(Debug, Clone)]
pub(crate) enum MatchedRoute {
    /// A pass-through route ([`RoutePattern`]).
    Pass(RoutePattern),
    /// A route of axum's router.
    Router(axum::extract::MatchedPath),
}

impl MatchedRoute {
    /// The route of the request whose `extensions` these are, if it matched one.
    pub(crate) fn of(extensions: &axum::http::Extensions) -> Option<Self> {
        match RequestFacts::of(extensions).and_then(|f| f.route.as_ref()) {
            Some(p) => Some(Self::Pass(p.clone())),
            None => extensions
                .get::<axum::extract::MatchedPath>()
                .cloned()
                .map(Self::Router),
        }
    }

    /// The pattern, as metrics, logs and `ratelimit.routes` name the route.
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Self::Pass(p) => &p.0,
            Self::Router(m) => m.as_str(),
        }
    }
}

impl ProxyTable {
    /// The table of `routes`.
    pub fn new(routes: &[Arc<ProxyRoute>]) -> Self {
        let mut entries: Vec<ProxyEntry> = routes
            .iter()
            .map(|route| ProxyEntry {
                exact: RoutePattern(route.prefix.as_str().into()),
                below: RoutePattern(format!("{}/{{*rest}}", route.prefix).into()),
                route: route.clone(),
            })
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.route.prefix.len()));
        Self { entries }
    }

    /// Whether there are no pass-through routes.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The route that takes `path`, and its pattern.
    pub(crate) fn find(&self, path: &str) -> Option<(&Arc<ProxyRoute>, &RoutePattern)> {
        self.entries.iter().find_map(|e| {
            let rest = path.strip_prefix(e.route.prefix.as_str())?;
            if rest.is_empty() {
                Some((&e.route, &e.exact))
            } else if rest.len() > 1 && rest.starts_with('/') {
                Some((&e.route, &e.below))
            } else {
                None
            }
        })
    }
}

/// One pass-through route, resolved against the upstreams.
pub struct ProxyRoute {
    /// The prefix it serves.
    pub prefix: String,
    rewrite: Option<String>,
    /// Scopes the caller must hold; leaked once at start-up, as route scopes are `'static`.
    scopes: Vec<&'static str>,
    methods: Vec<Method>,
    upstream: Arc<Upstream>,
    body_limit: usize,
}

impl ProxyRoute {
    /// Resolves every configured route. The configuration was validated, so a missing upstream
    /// is a programming error reported as a configuration error.
    pub fn resolve(
        cfg: &[ProxyConfig],
        upstreams: &Upstreams,
        body_limit: usize,
    ) -> Result<Vec<Arc<Self>>, crate::config::ConfigError> {
        cfg.iter()
            .map(|p| {
                Ok(Arc::new(Self {
                    prefix: p.prefix.clone(),
                    rewrite: p.rewrite.clone(),
                    scopes: p.scopes.iter().map(|s| &*s.clone().leak()).collect(),
                    methods: p
                        .methods
                        .iter()
                        .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                        .collect(),
                    upstream: upstreams.get(&p.upstream).ok_or_else(|| {
                        crate::config::ConfigError(format!(
                            "proxy upstream {} is not configured",
                            p.upstream
                        ))
                    })?,
                    body_limit,
                }))
            })
            .collect()
    }

    /// The path the backend sees for `path` (which starts with the prefix).
    fn target(&self, path: &str) -> String {
        let rest = &path[self.prefix.len()..];
        match self.rewrite.as_deref() {
            None => path.to_owned(),
            Some(r) if rest.is_empty() => r.to_owned(),
            Some(r) => format!("{}{rest}", r.trim_end_matches('/')),
        }
    }

    /// Forwards one request. Not an `async fn`: it would keep room for the request and the
    /// context beside the forward's own future.
    pub fn forward(&self, ctx: CallContext, req: Request) -> impl Future<Output = Response> {
        use futures::FutureExt;
        self.try_forward(ctx, req)
            .map(|res| res.unwrap_or_else(IntoResponse::into_response))
    }

    async fn try_forward(&self, ctx: CallContext, req: Request) -> Result<Response, GatewayError> {
        if !self.methods.contains(req.method()) {
            return Err(GatewayError::MethodNotAllowed);
        }
        let principal = ctx.principal.as_ref();
        if let Some(missing) = self
            .scopes
            .iter()
            .find(|s| !principal.is_some_and(|p| p.has_scope(s)))
        {
            return Err(GatewayError::InsufficientScope(missing));
        }
        let (parts, body) = req.into_parts();
        let axum::http::request::Parts {
            method,
            uri,
            mut headers,
            extensions,
            ..
        } = parts;
        let mut target = self.target(uri.path());
        if let Some(q) = uri.query() {
            target.push('?');
            target.push_str(q);
        }
        let client_ip = RequestFacts::edge_of(&extensions).map(|f| f.client_ip.0);
        // The client's URI and header values are slices of its connection's read buffer; none
        // may outlive what the call needs, or the connection reads the next request into a new
        // buffer while this one waits for the backend (8 KB more per connection in flight).
        drop((uri, extensions));
        let timeout = ctx.budget(self.upstream.timeout);
        // Timed for the access line only, when there is one.
        let started = crate::telemetry::access_lines().then(std::time::Instant::now);
        strip_request_headers(&mut headers);
        for (name, value) in ctx.headers(timeout) {
            headers.insert(name, value);
        }
        if let Some(ip) = client_ip {
            let mut text = String::with_capacity(39);
            crate::edge::push_ip(&mut text, ip);
            if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(text)) {
                headers.insert(X_FORWARDED_FOR.clone(), v);
            }
        }
        // A body larger than the limit ends the stream with an error, and the call with it.
        let body = Body::new(http_body_util::Limited::new(body, self.body_limit));
        let res = self
            .upstream
            .send(&ctx, method, &target, headers, body, timeout)
            .await
            .map_err(|err| match err {
                UpstreamError::Timeout => GatewayError::UpstreamTimeout(self.upstream.name.clone()),
                UpstreamError::Rejected(why) if why == BODY_TOO_LARGE => {
                    GatewayError::PayloadTooLarge
                }
                UpstreamError::Rejected(_) => GatewayError::BodyTimeout,
                _ => GatewayError::UpstreamFailed(self.upstream.name.clone()),
            })?;
        let mut out = answer(res, self.upstream.timeout);
        if let Some(started) = started {
            let timing = format!(
                "{}:{}:{:.1}ms",
                self.upstream.name,
                out.status().as_u16(),
                started.elapsed().as_secs_f64() * 1000.0
            );
            out.extensions_mut()
                .insert(crate::aggregate::UpstreamTimings(timing.into()));
        }
        Ok(out)
    }
}

/// Removes from a client's request what a backend may not see: hop-by-hop headers (and those
/// `Connection` names), the client's credentials, and what only the gateway may say.
pub(crate) fn strip_request_headers(headers: &mut HeaderMap) {
    strip(headers, request_stripped);
}

/// The client's headers a backend may see.
pub(crate) fn request_headers(from: &HeaderMap) -> HeaderMap {
    let mut out = from.clone();
    strip_request_headers(&mut out);
    out
}

/// Headers the gateway adds to a pass-through answer, at most: five of the rate limit (three
/// more with a quota), the request id, `traceparent` and `vary`.
const ADDED_TO_ANSWERS: usize = 11;

/// The backend's answer as the client gets it, the body streamed with an idle bound per chunk:
/// a stalled upstream ends the answer with an error after `idle`.
fn answer(res: Response, idle: Duration) -> Response {
    let (mut parts, body) = res.into_parts();
    // Only status, headers and body carry over: not the backend's protocol version, nor what
    // the client library noted about the exchange.
    parts.version = axum::http::Version::default();
    parts.extensions = axum::http::Extensions::new();
    strip(&mut parts.headers, answer_stripped);
    // Room for what the gateway adds on the way out (limits, request id, `traceparent`,
    // `vary`), so that the map grows at most once rather than once per insertion.
    parts.headers.reserve(ADDED_TO_ANSWERS);
    let body = Body::new(IdleBound {
        body,
        stall: Stall::new(idle),
    });
    Response::from_parts(parts, body)
}

/// An answer's body that fails when the backend sends nothing of it for the upstream's timeout.
struct IdleBound {
    body: Body,
    stall: Stall,
}

/// The error that ends an answer whose backend sent nothing for the upstream's timeout.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing of its answer for {0:?}")]
struct AnswerIdle(Duration);

impl HttpBody for IdleBound {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            this.stall.progressed();
            return Poll::Ready(frame);
        }
        std::task::ready!(this.stall.poll_waited(cx));
        Poll::Ready(Some(Err(axum::Error::new(AnswerIdle(this.stall.after())))))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stripped_sets_are_the_lists() {
        let credentials_and_forwarding = [
            "host",
            "authorization",
            "x-api-key",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
            "forwarded",
        ];
        let request: Vec<&str> = HOP_BY_HOP
            .iter()
            .chain(&credentials_and_forwarding)
            .chain(&crate::edge::IDENTITY_HEADERS)
            .chain(&[crate::upstream::DEADLINE_HEADER])
            .copied()
            .collect();
        let answer: Vec<&str> = HOP_BY_HOP
            .iter()
            .chain(&["server", "x-powered-by"])
            .copied()
            .collect();
        // Every listed name is stripped, and nothing else of a broad sample is.
        for name in &request {
            assert!(request_stripped(name), "{name}");
        }
        for name in &answer {
            assert!(answer_stripped(name), "{name}");
        }
        let sample = request.iter().chain(&answer).copied().chain([
            "accept",
            "content-type",
            "content-length",
            "x-request-id",
            "cookie",
        ]);
        for name in sample {
            assert_eq!(request_stripped(name), request.contains(&name), "{name}");
            assert_eq!(answer_stripped(name), answer.contains(&name), "{name}");
        }
    }
    use axum::http::StatusCode;

    fn route(prefix: &str, rewrite: Option<&str>) -> ProxyRoute {
        let upstreams = Upstreams::new(&std::collections::BTreeMap::from([(
            "catalog".to_owned(),
            crate::config::UpstreamConfig::at("http://127.0.0.1:9"),
        )]))
        .expect("upstreams");
        ProxyRoute {
            prefix: prefix.into(),
            rewrite: rewrite.map(Into::into),
            scopes: vec![],
            methods: vec![Method::GET],
            upstream: upstreams.get("catalog").expect("catalog"),
            body_limit: 1024,
        }
    }

    /// `/api` with the prefix rewritten to `/`, to `backend` served on a free port.
    async fn route_to(backend: axum::Router) -> ProxyRoute {
        route_with(backend, |_| {}).await
    }

    /// [`route_to`], its upstream's settings changed by `configure`.
    async fn route_with(
        backend: axum::Router,
        configure: impl FnOnce(&mut crate::config::UpstreamConfig),
    ) -> ProxyRoute {
        let url = crate::testing::serve(backend).await;
        let mut upstream = crate::config::UpstreamConfig::at(&url);
        configure(&mut upstream);
        let upstreams = Upstreams::new(&std::collections::BTreeMap::from([(
            "catalog".to_owned(),
            upstream,
        )]))
        .expect("upstreams");
        ProxyRoute {
            upstream: upstreams.get("catalog").expect("catalog"),
            ..route("/api", Some("/"))
        }
    }

    #[test]
    fn prefixes_are_rewritten_on_segment_boundaries() {
        let keep = route("/api/catalog", None);
        assert_eq!(keep.target("/api/catalog/items/1"), "/api/catalog/items/1");
        let r = route("/api/catalog", Some("/content"));
        assert_eq!(r.target("/api/catalog"), "/content");
        assert_eq!(r.target("/api/catalog/items/1"), "/content/items/1");
        let root = route("/api/catalog", Some("/"));
        assert_eq!(root.target("/api/catalog/items/1"), "/items/1");
        assert_eq!(root.target("/api/catalog"), "/");
    }

    #[test]
    fn hop_by_hop_credentials_and_claims_are_not_forwarded() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("accept", "application/json"),
            ("connection", "close, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("te", "trailers"),
            ("authorization", "Bearer abc"),
            ("x-api-key", "bffk_x"),
            ("x-user-id", "admin"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-request-deadline-ms", "999999"),
            ("host", "evil.example"),
        ] {
            h.append(n, HeaderValue::from_static(v));
        }
        let out = request_headers(&h);
        let names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["accept"]);
    }

    #[tokio::test]
    async fn an_upstreams_connection_cap_holds_calls_at_once_to_its_connections() {
        let backend = axum::Router::new().route(
            "/who",
            axum::routing::get(
                |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<
                    std::net::SocketAddr,
                >| async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    peer.to_string()
                },
            ),
        );
        let route = route_with(backend, |c| c.max_connections = 2).await;
        let calls = (0..8).map(|_| async {
            let req = Request::get("/api/who")
                .body(Body::empty())
                .expect("request");
            let res = route.forward(CallContext::detached(), req).await;
            assert_eq!(res.status(), StatusCode::OK);
            let body = http_body_util::BodyExt::collect(res.into_body())
                .await
                .expect("body")
                .to_bytes();
            String::from_utf8(body.to_vec()).expect("utf-8")
        });
        let peers: std::collections::HashSet<String> =
            futures::future::join_all(calls).await.into_iter().collect();
        assert_eq!(peers.len(), 2, "backend connections: {peers:?}");
    }

    #[tokio::test]
    async fn a_redirect_reaches_the_client_unfollowed() {
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = hits.clone();
        let backend = axum::Router::new()
            .route(
                "/old",
                axum::routing::get(|| async {
                    axum::response::Redirect::temporary("/new?from=old")
                }),
            )
            .route(
                "/new",
                axum::routing::get(move || async move {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    "followed"
                }),
            );
        let route = route_to(backend).await;
        let req = Request::get("/api/old")
            .body(Body::empty())
            .expect("request");
        let res = route.forward(CallContext::detached(), req).await;
        assert_eq!(res.status(), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(res.headers()["location"], "/new?from=old");
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn the_clients_head_is_let_go_while_the_backend_works() {
        // hyper hands the gateway the client's URI and header values as slices of the
        // connection's read buffer; the request here is made the same way from `buffer`.
        let text = b"/api/items?page=2application/jsonsession=1";
        let buffer = bytes::Bytes::from(text.to_vec());
        let uri = axum::http::Uri::from_maybe_shared(buffer.slice(0..17)).expect("uri");
        let mut req = Request::get(uri).body(Body::empty()).expect("request");
        for (name, range) in [("accept", 17..33), ("cookie", 33..text.len())] {
            let value = HeaderValue::from_maybe_shared(buffer.slice(range)).expect("value");
            req.headers_mut().insert(name, value);
        }
        // The backend notes whether the gateway still holds any part of the buffer while it
        // answers: if it does, the connection must read its next request into a new one.
        let buffer = Arc::new(std::sync::Mutex::new(buffer));
        let held = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (seen, noted) = (buffer.clone(), held.clone());
        let backend = axum::Router::new().route(
            "/items",
            axum::routing::get(move || async move {
                let unique = seen.lock().expect("lock").is_unique();
                noted.store(!unique, std::sync::atomic::Ordering::SeqCst);
                "ok"
            }),
        );
        let route = route_to(backend).await;
        let res = route.forward(CallContext::detached(), req).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(
            !held.load(std::sync::atomic::Ordering::SeqCst),
            "the client's URI or headers were still held during the backend call"
        );
    }

    /// An answer whose backend sends a chunk after each of `pauses`, through the idle bound of
    /// `idle`; the backend then stalls with the answer open when `stall` is set, or ends it.
    fn answer_body(idle: Duration, pauses: Vec<Duration>, stall: bool) -> Body {
        let (mut tx, rx) =
            futures::channel::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
        tokio::spawn(async move {
            use futures::SinkExt as _;
            for (i, pause) in pauses.into_iter().enumerate() {
                tokio::time::sleep(pause).await;
                if tx
                    .send(Ok(bytes::Bytes::from(format!("chunk{i};"))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if stall {
                std::future::pending::<()>().await;
            }
        });
        let res = answer(Response::new(Body::from_stream(rx)), idle);
        res.into_body()
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_whose_backend_stalls_ends_with_an_error_after_the_idle_bound() {
        use http_body_util::BodyExt as _;
        let idle = Duration::from_millis(500);
        let mut body = answer_body(idle, vec![Duration::ZERO], true);
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().expect("data"), "chunk0;");
        let started = tokio::time::Instant::now();
        let next = tokio::time::timeout(idle * 10, body.frame())
            .await
            .expect("the idle bound never fired")
            .expect("a frame");
        let err = next.expect_err("a stalled answer went on");
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        while let Some(c) = cause.filter(|c| !c.is::<AnswerIdle>()) {
            cause = c.source();
        }
        assert!(cause.is_some(), "not the idle bound: {err:?}");
        assert!(
            started.elapsed() >= idle,
            "ended after {:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_that_keeps_coming_within_the_bound_is_whole_however_long_it_takes() {
        use http_body_util::BodyExt as _;
        let idle = Duration::from_millis(500);
        // Four pauses of 400 ms each: 1.6 s in all, never 500 ms without a chunk.
        let body = answer_body(idle, vec![Duration::from_millis(400); 4], false);
        let all = body.collect().await.expect("the whole answer").to_bytes();
        assert_eq!(all, "chunk0;chunk1;chunk2;chunk3;");
    }
}
