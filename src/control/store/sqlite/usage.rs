//! The SQLite store's usage counters and idle-expiry bookkeeping (control plane): daily request
//! totals and last use, written beside the keys without bumping the revision, the keys idle
//! long enough to warn about or revoke, and the warnings already sent.

use jiff::Timestamp;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::jobs::enqueue;
use crate::control::store::model::{DayUsage, IdleKey, Usage, UsageDelta};
use crate::control::store::row::instant;
use crate::control::store::StoreError;

/// Adds counted requests to the daily totals and moves `last_used_at` forward.
pub(super) fn record(tx: &Transaction<'_>, deltas: &[UsageDelta]) -> Result<(), StoreError> {
    for delta in deltas {
        let seq = delta.seq as i64;
        let at = delta.last_used_at.as_second();
        if delta.previous {
            tx.prepare_cached(
                "UPDATE keys SET previous_last_used_at = MAX(COALESCE(previous_last_used_at, 0), ?2) \
                 WHERE seq = ?1",
            )?
            .execute(params![seq, at])?;
        } else {
            tx.prepare_cached(
                "UPDATE keys SET last_used_at = MAX(COALESCE(last_used_at, 0), ?2) WHERE seq = ?1",
            )?
            .execute(params![seq, at])?;
        }
        let day = delta
            .last_used_at
            .to_zoned(jiff::tz::TimeZone::UTC)
            .date()
            .to_string();
        tx.prepare_cached(
            "INSERT INTO key_usage (key_seq, day, requests) SELECT ?1, ?2, ?3 WHERE EXISTS \
             (SELECT 1 FROM keys WHERE seq = ?1) \
             ON CONFLICT (key_seq, day) DO UPDATE SET requests = requests + excluded.requests",
        )?
        .execute(params![seq, day, delta.requests as i64])?;
    }
    Ok(())
}

/// Usage history of a key, deleted or not.
pub(super) fn of_key(conn: &Connection, id: &str) -> Result<Usage, StoreError> {
    let (seq, last_used_at): (i64, Option<i64>) = conn
        .query_row("SELECT seq, last_used_at FROM keys WHERE id = ?1", [id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?
        .ok_or(StoreError::NotFound)?;
    let mut stmt =
        conn.prepare_cached("SELECT day, requests FROM key_usage WHERE key_seq = ?1 ORDER BY day")?;
    let days = stmt
        .query_map([seq], |r| {
            Ok(DayUsage {
                date: r.get(0)?,
                requests: r.get::<_, i64>(1)? as u64,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Usage {
        key_id: id.to_owned(),
        last_used_at: last_used_at.and_then(|s| Timestamp::from_second(s).ok()),
        total_requests: days.iter().map(|d| d.requests).sum(),
        days,
    })
}

/// Up to `limit` active, unexpired keys idle since `cutoff` or longer, in creation order from
/// after the key with sequence number `after`.
pub(super) fn idle_keys(
    conn: &Connection,
    cutoff: Timestamp,
    now: Timestamp,
    after: u64,
    limit: usize,
) -> Result<Vec<IdleKey>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, id, name, environment, last_used_at, \
         MAX(COALESCE(idle_from, created_at), COALESCE(last_used_at, 0), \
         COALESCE(previous_last_used_at, 0)) AS since FROM keys \
         WHERE status = 'active' AND (expires_at IS NULL OR expires_at > ?2) AND since <= ?1 \
         AND seq > ?3 ORDER BY seq LIMIT ?4",
    )?;
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt.query_map(params![cutoff.as_second(), now.as_second(), after, limit], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Option<i64>>(4)?,
            r.get::<_, i64>(5)?,
        ))
    })?;
    let mut keys = Vec::new();
    for row in rows {
        let (seq, id, name, environment, last_used_at, since) = row?;
        let decoded = (|| {
            Ok::<_, String>(IdleKey {
                seq: seq as u64,
                environment: environment.parse()?,
                last_used_at: instant(last_used_at)?,
                idle_since: instant(Some(since))?.ok_or("no idle time")?,
                id: id.clone(),
                name,
            })
        })();
        keys.push(decoded.map_err(|why| StoreError::Corrupt(format!("key {id}: {why}")))?);
    }
    Ok(keys)
}

/// Records that an idle warning went out and queues its webhook, once per key, deadline and
/// threshold. False when it was recorded before.
pub(super) fn record_warning(
    tx: &Transaction<'_>,
    seq: u64,
    deadline: Timestamp,
    threshold: u64,
    now: Timestamp,
    webhook: Option<&str>,
) -> Result<bool, StoreError> {
    let inserted = tx.execute(
        "INSERT OR IGNORE INTO idle_warnings (key_seq, deadline, threshold, sent_at) VALUES (?1, ?2, ?3, ?4)",
        params![
            seq as i64,
            deadline.as_second(),
            threshold as i64,
            now.as_second()
        ],
    )?;
    if inserted == 1 {
        if let Some(payload) = webhook {
            enqueue(tx, payload, now)?;
        }
    }
    Ok(inserted == 1)
}

/// When the first idle warning for this deadline went out, if one did.
pub(super) fn first_warning_at(
    conn: &Connection,
    seq: u64,
    deadline: Timestamp,
) -> Result<Option<Timestamp>, StoreError> {
    let seconds: Option<i64> = conn.query_row(
        "SELECT MIN(sent_at) FROM idle_warnings WHERE key_seq = ?1 AND deadline = ?2",
        params![seq as i64, deadline.as_second()],
        |r| r.get(0),
    )?;
    instant(seconds).map_err(StoreError::Corrupt)
}
