//! The `RateLimit-*` response headers: the classic triple for one policy, and with
//! `rate_limit.draft_headers` the IETF draft's `RateLimit-Policy` and `RateLimit` lists, one
//! named policy per limit the request met (`"key";q=100;w=1, "quota";q=100000;w=2592000`).

use std::fmt::Write;
use std::sync::LazyLock;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::verdict::{LimitKind, Policy, Verdict};

/// The numbers behind the `RateLimit-*` headers of a key's rate limit.
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
    /// `RateLimit` pair, which name the key's `quota` beside its rate limit when it has one.
    pub fn write_headers(&self, headers: &mut HeaderMap, draft: bool, quota: Option<&Policy>) {
        let policy = Policy {
            limit: self.limit.into(),
            remaining: self.remaining.into(),
            reset: Some(self.reset),
            window: Some(self.window),
        };
        let named = [
            (LimitKind::KeyRate, &policy),
            (LimitKind::KeyQuota, quota.unwrap_or(&policy)),
        ];
        let count = 1 + usize::from(quota.is_some());
        write(headers, &policy, draft.then_some(&named[..count]));
    }
}

impl Verdict {
    /// The `RateLimit-*` headers of every limit the check met: the classic triple for the
    /// [`Verdict::headline`] policy, and with `draft` every policy by name.
    pub fn write_headers(&self, headers: &mut HeaderMap, draft: bool) {
        let Some((_, headline)) = self.headline() else {
            return;
        };
        let policies: Vec<_> = if draft {
            self.policies().collect()
        } else {
            Vec::new()
        };
        write(headers, headline, draft.then_some(&policies[..]));
    }
}

fn write(headers: &mut HeaderMap, headline: &Policy, draft: Option<&[(LimitKind, &Policy)]>) {
    headers.insert(RATELIMIT_LIMIT, number(headline.limit));
    headers.insert(RATELIMIT_REMAINING, number(headline.remaining));
    if let Some(reset) = headline.reset {
        headers.insert(RATELIMIT_RESET, number(reset));
    }
    let Some(policies) = draft else { return };
    let (mut declared, mut current) = (String::new(), String::new());
    for (i, (kind, policy)) in policies.iter().enumerate() {
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

    #[test]
    fn a_key_limit_alone_writes_the_classic_triple_and_one_draft_policy() {
        let state = LimitState {
            limit: 1000,
            remaining: 999,
            reset: 1,
            window: 1,
        };
        let mut headers = HeaderMap::new();
        state.write_headers(&mut headers, true, None);
        assert_eq!(headers["ratelimit-limit"], "1000");
        assert_eq!(headers["ratelimit-remaining"], "999");
        assert_eq!(headers["ratelimit-reset"], "1");
        assert_eq!(headers["ratelimit-policy"], r#""key";q=1000;w=1"#);
        assert_eq!(headers["ratelimit"], r#""key";r=999;t=1"#);
        let mut classic = HeaderMap::new();
        state.write_headers(&mut classic, false, None);
        assert_eq!(classic.len(), 3);
    }

    #[test]
    fn every_limit_met_is_a_named_draft_policy() {
        let now: jiff::Timestamp = "2026-01-31T00:00:00Z".parse().unwrap();
        let month = Period::Month.window("2026-01-01T00:00:00Z".parse().unwrap(), now);
        let answers = [
            Some(Answer::Rate {
                spec: RateLimitSpec {
                    requests: NonZeroU32::new(100).unwrap(),
                    per: Duration::from_secs(1),
                    burst: None,
                },
                allowed: Ok(()),
                remaining: 99,
                reset: Duration::from_millis(10),
            }),
            None,
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
        let mut headers = HeaderMap::new();
        Verdict::assemble(&answers, now).write_headers(&mut headers, true);
        assert_eq!(
            headers["ratelimit-policy"],
            r#""key";q=100;w=1, "quota";q=100000;w=2678400, "customer_quota";q=50"#
        );
        assert_eq!(
            headers["ratelimit"],
            r#""key";r=99;t=1, "quota";r=10;t=86400, "customer_quota";r=49"#
        );
        // The classic triple: the policy with the least room.
        assert_eq!(headers["ratelimit-remaining"], "10");
        assert_eq!(headers["ratelimit-limit"], "100000");
    }
}
