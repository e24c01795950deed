//! The embedded store: one SQLite file in WAL mode, so a CLI in another process and a running
//! gateway share it safely.
//!
//! Every change to a key bumps a store-wide revision and stamps the row with it; deleted keys
//! stay as tombstones. A gateway reads only the rows whose revision is past the last one it saw.
//! Usage counters are written beside the keys without bumping the revision: they do not change
//! what the gateway admits.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use jiff::Timestamp;
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};

use super::model::{
    lease_until, Audit, Changes, DayUsage, IdleKey, KeyEvent, KeyFilter, Modified, NewKey, PendingWebhook,
    StoredKey, Usage, UsageDelta,
};
use super::StoreError;
use crate::core::key::{KeySpec, KeyStatus, StoredStatus};
use crate::core::secret::KeyHash;

pub(super) const COLUMNS: &str =
    "seq, id, name, environment, hash, prefix, permissions, rate_limit, customer_id, \
     allowed_ips, expires_at, status, created_at, updated_at, last_used_at, previous_hash, grace_until, \
     previous_last_used_at, metadata, revision, idle_from";

#[path = "sqlite_access.rs"]
pub(super) mod access;
#[path = "sqlite_dump.rs"]
mod dump;
#[path = "sqlite_file.rs"]
mod file;
#[path = "sqlite_schema.rs"]
mod schema;

