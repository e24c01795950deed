//! Time, injectable so that tests of expiry, grace periods and rate limits move a clock instead
//! of sleeping: wall-clock instants, and a monotonic reading for intervals (the key rate limits
//! read it through governor's clock abstraction; see `proxy::limits`).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use jiff::Timestamp;

pub trait WallClock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;

    /// Time since some fixed start that never goes back, for intervals that a step of the wall
    /// clock (NTP, a resumed VM) must not upset, such as a rate limit's bucket.
    fn monotonic(&self) -> Duration;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn monotonic(&self) -> Duration {
        static START: LazyLock<Instant> = LazyLock::new(Instant::now);
        START.elapsed()
    }
}

/// A clock that moves only when told to. For tests.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        ManualClock(Arc::new(AtomicI64::new(start.as_millisecond())))
    }

    pub fn advance(&self, by: std::time::Duration) {
        self.0.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }

    pub fn set(&self, to: Timestamp) {
        self.0.store(to.as_millisecond(), Ordering::SeqCst);
    }
}

impl WallClock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millisecond(self.0.load(Ordering::SeqCst)).expect("stored from a Timestamp")
    }

    /// Its own time since the Unix epoch: it moves exactly as the test moves it.
    fn monotonic(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.0.load(Ordering::SeqCst)).unwrap_or(0))
    }
}

/// `at` without its fraction of a second: key times are kept, stored and shown in whole
/// seconds (`2027-01-31T00:00:00Z`), whatever the clock or the client gave.
pub fn whole_second(at: Timestamp) -> Timestamp {
    Timestamp::from_second(at.as_second()).unwrap_or(at)
}

/// The clock the gateway runs with.
pub type Clock = Arc<dyn WallClock>;

pub fn system_clock() -> Clock {
    Arc::new(SystemClock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_second_drops_the_fraction_only() {
        for (at, whole) in [
            ("2027-01-31T10:00:00.999999999Z", "2027-01-31T10:00:00Z"),
            ("2027-01-31T10:00:00Z", "2027-01-31T10:00:00Z"),
        ] {
            let at: Timestamp = at.parse().unwrap();
            assert_eq!(whole_second(at).to_string(), whole);
        }
    }
}
