//! A multi-limit check's answer, the same from either backend: which limit refused, if any,
//! when to retry, and the state of every limit for the `RateLimit-*` headers. Each backend
//! reports one [`Answer`] per limit; [`Verdict::assemble`] turns them into the verdict, so the
//! choice of the limit to name and the header numbers cannot differ between backends.

use std::time::Duration;

use jiff::Timestamp;

use super::{ceil_secs, Decision, LimitState};
use crate::core::key::RateLimitSpec;
use crate::core::quota::{QuotaUse, Window};

/// The limits a request can meet, in the order they are checked and named in headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    KeyRate,
    CustomerRate,
    KeyQuota,
    CustomerQuota,
}

impl LimitKind {
    pub const ALL: [LimitKind; 4] = [
        LimitKind::KeyRate,
        LimitKind::CustomerRate,
        LimitKind::KeyQuota,
        LimitKind::CustomerQuota,
    ];

    /// The policy's name in the draft headers, and the refusal reason in the access log.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::KeyRate => "key",
            LimitKind::CustomerRate => "customer",
            LimitKind::KeyQuota => "quota",
            LimitKind::CustomerQuota => "customer_quota",
        }
    }

    pub fn is_quota(self) -> bool {
        match self {
            LimitKind::KeyQuota | LimitKind::CustomerQuota => true,
            LimitKind::KeyRate | LimitKind::CustomerRate => false,
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// 0 for the key's quota, 1 for the customer's; `None` for a rate limit.
    fn quota_index(self) -> Option<usize> {
        match self {
            LimitKind::KeyQuota => Some(0),
            LimitKind::CustomerQuota => Some(1),
            LimitKind::KeyRate | LimitKind::CustomerRate => None,
        }
    }
}

/// One limit's state after a check: a draft header policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// A rate limit's burst, or a quota's allowance this period (its limit plus top-ups).
    pub limit: u64,
    pub remaining: u64,
    /// Whole seconds until a rate limit's bucket is full again, or until a quota renews;
    /// `None`: a quota that never renews.
    pub reset: Option<u64>,
    /// The policy window in whole seconds: a rate limit's period (at least 1), a quota period's
    /// length; `None`: a quota that never renews.
    pub window: Option<u64>,
}

/// Why a check refused: the limit that lifts last (a quota that never renews lifts never).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub by: LimitKind,
    /// Whole seconds, at least 1; `None` for a quota that never renews.
    pub retry_after: Option<u64>,
    /// When a refusing quota renews.
    pub resets_at: Option<Timestamp>,
}

/// A check's outcome: admitted (every limit charged) or refused (none charged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Verdict {
    policies: [Option<Policy>; 4],
    /// The periods of the key's and the customer's quota the check counted in (warnings name
    /// them).
    windows: [Option<Window>; 2],
    pub refused: Option<Refused>,
}

/// One limit's answer to a check, before any other limit is considered.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    Rate {
        spec: RateLimitSpec,
        /// `Err`: refused; how long until it would allow the cost.
        allowed: Result<(), Duration>,
        /// Requests the bucket allows at once after the check.
        remaining: u32,
        /// Until the bucket is full again.
        reset: Duration,
    },
    Quota {
        allowed: bool,
        /// The quota after the check.
        state: QuotaUse,
        window: Window,
    },
}

impl Answer {
    fn allowed(&self) -> bool {
        match self {
            Answer::Rate { allowed, .. } => allowed.is_ok(),
            Answer::Quota { allowed, .. } => *allowed,
        }
    }

    fn policy(&self, now: Timestamp) -> Policy {
        match *self {
            Answer::Rate {
                spec,
                allowed,
                remaining,
                reset,
            } => Policy {
                limit: spec.burst().get().into(),
                remaining: remaining.into(),
                reset: Some(ceil_secs(reset).max(allowed.err().map_or(0, retry_secs))),
                window: Some(ceil_secs(spec.per).max(1)),
            },
            Answer::Quota { state, window, .. } => Policy {
                limit: state.limit,
                remaining: state.remaining,
                reset: window.seconds_left(now),
                window: window.length_seconds(),
            },
        }
    }

