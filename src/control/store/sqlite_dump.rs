//! The SQLite store read whole into a [`Dump`] and a dump written into it (control plane):
//! `keygate store export`, `import` and `copy`.

use std::collections::HashMap;

use rusqlite::{params, OptionalExtension, Row, Transaction, TransactionBehavior};

use super::{conflict, SqliteStore, COLUMNS};
use crate::control::store::dump::{
    self, Dump, EventRow, Hex, KeyRow, Onto, UsageRow, WarningRow, WebhookRow,
};
use crate::control::store::StoreError;

impl SqliteStore {
    /// Every row, in one read transaction (a consistent snapshot while gateways write).
    pub fn export_dump(&self) -> Result<Dump, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
        let revision: i64 =
            tx.query_row("SELECT value FROM meta WHERE name = 'revision'", [], |r| r.get(0))?;
        let dump = Dump {
            revision: revision as u64,
            keys: rows(&tx, &format!("SELECT {COLUMNS} FROM keys ORDER BY seq"), key_row)?
                .into_iter()
                .collect::<Result<_, _>>()?,
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
        };
        tx.finish()?;
        Ok(dump)
    }

    /// Writes `dump` in one transaction: all of it or nothing. See [`Onto`] for a store that
    /// holds keys already.
    pub fn import_dump(&self, dump: &Dump, onto: Onto) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let revision: i64 =
            tx.query_row("SELECT value FROM meta WHERE name = 'revision'", [], |r| r.get(0))?;
        let keys: i64 = tx.query_row("SELECT count(*) FROM keys", [], |r| r.get(0))?;
        if keys > 0 && onto == Onto::EmptyOnly {
            return Err(dump::not_empty(keys));
        }
        let stamp = dump::import_revision(revision as u64, keys > 0, dump.revision).map(|r| r as i64);
        let mut seqs = HashMap::new();
        for key in &dump.keys {
            seqs.insert(key.seq, put_key(&tx, key, stamp.unwrap_or(key.revision))?);
        }
        let seq_of = |seq: i64| {
            seqs.get(&seq).copied().ok_or_else(|| {
                StoreError::Corrupt(format!("the dump's rows name key seq {seq}, which it lacks"))
            })
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
        let last = stamp.unwrap_or(dump.revision as i64);
        tx.execute(
            "UPDATE meta SET value = max(value, ?1) WHERE name = 'revision'",
            params![last],
        )?;
        tx.commit()?;
        Ok(())
    }
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
    let why = "a key of the dump clashes with a key of the target";
    let values = params![
        seq,
        key.id,
        key.name,
        key.environment,
        &key.hash.0[..],
        key.prefix,
        key.permissions,
        key.rate_limit,
        key.customer_id,
        key.allowed_ips,
        key.expires_at,
        key.status,
        key.created_at,
        key.updated_at,
        key.last_used_at,
        key.previous_hash.as_ref().map(|h| h.0.to_vec()),
        key.grace_until,
        key.previous_last_used_at,
        key.metadata,
        revision,
        key.idle_from,
    ];
    let sql = if existing.is_some() {
        "UPDATE keys SET name = ?3, environment = ?4, hash = ?5, prefix = ?6, permissions = ?7, \
         rate_limit = ?8, customer_id = ?9, allowed_ips = ?10, expires_at = ?11, status = ?12, \
         created_at = ?13, updated_at = ?14, last_used_at = ?15, previous_hash = ?16, grace_until = ?17, \
         previous_last_used_at = ?18, metadata = ?19, revision = ?20, idle_from = ?21 \
         WHERE seq = ?1 AND id = ?2 RETURNING seq"
            .to_owned()
    } else {
        format!(
            "INSERT INTO keys ({COLUMNS}) VALUES \
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21) \
             RETURNING seq"
        )
    };
    tx.prepare_cached(&sql)?
        .query_row(values, |r| r.get(0))
        .map_err(|e| conflict(e, why))
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

/// A key row as its columns ([`COLUMNS`]); a hash of the wrong length is a corrupt row.
fn key_row(r: &Row<'_>) -> rusqlite::Result<Result<KeyRow, StoreError>> {
    let hash: Vec<u8> = r.get(4)?;
    let previous: Option<Vec<u8>> = r.get(15)?;
    let mut row = KeyRow {
        seq: r.get(0)?,
        id: r.get(1)?,
        name: r.get(2)?,
        environment: r.get(3)?,
        hash: Hex([0; 32]),
        prefix: r.get(5)?,
        permissions: r.get(6)?,
        rate_limit: r.get(7)?,
        customer_id: r.get(8)?,
        allowed_ips: r.get(9)?,
        expires_at: r.get(10)?,
        status: r.get(11)?,
        created_at: r.get(12)?,
        updated_at: r.get(13)?,
        last_used_at: r.get(14)?,
        previous_hash: None,
        grace_until: r.get(16)?,
        previous_last_used_at: r.get(17)?,
        metadata: r.get(18)?,
        revision: r.get(19)?,
        idle_from: r.get(20)?,
    };
    Ok((|| {
        row.hash = Hex::from_column(&hash, "keys.hash")?;
        row.previous_hash = previous
            .map(|bytes| Hex::from_column(&bytes, "keys.previous_hash"))
            .transpose()?;
        Ok(row)
    })())
}
