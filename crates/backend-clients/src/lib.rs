//! Calls from the BFFs to the backends behind them.
//!
//! Every call returns the backend's *public* shape as JSON: fields a backend marks internal
//! (`internal_*`, password hashes, billing ids) never leave this crate, whichever BFF calls. Each
//! BFF then trims or enriches these shapes for its client. Calls take owned arguments so they can
//! run as parts of a [`gateway_core::FanOut`].

use std::sync::Arc;

use demo_backends::proto::preferences::{
    GetPreferencesRequest, preferences_service_client::PreferencesServiceClient,
};
use demo_backends::proto::subscription::{
    CancelSubscriptionRequest, CreateSubscriptionRequest, GetSubscriptionRequest,
    ListSubscriptionsRequest, Subscription, subscription_service_client::SubscriptionServiceClient,
};
use demo_backends::proto::user::{GetUserRequest, user_service_client::UserServiceClient};
use gateway_core::upstream::{Upstream, Upstreams};
use gateway_core::{CallContext, FanOut, GatewayError, Need, UpstreamError};
use serde_json::{Map, Value, json};

/// The three parts of a user's profile, fetched in parallel: `user` (required), `subscription`
/// and `preferences` (optional). Each BFF shapes the answers for its client.
pub fn profile_parts(
    upstreams: &Upstreams,
    ctx: &CallContext,
    user_id: &str,
) -> Result<FanOut, GatewayError> {
    let (user, sub, prefs) = (
        upstreams.expect("user")?,
        upstreams.expect("subscription")?,
        upstreams.expect("preferences")?,
    );
    let (u, s, p) = (user.timeout, sub.timeout, prefs.timeout);
    Ok(FanOut::new()
        .part(
            "user",
            Need::Required,
            u,
            self::user(user, ctx.clone(), user_id.to_owned()),
        )
        .part(
            "subscription",
            Need::Optional,
            s,
            current_subscription(sub, ctx.clone(), user_id.to_owned()),
        )
        .part(
            "preferences",
            Need::Optional,
            p,
            preferences(prefs, ctx.clone(), user_id.to_owned()),
        ))
}

/// `UserService.GetUser`, public fields only.
pub async fn user(
    up: Arc<Upstream>,
    ctx: CallContext,
    user_id: String,
) -> Result<Value, UpstreamError> {
    let req = GetUserRequest { user_id };
    let u = up
        .call_idempotent(&ctx, |instance| {
            let (mut client, req) = (
                UserServiceClient::new(instance.channel()),
                ctx.grpc(req.clone(), up.timeout),
            );
            async move { Ok(client.get_user(req).await?.into_inner()) }
        })
        .await?;
    Ok(json!({
        "id": u.id,
        "display_name": u.display_name,
        "email": u.email,
        "avatar_url": u.avatar_url,
        "country": u.country,
        "locale": u.locale,
        "created_at": u.created_at,
    }))
}

/// `PreferencesService.GetPreferences`, public fields only.
pub async fn preferences(
    up: Arc<Upstream>,
    ctx: CallContext,
    user_id: String,
) -> Result<Value, UpstreamError> {
    let req = GetPreferencesRequest { user_id };
    let p = up
        .call_idempotent(&ctx, |instance| {
            let (mut client, req) = (
                PreferencesServiceClient::new(instance.channel()),
                ctx.grpc(req.clone(), up.timeout),
            );
            async move { Ok(client.get_preferences(req).await?.into_inner()) }
        })
        .await?;
    Ok(json!({
        "language": p.language,
        "theme": p.theme,
        "autoplay": p.autoplay,
        "notifications": p.notifications,
        "favourite_genres": p.favourite_genres,
    }))
}

/// The public shape of a subscription.
pub fn subscription_json(s: &Subscription) -> Value {
    json!({
        "id": s.id,
        "user_id": s.user_id,
        "plan": s.plan,
        "status": s.status,
        "price_cents": s.price_cents,
        "currency": s.currency,
        "started_at": s.started_at,
        "renews_at": s.renews_at,
        "partner_id": s.partner_id,
    })
}

