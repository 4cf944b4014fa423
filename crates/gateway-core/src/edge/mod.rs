//! Edge hygiene, applied before anything else looks at a request: a sane request id, a W3C trace
//! context, the client's address, and removal of identity headers only the gateway may set.

pub mod path;
pub mod proxies;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::RngCore;

/// `X-Request-Id`.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// W3C `traceparent`.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Headers through which the gateway tells backends who is calling. A client that sends them is
/// trying to impersonate someone: they are removed on the way in, always.
pub const IDENTITY_HEADERS: [&str; 5] = [
    "x-user-id",
    "x-user-scopes",
    "x-user-tier",
    "x-partner-id",
    "x-api-version",
];

/// Longest client-sent request id we keep; anything longer (or not visible ASCII) is replaced.
const MAX_REQUEST_ID: usize = 128;

/// What the pipeline established about a request, as one request extension: each stage fills in
/// its part of the one value, where a value of its own would cost the request a box, and the
/// extensions' table a growth, apiece. Read it with [`RequestFacts::of`]; handlers get the
/// principal with the [`Principal`](crate::auth::Principal) extractor, and what calls need with
/// [`CallContext`](crate::upstream::CallContext).
#[derive(Debug, Clone, Default)]
pub struct RequestFacts {
    /// What the edge established ([`screened`]); `None` where the edge did not run.
    pub edge: Option<EdgeFacts>,
    /// Who is calling, once authentication passed.
    pub principal: Option<crate::auth::Principal>,
    /// When the request must be answered by (`server.request_timeout_ms`), once the bounds ran.
    pub deadline: Option<std::time::Instant>,
    /// The pass-through route the request matched.
    pub(crate) route: Option<crate::proxy::RoutePattern>,
}

impl RequestFacts {
    /// The facts in a request's `extensions`, if any stage left some.
    pub fn of(extensions: &axum::http::Extensions) -> Option<&Self> {
        extensions.get()
    }

    /// The facts in a request's `extensions`, put there empty if none are yet.
    pub fn of_mut(extensions: &mut axum::http::Extensions) -> &mut Self {
        extensions.get_or_insert_default()
    }

    /// What the edge established about the request whose `extensions` these are.
    pub fn edge_of(extensions: &axum::http::Extensions) -> Option<&EdgeFacts> {
        Self::of(extensions).and_then(|f| f.edge.as_ref())
    }
}

/// What the edge established about a request: its id, its trace context, the client's address.
#[derive(Debug, Clone)]
pub struct EdgeFacts {
    /// The request's id.
    pub request_id: RequestId,
    /// The trace it belongs to; the access log's span replaces it with its own when traces are
    /// exported.
    pub trace: TraceContext,
    /// The client's address.
    pub client_ip: ClientIp,
}

/// The request's id, as accepted or assigned.
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue);

/// The address of the client: the connection's peer, or what trusted proxies say it is.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

/// The W3C trace this request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// 16-byte trace id.
    pub trace_id: [u8; 16],
    /// Our span id for this request.
    pub span_id: [u8; 8],
    /// Trace flags (sampled = 1).
    pub flags: u8,
    /// The caller's span id, when the request continued a trace.
    pub parent_id: Option<[u8; 8]>,
    /// Whether `span_id` is an exported span (OpenTelemetry on): backend calls then name it as
    /// their parent; otherwise each call gets a span id of its own.
    pub exported: bool,
}

impl TraceContext {
    /// Continues a valid `traceparent` (version 00), or starts a new trace.
    pub fn from_header(value: Option<&HeaderValue>) -> Self {
        value
            .and_then(|v| v.to_str().ok())
            .and_then(Self::parse)
            .map(|(trace_id, parent_id, flags)| Self {
                trace_id,
                span_id: random_span(),
                flags,
                parent_id: Some(parent_id),
                exported: false,
            })
            .unwrap_or_else(|| {
                let mut trace_id = [0u8; 16];
                rand::rng().fill_bytes(&mut trace_id);
                Self {
                    trace_id,
                    span_id: random_span(),
                    flags: 1,
                    parent_id: None,
                    exported: false,
                }
            })
    }

