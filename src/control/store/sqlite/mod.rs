//! The embedded store: one SQLite file in WAL mode, so a CLI in another process and a running
//! gateway share it safely.
//!
//! Every change to a key bumps a store-wide revision and stamps the row with it; deleted keys
//! stay as tombstones. A gateway reads only the rows whose revision is past the last one it saw.
//! Usage counters are written beside the keys without bumping the revision: they do not change
//! what the gateway admits.
//!
//! This file opens the store and runs each [`KeyStore`] operation on its connection, in a
//! transaction where it writes; the sections do the work: `file` (opening only a keygate
//! store, noticing a replaced file), `access` (who may not use the file, and why), `schema`
//! (migrations), `keys` (key rows and their audit trail), `usage` (counters, idle keys),
//! `jobs` (webhook outbox, leases), `dump` (export and import).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use jiff::Timestamp;
use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::analytics::{HourRow, UsagePoint, UsageQuery};
use super::customers::{CustomerEvent, ModifiedCustomer, NewCustomer, StoredCustomer};
use super::dump::{Dump, Onto};
use super::model::{
    Audit, Changes, IdleKey, KeyBatches, KeyEvent, KeyFilter, Modified, NewKey, PendingWebhook, StoredKey,
    Usage, UsageDelta,
};
use super::{Fields, KeyStore, ReplicaRow, StoreError};
use crate::core::secret::KeyHash;

pub(super) mod access;
mod analytics;
mod customers;
mod dump;
mod file;
mod import;
mod jobs;
mod keys;
mod quota;
mod replicas;
mod schema;
mod usage;

use file::{
    check_header, create_file, file_id, open_connection, set_aside_old_log, Content, Files, Schema, MEMORY,
};
pub(super) use file::{check_store, exists};

pub struct SqliteStore {
    /// `None` until the file could be opened (see [`SqliteStore::open_later`]), and between
    /// closing a replaced file and opening its successor.
    conn: Mutex<Option<Connection>>,
    /// The file's path; `None` in memory.
    path: Option<PathBuf>,
    /// The files the connection has open, to tell whether the path still names them. Locked
    /// before `conn` when both are.
    files: Mutex<Files>,
    /// How many times a replaced file has been reopened, for the key sync to notice whichever
    /// operation found it.
    generation: AtomicU64,
}

/// A held, open connection.
struct Conn<'a>(MutexGuard<'a, Option<Connection>>);

