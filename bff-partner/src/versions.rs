//! Dated API versions, as Stripe runs them: one internal shape (the current version), and for each
//! version that changed the API a step that turns requests of the version before it into the newer
//! shape, and answers of the newer shape back.
//!
//! A request's version is its `Partner-Version` header, else the version pinned to its API key,
//! else the current one. Answering an old version walks the steps back from the current shape; a
//! request of an old version walks them forward. A new version is one more step and a line in the
//! table below; handlers do not change.
//!
//! | version | what changed |
//! |---|---|
//! | `2024-01-01` | first version: `user` names the user; plans `starter`, `standard`, `premium`; lists are `{"subscriptions", "has_more", "next_page_token"}`; prices `price_cents` and `currency`; times in unix seconds |
//! | `2024-09-01` | `user` renamed `user_id`; plan `starter` renamed `basic`; lists are `{"data", "next_page_token"}` |
//! | `2025-06-01` | price is an object `{"amount_cents", "currency"}`; `started_at` and `renews_at` are RFC 3339 times |

use axum::http::HeaderMap;
use gateway_core::GatewayError;
use gateway_core::auth::{Principal, PrincipalKind};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The request and response header naming the version.
pub const HEADER: &str = "partner-version";

/// Every version, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// `2024-01-01`.
    V2024_01_01,
    /// `2024-09-01`.
    V2024_09_01,
    /// `2025-06-01`, the current version.
    V2025_06_01,
}

impl Version {
    /// Oldest first.
    pub const ALL: [Self; 3] = [Self::V2024_01_01, Self::V2024_09_01, Self::V2025_06_01];
    /// The version of the internal shape and of the OpenAPI document.
    pub const CURRENT: Self = Self::V2025_06_01;

    /// As written in headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V2024_01_01 => "2024-01-01",
            Self::V2024_09_01 => "2024-09-01",
            Self::V2025_06_01 => "2025-06-01",
        }
    }

    /// The version named exactly `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The newest version released on or before `date` (`YYYY-MM-DD`), or the oldest: how a key
    /// pinned to a date resolves.
    pub fn as_of(date: &str) -> Self {
        Self::ALL
            .into_iter()
            .rev()
            .find(|v| v.as_str() <= date)
            .unwrap_or(Self::V2024_01_01)
    }

    /// The request's version: its header (which must name a version exactly), else the key's pin,
    /// else the current version.
    pub fn of_request(
        headers: &HeaderMap,
        principal: Option<&Principal>,
    ) -> Result<Self, GatewayError> {
        if let Some(raw) = headers.get(HEADER) {
            return raw.to_str().ok().and_then(Self::parse).ok_or_else(|| {
                GatewayError::BadRequest {
                    code: "VERSION_UNKNOWN",
                    detail: format!(
                        "`Partner-Version` must be one of {}.",
                        Self::ALL.map(Self::as_str).join(", ")
                    ),
                }
            });
        }
        let pinned = principal.and_then(|p| match &p.kind {
            PrincipalKind::Partner { version } => version.as_deref().map(Self::as_of),
            PrincipalKind::User => None,
        });
        Ok(pinned.unwrap_or(Self::CURRENT))
    }

    /// The name of the field that names the user in this version's subscriptions.
    fn user_field(self) -> &'static str {
        if self < Self::V2024_09_01 {
            "user"
        } else {
            "user_id"
        }
    }

    /// The plans this version knows, by its names.
    fn plans(self) -> [&'static str; 3] {
        if self < Self::V2024_09_01 {
            ["starter", "standard", "premium"]
        } else {
            ["basic", "standard", "premium"]
        }
    }
}

/// What an answer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One subscription.
    Subscription,
    /// A page of subscriptions.
    List,
}

/// One version's change: `down` turns an answer of this version into the previous version's,
/// `up` turns a create request of the previous version into this version's.
struct Step {
    version: Version,
    down: fn(Shape, &mut Value),
    up: fn(&mut Map<String, Value>),
}

