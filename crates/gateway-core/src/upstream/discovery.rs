//! How an upstream's instances are found: as written (`static`), or by resolving each URL's host
//! to every address it has (`dns`), again every `dns_refresh_ms`, the way Envoy's strict DNS
//! clusters and Kubernetes headless Services work.
//!
//! With DNS discovery each address is an instance of its own, with its own connections, gRPC
//! channel, health and load, so calls spread over the pods behind a name instead of sticking to
//! whichever one a long-lived connection reached. An address that stays across resolutions keeps
//! its instance (connections, health); a resolution that fails or finds nothing keeps the
//! instances already known, since a DNS hiccup must not empty an upstream.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::balance::{Dial, Instance, InstanceSet};

/// How an upstream's instances are found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Discovery {
    /// `url` and `instances` as written.
    #[default]
    Static,
    /// Every address each URL's host resolves to, resolved again every `dns_refresh_ms`.
    Dns,
}

/// Resolves `host:port` to socket addresses.
pub(crate) type Resolve =
    Arc<dyn Fn(String) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> + Send + Sync>;

/// The system resolver (`getaddrinfo`: `/etc/hosts`, then DNS), off the async threads.
pub(crate) fn system_resolver() -> Resolve {
    Arc::new(|authority: String| {
        Box::pin(async move { Ok(tokio::net::lookup_host(authority).await?.collect()) })
    })
}

/// One URL to resolve: `scheme://host:port/prefix` in parts.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    scheme: String,
    authority: String,
    prefix: String,
}

impl Target {
    /// The parts of `url`, with the scheme's default port; `None` when it has no host.
    pub(crate) fn parse(url: &str) -> Option<Self> {
        let uri: http::Uri = url.parse().ok()?;
        let scheme = uri.scheme_str()?.to_owned();
        let host = uri.host()?;
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        // `host` keeps the brackets of an IPv6 literal, which is what `host:port` needs.
        Some(Self {
            authority: format!("{host}:{port}"),
            prefix: uri.path().trim_end_matches('/').to_owned(),
            scheme,
        })
    }

    /// The base URL of one resolved address.
    fn base(&self, addr: SocketAddr) -> String {
        // `SocketAddr` prints an IPv6 address in brackets, as a URL needs it.
        format!("{}://{addr}{}", self.scheme, self.prefix)
    }
}

/// What one resolution round did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refreshed {
    /// The instances are now these base URLs (sorted); `changed` when they differ from before.
    Resolved { bases: Vec<String>, changed: bool },
    /// Nothing usable came back; the instances known before stay.
    Kept { error: String },
}

/// Resolves every target once and, when addresses came back, makes them the instances, reusing
/// the instance of every address already known.
pub(crate) async fn refresh(
    set: &InstanceSet,
    targets: &[Target],
    resolve: &Resolve,
    dial: impl Into<Dial>,
) -> Refreshed {
    let dial = dial.into();
    let mut bases = BTreeSet::new();
    for target in targets {
        match resolve(target.authority.clone()).await {
            Ok(addrs) => bases.extend(addrs.into_iter().map(|a| target.base(a))),
            Err(err) => {
                return Refreshed::Kept {
                    error: format!("{}: {err}", target.authority),
                };
            }
        }
    }
    if bases.is_empty() {
        return Refreshed::Kept {
            error: "no addresses".into(),
        };
    }
    let current = set.snapshot();
    let known: HashMap<&str, &Arc<Instance>> = current.iter().map(|i| (i.base(), i)).collect();
    let changed = current.len() != bases.len() || bases.iter().any(|b| !known.contains_key(&**b));
    if changed {
        let next: Arc<[Arc<Instance>]> = bases
            .iter()
            .map(|b| match known.get(&**b) {
                Some(kept) => Arc::clone(kept),
                None => Arc::new(Instance::new(b, dial)),
            })
            .collect();
        set.replace(next);
    }
    Refreshed::Resolved {
        bases: bases.into_iter().collect(),
        changed,
    }
}

