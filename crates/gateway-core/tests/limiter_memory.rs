//! What the in-memory limiter holds under a flood of distinct keys: at most `ratelimit.max_keys`
//! keys, and a bounded number of bytes for each. Measured with a counting allocator: this test
//! binary allocates nothing else meanwhile.

use std::alloc::System;
use std::time::Duration;

use gateway_core::ratelimit::memory::MemoryStore;
use gateway_core::ratelimit::{Algorithm, Policy};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[path = "support/counting.rs"]
mod counting;

#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes a tracked key may cost at most, its entry, its name and the table's spare room included
/// (README, "Shared state and Redis"): 148 when this was written. A table that grew for the
/// tombstones of evicted keys rather than being rebuilt took 257.
const MAX_BYTES_A_KEY: usize = 160;

/// Bytes allocated and not freed since `region` began.
fn live(region: &Region<'_, System>) -> usize {
    counting::live(region).max(0) as usize
}

#[test]
fn a_key_flood_holds_a_bounded_number_of_bytes() {
    const MAX_KEYS: usize = 100_000;
    // Keys as the limiter names them, each admitted and live for an hour, a sliding window with a
    // daily quota: the largest entry there is.
    let policy = Policy::new(
        "default",
        Algorithm::SlidingWindow,
        1_000,
        Duration::from_secs(3600),
        1,
    )
    .with_quota(100_000, Duration::from_secs(86_400));
    let keys: Vec<String> = (0..2 * MAX_KEYS)
        .map(|i| format!("bff-mobile:default:user-{i:08}"))
        .collect();

    // Far below the bound: tables the size of their keys, not of the bound.
    let region = Region::new(ALLOCATOR);
    let roomy = MemoryStore::new(1_000_000);
    for key in &keys[..1_000] {
        assert!(roomy.decide(key, &policy, 1).allowed);
    }
    let held = live(&region);
    assert!(
        held <= 1_000 * 2 * MAX_BYTES_A_KEY,
        "{held} bytes for 1,000 keys in a store for 1,000,000"
    );
    drop(roomy);

    // Twice the bound's keys: at most the bound's, in at most its bytes.
    let region = Region::new(ALLOCATOR);
    let store = MemoryStore::new(MAX_KEYS);
    for key in &keys {
        assert!(store.decide(key, &policy, 1).allowed);
    }
    let held = live(&region);
    let tracked = store.len();
    assert!(tracked <= MAX_KEYS + 64, "{tracked} keys tracked");
    let a_key = held / tracked;
    println!("{tracked} keys tracked in {held} bytes: {a_key} bytes a key");
    assert!(
        a_key <= MAX_BYTES_A_KEY,
        "{a_key} bytes a key ({held} bytes for {tracked} keys)"
    );
}
