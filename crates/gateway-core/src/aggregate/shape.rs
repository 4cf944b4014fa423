//! Declared shaping: how the parts' answers become one body, written as data.
//!
//! Each rule writes keys it names: a part's answer under a key of its own (namespaced), some of a
//! part's fields at the top level (each listed), or a field computed from the body so far. Every
//! key of the body is therefore known before any request runs, and two rules that would write one
//! key are a [`ShapeError`] naming both, never resolved silently by whichever answer came last.
//!
//! ```
//! use gateway_core::aggregate::shape::{Fields, Shape};
//!
//! let shape = Shape::new()
//!     .under("user", "user", Fields::only(&[("id", "id"), ("display_name", "name")]))
//!     .under("plan", "subscription", Fields::all_but(&["billing_ref"]))
//!     .top("subscription", &[("status", "subscription_status")])
//!     .computed("premium", |body| (body["plan"]["plan"] == "premium").into());
//! assert!(shape.check().is_ok());
//! ```

use std::sync::OnceLock;

use serde_json::{Map, Value};

use super::Gathered;

/// Which fields of a part's answer a rule keeps.
#[derive(Debug, Clone)]
pub enum Fields {
    /// Every field but these (dropped).
    AllBut(Vec<String>),
    /// These fields, each `(from, to)`: `from` a path into the answer (`"plan.name"`), `to` the
    /// key it gets. Fields the answer lacks are left out.
    Only(Vec<(String, String)>),
}

impl Fields {
    /// The whole answer.
    pub fn all() -> Self {
        Self::AllBut(Vec::new())
    }

    /// Every field but `dropped`.
    pub fn all_but(dropped: &[&str]) -> Self {
        Self::AllBut(dropped.iter().map(|d| (*d).to_owned()).collect())
    }

    /// The fields listed, each `(from, to)`: kept, renamed, or lifted from deeper in the answer.
    pub fn only(fields: &[(&str, &str)]) -> Self {
        Self::Only(
            fields
                .iter()
                .map(|(from, to)| ((*from).to_owned(), (*to).to_owned()))
                .collect(),
        )
    }

    fn apply(&self, answer: &Value) -> Value {
        match self {
            Self::AllBut(dropped) => match answer {
                Value::Object(map) => Value::Object(
                    map.iter()
                        .filter(|(k, _)| !dropped.iter().any(|d| d == *k))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                ),
                other => other.clone(),
            },
            Self::Only(fields) => Value::Object(
                fields
                    .iter()
                    .filter_map(|(from, to)| Some((to.clone(), lookup(answer, from)?.clone())))
                    .collect(),
            ),
        }
    }
}

/// Computes a field from the body shaped so far (the rules before it), given as an object: a key
/// no rule wrote reads as `null` (`body["missing"]`), never a panic.
type Compute = Box<dyn Fn(&Value) -> Value + Send + Sync>;

enum Rule {
    Under {
        key: String,
        part: &'static str,
        fields: Fields,
    },
    Top {
        part: &'static str,
        fields: Vec<(String, String)>,
    },
    Computed {
        key: String,
        compute: Compute,
    },
}

impl Rule {
    fn keys(&self) -> Vec<&str> {
        match self {
            Self::Under { key, .. } | Self::Computed { key, .. } => vec![key],
            Self::Top { fields, .. } => fields.iter().map(|(_, to)| to.as_str()).collect(),
        }
    }

    fn source(&self) -> String {
        match self {
            Self::Under { part, .. } | Self::Top { part, .. } => format!("part `{part}`"),
            Self::Computed { key, .. } => format!("computed field `{key}`"),
        }
    }
}

/// Two rules of a shape write one key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shape: key `{key}` is written by {first} and by {second}")]
pub struct ShapeError {
    /// The key.
    pub key: String,
    /// The rule that wrote it first.
    pub first: String,
    /// The rule that would write it again.
    pub second: String,
}

impl From<ShapeError> for crate::error::GatewayError {
    fn from(err: ShapeError) -> Self {
        tracing::error!(error = %err, "a route's shape is invalid");
        Self::Internal
    }
}

/// How a route's body is made from its parts, in order.
#[derive(Default)]
pub struct Shape {
    rules: Vec<Rule>,
    /// [`Shape::check`], done on the first [`Shape::apply`] and kept: the rules no longer change.
    checked: OnceLock<Result<(), ShapeError>>,
}

impl Shape {
    /// A shape with no rules.
    pub fn new() -> Self {
        Self::default()
    }

    /// `key` holds part `part`'s answer through `fields`; `null` when the part has no answer.
    pub fn under(self, key: &str, part: &'static str, fields: Fields) -> Self {
        self.with(Rule::Under {
            key: key.to_owned(),
            part,
            fields,
        })
    }

