//! The Redis store: one atomic script per decision (GCRA or sliding window), on Redis's own clock,
//! so any number of gateways sharing one Redis admit exactly the limit. Every key gets a TTL equal to the time its
//! state stays meaningful, so nothing is ever left behind.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;

use super::{Algorithm, Decision, Policy, RateLimitStore};
use crate::store::{Redis, StoreError};
use ::redis::Script;

/// The quota part every script shares (mirrors `quota::check`): KEYS[2] holds the window index
/// `w` and the count `n`; ARGV[3] is the quota (0: none), ARGV[4] its window in ms.
macro_rules! quota_lua {
    () => {
        r"
local function quota(now_ms)
  local qlimit = tonumber(ARGV[3])
  if qlimit == 0 then return true, -1, 0, nil, nil end
  local qwin = tonumber(ARGV[4])
  local w = math.floor(now_ms / qwin)
  local s = redis.call('HMGET', KEYS[2], 'w', 'n')
  local n = 0
  if tonumber(s[1]) == w then n = tonumber(s[2]) or 0 end
  local reset = (w + 1) * qwin - now_ms
  if n >= qlimit then return false, 0, reset, w, n end
  return true, qlimit - n - 1, reset, w, n + 1
end
local function commit_quota(w, n, reset)
  if w ~= nil then
    redis.call('HSET', KEYS[2], 'w', w, 'n', n)
    redis.call('PEXPIRE', KEYS[2], reset + 1)
  end
end
"
    };
}

/// GCRA. KEYS[1] = the TAT; ARGV[1] = emission interval (µs); ARGV[2] = tolerance (µs); quota
/// arguments as above. Returns {allowed, remaining, reset_us, retry_after_us, quota_remaining
/// (-1: no quota), quota_reset_us}. Mirrors `gcra::decide` and `Decision::with_quota` exactly.
pub const GCRA_LUA: &str = concat!(
    quota_lua!(),
    r"
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local qok, qrem, qreset, qw, qn = quota(math.floor(now / 1000))
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
if new_tat - now > tolerance then
  return {0, 0, tat - now, new_tat - tolerance - now, qrem, qreset * 1000}
end
local remaining = math.floor((tolerance - (new_tat - now)) / interval)
if not qok then
  return {0, remaining, new_tat - now, qreset * 1000, qrem, qreset * 1000}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
commit_quota(qw, qn, qreset)
return {1, remaining, new_tat - now, 0, qrem, qreset * 1000}
"
);

/// Sliding window. KEYS[1] = a hash of w, prev, cur; ARGV[1] = period (ms); ARGV[2] = limit;
/// quota arguments as above. Returns as `GCRA_LUA`. Mirrors `window::decide` exactly.
pub const WINDOW_LUA: &str = concat!(
    quota_lua!(),
    r"
local period = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local qok, qrem, qreset, qw, qn = quota(now)
local window = math.floor(now / period)
local elapsed = now - window * period
local s = redis.call('HMGET', KEYS[1], 'w', 'prev', 'cur')
local w, prev, cur = tonumber(s[1]), tonumber(s[2]) or 0, tonumber(s[3]) or 0
if w == window then
elseif w ~= nil and w + 1 == window then prev, cur = cur, 0
else prev, cur = 0, 0 end
local function reset(p, c)
  if c > 0 then return 2 * period - elapsed elseif p > 0 then return period - elapsed else return 0 end
end
local scaled = prev * (period - elapsed) + cur * period
if scaled + period > limit * period then
  local wait
  if cur < limit then
    local e = period - math.floor((limit - 1 - cur) * period / math.max(prev, 1))
    wait = math.max(e - elapsed, 1)
  else
    wait = (period - elapsed) + (period - math.floor((limit - 1) * period / cur))
  end
  return {0, 0, reset(prev, cur) * 1000, wait * 1000, qrem, qreset * 1000}
end
local used = math.ceil((scaled + period) / period)
if not qok then
  return {0, math.max(limit - used, 0), reset(prev, cur + 1) * 1000, qreset * 1000, qrem, qreset * 1000}
end
cur = cur + 1
redis.call('HSET', KEYS[1], 'w', window, 'prev', prev, 'cur', cur)
redis.call('PEXPIRE', KEYS[1], 2 * period - elapsed + 1)
commit_quota(qw, qn, qreset)
return {1, math.max(limit - used, 0), reset(prev, cur) * 1000, 0, qrem, qreset * 1000}
"
);

static GCRA: LazyLock<Script> = LazyLock::new(|| Script::new(GCRA_LUA));
static WINDOW: LazyLock<Script> = LazyLock::new(|| Script::new(WINDOW_LUA));

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
        let (rate_key, quota_key) = (self.redis.key("rl", key), self.redis.key("rlq", key));
        let (quota_limit, quota_window) = policy.quota.map_or((0, 1), |q| (q.limit, q.window_ms));
        let mut call = match policy.algorithm {
            Algorithm::Gcra => {
                let mut c = GCRA.key(rate_key);
                c.arg(policy.interval_us).arg(policy.tolerance_us());
                c
            }
            Algorithm::SlidingWindow => {
                let mut c = WINDOW.key(rate_key);
                c.arg(policy.period_ms()).arg(policy.limit);
                c
            }
        };
        call.key(quota_key).arg(quota_limit).arg(quota_window);
        type Reply = (u8, u64, u64, u64, i64, u64);
        let (allowed, remaining, reset_us, retry_after_us, quota_remaining, quota_reset_us): Reply =
            self.redis
                .run(self.bound, |mut conn| async move {
                    Ok(call.invoke_async(&mut conn).await?)
                })
                .await?;
        Ok(Decision {
            allowed: allowed == 1,
            remaining,
            reset_us,
            retry_after_us,
            quota_remaining: u64::try_from(quota_remaining).ok(),
            quota_reset_us,
        })
    }
}
