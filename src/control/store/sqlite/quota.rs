//! The SQLite store's quota counters (control plane): one row read and written inside the
//! caller's `IMMEDIATE` transaction, which holds the write lock; what the row becomes is
//! [`CounterRow`]'s to compute, the same for both stores.

use rusqlite::{params, OptionalExtension, Transaction};

use crate::control::store::quota::{
    forever_period, from_column, to_column, CounterId, CounterRow, LeaseAsk, LeaseGrant,
};
use crate::control::store::StoreError;
use crate::core::quota::QuotaChange;

pub(super) fn lease(tx: &Transaction<'_>, ask: &LeaseAsk<'_>) -> Result<LeaseGrant, StoreError> {
    let grant = read(tx, &ask.counter)?.lease(ask);
    write(tx, &ask.counter, &grant.row)?;
    Ok(grant)
}

pub(super) fn change(
    tx: &Transaction<'_>,
    counter: &CounterId<'_>,
    change: QuotaChange,
) -> Result<CounterRow, StoreError> {
    let row = read(tx, counter)?.changed(change);
    if change != QuotaChange::Read {
        write(tx, counter, &row)?;
    }
    Ok(row)
}

/// Deletes the counters of periods a later one of the same owner followed by `before`.
pub(super) fn prune(tx: &Transaction<'_>, before: i64) -> Result<u64, StoreError> {
    let deleted = tx.execute(
        "DELETE FROM quota_counters WHERE period > ?2 AND EXISTS (SELECT 1 FROM quota_counters \
         AS later WHERE later.kind = quota_counters.kind AND later.owner = quota_counters.owner \
         AND later.period > quota_counters.period AND later.period <= ?1)",
        params![before, forever_period()],
    )?;
    Ok(deleted as u64)
}

fn read(tx: &Transaction<'_>, counter: &CounterId<'_>) -> Result<CounterRow, StoreError> {
    let row = tx
        .prepare_cached(
            "SELECT used, added, generation, warned FROM quota_counters \
             WHERE kind = ?1 AND owner = ?2 AND period = ?3",
        )?
        .query_row(params![counter.kind, counter.owner, counter.period], |row| {
            Ok(CounterRow {
                used: from_column(row.get(0)?),
                added: from_column(row.get(1)?),
                generation: row.get(2)?,
                warned: row.get::<_, i64>(3)? as u64,
            })
        })
        .optional()?;
    Ok(row.unwrap_or_default())
}

fn write(tx: &Transaction<'_>, counter: &CounterId<'_>, row: &CounterRow) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO quota_counters (kind, owner, period, used, added, generation, warned) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
         ON CONFLICT (kind, owner, period) DO UPDATE SET used = excluded.used, \
         added = excluded.added, generation = excluded.generation, warned = excluded.warned",
    )?
    .execute(params![
        counter.kind,
        counter.owner,
        counter.period,
        to_column(row.used),
        to_column(row.added),
        row.generation,
        row.warned as i64
    ])?;
    Ok(())
}
