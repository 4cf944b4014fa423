//! Sending a request through as it is, for pass-through routes ([`crate::proxy`]).

use std::time::Duration;

use axum::http::{HeaderMap, Method};

use super::{CallContext, Upstream, UpstreamError};

impl Upstream {
    /// Sends `method target` with `headers` and a streamed `body` to the instance the balancer
    /// picks, through the circuit breaker and concurrency cap, on the shared pooled client. Waits
    /// at most `timeout` for the answer's head; the body is the caller's to stream. Never retried
    /// (the body is consumed); a 5xx answer is an answer, passed on, not an error.
    pub async fn send(
        &self,
        ctx: &CallContext,
        method: Method,
        target: &str,
        headers: HeaderMap,
        body: Option<reqwest::Body>,
        timeout: Duration,
    ) -> Result<reqwest::Response, UpstreamError> {
        self.call(ctx, |instance| {
            // Built whole and moved into the client: the headers are not copied again.
            let req = instance.url_for(target).map(|url| {
                let mut req = reqwest::Request::new(method, url);
                *req.headers_mut() = headers;
                *req.body_mut() = body;
                req
            });
            async move {
                let req = req.ok_or_else(|| UpstreamError::Failed("url".into()))?;
                match tokio::time::timeout(timeout, self.http.execute(req)).await {
                    Ok(Ok(res)) => Ok(res),
                    Ok(Err(e)) if e.is_timeout() => Err(UpstreamError::Timeout),
                    // The client's body failed (too slow, too large): not the upstream's fault,
                    // so not a failure its breaker should count.
                    Ok(Err(e)) => match client_body_failure(&e) {
                        Some(why) => Err(UpstreamError::Rejected(why.into())),
                        None => Err(UpstreamError::Failed("connect".into())),
                    },
                    Err(_) => Err(UpstreamError::Timeout),
                }
            }
        })
        .await
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
