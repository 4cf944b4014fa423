//! Every configuration key a BFF understands is in the README's reference table.

use serde::Serialize;
use toml::Value;

const README: &str = include_str!("../../README.md");

/// Tables whose keys are names chosen by the operator.
const NAMED: [&str; 5] = [
    "upstreams",
    "ratelimit.policies",
    "ratelimit.tiers",
    "ratelimit.routes",
    "cache.ttl_secs",
];

fn keys(prefix: &str, v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Table(t) if NAMED.contains(&prefix) => {
            if let Some(first) = t.values().find(|v| v.is_table()) {
                keys(&format!("{prefix}.<name>"), first, out);
            } else {
                out.push(prefix.to_owned());
            }
        }
        Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                keys(&key, v, out);
            }
        }
        // An empty list of tables says nothing of its fields; the fully set configuration covers them.
        Value::Array(items) if items.is_empty() => {}
        Value::Array(items) if items.first().is_some_and(Value::is_table) => {
            keys(&format!("{prefix}[]"), &items[0], out);
        }
        _ => out.push(prefix.to_owned()),
    }
}

fn documented<C: Serialize>(bff: &str, cfg: &gateway_core::Config<C>) {
    let value = Value::try_from(cfg).expect("configuration as TOML");
    let mut all = Vec::new();
    keys("", &value, &mut all);
    assert!(all.len() > 20, "{all:?}");
    for key in all {
        assert!(
            README.contains(&format!("| `{key}` |")),
            "{bff}: `{key}` is not in the README's configuration reference"
        );
    }
}

#[test]
fn every_configuration_key_is_documented() {
    documented("bff-mobile", &(bff_mobile::BFF.defaults)());
    documented("bff-web", &(bff_web::BFF.defaults)());
    documented("bff-tv", &(bff_tv::BFF.defaults)());
    documented("bff-partner", &(bff_partner::BFF.defaults)());
    let mut full = (bff_mobile::BFF.defaults)();
    full.redis.url = Some("redis://x".into());
    full.telemetry.otlp_endpoint = Some("http://otel-collector:4317".into());
    full.redis.cluster_urls = vec!["redis://y:7000".into()];
    full.server.tls = Some(gateway_core::config::TlsConfig {
        cert_file: "cert.pem".into(),
        key_file: "key.pem".into(),
        client_ca_file: Some("ca.pem".into()),
        client_cert_required: true,
    });
    full.auth.issuers[0].pem_file = Some("k.pem".into());
    full.auth.issuers[0].pem_algorithm = Some("ES256".into());
    full.auth.issuers[0].hs256_secret = Some("s".repeat(32));
    full.auth.api_keys.push(gateway_core::config::ApiKeyConfig {
        sha256: "0".repeat(64),
        partner: "p".into(),
        tier: "t".into(),
        version: Some("2024-01-01".into()),
    });
    // The operator-named upstream table is read through its first entry.
    let first = full.upstreams.values_mut().next().expect("an upstream");
    first.split = Some(gateway_core::config::SplitConfig {
        url: "http://v2".into(),
        instances: vec!["http://v2b".into()],
        percent: 10.0,
        name: "v2".into(),
    });
    first.fault = Some(gateway_core::config::FaultConfig {
        delay_ms: 100,
        delay_percent: 10.0,
        error_percent: 1.0,
    });
    documented("bff-mobile (every optional key set)", &full);
}
