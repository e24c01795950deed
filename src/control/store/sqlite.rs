//! The embedded store: one SQLite file in WAL mode, so a CLI in another process and a running
//! gateway share it safely.
//!
//! Every change to a key bumps a store-wide revision and stamps the row with it; deleted keys
//! stay as tombstones. A gateway reads only the rows whose revision is past the last one it saw.
//! Usage counters are written beside the keys without bumping the revision: they do not change
//! what the gateway admits.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use jiff::Timestamp;
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};

use super::model::{Changes, DayUsage, KeyFilter, NewKey, StoredKey, Usage, UsageDelta};
use super::StoreError;
use crate::core::key::StoredStatus;
use crate::core::secret::KeyHash;

/// Schema versions, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[r#"
    CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO meta (name, value) VALUES ('revision', 0);
    CREATE TABLE keys (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        environment TEXT NOT NULL,
        hash BLOB NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        permissions TEXT NOT NULL,
        rate_limit TEXT,
        customer_id TEXT,
        allowed_ips TEXT NOT NULL,
        expires_at INTEGER,
        status TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        last_used_at INTEGER,
        previous_hash BLOB,
        grace_until INTEGER,
        previous_last_used_at INTEGER,
        metadata TEXT NOT NULL,
        revision INTEGER NOT NULL
    );
    CREATE INDEX keys_revision ON keys (revision);
    CREATE INDEX keys_customer ON keys (customer_id);
    CREATE TABLE key_usage (
        key_seq INTEGER NOT NULL REFERENCES keys (seq),
        day TEXT NOT NULL,
        requests INTEGER NOT NULL,
        PRIMARY KEY (key_seq, day)
    ) WITHOUT ROWID;
"#];

const COLUMNS: &str = "seq, id, name, environment, hash, prefix, permissions, rate_limit, customer_id, \
     allowed_ips, expires_at, status, created_at, updated_at, last_used_at, previous_hash, grace_until, \
     previous_last_used_at, metadata, revision";

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path).map_err(|e| {
            StoreError::Unavailable(format!("cannot open SQLite store {}: {e}", path.display()))
        })?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back on drop).
        self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn insert(&self, key: &NewKey) -> Result<StoredKey, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let revision = next_revision(&tx)?;
        let now = key.now.as_second();
        let inserted = tx.execute(
            "INSERT INTO keys (id, name, environment, hash, prefix, permissions, rate_limit, customer_id, \
             allowed_ips, expires_at, status, created_at, updated_at, metadata, revision) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'active', ?11, ?11, ?12, ?13)",
            params![
                key.id,
                key.name,
                key.environment.as_str(),
                &key.hash.0[..],
                key.prefix,
                to_json(&key.permissions),
                key.rate_limit.as_ref().map(to_json),
                key.customer_id,
                to_json(&key.allowed_ips),
                key.expires_at.map(|at| at.as_second()),
                now,
                to_json(&key.metadata),
                revision as i64,
            ],
        );
        if let Err(rusqlite::Error::SqliteFailure(e, _)) = &inserted {
            if e.code == rusqlite::ErrorCode::ConstraintViolation {
                return Err(StoreError::Conflict(
                    "a key with this secret or id exists already".into(),
                ));
            }
        }
        inserted?;
        let stored = select_one(&tx, "id = ?1", &key.id)?.ok_or(StoreError::NotFound)?;
        tx.commit()?;
        Ok(stored)
    }

    /// The key with this id, deleted or not.
    pub fn get(&self, id: &str) -> Result<Option<StoredKey>, StoreError> {
        select_one(&self.conn(), "id = ?1", id)
    }

    /// Reads the key, lets `change` edit it, and writes it back with a new revision, all in one
    /// transaction so concurrent changes cannot lose each other. Deleted keys are not found.
    pub fn modify(
        &self,
        id: &str,
        change: &mut dyn FnMut(&mut StoredKey) -> Result<(), StoreError>,
    ) -> Result<StoredKey, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut key = select_one(&tx, "id = ?1", id)?
            .filter(|key| key.status != StoredStatus::Deleted)
            .ok_or(StoreError::NotFound)?;
        change(&mut key)?;
        key.revision = next_revision(&tx)?;
        write_back(&tx, &key)?;
        tx.commit()?;
        Ok(key)
    }

    pub fn list(&self, filter: &KeyFilter, now: Timestamp) -> Result<Vec<StoredKey>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM keys WHERE status != 'deleted' \
             AND (?1 IS NULL OR environment = ?1) AND (?2 IS NULL OR customer_id = ?2) ORDER BY seq"
        ))?;
        let rows = stmt.query_map(
            params![filter.environment.map(|env| env.as_str()), filter.customer_id],
            read_row,
        )?;
        let mut keys = Vec::new();
        for row in rows {
            let key = row?.map_err(StoreError::Corrupt)?;
            if filter.status.is_none_or(|status| key.status_at(now) == status) {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    /// Every row changed after `revision`, tombstones included, oldest change first.
    pub fn changes_since(&self, revision: u64) -> Result<Changes, StoreError> {
        let conn = self.conn();
        let tx = conn.unchecked_transaction()?;
        let current: i64 =
            tx.query_row("SELECT value FROM meta WHERE name = 'revision'", [], |r| r.get(0))?;
        let mut stmt = tx.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM keys WHERE revision > ?1 ORDER BY revision"
        ))?;
        let mut changes = Changes {
            revision: current as u64,
            ..Changes::default()
        };
        for row in stmt.query_map([revision as i64], read_row)? {
            match row? {
                Ok(key) => changes.keys.push(key),
                Err(why) => changes.bad_rows.push(why),
            }
        }
        drop(stmt);
        tx.finish()?;
        Ok(changes)
    }

    /// Adds counted requests to the daily totals and moves `last_used_at` forward.
    pub fn record_usage(&self, deltas: &[UsageDelta]) -> Result<(), StoreError> {
        let mut conn = self.conn();
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
        let conn = self.conn();
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
            self.conn()
                .query_row("SELECT value FROM meta WHERE name = 'revision'", [], |r| r.get(0))?;
        Ok(value as u64)
    }

    /// Inserts many keys in one transaction, for bulk loads (benchmarks, migrations from
    /// another system). Each key gets its own revision.
    pub fn insert_many(&self, keys: &[NewKey]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let start: i64 = tx.query_row("SELECT value FROM meta WHERE name = 'revision'", [], |r| r.get(0))?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO keys (id, name, environment, hash, prefix, permissions, rate_limit, customer_id, \
                 allowed_ips, expires_at, status, created_at, updated_at, metadata, revision) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'active', ?11, ?11, ?12, ?13)",
            )?;
            for (i, key) in keys.iter().enumerate() {
                stmt.execute(params![
                    key.id,
                    key.name,
                    key.environment.as_str(),
                    &key.hash.0[..],
                    key.prefix,
                    to_json(&key.permissions),
                    key.rate_limit.as_ref().map(to_json),
                    key.customer_id,
                    to_json(&key.allowed_ips),
                    key.expires_at.map(|at| at.as_second()),
                    key.now.as_second(),
                    to_json(&key.metadata),
                    start + 1 + i as i64,
                ])?;
            }
        }
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE name = 'revision'",
            [start + keys.len() as i64],
        )?;
        tx.commit()?;
        Ok(())
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let applied: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if applied as usize > MIGRATIONS.len() {
        return Err(StoreError::Unavailable(format!(
            "the store's schema version {applied} is newer than this keygate knows ({}); upgrade keygate",
            MIGRATIONS.len()
        )));
    }
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
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
         previous_hash = ?12, grace_until = ?13, previous_last_used_at = ?14, metadata = ?15, revision = ?16 \
         WHERE seq = ?1",
    )?
    .execute(params![
        key.seq as i64,
        key.name,
        &key.hash.0[..],
        key.prefix,
        to_json(&key.permissions),
        key.rate_limit.as_ref().map(to_json),
        key.customer_id,
        to_json(&key.allowed_ips),
        key.expires_at.map(|at| at.as_second()),
        key.status.as_str(),
        key.updated_at.as_second(),
        key.previous_hash.as_ref().map(|h| h.0.to_vec()),
        key.grace_until.map(|at| at.as_second()),
        key.previous_last_used_at.map(|at| at.as_second()),
        to_json(&key.metadata),
        key.revision as i64,
    ])
    .map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
            StoreError::Conflict("a key with this secret exists already".into())
        }
        other => other.into(),
    })?;
    Ok(())
}

