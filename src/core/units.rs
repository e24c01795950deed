//! Durations (`"250ms"`, `"30s"`, `"10m"`, `"90d"`), rates (`"100/s"`, `"6000/m"`) and instants
//! (`"2027-01-31T00:00:00Z"`, `"2027-01-31"`) as written in the config file, on the command line
//! and in admin API bodies.
//!
//! Shared by both planes; pure parsing, no I/O.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use jiff::civil::Time;
use jiff::fmt::temporal::Pieces;
use jiff::tz::Offset;
use jiff::Timestamp;

/// Why a duration or rate string was refused. The message is shown to the operator as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnitError(String);

const UNITS: &[(&str, u64)] = &[
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// Parses `"<whole number><unit>"` with unit `ms`, `s`, `m`, `h` or `d`.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| {
        UnitError(format!(
            "duration {text:?} has no unit (use ms, s, m, h or d, e.g. \"30s\")"
        ))
    })?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| {
        UnitError(format!(
            "duration {text:?} must start with a whole number, e.g. \"30s\""
        ))
    })?;
    let millis_per_unit = UNITS
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|(_, ms)| *ms)
        .ok_or_else(|| {
            UnitError(format!(
                "duration {text:?} has unknown unit {unit:?} (use ms, s, m, h or d)"
            ))
        })?;
    number
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| UnitError(format!("duration {text:?} is too large")))
}

/// Formats a duration in the largest unit that divides it exactly: `90d`, `10m`, `250ms`.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis() as u64;
    UNITS
        .iter()
        .rev()
        .find(|(_, ms)| millis.is_multiple_of(*ms) && millis > 0)
        .map(|(name, ms)| format!("{}{name}", millis / ms))
        .unwrap_or_else(|| "0s".to_owned())
}

/// How an instant is written, for messages.
pub const INSTANT_SHAPE: &str =
    "an RFC 3339 instant like 2027-01-31T00:00:00Z or a date like 2027-01-31 (midnight UTC)";

/// Parses an RFC 3339 instant (`2027-01-31T12:00:00Z`, `2027-01-31T14:00:00+02:00`), or a date
/// alone as its midnight UTC. A time without an offset is refused: which zone it meant is
/// anyone's guess. So is an instant past the last one a timestamp holds (9999-12-30T22:00:00Z):
/// a date such as 9999-12-31 is written to mean "never", and is refused with that said.
pub fn parse_instant(text: &str) -> Result<Timestamp, UnitError> {
    let text = text.trim();
    let pieces = Pieces::parse(text).map_err(|_| UnitError(format!("{text:?} is not {INSTANT_SHAPE}")))?;
    let (time, offset) = match (pieces.time(), pieces.to_numeric_offset()) {
        (None, _) => (Time::midnight(), Offset::UTC),
        (Some(time), Some(offset)) => (time, offset),
        (Some(_), None) => {
            return Err(UnitError(format!(
                "{text:?} has no offset: add Z for UTC (or one like +02:00)"
            )))
        }
    };
    offset
        .to_timestamp(pieces.date().to_datetime(time))
        .map_err(|_| {
            UnitError(format!(
                "{text:?} is past the last instant keygate holds, {}; for a key that does not expire, give no expiry",
                Timestamp::MAX.strftime("%Y-%m-%dT%H:%M:%SZ")
            ))
        })
}

/// `requests` per `per`: `"100/s"`, `"6000/m"`, `"10/30s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    pub requests: NonZeroU32,
    pub per: Duration,
}

