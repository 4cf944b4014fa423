//! The generic cell rate algorithm: one timestamp of state per key (the theoretical arrival time,
//! TAT), exact, and cheap enough to run inside one Redis script. Times are microseconds.

use super::{Decision, Policy};

/// Decides one request at `now` against the stored `tat`; returns the TAT to store when admitted.
///
/// A TAT at or before `now` carries no information (the bucket is full), which is what lets the
/// in-memory store drop such entries without changing any future decision.
pub fn decide(tat: Option<u64>, now: u64, policy: &Policy) -> (Option<u64>, Decision) {
    let interval = policy.interval_us;
    let tolerance = policy.tolerance_us();
    let base = tat.unwrap_or(now).max(now);
    let new_tat = base + interval;
    if new_tat - now > tolerance {
        let decision = Decision {
            allowed: false,
            remaining: 0,
            reset_us: base - now,
            retry_after_us: new_tat - tolerance - now,
            ..Decision::default()
        };
        return (None, decision);
    }
    let decision = Decision {
        allowed: true,
        remaining: (tolerance - (new_tat - now)) / interval,
        reset_us: new_tat - now,
        retry_after_us: 0,
        ..Decision::default()
    };
    (Some(new_tat), decision)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn policy(limit: u64, period: u64, burst: u64) -> Policy {
        Policy::new(
            "p",
            super::super::Algorithm::Gcra,
            limit,
            Duration::from_secs(period),
            burst,
        )
    }

    #[test]
    fn admits_exactly_the_burst_then_refuses() {
        let p = policy(100, 60, 100);
        let mut tat = None;
        for i in 0..100 {
            let (next, d) = decide(tat, 1_000_000, &p);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 99 - i);
            tat = next;
        }
        let (next, d) = decide(tat, 1_000_000, &p);
        assert!(!d.allowed);
        assert_eq!(next, None);
        assert_eq!(d.retry_after_us, 600_000, "one emission interval");
        assert_eq!(d.reset_us, 60_000_000, "a full minute to refill");
    }

    #[test]
    fn refills_one_request_per_interval() {
        let p = policy(10, 1, 2);
        let (tat, _) = decide(None, 0, &p);
        let (tat, d) = decide(tat, 0, &p);
        assert!(d.allowed && d.remaining == 0);
        assert!(!decide(tat, 99_999, &p).1.allowed);
        assert!(decide(tat, 100_000, &p).1.allowed);
    }

    #[test]
    fn a_stale_tat_counts_as_a_full_bucket() {
        let p = policy(5, 1, 5);
        assert_eq!(decide(Some(10), 1_000_000, &p), decide(None, 1_000_000, &p));
    }
}
