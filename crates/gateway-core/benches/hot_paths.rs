//! Costs of the functions every request goes through, besides token verification (see `auth`).
//!
//! `cargo bench -p gateway-core --bench hot_paths`

use std::hint::black_box;
use std::time::Duration;

use axum::http::HeaderValue;
use axum::response::IntoResponse;
use criterion::{Criterion, criterion_group, criterion_main};
use gateway_core::aggregate::{ApiResponse, FanOut, Need};
use gateway_core::auth::{Principal, PrincipalKind};
use gateway_core::cache::{MemoryCache, ResponseCache};
use gateway_core::config::{CacheConfig, PolicyConfig, RateLimitConfig};
use gateway_core::config::{FaultConfig, SplitConfig, UpstreamConfig};
use gateway_core::edge::TraceContext;
use gateway_core::ratelimit::memory::MemoryStore;
use gateway_core::ratelimit::{Algorithm, Policy, RateLimiter};
use gateway_core::upstream::Upstreams;
use gateway_core::upstream::split::Cohort;
use gateway_core::{CallContext, GatewayError, UpstreamError};
use serde_json::{Map, Value, json};

fn limiter(c: &mut Criterion) {
    let mut g = c.benchmark_group("ratelimit");
    let store = MemoryStore::new(1_000_000);
    let gcra = Policy::new(
        "p",
        Algorithm::Gcra,
        1_000_000_000,
        Duration::from_secs(1),
        1_000_000,
    );
    let window = Policy::new(
        "p",
        Algorithm::SlidingWindow,
        u64::MAX / 4,
        Duration::from_secs(60),
        1,
    );
    let mut now = 0u64;
    g.bench_function("memory_gcra_one_key", |b| {
        b.iter(|| {
            now += 1;
            black_box(store.decide("bff-mobile:default:user-0042", &gcra, now))
        })
    });
    g.bench_function("memory_sliding_window_one_key", |b| {
        b.iter(|| {
            now += 1;
            black_box(store.decide("bff-mobile:default:user-0042", &window, now))
        })
    });
    let keys: Vec<String> = (0..100_000)
        .map(|i| format!("bff-mobile:default:user-{i}"))
        .collect();
    let mut i = 0;
    g.bench_function("memory_gcra_100k_keys", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            now += 1;
            black_box(store.decide(&keys[i], &gcra, now))
        })
    });
    // A store at its default bound, full of live keys (a flood of distinct subjects within their
    // window): what a new key's decision costs.
    let full = MemoryStore::new(1_000_000);
    let hour = Policy::new(
        "p",
        Algorithm::SlidingWindow,
        u64::MAX / 4,
        Duration::from_secs(3600),
        1,
    );
    for i in 0..1_100_000 {
        full.decide(&format!("flood-{i}"), &hour, 1);
    }
    let mut n = 1_100_000u64;
    g.bench_function("memory_window_full_store_new_key", |b| {
        b.iter(|| {
            n += 1;
            let key = format!("flood-{n}");
            black_box(full.decide(&key, &hour, 2))
        })
    });
    let cfg = RateLimitConfig {
        policies: [(
            "default".to_owned(),
            PolicyConfig {
                limit: u64::MAX / 4,
                ..PolicyConfig::per_minute(1)
            },
        )]
        .into(),
        ..RateLimitConfig::default()
    };
    let limiter = RateLimiter::new(
        "bench",
        &cfg,
        None,
        &gateway_core::upstream::Upstreams::new(&Default::default()).expect("upstreams"),
    );
    let resolved = limiter.resolve(None, None).clone();
    g.bench_function("limiter_decide_memory", |b| {
        b.iter(|| {
            black_box(futures::executor::block_on(
                limiter.decide("user-0042", &resolved),
            ))
        })
    });
    g.finish();
}

