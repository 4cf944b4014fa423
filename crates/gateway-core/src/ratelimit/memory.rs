//! The in-memory store: sharded to keep lock contention low, bounded so a flood of distinct keys
//! cannot exhaust memory.

use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroU64;

use hashbrown::HashTable;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use super::quota::{self, QuotaState};
use super::window::WindowState;
use super::{Algorithm, Decision, Policy, gcra, window};

/// Shards a store has at most (at least half as many once it is large: see [`layout`]).
const MAX_SHARDS: usize = 64;

/// The fewest buckets a shard's table is planned at: one group of hashbrown's control bytes.
const MIN_BUCKETS: usize = 16;

/// The share of a full shard's table kept free, as a divisor of its capacity: evicting a key from
/// a full table may leave a tombstone in place of an empty bucket, and the table is rebuilt once
/// the tombstones have used up this room (see [`MemoryStore::rebuild`]). 8: an eighth, for one
/// move of each key every eighth of a table's worth of new keys.
const SLACK: usize = 8;

/// One key's rate state, each variant in the units of its algorithm.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// GCRA's theoretical arrival time, microseconds.
    Gcra { tat_us: u64 },
    /// The sliding window's two counters and when they stop counting: the end of the window after
    /// the current one, from which the current window's index follows given the period.
    Window {
        spent_at_ms: u64,
        prev: u64,
        cur: u64,
    },
}

impl Slot {
    /// Whether the slot no longer changes any decision (so dropping it loses nothing).
    fn spent(&self, now_us: u64) -> bool {
        match *self {
            Self::Gcra { tat_us } => tat_us <= now_us,
            Self::Window { spent_at_ms, .. } => spent_at_ms <= now_us / 1000,
        }
    }

    fn window(state: WindowState, period_ms: u64) -> Self {
        Self::Window {
            spent_at_ms: state.expires_at_ms(period_ms),
            prev: state.prev,
            cur: state.cur,
        }
    }

    /// The sliding window's state, for a policy of `period_ms`.
    fn window_state(&self, period_ms: u64) -> Option<WindowState> {
        match *self {
            Self::Window {
                spent_at_ms,
                prev,
                cur,
            } => Some(WindowState {
                window: (spent_at_ms / period_ms).saturating_sub(2),
                prev,
                cur,
            }),
            Self::Gcra { .. } => None,
        }
    }
}

/// One key's quota window: the wall-clock millisecond it ends at (never 0: windows end a whole
/// window after the epoch) and the requests admitted in it.
#[derive(Debug, Clone, Copy)]
struct QuotaSlot {
    ends_ms: NonZeroU64,
    used: u64,
}

impl QuotaSlot {
    fn new(state: QuotaState, window_ms: u64) -> Self {
        let ends = state.window.saturating_add(1).saturating_mul(window_ms);
        Self {
            ends_ms: NonZeroU64::new(ends).unwrap_or(NonZeroU64::MAX),
            used: state.used,
        }
    }

    fn state(&self, window_ms: u64) -> QuotaState {
        QuotaState {
            window: (self.ends_ms.get() / window_ms).saturating_sub(1),
            used: self.used,
        }
    }
}

/// One key's rate state and, for policies with a quota, its quota window. Neither stores the
/// policy: each key belongs to one policy, which every decision for it passes in.
#[derive(Debug, Clone, Copy)]
struct Entry {
    rate: Slot,
    quota: Option<QuotaSlot>,
}

/// A bucket of a shard's table: 64 bytes, with the key's name on the heap.
const _: () = assert!(std::mem::size_of::<(Box<str>, Entry)>() == 64);

impl Entry {
    fn spent(&self, now_us: u64, wall_ms: u64) -> bool {
        self.rate.spent(now_us) && self.quota.is_none_or(|q| q.ends_ms.get() <= wall_ms)
    }
}

/// One shard: keys and their entries, found by a hash computed once per decision.
struct Shard {
    keys: HashTable<(Box<str>, Entry)>,
    /// When (the decisions' clock, microseconds) spent entries were last swept out of the shard
    /// for want of room.
    swept_at: Option<u64>,
    /// The most keys the shard tracks. A table out of room at half of its planned capacity
    /// ([`planned_capacity`] of the bound) or more is rebuilt at it (see [`MemoryStore::rebuild`]).
    bound: usize,
    /// Rebuilds so far.
    #[cfg(test)]
    rebuilds: usize,
}

