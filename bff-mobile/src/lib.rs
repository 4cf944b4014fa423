//! `bff-mobile`: the BFF of the iOS and Android apps.
//!
//! Compact shapes for cellular networks, one call where an app would otherwise make several,
//! compressed answers, and a floor on the app version (`X-Client-Version`).
//!
//! | route | scope | parts | cache |
//! |---|---|---|---|
//! | `GET /api/v2/user/profile` | `profile:read` | user (required), subscription, preferences | 60 s per user |
//! | `GET /api/home-feed` | `feed:read` | content (required), recommendations, ads | 30 s per user |
//! | `GET /api/v2/start` | `profile:read` and `feed:read` | all six of the above, at once | 30 s per user |

pub mod compress;
mod version;

use std::sync::LazyLock;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use backend_clients as backends;
use gateway_core::aggregate::shape::{Fields, Shape};
use gateway_core::app::App;
use gateway_core::config::{Config, DEV_GRPC_URL, DEV_REST_URL, ProxyConfig};
use gateway_core::{
    ApiResponse, CallContext, FanOut, Gateway, GatewayError, Gathered, Need, RequestCheck,
    RequireScopeLayer, Shaped,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

pub use version::ClientVersion;

/// The mobile BFF's own settings, under `[client]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MobileClient {
    /// Oldest app version served (`MAJOR.MINOR.PATCH`); older apps get 426. Empty disables the check.
    pub min_client_version: String,
    /// Width in pixels of the images the feed links to.
    pub image_width: u32,
}

impl Default for MobileClient {
    fn default() -> Self {
        Self {
            min_client_version: "2.0.0".to_owned(),
            image_width: 360,
        }
    }
}

/// The binary's description: name, defaults, upstreams, routes.
pub const BFF: gateway_core::cli::Bff<MobileClient> = gateway_core::cli::Bff {
    name: "bff-mobile",
    defaults,
    upstreams: &[
        "user",
        "subscription",
        "preferences",
        "content",
        "ads",
        "recommendations",
    ],
    app,
};

const PROFILE: &str = "/api/v2/user/profile";
const HOME_FEED: &str = "/api/home-feed";
const START: &str = "/api/v2/start";

/// Built-in defaults: port 8081, devstack's identity provider and backends.
pub fn defaults() -> Config<MobileClient> {
    let mut cfg = Config::local(8081, "bff-mobile")
        .upstream("user", DEV_GRPC_URL, 800)
        .upstream("subscription", DEV_GRPC_URL, 300)
        .upstream("preferences", DEV_GRPC_URL, 300)
        .upstream("content", DEV_REST_URL, 500)
        .upstream("ads", DEV_REST_URL, 250)
        .upstream("recommendations", DEV_REST_URL, 400);
    // The content service's public catalogue, passed through as it is.
    cfg.proxy.push(ProxyConfig {
        prefix: "/api/catalog".into(),
        upstream: "content".into(),
        rewrite: Some("/catalog".into()),
        scopes: vec!["feed:read".into()],
        methods: vec!["GET".into(), "HEAD".into(), "POST".into()],
    });
    cfg
}

type Gw = Gateway<MobileClient>;

/// The whole mobile router: routes, then the shared pipeline, then compression.
pub fn app(gw: Gw) -> App {
    let minimum = version::Minimum::parse(&gw.config.client.min_client_version);
    // Outdated apps are refused on every route but the operational ones, before any backend work.
    let check = RequestCheck::new(move |req| version::refusal(&minimum, req));
    let api = Router::new()
        .route(
            PROFILE,
            get(profile).layer(RequireScopeLayer::new("profile:read")),
        )
        .route(
            HOME_FEED,
            get(home_feed).layer(RequireScopeLayer::new("feed:read")),
        )
        .route(
            START,
            get(start).layer(RequireScopeLayer::all(&["profile:read", "feed:read"])),
        );
    gw.router_with_check(api, check).layer(compression())
}

/// The mobile BFF's answer compression: gzip or brotli, as the client's `Accept-Encoding` asks,
/// at tower-http's levels (gzip 6 on zlib-rs, brotli 4), for answers of 32 bytes or more that are
/// not images, gRPC or event streams. Answers of a known size up to 64 KB are compressed whole,
/// on encoders reused from one answer to the next; the rest stream through tower-http's.
pub fn compression() -> compress::CompressLayer {
    compress::CompressLayer
}

/// `GET /api/v2/user/profile`: user, subscription and preferences in one compact object.
async fn profile(State(gw): State<Gw>, ctx: CallContext) -> Result<ApiResponse, GatewayError> {
    let user_id = ctx.subject()?.to_owned();
    let key = gw.cache.key(&user_id, "profile", "v2");
    gw.cached(
        PROFILE,
        &key,
        Duration::from_secs(60),
        Duration::ZERO,
        || async {
            let parts = backends::profile_parts(&gw.upstreams, &ctx, &user_id)?
                .run()
                .await?;
            let body = PROFILE_SHAPE.apply(&parts)?;
            Ok(parts.respond(body))
        },
    )
    .await
}

