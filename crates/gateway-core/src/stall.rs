//! [`Stall`]: a bound on how long something that keeps waiting (a backend's answer, a client
//! taking an answer) may wait before it makes progress again.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The bound runs only while the bounded operation waits: progress that is already there costs
/// no timer (tower-http's `TimeoutBody` arms one for every chunk, and reads the clock to do it),
/// and one timer, made at the first wait, serves every wait after it.
pub(crate) struct Stall {
    after: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether `timer` bounds the current wait (set at its first `Pending`).
    armed: bool,
}

impl Stall {
    pub(crate) fn new(after: Duration) -> Self {
        Self {
            after,
            timer: None,
            armed: false,
        }
    }

    /// How long a wait may last.
    pub(crate) fn after(&self) -> Duration {
        self.after
    }

    /// The bounded operation made progress: its next wait is bounded afresh.
    pub(crate) fn progressed(&mut self) {
        self.armed = false;
    }

    /// The bounded operation is waiting: `Ready` once this wait has lasted `after`.
    pub(crate) fn poll_waited(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let after = self.after;
        let timer = match &mut self.timer {
            Some(timer) if self.armed => timer,
            Some(timer) => {
                timer.as_mut().reset(Instant::now() + after);
                timer
            }
            None => self.timer.insert(Box::pin(tokio::time::sleep(after))),
        };
        self.armed = true;
        timer.as_mut().poll(cx)
    }
}
