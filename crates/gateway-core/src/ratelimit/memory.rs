//! The in-memory GCRA store: sharded to keep lock contention low, bounded so a flood of distinct
//! keys cannot exhaust memory.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

use super::{Decision, Policy, gcra};

const SHARDS: usize = 64;

/// Per-key TATs in process memory.
pub struct MemoryStore {
    shards: Box<[Mutex<HashMap<String, u64>>]>,
    per_shard: usize,
    hasher: RandomState,
}

impl MemoryStore {
    /// A store that tracks at most about `max_keys` keys.
    pub fn new(max_keys: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
        }
    }

    /// Decides one request for `key` at `now` (microseconds on any monotonic clock).
    pub fn decide(&self, key: &str, policy: &Policy, now: u64) -> Decision {
        let shard = &self.shards[self.hasher.hash_one(key) as usize % SHARDS];
        let mut map = shard.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (next, decision) = gcra::decide(map.get(key).copied(), now, policy);
        if let Some(tat) = next {
            match map.get_mut(key) {
                Some(slot) => *slot = tat,
                None => {
                    if map.len() >= self.per_shard {
                        // Entries whose TAT has passed are full buckets: dropping them loses nothing.
                        map.retain(|_, tat| *tat > now);
                    }
                    if map.len() >= self.per_shard {
                        // Still full of live keys: evict one arbitrary key. That key briefly gets a
                        // fresh bucket, the price of a hard memory bound under a key flood.
                        if let Some(victim) = map.keys().next().cloned() {
                            map.remove(&victim);
                        }
                    }
                    map.insert(key.to_owned(), tat);
                }
            }
        }
        decision
    }

    /// Keys currently tracked.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len())
            .sum()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stays_within_its_bound_under_a_key_flood() {
        let store = MemoryStore::new(1_000);
        let p = Policy::new("p", 10, Duration::from_secs(60), 10);
        for i in 0..50_000 {
            store.decide(&format!("k{i}"), &p, 0);
        }
        assert!(store.len() <= 1_000 + SHARDS, "{}", store.len());
    }

    #[test]
    fn keys_are_independent() {
        let store = MemoryStore::new(100);
        let p = Policy::new("p", 1, Duration::from_secs(60), 1);
        assert!(store.decide("a", &p, 0).allowed);
        assert!(!store.decide("a", &p, 0).allowed);
        assert!(store.decide("b", &p, 0).allowed);
    }
}