    fn parse(s: &str) -> Option<([u8; 16], [u8; 8], u8)> {
        let mut parts = s.split('-');
        let (Some("00"), Some(trace), Some(parent), Some(flags), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let trace_id: [u8; 16] = hex_decode(trace)?;
        let parent_id: [u8; 8] = hex_decode(parent)?;
        let [flags] = hex_decode::<1>(flags)?;
        // All-zero ids are invalid by the specification.
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some((trace_id, parent_id, flags))
    }

    /// The trace id in lower-case hex.
    pub fn trace_id_hex(&self) -> String {
        let mut out = [0u8; 32];
        hex_to(&mut out, &self.trace_id);
        text(&out)
    }

    /// A `traceparent` for an outgoing call: same trace; as parent, the request's exported span,
    /// or else a fresh span id for the call.
    pub fn child_header(&self) -> String {
        text(&self.child())
    }

    /// [`TraceContext::child_header`] as a header value, written without a `String` in between.
    pub fn child_header_value(&self) -> HeaderValue {
        value(&self.child())
    }

    /// Our own `traceparent`, returned to the client.
    pub fn header(&self) -> String {
        text(&self.own())
    }

    /// [`TraceContext::header`] as a header value.
    pub fn header_value(&self) -> HeaderValue {
        value(&self.own())
    }

    fn child(&self) -> [u8; TRACEPARENT_LEN] {
        let parent = if self.exported {
            self.span_id
        } else {
            random_span()
        };
        traceparent(&self.trace_id, &parent, self.flags)
    }

    fn own(&self) -> [u8; TRACEPARENT_LEN] {
        traceparent(&self.trace_id, &self.span_id, self.flags)
    }
}

/// The length of a version-00 `traceparent`.
const TRACEPARENT_LEN: usize = 55;

fn text(bytes: &[u8]) -> String {
    bytes.iter().copied().map(char::from).collect()
}

fn value(bytes: &[u8]) -> HeaderValue {
    // Lower-case hex and dashes are always a valid header value.
    HeaderValue::from_bytes(bytes).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Appends `ip` as text. An IPv4 address, the common case, is written digit by digit: `Display`
/// for addresses goes through padding support and costs a formatting pass per request.
pub(crate) fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(itoa::Buffer::new().format(octet));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// Removes the headers whose (lowercase) name `unwanted` selects: one pass over the names
/// present (one more after every eight found), then a removal for each one found, rather than a
/// hashed lookup of every name that might be there.
pub(crate) fn remove_where(headers: &mut HeaderMap, unwanted: impl Fn(&str) -> bool) {
    // The names found are held on the stack, a few at a time (a map cannot lose entries while its
    // keys are read): no allocation on every request.
    loop {
        let mut found: [Option<HeaderName>; 8] = Default::default();
        let mut n = 0;
        for name in headers.keys().filter(|n| unwanted(n.as_str())) {
            found[n] = Some(name.clone());
            n += 1;
            if n == found.len() {
                break;
            }
        }
        let full = n == found.len();
        for name in found.into_iter().flatten() {
            headers.remove(name);
        }
        if !full {
            return;
        }
    }
}

/// `00-{trace id}-{span id}-{flags}`, on the stack.
fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], flags: u8) -> [u8; TRACEPARENT_LEN] {
    let mut out = [b'-'; TRACEPARENT_LEN];
    out[..2].copy_from_slice(b"00");
    hex_to(&mut out[3..35], trace_id);
    hex_to(&mut out[36..52], span_id);
    hex_to(&mut out[53..], &[flags]);
    out
}

