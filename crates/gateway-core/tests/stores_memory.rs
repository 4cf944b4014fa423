//! What the in-memory response cache and idempotency store hold: at most what they weigh their
//! entries at, so that `cache.max_bytes` and `idempotency.max_bytes` bound the memory entries
//! take. Measured with a counting allocator, one test at a time (a mutex): nothing else
//! allocates meanwhile.

use std::alloc::System;
use std::time::Duration;

use bytes::Bytes;
use gateway_core::cache::{CacheStore, ENTRY_OVERHEAD, Entry, MemoryCache};
use gateway_core::idempotency::{Answer, IdempotencyStore, MemoryIdempotencyStore, Record};
use serde_json::json;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[path = "support/counting.rs"]
mod counting;

#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// One measurement at a time.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What a store holds before its first entry, or allocates with its first: moka's own tables.
const FIXED: usize = 128 * 1024;

/// Entries of each test.
const ENTRIES: usize = 2_000;

/// A partner's order as a write answers it: ten lines, about 900 bytes of JSON.
fn order(i: usize) -> serde_json::Value {
    let lines: Vec<_> = (0..10)
        .map(|l| {
            json!({
                "sku": format!("sku-{l:04}"),
                "quantity": l + 1,
                "unit_price_cents": 1999,
                "currency": "EUR",
            })
        })
        .collect();
    json!({
        "id": format!("ord-{i:08}"),
        "status": "accepted",
        "created_at": "2026-12-08T04:05:06Z",
        "lines": lines,
        "total_cents": 109_945,
    })
}

/// Bytes allocated and not freed since `region` began.
fn held(region: &Region<'_, System>) -> usize {
    counting::live(region).max(0) as usize
}

/// What a store weighs `entries` at: each key, each value as JSON, and the bookkeeping.
fn weight_of<T: serde::Serialize>(entries: &[(String, T)]) -> usize {
    entries
        .iter()
        .map(|(key, value)| {
            key.len() + serde_json::to_vec(value).expect("json").len() + ENTRY_OVERHEAD
        })
        .sum()
}

/// Fails unless a store holds its `what` in at most their weight and its own tables.
fn within_weight(what: &str, held: usize, weighed: usize) {
    println!(
        "{ENTRIES} {what} weighed at {weighed} bytes hold {held} ({:.2}x)",
        held as f64 / weighed as f64
    );
    assert!(
        held <= weighed + FIXED,
        "{held} bytes held for {what} weighed at {weighed}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn idempotency_records_take_at_most_what_they_weigh() {
    let _alone = ALONE.lock().await;
    // Made before counting: the store keeps what it is given in its own form.
    let records: Vec<(String, Record)> = (0..ENTRIES)
        .map(|i| {
            let done = Record::Done {
                fingerprint: format!("{i:064x}"),
                answer: Answer {
                    status: 201,
                    body: order(i),
                },
            };
            (format!("{:064x}", i * 7919), done)
        })
        .collect();
    let weighed = weight_of(&records);

    let region = Region::new(ALLOCATOR);
    let store = MemoryIdempotencyStore::new(100_000, 64 * 1024 * 1024);
    for (key, done) in &records {
        store
            .complete(key, done, Duration::from_secs(3600))
            .await
            .expect("complete");
    }
    within_weight("idempotency records", held(&region), weighed);
    // Every record is held: a claim of its key finds it.
    let pending = Record::Pending {
        fingerprint: "0".repeat(64),
        token: "t".into(),
    };
    for (key, done) in &records {
        let found = store
            .claim(key, &pending, Duration::from_secs(1))
            .await
            .expect("claim");
        assert_eq!(found.as_ref(), Some(done), "{key}");
    }
    drop(store);
}

#[tokio::test(flavor = "current_thread")]
async fn cached_answers_take_at_most_what_they_weigh() {
    let _alone = ALONE.lock().await;
    // Made before counting; their bodies are serialised while counting, as the aggregation does
    // it, into a vector that grows as it is written.
    let answers: Vec<(String, serde_json::Value)> = (0..ENTRIES)
        .map(|i| {
            (
                format!("bff-mobile:/api/v2/orders/{i}:user-{i:08}"),
                order(i),
            )
        })
        .collect();
    let weighed = weight_of(&answers);

    let region = Region::new(ALLOCATOR);
    let cache = MemoryCache::new(100_000, 64 * 1024 * 1024);
    for (key, value) in &answers {
        let entry = Entry {
            body: Bytes::from(serde_json::to_vec(value).expect("json")),
            fresh_until_ms: u64::MAX,
            keep_for: Duration::from_secs(3600),
        };
        cache.put(key, entry).await.expect("put");
    }
    within_weight("cached answers", held(&region), weighed);
    // Every answer is held.
    for (key, _) in &answers {
        assert!(cache.get(key).await.expect("get").is_some(), "{key}");
    }
    drop(cache);
}
