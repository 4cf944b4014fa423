//! Sending a request through as it is, for pass-through routes ([`crate::proxy`]).

use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::http::{HeaderMap, Method, Request, Response};

use super::{CallContext, Upstream, UpstreamError};

impl Upstream {
    /// Sends `method target` with `headers` and a streamed `body` to the instance the balancer
    /// picks, through the circuit breaker and concurrency cap, on pooled connections (the
    /// instance's own for `http://` instances, the shared REST client's for `https://`). Waits at
    /// most `timeout` for the answer's head; the body is the caller's to stream. Not retried
    /// (the body is consumed; over HTTP/2 the pool sends again a call without a body that the
    /// backend turned away unprocessed); a 5xx answer is an answer, passed on, not an error. Not an
    /// `async fn`: it would keep room for the request's parts beside the call's own future.
    pub fn send(
        &self,
        ctx: &CallContext,
        method: Method,
        target: &str,
        headers: HeaderMap,
        body: Body,
        timeout: Duration,
    ) -> impl Future<Output = Result<Response<Body>, UpstreamError>> {
        self.call(ctx, move |instance| async move {
            match (instance.plain_pool(), instance.plain_target_for(target)) {
                (Some(pool), Some(uri)) => {
                    let mut req = Request::new(body);
                    *req.method_mut() = method;
                    *req.uri_mut() = uri;
                    *req.headers_mut() = headers;
                    if let Some(host) = instance.plain_host() {
                        req.headers_mut()
                            .insert(axum::http::header::HOST, host.clone());
                    }
                    match tokio::time::timeout(timeout, pool.send(req)).await {
                        Ok(Ok(res)) => Ok(res),
                        Ok(Err(e)) => Err(failure(&e)),
                        Err(_) => Err(UpstreamError::Timeout),
                    }
                }
                _ => {
                    let url = instance
                        .url_for(target)
                        .ok_or_else(|| UpstreamError::Failed("url".into()))?;
                    // Built whole and moved into the client: the headers are not copied again.
                    let mut req = reqwest::Request::new(method, url);
                    *req.headers_mut() = headers;
                    if !HttpBody::is_end_stream(&body) {
                        *req.body_mut() = Some(reqwest::Body::wrap_stream(body.into_data_stream()));
                    }
                    match tokio::time::timeout(timeout, self.http.execute(req)).await {
                        Ok(Ok(res)) => Ok(Response::from(res).map(Body::new)),
                        // A connection that could not be made in time is a connection failure
                        // (502), as on the other path; an answer late in coming is a timeout.
                        Ok(Err(e)) if e.is_timeout() && !e.is_connect() => {
                            Err(UpstreamError::Timeout)
                        }
                        Ok(Err(e)) => Err(failure(&e)),
                        Err(_) => Err(UpstreamError::Timeout),
                    }
                }
            }
        })
    }
}

/// A call that failed without an answer. The client's body failing (too slow, too large) is not
/// the upstream's fault, so not a failure its breaker should count.
fn failure(e: &(dyn std::error::Error + 'static)) -> UpstreamError {
    match client_body_failure(e) {
        Some(why) => UpstreamError::Rejected(why.into()),
        None => UpstreamError::Failed("connect".into()),
    }
}

/// Why the client's body failed, if that is what ended the call.
fn client_body_failure(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<crate::server::BodyTimedOut>() {
            return Some(BODY_TIMED_OUT);
        }
        if c.is::<http_body_util::LengthLimitError>() {
            return Some(BODY_TOO_LARGE);
        }
        cause = c.source();
    }
    None
}

/// [`UpstreamError::Rejected`] reasons of a pass-through call whose client body failed.
pub const BODY_TIMED_OUT: &str = "request body timed out";
/// See [`BODY_TIMED_OUT`].
pub const BODY_TOO_LARGE: &str = "request body too large";