use file::{
    check_header, create_file, file_id, open_connection, set_aside_old_log, Content, Files, Schema, MEMORY,
};
pub(super) use file::{check_store, exists};
#[cfg(test)]
use schema::MIGRATIONS;

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

    pub fn insert(&self, key: &NewKey, audit: Audit) -> Result<StoredKey, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let revision = next_revision(&tx)?;
        insert_row(&tx, key, revision, audit, "a key with this id exists already")?;
        let stored = select_one(&tx, "id = ?1", &key.id)?.ok_or(StoreError::NotFound)?;
        tx.commit()?;
        Ok(stored)
    }

    /// The key with this id, deleted or not.
    pub fn get(&self, id: &str) -> Result<Option<StoredKey>, StoreError> {
        select_one(&*self.conn()?, "id = ?1", id)
    }

    /// Reads the key, lets `change` edit it, and writes it back with a new revision, all in one
    /// transaction so concurrent changes cannot lose each other. Deleted keys are not found.
    /// `webhook`: a payload to queue in the same transaction (lifecycle events).
    pub fn modify(
        &self,
        id: &str,
        audit: Audit,
        webhook: Option<&str>,
        change: &mut (dyn FnMut(&mut StoredKey) -> Result<(), StoreError> + Send),
    ) -> Result<Modified, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut key = select_one(&tx, "id = ?1", id)?
            .filter(|key| key.status != StoredStatus::Deleted)
            .ok_or(StoreError::NotFound)?;
        let before = key.clone();
        change(&mut key)?;
        if is_no_change(&before, &key) {
            return Ok(Modified {
                key: before,
                changed: false,
            });
        }
        key.revision = next_revision(&tx)?;
        write_back(&tx, &key)?;
        record_event(&tx, &key.id, audit, key.updated_at, changed_fields(&before, &key))?;
        if let Some(payload) = webhook {
            enqueue(&tx, payload, key.updated_at)?;
        }
        tx.commit()?;
        Ok(Modified { key, changed: true })
    }

    /// A key's audit trail, oldest first, from after event `after` on. Kept for deleted keys.
    pub fn events(&self, id: &str, after: u64, limit: usize) -> Result<Vec<KeyEvent>, StoreError> {
        let conn = self.conn()?;
        let exists: bool = conn.query_row("SELECT EXISTS (SELECT 1 FROM keys WHERE id = ?1)", [id], |r| {
            r.get(0)
        })?;
        if !exists {
            return Err(StoreError::NotFound);
        }
        let mut stmt = conn.prepare_cached(
            "SELECT id, at, actor, event, changes, token, client FROM key_events \
             WHERE key_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![id, after as i64, limit as i64], |r| {
            Ok((
                (r.get::<_, i64>(0)?, r.get::<_, i64>(1)?),
                (r.get::<_, String>(2)?, r.get::<_, String>(3)?),
                r.get::<_, String>(4)?,
                (r.get::<_, Option<String>>(5)?, r.get::<_, Option<String>>(6)?),
            ))
        })?;
        let mut events = Vec::new();
        for row in rows {
            let ((event_id, at), (actor, event), changes, (token, client)) = row?;
            events.push(KeyEvent {
                id: event_id as u64,
                key_id: id.to_owned(),
                event,
                actor,
                token,
                client,
                at: instant(Some(at))
                    .map_err(StoreError::Corrupt)?
                    .ok_or_else(|| StoreError::Corrupt(format!("event {event_id} has no time")))?,
                changes: json("changes", &changes).map_err(StoreError::Corrupt)?,
            });
        }
        Ok(events)
    }

    /// Keys matching `filter`, in creation order, starting after the key with sequence number
    /// `after`, at most `limit`. Every condition is in SQL, so a page costs the same however
    /// many keys there are.
    pub fn list(
        &self,
        filter: &KeyFilter,
        now: Timestamp,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredKey>, StoreError> {
        let status = match filter.status {
            None => "status != 'deleted'",
            Some(KeyStatus::Active) => "status = 'active' AND (expires_at IS NULL OR expires_at > ?4)",
            Some(KeyStatus::Expired) => "status = 'active' AND expires_at <= ?4",
            Some(KeyStatus::Revoked) => "status = 'revoked'",
            Some(KeyStatus::Deleted) => "status = 'deleted'",
        };
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM keys WHERE {status} AND seq > ?3 \
             AND (?1 IS NULL OR environment = ?1) AND (?2 IS NULL OR customer_id = ?2) ORDER BY seq LIMIT ?5"
        ))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(
            params![
                filter.environment.map(|env| env.as_str()),
                filter.customer_id,
                after as i64,
                now.as_second(),
                limit
            ],
            read_row,
        )?;
        rows.map(|row| row?.map_err(StoreError::Corrupt)).collect()
    }

    /// Up to `limit` rows changed after `revision`, tombstones included, oldest change first.
    /// `Changes::revision` is where the next call starts: the last row's revision when there
    /// may be more, the store's revision (read in the same snapshot) when this was the last
    /// batch.
    pub fn changes_since(&self, revision: u64, limit: usize) -> Result<Changes, StoreError> {
        let conn = self.conn()?;
        let tx = conn.unchecked_transaction()?;
        let current: i64 =
            tx.query_row("SELECT value FROM meta WHERE name = 'revision'", [], |r| r.get(0))?;
        let mut stmt = tx.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM keys WHERE revision > ?1 ORDER BY revision LIMIT ?2"
        ))?;
        let mut changes = Changes::default();
        let mut rows = 0;
        let mut last = revision;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        for row in stmt.query_map(params![revision as i64, limit], |row| {
            Ok((row.get::<_, i64>(19)?, read_row(row)?))
        })? {
            let (row_revision, key) = row?;
            rows += 1;
            last = row_revision as u64;
            match key {
                Ok(key) => changes.keys.push(key),
                Err(why) => changes.bad_rows.push(why),
            }
        }
        changes.more = rows == limit;
        changes.revision = if changes.more {
            last
        } else {
            (current as u64).max(last)
        };
        drop(stmt);
        tx.finish()?;
        Ok(changes)
    }

    /// Adds counted requests to the daily totals and moves `last_used_at` forward.
    pub fn record_usage(&self, deltas: &[UsageDelta]) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for delta in deltas {
            let seq = delta.seq as i64;
            let at = delta.last_used_at.as_second();
            if delta.previous {
                tx.prepare_cached(
                    "UPDATE keys SET previous_last_used_at = MAX(COALESCE(previous_last_used_at, 0), ?2) \
                     WHERE seq = ?1",
                )?
                .execute(params![seq, at])?;
            } else {
                tx.prepare_cached(
                    "UPDATE keys SET last_used_at = MAX(COALESCE(last_used_at, 0), ?2) WHERE seq = ?1",
                )?
                .execute(params![seq, at])?;
            }
            let day = delta
                .last_used_at
                .to_zoned(jiff::tz::TimeZone::UTC)
                .date()
                .to_string();
            tx.prepare_cached(
                "INSERT INTO key_usage (key_seq, day, requests) SELECT ?1, ?2, ?3 WHERE EXISTS \
                 (SELECT 1 FROM keys WHERE seq = ?1) \
                 ON CONFLICT (key_seq, day) DO UPDATE SET requests = requests + excluded.requests",
            )?
            .execute(params![seq, day, delta.requests as i64])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Usage history of a key, deleted or not.
    pub fn usage(&self, id: &str) -> Result<Usage, StoreError> {
        let conn = self.conn()?;
        let (seq, last_used_at): (i64, Option<i64>) = conn
            .query_row("SELECT seq, last_used_at FROM keys WHERE id = ?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?
            .ok_or(StoreError::NotFound)?;
        let mut stmt =
            conn.prepare_cached("SELECT day, requests FROM key_usage WHERE key_seq = ?1 ORDER BY day")?;
        let days = stmt
            .query_map([seq], |r| {
                Ok(DayUsage {
                    date: r.get(0)?,
                    requests: r.get::<_, i64>(1)? as u64,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Usage {
            key_id: id.to_owned(),
            last_used_at: last_used_at.and_then(|s| Timestamp::from_second(s).ok()),
            total_requests: days.iter().map(|d| d.requests).sum(),
            days,
        })
    }

    /// The current store revision.
    pub fn revision(&self) -> Result<u64, StoreError> {
        let value: i64 =
            self.conn()?
                .query_row("SELECT value FROM meta WHERE name = 'revision'", [], |r| r.get(0))?;
        Ok(value as u64)
    }

    /// Up to `limit` active, unexpired keys idle since `cutoff` or longer, in creation order
    /// from after the key with sequence number `after` (a page; the sweep reads them all).
    pub fn idle_keys(
        &self,
        cutoff: Timestamp,
        now: Timestamp,
        after: u64,
        limit: usize,
    ) -> Result<Vec<IdleKey>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(
            "SELECT seq, id, name, environment, last_used_at, \
             MAX(COALESCE(idle_from, created_at), COALESCE(last_used_at, 0), \
             COALESCE(previous_last_used_at, 0)) AS since FROM keys \
             WHERE status = 'active' AND (expires_at IS NULL OR expires_at > ?2) AND since <= ?1 \
             AND seq > ?3 ORDER BY seq LIMIT ?4",
        )?;
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![cutoff.as_second(), now.as_second(), after, limit], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<i64>>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })?;
        let mut keys = Vec::new();
        for row in rows {
            let (seq, id, name, environment, last_used_at, since) = row?;
            let decoded = (|| {
                Ok::<_, String>(IdleKey {
                    seq: seq as u64,
                    environment: environment.parse()?,
                    last_used_at: instant(last_used_at)?,
                    idle_since: instant(Some(since))?.ok_or("no idle time")?,
                    id: id.clone(),
                    name,
                })
            })();
            keys.push(decoded.map_err(|why| StoreError::Corrupt(format!("key {id}: {why}")))?);
        }
        Ok(keys)
    }

    /// Records that the idle warning `threshold` (seconds before `deadline`) went out for a key,
    /// and queues its webhook payload, in one transaction. False when it was recorded before:
    /// each warning goes out once, whichever gateway sweeps and however often it restarts.
    pub fn record_warning(
        &self,
        seq: u64,
        deadline: Timestamp,
        threshold: u64,
        now: Timestamp,
        webhook: Option<&str>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO idle_warnings (key_seq, deadline, threshold, sent_at) VALUES (?1, ?2, ?3, ?4)",
            params![seq as i64, deadline.as_second(), threshold as i64, now.as_second()],
        )?;
        if inserted == 1 {
            if let Some(payload) = webhook {
                enqueue(&tx, payload, now)?;
            }
        }
        tx.commit()?;
        Ok(inserted == 1)
    }

    /// When the first idle warning for this deadline went out, if one did.
    pub fn first_warning_at(&self, seq: u64, deadline: Timestamp) -> Result<Option<Timestamp>, StoreError> {
        let seconds: Option<i64> = self.conn()?.query_row(
            "SELECT MIN(sent_at) FROM idle_warnings WHERE key_seq = ?1 AND deadline = ?2",
            params![seq as i64, deadline.as_second()],
            |r| r.get(0),
        )?;
        instant(seconds).map_err(StoreError::Corrupt)
    }

    /// Queues a webhook payload for delivery.
    pub fn enqueue_webhook(&self, payload: &str, now: Timestamp) -> Result<(), StoreError> {
        enqueue(&*self.conn()?, payload, now)
    }

    /// Webhook deliveries due at `now`, oldest first.
    pub fn due_webhooks(&self, now: Timestamp, limit: usize) -> Result<Vec<PendingWebhook>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(
            "SELECT id, payload, attempts FROM webhook_outbox WHERE next_attempt_at <= ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![now.as_millisecond(), limit as i64], |r| {
            Ok(PendingWebhook {
                id: r.get::<_, i64>(0)? as u64,
                payload: r.get(1)?,
                attempts: r.get::<_, i64>(2)?.clamp(0, u32::MAX as i64) as u32,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Takes the oldest payload due at `now` for one delivery attempt: it is not due again
    /// before `until`, so no other deliverer posts it meanwhile, and a deliverer that dies
    /// mid-attempt leaves it to be tried again after `until`.
    pub fn claim_webhook(
        &self,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Option<PendingWebhook>, StoreError> {
        let conn = self.conn()?;
        let claimed = conn
            .prepare_cached(
                "UPDATE webhook_outbox SET next_attempt_at = ?2 WHERE id = \
                 (SELECT id FROM webhook_outbox WHERE next_attempt_at <= ?1 ORDER BY id LIMIT 1) \
                 RETURNING id, payload, attempts",
            )?
            .query_row(params![now.as_millisecond(), until.as_millisecond()], |r| {
                Ok(PendingWebhook {
                    id: r.get::<_, i64>(0)? as u64,
                    payload: r.get(1)?,
                    attempts: r.get::<_, i64>(2)?.clamp(0, u32::MAX as i64) as u32,
                })
            })
            .optional()?;
        Ok(claimed)
    }

    /// Removes a delivered (or abandoned) webhook from the outbox.
    pub fn webhook_done(&self, id: u64) -> Result<(), StoreError> {
        self.conn()?
            .execute("DELETE FROM webhook_outbox WHERE id = ?1", [id as i64])?;
        Ok(())
    }

    /// Counts a failed attempt and sets when to try again.
    pub fn webhook_retry_at(&self, id: u64, attempts: u32, at: Timestamp) -> Result<(), StoreError> {
        self.conn()?.execute(
            "UPDATE webhook_outbox SET attempts = ?2, next_attempt_at = ?3 WHERE id = ?1",
            params![id as i64, attempts as i64, at.as_millisecond()],
        )?;
        Ok(())
    }

    /// Takes or renews the lease `name` for `holder` until `now + ttl`. True when `holder` has
    /// it: nobody held it, its holder let it run out, or `holder` held it already.
    pub fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let until = lease_until(now, ttl);
        let changed = self.conn()?.execute(
            "INSERT INTO leases (name, holder, until_ms) VALUES (?1, ?2, ?3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms \
             WHERE leases.holder = excluded.holder OR leases.until_ms < ?4",
            params![name, holder, until, now.as_millisecond()],
        )?;
        Ok(changed == 1)
    }

    /// Inserts many keys in one transaction, all or none, each with its own revision and audit
    /// record: bulk imports from another system, benchmarks.
    pub fn insert_many(&self, keys: &[NewKey], audit: Audit) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let start: i64 = tx.query_row("SELECT value FROM meta WHERE name = 'revision'", [], |r| r.get(0))?;
        for (i, key) in keys.iter().enumerate() {
            let revision = (start + 1 + i as i64) as u64;
            let why = "a key in the batch has the id of a stored key";
            insert_row(&tx, key, revision, audit, why)?;
        }
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE name = 'revision'",
            [start + keys.len() as i64],
        )?;
        tx.commit()?;
        Ok(())
    }
}

/// Inserts one new key row at `revision` with its creation's audit record; a secret in use is
/// [`StoreError::SecretInUse`], a clash of ids a conflict saying `clash`.
fn insert_row(
    tx: &Transaction<'_>,
    key: &NewKey,
    revision: u64,
    audit: Audit,
    clash: &str,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO keys (id, name, environment, hash, prefix, permissions, rate_limit, customer_id, \
         allowed_ips, expires_at, status, created_at, updated_at, metadata, revision) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'active', ?11, ?11, ?12, ?13)",
    )?
    .execute(params![
        key.id,
        key.spec.name,
        key.spec.environment.as_str(),
        &key.hash.0[..],
        key.prefix,
        to_json(&key.spec.permissions),
        key.spec.rate_limit.as_ref().map(to_json),
        key.spec.customer_id,
        to_json(&key.spec.allowed_ips),
        key.spec.expires_at.map(|at| at.as_second()),
        key.now.as_second(),
        to_json(&key.spec.metadata),
        revision as i64,
    ])
    .map_err(|e| conflict(e, clash))?;
    record_event(tx, &key.id, audit, key.now, new_key_fields(key))
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