/// Writes `bytes` as lower-case hex into `out`, which holds exactly twice as many bytes.
fn hex_to(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
}

fn random_span() -> [u8; 8] {
    let mut span = [0u8; 8];
    rand::rng().fill_bytes(&mut span);
    span
}

fn hex_decode<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn acceptable_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_REQUEST_ID
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
}

/// Edge settings.
#[derive(Debug, Clone)]
pub struct Edge {
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<[proxies::Cidr]>,
    /// Longest request target accepted (`server.max_uri_bytes`); longer is 414.
    pub max_uri_bytes: usize,
}

impl Default for Edge {
    fn default() -> Self {
        Self {
            trusted_proxies: Arc::from([]),
            max_uri_bytes: 8 * 1024,
        }
    }
}

/// Middleware, before anything else looks at a request: request id, trace context, client
/// address and identity-header removal; then the path check, 414 for an overlong target and 400
/// `PATH_INVALID` for an ambiguous path; echoes the request id and our `traceparent` on every
/// answer, refusals included.
pub async fn hygiene(State(edge): State<Edge>, req: Request, next: Next) -> Response {
    screened(&edge, req, |req| next.run(req)).await
}

/// What [`hygiene`] does, around `next` (the rest of the pipeline), so that the gateway can run
/// it with the access log and the request bounds as one layer.
///
/// Not an `async fn`: its work before the rest of the pipeline is done when it is called, so the
/// future it returns holds the rest's future and the two headers, not the request as well (an
/// `async fn` keeps room for its arguments beside the futures it awaits).
pub fn screened<F, Fut>(edge: &Edge, mut req: Request, next: F) -> impl Future<Output = Response>
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .filter(|v| acceptable_request_id(v))
        // Copied: a clone would share the connection's read buffer for the request's lifetime.
        .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok())
        .unwrap_or_else(|| {
            let mut buf = uuid::Uuid::encode_buffer();
            HeaderValue::from_str(uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf))
                .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
        });
    let trace = TraceContext::from_header(req.headers().get(&TRACEPARENT));
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let forwarded = req
        .headers()
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let client = proxies::client_ip(peer, forwarded, &edge.trusted_proxies);
    let headers = req.headers_mut();
    remove_where(headers, |name| IDENTITY_HEADERS.contains(&name));
    headers.insert(REQUEST_ID.clone(), id.clone());
    RequestFacts::of_mut(req.extensions_mut()).edge = Some(EdgeFacts {
        request_id: RequestId(id.clone()),
        trace,
        client_ip: ClientIp(client),
    });

    let answer = match refusal(&req, edge.max_uri_bytes) {
        Some(refused) => futures::future::Either::Left(std::future::ready(refused)),
        None => futures::future::Either::Right(next(req)),
    };
    // A combinator, not an `async` block: a block would keep the future it awaits twice.
    futures::FutureExt::map(answer, move |mut res| {
        let headers = res.headers_mut();
        headers.insert(REQUEST_ID.clone(), id);
        headers.insert(TRACEPARENT.clone(), trace.header_value());
        res
    })
}

