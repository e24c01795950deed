//! The PostgreSQL store's bulk import (control plane): keys handed out batch by batch go in
//! with binary `COPY`, all in one transaction, and the work that would land at random places
//! in an index, one entry a key, is put off to the end and done set-wise.
//!
//! Inside the import's transaction, and only there (all of it is back before the commit, and a
//! rollback undoes it with the rest):
//! - the secrets' trigger lets the rows by (`keygate.bulk_import`); the secrets are claimed at
//!   the end in one statement, in hash order, so each entry of `key_secrets`' primary key goes
//!   in next to the one before. A clash with another key's secret fails the whole import.
//! - once the import has written as many keys as the store held before it, what would cost a
//!   random index insertion or a lookup per key is set aside ([`SET_ASIDE`]): the trigger is
//!   disabled, the keys' unique `id` and `hash` constraints and the `keys_customer` and
//!   `key_events_key` indexes are dropped, and so are `key_secrets`' foreign key (a lookup and a
//!   row lock per claimed secret), its primary key (the secrets are then claimed unsorted) and
//!   its index by key. At the end each is made again from its catalog definition: an index
//!   from one sort, the foreign key checked in one join; a duplicate id or secret still fails
//!   the import. This takes `keys`, `key_events` and `key_secrets` for the rest of the import
//!   (readers wait until it commits: a gateway serves from its table meanwhile and catches up
//!   after), so a small import into a large store keeps them, and so does a role that may not
//!   alter the tables (the import goes on the slower way). The indexes are built with a
//!   `maintenance_work_mem` of at least [`BUILD_MEMORY_KB`], so a million entries sort in memory.
//!
//! How long a step may take is not set by the number of keys (a busy server takes longer for
//! the same work, and what is made again at the end is as large as the table): the import waits
//! as long as the server is working on its statement, asking it on another connection every
//! few seconds ([`patiently`]), and gives up only when the server stops answering or its
//! backend no longer runs the statement.

use std::future::Future;

use deadpool_postgres::Pool;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use super::keys::sql_values;
use super::{conflict, within, Tx, OPERATION_TIMEOUT};
use crate::control::store::audit::new_key_fields;
use crate::control::store::model::{Audit, NewKey};
use crate::control::store::row::{signed, to_json, KeyRow, KeyWrite};
use crate::control::store::StoreError;

/// What a large import sets aside, each `(table, kind, name)`, in the order it is dropped; it is
/// made again in the same order.
const SET_ASIDE: [(&str, Aside, &str); 8] = [
    ("keys", Aside::Trigger, "keys_claim_secrets"),
    ("keys", Aside::Constraint, "keys_id_key"),
    ("keys", Aside::Constraint, "keys_hash_key"),
    ("keys", Aside::Index, "keys_customer"),
    ("key_events", Aside::Index, "key_events_key"),
    ("key_secrets", Aside::Constraint, "key_secrets_key_seq_fkey"),
    ("key_secrets", Aside::Constraint, "key_secrets_pkey"),
    ("key_secrets", Aside::Index, "key_secrets_key_seq"),
];

/// The memory each index of a large import is sorted in, at least (PostgreSQL's default
/// `maintenance_work_mem` is 64 MB: a million secrets' hashes would sort on disk), in kB.
const BUILD_MEMORY_KB: i64 = 256 * 1024;

#[derive(Clone, Copy)]
enum Aside {
    Trigger,
    Constraint,
    Index,
}

/// A bulk import under way in `tx`: the revision it started at, the keys written, and what is
/// set aside.
pub(super) struct Import<'t, 'c> {
    tx: &'t Tx<'c>,
    start: u64,
    /// The keys' highest sequence number before the import: about how many the store held.
    before: u64,
    count: u64,
    set_aside: Option<Vec<String>>,
}

impl<'t, 'c> Import<'t, 'c> {
    /// Starts a bulk import after revision `start`: the secrets' trigger lets the rows by, in
    /// this transaction only, until [`Import::finish`] claims them all in one statement.
    pub(super) async fn start(tx: &'t Tx<'c>, start: u64) -> Result<Import<'t, 'c>, StoreError> {
        tx.batch_execute("SET LOCAL keygate.bulk_import = 'on'").await?;
        let before: i64 = tx
            .query_one("SELECT coalesce(max(seq), 0) FROM keys", &[])
            .await?
            .get(0);
        Ok(Import {
            tx,
            start,
            before: before.max(0) as u64,
            count: 0,
            set_aside: None,
        })
    }