fn next_revision(tx: &Transaction<'_>) -> Result<u64, StoreError> {
    let value: i64 = tx.query_row(
        "UPDATE meta SET value = value + 1 WHERE name = 'revision' RETURNING value",
        [],
        |r| r.get(0),
    )?;
    Ok(value as u64)
}

fn write_back(tx: &Transaction<'_>, key: &StoredKey) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE keys SET name = ?2, hash = ?3, prefix = ?4, permissions = ?5, rate_limit = ?6, \
         customer_id = ?7, allowed_ips = ?8, expires_at = ?9, status = ?10, updated_at = ?11, \
         previous_hash = ?12, grace_until = ?13, previous_last_used_at = ?14, metadata = ?15, revision = ?16, \
         idle_from = ?17 WHERE seq = ?1",
    )?
    .execute(params![
        key.seq as i64,
        key.spec.name,
        &key.hash.0[..],
        key.prefix,
        to_json(&key.spec.permissions),
        key.spec.rate_limit.as_ref().map(to_json),
        key.spec.customer_id,
        to_json(&key.spec.allowed_ips),
        key.spec.expires_at.map(|at| at.as_second()),
        key.status.as_str(),
        key.updated_at.as_second(),
        key.previous_hash.as_ref().map(|h| h.0.to_vec()),
        key.grace_until.map(|at| at.as_second()),
        key.previous_last_used_at.map(|at| at.as_second()),
        to_json(&key.spec.metadata),
        key.revision as i64,
        key.idle_from.map(|at| at.as_second()),
    ])
    .map_err(|e| conflict(e, "the change conflicts with another key"))?;
    Ok(())
}