fn edge_and_cache(c: &mut Criterion) {
    let mut g = c.benchmark_group("edge");
    let tp = HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    g.bench_function("traceparent_parse_and_child", |b| {
        b.iter(|| black_box(TraceContext::from_header(Some(black_box(&tp))).child_header()))
    });
    g.bench_function("problem_json_429", |b| {
        b.iter(|| {
            black_box(
                GatewayError::RateLimited {
                    retry_after_secs: 7,
                }
                .into_response(),
            )
        })
    });
    let cache = ResponseCache::new(
        "bff-mobile",
        &CacheConfig::default(),
        Some(std::sync::Arc::new(MemoryCache::new(1000, 1 << 20))),
    );
    g.bench_function("cache_key", |b| {
        b.iter(|| black_box(cache.key(black_box("user-0042"), "profile", "v2")))
    });
    g.finish();
}

fn profile_parts() -> [(&'static str, Value); 3] {
    [
        (
            "user",
            json!({"id": "user-0042", "display_name": "Ben Ito", "email": "ben@example.com", "avatar_url": "https://img/a", "country": "DE", "locale": "de-DE", "created_at": 1}),
        ),
        (
            "subscription",
            json!({"id": "sub-u0042", "plan": "basic", "status": "active", "price_cents": 799, "currency": "EUR", "started_at": 1, "renews_at": 2}),
        ),
        (
            "preferences",
            json!({"language": "de", "theme": "light", "autoplay": true, "notifications": true, "favourite_genres": ["drama"]}),
        ),
    ]
}

fn aggregate(c: &mut Criterion) {
    let mut g = c.benchmark_group("aggregate");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    g.bench_function("fan_out_three_ready_parts_and_shape", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut fan = FanOut::new();
                for (name, value) in profile_parts() {
                    let need = if name == "user" { Need::Required } else { Need::Optional };
                    fan = fan.part(name, need, Duration::from_millis(300), async move { Ok::<_, UpstreamError>(value) });
                }
                let mut parts = fan.run().await.expect("complete");
                let user = parts.take("user").unwrap_or(Value::Null);
                let mut body = Map::new();
                body.insert("user".into(), json!({"id": user["id"], "name": user["display_name"], "avatar": user["avatar_url"]}));
                body.insert("subscription".into(), parts.take("subscription").unwrap_or(Value::Null));
                body.insert("preferences".into(), parts.take("preferences").unwrap_or(Value::Null));
                black_box(ApiResponse::from_shaped(&parts.respond(body), None).body)
            })
        })
    });
    g.finish();
}

/// The per-call cost of traffic splits and fault injection: the split decision alone, and one call
/// (answered at once) through an upstream without either, with a split, and with faults drawn.
fn upstream(c: &mut Criterion) {
    let mut g = c.benchmark_group("upstream");
    let cohort = Cohort::new("v2", 10.0);
    g.bench_function("split_decision", |b| {
        b.iter(|| black_box(cohort.contains(black_box("user-0042"))))
    });
    let at = |tweak: fn(&mut UpstreamConfig)| {
        let mut cfg = UpstreamConfig {
            breaker_failures: 0,
            ..UpstreamConfig::at("http://127.0.0.1:9")
        };
        tweak(&mut cfg);
        Upstreams::new(&[("u".to_owned(), cfg)].into())
            .expect("upstreams")
            .get("u")
            .expect("u")
    };
    let plain = at(|_| {});
    let split = at(|c| {
        c.split = Some(SplitConfig {
            url: "http://127.0.0.1:8".into(),
            instances: Vec::new(),
            percent: 10.0,
            name: "v2".into(),
        })
    });
    // Faults drawn on every call, injected on none of them (or almost).
    let faulty = at(|c| {
        c.fault = Some(FaultConfig {
            delay_ms: 1,
            delay_percent: 0.0001,
            error_percent: 0.0001,
        })
    });
    let mut ctx = CallContext::detached();
    ctx.principal = Some(Principal::new(
        "user-0042".into(),
        std::sync::Arc::new(["feed:read".to_owned()]),
        None,
        PrincipalKind::User,
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    for (name, up) in [
        ("call_plain", &plain),
        ("call_with_split", &split),
        ("call_with_faults_drawn", &faulty),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                black_box(rt.block_on(up.call(&ctx, |_| async { Ok::<_, UpstreamError>(()) })))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, limiter, edge_and_cache, aggregate, upstream);
criterion_main!(benches);
