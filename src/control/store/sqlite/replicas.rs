//! The SQLite store's replica rows (control plane): gateways sharing one file each write
//! their own row, as replicas on one PostgreSQL do. SQLite pushes nothing: there is no
//! [`crate::control::store::FleetFeed`], and every replica reports each change it applies.

use jiff::Timestamp;
use rusqlite::{params, Connection, Row, Transaction};

use crate::control::store::replicas::{Cells, ReplicaRow, COLUMNS};
use crate::control::store::row::signed;
use crate::control::store::StoreError;

/// Writes `row`, drops the stale rows, answers the rows left.
pub(super) fn heartbeat(
    tx: &Transaction<'_>,
    row: &ReplicaRow,
    stale_before: Timestamp,
) -> Result<Vec<ReplicaRow>, StoreError> {
    tx.prepare_cached(&format!(
        "INSERT OR REPLACE INTO replicas ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
    ))?
    .execute(params![
        row.id,
        row.host,
        row.version,
        row.advertise,
        row.config_digest,
        signed(row.revision),
        row.synced_at.map(|at| at.as_millisecond()),
        row.limiter,
        row.started_at.as_millisecond(),
        row.heartbeat_at.as_millisecond(),
    ])?;
    tx.prepare_cached("DELETE FROM replicas WHERE heartbeat_at_ms < ?1")?
        .execute([stale_before.as_millisecond()])?;
    live(tx, stale_before)
}

/// The rows whose heartbeat is at or after `live_since`, by id.
pub(super) fn live(conn: &Connection, live_since: Timestamp) -> Result<Vec<ReplicaRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM replicas WHERE heartbeat_at_ms >= ?1 ORDER BY id"
    ))?;
    let rows = stmt.query_map([live_since.as_millisecond()], cells)?;
    rows.map(|cells| cells?.decode()).collect()
}

pub(super) fn remove(conn: &Connection, id: &str) -> Result<(), StoreError> {
    conn.execute("DELETE FROM replicas WHERE id = ?1", [id])?;
    Ok(())
}

fn cells(r: &Row<'_>) -> rusqlite::Result<Cells> {
    Ok(Cells {
        id: r.get(0)?,
        host: r.get(1)?,
        version: r.get(2)?,
        advertise: r.get(3)?,
        config_digest: r.get(4)?,
        revision: r.get(5)?,
        synced_at_ms: r.get(6)?,
        limiter: r.get(7)?,
        started_at_ms: r.get(8)?,
        heartbeat_at_ms: r.get(9)?,
    })
}