impl std::ops::Deref for Conn<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.0
            .as_ref()
            .expect("SqliteStore::conn hands out only open connections")
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        self.0
            .as_mut()
            .expect("SqliteStore::conn hands out only open connections")
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens the existing database file and brings its schema up to date. A missing file is
    /// [`StoreError::Missing`], and one without keygate's schema (an empty file included)
    /// [`StoreError::NotAStore`], never a new empty store: a volume that did not mount, or a
    /// restore that wrote nothing, must not look like a store without keys. `:memory:` opens a
    /// private in-memory store (tests).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let in_memory = path == Path::new(MEMORY);
        let schema = if in_memory {
            Schema::CreateInEmpty
        } else {
            Schema::Existing
        };
        Self::open_with(path, schema)
    }

    fn open_with(path: &Path, schema: Schema) -> Result<Self, StoreError> {
        let conn = open_connection(path, schema)?;
        let in_memory = path == Path::new(MEMORY);
        Ok(SqliteStore {
            conn: Mutex::new(Some(conn)),
            path: (!in_memory).then(|| path.to_owned()),
            files: Mutex::new(Files::of(path)),
            generation: AtomicU64::new(0),
        })
    }

    /// The store at the existing file `path`, opened at the first [`Self::reopen_if_replaced`]
    /// that can: a gateway starts while its store is locked or unreadable, and answers "not
    /// ready" until then. Until it opens, every operation fails as unavailable.
    pub fn open_later(path: &Path) -> Result<Self, StoreError> {
        match check_store(path) {
            // Locked or unreadable for now: the gateway waits, saying why.
            Ok(()) | Err(StoreError::Unavailable(_)) => {}
            Err(refused) => return Err(refused),
        }
        Ok(SqliteStore {
            conn: Mutex::new(None),
            path: Some(path.to_owned()),
            files: Mutex::new(Files { db: None, wal: None }),
            generation: AtomicU64::new(0),
        })
    }

    /// Opens the file if it is not open yet, and checks that the path still names the file
    /// this store has open. When another file has been renamed over it (a restore, a replaced
    /// volume), closes the old one and opens the new: true. When the path names nothing any
    /// more, [`StoreError::Missing`], and the store keeps the old file open rather than create
    /// an empty one.
    pub fn reopen_if_replaced(&self) -> Result<bool, StoreError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let now = match std::fs::metadata(path) {
            Ok(meta) => file_id(&meta),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::Missing(format!(
                    "the store file {} is gone (deleted or moved away)",
                    path.display()
                )))
            }
            Err(error) => {
                return Err(StoreError::Unavailable(format!(
                    "cannot read {}: {error}",
                    path.display()
                )))
            }
        };
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let mut conn = self.lock();
        if now == files.db && conn.is_some() {
            return Ok(false);
        }
        let replaced = files.db.is_some() && now != files.db;
        // A file that is empty or not SQLite is refused before the open one is let go of: the
        // last table keeps serving, and the store comes back as it was if its file does.
        if replaced && check_header(path)? == Content::Empty {
            return Err(file::not_a_store(
                path,
                "an empty file (0 bytes) was renamed over the open store; the last key table keeps serving",
            ));
        }
        // The old file is closed first; until the new one opens, every operation fails as
        // unavailable, and the next check tries again.
        if let Some(old) = conn.take() {
            if let Err((_, error)) = old.close() {
                tracing::warn!(%error, "closing the replaced store file failed");
            }
        }
        if replaced {
            set_aside_old_log(path, files.wal);
        }
        *conn = Some(open_connection(path, Schema::Existing)?);
        *files = Files::of(path);
        if replaced {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        Ok(replaced)
    }

    /// How many times a replaced store file has been reopened (by any operation).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Creates the database file, readable by its owner only, unless it exists; then opens it.
    /// Only a file created here gets keygate's schema: an existing one must hold it already.
    /// SQLite gives its `-wal` and `-shm` files the database file's mode.
    pub fn create(path: &Path) -> Result<Self, StoreError> {
        if path == Path::new(MEMORY) || create_file(path)? {
            Self::open_with(path, Schema::CreateInEmpty)
        } else {
            Self::open(path)
        }
    }

    /// `keygate store init`: [`Self::create`], and an existing empty file (or empty SQLite
    /// database) gets keygate's schema too; a file holding anything else is refused.
    pub fn init(path: &Path) -> Result<Self, StoreError> {
        if path != Path::new(MEMORY) {
            create_file(path)?;
        }
        Self::open_with(path, Schema::CreateInEmpty)
    }

    fn lock(&self) -> MutexGuard<'_, Option<Connection>> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back on drop).
        self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The open connection, held. Every operation first checks that the path still names the
    /// open file (one `stat`): a store replaced under a running gateway is reopened before it is
    /// read or written, and a deleted one fails every operation rather than have changes land in
    /// a file nothing will read again.
    fn conn(&self) -> Result<Conn<'_>, StoreError> {
        self.reopen_if_replaced()?;
        let guard = self.lock();
        if guard.is_none() {
            let path = self.path.as_deref().unwrap_or(Path::new(MEMORY));
            return Err(StoreError::Unavailable(format!(
                "the store {} is not open (yet)",
                path.display()
            )));
        }
        Ok(Conn(guard))
    }

    /// Runs `work` in a transaction that takes the write lock at its start (`IMMEDIATE`: it
    /// waits for another writer up front rather than fail half-way), and commits when it
    /// succeeds; an `Err` rolls it back.
    fn write<T>(
        &self,
        work: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let done = work(&tx)?;
        tx.commit()?;
        Ok(done)
    }
}

impl KeyStore for SqliteStore {
    fn insert(&self, key: &NewKey, audit: Audit) -> Result<StoredKey, StoreError> {
        self.write(|tx| keys::insert(tx, key, audit))
    }

    fn get(&self, id: &str) -> Result<Option<StoredKey>, StoreError> {
        keys::select_one(&*self.conn()?, id)
    }

    fn key_by_hash(&self, hash: &KeyHash, now: Timestamp) -> Result<Option<StoredKey>, StoreError> {
        keys::by_hash(&*self.conn()?, hash, now)
    }

    fn modify(
        &self,
        id: &str,
        audit: Audit,
        webhook: Option<&str>,
        change: &mut (dyn FnMut(&mut StoredKey) -> Result<(), StoreError> + Send),
    ) -> Result<Modified, StoreError> {
        self.write(|tx| keys::modify(tx, id, audit, webhook, change))
    }

