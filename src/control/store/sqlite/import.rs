//! The SQLite store's bulk import (control plane): keys handed out batch by batch, written in
//! one transaction with statements prepared once, and the work that would go to random places
//! in an index (one entry a key) put off to the end and done in order.
//!
//! Inside the import's transaction, and only there (it is all back before the commit, and no
//! other writer runs in between; a rollback undoes it with the rest):
//! - the trigger that claims each key's secret in `secret_hashes` is set aside; the secrets are
//!   claimed at the end in one statement, in hash order. A clash with another key's secret
//!   fails the whole import as before.
//! - once the import has written as many keys as the store held before it, the indexes whose
//!   entries would land at random places (`keys_id`, the keys' unique ids, `key_events_key`, by
//!   key id, `secret_hashes_key`, by key, and `keys_customer`, by customer) are dropped and built
//!   again at the end, from a sort: a million random inserts into a B-tree cost several times
//!   one sort. An id given twice fails the import when `keys_id` is made again. Into a large
//!   store, a small import keeps them (building them again would read the whole store).

use rusqlite::{params, params_from_iter, Statement, Transaction};

use super::keys::{mark, EVENT_INSERT};
use super::{conflict, read_revision};
use crate::control::store::audit::{new_key_fields, with_report};
use crate::control::store::model::{Audit, KeyBatches, NewKey};
use crate::control::store::row::{to_json, KeyRow, KeyWrite};
use crate::control::store::StoreError;

/// The page cache a bulk import works with, in KiB (SQLite's default is 2 MiB): a small import
/// into a large store keeps its indexes, whose entries go to random places.
const IMPORT_CACHE_KIB: i64 = 64 * 1024;

/// The indexes set aside while a large import runs: entries in random order, one a key (a
/// customer's, for the keys that have one).
const RANDOM_ORDER_INDEXES: [&str; 4] = ["keys_id", "key_events_key", "secret_hashes_key", "keys_customer"];

/// Inserts the keys `next` hands out, each at its own revision with its own audit record, and
/// claims their secrets; how many. See the module doc for what is set aside meanwhile.
pub(super) fn insert_batches(
    tx: &Transaction<'_>,
    next: &mut KeyBatches<'_>,
    audit: Audit,
) -> Result<u64, StoreError> {
    let cache: i64 = tx.pragma_query_value(None, "cache_size", |r| r.get(0))?;
    tx.pragma_update(None, "cache_size", -IMPORT_CACHE_KIB)?;
    let written = insert_all(tx, next, audit);
    tx.pragma_update(None, "cache_size", cache)?;
    written
}

fn insert_all(tx: &Transaction<'_>, next: &mut KeyBatches<'_>, audit: Audit) -> Result<u64, StoreError> {
    let start = read_revision(tx)?;
    let before: i64 = tx.query_row("SELECT coalesce(max(seq), 0) FROM keys", [], |r| r.get(0))?;
    let trigger = SetAside::new(tx, "TRIGGER", &["keys_secrets_insert"])?;
    let mut indexes = None;
    let mut rows = Rows::prepare(tx, audit)?;
    let mut count = 0;
    while let Some(batch) = next()? {
        if indexes.is_none() && count > 0 && count >= before {
            indexes = Some(SetAside::new(tx, "INDEX", &RANDOM_ORDER_INDEXES)?);
        }
        for key in &batch {
            count += 1;
            rows.insert(key, start + count as u64)?;
        }
    }
    drop(rows);
    claim_secrets(tx, before)?;
    indexes.map_or(Ok(()), |indexes| indexes.restore(tx))?;
    trigger.restore(tx)?;
    let last = start as i64 + count;
    tx.execute("UPDATE meta SET value = ?1 WHERE name = 'revision'", [last])?;
    Ok(count as u64)
}

/// Claims the secrets of the keys past sequence number `before`, in hash order: `secret_hashes`
/// is keyed by hash, so each goes in next to the last. Imported keys have no previous secret:
/// one claim each. The import's own rows (a range of rowids) are read and sorted.
fn claim_secrets(tx: &Transaction<'_>, before: i64) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO secret_hashes (hash, key_seq, kind) \
         SELECT hash, seq, 'current' FROM keys WHERE seq > ?1 ORDER BY hash",
        [before],
    )
    .map_err(|e| conflict(e, "a secret of the import is in use"))?;
    Ok(())
}

/// Schema objects dropped for the length of the import, and the statements that made them.
struct SetAside(Vec<String>);

impl SetAside {
    /// Drops the objects of `kind` named, those the schema has, and keeps how to make them.
    fn new(tx: &Transaction<'_>, kind: &str, names: &[&str]) -> Result<SetAside, StoreError> {
        let mut made = Vec::new();
        let mut read = tx.prepare("SELECT sql FROM sqlite_schema WHERE type = ?1 AND name = ?2")?;
        for name in names {
            let sql: Option<String> = read
                .query_row([kind.to_lowercase().as_str(), name], |r| r.get(0))
                .map(Some)
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                    other => Err(other),
                })?;
            if let Some(sql) = sql {
                tx.execute_batch(&format!("DROP {kind} {name}"))?;
                made.push(sql);
            }
        }
        Ok(SetAside(made))
    }

    /// Makes the objects again; a unique index that its rows now break (an id the import
    /// repeats) is a conflict.
    fn restore(self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        for sql in self.0 {
            tx.execute_batch(&sql)
                .map_err(|e| conflict(e, "a key of the import has the id of a stored key"))?;
        }
        Ok(())
    }
}

/// The two statements each key takes, prepared once for the import.
struct Rows<'t, 'a> {
    key: Statement<'t>,
    event: Statement<'t>,
    audit: Audit<'a>,
}

impl<'t, 'a> Rows<'t, 'a> {
    fn prepare(tx: &'t Transaction<'_>, audit: Audit<'a>) -> Result<Rows<'t, 'a>, StoreError> {
        Ok(Rows {
            key: tx.prepare(&KeyWrite::New.sql(mark))?,
            event: tx.prepare(EVENT_INSERT)?,
            audit,
        })
    }

    /// One new key row at `revision` and its creation's audit record.
    fn insert(&mut self, key: &NewKey, revision: u64) -> Result<(), StoreError> {
        let row = KeyRow::of_new(key, revision);
        let cells = row.cells();
        let why = "a key of the import has the id of a stored key";
        self.key
            .execute(params_from_iter(KeyWrite::New.values(&cells)))
            .map_err(|e| conflict(e, why))?;
        let (token, client) = self.audit.actor.origin();
        self.event.execute(params![
            key.id,
            key.now.as_second(),
            self.audit.actor.as_str(),
            self.audit.event,
            to_json(&with_report(new_key_fields(key), self.audit.report)),
            token,
            client,
        ])?;
        Ok(())
    }
}
