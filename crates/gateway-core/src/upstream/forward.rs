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
        body: reqwest::Body,
        timeout: Duration,
    ) -> Result<reqwest::Response, UpstreamError> {
        self.call(ctx, |instance| {
            let req = self
                .http
                .request(method, format!("{}{target}", instance.base()))
                .headers(headers)
                .body(body);
            async move {
                match tokio::time::timeout(timeout, req.send()).await {
                    Ok(Ok(res)) => Ok(res),
                    Ok(Err(e)) if e.is_timeout() => Err(UpstreamError::Timeout),
                    Ok(Err(_)) => Err(UpstreamError::Failed("connect".into())),
                    Err(_) => Err(UpstreamError::Timeout),
                }
            }
        })
        .await
    }
}
