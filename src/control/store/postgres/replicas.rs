//! The PostgreSQL store's replica rows (control plane), and the receipts' wake-ups: a
//! heartbeat written to answer a receipt, and a receipt waited for, are announced on the
//! store's channel ([`super::listen`] tells them from change revisions by their payload).

use deadpool_postgres::GenericClient;
use jiff::Timestamp;
use tokio_postgres::Row;

use super::Tx;
use crate::control::store::replicas::{Cells, ReplicaRow, COLUMNS, RECEIPT_PREFIX, REPORTED};
use crate::control::store::row::signed;
use crate::control::store::StoreError;

/// Writes `row`, drops the stale rows, answers the rows left; announces the row when
/// `announce`.
pub(super) async fn heartbeat(
    tx: &Tx<'_>,
    channel: &str,
    row: &ReplicaRow,
    stale_before: Timestamp,
    announce: bool,
) -> Result<Vec<ReplicaRow>, StoreError> {
    let updates = COLUMNS
        .split(", ")
        .skip(1)
        .map(|column| format!("{column} = excluded.{column}"))
        .collect::<Vec<_>>()
        .join(", ");
    tx.execute(
        &format!(
            "INSERT INTO replicas ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (id) DO UPDATE SET {updates}"
        ),
        &[
            &row.id,
            &row.host,
            &row.version,
            &row.advertise,
            &row.config_digest,
            &signed(row.revision),
            &row.synced_at.map(|at| at.as_millisecond()),
            &row.limiter,
            &row.started_at.as_millisecond(),
            &row.heartbeat_at.as_millisecond(),
        ],
    )
    .await?;
    tx.execute(
        "DELETE FROM replicas WHERE heartbeat_at_ms < $1",
        &[&stale_before.as_millisecond()],
    )
    .await?;
    if announce {
        tx.execute("SELECT pg_notify($1, $2)", &[&channel, &REPORTED])
            .await?;
    }
    live(tx, stale_before).await
}

/// The rows whose heartbeat is at or after `live_since`, by id.
pub(super) async fn live(
    client: &impl GenericClient,
    live_since: Timestamp,
) -> Result<Vec<ReplicaRow>, StoreError> {
    let rows = client
        .query(
            &format!("SELECT {COLUMNS} FROM replicas WHERE heartbeat_at_ms >= $1 ORDER BY id"),
            &[&live_since.as_millisecond()],
        )
        .await?;
    rows.iter().map(|row| cells(row).decode()).collect()
}

pub(super) async fn remove(client: &impl GenericClient, id: &str) -> Result<(), StoreError> {
    client
        .execute("DELETE FROM replicas WHERE id = $1", &[&id])
        .await?;
    Ok(())
}

/// Tells the listening replicas that a receipt for `revision` is waited for.
pub(super) async fn want_receipt(
    client: &impl GenericClient,
    channel: &str,
    revision: u64,
) -> Result<(), StoreError> {
    let payload = format!("{RECEIPT_PREFIX}{revision}");
    client
        .execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
        .await?;
    Ok(())
}

fn cells(row: &Row) -> Cells {
    Cells {
        id: row.get(0),
        host: row.get(1),
        version: row.get(2),
        advertise: row.get(3),
        config_digest: row.get(4),
        revision: row.get(5),
        synced_at_ms: row.get(6),
        limiter: row.get(7),
        started_at_ms: row.get(8),
        heartbeat_at_ms: row.get(9),
    }
}
