//! `bff-partner`: the API third-party developers integrate with.
//!
//! API keys only (never user JWTs), strict per-key limits that fail closed when the shared store is
//! down, dated versions ([`versions`]) and idempotent writes.
//!
//! | route | parts |
//! |---|---|
//! | `GET /v1/subscriptions?page_size=N&page_token=T` | subscription |
//! | `GET /v1/subscriptions/{id}` | subscription |
//! | `POST /v1/subscriptions` (`Idempotency-Key` required) | subscription |
//! | `POST /v1/subscriptions/{id}/cancel` (`Idempotency-Key` required) | subscription |
//! | `GET /openapi.json` (no key needed) | none |

pub mod api;
pub mod versions;

use std::collections::BTreeMap;

use axum::Router;
use axum::routing::{get, post};
use gateway_core::Gateway;
use gateway_core::app::App;
use gateway_core::config::{
    Algorithm, AuthMode, Config, DEV_GRPC_URL, FailureMode, PolicyConfig, QuotaConfig,
};
use serde::{Deserialize, Serialize};

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

/// Built-in defaults: port 8084, API keys, 10 requests a second per key with a burst of 20 and
/// 10,000 a day, failing closed when the shared store is down.
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

/// The whole partner router.
pub fn app(gw: Gateway<PartnerClient>) -> App {
    let api = Router::new()
        .route(
            "/v1/subscriptions",
            get(api::list_subscriptions).post(api::create_subscription),
        )
        .route("/v1/subscriptions/{id}", get(api::get_subscription))
        .route(
            "/v1/subscriptions/{id}/cancel",
            post(api::cancel_subscription),
        );
    let public = Router::new().route("/openapi.json", get(api::openapi));
    gw.router_with_public(api, public)
}
