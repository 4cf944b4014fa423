//! The Redis GCRA store: one atomic script per decision, on Redis's own clock, so any number of
//! gateways sharing one Redis admit exactly the limit. Every key gets a TTL equal to the time its
//! state stays meaningful, so nothing is ever left behind.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;

use super::{Decision, Policy, RateLimitStore};
use crate::store::{Redis, StoreError, bounded};
use ::redis::Script;

/// KEYS[1] = the key; ARGV[1] = emission interval (µs); ARGV[2] = tolerance (µs).
/// Returns {allowed, remaining, reset_us, retry_after_us}. Mirrors `gcra::decide` exactly.
const GCRA_LUA: &str = r"
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
if new_tat - now > tolerance then
  return {0, 0, tat - now, new_tat - tolerance - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((tolerance - (new_tat - now)) / interval), new_tat - now, 0}
";

static GCRA: LazyLock<Script> = LazyLock::new(|| Script::new(GCRA_LUA));

/// Limits shared through Redis.
pub struct RedisStore {
    redis: Redis,
    bound: Duration,
}

impl RedisStore {
    /// A store on `redis`; each decision, connection wait included, is bounded by `bound`.
    pub fn new(redis: Redis, bound: Duration) -> Self {
        Self { redis, bound }
    }
}

#[async_trait]
impl RateLimitStore for RedisStore {
    async fn decide(&self, key: &str, policy: &Policy) -> Result<Decision, StoreError> {
        let key = self.redis.key("rl", key);
        let (allowed, remaining, reset_us, retry_after_us): (u8, u64, u64, u64) =
            bounded(self.bound, async {
                let mut conn = self.redis.conn().await?;
                Ok(GCRA
                    .key(key)
                    .arg(policy.interval_us)
                    .arg(policy.tolerance_us())
                    .invoke_async(&mut conn)
                    .await?)
            })
            .await?;
        Ok(Decision {
            allowed: allowed == 1,
            remaining,
            reset_us,
            retry_after_us,
        })
    }
}
