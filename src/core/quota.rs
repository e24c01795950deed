//! Quotas and their periods: how much a key or a customer may use, and the calendar window a
//! request's use counts in. Shared by both planes (the limiters on the hot path, the admin API
//! and the store on the control plane); pure arithmetic on instants, no I/O, no clock.
//!
//! A period is anchored at an instant and renews every hour, day, week or month after it, in
//! UTC (so daylight saving time never moves a boundary). A month renews on the anchor's day of
//! the month and time of day, clamped to the last day of a shorter month: anchored on January
//! 31, it renews on February 28 (29), March 31, April 30. Each boundary is the anchor plus a
//! whole number of months, never the previous boundary plus one, so a clamp does not drift the
//! anchor. A period `none` never renews: credits that only an operator tops up.

use std::fmt;
use std::str::FromStr;

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// How often a quota renews.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Hour,
    Day,
    Week,
    Month,
    /// Never: the allowance is spent once, and topped up by an operator.
    None,
}

impl Period {
    pub const ALL: [Period; 5] = [
        Period::Hour,
        Period::Day,
        Period::Week,
        Period::Month,
        Period::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
            Period::None => "none",
        }
    }

    /// The length of a fixed period, in nanoseconds; `None` for a month (it varies) and for
    /// `none` (it never ends).
    fn fixed_nanos(self) -> Option<i128> {
        const HOUR: i128 = 3_600_000_000_000;
        match self {
            Period::Hour => Some(HOUR),
            Period::Day => Some(24 * HOUR),
            Period::Week => Some(7 * 24 * HOUR),
            Period::Month | Period::None => None,
        }
    }

    /// The period that `now` falls in, for a quota anchored at `anchor`. `now` may be before
    /// the anchor: periods extend both ways from it.
    pub fn window(self, anchor: Timestamp, now: Timestamp) -> Window {
        let window = match (self, self.fixed_nanos()) {
            (Period::None, _) => return Window::FOREVER,
            (_, Some(length)) => fixed_window(anchor, now, length),
            (_, None) => month_window(anchor, now),
        };
        // Only at the ends of the representable range (years -9999 and 9999).
        window.unwrap_or(Window {
            start: now,
            end: None,
        })
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Period {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Period::ALL
            .into_iter()
            .find(|p| p.as_str() == text)
            .ok_or_else(|| format!("period {text:?} is not one of hour, day, week, month, none"))
    }
}

/// One period of a quota: from `start` (included) to `end` (excluded), when it renews.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: Timestamp,
    /// `None`: it never renews (period `none`).
    pub end: Option<Timestamp>,
}

impl Window {
    /// The one window of period `none`.
    pub const FOREVER: Window = Window {
        start: Timestamp::MIN,
        end: None,
    };

    /// Whether `now` is past this window, so a new period has begun.
    pub fn is_over(&self, now: Timestamp) -> bool {
        self.end.is_some_and(|end| now >= end)
    }

    /// Whole seconds from `now` until the window ends, at least 1 (a `Retry-After`); `None`
    /// for a window that never ends.
    pub fn seconds_left(&self, now: Timestamp) -> Option<u64> {
        let end = self.end?;
        Some(ceil_seconds_between(now, end).max(1))
    }

    /// The window's length in whole seconds (a policy's `w`); `None` for `none`.
    pub fn length_seconds(&self) -> Option<u64> {
        let end = self.end?;
        Some(ceil_seconds_between(self.start, end))
    }

    /// A number naming this window among the quota's windows (its start in Unix seconds), for
    /// the name of a counter that holds one period's use.
    pub fn label(&self) -> i64 {
        self.start.as_second()
    }
}

/// Whole seconds from `from` to `to`, rounded up; 0 when `to` is not after `from`. On the
/// instants' seconds and nanoseconds apart (every check's headers ask this of its quotas, and
/// 128-bit nanosecond division is a library call).
fn ceil_seconds_between(from: Timestamp, to: Timestamp) -> u64 {
    // Both within jiff's range (about ±3.8e11 s): neither difference overflows.
    let seconds = to.as_second() - from.as_second();
    // Each part has its instant's sign, so this is within (-2e9, 2e9).
    let nanos = to.subsec_nanosecond() - from.subsec_nanosecond();
    let carry = match nanos {
        1_000_000_001.. => 2,
        1..=1_000_000_000 => 1,
        -999_999_999..=0 => 0,
        _ => -1,
    };
    u64::try_from(seconds + carry).unwrap_or(0)
}

