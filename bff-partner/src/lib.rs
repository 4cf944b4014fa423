//! `bff-partner`: the API third-party developers integrate with.
//!
//! API keys only (never user JWTs), strict per-key limits that fail closed when the shared store is
//! down.
//!
//! | route | parts |
//! |---|---|
//! | `GET /v1/subscriptions?page_size=N&page_token=T` | subscription |

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Query, State};
use axum::routing::get;
use backend_clients as backends;
use gateway_core::config::{
    Algorithm, AuthMode, Config, DEV_GRPC_URL, FailureMode, PolicyConfig, QuotaConfig,
};
use gateway_core::{ApiResponse, CallContext, FanOut, Gateway, GatewayError, Need};
use serde::{Deserialize, Serialize};
use serde_json::Map;

/// The partner BFF's own settings, under `[client]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PartnerClient {}

/// The binary's description: name, defaults, upstreams, routes.
pub const BFF: gateway_core::cli::Bff<PartnerClient> = gateway_core::cli::Bff {
    name: "bff-partner",
    defaults,
    upstreams: &["subscription"],
    app,
};

/// Built-in defaults: port 8084, API keys, 10 requests a second per key with a burst of 20, and
/// failing closed when the shared store is down.
pub fn defaults() -> Config<PartnerClient> {
    let mut cfg = Config::local(8084, "bff-partner").upstream("subscription", DEV_GRPC_URL, 800);
    cfg.auth.mode = AuthMode::ApiKey;
    cfg.auth.issuers.clear();
    let standard = PolicyConfig {
        algorithm: Algorithm::Gcra,
        limit: 10,
        period_secs: 1,
        burst: Some(20),
        quota: Some(QuotaConfig {
            limit: 10_000,
            window_secs: 86_400,
        }),
        ..PolicyConfig::per_minute(10)
    };
    cfg.ratelimit.policies = BTreeMap::from([
        ("default".to_owned(), standard.clone()),
        ("standard".to_owned(), standard),
    ]);
    cfg.ratelimit.tiers = BTreeMap::from([("standard".to_owned(), "standard".to_owned())]);
    cfg.ratelimit.failure_mode = FailureMode::FailClosed;
    cfg
}

type Gw = Gateway<PartnerClient>;

/// The whole partner router.
pub fn app(gw: Gw) -> Router {
    let api = Router::new().route("/v1/subscriptions", get(list_subscriptions));
    gw.router(api)
}

/// Query of `GET /v1/subscriptions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    page_size: Option<u32>,
    #[serde(default)]
    page_token: Option<String>,
}

/// `GET /v1/subscriptions`: the calling partner's subscriptions, a page at a time.
async fn list_subscriptions(
    State(gw): State<Gw>,
    ctx: CallContext,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<ApiResponse, GatewayError> {
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
    let mut parts = FanOut::new()
        .part(
            "subscription",
            Need::Required,
            sub.timeout,
            backends::list_subscriptions(sub.clone(), ctx.clone(), partner, page_size, token),
        )
        .run()
        .await?;
    let list = parts.take("subscription").unwrap_or_default();
    let mut body = Map::new();
    body.insert("data".into(), list["subscriptions"].clone());
    body.insert("next_page_token".into(), list["next_page_token"].clone());
    Ok(ApiResponse::from_shaped(
        &gateway_core::Shaped::complete(body.into()),
        None,
    ))
}
