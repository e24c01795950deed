//! What one check sends to Redis and what it gets back: the Lua scripts, the names of the
//! Redis keys a check touches, the arguments that describe its limits, and the reply turned
//! into the same [`Answer`]s the local limiter gives.
//!
//! ## Key layout
//! Every Redis key of one check starts with the same hash tag, so on Redis Cluster they hash to
//! one slot and the script may touch them all:
//!
//! | Redis key | holds |
//! |---|---|
//! | `<prefix>{<tag>}:r:k:<key id>` | the key's rate bucket (its GCRA TAT, µs) |
//! | `<prefix>{<tag>}:r:c` | the customer's rate bucket |
//! | `<prefix>{<tag>}:q:k:<key id>:<period start>` | the key's quota counter of one period (hash: `u` used, `a` topped up) |
//! | `<prefix>{<tag>}:q:c:<period start>` | the customer's quota counter of one period |
//!
//! `<tag>` is `c:<customer id>` for a key with a customer and `k:<key id>` for one without;
//! `<period start>` is the period's start in Unix seconds. A customer's keys thus share one
//! slot (one cluster node carries a customer's whole traffic), and a key that gains, loses or
//! changes its customer starts its Redis buckets and this period's quota counter afresh.

use std::fmt::Write;
use std::time::Duration;

use jiff::Timestamp;
use redis::{Script, ScriptInvocation};

use crate::core::key::RateLimitSpec;
use crate::core::quota::{QuotaChange, QuotaSpec, QuotaUse, Window};
use crate::proxy::limits::{Answer, Check, Owner, Subject};

/// One check, all or nothing. KEYS: one per limit. ARGV[1]: the cost; ARGV[2]: now in
/// microseconds since the Unix epoch, or 0 for Redis's own clock (TIME); then three arguments
/// per key: `r`, emission interval (whole ns, as the local limiter's GCRA), burst; or `q`, limit, seconds to keep the
/// counter (0: for ever). Every limit is read and asked first; only if all allow the cost is
/// each charged. Answers four integers per key: rate `{allowed, remaining, wait_us, reset_us}`,
/// quota `{allowed, used, added, 0}`, each the state after the check.
const CHECK: &str = r"
local cost = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local seen = {}
local admit = true
for i = 1, #KEYS do
  local a = 3 * i
  local x = tonumber(ARGV[a + 1])
  if ARGV[a] == 'r' then
    x = x / 1000
    local tat = math.max(tonumber(redis.call('GET', KEYS[i])) or now, now)
    local new_tat = tat + x * cost
    local allow_at = new_tat - x * tonumber(ARGV[a + 2])
    seen[i] = {allow_at <= now, tat, new_tat, allow_at}
  else
    local v = redis.call('HMGET', KEYS[i], 'u', 'a')
    local used, added = tonumber(v[1]) or 0, tonumber(v[2]) or 0
    seen[i] = {used + cost <= x + added, used, added}
  end
  admit = admit and seen[i][1]
end
local out = {}
for i = 1, #KEYS do
  local a = 3 * i
  local x, y = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local s = seen[i]
  local ok = 0
  if s[1] then ok = 1 end
  if ARGV[a] == 'r' then
    x = x / 1000
    local tat = s[2]
    if admit then
      tat = s[3]
      redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', math.max(1, math.ceil((tat - now) / 1000)))
    end
    local wait = 0
    if not s[1] then wait = math.ceil(s[4] - now) end
    table.insert(out, ok)
    table.insert(out, math.floor((now + x * y - tat) / x))
    table.insert(out, wait)
    table.insert(out, math.ceil(tat - now))
  else
    local used = s[2]
    if admit then
      used = redis.call('HINCRBY', KEYS[i], 'u', cost)
      if y > 0 then redis.call('EXPIRE', KEYS[i], y) end
    end
    table.insert(out, ok)
    table.insert(out, used)
    table.insert(out, s[3])
    table.insert(out, 0)
  end
end
return out
";

/// An operator's change to one quota counter. KEYS[1]: the counter. ARGV[1]: `read`, `add` or
/// `reset`; ARGV[2]: how much to add; ARGV[3]: seconds to keep the counter (0: for ever).
/// Answers `{used, added}`.
const QUOTA: &str = r"
if ARGV[1] == 'reset' then
  redis.call('DEL', KEYS[1])
  return {0, 0}
