//! The PostgreSQL store read whole into a [`Dump`] and a dump written into it (control plane):
//! `keygate store export`, `import` and `copy`. The same rows as the SQLite store's
//! ([`crate::control::store::dump`]).

use std::collections::HashMap;

use super::keys::{mark, sql_values, Cells};
use super::{conflict, snapshot, Tx};
use crate::control::store::dump::{self, Dump, EventRow, KeyRow, Onto, UsageRow, WarningRow, WebhookRow};
use crate::control::store::row::{select_list, KeyWrite};
use crate::control::store::StoreError;

/// Every row, in one repeatable-read transaction (a consistent snapshot while gateways write).
pub(super) async fn export(client: &mut deadpool_postgres::Client) -> Result<Dump, StoreError> {
    let (tx, revision) = snapshot(client).await?;
    let keys = tx
        .query(&format!("SELECT {} FROM keys ORDER BY seq", select_list()), &[])
        .await?
        .iter()
        .map(|row| KeyRow::read(&mut Cells::of(row)))
        .collect::<Result<_, _>>()
        .map_err(StoreError::Corrupt)?;
    let usage = tx
        .query(
            "SELECT key_seq, day, requests FROM key_usage ORDER BY key_seq, day",
            &[],
        )
        .await?
        .iter()
        .map(|r| UsageRow {
            key_seq: r.get(0),
            day: r.get(1),
            requests: r.get(2),
        })
        .collect();
    let events = tx
        .query(
            "SELECT id, key_id, at, actor, event, changes, token, client FROM key_events ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(|r| EventRow {
            id: r.get(0),
            key_id: r.get(1),
            at: r.get(2),
            actor: r.get(3),
            event: r.get(4),
            changes: r.get(5),
            token: r.get(6),
            client: r.get(7),
        })
        .collect();
    let warnings = tx
        .query(
            "SELECT key_seq, deadline, threshold, sent_at FROM idle_warnings \
                     ORDER BY key_seq, deadline, threshold",
            &[],
        )
        .await?
        .iter()
        .map(|r| WarningRow {
            key_seq: r.get(0),
            deadline: r.get(1),
            threshold: r.get(2),
            sent_at: r.get(3),
        })
        .collect();
    let webhooks = tx
        .query(
            "SELECT id, payload, attempts, next_attempt_at, created_at FROM webhook_outbox ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(|r| WebhookRow {
            id: r.get(0),
            payload: r.get(1),
            attempts: r.get(2),
            next_attempt_at: r.get(3),
            created_at: r.get(4),
        })
        .collect();
    let (customers, customer_events) = super::customers::export(&tx).await?;
    tx.commit().await?;
    Ok(Dump {
        revision,
        keys,
        usage,
        events,
        warnings,
        webhooks,
        customers,
        customer_events,
    })
}

/// Writes `dump`: all of it or nothing, with the transaction. See [`Onto`] for a store that
/// holds keys already. Returns the store's revision after it, for the caller to announce.
pub(super) async fn import(tx: &Tx<'_>, dump: &Dump, onto: Onto) -> Result<u64, StoreError> {
    let revision: i64 = tx
        .query_one("SELECT value FROM meta WHERE name = 'revision' FOR UPDATE", &[])
        .await?
        .get(0);
    let keys: i64 = tx.query_one("SELECT count(*) FROM keys", &[]).await?.get(0);
    if keys > 0 && onto == Onto::EmptyOnly {
        return Err(dump::not_empty(keys));
    }
    let stamp = dump::import_revision(revision as u64, keys > 0, dump.revision).map(|r| r as i64);
    let mut seqs = HashMap::new();
    if keys == 0 {
        // Into an empty key table each key keeps its seq: all in one go.
        super::restore::keys(tx, &dump.keys, stamp).await?;
        seqs.extend(dump.keys.iter().map(|key| (key.seq, key.seq)));
    }
    for key in dump.keys.iter().filter(|_| keys > 0) {
        seqs.insert(key.seq, put_key(tx, key, stamp.unwrap_or(key.revision)).await?);
    }
    let seq_of = |seq: i64| {
        seqs.get(&seq)
            .copied()
            .ok_or_else(|| StoreError::Corrupt(format!("the dump's rows name key seq {seq}, which it lacks")))
    };
    super::restore::usage(tx, &dump.usage, seq_of).await?;
    super::restore::events(tx, &dump.events).await?;
    for row in &dump.warnings {
        tx.execute(
            "INSERT INTO idle_warnings (key_seq, deadline, threshold, sent_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT DO NOTHING",
            &[&seq_of(row.key_seq)?, &row.deadline, &row.threshold, &row.sent_at],
        )
        .await?;
    }
    for row in &dump.webhooks {
        tx.execute(
            "INSERT INTO webhook_outbox (id, payload, attempts, next_attempt_at, created_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
            &[
                &row.id,
                &row.payload,
                &row.attempts,
                &row.next_attempt_at,
                &row.created_at,
            ],
        )
        .await?;
    }
    super::customers::import(tx, &dump.customers, &dump.customer_events, stamp).await?;
    // Ids given here do not advance the tables' sequences: the next row the store
    // numbers itself must come after them.
    for (table, column) in [
        ("keys", "seq"),
        ("key_events", "id"),
        ("webhook_outbox", "id"),
        ("customer_events", "id"),
    ] {
        tx.execute(
            &format!(
                "SELECT setval(pg_get_serial_sequence('{table}', '{column}'), \
                         COALESCE((SELECT max({column}) FROM {table}), 0) + 1, false)"
            ),
            &[],
        )
        .await?;
    }
    let last = stamp.unwrap_or(dump.revision as i64).max(revision);
    tx.execute("UPDATE meta SET value = $1 WHERE name = 'revision'", &[&last])
        .await?;
    Ok(last as u64)
}

/// Writes one key row at `revision`: over the key of the same id, or as a new row, at the
/// dump's seq when it is free. Returns the row's seq in this store.
async fn put_key(tx: &Tx<'_>, key: &KeyRow, revision: i64) -> Result<i64, StoreError> {
    let existing: Option<i64> = tx
        .query_opt("SELECT seq FROM keys WHERE id = $1", &[&key.id])
        .await?
        .map(|r| r.get(0));
    let seq = match existing {
        Some(seq) => seq,
        None => {
            let taken = tx
                .query_opt("SELECT 1 FROM keys WHERE seq = $1", &[&key.seq])
                .await?
                .is_some();
            if taken {
                let fresh = "SELECT GREATEST(nextval(pg_get_serial_sequence('keys', 'seq')), \
                             (SELECT max(seq) + 1 FROM keys))";
                tx.query_one(fresh, &[]).await?.get(0)
            } else {
                key.seq
            }
        }
    };
    let write = match existing {
        Some(_) => KeyWrite::RestoreOver,
        None => KeyWrite::Restore,
    };
    let row = KeyRow {
        seq,
        revision,
        ..key.clone()
    };
    let cells = row.cells();
    tx.execute(&write.sql(mark), &sql_values(write, &cells))
        .await
        .map_err(|e| conflict(e, "a key of the dump clashes with a key of the target"))?;
    Ok(seq)
}
