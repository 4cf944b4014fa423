//! Fault injection for resilience drills: by configuration, a share of an upstream's calls is
//! delayed, failed, or both.
//!
//! An injected error is [`UpstreamError::Failed`], exactly what a real outage produces, so the
//! breaker, retries and partial answers behave as they would then. An injected delay is spent
//! inside the call's timeout, as real latency would be: a delay longer than the timeout makes the
//! call time out.

use std::time::Duration;

use crate::config::FaultConfig;

use super::UpstreamError;

/// One upstream's configured faults.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    delay: Duration,
    delay_percent: f64,
    error_percent: f64,
}

/// What to do to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injected {
    /// Latency to add before the call.
    pub delay: Option<Duration>,
    /// Fail the call instead of making it.
    pub error: bool,
}

impl Faults {
    /// The faults of `cfg`, or `None` when they inject nothing, so an upstream without faults
    /// pays nothing per call.
    pub fn new(cfg: &FaultConfig) -> Option<Self> {
        let delays = cfg.delay_ms > 0 && cfg.delay_percent > 0.0;
        (delays || cfg.error_percent > 0.0).then_some(Self {
            delay: Duration::from_millis(cfg.delay_ms),
            delay_percent: if delays { cfg.delay_percent } else { 0.0 },
            error_percent: cfg.error_percent,
        })
    }

    /// Draws the faults of one call; delay and error independently.
    pub fn draw(&self) -> Injected {
        Injected {
            delay: hit(self.delay_percent).then_some(self.delay),
            error: hit(self.error_percent),
        }
    }
}

fn hit(percent: f64) -> bool {
    percent >= 100.0 || (percent > 0.0 && rand::random::<f64>() * 100.0 < percent)
}

/// The error an injected failure surfaces as.
pub fn injected_error() -> UpstreamError {
    UpstreamError::Failed("injected fault".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faults(delay_ms: u64, delay_percent: f64, error_percent: f64) -> Option<Faults> {
        Faults::new(&FaultConfig {
            delay_ms,
            delay_percent,
            error_percent,
        })
    }

    #[test]
    fn zero_percentages_inject_nothing() {
        assert!(faults(0, 0.0, 0.0).is_none());
        assert!(faults(500, 0.0, 0.0).is_none());
    }

    #[test]
    fn one_hundred_percent_always_injects() {
        let f = faults(200, 100.0, 100.0).expect("faults");
        for _ in 0..100 {
            assert_eq!(
                f.draw(),
                Injected {
                    delay: Some(Duration::from_millis(200)),
                    error: true
                }
            );
        }
    }

    #[test]
    fn a_share_of_calls_is_failed() {
        let f = faults(0, 0.0, 25.0).expect("faults");
        let failed = (0..10_000).filter(|_| f.draw().error).count();
        // 25% of 10,000: the standard deviation is about 43 calls.
        assert!((2_250..=2_750).contains(&failed), "{failed}");
        assert!((0..1_000).all(|_| f.draw().delay.is_none()));
    }
}
