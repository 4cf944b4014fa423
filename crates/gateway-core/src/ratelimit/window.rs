//! The sliding-window counter (as Cloudflare and many gateways use it): two fixed windows, the
//! previous one weighted by how much of it still overlaps the sliding window. Unlike GCRA it keeps
//! "`limit` per `period`" literally: the 101st call within a minute of a 100-a-minute policy is
//! refused however the calls are spread. Times are milliseconds.

use super::{Decision, Policy};

/// Counters of the current and previous window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowState {
    /// Index of the current window (`now / period`).
    pub window: u64,
    /// Requests admitted in the previous window.
    pub prev: u64,
    /// Requests admitted in the current window.
    pub cur: u64,
}

impl WindowState {
    /// Whether the state can no longer influence a decision at `now_ms` (both windows are past).
    pub fn expired(&self, now_ms: u64, period_ms: u64) -> bool {
        now_ms >= self.expires_at_ms(period_ms)
    }

    /// The first moment the state is [`expired`](Self::expired): the end of the window after the
    /// current one.
    pub fn expires_at_ms(&self, period_ms: u64) -> u64 {
        self.window.saturating_add(2).saturating_mul(period_ms)
    }
}

/// Decides one request at `now_ms`; returns the state to store when admitted.
pub fn decide(
    state: Option<WindowState>,
    now_ms: u64,
    policy: &Policy,
) -> (Option<WindowState>, Decision) {
    let period = policy.period_ms();
    let limit = policy.limit;
    let window = now_ms / period;
    let elapsed = now_ms % period;
    let (prev, cur) = match state {
        Some(s) if s.window == window => (s.prev, s.cur),
        Some(s) if s.window + 1 == window => (s.cur, 0),
        _ => (0, 0),
    };
    // The estimate, scaled by `period` to stay in integers: prev * (period - elapsed) / period + cur.
    let scaled =
        u128::from(prev) * u128::from(period - elapsed) + u128::from(cur) * u128::from(period);
    let capacity = u128::from(limit) * u128::from(period);
    let ms = |v: u64| v.saturating_mul(1000);
    if scaled + u128::from(period) > capacity {
        let wait = if cur < limit {
            // The previous window must decay until prev * (period - e) <= (limit - 1 - cur) * period.
            let allowed = u128::from(limit - 1 - cur) * u128::from(period);
            let e = u128::from(period) - allowed / u128::from(prev.max(1));
            (e as u64).saturating_sub(elapsed).max(1)
        } else {
            // Only the next window can admit it, once this window's count has decayed enough.
            let e = u128::from(period)
                - u128::from(limit.saturating_sub(1)) * u128::from(period) / u128::from(cur);
            (period - elapsed) + e as u64
        };
        let decision = Decision {
            allowed: false,
            remaining: 0,
            reset_us: ms(reset(prev, cur, period, elapsed)),
            retry_after_us: ms(wait),
            ..Decision::default()
        };
        return (None, decision);
    }
    let cur = cur + 1;
    let used = (scaled + u128::from(period)).div_ceil(u128::from(period)) as u64;
    let decision = Decision {
        allowed: true,
        remaining: limit.saturating_sub(used),
        reset_us: ms(reset(prev, cur, period, elapsed)),
        retry_after_us: 0,
        ..Decision::default()
    };
    (Some(WindowState { window, prev, cur }), decision)
}

/// Time until every admitted request has left the sliding window.
fn reset(prev: u64, cur: u64, period: u64, elapsed: u64) -> u64 {
    match (prev, cur) {
        (_, 1..) => 2 * period - elapsed,
        (1.., 0) => period - elapsed,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::Algorithm;
    use std::time::Duration;

    fn policy(limit: u64) -> Policy {
        Policy::new(
            "p",
            Algorithm::SlidingWindow,
            limit,
            Duration::from_secs(60),
            limit,
        )
    }

    #[test]
    fn admits_the_limit_within_a_window_however_spread() {
        let p = policy(100);
        let mut state = None;
        for i in 0..100u64 {
            let (next, d) = decide(state, 1_000 + i * 500, &p);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 99 - i);
            state = next;
        }
        let (_, d) = decide(state, 55_000, &p);
        assert!(!d.allowed);
        assert_eq!(
            d.retry_after_us,
            5_000_000 + 60_000_000 - 59_400_000,
            "until the window has decayed by one request"
        );
    }

    #[test]
    fn the_previous_window_decays() {
        let p = policy(10);
        let full = Some(WindowState {
            window: 0,
            prev: 0,
            cur: 10,
        });
        // Just after the boundary the previous window still counts almost fully.
        assert!(!decide(full, 60_001, &p).1.allowed);
        // Half way through, half of it counts: 5 more fit.
        let mut state = full;
        let mut admitted = 0;
        for _ in 0..10 {
            let (next, d) = decide(state, 90_000, &p);
            if d.allowed {
                admitted += 1;
                state = next;
            }
        }
        assert_eq!(admitted, 5);
    }

    #[test]
    fn old_state_is_forgotten() {
        let p = policy(1);
        let s = WindowState {
            window: 0,
            prev: 5,
            cur: 5,
        };
        assert!(!s.expired(119_999, 60_000));
        assert!(s.expired(120_000, 60_000));
        assert!(decide(Some(s), 120_000, &p).1.allowed);
    }
}
