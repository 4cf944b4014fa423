//! The partner API's handlers and its OpenAPI description (current version).
//!
//! Handlers work in the current shape only: a request is upgraded from its version on the way in
//! and the answer rendered for it on the way out ([`crate::versions`]). Idempotency records hold
//! answers in the current shape, so a retry sent with another version still gets its own shape.

use std::sync::LazyLock;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use backend_clients as backends;
use gateway_core::extract::JsonBody;
use gateway_core::idempotency::{self, Answer, Outcome};
use gateway_core::{CallContext, Gateway, GatewayError, UpstreamError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use crate::PartnerClient;
use crate::versions::{self, Shape, Version};

type Gw = Gateway<PartnerClient>;

/// A plan a user can subscribe to.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    /// The entry plan.
    Basic,
    /// HD on two screens.
    Standard,
    /// 4K on four screens.
    Premium,
}

/// Where a subscription stands.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Paid and running.
    Active,
    /// In its free trial.
    Trial,
    /// Ended.
    Cancelled,
}

/// A price.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Amount in the currency's minor unit.
    #[schema(example = 1299)]
    pub amount_cents: i64,
    /// ISO 4217 code.
    #[schema(example = "EUR")]
    pub currency: String,
}

/// A subscription, as of the current version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// Its id.
    #[schema(example = "sub-1")]
    pub id: String,
    /// The subscribed user.
    #[schema(example = "user-0042")]
    pub user_id: String,
    /// Its plan.
    pub plan: Plan,
    /// Where it stands.
    pub status: Status,
    /// What it costs per period.
    pub price: Price,
    /// When it started (RFC 3339).
    #[schema(format = DateTime, example = "2025-06-01T12:00:00Z")]
    pub started_at: String,
    /// When it renews (RFC 3339).
    #[schema(format = DateTime, example = "2025-07-01T12:00:00Z")]
    pub renews_at: String,
}

/// A page of subscriptions.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SubscriptionList {
    /// This page.
    pub data: Vec<Subscription>,
    /// Pass as `page_token` for the next page; null on the last page.
    pub next_page_token: Option<String>,
}

/// `POST /v1/subscriptions`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSubscription {
    /// The user to subscribe.
    #[schema(example = "user-0042", pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub user_id: String,
    /// The plan.
    pub plan: Plan,
}

/// An RFC 9457 problem.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// A URN naming the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The status's reason phrase.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, for a human.
    pub detail: String,
    /// Stable machine-readable code, e.g. `IDEMPOTENCY_KEY_REUSED`.
    pub code: String,
}

/// Query of `GET /v1/subscriptions`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Subscriptions per page (default 20).
    #[param(minimum = 1, maximum = 100)]
    #[serde(default)]
    page_size: Option<u32>,
    /// `next_page_token` of the previous page.
    #[param(max_length = 64)]
    #[serde(default)]
    page_token: Option<String>,
}

/// The version this document describes. Older versions (`2024-01-01`, `2024-09-01`) are accepted
/// too, with the shapes the README lists; each has its own shapes, so a document per version would
/// describe them, and this one describes only the current.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
pub enum PartnerVersion {
    /// The current version.
    #[serde(rename = "2025-06-01")]
    V20250601,
}

/// The request's `Partner-Version` header, documented on every operation.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct VersionHeader {
    /// API version of the request and its answer; the key's pinned version when absent.
    #[param(rename = "Partner-Version", inline, required = false)]
    partner_version: PartnerVersion,
}

/// The `Idempotency-Key` header every `POST` requires.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct IdempotencyHeader {
    /// Unique per intended write; a retry with the same key and body replays the first answer.
    #[param(
        rename = "Idempotency-Key",
        min_length = 1,
        max_length = 255,
        pattern = r"^[!-~]+$"
    )]
    idempotency_key: String,
}