    /// How long a refusal lasts: `None` for a quota that never renews.
    fn retry_after(&self, now: Timestamp) -> Option<u64> {
        match self {
            Answer::Rate { allowed, .. } => Some(allowed.err().map_or(1, retry_secs)),
            Answer::Quota { window, .. } => window.seconds_left(now),
        }
    }
}

fn retry_secs(wait: Duration) -> u64 {
    ceil_secs(wait).max(1)
}

impl Verdict {
    /// The verdict of a check whose limits answered `answers` (by [`LimitKind`] index) at `now`.
    /// The refusal names the refusing limit that lifts last, the first in [`LimitKind::ALL`]
    /// among equals: a client told to retry after it will not be refused by another at once.
    pub fn assemble(answers: &[Option<Answer>; 4], now: Timestamp) -> Verdict {
        let mut verdict = Verdict::default();
        let mut longest = None;
        for (kind, answer) in LimitKind::ALL.into_iter().zip(answers) {
            let Some(answer) = answer else { continue };
            verdict.policies[kind.index()] = Some(answer.policy(now));
            if let (Answer::Quota { window, .. }, Some(slot)) = (answer, kind.quota_index()) {
                verdict.windows[slot] = Some(*window);
            }
            if answer.allowed() {
                continue;
            }
            let retry_after = answer.retry_after(now);
            let lasts = retry_after.unwrap_or(u64::MAX);
            if longest.is_none_or(|longest| lasts > longest) {
                longest = Some(lasts);
                let resets_at = match answer {
                    Answer::Quota { window, .. } => window.end,
                    Answer::Rate { .. } => None,
                };
                verdict.refused = Some(Refused {
                    by: kind,
                    retry_after,
                    resets_at,
                });
            }
        }
        verdict
    }

    pub fn is_admitted(&self) -> bool {
        self.refused.is_none()
    }

    pub fn policy(&self, kind: LimitKind) -> Option<&Policy> {
        self.policies[kind.index()].as_ref()
    }

    /// The period a quota of the check counted in; `None` for a rate limit or a quota the
    /// check did not meet.
    pub fn window(&self, kind: LimitKind) -> Option<Window> {
        self.windows[kind.quota_index()?]
    }

    /// The limits the check met, with their states, in [`LimitKind::ALL`] order.
    pub fn policies(&self) -> impl Iterator<Item = (LimitKind, &Policy)> {
        LimitKind::ALL
            .into_iter()
            .filter_map(|kind| Some((kind, self.policy(kind)?)))
    }

    /// The rate limit the classic `RateLimit-Limit/Remaining/Reset` headers show: the one
    /// that refused, else the one with the least room left (the key's among equals). Quotas,
    /// whose reset is hours or days away and which a 429 names with `resets_at`, are named
    /// only in the draft headers. A check that met no rate limit shows an empty one.
    pub fn classic(&self) -> LimitState {
        let refusing = self
            .refused
            .map(|refused| refused.by)
            .filter(|kind| !kind.is_quota());
        let policy = match refusing {
            Some(kind) => self.policy(kind),
            None => [LimitKind::KeyRate, LimitKind::CustomerRate]
                .into_iter()
                .filter_map(|kind| self.policy(kind))
                .min_by_key(|policy| policy.remaining),
        };
        policy.map_or(
            LimitState {
                limit: 0,
                remaining: 0,
                reset: 0,
                window: 1,
            },
            |policy| LimitState {
                limit: u32::try_from(policy.limit).unwrap_or(u32::MAX),
                remaining: u32::try_from(policy.remaining).unwrap_or(u32::MAX),
                reset: policy.reset.unwrap_or(0),
                window: policy.window.unwrap_or(1),
            },
        )
    }

