//! `bff-tv`: the BFF of smart TVs and consoles.
//!
//! Server-driven UI: the TV app draws what it is sent, ordered rows of tiles sized for a 10-foot
//! screen. Cached hard, and served stale while the backends fail.
//!
//! | route | scope | parts | cache |
//! |---|---|---|---|
//! | `GET /api/home` | `feed:read` | featured (required), trending, recommendations, then for_you (their items, one batched lookup), sponsored | 300 s per user, stale up to 1 h |

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use backend_clients as backends;
use gateway_core::app::App;
use gateway_core::config::{Config, DEV_REST_URL};
use gateway_core::{
    ApiResponse, CallContext, FanOut, Gateway, GatewayError, Need, RequireScopeLayer,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// The TV BFF's own settings, under `[client]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TvClient {
    /// Tile image size, `WIDTHxHEIGHT` in pixels.
    pub tile_image_size: String,
    /// How long past its TTL the home screen may be served while backends fail, in seconds.
    pub stale_if_error_secs: u64,
}

impl Default for TvClient {
    fn default() -> Self {
        Self {
            tile_image_size: "640x360".to_owned(),
            stale_if_error_secs: 3600,
        }
    }
}

/// The binary's description: name, defaults, upstreams, routes.
pub const BFF: gateway_core::cli::Bff<TvClient> = gateway_core::cli::Bff {
    name: "bff-tv",
    defaults,
    upstreams: &["content", "ads", "recommendations"],
    app,
};

const HOME: &str = "/api/home";

/// Built-in defaults: port 8083, devstack's identity provider and backends.
pub fn defaults() -> Config<TvClient> {
    Config::local(8083, "bff-tv")
        .upstream("content", DEV_REST_URL, 800)
        .upstream("ads", DEV_REST_URL, 300)
        .upstream("recommendations", DEV_REST_URL, 600)
}

type Gw = Gateway<TvClient>;

/// The whole TV router.
pub fn app(gw: Gw) -> App {
    let api = Router::new().route(HOME, get(home).layer(RequireScopeLayer::new("feed:read")));
    gw.router(api)
}

/// `GET /api/home`: rows of tiles, in the order the screen shows them.
async fn home(State(gw): State<Gw>, ctx: CallContext) -> Result<ApiResponse, GatewayError> {
    let user_id = ctx.subject()?.to_owned();
    let key = gw.cache.key(&user_id, "home", "v1");
    let stale_for = Duration::from_secs(gw.config.client.stale_if_error_secs);
    gw.cached(HOME, &key, Duration::from_secs(300), stale_for, || async {
        let (content, ads, recs) =
            (gw.upstreams.expect("content")?, gw.upstreams.expect("ads")?, gw.upstreams.expect("recommendations")?);
        // "For you" needs item details for the recommended ids: one batched call, not one per
        // item, started the moment the recommendations answer.
        let for_you = {
            let (content, ctx) = (content.clone(), ctx.clone());
            move |recs: &Value| {
                let ids: Vec<String> = recs["items"]
                    .as_array()?
                    .iter()
                    .filter_map(|i| i["item_id"].as_str().map(str::to_owned))
                    .collect();
                (!ids.is_empty()).then(|| backends::content_items(content, ctx, ids))
            }
        };
        let mut parts = FanOut::new()
            .part("featured", Need::Required, content.timeout, backends::content_list(content.clone(), ctx.clone(), "featured"))
            .part("trending", Need::Optional, content.timeout, backends::content_list(content.clone(), ctx.clone(), "trending"))
            .part("recommendations", Need::Optional, recs.timeout, backends::recommendations(recs.clone(), ctx.clone(), user_id.clone(), 12))
            .part_after("for_you", Need::Optional, content.timeout, "recommendations", for_you)
            .part("sponsored", Need::Optional, ads.timeout, backends::ads(ads.clone(), ctx.clone(), user_id.clone(), "tv-home", 4))
            .run()
            .await?;
        let size = &gw.config.client.tile_image_size;
        let tile = |item: &Value| {
            json!({
                "title": item["title"],
                "image": format!("{}?size={size}", item["image_url"].as_str().unwrap_or_default()),
                "deep_link": format!("app://title/{}", item["id"].as_str().unwrap_or_default()),
            })
        };
        let ad_tile = |ad: &Value| {
            json!({"title": ad["headline"], "image": format!("{}?size={size}", ad["image_url"].as_str().unwrap_or_default()), "deep_link": ad["click_url"], "sponsored": true})
        };
        let mut rows = Vec::new();
        for (id, title, key, make) in [
            ("featured", "Featured", "items", &tile as &dyn Fn(&Value) -> Value),
            ("for_you", "For you", "items", &tile),
            ("trending", "Trending now", "items", &tile),
            ("sponsored", "Sponsored", "ads", &ad_tile),
        ] {
            if let Some(v) = parts.take(id) {
                let tiles: Vec<Value> = v[key].as_array().map(|a| a.iter().map(make).collect()).unwrap_or_default();
                if !tiles.is_empty() {
                    rows.push(json!({"id": id, "title": title, "tiles": tiles}));
                }
            }
        }
        let mut body = Map::new();
        body.insert("layout".into(), json!("rows"));
        body.insert("rows".into(), Value::Array(rows));
        Ok(parts.respond(body))
    })
    .await
}
