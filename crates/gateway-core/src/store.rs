//! The shared Redis connection pool that every Redis-backed store (limits, cache, API keys,
//! idempotency records) draws from, and the key naming they all follow.
//!
//! Redis is one server (`redis.url`) or a Redis Cluster reached through its seed nodes
//! (`redis.cluster_urls`). The stores see no difference: they run their commands and scripts on a
//! [`Connection`], which routes each one to the node owning its first key's hash slot in a cluster.

use std::time::Duration;

use std::sync::{Arc, RwLock};

use deadpool_redis::redis::aio::{ConnectionLike, MultiplexedConnection};
use deadpool_redis::redis::cluster_async::ClusterConnection;
use deadpool_redis::{Config as PoolSettings, PoolConfig, Runtime, Timeouts, cluster};

use crate::config::{ConfigError, RedisConfig};

pub use deadpool_redis::redis;

/// A failure to reach or use a shared store. Never shown to clients.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection could be had within the pool's timeouts.
    #[error("store unreachable: {0}")]
    Unreachable(String),
    /// The operation did not finish within its bound.
    #[error("store timed out")]
    Timeout,
    /// The store answered with something we cannot use.
    #[error("store error: {0}")]
    Protocol(String),
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        // A cluster answering CLUSTERDOWN or TRYAGAIN, or a node missing from the client's slot
        // map, is as good as unreachable: a fresh connection starts again from the seed nodes.
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_unrecoverable_error()
            || e.is_cluster_error()
        {
            Self::Unreachable(e.to_string())
        } else {
            Self::Protocol(e.to_string())
        }
    }
}

impl From<deadpool_redis::PoolError> for StoreError {
    fn from(e: deadpool_redis::PoolError) -> Self {
        Self::Unreachable(e.to_string())
    }
}

/// A Redis client with this deployment's key prefix.
///
/// deadpool-redis makes, bounds and health-checks connections; but it checks one (UNWATCH + PING,
/// a full round trip) every time a connection is taken from the pool, and holds it exclusively
/// until returned. Both waste what a multiplexed connection offers, so the gateway takes one
/// connection from the pool and shares clones of it between all concurrent operations (they are
/// pipelined on one socket), going back to the pool only after a failure.
///
/// With Redis Cluster the pool holds cluster connections instead: each keeps one multiplexed
/// connection per primary and a map of hash slots, follows `MOVED` and `ASK` redirections, and is
/// shared in the same way.
#[derive(Clone)]
pub struct Redis {
    pool: Pool,
    prefix: String,
    shared: Arc<RwLock<Option<Connection>>>,
}

/// Where connections come from: one server's pool, or a pool of cluster connections.
#[derive(Clone)]
enum Pool {
    Server(deadpool_redis::Pool),
    Cluster(cluster::Pool),
}

/// A connection shared by concurrent operations, to one server or to a whole cluster.
#[derive(Clone)]
pub enum Connection {
    /// Commands pipelined on one socket to one server.
    Server(MultiplexedConnection),
    /// Commands routed by the hash slot of their first key, pipelined per primary.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Server(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Server(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Server(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .field(
                "mode",
                &match self.pool {
                    Pool::Server(_) => "server",
                    Pool::Cluster(_) => "cluster",
                },
            )
            .finish()
    }
}

impl Redis {
    /// Builds the pool when `redis.url` or `redis.cluster_urls` is set. Connections are made
    /// lazily, so a Redis that is down at start-up delays nothing: stores apply their failure
    /// policy until it is back.
    pub fn from_config(cfg: &RedisConfig) -> Result<Option<Self>, ConfigError> {
        let bound = Some(Duration::from_millis(cfg.timeout_ms));
        let limits = PoolConfig {
            max_size: cfg.pool_size,
            timeouts: Timeouts {
                wait: bound,
                create: bound,
                recycle: bound,
            },
            ..PoolConfig::default()
        };
        let pool =
            match (&cfg.url, cfg.cluster_urls.as_slice()) {
                (None, []) => return Ok(None),
                (Some(_), [_, ..]) => {
                    return Err(ConfigError(
                        "redis.cluster_urls cannot be combined with redis.url".into(),
                    ));
                }
                (Some(url), []) => {
                    let settings = PoolSettings {
                        url: Some(url.clone()),
                        connection: None,
                        pool: Some(limits),
                    };
                    Pool::Server(
                        settings
                            .create_pool(Some(Runtime::Tokio1))
                            .map_err(|e| ConfigError(format!("redis.url is not usable: {e}")))?,
                    )
                }
                (None, seeds) => {
                    let settings = cluster::Config {
                        urls: Some(seeds.to_vec()),
                        connections: None,
                        pool: Some(limits),
                        // Reads go to primaries too: a replica may lag, and every read here decides
                        // something (a cached answer, a key's partner, a write already done).
                        read_from_replicas: false,
                    };
                    Pool::Cluster(settings.create_pool(Some(Runtime::Tokio1)).map_err(|e| {
                        ConfigError(format!("redis.cluster_urls is not usable: {e}"))
                    })?)
                }
            };
        Ok(Some(Self {
            pool,
            prefix: cfg.key_prefix.clone(),
            shared: Arc::new(RwLock::new(None)),
        }))
    }

