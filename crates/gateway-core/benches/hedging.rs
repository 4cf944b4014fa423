//! Tail latency with and without hedging, against two instances of one upstream in the same run:
//! one always answers in 1 ms, the other takes 50 ms on one call in ten.
//!
//! `cargo bench -p gateway-core --bench hedging`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use gateway_core::CallContext;
use gateway_core::config::UpstreamConfig;
use gateway_core::upstream::Upstreams;

const CALLS: usize = 2_000;

async fn instance(slow_every: u64) -> String {
    let n = Arc::new(AtomicU64::new(0));
    let app = Router::new().route(
        "/item",
        get(move || {
            let n = n.fetch_add(1, Ordering::Relaxed);
            async move {
                let ms = if slow_every > 0 && n.is_multiple_of(slow_every) {
                    50
                } else {
                    1
                };
                tokio::time::sleep(Duration::from_millis(ms)).await;
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn run(hedge_after_ms: Option<u64>, fast: &str, slow: &str) -> Vec<Duration> {
    let cfg = UpstreamConfig {
        instances: vec![slow.to_owned()],
        hedge_after_ms,
        retry_min_per_sec: 1_000,
        breaker_failures: 0,
        ..UpstreamConfig::at(fast)
    };
    let upstreams = Upstreams::new(&[("u".to_owned(), cfg)].into()).expect("upstreams");
    let up = upstreams.get("u").expect("u");
    let ctx = CallContext::detached();
    let mut latencies = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let start = Instant::now();
        let _ = up.get_json(&ctx, "/item").await;
        latencies.push(start.elapsed());
    }
    latencies.sort_unstable();
    latencies
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (fast, slow) = (instance(0).await, instance(10).await);
        let plain = run(None, &fast, &slow).await;
        let hedged = run(Some(5), &fast, &slow).await;
        for (name, l) in [("without hedging", &plain), ("hedged after 5 ms", &hedged)] {
            println!(
                "{name:>18}: p50 {:?}  p99 {:?}  p99.9 {:?}",
                pct(l, 0.5),
                pct(l, 0.99),
                pct(l, 0.999)
            );
        }
        println!(
            "p99 ratio (hedged / plain): {:.2}",
            pct(&hedged, 0.99).as_secs_f64() / pct(&plain, 0.99).as_secs_f64()
        );
    });
}