/// `SubscriptionService.GetSubscription` for a user's current subscription.
pub async fn current_subscription(
    up: Arc<Upstream>,
    ctx: CallContext,
    user_id: String,
) -> Result<Value, UpstreamError> {
    get_subscription(
        up,
        ctx,
        GetSubscriptionRequest {
            id: String::new(),
            user_id,
        },
    )
    .await
}

/// `SubscriptionService.GetSubscription` by id.
pub async fn subscription_by_id(
    up: Arc<Upstream>,
    ctx: CallContext,
    id: String,
) -> Result<Value, UpstreamError> {
    get_subscription(
        up,
        ctx,
        GetSubscriptionRequest {
            id,
            user_id: String::new(),
        },
    )
    .await
}

async fn get_subscription(
    up: Arc<Upstream>,
    ctx: CallContext,
    req: GetSubscriptionRequest,
) -> Result<Value, UpstreamError> {
    let s = up
        .call_idempotent(&ctx, |instance| {
            let (mut client, req) = (
                SubscriptionServiceClient::new(instance.channel()),
                ctx.grpc(req.clone(), up.timeout),
            );
            async move { Ok(client.get_subscription(req).await?.into_inner()) }
        })
        .await?;
    Ok(subscription_json(&s))
}

/// `SubscriptionService.ListSubscriptions` for one partner: `{"subscriptions": [...], "next_page_token"}`.
pub async fn list_subscriptions(
    up: Arc<Upstream>,
    ctx: CallContext,
    partner_id: String,
    page_size: u32,
    page_token: String,
) -> Result<Value, UpstreamError> {
    let req = ListSubscriptionsRequest {
        partner_id,
        user_id: String::new(),
        page_size,
        page_token,
    };
    let res = up
        .call_idempotent(&ctx, |instance| {
            let (mut client, req) = (
                SubscriptionServiceClient::new(instance.channel()),
                ctx.grpc(req.clone(), up.timeout),
            );
            async move { Ok(client.list_subscriptions(req).await?.into_inner()) }
        })
        .await?;
    Ok(json!({
        "subscriptions": res.subscriptions.iter().map(subscription_json).collect::<Vec<_>>(),
        "next_page_token": (!res.next_page_token.is_empty()).then_some(res.next_page_token),
    }))
}

/// `SubscriptionService.CreateSubscription` for `user_id` on `plan`, made through `partner_id`.
/// Not idempotent: callers must never retry it blindly.
pub async fn create_subscription(
    up: Arc<Upstream>,
    ctx: CallContext,
    user_id: String,
    plan: String,
    partner_id: String,
) -> Result<Value, UpstreamError> {
    let req = CreateSubscriptionRequest {
        user_id,
        plan,
        partner_id,
    };
    let s = up
        .call(&ctx, |instance| {
            let mut client = SubscriptionServiceClient::new(instance.channel());
            let req = ctx.grpc(req, up.timeout);
            async move { Ok(client.create_subscription(req).await?.into_inner()) }
        })
        .await?;
    Ok(subscription_json(&s))
}

/// `SubscriptionService.CancelSubscription` of `id` on behalf of `partner_id`. Cancelling is
/// idempotent upstream, but it is a write: not retried here either.
pub async fn cancel_subscription(
    up: Arc<Upstream>,
    ctx: CallContext,
    id: String,
    partner_id: String,
) -> Result<Value, UpstreamError> {
    let req = CancelSubscriptionRequest { id, partner_id };
    let s = up
        .call(&ctx, |instance| {
            let mut client = SubscriptionServiceClient::new(instance.channel());
            let req = ctx.grpc(req, up.timeout);
            async move { Ok(client.cancel_subscription(req).await?.into_inner()) }
        })
        .await?;
    Ok(subscription_json(&s))
}

/// `GET /content/lists/{list}`: `{"list", "items": [...]}`.
pub async fn content_list(
    up: Arc<Upstream>,
    ctx: CallContext,
    list: &'static str,
) -> Result<Value, UpstreamError> {
    public(up.get_json(&ctx, &format!("/content/lists/{list}")).await?)
}