/// The start of the period that `now` falls in (see [`Period::window`]).
pub fn period_start(period: Period, anchor: Timestamp, now: Timestamp) -> Timestamp {
    period.window(anchor, now).start
}

/// When the period that `now` falls in renews; `None` for period `none`.
pub fn resets_at(period: Period, anchor: Timestamp, now: Timestamp) -> Option<Timestamp> {
    period.window(anchor, now).end
}

fn fixed_window(anchor: Timestamp, now: Timestamp, length: i128) -> Option<Window> {
    let anchor = anchor.as_nanosecond();
    let periods = (now.as_nanosecond() - anchor).div_euclid(length);
    let start = anchor + periods * length;
    Some(Window {
        start: Timestamp::from_nanosecond(start).ok()?,
        end: Timestamp::from_nanosecond(start + length).ok(),
    })
}

fn month_window(anchor: Timestamp, now: Timestamp) -> Option<Window> {
    let anchor = TimeZone::UTC.to_datetime(anchor);
    let now = TimeZone::UTC.to_datetime(now);
    let mut months = i64::from(now.year() - anchor.year()) * 12 + i64::from(now.month() - anchor.month());
    // The anchor plus that many months is in now's month; if it is still ahead of now, the
    // period began a month earlier.
    if plus_months(anchor, months)? > now {
        months -= 1;
    }
    Some(Window {
        start: TimeZone::UTC.to_timestamp(plus_months(anchor, months)?).ok()?,
        end: plus_months(anchor, months + 1).and_then(|end| TimeZone::UTC.to_timestamp(end).ok()),
    })
}

/// The anchor plus whole months, its day clamped to the last day of a shorter month. Counted on
/// the calendar's fields rather than with a jiff `Span`, whose general arithmetic cost a
/// quarter of a Redis check's instructions (every check computes its period there).
fn plus_months(anchor: DateTime, months: i64) -> Option<DateTime> {
    let index = i64::from(anchor.year()) * 12 + i64::from(anchor.month() - 1) + months;
    let year = i16::try_from(index.div_euclid(12)).ok()?;
    let month = i8::try_from(index.rem_euclid(12) + 1).ok()?;
    let last = Date::new(year, month, 1).ok()?.days_in_month();
    let date = Date::new(year, month, anchor.day().min(last)).ok()?;
    Some(date.to_datetime(anchor.time()))
}

/// A quota: `limit` uses a `period`, the periods anchored at `anchor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSpec {
    pub limit: u64,
    pub period: Period,
    pub anchor: Timestamp,
}

impl QuotaSpec {
    /// The period that `now` falls in.
    pub fn window(&self, now: Timestamp) -> Window {
        self.period.window(self.anchor, now)
    }
}

/// The largest quota limit: the largest integer a JSON number holds exactly, so every
/// client reads it back as it was written (and far within Redis's signed 64-bit counters).
pub const MAX_QUOTA_LIMIT: u64 = (1 << 53) - 1;

/// A quota as a client writes it: `anchor` may be left out, for the caller to default (to the
/// key's creation, or the time the quota is set). Any fault in it is the field `quota`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaRequest {
    pub limit: u64,
    pub period: Period,
    pub anchor: Option<Timestamp>,
}

impl QuotaRequest {
    /// The quota, anchored at `anchor` when the request names no anchor of its own.
    pub fn anchored(self, anchor: Timestamp) -> QuotaSpec {
        QuotaSpec {
            limit: self.limit,
            period: self.period,
            anchor: self.anchor.unwrap_or(anchor),
        }
    }
}

impl<'de> Deserialize<'de> for QuotaRequest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            limit: u64,
            period: String,
            #[serde(default)]
            anchor: Option<String>,
        }
        use serde::de::Error;
        // Read whole first, so that every fault is reported at `quota` itself.
        let value = serde_json::Value::deserialize(deserializer)?;
        let raw: Raw = serde_json::from_value(value).map_err(|e| D::Error::custom(within(&e)))?;
        if !(1..=MAX_QUOTA_LIMIT).contains(&raw.limit) {
            return Err(D::Error::custom(format!(
                "limit must be a whole number from 1 to {MAX_QUOTA_LIMIT}"
            )));
        }
        let period = raw.period.parse().map_err(D::Error::custom)?;
        let anchor = raw
            .anchor
            .map(|text| {
                text.parse::<Timestamp>()
                    .map_err(|_| D::Error::custom(format!("anchor {text:?} is not an RFC 3339 instant")))
            })
            .transpose()?;
        Ok(QuotaRequest {
            limit: raw.limit,
            period,
            anchor,
        })
    }
}