impl Shard {
    fn new(bound: usize) -> Self {
        Self {
            keys: HashTable::new(),
            swept_at: None,
            bound,
            #[cfg(test)]
            rebuilds: 0,
        }
    }
}

/// How often a full shard is swept for spent entries, at most. A sweep reads every entry of the
/// shard under its lock, so a flood of new keys into shards full of live ones pays for one sweep
/// a shard a second, not one a key; spent entries wait at most this long to make room.
const SWEEP_EVERY_US: u64 = 1_000_000;

/// The keys a table of `buckets` buckets (a power of two, at least 4) holds before it must grow:
/// hashbrown keeps an eighth of a table's buckets empty, and one of the smallest tables'.
const fn table_capacity(buckets: usize) -> usize {
    if buckets < 16 {
        buckets - 1
    } else {
        buckets / 8 * 7
    }
}

/// The keys a shard whose table has `buckets` buckets is bounded to: the table's capacity less the
/// room kept for tombstones.
const fn shard_bound(buckets: usize) -> usize {
    let capacity = table_capacity(buckets);
    capacity - capacity / SLACK
}

/// The capacity of the smallest table that holds `keys`, as hashbrown sizes it.
const fn planned_capacity(keys: usize) -> usize {
    let mut buckets = 4;
    while table_capacity(buckets) < keys {
        buckets *= 2;
    }
    table_capacity(buckets)
}

/// The bounds of the shards of a store of `max_keys` keys (at least 1), which add up to it. The
/// shards' tables have the fewest buckets (a power of two, at least [`MIN_BUCKETS`]) for which
/// [`MAX_SHARDS`] shards hold `max_keys` with each table's slack kept, and there are as few
/// shards as hold them so, their bounds as equal as can be: a full shard fills its table to about
/// three quarters of its buckets. (A 64th of `max_keys` a shard filled between 44 and 88% of a
/// table, as `max_keys` fell.) A large store has 33 to 64 shards.
fn layout(max_keys: usize) -> Vec<usize> {
    let max_keys = max_keys.max(1);
    let mut buckets = MIN_BUCKETS;
    while shard_bound(buckets).saturating_mul(MAX_SHARDS) < max_keys {
        buckets *= 2;
    }
    let shards = max_keys.div_ceil(shard_bound(buckets));
    (0..shards)
        .map(|i| max_keys / shards + usize::from(i < max_keys % shards))
        .collect()
}

/// Per-key limiter state in process memory.
///
/// Each key is hashed once per decision (SipHash, keyed per process, so clients cannot choose
/// colliding subjects): the same hash picks the shard and finds the key in it.
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    max_keys: usize,
    hasher: RandomState,
}

impl MemoryStore {
    /// A store that tracks at most `max_keys` keys (at least 1), and as many when flooded.
    pub fn new(max_keys: usize) -> Self {
        let bounds = layout(max_keys);
        Self {
            max_keys: bounds.iter().sum(),
            shards: bounds
                .into_iter()
                .map(|b| Mutex::new(Shard::new(b)))
                .collect(),
            hasher: RandomState::new(),
        }
    }

    /// The most keys the store tracks.
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Decides one request for `key` at `now` (microseconds on any monotonic clock).
    pub fn decide(&self, key: &str, policy: &Policy, now: u64) -> Decision {
        let hash = self.hasher.hash_one(key);
        // Bits the table uses neither for the bucket (low bits) nor the tag (top 7), mapped onto
        // the shards by a multiplication rather than a division.
        let index = (((hash >> 32) & 0xff_ffff) * self.shards.len() as u64) >> 24;
        let shard = &self.shards[index as usize];
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
            if map.keys.len() >= map.bound
                && map
                    .swept_at
                    .is_none_or(|at| now.saturating_sub(at) >= SWEEP_EVERY_US)
            {
                // Spent entries are full buckets: dropping them loses nothing.
                map.keys.retain(|(_, e)| !e.spent(now, wall_ms));
                map.swept_at = Some(now);
            }
            if map.keys.len() >= map.bound {
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
            if map.keys.len() >= map.keys.capacity()
                && 2 * map.keys.len() >= planned_capacity(map.bound)
            {
                self.rebuild(&mut map);
            }
            map.keys.insert_unique(hash, (key.into(), next), |(k, _)| {
                self.hasher.hash_one(&**k)
            });
        }
        decision
    }