/// `GET /content/items?ids=...`: `{"items": [...]}`, unknown ids left out.
pub async fn content_items(
    up: Arc<Upstream>,
    ctx: CallContext,
    ids: Vec<String>,
) -> Result<Value, UpstreamError> {
    if ids.is_empty() {
        return Ok(json!({"items": []}));
    }
    public(
        up.get_json(&ctx, &format!("/content/items?ids={}", ids.join(",")))
            .await?,
    )
}

/// `GET /content/items/{id}`.
pub async fn content_item(
    up: Arc<Upstream>,
    ctx: CallContext,
    id: String,
) -> Result<Value, UpstreamError> {
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') || id.is_empty() || id.len() > 64
    {
        return Err(UpstreamError::NotFound);
    }
    public(up.get_json(&ctx, &format!("/content/items/{id}")).await?)
}

/// The content service's GraphQL query for one item with its related items, in one round trip.
const ITEM_QUERY: &str = "query Item($id: ID!) { item(id: $id) { id title description genre year \
     durationMin rating imageUrl related(limit: 6) { id title imageUrl } } }";

/// One item and its related items over GraphQL: `{"id", "title", ..., "related": [...]}`.
pub async fn item_detail(
    up: Arc<Upstream>,
    ctx: CallContext,
    id: String,
) -> Result<Value, UpstreamError> {
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') || id.is_empty() || id.len() > 64
    {
        return Err(UpstreamError::NotFound);
    }
    let mut data = up.graphql(&ctx, ITEM_QUERY, json!({ "id": id })).await?;
    match data.get_mut("item").map(Value::take) {
        Some(item) if item.is_object() => Ok(item),
        _ => Err(UpstreamError::NotFound),
    }
}

/// `GET /ads?user_id=..&placement=..&limit=..`: `{"ads": [...]}`.
pub async fn ads(
    up: Arc<Upstream>,
    ctx: CallContext,
    user_id: String,
    placement: &'static str,
    limit: u8,
) -> Result<Value, UpstreamError> {
    let path = format!(
        "/ads?user_id={}&placement={placement}&limit={limit}",
        encode(&user_id)
    );
    public(up.get_json(&ctx, &path).await?)
}

/// `GET /recommendations/{user}?limit=..`: `{"user_id", "items": [{"item_id", "score", "reason"}]}`.
pub async fn recommendations(
    up: Arc<Upstream>,
    ctx: CallContext,
    user_id: String,
    limit: u8,
) -> Result<Value, UpstreamError> {
    public(
        up.get_json(
            &ctx,
            &format!("/recommendations/{}?limit={limit}", encode(&user_id)),
        )
        .await?,
    )
}

/// Percent-encodes everything but unreserved characters, so a subject cannot reshape the path.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Removes every `internal_*` field, at any depth.
fn public(mut v: Value) -> Result<Value, UpstreamError> {
    strip_internal(&mut v);
    Ok(v)
}

fn strip_internal(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|k, _| !k.starts_with("internal_"));
            map.values_mut().for_each(strip_internal);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_internal),
        _ => {}
    }
}

/// Picks `keys` from an object, in that order; missing keys are left out.
pub fn pick(v: &Value, keys: &[&str]) -> Value {
    let mut out = Map::with_capacity(keys.len());
    for k in keys {
        if let Some(x) = v.get(*k) {
            out.insert((*k).to_owned(), x.clone());
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_fields_are_removed_at_any_depth() {
        let v = public(
            json!({"a": 1, "internal_x": 2, "items": [{"id": 1, "internal_cost_cents": 3}]}),
        )
        .expect("ok");
        assert_eq!(v, json!({"a": 1, "items": [{"id": 1}]}));
    }

    #[test]
    fn subjects_cannot_reshape_paths() {
        assert_eq!(encode("user-1/../admin?x"), "user-1%2F..%2Fadmin%3Fx");
    }
}