/// Resolves `targets` now and every `every` after, until the upstream is dropped.
pub(crate) fn spawn_dns(
    name: String,
    variant: metrics::SharedString,
    targets: Vec<Target>,
    set: Weak<InstanceSet>,
    every: Duration,
    dial: Dial,
    resolve: Resolve,
) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    let label = metrics::SharedString::from_shared(Arc::<str>::from(name.as_str()));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(set) = set.upgrade() else {
                return;
            };
            // A resolver that hangs must not hold the loop: the round is abandoned after `every`
            // (at least a second).
            let round = tokio::time::timeout(
                every.max(Duration::from_secs(1)),
                refresh(&set, &targets, &resolve, dial),
            )
            .await
            .unwrap_or_else(|_| Refreshed::Kept {
                error: "resolution timed out".into(),
            });
            match round {
                Refreshed::Resolved { bases, changed } => {
                    if changed {
                        tracing::info!(upstream = %name, %variant, instances = ?bases, "instances discovered");
                    }
                    metrics::gauge!("bff_upstream_instances", "upstream" => label.clone(), "variant" => variant.clone())
                        .set(bases.len() as f64);
                }
                Refreshed::Kept { error } => {
                    tracing::warn!(upstream = %name, %variant, %error, "DNS resolution failed; keeping the instances known");
                    metrics::counter!("bff_upstream_dns_failures_total", "upstream" => label.clone(), "variant" => variant.clone())
                        .increment(1);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A resolver answering from a table that the test changes between rounds.
    fn table(answers: Arc<Mutex<std::io::Result<Vec<SocketAddr>>>>) -> Resolve {
        Arc::new(move |_authority: String| {
            let answer = match &*answers.lock().expect("lock") {
                Ok(addrs) => Ok(addrs.clone()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            Box::pin(async move { answer })
        })
    }

    fn addrs(list: &[&str]) -> std::io::Result<Vec<SocketAddr>> {
        Ok(list.iter().map(|a| a.parse().expect("addr")).collect())
    }

    #[test]
    fn targets_keep_scheme_port_and_prefix() {
        let t = Target::parse("http://user-svc.internal:9001/v1/").expect("target");
        assert_eq!(t.authority, "user-svc.internal:9001");
        assert_eq!(
            t.base("10.0.0.7:9001".parse().expect("addr")),
            "http://10.0.0.7:9001/v1"
        );
        let v6 = Target::parse("http://svc").expect("target");
        assert_eq!(v6.authority, "svc:80");
        assert_eq!(
            v6.base("[fd00::7]:80".parse().expect("addr")),
            "http://[fd00::7]:80"
        );
        assert!(Target::parse("not a url").is_none());
    }

    #[tokio::test]
    async fn instances_follow_the_addresses_and_survive_failures() {
        let set = InstanceSet::new(Arc::from(vec![Arc::new(Instance::new(
            "http://svc:9001",
            Duration::from_secs(1),
        ))]));
        let targets = [Target::parse("http://svc:9001").expect("target")];
        let answers = Arc::new(Mutex::new(addrs(&["10.0.0.2:9001", "10.0.0.1:9001"])));
        let resolve = table(answers.clone());
        let round = || refresh(&set, &targets, &resolve, Duration::from_secs(1));

        assert_eq!(
            round().await,
            Refreshed::Resolved {
                bases: vec!["http://10.0.0.1:9001".into(), "http://10.0.0.2:9001".into()],
                changed: true
            }
        );
        let first = set.snapshot();
        // The same answer changes nothing, in any order.
        *answers.lock().expect("lock") = addrs(&["10.0.0.1:9001", "10.0.0.2:9001"]);
        assert!(matches!(
            round().await,
            Refreshed::Resolved { changed: false, .. }
        ));
        assert!(Arc::ptr_eq(&first, &set.snapshot()));

        // A pod replaced: the one that stayed keeps its instance (and so its connections).
        *answers.lock().expect("lock") = addrs(&["10.0.0.2:9001", "10.0.0.3:9001"]);
        assert!(matches!(
            round().await,
            Refreshed::Resolved { changed: true, .. }
        ));
        let second = set.snapshot();
        let bases: Vec<&str> = second.iter().map(|i| i.base()).collect();
        assert_eq!(bases, ["http://10.0.0.2:9001", "http://10.0.0.3:9001"]);
        assert!(Arc::ptr_eq(&first[1], &second[0]));

        // Failures and empty answers keep what is known.
        *answers.lock().expect("lock") = Err(std::io::Error::other("SERVFAIL"));
        assert!(matches!(round().await, Refreshed::Kept { .. }));
        *answers.lock().expect("lock") = addrs(&[]);
        assert!(matches!(round().await, Refreshed::Kept { .. }));
        assert!(Arc::ptr_eq(&second, &set.snapshot()));
    }

    #[tokio::test]
    async fn the_system_resolver_finds_localhost() {
        let set = InstanceSet::new(Arc::from(Vec::new()));
        let targets = [Target::parse("http://localhost:9001").expect("target")];
        let round = refresh(&set, &targets, &system_resolver(), Duration::from_secs(1)).await;
        let Refreshed::Resolved { bases, .. } = round else {
            panic!("localhost did not resolve: {round:?}");
        };
        assert!(
            bases
                .iter()
                .any(|b| b == "http://127.0.0.1:9001" || b == "http://[::1]:9001"),
            "{bases:?}"
        );
    }
}
