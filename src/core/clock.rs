//! Wall-clock time, injectable so that tests of expiry and grace periods move a clock instead of
//! sleeping. (Rate limits use governor's own clock abstraction; see `proxy::limits`.)

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use jiff::Timestamp;

pub trait WallClock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
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