fn enqueue(conn: &Connection, payload: &str, now: Timestamp) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO webhook_outbox (payload, next_attempt_at, created_at) VALUES (?1, ?2, ?2)",
    )?
    .execute(params![payload, now.as_millisecond()])?;
    Ok(())
}

/// What a creation's audit record shows of a new key (as [`audited_fields`] would).
pub(super) fn new_key_fields(key: &NewKey) -> serde_json::Map<String, serde_json::Value> {
    fields_of(&key.spec, "active", &key.prefix, None)
}

fn record_event(
    tx: &Transaction<'_>,
    key_id: &str,
    audit: Audit,
    at: Timestamp,
    changes: serde_json::Map<String, serde_json::Value>,
) -> Result<(), StoreError> {
    let (token, client) = audit.actor.origin();
    tx.prepare_cached(
        "INSERT INTO key_events (key_id, at, actor, event, changes, token, client) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        key_id,
        at.as_second(),
        audit.actor.as_str(),
        audit.event,
        to_json(&changes),
        token,
        client,
    ])?;
    Ok(())
}

/// The fields of a key an audit record shows: its settings, never its secret or hash.
fn audited_fields(key: &StoredKey) -> serde_json::Map<String, serde_json::Value> {
    fields_of(&key.spec, key.status.as_str(), &key.prefix, key.grace_until)
}

