//! Time. Every deadline in pinwheel (lease break times, restore deadlines, quarantines) is read
//! from a [`Clock`], so tests drive time with a [`ManualClock`] instead of sleeping.
//!
//! Waiting: a waiter keeps its own condition variable (it knows what it waits for) and asks the
//! clock how long it may block in real time before looking at the clock again
//! ([`Clock::real_wait_budget`]). A real clock answers "until the deadline"; a manual clock
//! answers a short poll interval and wakes pollers when the test advances it.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// A source of time, measured from the clock's own epoch.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Time since the clock's epoch.
    fn now(&self) -> Duration;

    /// How long a waiter may block in real time before checking the clock again, given its
    /// deadline; `None` once the deadline has passed.
    fn real_wait_budget(&self, deadline: Duration) -> Option<Duration>;

    /// Blocks the calling thread until `now() >= deadline`.
    fn sleep_until(&self, deadline: Duration);
}

/// The wall clock (monotonic).
#[derive(Debug)]
pub struct RealClock {
    epoch: Instant,
}

impl RealClock {
    /// A real clock whose epoch is now.
    pub fn new() -> Arc<RealClock> {
        Arc::new(RealClock { epoch: Instant::now() })
    }
}

impl Clock for RealClock {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }
    fn real_wait_budget(&self, deadline: Duration) -> Option<Duration> {
        deadline.checked_sub(self.now()).filter(|d| !d.is_zero())
    }
    fn sleep_until(&self, deadline: Duration) {
        if let Some(d) = self.real_wait_budget(deadline) {
            std::thread::sleep(d);
        }
    }
}

/// A clock that only moves when told to: for tests of deadlines.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: Mutex<Duration>,
    moved: Condvar,
}

/// How often waiters on a manual clock look at it again (real time).
const MANUAL_POLL: Duration = Duration::from_millis(2);

impl ManualClock {
    /// A manual clock at time zero.
    pub fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock::default())
    }
    /// Moves time forward by `d` and wakes sleepers.
    pub fn advance(&self, d: Duration) {
        let mut now = self.now.lock();
        *now = now.saturating_add(d);
        self.moved.notify_all();
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        *self.now.lock()
    }
    fn real_wait_budget(&self, deadline: Duration) -> Option<Duration> {
        if self.now() >= deadline { None } else { Some(MANUAL_POLL) }
    }
    fn sleep_until(&self, deadline: Duration) {
        let mut now = self.now.lock();
        while *now < deadline {
            self.moved.wait(&mut now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_manual_moves_only_when_advanced() {
        let c = ManualClock::new();
        assert_eq!(c.now(), Duration::ZERO);
        assert!(c.real_wait_budget(Duration::from_secs(45)).is_some());
        c.advance(Duration::from_secs(45));
        assert_eq!(c.real_wait_budget(Duration::from_secs(45)), None);
    }

    #[test]
    fn clock_manual_sleep_wakes_on_advance() {
        let c = ManualClock::new();
        let c2 = Arc::clone(&c);
        let t = std::thread::spawn(move || c2.sleep_until(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(10));
        assert!(!t.is_finished());
        c.advance(Duration::from_secs(10));
        t.join().expect("sleeper");
    }

    #[test]
    fn clock_real_budget_shrinks() {
        let c = RealClock::new();
        let b = c.real_wait_budget(Duration::from_secs(3600)).expect("future");
        assert!(b <= Duration::from_secs(3600));
        assert_eq!(c.real_wait_budget(Duration::ZERO), None);
    }
}
