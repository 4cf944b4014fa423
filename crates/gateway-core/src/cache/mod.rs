//! The response cache: an in-memory store (bounded, per-entry TTL) or Redis, behind one trait.
//!
//! Entries outlive their freshness by an optional stale window, so a route can serve the last good
//! answer (`X-Cache: STALE`) while its backends fail. A store that fails or is slow is bypassed
//! within its bound: the cache can make a request faster, never fail it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use moka::Expiry;

pub mod coalesce;

use crate::config::CacheConfig;
use crate::store::{Redis, StoreError, bounded, redis::AsyncCommands};

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A fresh entry.
    Fresh(Bytes),
    /// An entry past its TTL but within its stale window.
    Stale(Bytes),
    /// Nothing usable.
    Miss,
}

/// A stored entry: the body and when it stops being fresh (unix milliseconds).
#[derive(Debug, Clone)]
pub struct Entry {
    /// The response body.
    pub body: Bytes,
    /// Unix milliseconds after which the entry is stale.
    pub fresh_until_ms: u64,
    /// How long the store should keep it at all.
    pub keep_for: Duration,
}

/// Where cached responses live.
#[async_trait]
pub trait CacheStore: Send + Sync + 'static {
    /// The entry under `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError>;
    /// Stores `entry` under `key` for `entry.keep_for`.
    async fn put(&self, key: &str, entry: Entry) -> Result<(), StoreError>;
}

// === impl MemoryCache ===

/// A bounded in-process cache with per-entry lifetimes.
pub struct MemoryCache {
    inner: moka::future::Cache<String, Entry>,
}

struct KeepFor;

impl Expiry<String, Entry> for KeepFor {
    fn expire_after_create(
        &self,
        _: &String,
        e: &Entry,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(e.keep_for)
    }
    fn expire_after_update(
        &self,
        _: &String,
        e: &Entry,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(e.keep_for)
    }
}

/// What an entry costs a bounded in-memory store (the response cache, the idempotency records)
/// beyond its key and value: moka's bookkeeping and the entry's own fields. Measured at 348 bytes
/// an entry of the cache and 297 of the idempotency store (`tests/stores_memory.rs`), and a
/// store's first entries take about 100 KB more.
pub const ENTRY_OVERHEAD: usize = 384;

/// How much an entry weighs in a bounded in-memory store, whose weights moka keeps under
/// `max_bytes`: its bytes and [`ENTRY_OVERHEAD`], and never less than an equal share of
/// `max_bytes`, so the store also holds at most `max_entries` entries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Weight {
    floor: u32,
}

impl Weight {
    pub(crate) fn new(max_bytes: u64, max_entries: u64) -> Self {
        let share = max_bytes.div_ceil(max_entries.max(1));
        Self {
            floor: u32::try_from(share).unwrap_or(u32::MAX).max(1),
        }
    }

    /// The weight of an entry whose key and value take `bytes`.
    pub(crate) fn of(self, bytes: usize) -> u32 {
        u32::try_from(bytes.saturating_add(ENTRY_OVERHEAD))
            .unwrap_or(u32::MAX)
            .max(self.floor)
    }
}

impl MemoryCache {
    /// A cache of at most `max_entries` entries and about `max_bytes` bytes (bodies, keys and
    /// bookkeeping): whichever bound is reached first evicts.
    pub fn new(max_entries: u64, max_bytes: u64) -> Self {
        let weight = Weight::new(max_bytes, max_entries);
        Self {
            inner: moka::future::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(move |key: &String, e: &Entry| weight.of(key.len() + e.body.len()))
                .expire_after(KeepFor)
                .build(),
        }
    }
}

#[async_trait]
impl CacheStore for MemoryCache {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        Ok(self.inner.get(key).await)
    }
    async fn put(&self, key: &str, mut entry: Entry) -> Result<(), StoreError> {
        // A body serialised into a vector keeps the room the vector grew to, up to twice its
        // length, and a body sliced from a larger buffer keeps all of it: the entry keeps a copy
        // of its bytes alone, which is what it is weighed at.
        entry.body = Bytes::copy_from_slice(&entry.body);
        self.inner.insert(key.to_owned(), entry).await;
        Ok(())
    }
}