/// `GET /api/home-feed`: recommendations, then the featured catalogue with an ad every fourth slot.
async fn home_feed(State(gw): State<Gw>, ctx: CallContext) -> Result<ApiResponse, GatewayError> {
    let user_id = ctx.subject()?.to_owned();
    let key = gw.cache.key(&user_id, "home-feed", "v1");
    gw.cached(
        HOME_FEED,
        &key,
        Duration::from_secs(30),
        Duration::ZERO,
        || async {
            let mut parts = feed_parts(&gw, &ctx, &user_id)?.run().await?;
            let mut body = Map::new();
            shape_feed(&mut parts, gw.config.client.image_width, &mut body);
            Ok(parts.respond(body))
        },
    )
    .await
}

/// `GET /api/v2/start`: everything the start screen shows, profile and feed, in one round trip
/// over a cellular network instead of two; all six parts run at once.
async fn start(State(gw): State<Gw>, ctx: CallContext) -> Result<ApiResponse, GatewayError> {
    let user_id = ctx.subject()?.to_owned();
    let key = gw.cache.key(&user_id, "start", "v2");
    gw.cached(
        START,
        &key,
        Duration::from_secs(30),
        Duration::ZERO,
        || async {
            let parts = backends::profile_parts(&gw.upstreams, &ctx, &user_id)?;
            let mut parts = parts.merge(feed_parts(&gw, &ctx, &user_id)?).run().await?;
            let mut body = PROFILE_SHAPE.apply(&parts)?;
            shape_feed(&mut parts, gw.config.client.image_width, &mut body);
            Ok::<Shaped, GatewayError>(parts.respond(body))
        },
    )
    .await
}

/// The feed's parts: the featured catalogue (required), ads and recommendations.
fn feed_parts(gw: &Gw, ctx: &CallContext, user_id: &str) -> Result<FanOut, GatewayError> {
    let (content, ads, recs) = (
        gw.upstreams.expect("content")?,
        gw.upstreams.expect("ads")?,
        gw.upstreams.expect("recommendations")?,
    );
    let (c, a, r) = (content.timeout, ads.timeout, recs.timeout);
    Ok(FanOut::new()
        .part(
            "content",
            Need::Required,
            c,
            backends::content_list(content, ctx.clone(), "featured"),
        )
        .part(
            "ads",
            Need::Optional,
            a,
            backends::ads(ads, ctx.clone(), user_id.to_owned(), "feed", 3),
        )
        .part(
            "recommendations",
            Need::Optional,
            r,
            backends::recommendations(recs, ctx.clone(), user_id.to_owned(), 10),
        ))
}

/// The compact profile: name and avatar, plan, and the preferences the app applies at once.
static PROFILE_SHAPE: LazyLock<Shape> = LazyLock::new(|| {
    Shape::new()
        .under(
            "user",
            "user",
            Fields::only(&[
                ("id", "id"),
                ("display_name", "name"),
                ("avatar_url", "avatar"),
            ]),
        )
        .under(
            "subscription",
            "subscription",
            Fields::only(&[
                ("plan", "plan"),
                ("status", "status"),
                ("renews_at", "renews_at"),
            ]),
        )
        .under(
            "preferences",
            "preferences",
            Fields::only(&[
                ("language", "language"),
                ("theme", "theme"),
                ("autoplay", "autoplay"),
            ]),
        )
});

/// The compact feed: "for you" ids, then featured tiles with an ad every fourth slot.
fn shape_feed(parts: &mut Gathered, width: u32, body: &mut Map<String, Value>) {
    let tile = |item: &Value| {
        json!({
            "type": "item",
            "id": item["id"],
            "title": item["title"],
            "image": format!("{}?w={width}", item["image_url"].as_str().unwrap_or_default()),
        })
    };
    let list = |v: Option<Value>, key: &str| {
        v.and_then(|v| v.get(key).and_then(Value::as_array).cloned())
            .unwrap_or_default()
    };
    let featured: Vec<Value> = list(parts.take("content"), "items")
        .iter()
        .map(tile)
        .collect();
    let mut ads = list(parts.take("ads"), "ads").into_iter().map(|ad| {
        json!({"type": "ad", "id": ad["id"], "headline": ad["headline"], "image": ad["image_url"], "link": ad["click_url"]})
    });
    let mut feed = Vec::with_capacity(featured.len() + 3);
    for (i, item) in featured.into_iter().enumerate() {
        if i % 4 == 3
            && let Some(ad) = ads.next()
        {
            feed.push(ad);
        }
        feed.push(item);
    }
    let for_you: Vec<Value> = list(parts.take("recommendations"), "items")
        .iter()
        .map(|r| json!({"id": r["item_id"], "reason": r["reason"]}))
        .collect();
    body.insert("for_you".into(), Value::Array(for_you));
    body.insert("feed".into(), Value::Array(feed));
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_profile_shape_writes_each_key_once() {
        assert_eq!(super::PROFILE_SHAPE.check(), Ok(()));
    }
}