/// serde's message about a field inside a quota, worded so that it is not taken for one about
/// a field of what holds the quota (`missing field` would name `period` as the faulty field).
fn within(error: &serde_json::Error) -> String {
    let message = error.to_string();
    for (from, to) in [
        ("missing field", "needs the field"),
        ("unknown field", "has no field"),
    ] {
        if let Some(rest) = message.strip_prefix(from) {
            return format!("{to}{rest}");
        }
    }
    message
}

/// A quota's state in the current period: the `quota_state` of a key or a customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaUse {
    /// This period's allowance: the quota's limit plus this period's top-ups.
    pub limit: u64,
    pub used: u64,
    pub remaining: u64,
    /// `None` for period `none`.
    pub resets_at: Option<Timestamp>,
}

impl QuotaUse {
    /// The state of a quota of `limit` with `added` topped up and `used` spent in `window`.
    pub fn new(limit: u64, added: u64, used: u64, window: &Window) -> Self {
        let allowance = limit.saturating_add(added);
        QuotaUse {
            limit: allowance,
            used,
            remaining: allowance.saturating_sub(used),
            resets_at: window.end,
        }
    }
}

/// The use at which share `share` (of `[quotas] warn_at`) of `allowance` is reached: rounded
/// up, at least 1.
pub fn warning_mark(share: f64, allowance: u64) -> u64 {
    ((allowance as f64 * share).ceil() as u64).max(1)
}