    /// Keys written so far.
    pub(super) fn count(&self) -> u64 {
        self.count
    }

    /// Writes one batch, each key with its audit record: binary `COPY`, so a million keys take
    /// seconds rather than a million round trips. Sets the random-order work aside first once
    /// the import is as large as the store was.
    pub(super) async fn write(&mut self, keys: &[NewKey], audit: Audit<'_>) -> Result<(), StoreError> {
        if self.set_aside.is_none() && self.count > 0 && self.count >= self.before {
            self.set_aside = Some(set_aside(self.tx).await?);
        }
        let why = "a key in the batch has the id of a stored key";
        let start = self.start + self.count;
        copy_keys(self.tx, keys, start)
            .await
            .map_err(|e| conflict(e, why))?;
        copy_events(self.tx, keys, audit).await?;
        self.count += keys.len() as u64;
        Ok(())
    }

    /// Claims the secrets of the imported keys in one statement, in hash order while the
    /// primary key of `key_secrets` is there, and makes again what was set aside; then the
    /// trigger is on guard again. The revision the import ends at.
    pub(super) async fn finish(self) -> Result<u64, StoreError> {
        let order = if self.set_aside.as_ref().is_some_and(|made| !made.is_empty()) {
            ""
        } else {
            " ORDER BY hash"
        };
        let claim = format!(
            "INSERT INTO key_secrets (hash, key_seq) SELECT hash, seq FROM keys WHERE revision > $1{order}"
        );
        self.tx
            .execute(&claim, &[&signed(self.start)])
            .await
            .map_err(|e| conflict(e, "a secret of the import is in use"))?;
        for sql in self.set_aside.unwrap_or_default() {
            let why = "a key of the import has the id of a stored key";
            self.tx.batch_execute(&sql).await.map_err(|e| conflict(e, why))?;
        }
        self.tx
            .batch_execute("SET LOCAL keygate.bulk_import = 'off'")
            .await?;
        Ok(self.start + self.count)
    }
}

/// Drops what [`SET_ASIDE`] names, those the schema has, in a savepoint: the statements that
/// make them again, or none when the role may not (then the import goes on as it was).
async fn set_aside(tx: &Tx<'_>) -> Result<Vec<String>, StoreError> {
    tx.batch_execute("SAVEPOINT import_set_aside").await?;
    match drop_all(tx).await {
        Ok(restore) => {
            tx.batch_execute("RELEASE SAVEPOINT import_set_aside").await?;
            Ok(restore)
        }
        Err(error) if error.as_db_error().is_some() => {
            tracing::warn!(
                error = %super::postgres_error(&error),
                "the import keeps the keys' indexes up row by row: it could not set them aside"
            );
            tx.batch_execute("ROLLBACK TO SAVEPOINT import_set_aside").await?;
            Ok(Vec::new())
        }
        Err(error) => Err(error.into()),
    }
}

async fn drop_all(tx: &Tx<'_>) -> Result<Vec<String>, tokio_postgres::Error> {
    let memory: i64 = tx
        .query_one(
            "SELECT setting::bigint FROM pg_settings WHERE name = 'maintenance_work_mem'",
            &[],
        )
        .await?
        .get(0);
    if memory < BUILD_MEMORY_KB {
        tx.batch_execute(&format!("SET LOCAL maintenance_work_mem = '{BUILD_MEMORY_KB}kB'"))
            .await?;
    }
    let mut restore = Vec::new();
    for (table, kind, name) in SET_ASIDE {
        let (read, drop, make) = match kind {
            Aside::Trigger => (
                "SELECT 1::text FROM pg_trigger WHERE tgrelid = to_regclass($1) AND tgname = $2",
                format!("ALTER TABLE {table} DISABLE TRIGGER {name}"),
                format!("ALTER TABLE {table} ENABLE TRIGGER {name}"),
            ),
            Aside::Constraint => (
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint \
                 WHERE conrelid = to_regclass($1) AND conname = $2",
                format!("ALTER TABLE {table} DROP CONSTRAINT {name}"),
                format!("ALTER TABLE {table} ADD CONSTRAINT {name} "),
            ),
            Aside::Index => (
                "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c \
                 ON c.oid = i.indexrelid WHERE i.indrelid = to_regclass($1) AND c.relname = $2",
                format!("DROP INDEX {name}"),
                String::new(),
            ),
        };
        let Some(row) = tx.query_opt(read, &[&table, &name]).await? else {
            continue;
        };
        let definition: String = row.get(0);
        tx.batch_execute(&drop).await?;
        restore.push(match kind {
            Aside::Trigger => make,
            Aside::Constraint => make + &definition,
            Aside::Index => definition,
        });
    }
    Ok(restore)
}

