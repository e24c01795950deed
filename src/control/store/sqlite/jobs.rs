//! The SQLite store's webhook outbox and leases (control plane): payloads queued in the same
//! transaction as the change they announce and claimed one delivery attempt at a time, and the
//! named leases that let one gateway at a time run a job (the idle sweep).

use std::time::Duration;

use jiff::Timestamp;
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::control::store::model::{lease_until, PendingWebhook};
use crate::control::store::StoreError;

/// Queues a webhook payload for delivery.
pub(super) fn enqueue(conn: &Connection, payload: &str, now: Timestamp) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO webhook_outbox (payload, next_attempt_at, created_at) VALUES (?1, ?2, ?2)",
    )?
    .execute(params![payload, now.as_millisecond()])?;
    Ok(())
}

/// Webhook deliveries due at `now`, oldest first.
pub(super) fn due(
    conn: &Connection,
    now: Timestamp,
    limit: usize,
) -> Result<Vec<PendingWebhook>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, payload, attempts FROM webhook_outbox WHERE next_attempt_at <= ?1 ORDER BY id LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![now.as_millisecond(), limit as i64], pending)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Takes the oldest payload due at `now` for one attempt, not due again before `until`.
pub(super) fn claim(
    conn: &Connection,
    now: Timestamp,
    until: Timestamp,
) -> Result<Option<PendingWebhook>, StoreError> {
    let claimed = conn
        .prepare_cached(
            "UPDATE webhook_outbox SET next_attempt_at = ?2 WHERE id = \
             (SELECT id FROM webhook_outbox WHERE next_attempt_at <= ?1 ORDER BY id LIMIT 1) \
             RETURNING id, payload, attempts",
        )?
        .query_row(params![now.as_millisecond(), until.as_millisecond()], pending)
        .optional()?;
    Ok(claimed)
}

fn pending(r: &Row<'_>) -> rusqlite::Result<PendingWebhook> {
    Ok(PendingWebhook {
        id: r.get::<_, i64>(0)? as u64,
        payload: r.get(1)?,
        attempts: r.get::<_, i64>(2)?.clamp(0, u32::MAX as i64) as u32,
    })
}

/// Removes a delivered (or abandoned) webhook from the outbox.
pub(super) fn done(conn: &Connection, id: u64) -> Result<(), StoreError> {
    conn.execute("DELETE FROM webhook_outbox WHERE id = ?1", [id as i64])?;
    Ok(())
}

/// Counts a failed attempt and sets when to try again.
pub(super) fn retry_at(conn: &Connection, id: u64, attempts: u32, at: Timestamp) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE webhook_outbox SET attempts = ?2, next_attempt_at = ?3 WHERE id = ?1",
        params![id as i64, attempts as i64, at.as_millisecond()],
    )?;
    Ok(())
}

/// Takes or renews the lease `name` for `holder` until `now + ttl`: whether `holder` has it.
pub(super) fn try_lease(
    conn: &Connection,
    name: &str,
    holder: &str,
    now: Timestamp,
    ttl: Duration,
) -> Result<bool, StoreError> {
    let until = lease_until(now, ttl);
    let changed = conn.execute(
        "INSERT INTO leases (name, holder, until_ms) VALUES (?1, ?2, ?3) \
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms \
         WHERE leases.holder = excluded.holder OR leases.until_ms < ?4",
        params![name, holder, until, now.as_millisecond()],
    )?;
    Ok(changed == 1)
}
