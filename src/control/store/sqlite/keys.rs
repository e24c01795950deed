//! The SQLite store's key rows and their audit trail (control plane): every statement that
//! reads or writes a key, made from the one column list of [`crate::control::store::row`].

use jiff::Timestamp;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row, Transaction};

use super::{conflict, next_revision, read_revision};
use crate::control::store::audit::{changed_fields, is_no_change, new_key_fields, with_report, Fields};
use crate::control::store::model::{Audit, Changes, KeyEvent, KeyFilter, Modified, NewKey, StoredKey};
use crate::control::store::row::{
    instant, json, select_list, to_json, Cell, KeyRow, KeyWrite, ReadCells, REVISION_COLUMN,
};
use crate::control::store::StoreError;
use crate::core::key::{KeyStatus, StoredStatus};
use crate::core::secret::KeyHash;

/// SQLite's parameter marks: `?1`, `?2`, ...
pub(super) fn mark(n: usize) -> String {
    format!("?{n}")
}

impl rusqlite::ToSql for Cell<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        let value = match *self {
            Cell::Int(Some(n)) => ValueRef::Integer(n),
            Cell::Text(Some(text)) => ValueRef::Text(text.as_bytes()),
            Cell::Bytes(Some(bytes)) => ValueRef::Blob(bytes),
            Cell::Int(None) | Cell::Text(None) | Cell::Bytes(None) => ValueRef::Null,
        };
        Ok(ToSqlOutput::Borrowed(value))
    }
}

/// A row's columns, read in order.
pub(super) struct Cells<'r, 's> {
    row: &'r Row<'s>,
    next: usize,
}

impl<'r, 's> Cells<'r, 's> {
    pub(super) fn of(row: &'r Row<'s>) -> Self {
        Cells { row, next: 0 }
    }

    fn get<T: rusqlite::types::FromSql>(&mut self) -> Result<Option<T>, String> {
        let value = self.row.get(self.next).map_err(|e| e.to_string());
        self.next += 1;
        value
    }
}

impl ReadCells for Cells<'_, '_> {
    fn int(&mut self) -> Result<Option<i64>, String> {
        self.get()
    }

    fn text(&mut self) -> Result<Option<String>, String> {
        self.get()
    }

    fn bytes(&mut self) -> Result<Option<Vec<u8>>, String> {
        self.get()
    }
}

/// Reads a key selected as [`select_list`]; a row whose contents do not parse is `Err(why)`,
/// so one bad row is reported without hiding the others.
fn read_row(row: &Row<'_>) -> Result<StoredKey, String> {
    KeyRow::read(&mut Cells::of(row)).and_then(KeyRow::decode)
}

pub(super) fn select_one(conn: &Connection, id: &str) -> Result<Option<StoredKey>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {} FROM keys WHERE id = ?1", select_list()))?;
    match stmt.query_row([id], |row| Ok(read_row(row))).optional()? {
        Some(Ok(key)) => Ok(Some(key)),
        Some(Err(why)) => Err(StoreError::Corrupt(why)),
        None => Ok(None),
    }
}

/// The key that holds `hash` as its current secret, or as the one a regeneration replaced
/// while its grace period runs at `now`; deleted keys hold none. One lookup in the index of
/// every secret (`secret_hashes`), then the key by its primary key.
pub(super) fn by_hash(
    conn: &Connection,
    hash: &KeyHash,
    now: Timestamp,
) -> Result<Option<StoredKey>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {} FROM keys WHERE seq = (SELECT key_seq FROM secret_hashes WHERE hash = ?1) \
         AND status != 'deleted' AND (hash = ?1 OR (previous_hash = ?1 AND grace_until > ?2))",
        select_list()
    ))?;
    let found = stmt.query_row(params![&hash.0[..], now.as_second()], |row| Ok(read_row(row)));
    found.optional()?.transpose().map_err(StoreError::Corrupt)
}

/// Inserts a new key at the next revision, and reads it back.
pub(super) fn insert(tx: &Transaction<'_>, key: &NewKey, audit: Audit) -> Result<StoredKey, StoreError> {
    let revision = next_revision(tx)?;
    let sql = KeyWrite::New.sql(mark);
    insert_row(
        tx,
        &sql,
        key,
        revision,
        audit,
        "a key with this id exists already",
    )?;
    select_one(tx, &key.id)?.ok_or(StoreError::NotFound)
}

