//! The PostgreSQL store's usage counters and idle-expiry bookkeeping (control plane): daily
//! request totals and last use, written beside the keys without bumping the revision, the keys
//! idle long enough to warn about or revoke, and the warnings already sent.

use deadpool_postgres::GenericClient;
use jiff::Timestamp;

use super::jobs::enqueue;
use super::{signed_len, Tx};
use crate::control::store::model::{DayUsage, IdleKey, Usage, UsageDelta};
use crate::control::store::row::{instant, signed};
use crate::control::store::StoreError;

/// Adds counted requests to the daily totals and moves `last_used_at` forward: one statement
/// per kind for the whole batch, never one per key.
pub(super) async fn record(tx: &Tx<'_>, deltas: &[UsageDelta]) -> Result<(), StoreError> {
    let seqs: Vec<i64> = deltas.iter().map(|d| signed(d.seq)).collect();
    let previous: Vec<bool> = deltas.iter().map(|d| d.previous).collect();
    let at: Vec<i64> = deltas.iter().map(|d| d.last_used_at.as_second()).collect();
    let days: Vec<String> = deltas
        .iter()
        .map(|d| {
            d.last_used_at
                .to_zoned(jiff::tz::TimeZone::UTC)
                .date()
                .to_string()
        })
        .collect();
    let requests: Vec<i64> = deltas.iter().map(|d| signed(d.requests)).collect();
    tx.execute(
        // GREATEST passes over NULLs: a kind of use the batch has none of stays as it is.
        "UPDATE keys SET \
           last_used_at = GREATEST(keys.last_used_at, d.current_at), \
           previous_last_used_at = GREATEST(keys.previous_last_used_at, d.previous_at) \
         FROM (SELECT seq, max(at) FILTER (WHERE NOT previous) AS current_at, \
                 max(at) FILTER (WHERE previous) AS previous_at \
               FROM unnest($1::BIGINT[], $2::BOOL[], $3::BIGINT[]) AS u(seq, previous, at) \
               GROUP BY seq) AS d WHERE keys.seq = d.seq",
        &[&seqs, &previous, &at],
    )
    .await?;
    tx.execute(
        "INSERT INTO key_usage (key_seq, day, requests) \
         SELECT u.seq, u.day, sum(u.requests) FROM unnest($1::BIGINT[], $2::TEXT[], $3::BIGINT[]) \
           AS u(seq, day, requests) WHERE EXISTS (SELECT 1 FROM keys WHERE keys.seq = u.seq) \
         GROUP BY u.seq, u.day \
         ON CONFLICT (key_seq, day) DO UPDATE SET requests = key_usage.requests + excluded.requests",
        &[&seqs, &days, &requests],
    )
    .await?;
    Ok(())
}

/// Usage history of a key, deleted or not.
pub(super) async fn of_key(client: &impl GenericClient, id: &str) -> Result<Usage, StoreError> {
    let row = client
        .query_opt("SELECT seq, last_used_at FROM keys WHERE id = $1", &[&id])
        .await?
        .ok_or(StoreError::NotFound)?;
    let (seq, last_used_at): (i64, Option<i64>) = (row.get(0), row.get(1));
    let days: Vec<DayUsage> = client
        .query(
            "SELECT day, requests FROM key_usage WHERE key_seq = $1 ORDER BY day",
            &[&seq],
        )
        .await?
        .iter()
        .map(|r| DayUsage {
            date: r.get(0),
            requests: r.get::<_, i64>(1) as u64,
        })
        .collect();
    Ok(Usage {
        key_id: id.to_owned(),
        last_used_at: last_used_at.and_then(|s| Timestamp::from_second(s).ok()),
        total_requests: days.iter().map(|d| d.requests).sum(),
        days,
    })
}

/// Up to `limit` active, unexpired keys idle since `cutoff` or longer, in creation order from
/// after the key with sequence number `after`.
pub(super) async fn idle_keys(
    client: &impl GenericClient,
    cutoff: Timestamp,
    now: Timestamp,
    after: u64,
    limit: usize,
) -> Result<Vec<IdleKey>, StoreError> {
    let rows = client
        .query(
            "SELECT seq, id, name, environment, last_used_at, since FROM ( \
               SELECT seq, id, name, environment, last_used_at, status, expires_at, \
                 GREATEST(COALESCE(idle_from, created_at), COALESCE(last_used_at, 0), \
                          COALESCE(previous_last_used_at, 0)) AS since FROM keys) AS k \
             WHERE status = 'active' AND (expires_at IS NULL OR expires_at > $2) AND since <= $1 \
             AND seq > $3 ORDER BY seq LIMIT $4",
            &[
                &cutoff.as_second(),
                &now.as_second(),
                &signed(after),
                &signed_len(limit),
            ],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let id: String = row.get(1);
            let environment: String = row.get(3);
            let decoded = (|| {
                Ok::<_, String>(IdleKey {
                    seq: row.get::<_, i64>(0) as u64,
                    name: row.get(2),
                    environment: environment.parse()?,
                    last_used_at: instant(row.get(4))?,
                    idle_since: instant(Some(row.get(5)))?.ok_or("no idle time")?,
                    id: id.clone(),
                })
            })();
            decoded.map_err(|why| StoreError::Corrupt(format!("key {id}: {why}")))
        })
        .collect()
}

/// Records that an idle warning went out and queues its webhook, once per key, deadline and
/// threshold. False when it was recorded before.
pub(super) async fn record_warning(
    tx: &Tx<'_>,
    seq: u64,
    deadline: Timestamp,
    threshold: u64,
    now: Timestamp,
    webhook: Option<&str>,
) -> Result<bool, StoreError> {
    let inserted = tx
        .execute(
            "INSERT INTO idle_warnings (key_seq, deadline, threshold, sent_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
            &[
                &signed(seq),
                &deadline.as_second(),
                &signed(threshold),
                &now.as_second(),
            ],
        )
        .await?;
    if inserted == 1 {
        if let Some(payload) = webhook {
            enqueue(tx, payload, now).await?;
        }
    }
    Ok(inserted == 1)
}

/// When the first idle warning for this deadline went out, if one did.
pub(super) async fn first_warning_at(
    client: &impl GenericClient,
    seq: u64,
    deadline: Timestamp,
) -> Result<Option<Timestamp>, StoreError> {
    let seconds: Option<i64> = client
        .query_one(
            "SELECT MIN(sent_at) FROM idle_warnings WHERE key_seq = $1 AND deadline = $2",
            &[&signed(seq), &deadline.as_second()],
        )
        .await?
        .get(0);
    instant(seconds).map_err(StoreError::Corrupt)
}