/// What an operator does to a quota's current period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaChange {
    /// Nothing: read its state.
    Read,
    /// Top up this period's allowance by this much.
    Add(u64),
    /// Start this period afresh: nothing used, nothing topped up.
    Reset,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    /// (period, anchor, now, start, end)
    #[rustfmt::skip]
    const CASES: &[(Period, &str, &str, &str, Option<&str>)] = &[
        // Hours, days and weeks: whole lengths from the anchor.
        (Period::Hour, "2026-01-15T00:30:00Z", "2026-03-01T10:29:59Z", "2026-03-01T09:30:00Z", Some("2026-03-01T10:30:00Z")),
        (Period::Hour, "2026-01-15T00:30:00Z", "2026-03-01T10:30:00Z", "2026-03-01T10:30:00Z", Some("2026-03-01T11:30:00Z")),
        (Period::Day, "2026-01-15T06:00:00Z", "2026-01-15T06:00:00Z", "2026-01-15T06:00:00Z", Some("2026-01-16T06:00:00Z")),
        (Period::Day, "2026-01-15T06:00:00Z", "2026-01-16T05:59:59.999Z", "2026-01-15T06:00:00Z", Some("2026-01-16T06:00:00Z")),
        (Period::Week, "2026-01-05T00:00:00Z", "2026-02-01T23:00:00Z", "2026-01-26T00:00:00Z", Some("2026-02-02T00:00:00Z")),
        // UTC: the days of a daylight saving change elsewhere are 24 hours like any other.
        (Period::Day, "2026-03-01T00:00:00Z", "2026-03-29T01:30:00Z", "2026-03-29T00:00:00Z", Some("2026-03-30T00:00:00Z")),
        (Period::Day, "2026-03-01T00:00:00Z", "2026-11-01T07:00:00Z", "2026-11-01T00:00:00Z", Some("2026-11-02T00:00:00Z")),
        // An anchor in the future: periods extend back from it.
        (Period::Day, "2026-01-10T12:00:00Z", "2026-01-01T00:00:00Z", "2025-12-31T12:00:00Z", Some("2026-01-01T12:00:00Z")),
        (Period::Month, "2026-06-15T00:00:00Z", "2026-05-20T00:00:00Z", "2026-05-15T00:00:00Z", Some("2026-06-15T00:00:00Z")),
        (Period::Month, "2026-06-15T00:00:00Z", "2026-05-10T00:00:00Z", "2026-04-15T00:00:00Z", Some("2026-05-15T00:00:00Z")),
        // Months: on the anchor's day and time.
        (Period::Month, "2026-01-15T00:00:00Z", "2026-01-15T00:00:00Z", "2026-01-15T00:00:00Z", Some("2026-02-15T00:00:00Z")),
        (Period::Month, "2026-01-15T00:00:00Z", "2026-12-14T23:59:59Z", "2026-11-15T00:00:00Z", Some("2026-12-15T00:00:00Z")),
        (Period::Month, "2026-01-15T00:00:00Z", "2026-12-15T00:00:00Z", "2026-12-15T00:00:00Z", Some("2027-01-15T00:00:00Z")),
        // Month ends: clamped to a shorter month's last day, without drifting the anchor.
        (Period::Month, "2026-01-31T10:00:00Z", "2026-02-15T00:00:00Z", "2026-01-31T10:00:00Z", Some("2026-02-28T10:00:00Z")),
        (Period::Month, "2026-01-31T10:00:00Z", "2026-02-28T10:00:00Z", "2026-02-28T10:00:00Z", Some("2026-03-31T10:00:00Z")),
        (Period::Month, "2026-01-31T10:00:00Z", "2026-03-31T09:59:59Z", "2026-02-28T10:00:00Z", Some("2026-03-31T10:00:00Z")),
        (Period::Month, "2026-01-31T10:00:00Z", "2026-04-01T00:00:00Z", "2026-03-31T10:00:00Z", Some("2026-04-30T10:00:00Z")),
        (Period::Month, "2026-01-31T10:00:00Z", "2026-05-30T12:00:00Z", "2026-04-30T10:00:00Z", Some("2026-05-31T10:00:00Z")),
        (Period::Month, "2026-03-30T00:00:00Z", "2026-03-01T00:00:00Z", "2026-02-28T00:00:00Z", Some("2026-03-30T00:00:00Z")),
        // Leap years.
        (Period::Month, "2024-01-31T00:00:00Z", "2024-02-29T12:00:00Z", "2024-02-29T00:00:00Z", Some("2024-03-31T00:00:00Z")),
        (Period::Month, "2024-01-31T00:00:00Z", "2024-02-28T12:00:00Z", "2024-01-31T00:00:00Z", Some("2024-02-29T00:00:00Z")),
        (Period::Month, "2024-02-29T00:00:00Z", "2025-02-28T00:00:00Z", "2025-02-28T00:00:00Z", Some("2025-03-29T00:00:00Z")),
        (Period::Month, "2024-02-29T00:00:00Z", "2028-02-29T00:00:00Z", "2028-02-29T00:00:00Z", Some("2028-03-29T00:00:00Z")),
        (Period::Day, "2024-02-28T00:00:00Z", "2024-02-29T23:00:00Z", "2024-02-29T00:00:00Z", Some("2024-03-01T00:00:00Z")),
        // Across a year end.
        (Period::Month, "2025-10-31T00:00:00Z", "2026-01-05T00:00:00Z", "2025-12-31T00:00:00Z", Some("2026-01-31T00:00:00Z")),
    ];

    #[test]
    fn a_period_is_the_window_its_anchor_marks_out_around_now() {
        for &(period, anchor, now, start, end) in CASES {
            let window = period.window(at(anchor), at(now));
            let case = format!("{period} from {anchor} at {now}");
            assert_eq!(window.start, at(start), "{case}");
            assert_eq!(window.end, end.map(at), "{case}");
            assert_eq!(period_start(period, at(anchor), at(now)), at(start), "{case}");
            assert_eq!(resets_at(period, at(anchor), at(now)), end.map(at), "{case}");
            assert!(window.start <= at(now) && !window.is_over(at(now)), "{case}");
        }
    }

    #[test]
    fn a_month_anchored_at_a_month_end_renews_on_each_months_last_day() {
        let anchor = at("2026-01-31T00:00:00Z");
        let mut now = anchor;
        let mut ends = Vec::new();
        for _ in 0..13 {
            let end = Period::Month.window(anchor, now).end.unwrap();
            ends.push(end.to_string()[..10].to_owned());
            now = end;
        }
        assert_eq!(
            ends,
            [
                "2026-02-28",
                "2026-03-31",
                "2026-04-30",
                "2026-05-31",
                "2026-06-30",
                "2026-07-31",
                "2026-08-31",
                "2026-09-30",
                "2026-10-31",
                "2026-11-30",
                "2026-12-31",
                "2027-01-31",
                "2027-02-28"
            ]
        );
    }

    #[test]
    fn period_none_never_renews() {
        let window = Period::None.window(at("2026-01-01T00:00:00Z"), at("2099-01-01T00:00:00Z"));
        assert_eq!(window, Window::FOREVER);
        assert!(!window.is_over(at("2999-01-01T00:00:00Z")));
        assert_eq!(window.seconds_left(at("2026-01-01T00:00:00Z")), None);
        assert_eq!(window.length_seconds(), None);
    }

    #[test]
    fn the_ends_of_time_give_a_window_not_a_panic() {
        for period in Period::ALL {
            for (anchor, now) in [(Timestamp::MIN, Timestamp::MAX), (Timestamp::MAX, Timestamp::MIN)] {
                let window = period.window(anchor, now);
                assert!(window.start <= now, "{period}");
            }
        }
    }

    #[test]
    fn seconds_left_round_up_and_are_at_least_one() {
        let window = Period::Hour.window(at("2026-01-01T00:00:00Z"), at("2026-01-01T00:10:00Z"));
        assert_eq!(window.seconds_left(at("2026-01-01T00:10:00Z")), Some(3000));
        assert_eq!(window.seconds_left(at("2026-01-01T00:59:59.5Z")), Some(1));
        assert_eq!(window.seconds_left(at("2026-01-01T01:00:00Z")), Some(1));
        assert_eq!(window.length_seconds(), Some(3600));
        let month = Period::Month.window(at("2026-02-01T00:00:00Z"), at("2026-02-10T00:00:00Z"));
        assert_eq!(month.length_seconds(), Some(28 * 86_400));
    }

    /// The seconds-and-nanoseconds arithmetic rounds as dividing the nanoseconds apart would,
    /// across the epoch (where jiff's parts are negative) and at every carry.
    #[test]
    fn whole_seconds_between_round_up_as_nanosecond_division() {
        let instants = [
            "1969-12-31T23:59:58.25Z",
            "1969-12-31T23:59:59.75Z",
            "1970-01-01T00:00:00Z",
            "1970-01-01T00:00:00.000000001Z",
            "1970-01-01T00:00:01.5Z",
            "2026-01-01T00:59:59.999999999Z",
            "2026-01-01T01:00:00Z",
            "2026-01-01T01:00:00.5Z",
            "2026-01-01T01:00:01Z",
        ];
        for from in instants.map(at) {
            for to in instants.map(at) {
                let nanos = u128::try_from(to.as_nanosecond() - from.as_nanosecond()).unwrap_or(0);
                let expected = u64::try_from(nanos.div_ceil(1_000_000_000)).unwrap();
                assert_eq!(ceil_seconds_between(from, to), expected, "{from} to {to}");
            }
        }
    }

    #[test]
    fn periods_read_and_write_as_their_names() {
        for period in Period::ALL {
            assert_eq!(period.as_str().parse::<Period>(), Ok(period));
            let json = serde_json::to_string(&period).unwrap();
            assert_eq!(json, format!("\"{period}\""));
        }
        assert!("monthly".parse::<Period>().is_err());
        let spec: QuotaSpec =
            serde_json::from_str(r#"{"limit":100000,"period":"month","anchor":"2026-01-15T00:00:00Z"}"#)
                .unwrap();
        assert_eq!(
            spec.window(at("2026-02-20T00:00:00Z")).start,
            at("2026-02-15T00:00:00Z")
        );
    }

    #[test]
    fn a_quota_request_is_checked_whole_and_anchored_by_default() {
        let read = |text: &str| serde_json::from_str::<QuotaRequest>(text).map_err(|e| e.to_string());
        let request = read(r#"{"limit":100,"period":"day"}"#).unwrap();
        let anchor = at("2026-02-01T10:00:00Z");
        assert_eq!(request.anchored(anchor).anchor, anchor);
        let named = read(r#"{"limit":1,"period":"none","anchor":"2026-01-15T00:00:00Z"}"#).unwrap();
        assert_eq!(named.anchored(anchor).anchor, at("2026-01-15T00:00:00Z"));
        for (bad, says) in [
            (r#"{"limit":0,"period":"day"}"#, "limit must be"),
            (r#"{"limit":9007199254740992,"period":"day"}"#, "limit must be"),
            (r#"{"limit":-1,"period":"day"}"#, "invalid value"),
            (r#"{"limit":1,"period":"monthly"}"#, "is not one of"),
            (r#"{"limit":1,"period":"day","anchor":"soon"}"#, "not an RFC 3339"),
            (r#"{"limit":1,"period":"day","every":2}"#, "has no field `every`"),
            (r#"{"period":"day"}"#, "needs the field `limit`"),
        ] {
            let error = read(bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn a_quotas_use_counts_top_ups_in_its_allowance() {
        let window = Period::Day.window(at("2026-01-01T00:00:00Z"), at("2026-01-01T12:00:00Z"));
        let state = QuotaUse::new(100, 50, 120, &window);
        assert_eq!((state.limit, state.used, state.remaining), (150, 120, 30));
        assert_eq!(QuotaUse::new(100, 0, 120, &window).remaining, 0);
        let json = serde_json::to_value(state).unwrap();
        assert_eq!(json["resets_at"], "2026-01-02T00:00:00Z");
    }
}