/// Every change, oldest first.
const STEPS: [Step; 2] = [
    Step {
        version: Version::V2024_09_01,
        down: |shape, body| {
            if shape == Shape::List
                && let Value::Object(list) = body
            {
                let data = list.remove("data").unwrap_or_else(|| Value::Array(vec![]));
                let has_more = list.get("next_page_token").is_some_and(|t| !t.is_null());
                list.insert("subscriptions".into(), data);
                list.insert("has_more".into(), Value::Bool(has_more));
            }
            each_subscription(shape, body, |s| {
                rename(s, "user_id", "user");
                rename_plan(s, "basic", "starter");
            });
        },
        up: |req| {
            rename(req, "user", "user_id");
            rename_plan(req, "starter", "basic");
        },
    },
    Step {
        version: Version::V2025_06_01,
        down: |shape, body| {
            each_subscription(shape, body, |s| {
                if let Some(Value::Object(mut price)) = s.remove("price") {
                    for field in ["amount_cents", "currency"] {
                        let name = if field == "amount_cents" {
                            "price_cents"
                        } else {
                            field
                        };
                        s.insert(name.into(), price.remove(field).unwrap_or(Value::Null));
                    }
                }
                for field in ["started_at", "renews_at"] {
                    if let Some(t) = s.get_mut(field) {
                        *t = t
                            .as_str()
                            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
                            .map_or(Value::Null, |t| Value::from(t.unix_timestamp()));
                    }
                }
            });
        },
        up: |_| {},
    },
];

fn each_subscription(shape: Shape, body: &mut Value, f: impl Fn(&mut Map<String, Value>)) {
    match shape {
        Shape::Subscription => {
            if let Value::Object(s) = body {
                f(s);
            }
        }
        Shape::List => {
            let field = if body.get("data").is_some() {
                "data"
            } else {
                "subscriptions"
            };
            if let Some(Value::Array(items)) = body.get_mut(field) {
                items
                    .iter_mut()
                    .filter_map(Value::as_object_mut)
                    .for_each(f);
            }
        }
    }
}

fn rename(m: &mut Map<String, Value>, from: &str, to: &str) {
    if let Some(v) = m.remove(from) {
        m.insert(to.to_owned(), v);
    }
}

fn rename_plan(m: &mut Map<String, Value>, from: &str, to: &str) {
    if let Some(plan) = m.get_mut("plan")
        && plan == from
    {
        *plan = Value::from(to);
    }
}

/// Renders an answer of the current shape for `version`.
pub fn render(version: Version, shape: Shape, mut body: Value) -> Value {
    for step in STEPS.iter().rev().filter(|s| s.version > version) {
        (step.down)(shape, &mut body);
    }
    body
}

/// A create request, in the current shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSubscription {
    /// The subscribing user.
    pub user_id: String,
    /// `basic`, `standard` or `premium`.
    pub plan: String,
}

/// Validates a create request of `version` and turns it into the current shape.
///
/// 400 `BODY_INVALID` for a body of the wrong form (not an object, a field missing, of the wrong
/// type or unknown to the version); 422 `VALIDATION_FAILED` for a value that breaks a rule.
pub fn create_request(version: Version, body: Value) -> Result<NewSubscription, GatewayError> {
    let invalid = |detail: String| GatewayError::BadRequest {
        code: "BODY_INVALID",
        detail,
    };
    let failed = |detail: String| GatewayError::Unprocessable {
        code: "VALIDATION_FAILED",
        detail,
    };
    let Value::Object(mut req) = body else {
        return Err(invalid("The body must be a JSON object.".into()));
    };
    let user = version.user_field();
    if let Some(unknown) = req.keys().find(|k| *k != user && *k != "plan") {
        return Err(invalid(format!(
            "Unknown field `{unknown}`; version {} accepts `{user}` and `plan`.",
            version.as_str()
        )));
    }
    for field in [user, "plan"] {
        if !req.get(field).is_some_and(Value::is_string) {
            return Err(invalid(format!(
                "`{field}` is required and must be a string."
            )));
        }
    }
    let user_id = req[user].as_str().unwrap_or_default();
    if user_id.is_empty()
        || user_id.len() > 64
        || !user_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(failed(format!(
            "`{user}` must be 1 to 64 of A-Z, a-z, 0-9, '-' and '_'."
        )));
    }
    let plans = version.plans();
    let plan = req["plan"].as_str().unwrap_or_default();
    if !plans.contains(&plan) {
        return Err(failed(format!(
            "`plan` must be one of {}; got {plan:?}.",
            plans.join(", ")
        )));
    }
    for step in STEPS.iter().filter(|s| s.version > version) {
        (step.up)(&mut req);
    }
    let field = |name: &str| req.get(name).and_then(Value::as_str).map(str::to_owned);
    match (field("user_id"), field("plan")) {
        (Some(user_id), Some(plan)) => Ok(NewSubscription { user_id, plan }),
        _ => Err(GatewayError::Internal),
    }
}