/// The spec as it serializes, with the status, the prefix and a grace period; no nulls.
fn fields_of(
    spec: &KeySpec,
    status: &str,
    prefix: &str,
    grace_until: Option<Timestamp>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut fields = match serde_json::to_value(spec) {
        Ok(serde_json::Value::Object(fields)) => fields,
        // A struct of plain fields serializes to an object; nothing else can come back.
        _ => serde_json::Map::new(),
    };
    fields.insert("status".into(), status.into());
    fields.insert("prefix".into(), prefix.into());
    if let Some(until) = grace_until {
        fields.insert("grace_until".into(), serde_json::json!(until));
    }
    fields.retain(|_, value| !value.is_null());
    fields
}

/// Whether a change leaves the key as it was but for its `updated_at` (revoking a revoked key):
/// then nothing is written, no revision spent, no audit record made.
pub(super) fn is_no_change(before: &StoredKey, after: &StoredKey) -> bool {
    let mut same = after.clone();
    same.updated_at = before.updated_at;
    same == *before
}

/// The audited fields that differ between `before` and `after`, with their new values.
pub(super) fn changed_fields(
    before: &StoredKey,
    after: &StoredKey,
) -> serde_json::Map<String, serde_json::Value> {
    let old = audited_fields(before);
    let new = audited_fields(after);
    let mut changes: serde_json::Map<_, _> = old
        .keys()
        .chain(new.keys())
        .filter(|field| old.get(*field) != new.get(*field))
        .map(|field| (field.clone(), new.get(field).cloned().unwrap_or_default()))
        .collect();
    if before.hash != after.hash {
        changes.insert("secret".into(), "replaced".into());
    }
    changes
}

