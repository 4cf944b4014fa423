//! A fixed quota per longer window (a partner's daily quota), on top of a policy's rate. Windows
//! are aligned to the Unix epoch, so a daily quota resets at midnight UTC on every gateway alike.
//! Times are milliseconds.

/// `limit` requests per `window_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Requests per window.
    pub limit: u64,
    /// The window, in milliseconds.
    pub window_ms: u64,
}

/// Requests counted in one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaState {
    /// Index of the window (`now / window_ms`).
    pub window: u64,
    /// Requests admitted in it.
    pub used: u64,
}

/// What the quota says about one more request at `now_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaCheck {
    /// Whether one more request fits.
    pub allowed: bool,
    /// Requests left after this one (0 when refused).
    pub remaining: u64,
    /// Milliseconds until the window ends.
    pub reset_ms: u64,
    /// The state to store if the request is admitted.
    pub next: QuotaState,
}

/// Checks one request against `quota` without changing anything.
pub fn check(state: Option<QuotaState>, now_ms: u64, quota: &Quota) -> QuotaCheck {
    let window = now_ms / quota.window_ms;
    let used = state.filter(|s| s.window == window).map_or(0, |s| s.used);
    let reset_ms = (window + 1) * quota.window_ms - now_ms;
    let allowed = used < quota.limit;
    QuotaCheck {
        allowed,
        remaining: if allowed { quota.limit - used - 1 } else { 0 },
        reset_ms,
        next: QuotaState {
            window,
            used: used + u64::from(allowed),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_a_window_and_resets_at_its_end() {
        let q = Quota {
            limit: 2,
            window_ms: 86_400_000,
        };
        let a = check(None, 1_000, &q);
        assert!(a.allowed && a.remaining == 1 && a.reset_ms == 86_399_000);
        let b = check(Some(a.next), 2_000, &q);
        assert!(b.allowed && b.remaining == 0);
        let c = check(Some(b.next), 3_000, &q);
        assert!(!c.allowed);
        assert!(check(Some(b.next), 86_400_000, &q).allowed, "a new day");
    }
}