    /// The verdict as a one-limit decision, with the numbers of [`Verdict::classic`]: for a
    /// check of the key's rate limit alone, that limit's.
    pub fn key_decision(&self) -> Decision {
        let state = self.classic();
        match self.refused {
            None => Decision::Allowed(state),
            Some(refused) => Decision::Limited {
                state,
                retry_after: refused.retry_after.unwrap_or(u64::MAX),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::quota::Period;
    use std::num::NonZeroU32;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn rate(allowed: Result<(), Duration>) -> Option<Answer> {
        Some(Answer::Rate {
            spec: RateLimitSpec {
                requests: NonZeroU32::new(100).unwrap(),
                per: Duration::from_secs(1),
                burst: None,
            },
            allowed,
            remaining: if allowed.is_ok() { 40 } else { 0 },
            reset: Duration::from_millis(600),
        })
    }

    fn rate_of(requests: u32, remaining: u32) -> Option<Answer> {
        Some(Answer::Rate {
            spec: RateLimitSpec {
                requests: NonZeroU32::new(requests).unwrap(),
                per: Duration::from_secs(1),
                burst: None,
            },
            allowed: if remaining == 0 {
                Err(Duration::from_millis(20))
            } else {
                Ok(())
            },
            remaining,
            reset: Duration::from_millis(600),
        })
    }

    fn quota(period: Period, used: u64, allowed: bool) -> Option<Answer> {
        let window = period.window(at("2026-01-01T00:00:00Z"), at("2026-01-20T00:00:00Z"));
        Some(Answer::Quota {
            allowed,
            state: QuotaUse::new(1000, 0, used, &window),
            window,
        })
    }

    #[test]
    fn an_admitted_check_reports_every_limit_and_shows_the_tightest_rate_limit() {
        let now = at("2026-01-20T00:00:00Z");
        let verdict = Verdict::assemble(&[rate(Ok(())), None, quota(Period::Month, 990, true), None], now);
        assert!(verdict.is_admitted());
        let names: Vec<_> = verdict.policies().map(|(kind, _)| kind.as_str()).collect();
        assert_eq!(names, ["key", "quota"]);
        let quota = verdict.policy(LimitKind::KeyQuota).unwrap();
        assert_eq!(quota.remaining, 10);
        assert_eq!(quota.window, Some(31 * 86_400));
        assert_eq!(quota.reset, Some(12 * 86_400));
        // The classic triple stays a rate limit's, though the quota has less room.
        assert_eq!((verdict.classic().limit, verdict.classic().remaining), (100, 40));
        let tighter = Verdict::assemble(&[rate(Ok(())), rate_of(50, 3), None, None], now);
        assert_eq!((tighter.classic().limit, tighter.classic().remaining), (50, 3));
    }

    #[test]
    fn a_refusal_names_the_limit_that_lifts_last() {
        let now = at("2026-01-20T00:00:00Z");
        let slow = Err(Duration::from_millis(1500));
        let both = Verdict::assemble(&[rate(slow), None, None, quota(Period::Day, 1000, false)], now);
        let refused = both.refused.unwrap();
        assert_eq!(refused.by, LimitKind::CustomerQuota);
        assert_eq!(refused.retry_after, Some(86_400));
        assert_eq!(refused.resets_at, Some(at("2026-01-21T00:00:00Z")));
        let rates = Verdict::assemble(&[rate(slow), rate(Err(Duration::from_secs(1))), None, None], now);
        assert_eq!(rates.refused.unwrap().by, LimitKind::KeyRate);
        assert_eq!(rates.refused.unwrap().retry_after, Some(2));
        let credits = Verdict::assemble(&[None, None, quota(Period::None, 1000, false), None], now);
        assert_eq!(
            credits.refused,
            Some(Refused {
                by: LimitKind::KeyQuota,
                retry_after: None,
                resets_at: None
            })
        );
        assert_eq!(credits.policy(LimitKind::KeyQuota).unwrap().reset, None);
        // Refused by the customer's rate limit: its bucket is shown.
        let refusing = Verdict::assemble(&[rate(Ok(())), rate_of(50, 0), None, None], now);
        assert_eq!(refusing.classic().limit, 50);
    }

    #[test]
    fn a_key_rate_verdict_reads_as_the_one_limit_decision() {
        let now = at("2026-01-20T00:00:00Z");
        let refused = Verdict::assemble(&[rate(Err(Duration::from_millis(10))), None, None, None], now);
        assert_eq!(
            refused.key_decision(),
            Decision::Limited {
                state: LimitState {
                    limit: 100,
                    remaining: 0,
                    reset: 1,
                    window: 1
                },
                retry_after: 1
            }
        );
    }
}