/// `COPY`s new key rows in, at revisions `start + 1` onwards.
async fn copy_keys(tx: &Tx<'_>, keys: &[NewKey], start: u64) -> Result<(), tokio_postgres::Error> {
    let Some(first) = keys.first() else {
        return Ok(());
    };
    let first = KeyRow::of_new(first, start);
    let types: Vec<Type> = KeyWrite::New
        .values(&first.cells())
        .iter()
        .map(|cell| cell.pg_type())
        .collect();
    let copy = format!("COPY keys ({}) FROM STDIN BINARY", KeyWrite::New.names());
    let sink = tx.copy_in(&copy).await?;
    let writer = BinaryCopyInWriter::new(sink, &types);
    let mut writer = std::pin::pin!(writer);
    for (i, key) in (1..).zip(keys) {
        let row = KeyRow::of_new(key, start + i);
        let cells = row.cells();
        writer.as_mut().write(&sql_values(KeyWrite::New, &cells)).await?;
    }
    writer.finish().await?;
    Ok(())
}

/// `COPY`s the creation audit records of `keys` in.
async fn copy_events(tx: &Tx<'_>, keys: &[NewKey], audit: Audit<'_>) -> Result<(), StoreError> {
    let sink = tx
        .copy_in("COPY key_events (key_id, at, actor, event, changes, token, client) FROM STDIN BINARY")
        .await?;
    let types = [
        Type::TEXT,
        Type::INT8,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
    ];
    let (token, client) = audit.actor.origin();
    let writer = BinaryCopyInWriter::new(sink, &types);
    let mut writer = std::pin::pin!(writer);
    for key in keys {
        let row: [&(dyn ToSql + Sync); 7] = [
            &key.id,
            &key.now.as_second(),
            &audit.actor.as_str(),
            &audit.event,
            &to_json(&new_key_fields(key)),
            &token,
            &client,
        ];
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await?;
    Ok(())
}

/// The server's process for the import's connection, for [`patiently`] to ask after.
pub(super) async fn backend(tx: &Tx<'_>) -> Result<i32, StoreError> {
    Ok(tx.query_one("SELECT pg_backend_pid()", &[]).await?.get(0))
}

/// `work`'s answer, a step of the import on the connection served by `backend`, however long
/// it takes while the server works on it: every [`OPERATION_TIMEOUT`] another connection asks
/// whether that backend still runs a statement. Unavailable when the server does not answer
/// that, or twice in a row says the backend runs nothing (the answer to the step was lost).
pub(super) async fn patiently<T>(
    pool: &Pool,
    backend: i32,
    work: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let mut work = std::pin::pin!(work);
    let mut idle = 0;
    loop {
        if let Ok(done) = tokio::time::timeout(OPERATION_TIMEOUT, work.as_mut()).await {
            return done;
        }
        if working(pool, backend).await? {
            idle = 0;
        } else if idle > 0 {
            return Err(StoreError::Unavailable(
                "PostgreSQL stopped working on the import and did not answer it".into(),
            ));
        } else {
            idle += 1;
        }
    }
}

/// Whether `backend` runs a statement, asked on another connection within
/// [`OPERATION_TIMEOUT`]; `Ok(false)` when it is gone or idle.
async fn working(pool: &Pool, backend: i32) -> Result<bool, StoreError> {
    within(OPERATION_TIMEOUT, async {
        let client = pool.get().await?;
        let state: Option<String> = client
            .query_opt("SELECT state FROM pg_stat_activity WHERE pid = $1", &[&backend])
            .await?
            .and_then(|row| row.get(0));
        Ok::<_, StoreError>(state.as_deref() == Some("active"))
    })
    .await?
}