fn select_one(conn: &Connection, condition: &str, value: &str) -> Result<Option<StoredKey>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM keys WHERE {condition}"))?;
    match stmt.query_row([value], read_row).optional()? {
        Some(Ok(key)) => Ok(Some(key)),
        Some(Err(why)) => Err(StoreError::Corrupt(why)),
        None => Ok(None),
    }
}

pub(super) fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("key fields always serialize")
}

/// Reads a row. SQL errors fail the query; a row whose contents do not parse is returned as
/// `Err(why)`, so one bad row is reported without hiding the others.
fn read_row(row: &Row<'_>) -> rusqlite::Result<Result<StoredKey, String>> {
    let id: String = row.get(1)?;
    let raw = RawRow {
        seq: row.get(0)?,
        name: row.get(2)?,
        environment: row.get(3)?,
        hash: row.get(4)?,
        prefix: row.get(5)?,
        permissions: row.get(6)?,
        rate_limit: row.get(7)?,
        customer_id: row.get(8)?,
        allowed_ips: row.get(9)?,
        expires_at: row.get(10)?,
        status: row.get(11)?,
        created_at: row.get(12)?,
        updated_at: row.get(13)?,
        last_used_at: row.get(14)?,
        previous_hash: row.get(15)?,
        grace_until: row.get(16)?,
        previous_last_used_at: row.get(17)?,
        metadata: row.get(18)?,
        revision: row.get(19)?,
        idle_from: row.get(20)?,
    };
    Ok(raw.decode(id.clone()).map_err(|why| format!("key {id}: {why}")))
}

pub(super) struct RawRow {
    pub(super) seq: i64,
    pub(super) name: String,
    pub(super) environment: String,
    pub(super) hash: Vec<u8>,
    pub(super) prefix: String,
    pub(super) permissions: String,
    pub(super) rate_limit: Option<String>,
    pub(super) customer_id: Option<String>,
    pub(super) allowed_ips: String,
    pub(super) expires_at: Option<i64>,
    pub(super) status: String,
    pub(super) created_at: i64,
    pub(super) updated_at: i64,
    pub(super) last_used_at: Option<i64>,
    pub(super) previous_hash: Option<Vec<u8>>,
    pub(super) grace_until: Option<i64>,
    pub(super) previous_last_used_at: Option<i64>,
    pub(super) metadata: String,
    pub(super) revision: i64,
    pub(super) idle_from: Option<i64>,
}

impl RawRow {
    pub(super) fn decode(self, id: String) -> Result<StoredKey, String> {
        let spec = KeySpec {
            name: self.name,
            environment: self.environment.parse()?,
            permissions: json("permissions", &self.permissions)?,
            rate_limit: self
                .rate_limit
                .map(|text| json("rate_limit", &text))
                .transpose()?,
            customer_id: self.customer_id,
            allowed_ips: json("allowed_ips", &self.allowed_ips)?,
            expires_at: instant(self.expires_at)?,
            metadata: json("metadata", &self.metadata)?,
        };
        Ok(StoredKey {
            seq: self.seq as u64,
            id,
            spec,
            hash: hash(&self.hash).ok_or("hash is not 32 bytes")?,
            prefix: self.prefix,
            status: self.status.parse()?,
            created_at: instant(Some(self.created_at))?.ok_or("no created_at")?,
            updated_at: instant(Some(self.updated_at))?.ok_or("no updated_at")?,
            last_used_at: instant(self.last_used_at)?,
            previous_hash: match self.previous_hash {
                Some(bytes) => Some(hash(&bytes).ok_or("previous_hash is not 32 bytes")?),
                None => None,
            },
            grace_until: instant(self.grace_until)?,
            previous_last_used_at: instant(self.previous_last_used_at)?,
            revision: self.revision as u64,
            idle_from: instant(self.idle_from)?,
        })
    }
}

fn hash(bytes: &[u8]) -> Option<KeyHash> {
    bytes.try_into().ok().map(KeyHash)
}

pub(super) fn json<T: serde::de::DeserializeOwned>(field: &str, text: &str) -> Result<T, String> {
    serde_json::from_str(text).map_err(|e| format!("{field}: {e}"))
}

pub(super) fn instant(seconds: Option<i64>) -> Result<Option<Timestamp>, String> {
    seconds
        .map(|s| Timestamp::from_second(s).map_err(|e| format!("bad timestamp {s}: {e}")))
        .transpose()
}

#[cfg(test)]
#[path = "sqlite_tests.rs"]
mod tests;
