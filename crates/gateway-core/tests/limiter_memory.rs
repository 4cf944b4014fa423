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
/// (README, "Shared state and Redis"): 117 at each bound below and at the default 1,000,000 when
/// this was written. Entries that kept their policy's period and quota window, in shards bounded
/// to a 64th of the keys, took 148 at 100,000 and 218 at 1,000,000: a shard's table, a power of
/// two buckets, was then up to half empty at its bound.
const MAX_BYTES_A_KEY: usize = 128;

/// Bytes allocated and not freed since `region` began.
fn live(region: &Region<'_, System>) -> usize {
    counting::live(region).max(0) as usize
}

/// Keys as the limiter names them, each admitted and live for an hour, a sliding window with a
/// daily quota: the largest entry there is.
fn policy() -> Policy {
    Policy::new(
        "default",
        Algorithm::SlidingWindow,
        1_000,
        Duration::from_secs(3600),
        1,
    )
    .with_quota(100_000, Duration::from_secs(86_400))
}

fn key(i: usize) -> String {
    format!("bff-mobile:default:user-{i:08}")
}

/// Floods a store of `max_keys` with twice as many keys; answers the keys it tracks and the
/// bytes it holds.
fn flood(max_keys: usize) -> (usize, usize) {
    let policy = policy();
    // Names made before counting: the store copies each it keeps.
    let keys: Vec<String> = (0..2 * max_keys).map(key).collect();
    let region = Region::new(ALLOCATOR);
    let store = MemoryStore::new(max_keys);
    for key in &keys {
        assert!(store.decide(key, &policy, 1).allowed);
    }
    let held = live(&region);
    let tracked = store.len();
    assert!(tracked <= max_keys, "{tracked} keys tracked");
    assert!(tracked * 64 >= max_keys * 63, "{tracked} keys tracked");
    (tracked, held)
}

#[test]
fn a_key_flood_holds_a_bounded_number_of_bytes() {
    // Far below the bound: tables the size of their keys, not of the bound.
    let policy = policy();
    let keys: Vec<String> = (0..1_000).map(key).collect();
    let region = Region::new(ALLOCATOR);
    let roomy = MemoryStore::new(1_000_000);
    for key in &keys {
        assert!(roomy.decide(key, &policy, 1).allowed);
    }
    let held = live(&region);
    assert!(
        held <= 1_000 * 2 * MAX_BYTES_A_KEY,
        "{held} bytes for 1,000 keys in a store for 1,000,000"
    );
    drop(roomy);

    // Twice the bound's keys: at most the bound's, in at most its bytes. 64,000: shards of a
    // 64th of it, 1,000 keys, would fill tables of 2,048 buckets half, as the default's 15,625
    // would 32,768.
    for max_keys in [100_000, 64_000] {
        let (tracked, held) = flood(max_keys);
        let a_key = held / tracked;
        println!("bound {max_keys}: {tracked} keys tracked in {held} bytes, {a_key} bytes a key");
        assert!(
            a_key <= MAX_BYTES_A_KEY,
            "{a_key} bytes a key ({held} bytes for {tracked} keys)"
        );
    }
}
