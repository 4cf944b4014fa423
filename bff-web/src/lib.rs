//! `bff-web`: the BFF of the browser app.
//!
//! Rich shapes (full descriptions, related items) and CORS for the configured origins.
//!
//! | route | scope | parts | cache |
//! |---|---|---|---|
//! | `GET /api/profile` | `profile:read` | user (required), subscription, preferences | 60 s per user |
//! | `GET /api/events` | `events:read` | server-sent events: `subscription`, `recommendations` on change; heartbeats | none |

mod events;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, Method, header};
use axum::routing::get;
use axum::{Extension, Router};
use backend_clients as backends;
use gateway_core::config::{Config, DEV_GRPC_URL, DEV_REST_URL};
use gateway_core::{ApiResponse, CallContext, Gateway, GatewayError, RequireScopeLayer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::Semaphore;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The web BFF's own settings, under `[client]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebClient {
    /// Origins allowed to call from a browser (exact matches, e.g. `https://app.example.com`).
    pub cors_origins: Vec<String>,
    /// How often an event stream polls the backends for changes, in milliseconds.
    pub events_poll_ms: u64,
    /// Seconds between heartbeats on an idle event stream.
    pub events_heartbeat_secs: u64,
    /// Event streams open at once at most; more get 503.
    pub events_max_streams: usize,
}

impl Default for WebClient {
    fn default() -> Self {
        Self {
            cors_origins: vec!["http://localhost:3000".to_owned()],
            events_poll_ms: 5_000,
            events_heartbeat_secs: 15,
            events_max_streams: 10_000,
        }
    }
}

/// The binary's description: name, defaults, upstreams, routes.
pub const BFF: gateway_core::cli::Bff<WebClient> = gateway_core::cli::Bff {
    name: "bff-web",
    defaults,
    upstreams: &[
        "user",
        "subscription",
        "preferences",
        "content",
        "recommendations",
    ],
    app,
};

const PROFILE: &str = "/api/profile";
const EVENTS: &str = "/api/events";

/// Built-in defaults: port 8082, devstack's identity provider and backends.
pub fn defaults() -> Config<WebClient> {
    Config::local(8082, "bff-web")
        .upstream("user", DEV_GRPC_URL, 800)
        .upstream("subscription", DEV_GRPC_URL, 300)
        .upstream("preferences", DEV_GRPC_URL, 300)
        .upstream("content", DEV_REST_URL, 500)
        .upstream("recommendations", DEV_REST_URL, 400)
}

pub(crate) type Gw = Gateway<WebClient>;

/// The whole web router: routes, the shared pipeline, and CORS outermost so preflights are
/// answered without credentials.
pub fn app(gw: Gw) -> Router {
    let origins: Vec<HeaderValue> = gw
        .config
        .client
        .cors_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .expose_headers([
            header::HeaderName::from_static("x-request-id"),
            header::HeaderName::from_static("x-cache"),
            header::HeaderName::from_static("x-degraded"),
            header::HeaderName::from_static("x-ratelimit-remaining"),
            header::RETRY_AFTER,
        ])
        .max_age(Duration::from_secs(600));
    let streams = events::Streams(Arc::new(Semaphore::new(
        gw.config.client.events_max_streams,
    )));
    let api = Router::new()
        .route(
            PROFILE,
            get(profile).layer(RequireScopeLayer::new("profile:read")),
        )
        .route(
            EVENTS,
            get(events::events).layer(RequireScopeLayer::new("events:read")),
        )
        .layer(Extension(streams));
    gw.router(api).layer(cors)
}

/// `GET /api/profile`: the full public profile, subscription and preferences.
async fn profile(State(gw): State<Gw>, ctx: CallContext) -> Result<ApiResponse, GatewayError> {
    let user_id = ctx.subject()?.to_owned();
    let key = gw.cache.key(&user_id, "profile", "v1");
    gw.cached(
        PROFILE,
        &key,
        Duration::from_secs(60),
        Duration::ZERO,
        || async {
            let mut parts = backends::profile_parts(&gw.upstreams, &ctx, &user_id)?
                .run()
                .await?;
            let mut body = Map::new();
            for name in ["user", "subscription", "preferences"] {
                body.insert(name.to_owned(), parts.take(name).unwrap_or(Value::Null));
            }
            Ok(parts.respond(body))
        },
    )
    .await
}
