//! The `RateLimit-*` response headers (data plane, the final phase): the classic triple for the
//! tightest rate limit a request met, and with `rate_limit.draft_headers` the IETF draft's
//! `RateLimit-Policy` and `RateLimit` lists, one named policy per limit the request met:
//! `"key";q=100;w=1, "customer";q=50;w=1, "quota";q=100000;w=2592000,
//! "customer_quota";q=1000000;w=2592000`.

use std::fmt::Write;
use std::sync::LazyLock;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::verdict::{LimitKind, Policy, Verdict};

/// The numbers behind the classic `RateLimit-*` headers: the tightest rate limit a request met
/// ([`Verdict::classic`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitState {
    /// Requests a full bucket allows at once.
    pub limit: u32,
    pub remaining: u32,
    /// Whole seconds until the bucket is full again.
    pub reset: u64,
    /// The policy window, in whole seconds (at least 1).
    pub window: u64,
}

/// Every limit a check met, by [`LimitKind`], for the draft headers' named policies. Kept for a
/// request only when `rate_limit.draft_headers` is on, so the classic headers cost no copy of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DraftPolicies([Option<Policy>; 4]);

impl DraftPolicies {
    pub fn of(verdict: &Verdict) -> Self {
        DraftPolicies(LimitKind::ALL.map(|kind| verdict.policy(kind).copied()))
    }

    fn named(&self) -> impl Iterator<Item = (LimitKind, &Policy)> {
        LimitKind::ALL
            .into_iter()
            .zip(&self.0)
            .filter_map(|(kind, policy)| Some((kind, policy.as_ref()?)))
    }
}

impl LimitState {
    /// The classic `RateLimit-Limit/Remaining/Reset` triple, and with `draft` the IETF draft's
    /// `RateLimit-Policy` and `RateLimit` lists: one named policy per limit the request met
    /// (`"key"`, `"customer"`, `"quota"`, `"customer_quota"`, in that order).
    pub fn write_headers(&self, headers: &mut HeaderMap, draft: Option<&DraftPolicies>) {
        headers.insert(RATELIMIT_LIMIT, number(self.limit.into()));
        headers.insert(RATELIMIT_REMAINING, number(self.remaining.into()));
        headers.insert(RATELIMIT_RESET, number(self.reset));
        if let Some(draft) = draft {
            write_draft(headers, draft.named());
        }
    }
}

fn write_draft<'a>(headers: &mut HeaderMap, policies: impl Iterator<Item = (LimitKind, &'a Policy)>) {
    let (mut declared, mut current) = (String::new(), String::new());
    for (i, (kind, policy)) in policies.enumerate() {
        let separator = if i == 0 { "" } else { ", " };
        let name = kind.as_str();
        // Writing to a String cannot fail.
        let _ = write!(declared, "{separator}\"{name}\";q={}", policy.limit);
        let _ = write!(current, "{separator}\"{name}\";r={}", policy.remaining);
        if let Some(window) = policy.window {
            let _ = write!(declared, ";w={window}");
        }
        if let Some(reset) = policy.reset {
            let _ = write!(current, ";t={reset}");
        }
    }
    if declared.is_empty() {
        return;
    }
    for (name, value) in [(RATELIMIT_POLICY, declared), (RATELIMIT, current)] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::key::RateLimitSpec;
    use crate::core::quota::{Period, QuotaUse};
    use crate::proxy::limits::Answer;
    use std::num::NonZeroU32;
    use std::time::Duration;

    #[test]
    fn numbers_read_as_their_decimal_text_cached_or_not() {
        for n in [0, 7, 999, 1000, 1001, 60_000, 1_000_000_000, u64::MAX] {
            assert_eq!(number(n).to_str().unwrap(), n.to_string(), "{n}");
        }
    }

    fn rate(requests: u32, remaining: u32) -> Option<Answer> {
        Some(Answer::Rate {
            spec: RateLimitSpec {
                requests: NonZeroU32::new(requests).unwrap(),
                per: Duration::from_secs(1),
                burst: None,
            },
            allowed: Ok(()),
            remaining,
            reset: Duration::from_millis(10),
        })
    }

    fn written(answers: &[Option<Answer>; 4], now: jiff::Timestamp, draft: bool) -> HeaderMap {
        let verdict = Verdict::assemble(answers, now);
        let mut headers = HeaderMap::new();
        let named = draft.then(|| DraftPolicies::of(&verdict));
        verdict.classic().write_headers(&mut headers, named.as_ref());
        headers
    }

    #[test]
    fn a_key_limit_alone_writes_the_classic_triple_and_one_draft_policy() {
        let now: jiff::Timestamp = "2026-01-31T00:00:00Z".parse().unwrap();
        let headers = written(&[rate(1000, 999), None, None, None], now, true);
        assert_eq!(headers["ratelimit-limit"], "1000");
        assert_eq!(headers["ratelimit-remaining"], "999");
        assert_eq!(headers["ratelimit-reset"], "1");
        assert_eq!(headers["ratelimit-policy"], r#""key";q=1000;w=1"#);
        assert_eq!(headers["ratelimit"], r#""key";r=999;t=1"#);
        let classic = written(&[rate(1000, 999), None, None, None], now, false);
        assert_eq!(classic.len(), 3);
    }

    #[test]
    fn every_limit_met_is_a_named_draft_policy() {
        let now: jiff::Timestamp = "2026-01-31T00:00:00Z".parse().unwrap();
        let month = Period::Month.window("2026-01-01T00:00:00Z".parse().unwrap(), now);
        let answers = [
            rate(100, 99),
            rate(50, 20),
            Some(Answer::Quota {
                allowed: true,
                state: QuotaUse::new(100_000, 0, 99_990, &month),
                window: month,
            }),
            Some(Answer::Quota {
                allowed: true,
                state: QuotaUse::new(50, 0, 1, &crate::core::quota::Window::FOREVER),
                window: crate::core::quota::Window::FOREVER,
            }),
        ];
        let headers = written(&answers, now, true);
        assert_eq!(
            headers["ratelimit-policy"],
            r#""key";q=100;w=1, "customer";q=50;w=1, "quota";q=100000;w=2678400, "customer_quota";q=50"#
        );
        assert_eq!(
            headers["ratelimit"],
            r#""key";r=99;t=1, "customer";r=20;t=1, "quota";r=10;t=86400, "customer_quota";r=49"#
        );
        // The classic triple: the rate limit with the least room, the customer's here; the
        // quotas, whose reset is days away, only in the draft pair.
        assert_eq!(headers["ratelimit-limit"], "50");
        assert_eq!(headers["ratelimit-remaining"], "20");
        assert_eq!(written(&answers, now, false).len(), 3);
    }
}
