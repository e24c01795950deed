//! Warnings that could come once per request (an upstream down under load), logged at most once
//! per interval with the count of those held back in between.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

pub struct Throttle {
    every: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    last: Option<Instant>,
    held_back: u64,
}

impl Throttle {
    pub fn new(every: Duration) -> Self {
        Throttle {
            every,
            state: Mutex::default(),
        }
    }

    /// The least time between two warnings.
    pub fn every(&self) -> Duration {
        self.every
    }

    /// `Some(held back since the last warning)` when a warning is due at `now`; `None` when
    /// this one is to be held back (and counted).
    pub fn due(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match state.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                state.held_back += 1;
                None
            }
            _ => {
                state.last = Some(now);
                Some(std::mem::take(&mut state.held_back))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::Throttle;

    #[test]
    fn one_warning_per_interval_says_how_many_were_held_back() {
        let throttle = Throttle::new(Duration::from_secs(10));
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(throttle.due(at(0)), Some(0));
        assert_eq!(throttle.due(at(1)), None);
        assert_eq!(throttle.due(at(9)), None);
        assert_eq!(throttle.due(at(10)), Some(2));
        assert_eq!(throttle.due(at(15)), None);
        assert_eq!(throttle.due(at(100)), Some(1));
        assert_eq!(throttle.due(at(200)), Some(0));
    }
}