/// `GET /v1/subscriptions`: the calling partner's subscriptions, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/subscriptions",
    tag = "subscriptions",
    params(ListQuery, VersionHeader),
    responses(
        (status = 200, description = "A page of the partner's subscriptions.", body = SubscriptionList),
        (status = 400, description = "A query parameter or `Partner-Version` is invalid.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "The API key is missing or unknown.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit or daily quota.", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The subscription service failed.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Limits cannot be checked right now.", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "The subscription service did not answer in time.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_subscriptions(
    State(gw): State<Gw>,
    ctx: CallContext,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, GatewayError> {
    let version = Version::of_request(&headers, ctx.principal.as_ref())?;
    let Query(q) = query.map_err(|e| GatewayError::BadRequest {
        code: "QUERY_INVALID",
        detail: e.body_text(),
    })?;
    let page_size = q.page_size.unwrap_or(20);
    if !(1..=100).contains(&page_size) {
        return Err(GatewayError::BadRequest {
            code: "QUERY_INVALID",
            detail: format!("`page_size` must be between 1 and 100, got {page_size}."),
        });
    }
    let token = q.page_token.unwrap_or_default();
    if token.len() > 64 {
        return Err(GatewayError::BadRequest {
            code: "QUERY_INVALID",
            detail: "`page_token` is not valid.".into(),
        });
    }
    let partner = ctx.subject()?.to_owned();
    let sub = gw.upstreams.expect("subscription")?;
    let budget = ctx.budget(sub.timeout);
    let list = required(
        budget,
        backends::list_subscriptions(sub, ctx, partner, page_size, token),
    )
    .await
    .map_err(|e| match e {
        // The only thing in a list request the backend can refuse is the page token.
        GatewayError::Unprocessable { .. } => GatewayError::BadRequest {
            code: "QUERY_INVALID",
            detail: "`page_token` is not valid.".into(),
        },
        other => other,
    })?;
    let data = list["subscriptions"]
        .as_array()
        .map(|items| items.iter().map(current).collect::<Result<Vec<_>, _>>())
        .transpose()?
        .unwrap_or_default();
    let page = json!({"data": data, "next_page_token": list["next_page_token"]});
    Ok(answer(version, Shape::List, StatusCode::OK, page, false))
}

/// `GET /v1/subscriptions/{id}`: one of the calling partner's subscriptions.
#[utoipa::path(
    get,
    path = "/v1/subscriptions/{id}",
    tag = "subscriptions",
    params(("id" = String, Path, description = "The subscription's id.", max_length = 64), VersionHeader),
    responses(
        (status = 200, description = "The subscription.", body = Subscription),
        (status = 400, description = "`Partner-Version` is invalid.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "The API key is missing or unknown.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription for this partner.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit or daily quota.", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The subscription service failed.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Limits cannot be checked right now.", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "The subscription service did not answer in time.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_subscription(
    State(gw): State<Gw>,
    ctx: CallContext,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, GatewayError> {
    let version = Version::of_request(&headers, ctx.principal.as_ref())?;
    let not_found = || GatewayError::NotFound("subscription with this id".into());
    let Ok(Path(id)) = id else {
        return Err(not_found());
    };
    if !valid_id(&id) {
        return Err(not_found());
    }
    let partner = ctx.subject()?.to_owned();
    let sub = gw.upstreams.expect("subscription")?;
    let budget = ctx.budget(sub.timeout);
    let found = match required(budget, backends::subscription_by_id(sub, ctx, id)).await {
        Err(GatewayError::NotFound(_)) => return Err(not_found()),
        other => other?,
    };
    // Another partner's subscription does not exist for this one (no enumeration across keys).
    if found["partner_id"] != partner.as_str() {
        return Err(not_found());
    }
    Ok(answer(
        version,
        Shape::Subscription,
        StatusCode::OK,
        current(&found)?,
        false,
    ))
}

/// `POST /v1/subscriptions`: subscribes a user to a plan, at most once per `Idempotency-Key`.
#[utoipa::path(
    post,
    path = "/v1/subscriptions",
    tag = "subscriptions",
    params(IdempotencyHeader, VersionHeader),
    request_body = CreateSubscription,
    responses(
        (status = 201, description = "Created; a replay of the first answer when `Idempotent-Replayed: true`.", body = Subscription,
            headers(("Location" = String, description = "The new subscription's path."))),
        (status = 400, description = "The body, `Idempotency-Key` or `Partner-Version` is malformed.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "The API key is missing or unknown.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A request with this key is still in progress.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A value breaks a rule, the user is unknown, or the key was used with another body.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit or daily quota.", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The subscription service failed.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Limits or idempotency records cannot be reached right now.", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "The subscription service did not answer in time.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_subscription(
    State(gw): State<Gw>,
    ctx: CallContext,
    headers: HeaderMap,
    body: Result<JsonBody<Value>, GatewayError>,
) -> Result<Response, GatewayError> {
    let version = Version::of_request(&headers, ctx.principal.as_ref())?;
    let key = idempotency_key(&headers)?;
    let JsonBody(body) = body?;
    let new = versions::create_request(version, body)?;
    let partner = ctx.subject()?.to_owned();
    // What makes two requests the same: the route and the request in its current shape, so the
    // same write sent under two versions is still the same write.
    let fingerprint = format!("POST /v1/subscriptions\n{}\n{}", new.user_id, new.plan);
    let sub = gw.upstreams.expect("subscription")?;
    let budget = ctx.budget(sub.timeout);
    let write = {
        let partner = partner.clone();
        async move {
            let created = required(
                budget,
                backends::create_subscription(sub, ctx, new.user_id, new.plan, partner),
            )
            .await
            .map_err(|e| match e {
                GatewayError::NotFound(_) => GatewayError::Unprocessable {
                    code: "USER_UNKNOWN",
                    detail: "`user_id` names no user.".into(),
                },
                other => other,
            })?;
            Ok(Answer {
                status: StatusCode::CREATED.as_u16(),
                body: current(&created)?,
            })
        }
    };
    once(&gw, &partner, key, &fingerprint, version, write).await
}

/// `POST /v1/subscriptions/{id}/cancel`: cancels one of the partner's subscriptions, at most once
/// per `Idempotency-Key`. Cancelling a cancelled subscription answers it unchanged.
#[utoipa::path(
    post,
    path = "/v1/subscriptions/{id}/cancel",
    tag = "subscriptions",
    params(("id" = String, Path, description = "The subscription's id.", max_length = 64), IdempotencyHeader, VersionHeader),
    responses(
        (status = 200, description = "The cancelled subscription.", body = Subscription),
        (status = 400, description = "`Idempotency-Key` or `Partner-Version` is malformed.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "The API key is missing or unknown.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription for this partner.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A request with this key is still in progress.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The key was used with another request.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit or daily quota.", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The subscription service failed.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Limits or idempotency records cannot be reached right now.", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "The subscription service did not answer in time.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cancel_subscription(
    State(gw): State<Gw>,
    ctx: CallContext,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, GatewayError> {
    let version = Version::of_request(&headers, ctx.principal.as_ref())?;
    let key = idempotency_key(&headers)?;
    let not_found = || GatewayError::NotFound("subscription with this id".into());
    let Ok(Path(id)) = id else {
        return Err(not_found());
    };
    if !valid_id(&id) {
        return Err(not_found());
    }
    let partner = ctx.subject()?.to_owned();
    let fingerprint = format!("POST /v1/subscriptions/{id}/cancel");
    let sub = gw.upstreams.expect("subscription")?;
    let budget = ctx.budget(sub.timeout);
    let write = {
        let partner = partner.clone();
        async move {
            // Another partner's subscription does not exist for this one: 404 either way.
            let cancelled = required(budget, backends::cancel_subscription(sub, ctx, id, partner))
                .await
                .map_err(|e| match e {
                    GatewayError::NotFound(_) => not_found(),
                    other => other,
                })?;
            Ok(Answer {
                status: StatusCode::OK.as_u16(),
                body: current(&cancelled)?,
            })
        }
    };
    once(&gw, &partner, key, &fingerprint, version, write).await
}

/// The request's `Idempotency-Key`: 400 when missing or malformed.
fn idempotency_key(headers: &HeaderMap) -> Result<&str, GatewayError> {
    let key = match headers.get(idempotency::HEADER).map(HeaderValue::to_str) {
        None => {
            return Err(GatewayError::BadRequest {
                code: "IDEMPOTENCY_KEY_MISSING",
                detail: "Every POST needs an `Idempotency-Key` header, such as a new UUID.".into(),
            });
        }
        Some(Ok(key)) => key,
        Some(Err(_)) => "",
    };
    idempotency::check_key(key)?;
    Ok(key)
}

/// Runs `write` at most once for the partner's `key` and answers for `version`, replayed or not.
async fn once(
    gw: &Gw,
    partner: &str,
    key: &str,
    fingerprint: &str,
    version: Version,
    write: impl Future<Output = Result<Answer, GatewayError>> + Send + 'static,
) -> Result<Response, GatewayError> {
    let (stored, replayed) = match gw
        .idempotency
        .run(partner, key, fingerprint.as_bytes(), write)
        .await?
    {
        Outcome::Performed(a) => (a, false),
        Outcome::Replayed(a) => (a, true),
    };
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    Ok(answer(
        version,
        Shape::Subscription,
        status,
        stored.body,
        replayed,
    ))
}

/// Subscription ids: 1 to 64 of A-Z, a-z, 0-9 and '-'.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// `GET /openapi.json`: the current version's OpenAPI 3.1 description.
pub async fn openapi() -> Response {
    static DOC: LazyLock<Bytes> = LazyLock::new(|| {
        Bytes::from(
            ApiDoc::openapi()
                .to_pretty_json()
                .unwrap_or_else(|_| "{}".into()),
        )
    });
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        DOC.clone(),
    )
        .into_response()
}

/// One required call within `budget`, its failure mapped to the answer a client gets.
async fn required(
    budget: std::time::Duration,
    call: impl Future<Output = Result<Value, UpstreamError>>,
) -> Result<Value, GatewayError> {
    match tokio::time::timeout(budget, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(UpstreamError::NotFound)) => Err(GatewayError::NotFound("such subscription".into())),
        Ok(Err(UpstreamError::Rejected(_))) => Err(GatewayError::Unprocessable {
            code: "REQUEST_REJECTED",
            detail: "The subscription service refused the request as invalid.".into(),
        }),
        Ok(Err(UpstreamError::Timeout)) | Err(_) => {
            Err(GatewayError::UpstreamTimeout("subscription".into()))
        }
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "subscription call failed");
            Err(GatewayError::UpstreamFailed("subscription".into()))
        }
    }
}

/// A backend subscription in the current shape, typed so it always matches the OpenAPI schema.
fn current(s: &Value) -> Result<Value, GatewayError> {
    let shaped = json!({
        "id": s["id"],
        "user_id": s["user_id"],
        "plan": s["plan"],
        "status": s["status"],
        "price": {"amount_cents": s["price_cents"], "currency": s["currency"]},
        "started_at": versions::rfc3339(s["started_at"].as_i64().unwrap_or_default()),
        "renews_at": versions::rfc3339(s["renews_at"].as_i64().unwrap_or_default()),
    });
    serde_json::from_value::<Subscription>(shaped)
        .and_then(serde_json::to_value)
        .map_err(|err| {
            tracing::error!(error = %err, "subscription service answered an unexpected shape");
            GatewayError::UpstreamFailed("subscription".into())
        })
}

/// The answer for `version`, with its version, location and replay headers.
fn answer(
    version: Version,
    shape: Shape,
    status: StatusCode,
    body: Value,
    replayed: bool,
) -> Response {
    let location = (status == StatusCode::CREATED)
        .then(|| {
            body["id"]
                .as_str()
                .map(|id| format!("/v1/subscriptions/{id}"))
        })
        .flatten();
    let body = versions::render(version, shape, body);
    let mut res = (status, serde_json::to_vec(&body).unwrap_or_default()).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(versions::HEADER, HeaderValue::from_static(version.as_str()));
    if let Some(v) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        h.insert(header::LOCATION, v);
    }
    if replayed {
        h.insert(
            idempotency::REPLAYED_HEADER,
            HeaderValue::from_static("true"),
        );
    }
    res
}

/// The OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Partner API",
        version = "2025-06-01",
        description = "Subscriptions for partners. Authenticate with `X-Api-Key` or `Authorization: Bearer`. \
            This document describes version 2025-06-01; send `Partner-Version` to use another."
    ),
    paths(list_subscriptions, get_subscription, create_subscription, cancel_subscription),
    components(schemas(Subscription, SubscriptionList, CreateSubscription, Price, Plan, Status, Problem)),
    modifiers(&Security),
    security(("api_key" = []), ("bearer" = [])),
    tags((name = "subscriptions", description = "Users' subscriptions made through the partner."))
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Api-Key"))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_describes_the_current_version() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("json");
        assert_eq!(doc["info"]["version"], Version::CURRENT.as_str());
        let documented = serde_json::json!([Version::CURRENT.as_str()]);
        let header = doc["paths"]["/v1/subscriptions"]["get"]["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .find(|p| p["name"] == "Partner-Version")
            .expect("Partner-Version documented")
            .clone();
        assert_eq!(header["required"], false);
        assert_eq!(header["schema"]["enum"], documented, "{header}");
    }
}