impl FromStr for Rate {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || {
            UnitError(format!(
                "rate {text:?} must look like \"100/s\", \"6000/m\" or \"10/30s\""
            ))
        };
        let (requests, per) = text.trim().split_once('/').ok_or_else(bad)?;
        let requests: u32 = requests.trim().parse().map_err(|_| bad())?;
        let requests = NonZeroU32::new(requests)
            .ok_or_else(|| UnitError(format!("rate {text:?} must allow at least one request")))?;
        let per = per.trim();
        let per = if per.starts_with(|c: char| c.is_ascii_digit()) {
            parse_duration(per)?
        } else {
            parse_duration(&format!("1{per}")).map_err(|_| bad())?
        };
        if per.is_zero() {
            return Err(UnitError(format!("rate {text:?} has a zero period")));
        }
        Ok(Rate { requests, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per = format_duration(self.per);
        match per
            .strip_prefix('1')
            .filter(|unit| unit.starts_with(|c: char| c.is_ascii_alphabetic()))
        {
            Some(unit) => write!(f, "{}/{unit}", self.requests),
            None => write!(f, "{}/{per}", self.requests),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit() {
        for (text, millis) in [
            ("250ms", 250),
            ("30s", 30_000),
            ("10m", 600_000),
            ("2h", 7_200_000),
            ("90d", 7_776_000_000),
            ("0s", 0),
        ] {
            assert_eq!(parse_duration(text), Ok(Duration::from_millis(millis)), "{text}");
        }
    }

    #[test]
    fn durations_without_number_or_unit_are_refused() {
        for text in [
            "",
            "s",
            "30",
            "30x",
            "1.5s",
            "-1s",
            "30 s",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(text).is_err(), "{text} should be refused");
        }
    }

    #[test]
    fn durations_format_in_the_largest_exact_unit() {
        for (millis, text) in [
            (250, "250ms"),
            (30_000, "30s"),
            (600_000, "10m"),
            (7_776_000_000, "90d"),
            (0, "0s"),
        ] {
            assert_eq!(format_duration(Duration::from_millis(millis)), text);
        }
    }

    #[test]
    fn rates_parse_with_unit_or_duration() {
        for (text, requests, per_ms) in [
            ("100/s", 100, 1_000),
            ("6000/m", 6000, 60_000),
            ("10/30s", 10, 30_000),
            ("5/1h", 5, 3_600_000),
        ] {
            let rate: Rate = text.parse().unwrap();
            assert_eq!(
                (rate.requests.get(), rate.per),
                (requests, Duration::from_millis(per_ms)),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_rates_are_refused() {
        for text in ["", "100", "0/s", "100/", "/s", "100/0s", "x/s", "100/x"] {
            assert!(text.parse::<Rate>().is_err(), "{text} should be refused");
        }
    }

    #[test]
    fn instants_parse_with_an_offset_and_dates_as_midnight_utc() {
        for (text, instant) in [
            ("2027-01-31T00:00:00Z", "2027-01-31T00:00:00Z"),
            ("2027-01-31T14:30:00+02:00", "2027-01-31T12:30:00Z"),
            ("2027-01-31", "2027-01-31T00:00:00Z"),
            (" 2027-01-31 ", "2027-01-31T00:00:00Z"),
            ("9999-12-30", "9999-12-30T00:00:00Z"),
        ] {
            assert_eq!(parse_instant(text).unwrap().to_string(), instant, "{text}");
        }
    }

    #[test]
    fn instants_without_an_offset_or_past_9999_are_refused_in_words() {
        for (text, says) in [
            ("tomorrow", "is not an RFC 3339 instant"),
            ("2027-01-31T10:00:00", "has no offset"),
            ("2027-02-30", "is not an RFC 3339 instant"),
            (
                "9999-12-31",
                "past the last instant keygate holds, 9999-12-30T22:00:00Z",
            ),
            ("9999-12-31T23:59:59Z", "past the last instant"),
        ] {
            let error = parse_instant(text).unwrap_err().to_string();
            assert!(error.contains(says), "{text}: {error}");
            assert!(
                !error.contains("unix-seconds") && !error.contains("parameter"),
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn rates_display_as_written() {
        for text in ["100/s", "6000/m", "10/30s"] {
            assert_eq!(text.parse::<Rate>().unwrap().to_string(), text);
        }
    }
}
