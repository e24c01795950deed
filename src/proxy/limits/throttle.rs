//! The throttle on client IPs that keep failing authentication (data plane), on governor's
//! GCRA, generic over its clock so tests move a fake clock instead of sleeping.

use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use super::ceil_secs;
use crate::core::key::RateLimitSpec;
use crate::core::units::Rate;

type Limiter<C> = RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>;

fn quota(spec: &RateLimitSpec) -> Quota {
    // governor keeps the bucket in u64 nanoseconds: a time per request times the burst past
    // that would panic inside it. Validation refuses such limits; this keeps stored ones safe.
    let longest = Duration::from_nanos(u64::MAX / (u64::from(spec.burst().get()) + 1));
    let per_request = (spec.per / spec.requests.get()).min(longest);
    Quota::with_period(per_request.max(Duration::from_nanos(1)))
        .expect("period is at least 1ns")
        .allow_burst(spec.burst())
}

/// Throttles client IPs that fail authentication too often: past the allowance, the IP's failing
/// requests get 429 instead of 401 until its bucket has room again; its valid keys still pass.
/// `K` is what is throttled: the client IP on the proxy, the admin token's kind and the client
/// IP for `POST /v1/keys/verify`.
pub struct IpThrottle<C: Clock = DefaultClock, K = IpAddr> {
    /// Each failing client's bucket and when it last failed.
    failures: DashMap<K, (Limiter<C>, C::Instant)>,
    blocked: DashMap<K, C::Instant>,
    /// At least the entries of `blocked` (it may count one being added or removed): when it is
    /// 0, no IP is blocked, known without reading the map. `DashMap::is_empty` takes every
    /// shard's read lock, which every failed authentication would pay.
    blocked_count: AtomicUsize,
    quota: Quota,
    clock: C,
}

impl<K: Eq + Hash + Copy> IpThrottle<DefaultClock, K> {
    pub fn new(allowance: Rate) -> Self {
        Self::with_clock(allowance, DefaultClock::default())
    }
}

impl<C: Clock + Clone, K: Eq + Hash + Copy> IpThrottle<C, K> {
    pub fn with_clock(allowance: Rate, clock: C) -> Self {
        let spec = RateLimitSpec::from_rate(allowance, None);
        IpThrottle {
            failures: DashMap::new(),
            blocked: DashMap::new(),
            blocked_count: AtomicUsize::new(0),
            quota: quota(&spec),
            clock,
        }
    }

    /// Seconds the IP must still wait, if it is throttled now.
    pub fn throttled(&self, ip: K) -> Option<u64> {
        if self.blocked_count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let until = *self.blocked.get(&ip)?;
        let now = self.clock.now();
        if until > now {
            let wait: Duration = until.duration_since(now).into();
            return Some(ceil_secs(wait).max(1));
        }
        if self.blocked.remove_if(&ip, |_, until| *until <= now).is_some() {
            self.blocked_count.fetch_sub(1, Ordering::AcqRel);
        }
        None
    }

    /// Counts a failed authentication; once the allowance is spent, the IP is blocked until the
    /// next failure would be allowed.
    pub fn record_failure(&self, ip: K) {
        let now = self.clock.now();
        let outcome = {
            let mut entry = self.failures.entry(ip).or_insert_with(|| {
                let limiter = RateLimiter::direct_with_clock(self.quota, self.clock.clone())
                    .with_middleware::<StateInformationMiddleware>();
                (limiter, now)
            });
            entry.1 = now;
            entry.0.check()
        };
        let until = match outcome {
            Ok(snapshot) if snapshot.remaining_burst_capacity() == 0 => {
                now + self.quota.replenish_interval().into()
            }
            Ok(_) => return,
            Err(not_until) => not_until.earliest_possible(),
        };
        // Counted before it is in the map, uncounted after it has left: never fewer.
        self.blocked_count.fetch_add(1, Ordering::AcqRel);
        if self.blocked.insert(ip, until).is_some() {
            self.blocked_count.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Drops the state of IPs whose buckets are full again, so the maps stay small.
    pub fn forget_idle(&self) {
        let now = self.clock.now();
        let mut removed = 0;
        self.blocked.retain(|_, until| {
            let keep = *until > now;
            removed += usize::from(!keep);
            keep
        });
        self.blocked_count.fetch_sub(removed, Ordering::AcqRel);
        let refill: Duration = self.quota.replenish_interval() * self.quota.burst_size().get();
        self.failures
            .retain(|_, (_, last)| Duration::from(now.duration_since(*last)) < refill);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn an_ip_is_throttled_after_its_allowance_of_failures() {
        let clock = FakeRelativeClock::default();
        let throttle = IpThrottle::with_clock("3/m".parse().unwrap(), clock.clone());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..2 {
            throttle.record_failure(ip);
            assert_eq!(throttle.throttled(ip), None);
        }
        throttle.record_failure(ip);
        assert_eq!(throttle.throttled(ip), Some(20));
        assert_eq!(throttle.throttled(other), None);
        clock.advance(Duration::from_secs(20));
        assert_eq!(throttle.throttled(ip), None);
    }

    #[test]
    fn an_ip_blocked_again_after_its_block_was_forgotten_is_throttled_again() {
        let clock = FakeRelativeClock::default();
        let throttle = IpThrottle::with_clock("1/m".parse().unwrap(), clock.clone());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        throttle.record_failure(ip);
        throttle.record_failure(ip);
        assert!(throttle.throttled(ip).is_some());
        clock.advance(Duration::from_secs(120));
        throttle.forget_idle();
        assert_eq!(throttle.throttled(ip), None);
        for _ in 0..3 {
            throttle.record_failure(ip);
        }
        assert!(throttle.throttled(ip).is_some());
        // Blocked twice while blocked: one entry, and its expiry uncounts it once.
        clock.advance(Duration::from_secs(600));
        assert_eq!(throttle.throttled(ip), None);
        assert_eq!(throttle.blocked_count.load(Ordering::Relaxed), 0);
    }
}
