//! The PostgreSQL store read whole into a [`Dump`] and a dump written into it (control plane):
//! `keygate store export`, `import` and `copy`. The same rows as the SQLite store's
//! ([`crate::control::store::dump`]).

use std::collections::HashMap;
use std::time::Duration;

use tokio_postgres::{IsolationLevel, Row};

use super::{announce, conflict, PgStore, COLUMNS, OPERATION_TIMEOUT};
use crate::control::store::dump::{
    self, Dump, EventRow, Hex, KeyRow, Onto, UsageRow, WarningRow, WebhookRow,
};
use crate::control::store::StoreError;

type Tx<'a> = deadpool_postgres::Transaction<'a>;

impl PgStore {
    /// Every row, in one repeatable-read transaction (a consistent snapshot while gateways
    /// write).
    pub fn export_dump(&self) -> Result<Dump, StoreError> {
        self.run_within(OPERATION_TIMEOUT * 30, async {
            let mut client = self.pool.get().await?;
            let tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let revision: i64 = tx
                .query_one("SELECT value FROM meta WHERE name = 'revision'", &[])
                .await?
                .get(0);
            let keys = tx
                .query(&format!("SELECT {COLUMNS} FROM keys ORDER BY seq"), &[])
                .await?
                .iter()
                .map(key_row)
                .collect::<Result<_, _>>()?;
            let usage = tx
                .query("SELECT key_seq, day, requests FROM key_usage ORDER BY key_seq, day", &[])
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
            tx.commit().await?;
            Ok(Dump {
                revision: revision as u64,
                keys,
                usage,
                events,
                warnings,
                webhooks,
            })
        })
    }

    /// Writes `dump` in one transaction: all of it or nothing, announced to running gateways
    /// as one change. See [`Onto`] for a store that holds keys already.
    pub fn import_dump(&self, dump: &Dump, onto: Onto) -> Result<(), StoreError> {
        let rows = dump.keys.len() + dump.usage.len() + dump.events.len();
        let allowed = OPERATION_TIMEOUT + Duration::from_millis(rows as u64);
        self.run_within(allowed, async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
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
            for key in &dump.keys {
                seqs.insert(key.seq, put_key(&tx, key, stamp.unwrap_or(key.revision)).await?);
            }
            let seq_of = |seq: i64| {
                seqs.get(&seq).copied().ok_or_else(|| {
                    StoreError::Corrupt(format!("the dump's rows name key seq {seq}, which it lacks"))
                })
            };
            let usage = tx
                .prepare(
                    "INSERT INTO key_usage (key_seq, day, requests) VALUES ($1, $2, $3) \
                     ON CONFLICT (key_seq, day) DO UPDATE SET requests = excluded.requests",
                )
                .await?;
            for row in &dump.usage {
                tx.execute(&usage, &[&seq_of(row.key_seq)?, &row.day, &row.requests])
                    .await?;
            }
            let event = tx
                .prepare(
                    "INSERT INTO key_events (id, key_id, at, actor, event, changes, token, client) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
                )
                .await?;
            for row in &dump.events {
                tx.execute(
                    &event,
                    &[
                        &row.id,
                        &row.key_id,
                        &row.at,
                        &row.actor,
                        &row.event,
                        &row.changes,
                        &row.token,
                        &row.client,
                    ],
                )
                .await?;
            }
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
                    &[&row.id, &row.payload, &row.attempts, &row.next_attempt_at, &row.created_at],
                )
                .await?;
            }
            // Ids given here do not advance the tables' sequences: the next row the store
            // numbers itself must come after them.
            for (table, column) in [("keys", "seq"), ("key_events", "id"), ("webhook_outbox", "id")] {
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
            announce(&tx, self.channel(), last as u64).await?;
            tx.commit().await?;
            Ok(())
        })
    }
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
    let previous = key.previous_hash.as_ref().map(|h| h.0.to_vec());
    let hash = key.hash.0.to_vec();
    let sql = if existing.is_some() {
        "UPDATE keys SET name = $3, environment = $4, hash = $5, prefix = $6, permissions = $7, \
         rate_limit = $8, customer_id = $9, allowed_ips = $10, expires_at = $11, status = $12, \
         created_at = $13, updated_at = $14, last_used_at = $15, previous_hash = $16, grace_until = $17, \
         previous_last_used_at = $18, metadata = $19, revision = $20, idle_from = $21 \
         WHERE seq = $1 AND id = $2"
            .to_owned()
    } else {
        format!(
            "INSERT INTO keys ({COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)"
        )
    };
    tx.execute(
        &sql,
        &[
            &seq,
            &key.id,
            &key.name,
            &key.environment,
            &hash,
            &key.prefix,
            &key.permissions,
            &key.rate_limit,
            &key.customer_id,
            &key.allowed_ips,
            &key.expires_at,
            &key.status,
            &key.created_at,
            &key.updated_at,
            &key.last_used_at,
            &previous,
            &key.grace_until,
            &key.previous_last_used_at,
            &key.metadata,
            &revision,
            &key.idle_from,
        ],
    )
    .await
    .map_err(|e| conflict(e, "a key of the dump clashes with a key of the target"))?;
    Ok(seq)
}

/// A key row as its columns ([`COLUMNS`]); a hash of the wrong length is a corrupt row.
fn key_row(r: &Row) -> Result<KeyRow, StoreError> {
    let hash: Vec<u8> = r.try_get(4)?;
    let previous: Option<Vec<u8>> = r.try_get(15)?;
    Ok(KeyRow {
        seq: r.try_get(0)?,
        id: r.try_get(1)?,
        name: r.try_get(2)?,
        environment: r.try_get(3)?,
        hash: Hex::from_column(&hash, "keys.hash")?,
        prefix: r.try_get(5)?,
        permissions: r.try_get(6)?,
        rate_limit: r.try_get(7)?,
        customer_id: r.try_get(8)?,
        allowed_ips: r.try_get(9)?,
        expires_at: r.try_get(10)?,
        status: r.try_get(11)?,
        created_at: r.try_get(12)?,
        updated_at: r.try_get(13)?,
        last_used_at: r.try_get(14)?,
        previous_hash: previous
            .map(|bytes| Hex::from_column(&bytes, "keys.previous_hash"))
            .transpose()?,
        grace_until: r.try_get(16)?,
        previous_last_used_at: r.try_get(17)?,
        metadata: r.try_get(18)?,
        revision: r.try_get(19)?,
        idle_from: r.try_get(20)?,
    })
}
