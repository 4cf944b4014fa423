//! `bff-web`: the BFF of the browser app.
//!
//! Rich shapes (full descriptions, related items) and CORS for the configured origins.
//!
//! | route | scope | parts | cache |
//! |---|---|---|---|
//! | `GET /api/profile` | `profile:read` | user (required), subscription, preferences | 60 s per user |
//! | `GET /api/items/{id}` | `feed:read` | item with related items (content over GraphQL, required), for_you (recommendations) | 60 s per user |
//! | `GET /api/events` | `events:read` | server-sent events: `subscription`, `recommendations` on change; heartbeats | none |

mod events;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, Method, header};
use axum::routing::get;
use axum::{Extension, Router};
use backend_clients as backends;
use gateway_core::app::App;
use gateway_core::config::{Config, DEV_GRPC_URL, DEV_REST_URL};
use gateway_core::{
    ApiResponse, CallContext, FanOut, Gateway, GatewayError, Need, RequireScopeLayer,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
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
const ITEM: &str = "/api/items/{id}";
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
pub fn app(gw: Gw) -> App {
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
        .route(ITEM, get(item).layer(RequireScopeLayer::new("feed:read")))
        // The stream cap only where it is used: a layer on the whole router would be a layer of
        // its own, and an extension insert, on every route's every request.
        .route(
            EVENTS,
            get(events::events).layer(
                ServiceBuilder::new()
                    .layer(RequireScopeLayer::new("events:read"))
                    .layer(Extension(streams)),
            ),
        );
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

/// `GET /api/items/{id}`: a title page: the item in full with its related items (one GraphQL
/// query to the content service) and the user's recommendations beside it.
async fn item(
    State(gw): State<Gw>,
    ctx: CallContext,
    id: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<ApiResponse, GatewayError> {
    let Ok(axum::extract::Path(id)) = id else {
        return Err(GatewayError::NotFound("item with this id".into()));
    };
    let user_id = ctx.subject()?.to_owned();
    let key = gw.cache.key(&user_id, &format!("items/{id}"), "v1");
    gw.cached(
        ITEM,
        &key,
        Duration::from_secs(60),
        Duration::ZERO,
        || async {
            let (content, recs) = (
                gw.upstreams.expect("content")?,
                gw.upstreams.expect("recommendations")?,
            );
            let (c, r) = (content.timeout, recs.timeout);
            let mut parts = FanOut::new()
                .part(
                    "item",
                    Need::Required,
                    c,
                    backends::item_detail(content, ctx.clone(), id.clone()),
                )
                .part(
                    "for_you",
                    Need::Optional,
                    r,
                    backends::recommendations(recs, ctx.clone(), user_id.clone(), 6),
                )
                .run()
                .await
                .map_err(|e| match e {
                    GatewayError::NotFound(_) => GatewayError::NotFound("item with this id".into()),
                    other => other,
                })?;
            let item = parts.take("item").unwrap_or(Value::Null);
            let for_you = parts
                .take("for_you")
                .and_then(|mut r| r.get_mut("items").map(Value::take))
                .unwrap_or(Value::Null);
            let mut body = Map::new();
            body.insert("item".to_owned(), web_item(&item));
            body.insert("for_you".to_owned(), for_you);
            Ok(parts.respond(body))
        },
    )
    .await
}

/// The web's shape of an item: every public field, a large image, related items as small cards.
fn web_item(item: &Value) -> Value {
    let image = |v: &Value, width: u32| {
        v["imageUrl"]
            .as_str()
            .map_or(Value::Null, |u| Value::from(format!("{u}?w={width}")))
    };
    let related: Vec<Value> = item["related"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|x| serde_json::json!({"id": x["id"], "title": x["title"], "image": image(x, 320)}))
                .collect()
        })
        .unwrap_or_default();
    serde_json::json!({
        "id": item["id"],
        "title": item["title"],
        "description": item["description"],
        "genre": item["genre"],
        "year": item["year"],
        "duration_min": item["durationMin"],
        "rating": item["rating"],
        "image": image(item, 1280),
        "related": related,
    })
}
