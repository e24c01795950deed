//! Quota warnings on the request path (data plane): notes that a charge carried a quota's use
//! across a share of its allowance (`[quotas] warn_at`), and hands the note to the control
//! plane, which logs it, counts it and queues its webhook. Noting is a few comparisons and, on
//! a crossing (a handful a period), one `try_send` on a bounded channel: never a store write,
//! never a wait. A full channel (thousands of notes behind) drops the note rather than wait.
//!
//! A charge crosses share `s` of an allowance `a` when the use before it was below
//! `ceil(s * a)` (at least 1) and the use after it is at least that. The use is the limiter's
//! own: exact with one gateway and with Redis (every charge sees the fleet's counter, so one
//! request alone sees each crossing); per replica in Redis's local fallback. With quota leases
//! the store sees the fleet's use, and the crossing is noted there instead (see
//! `control::quota_leases`), so this one is not asked.

use jiff::Timestamp;
use tokio::sync::mpsc;

use super::{Check, LimitKind, Verdict};
use crate::core::quota::warning_mark as mark;

/// Whose quota crossed a share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaOwner {
    Key,
    Customer,
}

impl QuotaOwner {
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaOwner::Key => "key",
            QuotaOwner::Customer => "customer",
        }
    }
}

/// A quota's use reaching a share of its allowance in one period.
#[derive(Debug, Clone, PartialEq)]
pub struct Crossing {
    pub kind: QuotaOwner,
    /// The key's or the customer's id.
    pub id: Box<str>,
    /// The share reached, one of `warn_at`.
    pub share: f64,
    /// The use after the charge that reached it, and the allowance (limit and top-ups).
    pub used: u64,
    pub limit: u64,
    /// The period: its start names it (for deduplication), its end is `resets_at`.
    pub period_start: Timestamp,
    pub resets_at: Option<Timestamp>,
}

/// The shares of `warn_at` that a use going from `before` to `after` of `allowance` reached.
pub fn crossed(warn_at: &[f64], allowance: u64, before: u64, after: u64) -> impl Iterator<Item = f64> + '_ {
    warn_at.iter().copied().filter(move |&share| {
        let mark = mark(share, allowance);
        before < mark && mark <= after
    })
}

/// The request path's end of the warnings.
pub struct QuotaWarnings {
    warn_at: Box<[f64]>,
    notes: mpsc::Sender<Crossing>,
}

/// Notes the channel holds before it drops new ones: far more than a period's crossings.
pub const CAPACITY: usize = 4096;

impl QuotaWarnings {
    /// Warnings at `warn_at`, noted into a channel whose receiver is returned.
    pub fn new(warn_at: &[f64]) -> (Self, mpsc::Receiver<Crossing>) {
        let (notes, receiver) = mpsc::channel(CAPACITY);
        let warnings = QuotaWarnings {
            warn_at: warn_at.into(),
            notes,
        };
        (warnings, receiver)
    }

    /// Notes every share an admitted `check` carried its quotas across.
    pub fn note(&self, check: &Check<'_>, verdict: &Verdict) {
        if self.warn_at.is_empty() || !verdict.is_admitted() {
            return;
        }
        let cost = u64::from(check.cost.get());
        let owners = [
            (LimitKind::KeyQuota, QuotaOwner::Key, Some(check.key.id)),
            (
                LimitKind::CustomerQuota,
                QuotaOwner::Customer,
                check.customer.map(|c| c.id),
            ),
        ];
        for (limit_kind, kind, id) in owners {
            let (Some(policy), Some(window), Some(id)) =
                (verdict.policy(limit_kind), verdict.window(limit_kind), id)
            else {
                continue;
            };
            // Admitted: the charge fit, so the use after it is the allowance less what remains.
            let after = policy.limit.saturating_sub(policy.remaining);
            let before = after.saturating_sub(cost);
            for share in crossed(&self.warn_at, policy.limit, before, after) {
                let crossing = Crossing {
                    kind,
                    id: id.into(),
                    share,
                    used: after,
                    limit: policy.limit,
                    period_start: window.start,
                    resets_at: window.end,
                };
                // Full: the control plane is far behind; a warning is not worth a wait.
                let _ = self.notes.try_send(crossing);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_is_crossed_once_by_the_charge_that_reaches_it() {
        let shares = [0.8, 1.0];
        let crossings = |before, after| crossed(&shares, 100, before, after).collect::<Vec<_>>();
        assert_eq!(crossings(78, 79), Vec::<f64>::new());
        assert_eq!(crossings(79, 80), [0.8]);
        assert_eq!(crossings(80, 81), Vec::<f64>::new());
        assert_eq!(crossings(99, 100), [1.0]);
        assert_eq!(crossings(70, 100), [0.8, 1.0]);
    }

    #[test]
    fn a_mark_is_rounded_up_and_at_least_one() {
        assert_eq!(mark(0.8, 3), 3);
        assert_eq!(mark(0.5, 3), 2);
        assert_eq!(mark(0.01, 3), 1);
        assert_eq!(mark(1.0, 0), 1);
    }
}