    /// Moves the keys of `shard`, out of room, into a table of its planned size. Evicted and
    /// swept keys leave tombstones that use up a table's room, and hashbrown would then double the
    /// table to make more: under a flood of new keys, twice the memory for the same keys. Rebuilt
    /// instead, it holds them in the room its bound needs, for one move of each key each time
    /// tombstones fill the room [`SLACK`] keeps. A table below half that size grows as usual
    /// (rehashed in place when tombstones are what took its room).
    fn rebuild(&self, shard: &mut Shard) {
        #[cfg(test)]
        {
            shard.rebuilds += 1;
        }
        let keys = std::mem::replace(&mut shard.keys, HashTable::with_capacity(shard.bound));
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
            let tat = match current.map(|e| e.rate) {
                Some(Slot::Gcra { tat_us }) => Some(tat_us),
                _ => None,
            };
            let (next, d) = gcra::decide(tat, now, policy);
            (next.map(|tat_us| Slot::Gcra { tat_us }), d)
        }
        Algorithm::SlidingWindow => {
            let period_ms = policy.period_ms();
            let state = current.and_then(|e| e.rate.window_state(period_ms));
            let (next, d) = window::decide(state, now / 1000, policy);
            (next.map(|w| Slot::window(w, period_ms)), d)
        }
    };
    let check = policy.quota.map(|q| {
        let state = current.and_then(|e| e.quota).map(|s| s.state(q.window_ms));
        (quota::check(state, wall_ms, &q), q.window_ms)
    });
    let decision = decision.with_quota(check.map(|(c, _)| c));
    let next = next.filter(|_| decision.allowed).map(|rate| Entry {
        rate,
        quota: check.map(|(c, window_ms)| QuotaSlot::new(c.next, window_ms)),
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

    /// The layout's arithmetic holds for hashbrown as built: a shard at its bound fills a table of
    /// its planned size to about three quarters, with room kept for tombstones, and the shards'
    /// bounds add up to `max_keys`.
    #[test]
    fn shards_fill_their_tables_and_the_store_keeps_to_max_keys() {
        for max_keys in [
            1, 7, 10, 14, 100, 447, 832, 833, 1_000, 64_000, 100_000, 1_000_000, 10_000_000,
        ] {
            let bounds = layout(max_keys);
            assert_eq!(bounds.iter().sum::<usize>(), max_keys, "{max_keys}");
            assert!(
                bounds.len() <= MAX_SHARDS,
                "{max_keys}: {} shards",
                bounds.len()
            );
            if max_keys > MAX_SHARDS * shard_bound(MIN_BUCKETS) {
                assert!(
                    bounds.len() > MAX_SHARDS / 2,
                    "{max_keys}: {} shards",
                    bounds.len()
                );
            }
            let (low, high) = (bounds[bounds.len() - 1], bounds[0]);
            assert!(high - low <= 1, "{max_keys}: {low} to {high}");
            for bound in [low, high] {
                let planned = planned_capacity(bound);
                let table = HashTable::<(Box<str>, Entry)>::with_capacity(bound);
                assert_eq!(table.capacity(), planned, "{max_keys}: {bound}");
                assert!(
                    bound <= planned - planned / SLACK,
                    "{max_keys}: {bound} in {planned}"
                );
                if bounds.len() > 1 {
                    assert!(
                        bound * 4 > planned * 3 - planned / 4,
                        "{max_keys}: {bound} in {planned}"
                    );
                }
            }
        }
    }

    #[test]
    fn stays_within_its_bound_under_a_key_flood() {
        let store = MemoryStore::new(1_000);
        let p = Policy::new("p", Algorithm::Gcra, 10, Duration::from_secs(60), 10);
        for i in 0..50_000 {
            store.decide(&format!("k{i}"), &p, 0);
        }
        assert_eq!(store.len(), 1_000);
    }

    /// Under a flood of live keys, full tables are rebuilt rather than grown, and what they hold
    /// comes through: every key still tracked is still limited.
    #[test]
    fn keys_outlive_their_tables_being_rebuilt() {
        let store = MemoryStore::new(12_800);
        let p = Policy::new("p", Algorithm::SlidingWindow, 1, Duration::from_secs(60), 1);
        let keys: Vec<String> = (0..100_000).map(|i| format!("k{i}")).collect();
        for key in &keys {
            assert!(store.decide(key, &p, 0).allowed);
        }
        let rebuilds: usize = store
            .shards
            .iter()
            .map(|s| s.lock().expect("shard").rebuilds)
            .sum();
        assert!(rebuilds > 0, "no table was rebuilt");
        assert_eq!(store.len(), 12_800);
        let tracked = keys
            .iter()
            .filter(|key| {
                let hash = store.hasher.hash_one(key.as_str());
                store.shards.iter().any(|s| {
                    let shard = s.lock().expect("shard");
                    shard
                        .keys
                        .find(hash, |(k, _)| &**k == key.as_str())
                        .is_some()
                })
            })
            .cloned()
            .collect::<Vec<_>>();
        assert_eq!(tracked.len(), 12_800);
        for key in &tracked {
            assert!(!store.decide(key, &p, 0).allowed, "{key} forgot its window");
        }
    }

    /// Neither evictions nor sweeps make a table grow past a full shard's size: its tombstones
    /// are cleared by a rebuild in place of hashbrown's doubling.
    #[test]
    fn tables_stay_at_a_full_shards_size_through_evictions_and_sweeps() {
        let store = MemoryStore::new(100_000);
        let planned =
            |bound| HashTable::<(Box<str>, Entry)>::with_capacity(bound).allocation_size();
        // Half the keys spent a millisecond after their admission, half live for an hour.
        let short = Policy::new("p", Algorithm::Gcra, 1_000, Duration::from_secs(1), 1);
        let long = Policy::new(
            "p",
            Algorithm::SlidingWindow,
            1,
            Duration::from_secs(3600),
            1,
        );
        for i in 0..400_000u64 {
            let p = if i % 2 == 0 { &short } else { &long };
            // A second and a bit between rounds of 1,000 keys, so full shards are swept.
            store.decide(&format!("k{i}"), p, i / 1_000 * 1_100_000);
        }
        assert!(store.len() <= store.max_keys());
        for shard in &store.shards {
            let shard = shard.lock().expect("shard");
            let planned = planned(shard.bound);
            assert!(
                shard.keys.allocation_size() <= planned,
                "{} bytes for a table planned at {planned}",
                shard.keys.allocation_size()
            );
        }
    }

    /// A full shard is swept for spent entries at most once a second: until then a new key takes
    /// the place of an arbitrary one, then a sweep makes room for it and the rest.
    #[test]
    fn full_shards_are_swept_for_spent_entries_at_most_once_a_second() {
        let store = MemoryStore::new(512);
        let max = store.max_keys();
        let smallest = store
            .shards
            .iter()
            .map(|s| s.lock().expect("shard").bound)
            .min()
            .expect("shards");
        // Spent 1 ms after its admission.
        let p = Policy::new("p", Algorithm::Gcra, 1_000, Duration::from_secs(1), 1);
        // 40 shards of 12 or 13 keys: every shard fills, and is swept (for nothing) as it does.
        for i in 0..2_000 {
            store.decide(&format!("old-{i}"), &p, 0);
        }
        assert_eq!(store.len(), max);
        // Half a second on, every entry is spent, but no shard is swept yet.
        store.decide("new-1", &p, 500_000);
        assert_eq!(store.len(), max, "swept within a second of the last sweep");
        // A second on, the new key's shard is swept: its spent entries go, the key comes in.
        store.decide("new-2", &p, 1_000_000);
        assert!(
            store.len() <= max - smallest + 1,
            "{} keys: not swept",
            store.len()
        );
    }

    /// A sliding window's and a quota's state survive being stored without their policy.
    #[test]
    fn stored_windows_and_quotas_keep_counting() {
        let store = MemoryStore::new(100);
        let p = Policy::new("p", Algorithm::SlidingWindow, 3, Duration::from_secs(60), 1)
            .with_quota(5, Duration::from_secs(86_400));
        // 60 s windows from the monotonic clock's 120 s: three in the first window.
        let at = |s: u64| store.decide("k", &p, s * 1_000_000);
        assert!(at(120).allowed && at(121).allowed && at(122).allowed);
        assert!(!at(123).allowed, "the window's three are spent");
        // Two windows on, the counters start again; the quota has two left.
        let d = at(240);
        assert!(d.allowed && d.quota_remaining == Some(1), "{d:?}");
        assert!(at(241).allowed);
        assert!(!at(242).allowed, "the quota's five are spent");
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