// === impl RedisCache ===

/// Responses in Redis under `{prefix}:cache:{<key>}`: 8 bytes of fresh-until, then the body.
pub struct RedisCache {
    redis: Redis,
    bound: Duration,
}

impl RedisCache {
    /// A cache on `redis`.
    pub fn new(redis: Redis, bound: Duration) -> Self {
        Self { redis, bound }
    }
}

#[async_trait]
impl CacheStore for RedisCache {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let key = self.redis.key("cache", key);
        let raw: Option<Vec<u8>> = self
            .redis
            .run(
                self.bound,
                |mut conn| async move { Ok(conn.get(key).await?) },
            )
            .await?;
        Ok(raw.and_then(|raw| {
            let mut buf = raw.as_slice();
            (buf.len() >= 8).then(|| {
                let fresh_until_ms = buf.get_u64();
                Entry {
                    body: Bytes::copy_from_slice(buf),
                    fresh_until_ms,
                    keep_for: Duration::ZERO,
                }
            })
        }))
    }

    async fn put(&self, key: &str, entry: Entry) -> Result<(), StoreError> {
        let mut value = BytesMut::with_capacity(8 + entry.body.len());
        value.put_u64(entry.fresh_until_ms);
        value.put_slice(&entry.body);
        let ms = u64::try_from(entry.keep_for.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let key = self.redis.key("cache", key);
        self.redis
            .run(self.bound, |mut conn| async move {
                let () = conn.pset_ex(key, value.to_vec(), ms).await?;
                Ok(())
            })
            .await?;
        Ok(())
    }
}

// === impl ResponseCache ===

/// One BFF's response cache: the store, per-route TTL overrides and the operation bound.
pub struct ResponseCache {
    bff: &'static str,
    store: Option<Arc<dyn CacheStore>>,
    ttl_overrides: HashMap<String, Duration>,
    bound: Duration,
}

impl ResponseCache {
    /// Builds the cache on `store` (`None` when caching is disabled).
    pub fn new(bff: &'static str, cfg: &CacheConfig, store: Option<Arc<dyn CacheStore>>) -> Self {
        Self {
            bff,
            store: store.filter(|_| cfg.enabled),
            ttl_overrides: cfg
                .ttl_secs
                .iter()
                .map(|(route, secs)| (route.clone(), Duration::from_secs(*secs)))
                .collect(),
            bound: Duration::from_millis(cfg.timeout_ms),
        }
    }

    /// The key for a response: BFF, scope (a principal, or `public`), resource and API version.
    pub fn key(&self, scope: &str, resource: &str, version: &str) -> String {
        format!("{}:{scope}:{resource}:{version}", self.bff)
    }

    /// The TTL for `route`: the configured override, or the route's own default.
    pub fn ttl(&self, route: &str, default: Duration) -> Duration {
        self.ttl_overrides.get(route).copied().unwrap_or(default)
    }

    /// Looks `key` up; a failing or slow store counts as a miss.
    pub async fn lookup(&self, key: &str) -> Lookup {
        let Some(store) = &self.store else {
            return Lookup::Miss;
        };
        let found = match bounded(self.bound, store.get(key)).await {
            Ok(found) => found,
            Err(err) => {
                tracing::debug!(bff = self.bff, error = %err, "cache lookup bypassed");
                metrics::counter!("bff_cache_errors_total", "bff" => self.bff).increment(1);
                None
            }
        };
        let lookup = match found {
            Some(e) if e.fresh_until_ms > now_ms() => Lookup::Fresh(e.body),
            Some(e) => Lookup::Stale(e.body),
            None => Lookup::Miss,
        };
        let label = match lookup {
            Lookup::Fresh(_) => "hit",
            Lookup::Stale(_) => "stale",
            Lookup::Miss => "miss",
        };
        metrics::counter!("bff_cache_lookups_total", "bff" => self.bff, "result" => label)
            .increment(1);
        lookup
    }