/// A unix time as RFC 3339, for the current shape.
pub fn rfc3339(unix: i64) -> Value {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .map_or(Value::Null, Value::from)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn current() -> Value {
        json!({
            "id": "sub-1", "user_id": "user-0001", "plan": "basic", "status": "active",
            "price": {"amount_cents": 799, "currency": "EUR"},
            "started_at": "2024-03-01T00:00:00Z", "renews_at": "2024-03-31T00:00:00Z",
        })
    }

    #[test]
    fn each_version_has_its_own_shape() {
        assert_eq!(
            render(Version::CURRENT, Shape::Subscription, current()),
            current()
        );
        assert_eq!(
            render(Version::V2024_09_01, Shape::Subscription, current()),
            json!({
                "id": "sub-1", "user_id": "user-0001", "plan": "basic", "status": "active",
                "price_cents": 799, "currency": "EUR",
                "started_at": 1_709_251_200, "renews_at": 1_711_843_200,
            })
        );
        assert_eq!(
            render(Version::V2024_01_01, Shape::Subscription, current()),
            json!({
                "id": "sub-1", "user": "user-0001", "plan": "starter", "status": "active",
                "price_cents": 799, "currency": "EUR",
                "started_at": 1_709_251_200, "renews_at": 1_711_843_200,
            })
        );
    }

    #[test]
    fn old_lists_say_whether_there_is_more() {
        let page = json!({"data": [current()], "next_page_token": "2"});
        let old = render(Version::V2024_01_01, Shape::List, page);
        assert_eq!(old["has_more"], true);
        assert_eq!(old["subscriptions"][0]["user"], "user-0001");
        assert!(old.get("data").is_none());
        let last = render(
            Version::V2024_01_01,
            Shape::List,
            json!({"data": [], "next_page_token": null}),
        );
        assert_eq!(last["has_more"], false);
    }

    #[test]
    fn old_requests_are_upgraded() {
        let req = create_request(
            Version::V2024_01_01,
            json!({"user": "user-0001", "plan": "starter"}),
        )
        .expect("valid");
        assert_eq!(
            req,
            NewSubscription {
                user_id: "user-0001".into(),
                plan: "basic".into()
            }
        );
        let err = create_request(
            Version::V2024_01_01,
            json!({"user_id": "user-0001", "plan": "basic"}),
        )
        .expect_err("new names in an old version");
        assert_eq!(err.code(), "BODY_INVALID");
    }

    #[test]
    fn bad_requests_are_named_precisely() {
        for (body, code) in [
            (json!([]), "BODY_INVALID"),
            (json!({"plan": "basic"}), "BODY_INVALID"),
            (json!({"user_id": 7, "plan": "basic"}), "BODY_INVALID"),
            (
                json!({"user_id": "u", "plan": "basic", "admin": true}),
                "BODY_INVALID",
            ),
            (
                json!({"user_id": "u/..", "plan": "basic"}),
                "VALIDATION_FAILED",
            ),
            (json!({"user_id": "u", "plan": "gold"}), "VALIDATION_FAILED"),
            (
                json!({"user_id": "u", "plan": "starter"}),
                "VALIDATION_FAILED",
            ),
        ] {
            let err = create_request(Version::CURRENT, body.clone()).expect_err("invalid");
            assert_eq!(err.code(), code, "{body}");
        }
    }

    #[test]
    fn pins_resolve_to_the_version_in_force_on_their_date() {
        assert_eq!(Version::as_of("2023-05-05"), Version::V2024_01_01);
        assert_eq!(Version::as_of("2024-10-10"), Version::V2024_09_01);
        assert_eq!(Version::as_of("2026-01-01"), Version::V2025_06_01);
    }

    #[test]
    fn the_header_must_name_a_version_exactly() {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, "2024-09-01".parse().expect("value"));
        assert_eq!(
            Version::of_request(&headers, None).expect("known"),
            Version::V2024_09_01
        );
        headers.insert(HEADER, "2024-09-02".parse().expect("value"));
        assert_eq!(
            Version::of_request(&headers, None)
                .expect_err("unknown")
                .code(),
            "VERSION_UNKNOWN"
        );
        assert_eq!(
            Version::of_request(&HeaderMap::new(), None).expect("default"),
            Version::CURRENT
        );
    }
}
