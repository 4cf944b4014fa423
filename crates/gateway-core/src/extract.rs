//! Extractors whose rejections are problem+json like every other error.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::error::GatewayError;

/// A JSON body. Bad JSON, a wrong content type, an oversized body and a body of the wrong shape are
/// each refused with a precise problem: `BODY_NOT_JSON` (415), `BODY_INVALID` (400, with serde's
/// description of where the body went wrong), `PAYLOAD_TOO_LARGE` (413).
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = GatewayError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(JsonRejection::MissingJsonContentType(_)) => {
                Err(GatewayError::UnsupportedMediaType)
            }
            Err(JsonRejection::JsonDataError(e)) => Err(GatewayError::BadRequest {
                code: "BODY_INVALID",
                detail: e.body_text().replace(
                    "Failed to deserialize the JSON body into the target type: ",
                    "",
                ),
            }),
            Err(JsonRejection::JsonSyntaxError(_)) => Err(GatewayError::BadRequest {
                code: "BODY_INVALID",
                detail: "The body is not well-formed JSON.".into(),
            }),
            Err(JsonRejection::BytesRejection(e)) if timed_out(&e) => {
                Err(GatewayError::BodyTimeout)
            }
            Err(JsonRejection::BytesRejection(_)) => Err(GatewayError::PayloadTooLarge),
            Err(_) => Err(GatewayError::BadRequest {
                code: "BODY_INVALID",
                detail: "The body could not be read.".into(),
            }),
        }
    }
}

/// Whether reading the body failed because the client paused too long.
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<crate::server::BodyTimedOut>() {
            return true;
        }
        cause = c.source();
    }
    false
}
