//! Rate limits and quotas on the hot path (data plane).
//!
//! A request meets up to four limits: its key's rate limit, its customer's rate limit, its
//! key's quota and its customer's quota ([`LimitKind`]), and asks each for its route's cost. It
//! passes only if every one allows the cost, and is charged to each only then: a limit that
//! refuses spends nothing from the others. Two backends decide this, behind one seam
//! ([`Limiter`]) and held to the same answers by one conformance suite
//! (`tests/it/limiter_conformance.rs`):
//! - [`LocalLimits`] (`local.rs`): this process's limits, decided synchronously;
//! - `SharedLimits` (`super::shared_limits`): the fleet's, in Redis, one script call a check,
//!   falling back to the local limiter while Redis does not answer.
//!
//! Both take the same pieces: GCRA's arithmetic (`gcra.rs`, and its Lua twin), the quota
//! periods of [`crate::core::quota`], and [`Verdict::assemble`] (`verdict.rs`), which names
//! the refusing limit and gives the numbers of the `RateLimit-*` headers (`headers.rs`).
//! The throttle on client IPs that keep failing authentication is here too (`throttle.rs`).

mod gcra;
mod headers;
mod leased;
mod local;
mod throttle;
mod verdict;
mod warnings;

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

pub use headers::{number, DraftPolicies, LimitState};
pub use leased::{LeaseLink, LeaseOwner, Outcome, Want, RETRY as LEASE_RETRY, WAIT as LEASE_WAIT};
pub use local::{GatewayClock, KeyLimits, LocalLimits, Pending};
pub use throttle::IpThrottle;
pub use verdict::{Answer, LimitKind, Policy, Refused, Verdict};
pub use warnings::{crossed, Crossing, QuotaOwner, QuotaWarnings};

use crate::core::clock::WallClock;
use crate::core::key::RateLimitSpec;
use crate::core::quota::{QuotaChange, QuotaSpec, QuotaUse};
use crate::proxy::customers::Customer;
use crate::proxy::table::AuthKey;

/// A key or a customer, and the limits it holds.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The key's id or the customer's id.
    pub id: &'a str,
    pub rate: Option<&'a RateLimitSpec>,
    pub quota: Option<&'a QuotaSpec>,
}

impl Subject<'_> {
    pub fn has_limits(&self) -> bool {
        self.rate.is_some() || self.quota.is_some()
    }
}

/// What one request asks of its limits.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    /// The key's sequence number in the key table: where the local limiter keeps its state.
    pub seq: u64,
    pub key: Subject<'a>,
    /// The key's customer, when it has one, even one without limits: in Redis its id names the
    /// hash tag of all the key's counters (see `shared_limits`).
    pub customer: Option<Subject<'a>>,
    /// The route's `cost`.
    pub cost: NonZeroU32,
}

impl<'a> Check<'a> {
    /// The key's rate limit, when it is the check's one limit: no quota, and no customer
    /// with limits of its own (the common case, which the local limiter answers on its own
    /// short path).
    pub fn rate_only(&self) -> Option<&'a RateLimitSpec> {
        let others = self.key.quota.is_some() || self.customer.is_some_and(|c| c.has_limits());
        if others {
            None
        } else {
            self.key.rate
        }
    }

    /// A check of a key's rate limit alone, at cost 1.
    pub fn key_rate(seq: u64, id: &'a str, spec: &'a RateLimitSpec) -> Self {
        Check {
            seq,
            key: Subject {
                id,
                rate: Some(spec),
                quota: None,
            },
            customer: None,
            cost: NonZeroU32::MIN,
        }
    }
}

/// What step 8 asks of a key: its rate limit (its own or the configured default) and its quota,
/// at the route's cost. Made in place; checked at once locally, or in the exchange when the
/// limits are shared.
#[derive(Debug, Clone)]
pub struct KeyAsk {
    pub rate: RateLimitSpec,
    pub cost: NonZeroU32,
    /// The key's customer, when it has a customer object with limits
    /// ([`crate::proxy::customers::CustomerMap`]): shared, not copied.
    pub customer: Option<Arc<Customer>>,
}

impl KeyAsk {
    /// The check of `key`: its limits and, when it has a customer, the customer's (none when
    /// the customer has no object; its id still names the key's Redis hash tag). The
    /// customer's id is the map's copy when there is one (no UTF-8 check of the key's).
    pub fn check<'a>(&'a self, key: &'a AuthKey) -> Check<'a> {
        let customer = match (&self.customer, &key.customer_id) {
            (Some(customer), _) => Some(Subject {
                id: &customer.id,
                rate: customer.limits.rate.as_ref(),
                quota: customer.limits.quota.as_ref(),
            }),
            (None, Some(id)) => Some(Subject {
                id,
                rate: None,
                quota: None,
            }),
            (None, None) => None,
        };
        Check {
            seq: key.seq,
            key: Subject {
                id: &key.id,
                rate: Some(&self.rate),
                quota: key.quota(),
            },
            customer,
            cost: self.cost,
        }
    }
}

/// Whose quota an operator reads, tops up or resets.
#[derive(Debug, Clone, Copy)]
pub enum Owner<'a> {
    Key {
        seq: u64,
        id: &'a str,
        /// The key's customer: it names the Redis hash tag of the key's counters.
        customer: Option<&'a str>,
    },
    Customer {
        id: &'a str,
    },
}

/// The shared backend did not answer in time; the caller decides locally or reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the shared rate-limit backend did not answer")]
pub struct Unavailable;

/// The limiter seam: what either backend does. The request path calls the local limiter
/// synchronously ([`LocalLimits::admit`]) and awaits only the shared one.
pub trait Limiter: Sync {
    /// Asks every limit of `check` for its cost; charges them all, or none.
    fn admit(&self, check: &Check<'_>) -> impl Future<Output = Result<Verdict, Unavailable>> + Send;

    /// Reads, tops up or resets the current period of a quota.
    fn quota(
        &self,
        owner: Owner<'_>,
        spec: &QuotaSpec,
        change: QuotaChange,
    ) -> impl Future<Output = Result<QuotaUse, Unavailable>> + Send;
}

impl<C: WallClock> Limiter for LocalLimits<C> {
    async fn admit(&self, check: &Check<'_>) -> Result<Verdict, Unavailable> {
        Ok(LocalLimits::admit(self, check))
    }

    async fn quota(
        &self,
        owner: Owner<'_>,
        spec: &QuotaSpec,
        change: QuotaChange,
    ) -> Result<QuotaUse, Unavailable> {
        Ok(LocalLimits::quota(self, owner, spec, change))
    }
}

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

impl Decision {
    /// The limit's numbers, either way.
    pub fn state(&self) -> LimitState {
        match *self {
            Decision::Allowed(state) | Decision::Limited { state, .. } => state,
        }
    }
}

pub(crate) fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}
