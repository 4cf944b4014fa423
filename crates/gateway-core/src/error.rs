//! The one error type every stage of the pipeline returns, and its problem+json rendering.
//!
//! Errors are classified by whose fault they are, as pingora does: the client's (4xx), an upstream's
//! (502/504) or ours (500/503). Every variant carries a stable `code` that clients can switch on; the
//! `detail` is written for humans and never contains internal error text, host names or library messages.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The media type of every error body (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Why a credential was refused. Each maps to a stable problem `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credential was sent.
    Missing,
    /// The credential could not be parsed or its signature did not verify.
    Invalid,
    /// The token's `exp` has passed (beyond the configured leeway).
    Expired,
    /// The token's `nbf` lies in the future (beyond the configured leeway).
    NotYetValid,
    /// The token names an issuer this gateway does not trust.
    WrongIssuer,
    /// The token was not minted for this gateway.
    WrongAudience,
    /// The API key is unknown or revoked.
    UnknownApiKey,
}

impl AuthFailure {
    fn code(self) -> &'static str {
        match self {
            Self::Missing => "CREDENTIALS_MISSING",
            Self::Invalid => "TOKEN_INVALID",
            Self::Expired => "TOKEN_EXPIRED",
            Self::NotYetValid => "TOKEN_NOT_YET_VALID",
            Self::WrongIssuer => "TOKEN_ISSUER_UNTRUSTED",
            Self::WrongAudience => "TOKEN_AUDIENCE_MISMATCH",
            Self::UnknownApiKey => "API_KEY_INVALID",
        }
    }

    fn detail(self) -> &'static str {
        match self {
            Self::Missing => {
                "This endpoint needs credentials: send `Authorization: Bearer <token>`."
            }
            Self::Invalid => "The bearer token is malformed or its signature does not verify.",
            Self::Expired => "The bearer token has expired; obtain a new one.",
            Self::NotYetValid => "The bearer token is not valid yet.",
            Self::WrongIssuer => {
                "The bearer token was issued by an issuer this API does not trust."
            }
            Self::WrongAudience => "The bearer token was not issued for this API.",
            Self::UnknownApiKey => "The API key is not recognised.",
        }
    }
}

/// Every way a request can fail, from any stage of the pipeline.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    /// 401: credentials missing or refused.
    #[error("unauthenticated: {0:?}")]
    Unauthenticated(AuthFailure),
    /// 403: authenticated, but the principal lacks a scope the route requires.
    #[error("missing scope {0}")]
    InsufficientScope(&'static str),
    /// 503: no signing key can be had (JWKS unreachable and nothing cached).
    #[error("signing keys unavailable")]
    KeysUnavailable,
    /// 429: the principal is over its limit. Limit headers are added by the limiter.
    #[error("rate limited")]
    RateLimited {
        /// Whole seconds until a request would be admitted.
        retry_after_secs: u64,
    },
    /// 503: the rate-limit store is unreachable and the policy is to fail closed.
    #[error("rate limiter unavailable")]
    LimiterUnavailable,
    /// 502: a required upstream part failed.
    #[error("upstream {0} failed")]
    UpstreamFailed(String),
    /// 504: a required upstream part did not answer within its deadline.
    #[error("upstream {0} timed out")]
    UpstreamTimeout(String),
    /// 404: the resource (or route) does not exist.
    #[error("not found")]
    NotFound(String),
    /// 405: the route exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 400: the request is malformed. `code` is stable, `detail` says precisely what is wrong.
    #[error("bad request: {detail}")]
    BadRequest {
        /// Stable machine-readable code.
        code: &'static str,
        /// What is wrong, for a human.
        detail: String,
    },
    /// 422: the request is well-formed but cannot be processed as sent (an unknown user, an
    /// idempotency key reused with another body).
    #[error("unprocessable: {detail}")]
    Unprocessable {
        /// Stable machine-readable code.
        code: &'static str,
        /// What is wrong, for a human.
        detail: String,
    },
    /// 409: the request conflicts with one in progress (a duplicate still being processed).
    #[error("conflict: {detail}")]
    Conflict {
        /// Stable machine-readable code.
        code: &'static str,
        /// What is wrong, for a human.
        detail: String,
    },
    /// 426: the client app is older than the configured minimum version.
    #[error("client version below {minimum}")]
    UpgradeRequired {
        /// The minimum version, as configured.
        minimum: String,
    },
    /// 414: the request target is longer than the configured limit.
    #[error("URI too long")]
    UriTooLong,
    /// 408: the client paused too long while sending the body.
    #[error("request body timed out")]
    BodyTimeout,
    /// 415: the request body is not in a media type the route accepts (JSON).
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// 413: the request body is larger than the configured limit.
    #[error("payload too large")]
    PayloadTooLarge,
    /// 503: the gateway is shutting down or otherwise not ready.
    #[error("unavailable")]
    Unavailable,
    /// 500: our fault. The cause is logged, never sent.
    #[error("internal error")]
    Internal,
}

