//! The shared Redis connection pool that every Redis-backed store (limits, cache, API keys,
//! idempotency records) draws from, and the key naming they all follow.

use std::time::Duration;

use std::sync::{Arc, RwLock};

use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::{Config as PoolSettings, Pool, PoolConfig, Runtime, Timeouts};

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
        if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
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
#[derive(Clone)]
pub struct Redis {
    pool: Pool,
    prefix: String,
    shared: Arc<RwLock<Option<MultiplexedConnection>>>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Redis {
    /// Builds the pool when `redis.url` is set. Connections are made lazily, so a Redis that is down
    /// at start-up delays nothing: stores apply their failure policy until it is back.
    pub fn from_config(cfg: &RedisConfig) -> Result<Option<Self>, ConfigError> {
        let Some(url) = &cfg.url else {
            return Ok(None);
        };
        let bound = Some(Duration::from_millis(cfg.timeout_ms));
        let settings = PoolSettings {
            url: Some(url.clone()),
            connection: None,
            pool: Some(PoolConfig {
                max_size: cfg.pool_size,
                timeouts: Timeouts {
                    wait: bound,
                    create: bound,
                    recycle: bound,
                },
                ..PoolConfig::default()
            }),
        };
        let pool = settings
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| ConfigError(format!("redis.url is not usable: {e}")))?;
        Ok(Some(Self {
            pool,
            prefix: cfg.key_prefix.clone(),
            shared: Arc::new(RwLock::new(None)),
        }))
    }

    /// `{prefix}:{kind}:{id}` with `id` in a hash tag, so one logical key never spans Redis Cluster slots.
    pub fn key(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{{{id}}}", self.prefix)
    }

    /// Runs `op` on the shared connection within `bound`. A failure to reach Redis (or a timeout)
    /// drops the shared connection, so the next operation takes a fresh, checked one from the pool.
    pub async fn run<T, F, Fut>(&self, bound: Duration, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
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

    async fn conn(&self) -> Result<MultiplexedConnection, StoreError> {
        let cached = self
            .shared
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(conn) = cached {
            return Ok(conn);
        }
        let pooled = self.pool.get().await?;
        let conn = MultiplexedConnection::clone(&pooled);
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
