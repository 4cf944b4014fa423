//! Redis-backed rate-limit decisions under load, against `redis-benchmark` running the same script
//! on the same server in the same run: the ratio is what our client side (pool, script call,
//! decoding, timeout) costs over the Redis round trip itself.
//!
//! `cargo bench -p gateway-core --bench redis_limiter` (needs `redis-server` and `redis-benchmark`).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gateway_core::config::RedisConfig;
use gateway_core::ratelimit::redis::{GCRA_LUA, RedisStore};
use gateway_core::ratelimit::{Algorithm, Policy, RateLimitStore};
use gateway_core::store::Redis;

const CONNECTIONS: usize = 50;
const SECONDS: u64 = 5;

fn main() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let server = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn();
    let Ok(mut server) = server else {
        eprintln!("SKIPPED: redis-server is not installed");
        return;
    };
    std::thread::sleep(Duration::from_millis(300));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ours = rt.block_on(ours(port));
    let baseline = redis_benchmark(port);
    let _ = server.kill();
    let _ = server.wait();

    println!("gateway RedisStore (GCRA, {CONNECTIONS} concurrent): {ours:>10.0} decisions/s");
    match baseline {
        Some(b) => println!(
            "redis-benchmark EVALSHA, same script ({CONNECTIONS} clients): {b:>10.0} calls/s\nratio: {:.2}",
            ours / b
        ),
        None => println!("redis-benchmark did not run: no baseline"),
    }
}

async fn ours(port: u16) -> f64 {
    let cfg = RedisConfig {
        url: Some(format!("redis://127.0.0.1:{port}")),
        pool_size: CONNECTIONS,
        timeout_ms: 1000,
        ..RedisConfig::default()
    };
    let redis = Redis::from_config(&cfg).expect("config").expect("redis");
    let store = Arc::new(RedisStore::new(redis, Duration::from_secs(1)));
    let policy = Arc::new(Policy::new(
        "bench",
        Algorithm::Gcra,
        1_000_000,
        Duration::from_secs(1),
        1_000_000,
    ));
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(SECONDS);
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            let (store, policy, done) = (store.clone(), policy.clone(), done.clone());
            tokio::spawn(async move {
                let key = format!("user-{i}");
                while Instant::now() < deadline {
                    if store.decide(&key, &policy).await.is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    done.load(Ordering::Relaxed) as f64 / SECONDS as f64
}

fn redis_benchmark(port: u16) -> Option<f64> {
    let port = port.to_string();
    let sha = Command::new("redis-cli")
        .args(["-p", &port, "SCRIPT", "LOAD", GCRA_LUA])
        .output()
        .ok()?;
    let sha = String::from_utf8_lossy(&sha.stdout).trim().to_owned();
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &port,
            "-c",
            &CONNECTIONS.to_string(),
            "-n",
            "300000",
            "-r",
            "50",
            "-q",
        ])
        // The gateway's own arguments: two keys (rate, quota), interval, tolerance, no quota.
        .args([
            "EVALSHA",
            &sha,
            "2",
            "bff:rl:{user-__rand_int__}",
            "bff:rlq:{user-__rand_int__}",
            "1",
            "1000000",
            "0",
            "1",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "... EVALSHA <sha> 1 <key> ...: 123456.79 requests per second, p50=0.199 msec"
    let before = &text[..text.rfind(" requests per second")?];
    before.split_whitespace().last()?.parse().ok()
}