end
if ARGV[1] == 'add' then
  redis.call('HINCRBY', KEYS[1], 'a', ARGV[2])
  if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
end
local v = redis.call('HMGET', KEYS[1], 'u', 'a')
return {tonumber(v[1]) or 0, tonumber(v[2]) or 0}
";

/// How long a quota counter outlives its period: a replica whose clock is behind still finds
/// it, rather than a fresh one.
const QUOTA_MARGIN: Duration = Duration::from_secs(3600);

pub(super) struct Scripts {
    check: Script,
    quota: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts {
            check: Script::new(CHECK),
            quota: Script::new(QUOTA),
        }
    }
}

/// The time a check is made at.
#[derive(Debug, Clone, Copy)]
pub(super) struct At {
    /// The wall clock, for quota periods.
    pub wall: Timestamp,
    /// For rate buckets: `None`, Redis's own clock; `Some`, this time (tests on a manual clock).
    pub rates: Option<Timestamp>,
}

/// What a check asked of one limit, to read its part of the reply.
#[derive(Clone, Copy)]
pub(super) enum Asked {
    Rate(RateLimitSpec),
    Quota(QuotaSpec, Window),
}

/// The script call of one check, and what each limit asked (by [`LimitKind`] index).
///
/// [`LimitKind`]: crate::proxy::limits::LimitKind
pub(super) fn check<'s>(
    scripts: &'s Scripts,
    prefix: &str,
    check: &Check<'_>,
    at: At,
) -> (ScriptInvocation<'s>, [Option<Asked>; 4]) {
    let mut call = scripts.check.prepare_invoke();
    let micros = at.rates.map_or(0, Timestamp::as_microsecond);
    call.arg(check.cost.get()).arg(micros);
    let asked = plan(prefix, check, at.wall).map(|limit| {
        let (name, asked) = limit?;
        call.key(name);
        match asked {
            Asked::Rate(spec) => call.arg("r").arg(interval_ns(&spec)).arg(spec.burst().get()),
            Asked::Quota(spec, window) => call.arg("q").arg(spec.limit).arg(keep_secs(&window, at.wall)),
        };
        Some(asked)
    });
    (call, asked)
}

/// The Redis key of each limit a check asks, and what it asks of it.
fn plan(prefix: &str, check: &Check<'_>, now: Timestamp) -> [Option<(String, Asked)>; 4] {
    let base = base(prefix, check.key.id, check.customer.map(|c| c.id));
    let key = check.key.id;
    let customer = check.customer.unwrap_or(Subject {
        id: "",
        rate: None,
        quota: None,
    });
    let quota = |spec: &QuotaSpec, named: &dyn Fn(i64) -> String| {
        let window = spec.window(now);
        (named(window.label()), Asked::Quota(*spec, window))
    };
    [
        check
            .key
            .rate
            .map(|spec| (name(&base, &["r:k:", key], None), Asked::Rate(*spec))),
        customer
            .rate
            .map(|spec| (name(&base, &["r:c"], None), Asked::Rate(*spec))),
        check
            .key
            .quota
            .map(|spec| quota(spec, &|label| name(&base, &["q:k:", key, ":"], Some(label)))),
        customer
            .quota
            .map(|spec| quota(spec, &|label| name(&base, &["q:c:"], Some(label)))),
    ]
}

/// The script call of an operator's change to a quota's current period.
pub(super) fn change<'s>(
    scripts: &'s Scripts,
    prefix: &str,
    owner: Owner<'_>,
    window: &Window,
    now: Timestamp,
    change: QuotaChange,
) -> ScriptInvocation<'s> {
    let label = window.label();
    let name = match owner {
        Owner::Key { id, customer, .. } => format!("{}q:k:{id}:{label}", base(prefix, id, customer)),
        Owner::Customer { id } => format!("{}q:c:{label}", base(prefix, "", Some(id))),
    };
    let (op, more) = match change {
        QuotaChange::Read => ("read", 0),
        QuotaChange::Add(more) => ("add", more),
        QuotaChange::Reset => ("reset", 0),
    };
    let mut call = scripts.quota.prepare_invoke();
    call.key(name).arg(op).arg(more).arg(keep_secs(window, now));
    call
}

