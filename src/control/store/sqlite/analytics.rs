//! The SQLite store's usage analytics (control plane): hourly rows added in the usage flush's
//! transaction, a multi-row upsert per [`CHUNK`] rows, and the series query over them.

use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Transaction};

use crate::control::store::analytics::{
    series_sql, whose, Dialect, HourRow, UsageOf, UsagePoint, UsageQuery,
};
use crate::control::store::StoreError;

/// Rows per statement: five parameters each keeps a statement well within SQLite's bound of
/// 32,766 parameters, and full chunks share one cached statement.
const CHUNK: usize = 1000;

const DIALECT: Dialect = Dialect {
    param: |n| format!("?{n}"),
    sum: "SUM(requests)",
};

/// Adds the rows to the hourly counts.
pub(super) fn record(tx: &Transaction<'_>, rows: &[HourRow]) -> Result<(), StoreError> {
    for chunk in rows.chunks(CHUNK) {
        let sql = upsert_sql(chunk.len());
        let values = chunk.iter().flat_map(|row| {
            [
                rusqlite::types::Value::Integer(row.seq as i64),
                rusqlite::types::Value::Text(row.route.to_string()),
                rusqlite::types::Value::Integer(i64::from(row.status)),
                rusqlite::types::Value::Integer(row.hour),
                rusqlite::types::Value::Integer(row.requests as i64),
            ]
        });
        tx.prepare_cached(&sql)?.execute(params_from_iter(values))?;
    }
    Ok(())
}

fn upsert_sql(rows: usize) -> String {
    let values = vec!["(?, ?, ?, ?, ?)"; rows].join(", ");
    format!(
        "INSERT INTO usage_hours (key_seq, route, status, hour, requests) VALUES {values} \
         ON CONFLICT (key_seq, hour, route, status) DO UPDATE SET requests = requests + excluded.requests"
    )
}

/// The points of a usage series.
pub(super) fn series(conn: &Connection, query: &UsageQuery) -> Result<Vec<UsagePoint>, StoreError> {
    if let UsageOf::Key(id) = &query.of {
        conn.query_row("SELECT 1 FROM keys WHERE id = ?1", [id], |_| Ok(()))
            .optional()?
            .ok_or(StoreError::NotFound)?;
    }
    let mut stmt = conn.prepare_cached(&series_sql(query, &DIALECT))?;
    let rows = stmt.query_map(params![whose(query), query.from, query.to, query.bucket], |r| {
        Ok(UsagePoint {
            group: r.get(0)?,
            t: r.get(1)?,
            count: r.get::<_, i64>(2)? as u64,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Deletes the rows of hours before `before`.
pub(super) fn prune(tx: &Transaction<'_>, before: i64) -> Result<u64, StoreError> {
    let deleted = tx.execute("DELETE FROM usage_hours WHERE hour < ?1", [before])?;
    Ok(deleted as u64)
}
