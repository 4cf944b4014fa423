//! The in-memory store: sharded to keep lock contention low, bounded so a flood of distinct keys
//! cannot exhaust memory.

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use super::quota::{self, QuotaState};
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

/// One key's rate state and, for policies with a quota, its quota window.
#[derive(Debug, Clone, Copy)]
struct Entry {
    rate: Option<Slot>,
    quota: Option<(QuotaState, u64)>,
}

impl Entry {
    fn spent(&self, now_us: u64, wall_ms: u64) -> bool {
        self.rate.is_none_or(|r| r.spent(now_us))
            && self
                .quota
                .is_none_or(|(q, window_ms)| q.window < wall_ms / window_ms)
    }
}

/// One shard: keys and their entries, found by a hash computed once per decision.
#[derive(Default)]
struct Shard {
    keys: HashTable<(Box<str>, Entry)>,
    /// When (the decisions' clock, microseconds) spent entries were last swept out of the shard
    /// for want of room.
    swept_at: Option<u64>,
}

/// How often a full shard is swept for spent entries, at most. A sweep reads every entry of the
/// shard under its lock, so a flood of new keys into shards full of live ones pays for one sweep
/// a shard a second, not one a key; spent entries wait at most this long to make room.
const SWEEP_EVERY_US: u64 = 1_000_000;

/// Per-key limiter state in process memory.
///
/// Each key is hashed once per decision (SipHash, keyed per process, so clients cannot choose
/// colliding subjects): the same hash picks the shard and finds the key in it.
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    hasher: RandomState,
}

impl MemoryStore {
    /// A store that tracks at most about `max_keys` keys.
    pub fn new(max_keys: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
        }
    }

    /// Decides one request for `key` at `now` (microseconds on any monotonic clock).
    pub fn decide(&self, key: &str, policy: &Policy, now: u64) -> Decision {
        let hash = self.hasher.hash_one(key);
        // Bits the table does not use for the bucket (low bits) nor the tag (top 7).
        let shard = &self.shards[(hash >> 32) as usize % SHARDS];
        let mut map = shard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Quota windows follow the wall clock, so a daily quota ends at midnight UTC.
        let wall_ms = wall_ms();
        if let Some((_, entry)) = map.keys.find_mut(hash, |(k, _)| &**k == key) {
            let (next, decision) = step(Some(*entry), policy, now, wall_ms);
            if let Some(next) = next {
                *entry = next;
            }
            return decision;
        }
        let (next, decision) = step(None, policy, now, wall_ms);
        if let Some(next) = next {
            let full = map.keys.len() >= self.per_shard;
            if full
                && map
                    .swept_at
                    .is_none_or(|at| now.saturating_sub(at) >= SWEEP_EVERY_US)
            {
                // Spent entries are full buckets: dropping them loses nothing.
                map.keys.retain(|(_, e)| !e.spent(now, wall_ms));
                map.swept_at = Some(now);
            }
            if map.keys.len() >= self.per_shard {
                // Still full of live keys: evict one arbitrary key. That key briefly gets a
                // fresh allowance, the price of a hard memory bound under a key flood.
                let victim = map.keys.iter().next().map(|(k, _)| k.clone());
                if let Some(victim) = victim
                    && let Ok(found) = map
                        .keys
                        .find_entry(self.hasher.hash_one(&*victim), |(k, _)| *k == victim)
                {
                    found.remove();
                }
            }
            if full && map.keys.len() >= map.keys.capacity() {
                self.rebuild(&mut map);
            }
            map.keys.insert_unique(hash, (key.into(), next), |(k, _)| {
                self.hasher.hash_one(&**k)
            });
        }
        decision
    }

    /// Moves the keys of `shard`, at its bound, into a table sized for the bound. Keys evicted
    /// from a full table leave tombstones that use up its room, and the table would then double
    /// to make more: under a flood of new keys, twice the memory for the same keys. Rebuilt
    /// instead, it holds them in the room its bound needs, for one move of each key every few
    /// thousand new ones. Below the bound a table grows as usual.
    fn rebuild(&self, shard: &mut Shard) {
        let room = self.per_shard.max(shard.keys.len() + 1);
        let keys = std::mem::replace(&mut shard.keys, HashTable::with_capacity(room));
        for (key, entry) in keys {
            let hash = self.hasher.hash_one(&*key);
            shard
                .keys
                .insert_unique(hash, (key, entry), |(k, _)| self.hasher.hash_one(&**k));
        }
    }

    /// Keys currently tracked.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .keys
                    .len()
            })
            .sum()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The decision for a key whose entry is `current`, and the entry to keep when the request is