/// The reply of [`check`], limit by limit; `None` where the reply is short (not from this script).
pub(super) fn answers(asked: &[Option<Asked>; 4], reply: &[i64]) -> Option<[Option<Answer>; 4]> {
    let mut parts = reply.chunks_exact(4);
    let mut answers = [None; 4];
    for (answer, asked) in answers.iter_mut().zip(asked) {
        let Some(asked) = asked else { continue };
        let &[allowed, a, b, c] = parts.next()? else {
            return None;
        };
        *answer = Some(match *asked {
            Asked::Rate(spec) => Answer::Rate {
                spec,
                allowed: if allowed == 1 { Ok(()) } else { Err(micros(b)) },
                remaining: u32::try_from(a.clamp(0, spec.burst().get().into())).unwrap_or(0),
                reset: micros(c),
            },
            Asked::Quota(spec, window) => Answer::Quota {
                allowed: allowed == 1,
                state: QuotaUse::new(spec.limit, count(b), count(a), &window),
                window,
            },
        });
    }
    Some(answers)
}

/// The hash-tagged start of every Redis key of a check (see the module doc).
fn base(prefix: &str, key_id: &str, customer: Option<&str>) -> String {
    let (kind, id) = match customer {
        Some(customer) => ("{c:", customer),
        None => ("{k:", key_id),
    };
    // Pushed, not `format!`: every check names two to four keys, and the formatting machinery
    // cost several times the copies.
    let mut base = String::with_capacity(prefix.len() + id.len() + 48);
    for part in [prefix, kind, id, "}:"] {
        base.push_str(part);
    }
    base
}

/// A Redis key of a check: `base`, then `parts`, then a period's label when it has one.
fn name(base: &str, parts: &[&str], label: Option<i64>) -> String {
    let mut name = String::with_capacity(base.len() + 48);
    name.push_str(base);
    for part in parts {
        name.push_str(part);
    }
    if let Some(label) = label {
        // Writing to a String cannot fail.
        let _ = write!(name, "{label}");
    }
    name
}

