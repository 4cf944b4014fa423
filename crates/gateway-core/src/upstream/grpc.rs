//! How an instance's gRPC calls go out: what tonic's generated clients are built on
//! ([`Instance::channel`](super::balance::Instance::channel)).
//!
//! To an `http://` instance a call takes a stream on the instance's own HTTP/2 connections
//! ([`super::pass`]), shared with its pass-through calls when the upstream speaks HTTP/2: the
//! call's request goes to hyper's connection as tonic's codec made it. tonic's own channel puts
//! a queue and a task in front of its connection (`tower::buffer`) and rebuilds every request's
//! URI and `User-Agent` on the way; here a call costs neither. To an `https://` instance calls go
//! through tonic's channel, which negotiates TLS.
//!
//! Either way a call is bounded by the `grpc-timeout` it carries
//! ([`CallContext::grpc`](super::CallContext::grpc) sets it to the call's budget): past it the
//! call ends with `CANCELLED`, as tonic's channel ends it.

use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tonic::transport::Channel;

use super::pass::{PassError, Pool};

/// A gRPC client's transport to one instance; cheap to clone.
#[derive(Debug, Clone)]
pub struct GrpcChannel(Transport);

#[derive(Debug, Clone)]
enum Transport {
    /// The instance's own HTTP/2 connections (`http://`).
    Pooled(Pool),
    /// tonic's channel (`https://`).
    Tonic(Channel),
}

impl GrpcChannel {
    pub(crate) fn pooled(pool: Pool) -> Self {
        Self(Transport::Pooled(pool))
    }

