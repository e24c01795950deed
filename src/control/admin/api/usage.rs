//! `GET /v1/usage` (control plane): the usage analytics of a key or of a customer's keys, from
//! the hourly rows every replica's usage flush adds to the store, so the answer is the fleet's.
//! This replica's counts not written yet are flushed first; other replicas' are in after their
//! next flush (`store.usage_flush_interval`). As JSON (series by group, points by time) or CSV.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use jiff::Timestamp;
use serde::Serialize;

use super::{blocking, ok, query, Admin, AdminBody, Answer, ApiError};
use crate::control::store::{UsageGroup, UsageOf, UsagePoint, UsageQuery};
use crate::core::units::format_duration;

const PARAMS: &[&str] = &[
    "key_id",
    "customer_id",
    "from",
    "to",
    "granularity",
    "group_by",
    "format",
];
const HOUR: i64 = 3_600;
const DAY: i64 = 86_400;

#[derive(Serialize)]
struct Answered {
    series: Vec<Series>,
}

#[derive(Serialize)]
struct Series {
    group: String,
    points: Vec<Point>,
}

#[derive(Serialize)]
struct Point {
    t: Timestamp,
    count: u64,
}

/// What the query string asks for.
struct Asked {
    query: UsageQuery,
    csv: bool,
}

pub(super) async fn usage(admin: &Admin, request: &Request<Incoming>) -> Answer {
    let retention = admin.shared.snapshot.load().config.usage.retention;
    let asked = asked(&query(request, PARAMS)?, admin.keys.now(), retention)?;
    let flusher = admin.usage.clone();
    let query = asked.query;
    let points = blocking(admin, move |keys| {
        if let Some(flusher) = flusher {
            flusher.flush();
        }
        keys.usage_series(&query)
    })
    .await?;
    let series = series(points);
    Ok(match asked.csv {
        true => csv(&series),
        false => ok(&Answered { series }),
    })
}

/// The query of the parameters, defaults filled in, at `now`.
fn asked(pairs: &[(String, String)], now: Timestamp, retention: Duration) -> Result<Asked, ApiError> {
    let mut of = None;
    let (mut from, mut to, mut bucket, mut group, mut csv) = (None, None, HOUR, UsageGroup::All, false);
    for (name, value) in pairs {
        match name.as_str() {
            "key_id" | "customer_id" if of.is_some() => {
                return Err(ApiError::bad(
                    name.clone(),
                    "give key_id or customer_id, not both",
                ))
            }
            "key_id" => of = Some(UsageOf::Key(value.clone())),
            "customer_id" => of = Some(UsageOf::Customer(value.clone())),
            "from" => from = Some(instant(name, value)?),
            "to" => to = Some(instant(name, value)?),
            "granularity" => bucket = granularity(value)?,
            "group_by" => group = group_by(value)?,
            "format" => csv = format(value)?,
            _ => {}
        }
    }
    let of = of.ok_or_else(|| ApiError::bad("key_id", "key_id or customer_id is required"))?;
    // Rows are kept for `retention`; an hour's slack lets a client ask for "the last 90 days"
    // by its own clock, a little behind this one.
    let kept_from = now.as_second() - i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
    let to = to.unwrap_or(now.as_second());
    let default_span = if bucket == DAY { 30 * DAY } else { DAY };
    let from = from.unwrap_or((to - default_span).max(kept_from));
    if from > to {
        return Err(ApiError::bad("from", "must not be after to"));
    }
    if from < kept_from - HOUR {
        return Err(ApiError::bad(
            "from",
            format!(
                "usage is kept for {} (usage.retention)",
                format_duration(retention)
            ),
        ));
    }
    let query = UsageQuery {
        of,
        // Whole buckets: a day starts at midnight UTC.
        from: from - from.rem_euclid(bucket),
        to,
        bucket,
        group,
    };
    Ok(Asked { query, csv })
}

fn instant(name: &str, value: &str) -> Result<i64, ApiError> {
    value
        .parse::<Timestamp>()
        .map(|t| t.as_second())
        .map_err(|_| ApiError::bad(name, "must be an RFC 3339 time, e.g. 2026-12-06T10:00:00Z"))
}

fn granularity(value: &str) -> Result<i64, ApiError> {
    match value {
        "hour" => Ok(HOUR),
        "day" => Ok(DAY),
        _ => Err(ApiError::bad("granularity", "must be hour or day")),
    }
}

