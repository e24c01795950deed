//! GCRA, the arithmetic of one rate-limit bucket (pure). A bucket is one number, its
//! theoretical arrival time (TAT): when it would be full again if nothing more were taken. A
//! request of cost `c` is allowed when taking `c` emission intervals leaves the TAT no further
//! than a full burst ahead of now. The local limiter runs this on nanoseconds of the gateway's
//! monotonic clock; the Redis script (`shared_limits/script.rs`) runs the same steps in Lua on
//! microseconds, and the conformance suite holds the two to the same answers.

use std::time::Duration;

use super::verdict::Answer;
use crate::core::key::RateLimitSpec;

/// A rate limit as GCRA holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Nanoseconds per request, at least 1.
    interval: u64,
    burst: u32,
}

impl Gcra {
    pub fn new(spec: &RateLimitSpec) -> Self {
        let interval = spec.per.as_nanos() / u128::from(spec.requests.get());
        Gcra {
            interval: u64::try_from(interval).unwrap_or(u64::MAX).max(1),
            burst: spec.burst().get(),
        }
    }

    /// Asks a bucket at `tat` for `cost` at `now`: the new TAT if it allows it, or how long
    /// until it would.
    pub fn take(&self, tat: u64, now: u64, cost: u32) -> Result<u64, Duration> {
        let new_tat = i128::from(tat.max(now)) + self.span(cost);
        let allow_at = new_tat - self.span(self.burst);
        if allow_at > i128::from(now) {
            return Err(nanos(allow_at - i128::from(now)));
        }
        Ok(u64::try_from(new_tat).unwrap_or(u64::MAX))
    }

    /// A bucket at `tat` seen at `now`: requests it allows at once, and how long until it is
    /// full again.
    pub fn state(&self, tat: u64, now: u64) -> (u32, Duration) {
        let tat = i128::from(tat.max(now));
        let room = i128::from(now) + self.span(self.burst) - tat;
        let remaining = (room / i128::from(self.interval)).clamp(0, i128::from(self.burst));
        let remaining = u32::try_from(remaining).unwrap_or(self.burst);
        (remaining, nanos(tat - i128::from(now)))
    }

    /// `n` emission intervals, in nanoseconds.
    fn span(&self, n: u32) -> i128 {
        i128::from(self.interval) * i128::from(n)
    }
}

fn nanos(n: i128) -> Duration {
    Duration::from_nanos(u64::try_from(n.max(0)).unwrap_or(u64::MAX))
}

/// One rate limit's bucket in the local limiter: its spec, its arithmetic and its TAT.
pub(super) struct Bucket {
    pub spec: RateLimitSpec,
    pub gcra: Gcra,
    /// Theoretical arrival time, in nanoseconds of the monotonic clock.
    pub tat: u64,
}

impl Bucket {
    /// The bucket in `slot` for `spec`; a changed limit starts afresh.
    pub fn of<'a>(slot: &'a mut Option<Bucket>, spec: &RateLimitSpec) -> &'a mut Bucket {
        if slot.as_ref().is_none_or(|bucket| bucket.spec != *spec) {
            *slot = None;
        }
        slot.get_or_insert_with(|| Bucket {
            spec: *spec,
            gcra: Gcra::new(spec),
            tat: 0,
        })
    }

    /// Charges the bucket when the check is `admitted`, and answers with its state after.
    pub fn answer(&mut self, admitted: bool, cost: u32, tick: u64) -> Answer {
        let taken = self.gcra.take(self.tat, tick, cost);
        if let (true, Ok(tat)) = (admitted, taken) {
            self.tat = tat;
        }
        let (remaining, reset) = self.gcra.state(self.tat, tick);
        Answer::Rate {
            spec: self.spec,
            allowed: taken.map(drop),
            remaining,
            reset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    const SECOND: u64 = 1_000_000_000;

    fn gcra(requests: u32, per_secs: u64, burst: u32) -> Gcra {
        Gcra::new(&RateLimitSpec {
            requests: NonZeroU32::new(requests).unwrap(),
            per: Duration::from_secs(per_secs),
            burst: NonZeroU32::new(burst),
        })
    }

    #[test]
    fn a_bucket_allows_its_burst_at_once_then_one_per_interval() {
        let two_a_second = gcra(2, 1, 2);
        let mut tat = 0;
        for expected in [1, 0] {
            tat = two_a_second.take(tat, 0, 1).unwrap();
            assert_eq!(two_a_second.state(tat, 0).0, expected);
        }
        assert_eq!(two_a_second.take(tat, 0, 1), Err(Duration::from_millis(500)));
        assert_eq!(two_a_second.state(tat, 0), (0, Duration::from_secs(1)));
        assert!(two_a_second.take(tat, SECOND / 2, 1).is_ok());
    }

    #[test]
    fn a_cost_takes_that_many_requests_or_none() {
        let ten = gcra(10, 10, 10);
        let tat = ten.take(0, 5 * SECOND, 4).unwrap();
        assert_eq!(ten.state(tat, 5 * SECOND), (6, Duration::from_secs(4)));
        assert_eq!(ten.take(tat, 5 * SECOND, 7), Err(Duration::from_secs(1)));
        assert!(ten.take(tat, 5 * SECOND, 6).is_ok());
        // More than a full bucket never passes.
        assert!(ten.take(0, 5 * SECOND, 11).is_err());
    }

    #[test]
    fn an_idle_bucket_is_full_whatever_its_old_tat() {
        let one = gcra(1, 60, 1);
        assert_eq!(one.state(0, 3600 * SECOND), (1, Duration::ZERO));
        assert!(one.take(0, 3600 * SECOND, 1).is_ok());
    }

    #[test]
    fn extreme_limits_saturate_rather_than_overflow() {
        let slow = gcra(1, u64::MAX / SECOND, u32::MAX);
        let tat = slow.take(u64::MAX - 1, u64::MAX, u32::MAX);
        assert!(tat.is_ok());
        assert_eq!(gcra(1, 1, 1).state(u64::MAX, 0).0, 0);
        assert_eq!(slow.state(0, u64::MAX), (u32::MAX, Duration::ZERO));
    }
}
