//! Token verification per algorithm through `JwtVerifier::verify` with the verified-token cache
//! off (every call does the signature work), and the cached path a repeated token takes.
//!
//! `cargo bench -p gateway-core --bench auth -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::executor::block_on;
use gateway_core::auth::jwt::JwtVerifier;
use gateway_core::config::AuthConfig;
use jsonwebtoken::Algorithm;

#[path = "../tests/support/mod.rs"]
mod support;

use support::keys::{TestKey, claims};

const ALGORITHMS: [Algorithm; 4] = [
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::EdDSA,
];

/// A verifier trusting `key` from a PEM file (no network), and a token it signed.
fn setup(key: &TestKey, cache_entries: u64) -> (Arc<JwtVerifier>, String) {
    let issuer = format!("https://bench.test/{:?}", key.alg);
    let cfg = AuthConfig {
        issuers: vec![support::pem_issuer(&issuer, key)],
        verified_cache_max_entries: cache_entries,
        ..AuthConfig::default()
    };
    let verifier = JwtVerifier::new(&cfg, reqwest::Client::new()).expect("verifier");
    let token = key.sign(&claims(&issuer, support::AUDIENCE, "user-0042"));
    assert!(block_on(verifier.verify(&token)).is_ok(), "{:?}", key.alg);
    (verifier, token)
}

fn verify(c: &mut Criterion) {
    let mut g = c.benchmark_group("jwt_verify");
    g.throughput(Throughput::Elements(1));
    for alg in ALGORITHMS {
        let key = TestKey::generate(alg, "bench");
        let (verifier, token) = setup(&key, 0);
        g.bench_function(format!("{alg:?}_uncached"), |b| {
            b.iter(|| black_box(block_on(verifier.verify(black_box(&token)))))
        });
    }
    let key = TestKey::generate(Algorithm::ES256, "bench");
    let (verifier, token) = setup(&key, 10_000);
    g.bench_function("ES256_cached", |b| {
        b.iter(|| black_box(block_on(verifier.verify(black_box(&token)))))
    });
    g.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