/// admitted (`None`: nothing to write).
fn step(
    current: Option<Entry>,
    policy: &Policy,
    now: u64,
    wall_ms: u64,
) -> (Option<Entry>, Decision) {
    let (next, decision) = match policy.algorithm {
        Algorithm::Gcra => {
            let tat = match current.and_then(|e| e.rate) {
                Some(Slot::Gcra(tat)) => Some(tat),
                _ => None,
            };
            let (next, d) = gcra::decide(tat, now, policy);
            (next.map(Slot::Gcra), d)
        }
        Algorithm::SlidingWindow => {
            let state = match current.and_then(|e| e.rate) {
                Some(Slot::Window(w, _)) => Some(w),
                _ => None,
            };
            let (next, d) = window::decide(state, now / 1000, policy);
            (next.map(|w| Slot::Window(w, policy.period_ms())), d)
        }
    };
    let check = policy.quota.map(|q| {
        (
            quota::check(current.and_then(|e| e.quota).map(|(s, _)| s), wall_ms, &q),
            q.window_ms,
        )
    });
    let decision = decision.with_quota(check.map(|(c, _)| c));
    let next = next.filter(|_| decision.allowed).map(|slot| Entry {
        rate: Some(slot),
        quota: check.map(|(c, w)| (c.next, w)),
    });
    (next, decision)
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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

    /// Under a flood of live keys, full tables are rebuilt rather than grown, and keep what they
    /// hold: the last key in is still limited.
    #[test]
    fn keys_outlive_their_table_being_rebuilt() {
        let store = MemoryStore::new(SHARDS * 4);
        let p = Policy::new("p", Algorithm::SlidingWindow, 1, Duration::from_secs(60), 1);
        for i in 0..10_000 {
            assert!(store.decide(&format!("k{i}"), &p, 0).allowed);
        }
        assert!(!store.decide("k9999", &p, 0).allowed);
        assert!(store.len() <= SHARDS * 4);
    }

    /// A full shard is swept for spent entries at most once a second: until then a new key takes
    /// the place of an arbitrary one, then a sweep makes room for it and the rest.
    #[test]
    fn full_shards_are_swept_for_spent_entries_at_most_once_a_second() {
        const MAX: usize = SHARDS * 8;
        let store = MemoryStore::new(MAX);
        // Spent 1 ms after its admission.
        let p = Policy::new("p", Algorithm::Gcra, 1_000, Duration::from_secs(1), 1);
        // About 31 keys a shard: every shard fills, and is swept (for nothing) as it does.
        for i in 0..2_000 {
            store.decide(&format!("old-{i}"), &p, 0);
        }
        assert_eq!(store.len(), MAX);
        // Half a second on, every entry is spent, but no shard is swept yet.
        store.decide("new-1", &p, 500_000);
        assert_eq!(store.len(), MAX, "swept within a second of the last sweep");
        // A second on, the new key's shard is swept: its 8 spent entries go, the key comes in.
        store.decide("new-2", &p, 1_000_000);
        assert!(store.len() <= MAX - 7, "{} keys: not swept", store.len());
    }

    #[test]
    fn a_quota_caps_requests_the_rate_would_admit() {
        let store = MemoryStore::new(100);
        let p = Policy::new("p", Algorithm::Gcra, 1000, Duration::from_secs(1), 1000)
            .with_quota(3, Duration::from_secs(86_400));
        let decisions: Vec<Decision> = (0..5).map(|i| store.decide("k", &p, i)).collect();
        assert_eq!(decisions.iter().filter(|d| d.allowed).count(), 3);
        assert_eq!(decisions[2].quota_remaining, Some(0));
        let refused = decisions[3];
        assert!(
            !refused.allowed
                && refused.retry_after_us > 0
                && refused.retry_after_us <= 86_400_000_000
        );
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
