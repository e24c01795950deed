//! The SQLite store read whole into a [`Dump`] and a dump written into it (control plane):
//! `keygate store export`, `import` and `copy`.

use std::collections::HashMap;

use rusqlite::{
    params, params_from_iter, Connection, OptionalExtension, Row, Transaction, TransactionBehavior,
};

use super::keys::{mark, Cells};
use super::{conflict, read_revision};
use crate::control::store::dump::{self, Dump, EventRow, KeyRow, Onto, UsageRow, WarningRow, WebhookRow};
use crate::control::store::row::{select_list, Cell, KeyWrite};
use crate::control::store::StoreError;

/// Every row, in one read transaction (a consistent snapshot while gateways write).
pub(super) fn export(conn: &mut Connection) -> Result<Dump, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
    let keys = format!("SELECT {} FROM keys ORDER BY seq", select_list());
    let (customers, customer_events) = super::customers::export(&tx)?;
    let dump = Dump {
            revision: read_revision(&tx)?,
            keys: rows(&tx, &keys, |row| Ok(KeyRow::read(&mut Cells::of(row))))?
                .into_iter()
                .collect::<Result<_, _>>()
                .map_err(StoreError::Corrupt)?,
            usage: rows(&tx, "SELECT key_seq, day, requests FROM key_usage ORDER BY key_seq, day", |r| {
                Ok(UsageRow {
                    key_seq: r.get(0)?,
                    day: r.get(1)?,
                    requests: r.get(2)?,
                })
            })?,
            events: rows(
                &tx,
                "SELECT id, key_id, at, actor, event, changes, token, client FROM key_events ORDER BY id",
                |r| {
                    Ok(EventRow {
                        id: r.get(0)?,
                        key_id: r.get(1)?,
                        at: r.get(2)?,
                        actor: r.get(3)?,
                        event: r.get(4)?,
                        changes: r.get(5)?,
                        token: r.get(6)?,
                        client: r.get(7)?,
                    })
                },
            )?,
            warnings: rows(
                &tx,
                "SELECT key_seq, deadline, threshold, sent_at FROM idle_warnings ORDER BY key_seq, deadline, threshold",
                |r| {
                    Ok(WarningRow {
                        key_seq: r.get(0)?,
                        deadline: r.get(1)?,
                        threshold: r.get(2)?,
                        sent_at: r.get(3)?,
                    })
                },
            )?,
            webhooks: rows(
                &tx,
                "SELECT id, payload, attempts, next_attempt_at, created_at FROM webhook_outbox ORDER BY id",
                |r| {
                    Ok(WebhookRow {
                        id: r.get(0)?,
                        payload: r.get(1)?,
                        attempts: r.get(2)?,
                        next_attempt_at: r.get(3)?,
                        created_at: r.get(4)?,
                    })
                },
            )?,
            customers,
            customer_events,
        };
    tx.finish()?;
    Ok(dump)
}

/// Writes `dump`: all of it or nothing, with the transaction. See [`Onto`] for a store that
/// holds keys already.
pub(super) fn import(tx: &Transaction<'_>, dump: &Dump, onto: Onto) -> Result<(), StoreError> {
    let revision = read_revision(tx)? as i64;
    let keys: i64 = tx.query_row("SELECT count(*) FROM keys", [], |r| r.get(0))?;
    if keys > 0 && onto == Onto::EmptyOnly {
        return Err(dump::not_empty(keys));
    }
    let stamp = dump::import_revision(revision as u64, keys > 0, dump.revision).map(|r| r as i64);
    let mut seqs = HashMap::new();
    for key in &dump.keys {
        seqs.insert(key.seq, put_key(tx, key, stamp.unwrap_or(key.revision))?);
    }
    let seq_of = |seq: i64| {
        seqs.get(&seq)
            .copied()
            .ok_or_else(|| StoreError::Corrupt(format!("the dump's rows name key seq {seq}, which it lacks")))
    };
    for row in &dump.usage {
        tx.prepare_cached(
            "INSERT INTO key_usage (key_seq, day, requests) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key_seq, day) DO UPDATE SET requests = excluded.requests",
        )?
        .execute(params![seq_of(row.key_seq)?, row.day, row.requests])?;
    }
    for row in &dump.events {
        tx.prepare_cached(
            "INSERT INTO key_events (id, key_id, at, actor, event, changes, token, client) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (id) DO NOTHING",
        )?
        .execute(params![
            row.id,
            row.key_id,
            row.at,
            row.actor,
            row.event,
            row.changes,
            row.token,
            row.client
        ])?;
    }
    for row in &dump.warnings {
        tx.prepare_cached(
            "INSERT INTO idle_warnings (key_seq, deadline, threshold, sent_at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            seq_of(row.key_seq)?,
            row.deadline,
            row.threshold,
            row.sent_at
        ])?;
    }
    for row in &dump.webhooks {
        tx.prepare_cached(
            "INSERT INTO webhook_outbox (id, payload, attempts, next_attempt_at, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (id) DO NOTHING",
        )?
        .execute(params![
            row.id,
            row.payload,
            row.attempts,
            row.next_attempt_at,
            row.created_at
        ])?;
    }
    super::customers::import(tx, &dump.customers, &dump.customer_events, stamp)?;
    let last = stamp.unwrap_or(dump.revision as i64);
    tx.execute(
        "UPDATE meta SET value = max(value, ?1) WHERE name = 'revision'",
        params![last],
    )?;
    Ok(())
}

/// Writes one key row at `revision`: over the key of the same id, or as a new row, at the
/// dump's seq when it is free. Returns the row's seq in this store.
fn put_key(tx: &Transaction<'_>, key: &KeyRow, revision: i64) -> Result<i64, StoreError> {
    let existing: Option<i64> = tx
        .query_row("SELECT seq FROM keys WHERE id = ?1", [&key.id], |r| r.get(0))
        .optional()?;
    let seq_taken = || -> Result<bool, StoreError> {
        Ok(tx
            .query_row("SELECT 1 FROM keys WHERE seq = ?1", [key.seq], |_| Ok(()))
            .optional()?
            .is_some())
    };
    let seq = match existing {
        Some(seq) => Some(seq),
        None if seq_taken()? => None,
        None => Some(key.seq),
    };
    let write = match existing {
        Some(_) => KeyWrite::RestoreOver,
        None => KeyWrite::Restore,
    };
    let row = KeyRow {
        seq: seq.unwrap_or_default(),
        revision,
        ..key.clone()
    };
    let mut cells = row.cells();
    // A new row whose seq the target holds already is numbered by the target.
    if seq.is_none() {
        cells[0] = Cell::Int(None);
    }
    tx.prepare_cached(&format!("{} RETURNING seq", write.sql(mark)))?
        .query_row(params_from_iter(write.values(&cells)), |r| r.get(0))
        .map_err(|e| conflict(e, "a key of the dump clashes with a key of the target"))
}

fn rows<T>(
    tx: &Transaction<'_>,
    sql: &str,
    read: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    let mut statement = tx.prepare(sql)?;
    let rows = statement.query_map([], read)?.collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}