fn group_by(value: &str) -> Result<UsageGroup, ApiError> {
    match value {
        "status" => Ok(UsageGroup::Status),
        "route" => Ok(UsageGroup::Route),
        _ => Err(ApiError::bad("group_by", "must be status or route")),
    }
}

fn format(value: &str) -> Result<bool, ApiError> {
    match value {
        "json" => Ok(false),
        "csv" => Ok(true),
        _ => Err(ApiError::bad("format", "must be json or csv")),
    }
}

/// The store's points (ordered by group, then time) as one series per group.
fn series(points: Vec<UsagePoint>) -> Vec<Series> {
    let mut series: Vec<Series> = Vec::new();
    for point in points {
        let t = Timestamp::from_second(point.t).unwrap_or(Timestamp::UNIX_EPOCH);
        let point_out = Point {
            t,
            count: point.count,
        };
        match series.last_mut() {
            Some(last) if last.group == point.group => last.points.push(point_out),
            _ => series.push(Series {
                group: point.group,
                points: vec![point_out],
            }),
        }
    }
    series
}

/// `t,group,count`, a line a point, in the order of the JSON answer.
fn csv(series: &[Series]) -> Response<AdminBody> {
    let mut text = String::from("t,group,count\n");
    for one in series {
        for point in &one.points {
            text.push_str(&format!(
                "{},{},{}\n",
                point.t,
                csv_field(&one.group),
                point.count
            ));
        }
    }
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    response
}

/// A CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180).
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_796_000_000;
    const RETENTION: Duration = Duration::from_secs(90 * 86_400);

    fn ask(query: &str) -> Result<Asked, ApiError> {
        let pairs: Vec<(String, String)> = query
            .split('&')
            .filter_map(|p| p.split_once('='))
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect();
        asked(&pairs, Timestamp::from_second(NOW).unwrap(), RETENTION)
    }

    fn field(query: &str) -> String {
        match ask(query) {
            Ok(_) => panic!("{query} accepted"),
            Err(error) => error.field.unwrap_or_default(),
        }
    }

    #[test]
    fn defaults_are_the_last_day_by_hour_and_the_last_30_days_by_day() {
        let hourly = ask("key_id=k").unwrap().query;
        assert_eq!(
            (hourly.from, hourly.to, hourly.bucket),
            (NOW - DAY - (NOW - DAY) % HOUR, NOW, HOUR)
        );
        assert_eq!(hourly.group, UsageGroup::All);
        let daily = ask("customer_id=c&granularity=day&group_by=route").unwrap().query;
        assert_eq!(
            daily.from,
            (NOW - 30 * DAY) - (NOW - 30 * DAY) % DAY,
            "from midnight UTC"
        );
        assert_eq!(daily.of, UsageOf::Customer("c".into()));
        assert_eq!(daily.group, UsageGroup::Route);
    }

    #[test]
    fn bad_parameters_name_their_field() {
        assert_eq!(field(""), "key_id");
        assert_eq!(field("key_id=a&customer_id=b"), "customer_id");
        assert_eq!(field("key_id=a&from=yesterday"), "from");
        assert_eq!(field("key_id=a&to=2026-13-01T00:00:00Z"), "to");
        assert_eq!(
            field("key_id=a&from=2026-12-07T00:00:00Z&to=2026-12-06T00:00:00Z"),
            "from"
        );
        assert_eq!(field("key_id=a&from=2000-01-01T00:00:00Z"), "from");
        assert_eq!(field("key_id=a&granularity=week"), "granularity");
        assert_eq!(field("key_id=a&group_by=key"), "group_by");
        assert_eq!(field("key_id=a&format=xml"), "format");
    }

    #[test]
    fn points_become_one_series_per_group_and_csv_quotes_what_needs_it() {
        let point = |group: &str, t, count| UsagePoint {
            group: group.into(),
            t,
            count,
        };
        let series = series(vec![
            point("200", 0, 2),
            point("200", 3600, 1),
            point("a,b", 0, 5),
        ]);
        assert_eq!(series.len(), 2);
        assert_eq!(series[0].points.len(), 2);
        let response = csv(&series);
        assert_eq!(response.headers()[CONTENT_TYPE], "text/csv; charset=utf-8");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
    }
}