    /// Fields of part `part`'s answer at the top level, each `(from, to)`; left out when the
    /// part or the field is missing.
    pub fn top(self, part: &'static str, fields: &[(&str, &str)]) -> Self {
        self.with(Rule::Top {
            part,
            fields: fields
                .iter()
                .map(|(from, to)| ((*from).to_owned(), (*to).to_owned()))
                .collect(),
        })
    }

    /// `key` holds what `compute` makes of the body shaped by the rules before it.
    pub fn computed<F>(self, key: &str, compute: F) -> Self
    where
        F: Fn(&Value) -> Value + Send + Sync + 'static,
    {
        self.with(Rule::Computed {
            key: key.to_owned(),
            compute: Box::new(compute),
        })
    }

    fn with(mut self, rule: Rule) -> Self {
        self.rules.push(rule);
        self.checked = OnceLock::new();
        self
    }

    /// Whether every key is written by one rule only (`_meta` belongs to the gateway).
    pub fn check(&self) -> Result<(), ShapeError> {
        let mut seen: Vec<(&str, String)> = vec![("_meta", "the gateway".to_owned())];
        for rule in &self.rules {
            for key in rule.keys() {
                if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
                    return Err(ShapeError {
                        key: key.to_owned(),
                        first: first.clone(),
                        second: rule.source(),
                    });
                }
                seen.push((key, rule.source()));
            }
        }
        Ok(())
    }

    /// The body made of `parts`' answers. A shape that does not [`check`](Self::check) makes
    /// no body: its error is returned, never a body where one answer overwrote another.
    pub fn apply(&self, parts: &Gathered) -> Result<Map<String, Value>, ShapeError> {
        self.checked.get_or_init(|| self.check()).clone()?;
        let mut body = Map::new();
        for rule in &self.rules {
            match rule {
                Rule::Under { key, part, fields } => {
                    let value = parts.get(part).map_or(Value::Null, |a| fields.apply(a));
                    body.insert(key.clone(), value);
                }
                Rule::Top { part, fields } => {
                    let Some(answer) = parts.get(part) else {
                        continue;
                    };
                    for (from, to) in fields {
                        if let Some(v) = lookup(answer, from) {
                            body.insert(to.clone(), v.clone());
                        }
                    }
                }
                Rule::Computed { key, compute } => {
                    let so_far = Value::Object(std::mem::take(&mut body));
                    let value = compute(&so_far);
                    if let Value::Object(map) = so_far {
                        body = map;
                    }
                    body.insert(key.clone(), value);
                }
            }
        }
        Ok(body)
    }
}

/// The value at a dotted path (`"plan.name"`) of an answer.
fn lookup<'a>(answer: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(answer, |v, segment| v.get(segment))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::aggregate::{FanOut, Need};

    async fn gathered(parts: &[(&'static str, Value)]) -> Gathered {
        let mut fan = FanOut::new();
        for (name, value) in parts {
            let value = value.clone();
            fan = fan.part(
                name,
                Need::Optional,
                std::time::Duration::from_secs(1),
                async move { Ok(value) },
            );
        }
        fan.run().await.expect("gathered")
    }

    #[tokio::test]
    async fn rules_rename_drop_lift_and_compute() {
        let parts = gathered(&[
            (
                "user",
                json!({"id": "u1", "display_name": "Ada", "email": "ada@example.com"}),
            ),
            (
                "subscription",
                json!({"plan": {"name": "premium"}, "status": "active", "billing_ref": "b-9"}),
            ),
        ])
        .await;
        let shape = Shape::new()
            .under(
                "user",
                "user",
                Fields::only(&[("id", "id"), ("display_name", "name"), ("phone", "phone")]),
            )
            .under(
                "subscription",
                "subscription",
                Fields::all_but(&["billing_ref"]),
            )
            .top("subscription", &[("plan.name", "plan")])
            .under("preferences", "preferences", Fields::all())
            .computed("premium", |body| (body["plan"] == "premium").into())
            .computed("trial", |body| (body["no_such_key"] == "x").into());
        let body = shape.apply(&parts).expect("shaped");
        assert_eq!(
            Value::Object(body),
            json!({
                "user": {"id": "u1", "name": "Ada"},
                "subscription": {"plan": {"name": "premium"}, "status": "active"},
                "plan": "premium",
                "preferences": null,
                "premium": true,
                "trial": false,
            })
        );
    }

    #[tokio::test]
    async fn two_rules_writing_one_key_are_refused() {
        let shape = Shape::new()
            .under("plan", "subscription", Fields::all())
            .top("user", &[("id", "id"), ("plan", "plan")]);
        let err = ShapeError {
            key: "plan".into(),
            first: "part `subscription`".into(),
            second: "part `user`".into(),
        };
        assert_eq!(shape.check(), Err(err.clone()));
        let parts = gathered(&[("user", json!({"plan": "x"}))]).await;
        assert_eq!(shape.apply(&parts).err(), Some(err));
        let meta = Shape::new().computed("_meta", |_| Value::Null).check();
        assert!(meta.is_err_and(|e| e.first == "the gateway"));
    }
}