impl GatewayError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::InsufficientScope(_) => StatusCode::FORBIDDEN,
            Self::KeysUnavailable | Self::LimiterUnavailable | Self::Unavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::UpstreamFailed(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::UpgradeRequired { .. } => StatusCode::UPGRADE_REQUIRED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code of the problem body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated(f) => f.code(),
            Self::InsufficientScope(_) => "INSUFFICIENT_SCOPE",
            Self::KeysUnavailable => "KEYS_UNAVAILABLE",
            Self::RateLimited { .. } => "RATE_LIMITED",
            Self::LimiterUnavailable => "RATE_LIMITER_UNAVAILABLE",
            Self::UpstreamFailed(_) => "UPSTREAM_ERROR",
            Self::UpstreamTimeout(_) => "UPSTREAM_TIMEOUT",
            Self::NotFound(_) => "NOT_FOUND",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::BadRequest { code, .. }
            | Self::Unprocessable { code, .. }
            | Self::Conflict { code, .. } => code,
            Self::UpgradeRequired { .. } => "CLIENT_VERSION_UNSUPPORTED",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::UnsupportedMediaType => "BODY_NOT_JSON",
            Self::BodyTimeout => "BODY_TIMEOUT",
            Self::UriTooLong => "URI_TOO_LONG",
            Self::Unavailable => "UNAVAILABLE",
            Self::Internal => "INTERNAL",
        }
    }

    fn detail(&self) -> String {
        match self {
            Self::Unauthenticated(f) => f.detail().to_owned(),
            Self::InsufficientScope(scope) => {
                format!("This endpoint requires the scope `{scope}`.")
            }
            Self::KeysUnavailable => {
                "The keys that verify tokens are temporarily unavailable; retry shortly.".to_owned()
            }
            Self::RateLimited { retry_after_secs } => {
                format!("Too many requests; retry in {retry_after_secs} s.")
            }
            Self::LimiterUnavailable => {
                "Rate limits cannot be checked right now, so requests are refused; retry shortly."
                    .to_owned()
            }
            Self::UpstreamFailed(part) => format!("The `{part}` service failed to answer."),
            Self::UpstreamTimeout(part) => format!("The `{part}` service did not answer in time."),
            Self::NotFound(what) => format!("No {what} here."),
            Self::MethodNotAllowed => "This method is not allowed on this path.".to_owned(),
            Self::BadRequest { detail, .. }
            | Self::Unprocessable { detail, .. }
            | Self::Conflict { detail, .. } => detail.clone(),
            Self::UpgradeRequired { minimum } => {
                format!("This app version is no longer supported; update to {minimum} or later.")
            }
            Self::PayloadTooLarge => "The request body is larger than this API accepts.".to_owned(),
            Self::UnsupportedMediaType => {
                "Send the body as JSON with `Content-Type: application/json`.".to_owned()
            }
            Self::BodyTimeout => "The request body was not received in time.".to_owned(),
            Self::UriTooLong => "The request target is longer than this API accepts.".to_owned(),
            Self::Unavailable => "The service is temporarily unavailable.".to_owned(),
            Self::Internal => "An internal error occurred.".to_owned(),
        }
    }

    fn title(&self) -> &'static str {
        self.status().canonical_reason().unwrap_or("Error")
    }
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    minimum_version: Option<&'a str>,
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = self.code();
        let problem = Problem {
            kind: format!(
                "urn:bff:problem:{}",
                code.to_ascii_lowercase().replace('_', "-")
            ),
            title: self.title(),
            status: status.as_u16(),
            detail: self.detail(),
            code,
            minimum_version: match &self {
                Self::UpgradeRequired { minimum } => Some(minimum),
                _ => None,
            },
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut res = (status, body).into_response();
        let headers = res.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        match &self {
            Self::Unauthenticated(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            Self::InsufficientScope(scope) => {
                if let Ok(v) = HeaderValue::from_str(&format!(
                    "Bearer error=\"insufficient_scope\", scope=\"{scope}\""
                )) {
                    headers.insert(header::WWW_AUTHENTICATE, v);
                }
            }
            Self::RateLimited { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            Self::LimiterUnavailable
            | Self::KeysUnavailable
            | Self::Unavailable
            | Self::Conflict { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(1u64));
            }
            _ => {}
        }
        // The error rides along so outer layers (access log, metrics) can see its code.
        res.extensions_mut().insert(ErrorCode(code));
        res
    }
}

/// Attached to every error response so the access log can name the problem code.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util_shim::body_json;

    mod http_body_util_shim {
        pub async fn body_json(res: axum::response::Response) -> serde_json::Value {
            let bytes = axum::body::to_bytes(res.into_body(), 64 * 1024)
                .await
                .expect("body");
            serde_json::from_slice(&bytes).expect("json")
        }
    }

    #[tokio::test]
    async fn expired_token_is_a_401_problem_with_challenge() {
        let res = GatewayError::Unauthenticated(AuthFailure::Expired).into_response();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(res.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(
            res.headers()[header::WWW_AUTHENTICATE],
            "Bearer error=\"invalid_token\""
        );
        let body = body_json(res).await;
        assert_eq!(body["code"], "TOKEN_EXPIRED");
        assert_eq!(body["status"], 401);
        assert_eq!(body["type"], "urn:bff:problem:token-expired");
    }

    #[tokio::test]
    async fn rate_limited_carries_retry_after() {
        let res = GatewayError::RateLimited {
            retry_after_secs: 7,
        }
        .into_response();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()[header::RETRY_AFTER], "7");
        assert_eq!(body_json(res).await["code"], "RATE_LIMITED");
    }
}