/// A rate limit's emission interval in whole nanoseconds, at least 1: the local limiter's
/// (`limits::gcra`), so the two backends take the same steps. An integer, which costs far less
/// to send than a float's shortest decimal form.
fn interval_ns(spec: &RateLimitSpec) -> u64 {
    let requests = u128::from(spec.requests.get());
    u64::try_from(spec.per.as_nanos() / requests)
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Seconds a period's counter is kept from `now`: to the period's end and a margin; 0 (for
/// ever) for a period that never ends.
fn keep_secs(window: &Window, now: Timestamp) -> u64 {
    window
        .seconds_left(now)
        .map_or(0, |left| left.saturating_add(QUOTA_MARGIN.as_secs()))
}

fn micros(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::quota::Period;
    use std::num::NonZeroU32;

    /// The part of a Redis key that Redis Cluster hashes: the text inside its first `{...}`
    /// when that is not empty, else the whole key.
    fn hash_tag(name: &str) -> &str {
        let Some(open) = name.find('{') else { return name };
        match name[open + 1..].find('}') {
            Some(0) | None => name,
            Some(close) => &name[open + 1..open + 1 + close],
        }
    }

    #[test]
    fn every_key_of_a_check_carries_the_customers_tag_or_else_the_keys() {
        let now: Timestamp = "2026-01-01T23:00:00Z".parse().unwrap();
        let spec = RateLimitSpec {
            requests: NonZeroU32::MIN,
            per: Duration::from_secs(1),
            burst: None,
        };
        let day = QuotaSpec {
            limit: 5,
            period: Period::Day,
            anchor: now,
        };
        let everything = |id| Subject {
            id,
            rate: Some(&spec),
            quota: Some(&day),
        };
        for (customer, tag) in [
            (Some("acme"), "c:acme"),
            (Some("odd}id{"), "c:odd"),
            (None, "k:key_1"),
        ] {
            let check = Check {
                seq: 1,
                key: everything("key_1"),
                customer: customer.map(everything),
                cost: NonZeroU32::MIN,
            };
            let names: Vec<String> = plan("kg:", &check, now)
                .into_iter()
                .flatten()
                .map(|(n, _)| n)
                .collect();
            assert_eq!(names.len(), if customer.is_some() { 4 } else { 2 });
            for name in &names {
                assert_eq!(hash_tag(name), tag, "{name}");
            }
        }
        let check = Check::key_rate(1, "key_1", &spec);
        let [Some((name, _)), ..] = plan("kg:", &check, now) else {
            panic!()
        };
        assert_eq!(name, "kg:{k:key_1}:r:k:key_1");
    }

    #[test]
    fn a_counter_outlives_its_period_by_the_margin_and_credits_are_kept_for_ever() {
        let now: Timestamp = "2026-01-01T23:00:00Z".parse().unwrap();
        let day = Period::Day.window("2026-01-01T00:00:00Z".parse().unwrap(), now);
        assert_eq!(keep_secs(&day, now), 3600 + 3600);
        assert_eq!(keep_secs(&Window::FOREVER, now), 0);
    }

    #[test]
    fn a_reply_reads_limit_by_limit_and_a_short_one_is_refused() {
        let spec = RateLimitSpec {
            requests: NonZeroU32::new(10).unwrap(),
            per: Duration::from_secs(1),
            burst: None,
        };
        let now: Timestamp = "2026-01-01T23:00:00Z".parse().unwrap();
        let quota = QuotaSpec {
            limit: 5,
            period: Period::None,
            anchor: now,
        };
        let asked = [
            Some(Asked::Rate(spec)),
            None,
            Some(Asked::Quota(quota, Window::FOREVER)),
            None,
        ];
        let answers = answers(&asked, &[1, 99, 0, 100_000, 0, 5, 2, 0]).unwrap();
        match answers[0] {
            Some(Answer::Rate {
                allowed, remaining, ..
            }) => assert_eq!((allowed, remaining), (Ok(()), 10)),
            other => panic!("{other:?}"),
        }
        match answers[2] {
            Some(Answer::Quota { allowed, state, .. }) => {
                assert!(!allowed);
                assert_eq!((state.limit, state.used, state.remaining), (7, 5, 2));
            }
            other => panic!("{other:?}"),
        }
        assert!(super::answers(&asked, &[1, 2, 3, 4]).is_none());
    }

    fn decision(spec: RateLimitSpec, reply: &[i64]) -> crate::proxy::limits::Decision {
        let asked = [Some(Asked::Rate(spec)), None, None, None];
        let answers = answers(&asked, reply).unwrap();
        crate::proxy::limits::Verdict::assemble(&answers, Timestamp::UNIX_EPOCH).key_decision()
    }

    fn per_minute(requests: u32) -> RateLimitSpec {
        RateLimitSpec {
            requests: NonZeroU32::new(requests).unwrap(),
            per: Duration::from_secs(60),
            burst: None,
        }
    }

    #[test]
    fn answers_become_the_headers_the_local_limiter_sends() {
        use crate::proxy::limits::{Decision, LimitState};
        assert_eq!(
            decision(per_minute(6), &[1, 5, 0, 10_000_000]),
            Decision::Allowed(LimitState {
                limit: 6,
                remaining: 5,
                reset: 10,
                window: 60
            })
        );
        assert_eq!(
            decision(per_minute(6), &[0, 0, 9_500_001, 59_000_000]),
            Decision::Limited {
                state: LimitState {
                    limit: 6,
                    remaining: 0,
                    reset: 59,
                    window: 60
                },
                retry_after: 10
            }
        );
    }

    #[test]
    fn odd_answers_stay_in_range() {
        use crate::proxy::limits::{Decision, LimitState};
        let one = RateLimitSpec {
            requests: NonZeroU32::MIN,
            per: Duration::from_secs(1),
            burst: None,
        };
        assert_eq!(
            decision(one, &[0, -3, 0, -1]),
            Decision::Limited {
                state: LimitState {
                    limit: 1,
                    remaining: 0,
                    reset: 1,
                    window: 1
                },
                retry_after: 1
            }
        );
        assert!(matches!(
            decision(one, &[1, i64::MAX, 0, 0]),
            Decision::Allowed(LimitState { remaining: 1, .. })
        ));
    }
}
