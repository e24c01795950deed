//! The PostgreSQL store's webhook outbox and leases (control plane): payloads queued in the same
//! transaction as the change they announce and claimed one delivery attempt at a time by one
//! replica, and the named leases that let one replica at a time run a job (the idle sweep).

use std::time::Duration;

use deadpool_postgres::GenericClient;
use jiff::Timestamp;
use tokio_postgres::Row;

use super::signed_len;
use crate::control::store::model::{lease_until, PendingWebhook};
use crate::control::store::row::signed;
use crate::control::store::StoreError;

/// Queues a webhook payload for delivery.
pub(super) async fn enqueue(
    client: &impl GenericClient,
    payload: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO webhook_outbox (payload, next_attempt_at, created_at) VALUES ($1, $2, $2)",
            &[&payload, &now.as_millisecond()],
        )
        .await?;
    Ok(())
}

/// Webhook deliveries due at `now`, oldest first.
pub(super) async fn due(
    client: &impl GenericClient,
    now: Timestamp,
    limit: usize,
) -> Result<Vec<PendingWebhook>, StoreError> {
    let rows = client
        .query(
            "SELECT id, payload, attempts FROM webhook_outbox WHERE next_attempt_at <= $1 \
             ORDER BY id LIMIT $2",
            &[&now.as_millisecond(), &signed_len(limit)],
        )
        .await?;
    Ok(rows.iter().map(pending).collect())
}

/// Takes the oldest payload due at `now` for one attempt, not due again before `until`.
/// `SKIP LOCKED`: two replicas claiming at once take two different payloads.
pub(super) async fn claim(
    client: &impl GenericClient,
    now: Timestamp,
    until: Timestamp,
) -> Result<Option<PendingWebhook>, StoreError> {
    let row = client
        .query_opt(
            "UPDATE webhook_outbox SET next_attempt_at = $2 WHERE id = \
             (SELECT id FROM webhook_outbox WHERE next_attempt_at <= $1 ORDER BY id LIMIT 1 \
              FOR UPDATE SKIP LOCKED) \
             RETURNING id, payload, attempts",
            &[&now.as_millisecond(), &until.as_millisecond()],
        )
        .await?;
    Ok(row.as_ref().map(pending))
}

fn pending(row: &Row) -> PendingWebhook {
    PendingWebhook {
        id: row.get::<_, i64>(0) as u64,
        payload: row.get(1),
        attempts: row.get::<_, i64>(2).clamp(0, i64::from(u32::MAX)) as u32,
    }
}

/// Removes a delivered (or abandoned) webhook from the outbox.
pub(super) async fn done(client: &impl GenericClient, id: u64) -> Result<(), StoreError> {
    client
        .execute("DELETE FROM webhook_outbox WHERE id = $1", &[&signed(id)])
        .await?;
    Ok(())
}

/// Counts a failed attempt and sets when to try again.
pub(super) async fn retry_at(
    client: &impl GenericClient,
    id: u64,
    attempts: u32,
    at: Timestamp,
) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE webhook_outbox SET attempts = $2, next_attempt_at = $3 WHERE id = $1",
            &[&signed(id), &i64::from(attempts), &at.as_millisecond()],
        )
        .await?;
    Ok(())
}

/// Takes or renews the lease `name` for `holder` until `now + ttl`: whether `holder` has it.
pub(super) async fn try_lease(
    client: &impl GenericClient,
    name: &str,
    holder: &str,
    now: Timestamp,
    ttl: Duration,
) -> Result<bool, StoreError> {
    let until = lease_until(now, ttl);
    let changed = client
        .execute(
            "INSERT INTO leases (name, holder, until_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms \
             WHERE leases.holder = excluded.holder OR leases.until_ms < $4",
            &[&name, &holder, &until, &now.as_millisecond()],
        )
        .await?;
    Ok(changed == 1)
}