/// The answer to a request whose target is overlong or ambiguous, if it is.
fn refusal(req: &Request, max_uri_bytes: usize) -> Option<Response> {
    let uri = req.uri();
    let len = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    let err = path::check(uri.path(), len, max_uri_bytes).err()?;
    tracing::info!(target: "access", method = %req.method(), status = err.status().as_u16(), problem = err.code(), "refused: overlong or ambiguous target");
    Some(err.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unwanted_header_goes_however_many_there_are() {
        let mut headers = HeaderMap::new();
        for i in 0..20 {
            headers.append(
                HeaderName::from_bytes(format!("x-drop-{i}").as_bytes()).expect("name"),
                HeaderValue::from_static("v"),
            );
            headers.append(
                HeaderName::from_bytes(format!("x-keep-{i}").as_bytes()).expect("name"),
                HeaderValue::from_static("v"),
            );
        }
        headers.append("x-drop-0", HeaderValue::from_static("second value"));
        remove_where(&mut headers, |name| name.starts_with("x-drop-"));
        assert_eq!(headers.len(), 20);
        assert!(headers.keys().all(|n| n.as_str().starts_with("x-keep-")));
        remove_where(&mut headers, |_| false);
        assert_eq!(headers.len(), 20);
    }

    #[tokio::test]
    async fn forged_identity_headers_never_reach_a_handler() {
        use axum::routing::get;
        use tower::ServiceExt;
        // The handler answers with every identity header it can see.
        let app = axum::Router::new()
            .route(
                "/",
                get(|headers: axum::http::HeaderMap| async move {
                    IDENTITY_HEADERS
                        .iter()
                        .filter(|h| headers.contains_key(**h))
                        .copied()
                        .collect::<Vec<_>>()
                        .join(",")
                }),
            )
            .layer(axum::middleware::from_fn_with_state(
                Edge::default(),
                hygiene,
            ));
        let mut req = Request::new(axum::body::Body::empty());
        for h in IDENTITY_HEADERS {
            req.headers_mut()
                .insert(h, HeaderValue::from_static("user-0001"));
        }
        let res = app.oneshot(req).await.expect("response");
        assert!(res.headers().contains_key(&REQUEST_ID));
        let body = axum::body::to_bytes(res.into_body(), 1024)
            .await
            .expect("body");
        assert_eq!(body, "", "identity headers that reached the handler");
    }

    #[tokio::test]
    async fn a_clients_request_id_is_copied_not_shared() {
        // hyper's header values are slices of the connection's read buffer; the request id
        // lives as long as the request, so it must not keep that buffer.
        let buffer = bytes::Bytes::from_static(b"client-chosen-id-42");
        let sent = HeaderValue::from_maybe_shared(buffer.clone()).expect("value");
        let mut req = Request::new(axum::body::Body::empty());
        req.headers_mut().insert(&REQUEST_ID, sent);
        let sent_at = buffer.as_ptr();
        let res = screened(&Edge::default(), req, |req| async move {
            let id = &RequestFacts::edge_of(req.extensions())
                .expect("facts")
                .request_id;
            assert_eq!(id.0, "client-chosen-id-42");
            assert_ne!(
                id.0.as_bytes().as_ptr(),
                sent_at,
                "the id shares the client's buffer"
            );
            Response::new(axum::body::Body::empty())
        })
        .await;
        // The checks above ran: the request reached the rest of the pipeline.
        assert_eq!(res.status(), axum::http::StatusCode::OK);
    }

    #[test]
    fn continues_a_valid_traceparent() {
        let v = HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let t = TraceContext::from_header(Some(&v));
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let child = t.child_header();
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(!child.contains("00f067aa0ba902b7"));
    }

    #[test]
    fn writes_addresses_as_display_does() {
        for ip in [
            "0.0.0.0",
            "10.2.33.255",
            "127.0.0.1",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: IpAddr = ip.parse().expect("address");
            let mut out = String::from("ip:");
            push_ip(&mut out, ip);
            assert_eq!(out, format!("ip:{ip}"));
        }
    }

    #[test]
    fn starts_a_new_trace_on_garbage() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f35-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let t = TraceContext::from_header(Some(&HeaderValue::from_static(bad)));
            assert_ne!(
                t.trace_id_hex(),
                "4bf92f3577b34da6a3ce929d0e0e4736",
                "{bad}"
            );
        }
    }

    #[test]
    fn request_ids_are_checked() {
        assert!(acceptable_request_id(&HeaderValue::from_static("abc-123")));
        assert!(!acceptable_request_id(&HeaderValue::from_static("a b")));
        assert!(!acceptable_request_id(
            &HeaderValue::from_str(&"a".repeat(200)).expect("hv")
        ));
    }
}