    /// `{prefix}:{kind}:{id}` with `id` in a hash tag, so one logical key never spans Redis Cluster
    /// slots, and the keys of different kinds for one id (a rate and its quota, which one script
    /// updates together) share a slot. The tag is the id up to its first `}`, the same for every
    /// kind: the prefix holds no braces in a cluster (validated), nor does the kind.
    pub fn key(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{{{id}}}", self.prefix)
    }

    /// Runs `op` on the shared connection within `bound`. A failure to reach Redis (or a timeout)
    /// drops the shared connection, so the next operation takes a fresh, checked one from the pool.
    pub async fn run<T, F, Fut>(&self, bound: Duration, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let result = bounded(bound, async { op(self.conn().await?).await }).await;
        if matches!(
            result,
            Err(StoreError::Unreachable(_) | StoreError::Timeout)
        ) {
            *self
                .shared
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        }
        result
    }

    async fn conn(&self) -> Result<Connection, StoreError> {
        let cached = self
            .shared
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(conn) = cached {
            return Ok(conn);
        }
        let conn = match &self.pool {
            Pool::Server(pool) => {
                Connection::Server(MultiplexedConnection::clone(&*pool.get().await?))
            }
            Pool::Cluster(pool) => {
                Connection::Cluster(ClusterConnection::clone(&*pool.get().await?))
            }
        };
        *self
            .shared
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(conn.clone());
        Ok(conn)
    }
}

/// Runs `fut` within `bound`, mapping the elapsed case to [`StoreError::Timeout`].
pub async fn bounded<T>(
    bound: Duration,
    fut: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(bound, fut)
        .await
        .unwrap_or(Err(StoreError::Timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash slot Redis Cluster gives `key`: CRC16 (XMODEM) of its hash tag, or of the whole
    /// key without one, modulo 16384.
    fn slot(key: &str) -> u16 {
        let bytes = key.as_bytes();
        let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
            let rest = &bytes[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        });
        let mut crc: u16 = 0;
        for &b in tagged.unwrap_or(bytes) {
            crc ^= u16::from(b) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc % 16384
    }

    fn redis(prefix: &str) -> Redis {
        let cfg = RedisConfig {
            cluster_urls: vec!["redis://127.0.0.1:7000".into()],
            key_prefix: prefix.into(),
            ..RedisConfig::default()
        };
        Redis::from_config(&cfg)
            .expect("usable")
            .expect("configured")
    }

    #[test]
    fn slots_follow_the_cluster_specification() {
        // The specification's check value of its CRC16, and its tag rules.
        assert_eq!(slot("123456789"), 0x31C3);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("foo{bar}{zap}"), slot("bar"));
        assert_eq!(slot("foo{{bar}}zap"), slot("{bar"));
    }

    #[test]
    fn every_kind_of_key_for_one_id_shares_a_slot() {
        let r = redis("bff");
        let ids = [
            "bff-partner:standard:acme",
            "bff-mobile:default:user-0042",
            "bff-web:feed:ip:2001:db8::1",
            "bff-mobile:default:odd{sub}ject",
            "bff-mobile:default:odd}sub{ject",
            "bff-tv:user-7:/api/home:2024-01-01",
            &"ab".repeat(32),
        ];
        for id in ids {
            let slots: Vec<u16> = ["rl", "rlq", "cache", "apikey", "idem"]
                .iter()
                .map(|kind| slot(&r.key(kind, id)))
                .collect();
            assert!(slots.iter().all(|s| *s == slots[0]), "{id}: {slots:?}");
        }
        // Different ids spread over the cluster rather than all landing on one node.
        assert_ne!(slot(&r.key("rl", ids[0])), slot(&r.key("rl", ids[1])));
    }
}
