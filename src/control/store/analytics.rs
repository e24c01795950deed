//! Usage analytics in the store (control plane), shared by both backends: the hourly rows a
//! usage flush adds (requests by key, route, status and hour, summed over every replica that
//! adds its own), the question `GET /v1/usage` asks of them, and the one query that answers it,
//! written once for both SQL dialects.

use std::sync::Arc;

/// Requests of one key on one route answered with one status in one hour, as one replica
/// counted them since its last flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourRow {
    pub seq: u64,
    pub route: Arc<str>,
    pub status: u16,
    /// Unix seconds of the hour's start.
    pub hour: i64,
    pub requests: u64,
}

/// Whose requests a usage series counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageOf {
    /// One key, by id; an unknown id is [`super::StoreError::NotFound`].
    Key(String),
    /// Every key with this `customer_id`.
    Customer(String),
}

/// What a usage series is split by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageGroup {
    /// One series, `all`.
    All,
    Status,
    Route,
}

/// Requests of [`UsageOf`] in `[from, to)` (Unix seconds; hours that start in it), summed by
/// `bucket` (3600 or 86400 seconds, UTC) and by group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    pub of: UsageOf,
    pub from: i64,
    pub to: i64,
    pub bucket: i64,
    pub group: UsageGroup,
}

/// One bucket of one group: only buckets that counted something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsagePoint {
    pub group: String,
    /// Unix seconds of the bucket's start.
    pub t: i64,
    pub count: u64,
}

/// How a backend writes what the query needs.
pub(super) struct Dialect {
    /// The n-th parameter (1-based): `?1`, `$1`.
    pub param: fn(usize) -> String,
    /// A sum of 64-bit integers as one (PostgreSQL's `SUM` of `BIGINT` is `NUMERIC`).
    pub sum: &'static str,
}

/// The series query, points ordered by group then time. Parameters: 1 the key id or customer,
/// 2 `from`, 3 `to`, 4 `bucket`.
pub(super) fn series_sql(query: &UsageQuery, dialect: &Dialect) -> String {
    let p = dialect.param;
    let whose = match query.of {
        UsageOf::Key(_) => "id",
        UsageOf::Customer(_) => "customer_id",
    };
    let (group, by) = match query.group {
        UsageGroup::All => ("'all'", ""),
        UsageGroup::Status => ("CAST(status AS TEXT)", "g, "),
        UsageGroup::Route => ("route", "g, "),
    };
    format!(
        "SELECT {group} AS g, hour - hour % {bucket} AS t, {sum} FROM usage_hours \
         WHERE key_seq IN (SELECT seq FROM keys WHERE {whose} = {who}) \
         AND hour >= {from} AND hour < {to} GROUP BY {by}t ORDER BY {by}t",
        bucket = p(4),
        sum = dialect.sum,
        who = p(1),
        from = p(2),
        to = p(3),
    )
}

/// The key id or customer of a query, its first parameter.
pub(super) fn whose(query: &UsageQuery) -> &str {
    match &query.of {
        UsageOf::Key(id) | UsageOf::Customer(id) => id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_by_status_groups_and_orders_by_status_then_time() {
        let query = UsageQuery {
            of: UsageOf::Customer("acme".into()),
            from: 0,
            to: 10,
            bucket: 86_400,
            group: UsageGroup::Status,
        };
        let dialect = Dialect {
            param: |n| format!("${n}"),
            sum: "SUM(requests)",
        };
        let sql = series_sql(&query, &dialect);
        assert!(sql.contains("WHERE customer_id = $1"), "{sql}");
        assert!(sql.ends_with("GROUP BY g, t ORDER BY g, t"), "{sql}");
    }
}