    fn record_event(
        &self,
        key_id: &str,
        audit: Audit,
        at: Timestamp,
        changes: &Fields,
    ) -> Result<(), StoreError> {
        self.write(|tx| keys::record_event(tx, key_id, audit, at, changes.clone()))
    }

    fn events(&self, id: &str, after: u64, limit: usize) -> Result<Vec<KeyEvent>, StoreError> {
        keys::events(&*self.conn()?, id, after, limit)
    }

    fn list(
        &self,
        filter: &KeyFilter,
        now: Timestamp,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredKey>, StoreError> {
        keys::list(&*self.conn()?, filter, now, after, limit)
    }

    fn changes_since(&self, revision: u64, limit: usize) -> Result<Changes, StoreError> {
        keys::changes_since(&*self.conn()?, revision, limit)
    }

    fn record_usage(&self, deltas: &[UsageDelta]) -> Result<(), StoreError> {
        self.write(|tx| usage::record(tx, deltas))
    }

    fn usage(&self, id: &str) -> Result<Usage, StoreError> {
        usage::of_key(&*self.conn()?, id)
    }

    fn record_usage_rows(&self, deltas: &[UsageDelta], rows: &[HourRow]) -> Result<(), StoreError> {
        self.write(|tx| {
            usage::record(tx, deltas)?;
            analytics::record(tx, rows)
        })
    }

    fn usage_series(&self, query: &UsageQuery) -> Result<Vec<UsagePoint>, StoreError> {
        analytics::series(&*self.conn()?, query)
    }

    fn prune_usage_rows(&self, before: i64) -> Result<u64, StoreError> {
        self.write(|tx| analytics::prune(tx, before))
    }

    fn revision(&self) -> Result<u64, StoreError> {
        read_revision(&*self.conn()?)
    }

    fn live_keys(&self) -> Result<u64, StoreError> {
        let count: i64 =
            self.conn()?
                .query_row("SELECT count(*) FROM keys WHERE status <> 'deleted'", [], |r| {
                    r.get(0)
                })?;
        Ok(count as u64)
    }

    fn idle_keys(
        &self,
        cutoff: Timestamp,
        now: Timestamp,
        after: u64,
        limit: usize,
    ) -> Result<Vec<IdleKey>, StoreError> {
        usage::idle_keys(&*self.conn()?, cutoff, now, after, limit)
    }

    fn record_warning(
        &self,
        seq: u64,
        deadline: Timestamp,
        threshold: u64,
        now: Timestamp,
        webhook: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.write(|tx| usage::record_warning(tx, seq, deadline, threshold, now, webhook))
    }

    fn first_warning_at(&self, seq: u64, deadline: Timestamp) -> Result<Option<Timestamp>, StoreError> {
        usage::first_warning_at(&*self.conn()?, seq, deadline)
    }

    fn enqueue_webhook(&self, payload: &str, now: Timestamp) -> Result<(), StoreError> {
        jobs::enqueue(&*self.conn()?, payload, now)
    }

    fn due_webhooks(&self, now: Timestamp, limit: usize) -> Result<Vec<PendingWebhook>, StoreError> {
        jobs::due(&*self.conn()?, now, limit)
    }

    fn claim_webhook(&self, now: Timestamp, until: Timestamp) -> Result<Option<PendingWebhook>, StoreError> {
        jobs::claim(&*self.conn()?, now, until)
    }

    fn webhook_done(&self, id: u64) -> Result<(), StoreError> {
        jobs::done(&*self.conn()?, id)
    }

    fn webhook_retry_at(&self, id: u64, attempts: u32, at: Timestamp) -> Result<(), StoreError> {
        jobs::retry_at(&*self.conn()?, id, attempts, at)
    }

    fn try_lease(&self, name: &str, holder: &str, now: Timestamp, ttl: Duration) -> Result<bool, StoreError> {
        jobs::try_lease(&*self.conn()?, name, holder, now, ttl)
    }

    fn lease_quota(&self, ask: &super::quota::LeaseAsk<'_>) -> Result<super::quota::LeaseGrant, StoreError> {
        self.write(|tx| quota::lease(tx, ask))
    }

    fn prune_quota_counters(&self, before: i64) -> Result<u64, StoreError> {
        self.write(|tx| quota::prune(tx, before))
    }

    fn change_quota(
        &self,
        counter: &super::quota::CounterId<'_>,
        change: crate::core::quota::QuotaChange,
    ) -> Result<super::quota::CounterRow, StoreError> {
        self.write(|tx| quota::change(tx, counter, change))
    }

    fn insert_batches(&self, next: &mut KeyBatches<'_>, audit: Audit) -> Result<u64, StoreError> {
        self.write(|tx| import::insert_batches(tx, next, audit))
    }

    fn insert_customer(&self, customer: &NewCustomer, audit: Audit) -> Result<StoredCustomer, StoreError> {
        self.write(|tx| customers::insert(tx, customer, audit))
    }

    fn customer(&self, id: &str) -> Result<Option<StoredCustomer>, StoreError> {
        customers::select_one(&*self.conn()?, id)
    }

    fn customers(&self, after: u64, limit: usize) -> Result<Vec<StoredCustomer>, StoreError> {
        customers::list(&*self.conn()?, after, limit)
    }

    fn customer_key_counts(
        &self,
        ids: &[&str],
    ) -> Result<std::collections::HashMap<String, u64>, StoreError> {
        customers::key_counts(&*self.conn()?, ids)
    }

    fn modify_customer(
        &self,
        id: &str,
        audit: Audit,
        change: &mut (dyn FnMut(&mut StoredCustomer) -> Result<(), StoreError> + Send),
    ) -> Result<ModifiedCustomer, StoreError> {
        self.write(|tx| customers::modify(tx, id, audit, change))
    }

    fn delete_customer(&self, id: &str, audit: Audit, now: Timestamp) -> Result<(), StoreError> {
        self.write(|tx| customers::delete(tx, id, audit, now))
    }

    fn record_customer_event(
        &self,
        id: &str,
        audit: Audit,
        at: Timestamp,
        changes: &Fields,
    ) -> Result<(), StoreError> {
        self.write(|tx| customers::record_event(tx, id, audit, at, changes.clone()))
    }

    fn customer_events(&self, id: &str, after: u64, limit: usize) -> Result<Vec<CustomerEvent>, StoreError> {
        customers::events(&*self.conn()?, id, after, limit)
    }

    fn export_dump(&self) -> Result<Dump, StoreError> {
        dump::export(&mut *self.conn()?)
    }

    fn import_dump(&self, dump: &Dump, onto: Onto) -> Result<(), StoreError> {
        self.write(|tx| dump::import(tx, dump, onto))
    }

    fn heartbeat(
        &self,
        row: &ReplicaRow,
        stale_before: Timestamp,
        _announce: bool,
    ) -> Result<Vec<ReplicaRow>, StoreError> {
        self.write(|tx| replicas::heartbeat(tx, row, stale_before))
    }

    fn replicas(&self, live_since: Timestamp) -> Result<Vec<ReplicaRow>, StoreError> {
        replicas::live(&*self.conn()?, live_since)
    }

    fn remove_replica(&self, id: &str) -> Result<(), StoreError> {
        replicas::remove(&*self.conn()?, id)
    }

    fn reopen_if_replaced(&self) -> Result<bool, StoreError> {
        SqliteStore::reopen_if_replaced(self)
    }

    fn generation(&self) -> u64 {
        SqliteStore::generation(self)
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        StoreError::Unavailable(error.to_string())
    }
}

/// A unique-constraint violation as a conflict: on a secret's hash (`keys.hash`,
/// `secret_hashes.hash`) [`StoreError::SecretInUse`], on anything else one saying `why`; other
/// errors as they are.
fn conflict(error: rusqlite::Error, why: &str) -> StoreError {
    match error {
        rusqlite::Error::SqliteFailure(f, message) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
            if message.is_some_and(|m| m.ends_with(".hash")) {
                StoreError::SecretInUse
            } else {
                StoreError::Conflict(why.to_owned())
            }
        }
        other => other.into(),
    }
}

/// The store revision.
fn read_revision(conn: &Connection) -> Result<u64, StoreError> {
    let value: i64 = conn.query_row("SELECT value FROM meta WHERE name = 'revision'", [], |r| r.get(0))?;
    Ok(value as u64)
}

/// Bumps the store revision: the revision of the change being written.
fn next_revision(tx: &Transaction<'_>) -> Result<u64, StoreError> {
    let value: i64 = tx.query_row(
        "UPDATE meta SET value = value + 1 WHERE name = 'revision' RETURNING value",
        [],
        |r| r.get(0),
    )?;
    Ok(value as u64)
}

#[cfg(test)]
mod tests;
