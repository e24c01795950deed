//! The PostgreSQL store's usage analytics (control plane): hourly rows added in the usage
//! flush's transaction by one statement (arrays unnested, added on conflict), and the series
//! query over them.

use deadpool_postgres::GenericClient;

use super::Tx;
use crate::control::store::analytics::{
    series_sql, whose, Dialect, HourRow, UsageOf, UsagePoint, UsageQuery,
};
use crate::control::store::row::signed;
use crate::control::store::StoreError;

const DIALECT: Dialect = Dialect {
    param: |n| format!("${n}"),
    sum: "SUM(requests)::BIGINT",
};

/// Adds the rows to the hourly counts. The flusher sorts them, so two replicas flushing the
/// same rows lock them in the same order and cannot deadlock.
pub(super) async fn record(tx: &Tx<'_>, rows: &[HourRow]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let seqs: Vec<i64> = rows.iter().map(|r| signed(r.seq)).collect();
    let routes: Vec<&str> = rows.iter().map(|r| &*r.route).collect();
    let statuses: Vec<i32> = rows.iter().map(|r| i32::from(r.status)).collect();
    let hours: Vec<i64> = rows.iter().map(|r| r.hour).collect();
    let requests: Vec<i64> = rows.iter().map(|r| signed(r.requests)).collect();
    tx.execute(
        "INSERT INTO usage_hours (key_seq, route, status, hour, requests) \
         SELECT * FROM unnest($1::BIGINT[], $2::TEXT[], $3::INTEGER[], $4::BIGINT[], $5::BIGINT[]) \
         ON CONFLICT (key_seq, hour, route, status) \
         DO UPDATE SET requests = usage_hours.requests + excluded.requests",
        &[&seqs, &routes, &statuses, &hours, &requests],
    )
    .await?;
    Ok(())
}

/// The points of a usage series.
pub(super) async fn series(
    client: &impl GenericClient,
    query: &UsageQuery,
) -> Result<Vec<UsagePoint>, StoreError> {
    if let UsageOf::Key(id) = &query.of {
        client
            .query_opt("SELECT 1 FROM keys WHERE id = $1", &[id])
            .await?
            .ok_or(StoreError::NotFound)?;
    }
    let rows = client
        .query(
            &series_sql(query, &DIALECT),
            &[&whose(query), &query.from, &query.to, &query.bucket],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| UsagePoint {
            group: r.get(0),
            t: r.get(1),
            count: r.get::<_, i64>(2) as u64,
        })
        .collect())
}

/// Deletes the rows of hours before `before`.
pub(super) async fn prune(client: &impl GenericClient, before: i64) -> Result<u64, StoreError> {
    Ok(client
        .execute("DELETE FROM usage_hours WHERE hour < $1", &[&before])
        .await?)
}
