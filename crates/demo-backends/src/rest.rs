//! The REST front end: content, ads and recommendations, plus the admin API.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Shared;
use crate::control::{CallContext, Fault, InjectedFault, MAX_LATENCY_MS, Service};
use crate::data::Item;

const DEFAULT_ITEMS_LIMIT: usize = 20;
const MAX_ITEMS_LIMIT: usize = 100;
const MAX_BATCH_IDS: usize = 100;
const DEFAULT_ADS_LIMIT: usize = 3;
const MAX_ADS_LIMIT: usize = 10;
const DEFAULT_RECS_LIMIT: usize = 10;
const MAX_RECS_LIMIT: usize = 50;

pub(crate) type AppState = Arc<Shared>;

/// An error response: `{"error": "..."}` with a matching status.
#[derive(Debug)]
pub(crate) struct ApiError(StatusCode, String);

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, message.into())
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self(StatusCode::NOT_FOUND, message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<InjectedFault> for ApiError {
    fn from(_: InjectedFault) -> Self {
        Self(StatusCode::SERVICE_UNAVAILABLE, "injected fault".into())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request(rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::bad_request(rejection.body_text())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        // Keep 415 for a missing JSON content type; every other body problem is a 400.
        let status = match rejection.status() {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::BAD_REQUEST,
        };
        Self(status, rejection.body_text())
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// The REST and admin routes over the shared state.
pub(crate) fn router(state: AppState) -> Router {
    // Every route of a service goes through `admit`, like every gRPC method.
    let service = |service: Service, routes: Router<AppState>| {
        routes.route_layer(middleware::from_fn_with_state(
            (state.clone(), service),
            admit,
        ))
    };
    let content = Router::new()
        .route("/content/items", get(items))
        .route("/content/items/{id}", get(item))
        .route("/content/lists/{list}", get(list))
        // The public catalogue: no internal fields, fit to be proxied to clients as it is.
        .route("/catalog/items", get(catalog_items))
        .route("/catalog/items/{id}", get(catalog_item))
        .route("/catalog/search", post(catalog_search))
        .route("/graphql", post(crate::graphql::graphql));
    Router::new()
        .merge(service(Service::Content, content))
        .merge(service(Service::Ads, Router::new().route("/ads", get(ads))))
        .merge(service(
            Service::Recommendations,
            Router::new().route("/recommendations/{user_id}", get(recommendations)),
        ))
        .route("/healthz", get(|| async { "ok" }))
        .route("/admin/faults", get(faults).post(set_fault))
        .route("/admin/reset", post(reset))
        .route("/admin/hits", get(hits))
        .route("/admin/last-traceparent", get(last_traceparent))
        .route("/admin/last-identity", get(last_identity))
        .fallback(|| async { ApiError::not_found("no such route") })
        .with_state(state)
}

async fn admit(
    State((state, service)): State<(AppState, Service)>,
    request: Request,
    next: Next,
) -> Response {
    let call = CallContext::from_http(request.headers());
    match state.control.admit(service, call).await {
        Ok(()) => next.run(request).await,
        Err(fault) => ApiError::from(fault).into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct ItemsQuery {
    limit: Option<usize>,
    offset: Option<usize>,
    /// Comma-separated ids; switches to batch lookup.
    ids: Option<String>,
}

#[derive(Debug, Serialize)]
struct ItemsResponse<'a> {
    items: Vec<&'a Item>,
    /// Only for paging, not for batch lookups.
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<usize>,
}

async fn items(
    State(state): State<AppState>,
    query: Result<Query<ItemsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let catalogue = &state.catalogue;
    let response = match query.ids {
        Some(ids) => {
            let ids: Vec<&str> = ids.split(',').filter(|id| !id.is_empty()).collect();
            if ids.is_empty() || ids.len() > MAX_BATCH_IDS {
                return Err(ApiError::bad_request(format!(
                    "ids must list between 1 and {MAX_BATCH_IDS} ids"
                )));
            }
            ItemsResponse {
                items: ids
                    .into_iter()
                    .filter_map(|id| catalogue.item(id))
                    .collect(),
                total: None,
            }
        }
        None => {
            let limit = query
                .limit
                .unwrap_or(DEFAULT_ITEMS_LIMIT)
                .min(MAX_ITEMS_LIMIT);
            let all = catalogue.items();
            ItemsResponse {
                items: all
                    .iter()
                    .skip(query.offset.unwrap_or(0))
                    .take(limit)
                    .collect(),
                total: Some(all.len()),
            }
        }
    };
    // Serialised here because `ItemsResponse` borrows from `state`.
    Ok(Json(response).into_response())
}

async fn item(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    match state.catalogue.item(&id) {
        Some(item) => Ok(Json(item).into_response()),
        None => Err(ApiError::not_found(format!("item {id} not found"))),
    }
}

/// An item of the public catalogue: every field but the internal ones.
fn public_item(item: &Item) -> serde_json::Value {
    let mut v = serde_json::to_value(item).unwrap_or_default();
    if let Some(fields) = v.as_object_mut() {
        fields.retain(|k, _| !k.starts_with("internal_"));
    }
    v
}

/// `GET /catalog/items?limit=&offset=`: a page of the public catalogue.
async fn catalog_items(
    State(state): State<AppState>,
    query: Result<Query<ItemsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let limit = query
        .limit
        .unwrap_or(DEFAULT_ITEMS_LIMIT)
        .min(MAX_ITEMS_LIMIT);
    let all = state.catalogue.items();
    let items: Vec<_> = all
        .iter()
        .skip(query.offset.unwrap_or(0))
        .take(limit)
        .map(public_item)
        .collect();
    Ok(Json(json!({ "items": items, "total": all.len() })).into_response())
}

/// `GET /catalog/items/{id}`: one item of the public catalogue.
async fn catalog_item(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    match state.catalogue.item(&id) {
        Some(item) => Ok(Json(public_item(item)).into_response()),
        None => Err(ApiError::not_found(format!("item {id} not found"))),
    }
}

#[derive(Debug, Deserialize)]
struct SearchRequest {
    /// Words to find in titles, case-insensitive.
    query: String,
    #[serde(default)]
    limit: Option<usize>,
}

/// `POST /catalog/search` `{"query", "limit"?}`: items whose title contains the query.
async fn catalog_search(
    State(state): State<AppState>,
    body: Result<Json<SearchRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let needle = req.query.to_lowercase();
    if needle.is_empty() || needle.len() > 200 {
        return Err(ApiError::bad_request("query must be 1 to 200 characters"));
    }
    let limit = req
        .limit
        .unwrap_or(DEFAULT_ITEMS_LIMIT)
        .min(MAX_ITEMS_LIMIT);
    let items: Vec<_> = state
        .catalogue
        .items()
        .iter()
        .filter(|i| i.title.to_lowercase().contains(&needle))
        .take(limit)
        .map(public_item)
        .collect();
    Ok(Json(json!({ "query": req.query, "items": items })).into_response())
}

async fn list(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = name?;
    let items: Vec<&Item> = state
        .catalogue
        .list(&name)
        .ok_or_else(|| ApiError::not_found(format!("list {name} not found")))?
        .collect();
    Ok(Json(json!({ "list": name, "items": items })).into_response())
}

#[derive(Debug, Deserialize)]
struct AdsQuery {
    user_id: Option<String>,
    placement: Option<String>,
    limit: Option<usize>,
}

async fn ads(
    State(state): State<AppState>,
    query: Result<Query<AdsQuery>, QueryRejection>,
) -> ApiResult<Value> {
    let Query(query) = query?;
    let placement = query.placement.as_deref().unwrap_or("feed");
    // Placements end up in click URLs, so only URL-safe names are accepted.
    let valid = (1..=64).contains(&placement.len())
        && placement
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Err(ApiError::bad_request(
            "placement must be 1-64 characters of [A-Za-z0-9_-]",
        ));
    }
    let limit = query.limit.unwrap_or(DEFAULT_ADS_LIMIT).min(MAX_ADS_LIMIT);
    let user_id = query.user_id.as_deref().unwrap_or_default();
    let ads = state.catalogue.ads(user_id, placement, limit);
    Ok(Json(json!({ "ads": ads })))
}

#[derive(Debug, Deserialize)]
struct LimitQuery {
    limit: Option<usize>,
}

async fn recommendations(
    State(state): State<AppState>,
    user_id: Result<Path<String>, PathRejection>,
    query: Result<Query<LimitQuery>, QueryRejection>,
) -> ApiResult<Value> {
    let (Path(user_id), Query(query)) = (user_id?, query?);
    let limit = query
        .limit
        .unwrap_or(DEFAULT_RECS_LIMIT)
        .min(MAX_RECS_LIMIT);
    let items = state
        .catalogue
        .recommendations(&user_id, limit)
        .ok_or_else(|| ApiError::not_found(format!("user {user_id} not found")))?;
    Ok(Json(json!({ "user_id": user_id, "items": items })))
}

/// `POST /admin/faults` body. Numbers are taken as raw JSON values so that
/// every invalid value gets an error naming its field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultRequest {
    service: String,
    latency_ms: Option<Value>,
    error_rate: Option<Value>,
}

impl FaultRequest {
    fn validate(&self) -> Result<(Service, Fault), ApiError> {
        let service = Service::from_name(&self.service).ok_or_else(|| {
            let names: Vec<_> = Service::ALL.iter().map(|s| s.name()).collect();
            ApiError::bad_request(format!("service must be one of {}", names.join(", ")))
        })?;
        let latency_ms = match &self.latency_ms {
            None => 0,
            Some(value) => value
                .as_u64()
                .filter(|ms| *ms <= MAX_LATENCY_MS)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "latency_ms must be an integer between 0 and {MAX_LATENCY_MS}"
                    ))
                })?,
        };
        let error_rate = match &self.error_rate {
            None => 0.0,
            Some(value) => value
                .as_f64()
                .filter(|rate| (0.0..=1.0).contains(rate))
                .ok_or_else(|| {
                    ApiError::bad_request("error_rate must be a number between 0 and 1")
                })?,
        };
        Ok((
            service,
            Fault {
                latency_ms,
                error_rate,
            },
        ))
    }
}

async fn faults(State(state): State<AppState>) -> Json<Value> {
    Json(json!(state.control.faults()))
}

async fn set_fault(
    State(state): State<AppState>,
    body: Result<Json<FaultRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(request) = body?;
    let (service, fault) = request.validate()?;
    tracing::info!(service = service.name(), ?fault, "fault set");
    state.control.set_fault(service, fault);
    Ok(faults(State(state)).await)
}

/// Clears every fault. Hit counters are deliberately kept: they are monotonic,
/// so tests compare before/after values instead of resetting them.
async fn reset(State(state): State<AppState>) -> Json<Value> {
    state.control.reset_faults();
    tracing::info!("faults cleared");
    faults(State(state)).await
}

async fn hits(State(state): State<AppState>) -> Json<Value> {
    Json(json!(state.control.hits()))
}

async fn last_traceparent(State(state): State<AppState>) -> Json<Value> {
    Json(json!(state.control.last_traceparents()))
}

async fn last_identity(State(state): State<AppState>) -> Json<Value> {
    Json(json!(state.control.last_user_ids()))
}
