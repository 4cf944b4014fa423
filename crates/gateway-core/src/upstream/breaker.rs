//! A circuit breaker per upstream: after `failure_threshold` consecutive failures, or when at least
//! `error_rate` of the last 20 calls failed, it opens for `open_for`; then exactly one probe goes
//! through, whatever the concurrency; the probe's success closes it, its failure (or
//! cancellation) opens it again.
//!
//! Only the upstream's own faults count: timeouts and failures. "Not found" and "rejected" are
//! answers, so they close rather than trip the breaker.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::UpstreamError;

/// Breaker settings.
#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    /// Consecutive failures that open the circuit; 0 disables the breaker.
    pub failure_threshold: u32,
    /// How long the circuit stays open before one probe may go through.
    pub open_for: Duration,
    /// Share of failures among the last [`WINDOW`] calls that opens the circuit; 0 disables.
    pub error_rate: f64,
}

/// Calls the error rate is measured over.
pub const WINDOW: u32 = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `recent` holds the last `seen` outcomes (up to [`WINDOW`]), one bit each, 1 for a failure.
    Closed {
        failures: u32,
        recent: u32,
        seen: u32,
    },
    Open {
        until: Instant,
    },
    HalfOpen,
}

/// What the breaker is doing now, for metrics and adaptive limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused.
    Open,
    /// One probe is in flight; other calls are refused.
    HalfOpen,
}

/// One upstream's breaker.
#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    state: Mutex<State>,
}

/// Permission for one call; report its outcome with [`Permit::record`]. Dropped without a record
/// (the call was cancelled), a probe counts as failed, so the circuit never stays half-open forever.
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    recorded: bool,
}

impl State {
    const CLOSED: State = State::Closed {
        failures: 0,
        recent: 0,
        seen: 0,
    };
}

impl Breaker {
    fn rate_exceeded(&self, recent: u32, seen: u32) -> bool {
        let rate = self.settings.error_rate;
        if rate <= 0.0 || seen < WINDOW {
            return false;
        }
        let mask = (1u32 << WINDOW) - 1;
        f64::from((recent & mask).count_ones()) >= rate * f64::from(WINDOW)
    }

    /// A closed breaker.
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            state: Mutex::new(State::CLOSED),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if Instant::now() >= until => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen => BreakerState::HalfOpen,
        }
    }

    /// Asks to make a call: `Err(CircuitOpen)` while open or while another call probes.
    pub fn try_acquire(&self) -> Result<Permit<'_>, UpstreamError> {
        if self.settings.failure_threshold == 0 {
            return Ok(Permit {
                breaker: self,
                probe: false,
                recorded: false,
            });
        }
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Ok(Permit {
                breaker: self,
                probe: false,
                recorded: false,
            }),
            State::Open { until } if Instant::now() >= until => {
                *state = State::HalfOpen;
                Ok(Permit {
                    breaker: self,
                    probe: true,
                    recorded: false,
                })
            }
            State::Open { .. } | State::HalfOpen => Err(UpstreamError::CircuitOpen),
        }
    }

    fn on_result(&self, failed: bool, probe: bool) {
        if self.settings.failure_threshold == 0 {
            return;
        }
        // The clock is read only when the circuit opens.
        let open = || State::Open {
            until: Instant::now() + self.settings.open_for,
        };
        let mut state = self.lock();
        *state = match (*state, failed) {
            (State::Closed { recent, seen, .. }, false) => State::Closed {
                failures: 0,
                recent: recent << 1,
                seen: seen.saturating_add(1),
            },
            (_, false) => State::CLOSED,
            (State::HalfOpen, true) if probe => open(),
            (
                State::Closed {
                    failures,
                    recent,
                    seen,
                },
                true,
            ) => {
                let (failures, recent, seen) =
                    (failures + 1, (recent << 1) | 1, seen.saturating_add(1));
                if failures >= self.settings.failure_threshold || self.rate_exceeded(recent, seen) {
                    open()
                } else {
                    State::Closed {
                        failures,
                        recent,
                        seen,
                    }
                }
            }
            // A non-probe call that started before the circuit opened: it changes nothing.
            (other, true) => other,
        };
    }
}

impl Permit<'_> {
    /// Records the call's outcome.
    pub fn record<T>(mut self, result: &Result<T, UpstreamError>) {
        self.recorded = true;
        let failed = matches!(
            result,
            Err(UpstreamError::Timeout | UpstreamError::Failed(_))
        );
        self.breaker.on_result(failed, self.probe);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.recorded && self.probe {
            self.breaker.on_result(true, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerSettings {
            failure_threshold: 3,
            open_for: Duration::from_secs(10),
            error_rate: 0.5,
        })
    }

    fn fail(b: &Breaker) {
        b.try_acquire()
            .expect("allowed")
            .record::<()>(&Err(UpstreamError::Timeout));
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_lets_exactly_one_probe_through() {
        let b = breaker();
        fail(&b);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(matches!(b.try_acquire(), Err(UpstreamError::CircuitOpen)));

        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = b.try_acquire().expect("one probe");
        for _ in 0..100 {
            assert!(
                b.try_acquire().is_err(),
                "only one probe, whatever the concurrency"
            );
        }
        probe.record::<()>(&Ok(()));
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.try_acquire().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_or_cancelled_probe_opens_it_again() {
        let b = breaker();
        (0..3).for_each(|_| fail(&b));
        tokio::time::advance(Duration::from_secs(10)).await;
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(10)).await;
        drop(b.try_acquire().expect("probe"));
        assert_eq!(
            b.state(),
            BreakerState::Open,
            "a cancelled probe counts as failed"
        );
    }

    #[test]
    fn half_of_the_last_twenty_calls_failing_opens_it() {
        let b = breaker();
        // Alternating: never three failures in a row, but half of every twenty.
        for i in 0..19 {
            let result: Result<(), _> = if i % 2 == 0 {
                Err(UpstreamError::Failed("x".into()))
            } else {
                Ok(())
            };
            b.try_acquire().expect("allowed").record(&result);
        }
        assert_eq!(b.state(), BreakerState::Closed, "not twenty calls yet");
        b.try_acquire()
            .expect("allowed")
            .record::<()>(&Err(UpstreamError::Timeout));
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn answers_are_not_failures() {
        let b = breaker();
        for _ in 0..10 {
            b.try_acquire()
                .expect("allowed")
                .record::<()>(&Err(UpstreamError::NotFound));
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
