//! The in-memory store: sharded to keep lock contention low, bounded so a flood of distinct keys
//! cannot exhaust memory.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

use super::window::WindowState;
use super::{Algorithm, Decision, Policy, gcra, window};

const SHARDS: usize = 64;

/// One key's state: a TAT for GCRA, two counters for the sliding window.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Gcra(u64),
    Window(WindowState, u64),
}

impl Slot {
    /// Whether the slot no longer changes any decision (so dropping it loses nothing).
    fn spent(&self, now_us: u64) -> bool {
        match self {
            Self::Gcra(tat) => *tat <= now_us,
            Self::Window(w, period_ms) => w.expired(now_us / 1000, *period_ms),
        }
    }
}

/// Per-key limiter state in process memory.
pub struct MemoryStore {
    shards: Box<[Mutex<HashMap<String, Slot>>]>,
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
        let mut map = shard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = map.get(key).copied();
        let (next, decision) = match policy.algorithm {
            Algorithm::Gcra => {
                let tat = match current {
                    Some(Slot::Gcra(tat)) => Some(tat),
                    _ => None,
                };
                let (next, d) = gcra::decide(tat, now, policy);
                (next.map(Slot::Gcra), d)
            }
            Algorithm::SlidingWindow => {
                let state = match current {
                    Some(Slot::Window(w, _)) => Some(w),
                    _ => None,
                };
                let (next, d) = window::decide(state, now / 1000, policy);
                (next.map(|w| Slot::Window(w, policy.period_ms())), d)
            }
        };
        if let Some(slot) = next {
            match map.get_mut(key) {
                Some(existing) => *existing = slot,
                None => {
                    if map.len() >= self.per_shard {
                        // Spent entries are full buckets: dropping them loses nothing.
                        map.retain(|_, s| !s.spent(now));
                    }
                    if map.len() >= self.per_shard {
                        // Still full of live keys: evict one arbitrary key. That key briefly gets a
                        // fresh allowance, the price of a hard memory bound under a key flood.
                        if let Some(victim) = map.keys().next().cloned() {
                            map.remove(&victim);
                        }
                    }
                    map.insert(key.to_owned(), slot);
                }
            }
        }
        decision
    }

    /// Keys currently tracked.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .len()
            })
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
        let p = Policy::new("p", Algorithm::Gcra, 10, Duration::from_secs(60), 10);
        for i in 0..50_000 {
            store.decide(&format!("k{i}"), &p, 0);
        }
        assert!(store.len() <= 1_000 + SHARDS, "{}", store.len());
    }

    #[test]
    fn keys_are_independent() {
        let store = MemoryStore::new(100);
        let p = Policy::new("p", Algorithm::SlidingWindow, 1, Duration::from_secs(60), 1);
        assert!(store.decide("a", &p, 0).allowed);
        assert!(!store.decide("a", &p, 0).allowed);
        assert!(store.decide("b", &p, 0).allowed);
    }
}