/// Inserts one new key row at `revision` with its creation's audit record (`sql`: the insert
/// statement, made once per import); a secret in use is [`StoreError::SecretInUse`], a clash of
/// ids a conflict saying `clash`.
fn insert_row(
    tx: &Transaction<'_>,
    sql: &str,
    key: &NewKey,
    revision: u64,
    audit: Audit,
    clash: &str,
) -> Result<(), StoreError> {
    let row = KeyRow::of_new(key, revision);
    let cells = row.cells();
    tx.prepare_cached(sql)?
        .execute(params_from_iter(KeyWrite::New.values(&cells)))
        .map_err(|e| conflict(e, clash))?;
    record_event(tx, &key.id, audit, key.now, new_key_fields(key))
}

/// Reads the key, lets `change` edit it, and writes it back at a new revision with its audit
/// record (and `webhook` queued), unless the change changed nothing.
pub(super) fn modify(
    tx: &Transaction<'_>,
    id: &str,
    audit: Audit,
    webhook: Option<&str>,
    change: &mut (dyn FnMut(&mut StoredKey) -> Result<(), StoreError> + Send),
) -> Result<Modified, StoreError> {
    let mut key = select_one(tx, id)?
        .filter(|key| key.status != StoredStatus::Deleted)
        .ok_or(StoreError::NotFound)?;
    let before = key.clone();
    change(&mut key)?;
    if is_no_change(&before, &key) {
        // A leak report is recorded even when the key was revoked already.
        if audit.report.is_some() {
            record_event(tx, &key.id, audit, key.updated_at, Fields::new())?;
        }
        return Ok(Modified {
            key: before,
            changed: false,
        });
    }
    key.revision = next_revision(tx)?;
    let row = KeyRow::of_stored(&key);
    let cells = row.cells();
    tx.prepare_cached(&KeyWrite::Change.sql(mark))?
        .execute(params_from_iter(KeyWrite::Change.values(&cells)))
        .map_err(|e| conflict(e, "the change conflicts with another key"))?;
    record_event(tx, &key.id, audit, key.updated_at, changed_fields(&before, &key))?;
    if let Some(payload) = webhook {
        super::jobs::enqueue(tx, payload, key.updated_at)?;
    }
    Ok(Modified { key, changed: true })
}

/// An audit record's insert: key id, time, actor, event, changes, token, client.
pub(super) const EVENT_INSERT: &str =
    "INSERT INTO key_events (key_id, at, actor, event, changes, token, client) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

pub(super) fn record_event(
    tx: &Transaction<'_>,
    key_id: &str,
    audit: Audit,
    at: Timestamp,
    changes: Fields,
) -> Result<(), StoreError> {
    let (token, client) = audit.actor.origin();
    tx.prepare_cached(EVENT_INSERT)?.execute(params![
        key_id,
        at.as_second(),
        audit.actor.as_str(),
        audit.event,
        to_json(&with_report(changes, audit.report)),
        token,
        client,
    ])?;
    Ok(())
}

/// A key's audit trail, oldest first, from after event `after` on.
pub(super) fn events(
    conn: &Connection,
    id: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<KeyEvent>, StoreError> {
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

/// Keys matching `filter`, in creation order, after sequence number `after`, at most `limit`.
pub(super) fn list(
    conn: &Connection,
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
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {} FROM keys WHERE {status} AND seq > ?3 \
         AND (?1 IS NULL OR environment = ?1) AND (?2 IS NULL OR customer_id = ?2) ORDER BY seq LIMIT ?5",
        select_list()
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
        |row| Ok(read_row(row)),
    )?;
    rows.map(|row| row?.map_err(StoreError::Corrupt)).collect()
}

/// Up to `limit` rows changed after `revision`, read in one snapshot with the store's revision.
pub(super) fn changes_since(conn: &Connection, revision: u64, limit: usize) -> Result<Changes, StoreError> {
    let tx = conn.unchecked_transaction()?;
    let current = read_revision(&tx)?;
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {} FROM keys WHERE revision > ?1 ORDER BY revision LIMIT ?2",
        select_list()
    ))?;
    let mut changes = Changes::default();
    let mut rows = 0;
    let mut last = revision;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    for row in stmt.query_map(params![revision as i64, limit], |row| {
        Ok((row.get::<_, i64>(REVISION_COLUMN)?, read_row(row)))
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
    changes.revision = if changes.more { last } else { current.max(last) };
    drop(stmt);
    super::customers::add_changes(
        &tx,
        revision,
        &mut changes,
        usize::try_from(limit).unwrap_or(usize::MAX),
    )?;
    tx.finish()?;
    Ok(changes)
}
