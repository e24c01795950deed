//! Rate limits on the hot path (data plane): each key's own limit, and the throttle on client
//! IPs that keep failing authentication. Both on governor's GCRA, generic over its clock so tests
//! move a fake clock instead of sleeping; the gateway's key limits run on its injected clock
//! ([`GatewayClock`]), so an integration test moves them with the same clock as key expiry.

use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use rustc_hash::FxBuildHasher;

use crate::core::key::RateLimitSpec;
use crate::core::units::Rate;

type Limiter<C> = RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>;

/// The numbers behind the `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitState {
    /// Requests a full bucket allows at once.
    pub limit: u32,
    pub remaining: u32,
    /// Whole seconds until the bucket is full again.
    pub reset: u64,
    /// The policy window, in whole seconds (at least 1), for the draft headers.
    pub window: u64,
}

impl LimitState {
    /// The `RateLimit-*` headers, and with `draft` the IETF draft's `RateLimit-Policy` and
    /// `RateLimit` pair.
    pub fn write_headers(&self, headers: &mut HeaderMap, draft: bool) {
        headers.insert(RATELIMIT_LIMIT, number(self.limit.into()));
        headers.insert(RATELIMIT_REMAINING, number(self.remaining.into()));
        headers.insert(RATELIMIT_RESET, number(self.reset));
        if draft {
            let policy = format!("\"key\";q={};w={}", self.limit, self.window);
            let current = format!("\"key\";r={};t={}", self.remaining, self.reset);
            for (name, value) in [(RATELIMIT_POLICY, policy), (RATELIMIT, current)] {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.insert(name, value);
                }
            }
        }
    }
}

/// A number as a header value. The first thousand are made once, for the life of the process,
/// so the usual `RateLimit-*` values cost no allocation or reference count per response.
pub fn number(n: u64) -> HeaderValue {
    const SHARED: u64 = 1000;
    static SMALL: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
        (0..SHARED)
            .map(|n| HeaderValue::from_static(n.to_string().leak()))
            .collect()
    });
    match usize::try_from(n) {
        Ok(i) if n < SHARED => SMALL[i].clone(),
        // Formatting on the stack and copying once saves an allocation but, measured, costs
        // more instructions than this.
        _ => HeaderValue::from(n),
    }
}

const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The outcome of a key's rate-limit check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed(LimitState),
    /// Refused; `retry_after` is whole seconds, at least 1.
    Limited {
        state: LimitState,
        retry_after: u64,
    },
}

fn quota(spec: &RateLimitSpec) -> Quota {
    // governor keeps the bucket in u64 nanoseconds: a time per request times the burst past
    // that would panic inside it. Validation refuses such limits; this keeps stored ones safe.
    let longest = Duration::from_nanos(u64::MAX / (u64::from(spec.burst().get()) + 1));
    let per_request = (spec.per / spec.requests.get()).min(longest);
    Quota::with_period(per_request.max(Duration::from_nanos(1)))
        .expect("period is at least 1ns")
        .allow_burst(spec.burst())
}

pub(crate) fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// governor's clock on the gateway's own ([`crate::core::clock::Clock`]): its monotonic reading,
/// the system's in production, a test's manual clock under test.
#[derive(Clone)]
pub struct GatewayClock(pub crate::core::clock::Clock);

impl Clock for GatewayClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        self.0.monotonic().into()
    }
}

struct Bucket<C: Clock> {
    spec: RateLimitSpec,
    limiter: Limiter<C>,
}

/// One GCRA bucket per key, made on the key's first request and replaced when its limit changes.
pub struct KeyLimits<C: Clock = DefaultClock> {
    /// By key sequence number (ours, not a client's: a fast hash is safe).
    buckets: DashMap<u64, Arc<Bucket<C>>, FxBuildHasher>,
    clock: C,
}

impl Default for KeyLimits<DefaultClock> {
    fn default() -> Self {
        Self::with_clock(DefaultClock::default())
    }
}

impl<C: Clock + Clone> KeyLimits<C> {
    pub fn with_clock(clock: C) -> Self {
        KeyLimits {
            buckets: DashMap::with_hasher_and_shard_amount(FxBuildHasher, 64),
            clock,
        }
    }

    /// Takes one request from key `seq`'s bucket.
    pub fn check(&self, seq: u64, spec: &RateLimitSpec) -> Decision {
        let bucket = self.bucket(seq, spec);
        let window = ceil_secs(spec.per).max(1);
        let limit = spec.burst().get();
        let refill = spec.per / spec.requests.get();
        match bucket.limiter.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let reset = ceil_secs(refill * (limit - remaining.min(limit)));
                Decision::Allowed(LimitState {
                    limit,
                    remaining,
                    reset,
                    window,
                })
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                let retry_after = ceil_secs(wait).max(1);
                let reset = ceil_secs(refill * limit).max(retry_after);
                let state = LimitState {
                    limit,
                    remaining: 0,
                    reset,
                    window,
                };
                Decision::Limited { state, retry_after }
            }
        }
    }

    fn bucket(&self, seq: u64, spec: &RateLimitSpec) -> Arc<Bucket<C>> {
        if let Some(bucket) = self.buckets.get(&seq).filter(|b| b.spec == *spec) {
            return bucket.clone();
        }
        let fresh = Arc::new(Bucket {
            spec: *spec,
            limiter: RateLimiter::direct_with_clock(quota(spec), self.clock.clone())
                .with_middleware::<StateInformationMiddleware>(),
        });
        let mut entry = self.buckets.entry(seq).or_insert_with(|| fresh.clone());
        if entry.spec != *spec {
            *entry = fresh;
        }
        entry.clone()
    }

    /// Forgets the buckets of keys that are gone.
    pub fn retain(&self, mut keep: impl FnMut(u64) -> bool) {
        self.buckets.retain(|seq, _| keep(*seq));
    }
}