fn select_one(conn: &Connection, condition: &str, value: &str) -> Result<Option<StoredKey>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM keys WHERE {condition}"))?;
    match stmt.query_row([value], read_row).optional()? {
        Some(Ok(key)) => Ok(Some(key)),
        Some(Err(why)) => Err(StoreError::Corrupt(why)),
        None => Ok(None),
    }
}

fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> String {
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
    };
    Ok(raw.decode(id.clone()).map_err(|why| format!("key {id}: {why}")))
}

struct RawRow {
    seq: i64,
    name: String,
    environment: String,
    hash: Vec<u8>,
    prefix: String,
    permissions: String,
    rate_limit: Option<String>,
    customer_id: Option<String>,
    allowed_ips: String,
    expires_at: Option<i64>,
    status: String,
    created_at: i64,
    updated_at: i64,
    last_used_at: Option<i64>,
    previous_hash: Option<Vec<u8>>,
    grace_until: Option<i64>,
    previous_last_used_at: Option<i64>,
    metadata: String,
    revision: i64,
}

impl RawRow {
    fn decode(self, id: String) -> Result<StoredKey, String> {
        Ok(StoredKey {
            seq: self.seq as u64,
            id,
            name: self.name,
            environment: self.environment.parse()?,
            hash: hash(&self.hash).ok_or("hash is not 32 bytes")?,
            prefix: self.prefix,
            permissions: json("permissions", &self.permissions)?,
            rate_limit: self
                .rate_limit
                .map(|text| json("rate_limit", &text))
                .transpose()?,
            customer_id: self.customer_id,
            allowed_ips: json("allowed_ips", &self.allowed_ips)?,
            expires_at: instant(self.expires_at)?,
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
            metadata: json("metadata", &self.metadata)?,
            revision: self.revision as u64,
        })
    }
}

fn hash(bytes: &[u8]) -> Option<KeyHash> {
    bytes.try_into().ok().map(KeyHash)
}

fn json<T: serde::de::DeserializeOwned>(field: &str, text: &str) -> Result<T, String> {
    serde_json::from_str(text).map_err(|e| format!("{field}: {e}"))
}

fn instant(seconds: Option<i64>) -> Result<Option<Timestamp>, String> {
    seconds
        .map(|s| Timestamp::from_second(s).map_err(|e| format!("bad timestamp {s}: {e}")))
        .transpose()
}