    /// Stores `body` fresh for `ttl`, kept `stale_for` longer for stale-if-error.
    pub async fn store(&self, key: &str, body: Bytes, ttl: Duration, stale_for: Duration) {
        let Some(store) = &self.store else { return };
        let entry = Entry {
            body,
            fresh_until_ms: now_ms() + u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX / 2),
            keep_for: ttl + stale_for,
        };
        if let Err(err) = bounded(self.bound, store.put(key, entry)).await {
            tracing::debug!(bff = self.bff, error = %err, "cache store bypassed");
            metrics::counter!("bff_cache_errors_total", "bff" => self.bff).increment(1);
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(bytes: usize) -> Entry {
        Entry {
            body: Bytes::from(vec![b'x'; bytes]),
            fresh_until_ms: u64::MAX,
            keep_for: Duration::from_secs(60),
        }
    }

    #[test]
    fn an_entry_weighs_its_bytes_but_at_least_its_share_of_the_bound() {
        let weight = Weight::new(64 * 1024 * 1024, 100_000);
        assert_eq!(
            weight.of(10),
            672,
            "64 MiB over 100,000 entries, rounded up"
        );
        assert_eq!(weight.of(10_000), 10_384, "the bytes and the bookkeeping");
        assert_eq!(weight.of(usize::MAX), u32::MAX);
        assert_eq!(Weight::new(1, 1_000).of(0), 384);
    }

    /// Entries of 1 KB in a cache of 16 KB: about a dozen stay, whatever the entry bound.
    #[tokio::test]
    async fn the_memory_cache_keeps_to_its_bytes() {
        let store = MemoryCache::new(1_000, 16 * 1024);
        for i in 0..64 {
            store.put(&format!("k{i}"), entry(1024)).await.expect("put");
        }
        store.inner.run_pending_tasks().await;
        let (kept, weight) = (store.inner.entry_count(), store.inner.weighted_size());
        assert!((1..=12).contains(&kept), "{kept} entries");
        assert!(weight <= 16 * 1024, "{weight} bytes");
    }

    /// Small entries in a cache of 1 MiB: the entry bound binds first.
    #[tokio::test]
    async fn the_memory_cache_keeps_to_its_entries() {
        let store = MemoryCache::new(10, 1 << 20);
        for i in 0..100 {
            store.put(&format!("k{i}"), entry(10)).await.expect("put");
        }
        store.inner.run_pending_tasks().await;
        let kept = store.inner.entry_count();
        assert!((1..=10).contains(&kept), "{kept} entries");
    }

    fn cache() -> ResponseCache {
        let cfg = CacheConfig::default();
        ResponseCache::new("t", &cfg, Some(Arc::new(MemoryCache::new(100, 1 << 20))))
    }

    #[tokio::test]
    async fn fresh_then_miss() {
        let c = cache();
        let k = c.key("user-1", "profile", "v2");
        assert_eq!(c.lookup(&k).await, Lookup::Miss);
        c.store(
            &k,
            Bytes::from_static(b"{}"),
            Duration::from_secs(60),
            Duration::ZERO,
        )
        .await;
        assert_eq!(c.lookup(&k).await, Lookup::Fresh(Bytes::from_static(b"{}")));
        assert_eq!(
            c.lookup(&c.key("user-2", "profile", "v2")).await,
            Lookup::Miss
        );
    }

    #[tokio::test]
    async fn past_its_ttl_an_entry_is_stale_within_the_window() {
        let c = cache();
        c.store(
            "k",
            Bytes::from_static(b"x"),
            Duration::ZERO,
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(c.lookup("k").await, Lookup::Stale(Bytes::from_static(b"x")));
    }

    #[test]
    fn keys_carry_bff_scope_resource_and_version() {
        assert_eq!(
            cache().key("user-1", "profile", "v2"),
            "t:user-1:profile:v2"
        );
    }
}