/// Throttles client IPs that fail authentication too often: past the allowance, the IP's failing
/// requests get 429 instead of 401 until its bucket has room again; its valid keys still pass.
/// `K` is what is throttled: the client IP on the proxy, the admin token's kind and the client
/// IP for `POST /v1/keys/verify`.
pub struct IpThrottle<C: Clock = DefaultClock, K = IpAddr> {
    /// Each failing client's bucket and when it last failed.
    failures: DashMap<K, (Limiter<C>, C::Instant)>,
    blocked: DashMap<K, C::Instant>,
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
            quota: quota(&spec),
            clock,
        }
    }

    /// Seconds the IP must still wait, if it is throttled now.
    pub fn throttled(&self, ip: K) -> Option<u64> {
        if self.blocked.is_empty() {
            return None;
        }
        let until = *self.blocked.get(&ip)?;
        let now = self.clock.now();
        if until > now {
            let wait: Duration = until.duration_since(now).into();
            return Some(ceil_secs(wait).max(1));
        }
        self.blocked.remove_if(&ip, |_, until| *until <= now);
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
        self.blocked.insert(ip, until);
    }

    /// Drops the state of IPs whose buckets are full again, so the maps stay small.
    pub fn forget_idle(&self) {
        let now = self.clock.now();
        self.blocked.retain(|_, until| *until > now);
        let refill: Duration = self.quota.replenish_interval() * self.quota.burst_size().get();
        self.failures
            .retain(|_, (_, last)| Duration::from(now.duration_since(*last)) < refill);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::num::NonZeroU32;

    fn spec(requests: u32, per_secs: u64, burst: u32) -> RateLimitSpec {
        RateLimitSpec {
            requests: NonZeroU32::new(requests).unwrap(),
            per: Duration::from_secs(per_secs),
            burst: NonZeroU32::new(burst),
        }
    }

    #[test]
    fn numbers_read_as_their_decimal_text_cached_or_not() {
        for n in [0, 7, 999, 1000, 1001, 60_000, 1_000_000_000, u64::MAX] {
            assert_eq!(number(n).to_str().unwrap(), n.to_string(), "{n}");
        }
    }

    #[test]
    fn limits_past_what_governor_holds_are_clamped_not_a_panic() {
        let limits = KeyLimits::with_clock(FakeRelativeClock::default());
        for spec in [spec(1, 99_999_999 * 86_400, 1), spec(1, 86_400, u32::MAX)] {
            assert!(matches!(limits.check(7, &spec), Decision::Allowed(_)));
        }
    }

    #[test]
    fn a_key_gets_its_burst_then_waits_for_refill() {
        let clock = FakeRelativeClock::default();
        let limits = KeyLimits::with_clock(clock.clone());
        let spec = spec(2, 1, 2);
        let remaining: Vec<_> = (0..2)
            .map(|_| match limits.check(1, &spec) {
                Decision::Allowed(state) => state.remaining,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(remaining, [1, 0]);
        assert!(matches!(
            limits.check(1, &spec),
            Decision::Limited { retry_after: 1, .. }
        ));
        clock.advance(Duration::from_millis(500));
        assert!(matches!(limits.check(1, &spec), Decision::Allowed(_)));
    }

    #[test]
    fn keys_have_separate_buckets_and_a_changed_limit_starts_afresh() {
        let limits = KeyLimits::with_clock(FakeRelativeClock::default());
        let one = spec(1, 60, 1);
        assert!(matches!(limits.check(1, &one), Decision::Allowed(_)));
        assert!(matches!(limits.check(1, &one), Decision::Limited { .. }));
        assert!(matches!(limits.check(2, &one), Decision::Allowed(_)));
        assert!(matches!(limits.check(1, &spec(5, 60, 5)), Decision::Allowed(_)));
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        let limits = KeyLimits::with_clock(FakeRelativeClock::default());
        let slow = spec(1, 90, 1);
        limits.check(1, &slow);
        match limits.check(1, &slow) {
            Decision::Limited { retry_after, state } => {
                assert_eq!(retry_after, 90);
                assert_eq!((state.limit, state.remaining, state.window), (1, 0, 90));
            }
            other => panic!("{other:?}"),
        }
    }

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
}