    pub(crate) fn tonic(channel: Channel) -> Self {
        Self(Transport::Tonic(channel))
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The header that carries a gRPC call's budget.
pub(crate) static TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

impl tower::Service<http::Request<tonic::body::Body>> for GrpcChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match &mut self.0 {
            Transport::Pooled(_) => Poll::Ready(Ok(())),
            Transport::Tonic(channel) => channel.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        match &mut self.0 {
            Transport::Tonic(channel) => {
                let call = channel.call(req);
                Box::pin(async move { call.await.map_err(Into::into) })
            }
            Transport::Pooled(pool) => {
                let pool = pool.clone();
                let bound = timeout_of(req.headers());
                Box::pin(async move {
                    let call = pool.send(req.map(axum::body::Body::new));
                    let res = match bound {
                        Some(bound) => tokio::time::timeout(bound, call)
                            .await
                            .map_err(|_| Box::new(tonic::TimeoutExpired(())) as BoxError)?,
                        None => call.await,
                    };
                    match res {
                        Ok(res) => Ok(res.map(tonic::body::Body::new)),
                        Err(PassError::Connect(e)) => Err(Box::new(tonic::ConnectError(e)) as _),
                        Err(PassError::Unsent) => Err(Box::new(tonic::Status::unavailable(
                            "no connection took the call",
                        )) as _),
                        Err(PassError::Http(e)) => Err(Box::new(e) as _),
                    }
                })
            }
        }
    }
}

/// `budget` as `grpc-timeout` states it (at most eight digits and a unit): in microseconds below
/// 100 s, in milliseconds below 27 hours, in seconds beyond; never to be indexed, as it differs on
/// every call.
pub(crate) fn timeout_value(budget: Duration) -> http::HeaderValue {
    const MAX: u64 = 99_999_999;
    // In 64 bits: the digits are taken by division, which on 128 bits is a call of its own.
    let (n, unit) = if budget.as_micros() <= u128::from(MAX) {
        (budget.as_micros() as u64, b'u')
    } else if budget.as_millis() <= u128::from(MAX) {
        (budget.as_millis() as u64, b'm')
    } else {
        (budget.as_secs().min(MAX), b'S')
    };
    let mut text = [0u8; 9];
    let mut at = text.len() - 1;
    text[at] = unit;
    let mut n = n;
    loop {
        at -= 1;
        text[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut value =
        http::HeaderValue::from_bytes(&text[at..]).expect("digits and a unit are ASCII");
    value.set_sensitive(true);
    value
}

/// The budget a request's `grpc-timeout` states ([`timeout_value`] writes it; any client may):
/// at most eight digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`). Anything else states none, and
/// the call is bounded by its caller's deadline alone.
fn timeout_of(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get(&TIMEOUT)?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::net::SocketAddr;

    use axum::extract::ConnectInfo;
    use tower::ServiceExt as _;

    use crate::upstream::Protocol;
    use crate::upstream::balance::{Dial, Instance};

    /// An instance speaking HTTP/1.1 for its other calls, as most gRPC upstreams are configured.
    fn instance(at: SocketAddr) -> Instance {
        Instance::new(
            &format!("http://{at}"),
            Dial {
                connect_timeout: Duration::from_secs(1),
                protocol: Protocol::Http1,
                max_idle: 8,
                max_open: 8,
            },
        )
    }

    fn call(timeout: Option<&str>) -> http::Request<tonic::body::Body> {
        let mut req = http::Request::post("/pkg.Service/Method")
            .header("content-type", "application/grpc")
            .body(tonic::body::Body::empty())
            .expect("request");
        if let Some(t) = timeout {
            req.headers_mut()
                .insert("grpc-timeout", t.parse().expect("value"));
        }
        req
    }

    fn status(err: BoxError) -> tonic::Status {
        tonic::Status::from_error(err)
    }

    #[tokio::test]
    async fn calls_to_an_http_instance_share_one_http2_connection_of_its_own() {
        // Answers with the HTTP version and the caller's address: one address, one connection.
        let app = axum::Router::new().route(
            "/pkg.Service/Method",
            axum::routing::post(
                |ConnectInfo(peer): ConnectInfo<SocketAddr>,
                 req: http::Request<axum::body::Body>| async move {
                    format!("{:?} {peer}", req.version())
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let at = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        });
        let instance = instance(at);
        let calls = (0..20).map(|_| {
            let channel = instance.channel();
            async move {
                let res = channel.oneshot(call(Some("5S"))).await.expect("answer");
                let body = http_body_util::BodyExt::collect(res.into_body())
                    .await
                    .expect("body")
                    .to_bytes();
                String::from_utf8(body.to_vec()).expect("utf-8")
            }
        });
        let seen: HashSet<String> = futures::future::join_all(calls).await.into_iter().collect();
        assert_eq!(seen.len(), 1, "{seen:?}");
        let only = seen.into_iter().next().expect("one");
        assert!(only.starts_with("HTTP/2.0 "), "{only}");
    }

    #[tokio::test]
    async fn a_call_past_its_grpc_timeout_ends_cancelled() {
        // A backend that takes the connection and never says a word.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let at = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        // Bounded here too: without the call's own bound this test would wait forever.
        let err = tokio::time::timeout(
            Duration::from_secs(10),
            instance(at).channel().oneshot(call(Some("100m"))),
        )
        .await
        .expect("the call ends by its grpc-timeout")
        .expect_err("no answer comes");
        let status = status(err);
        assert_eq!(status.code(), tonic::Code::Cancelled, "{status:?}");
        assert_eq!(
            crate::upstream::UpstreamError::from(status),
            crate::upstream::UpstreamError::Timeout
        );
    }

    #[tokio::test]
    async fn a_backend_that_refuses_connections_is_unavailable() {
        let at = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr")
        };
        let err = instance(at)
            .channel()
            .oneshot(call(Some("1S")))
            .await
            .expect_err("nothing listens");
        assert_eq!(status(err).code(), tonic::Code::Unavailable);
    }

    fn parsed(value: &str) -> Option<Duration> {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().expect("header value"));
        timeout_of(&headers)
    }

    #[test]
    fn grpc_timeout_states_the_budget_in_eight_digits_at_most() {
        let cases = [
            (Duration::ZERO, "0u"),
            (Duration::from_nanos(999), "0u"),
            (Duration::from_millis(300), "300000u"),
            (Duration::from_micros(99_999_999), "99999999u"),
            (Duration::from_secs(100), "100000m"),
            (Duration::from_secs(30 * 3600), "108000S"),
            (Duration::MAX, "99999999S"),
        ];
        for (budget, text) in cases {
            let value = timeout_value(budget);
            assert_eq!(value.to_str().expect("ascii"), text, "{budget:?}");
            assert!(value.is_sensitive(), "never indexed");
            // What the gateway writes, it reads back, to the unit's precision.
            let mut headers = http::HeaderMap::new();
            headers.insert(TIMEOUT.clone(), value);
            let read = timeout_of(&headers).expect("a budget");
            let stated = budget.min(Duration::from_secs(99_999_999));
            assert!(
                read <= stated && stated - read < Duration::from_secs(1),
                "{budget:?}"
            );
        }
    }

    #[test]
    fn grpc_timeout_reads_every_unit_and_refuses_the_rest() {
        assert_eq!(parsed("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parsed("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parsed("4S"), Some(Duration::from_secs(4)));
        assert_eq!(parsed("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parsed("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parsed("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "m", "123456789m", "12x", "-1m", "1.5S", "１m"] {
            assert_eq!(parsed(bad), None, "{bad:?}");
        }
        assert_eq!(timeout_of(&http::HeaderMap::new()), None);
    }
}
