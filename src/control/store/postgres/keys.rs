//! The PostgreSQL store's key rows and their audit trail (control plane): every statement that
//! reads or writes a key, made from the one column list of [`crate::control::store::row`].
//! Bulk inserts go in with binary `COPY`.

use bytes::BytesMut;
use deadpool_postgres::GenericClient;
use jiff::Timestamp;
use tokio_postgres::types::{IsNull, ToSql, Type};
use tokio_postgres::Row;

use super::{conflict, signed_len, snapshot, Tx};
use crate::control::store::audit::{changed_fields, is_no_change, new_key_fields, with_report, Fields};
use crate::control::store::model::{Audit, Changes, KeyEvent, KeyFilter, Modified, NewKey, StoredKey};
use crate::control::store::row::{
    instant, json, select_list, signed, to_json, Cell, KeyRow, KeyWrite, ReadCells, KEY_COLUMN_COUNT,
    REVISION_COLUMN,
};
use crate::control::store::StoreError;
use crate::core::key::{KeyStatus, StoredStatus};
use crate::core::secret::KeyHash;

/// PostgreSQL's parameter marks: `$1`, `$2`, ...
pub(super) fn mark(n: usize) -> String {
    format!("${n}")
}

impl ToSql for Cell<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        // Checked: a cell bound to a column of another type is an error, not wrong bytes.
        match self {
            Cell::Int(value) => value.to_sql_checked(ty, out),
            Cell::Text(value) => value.to_sql_checked(ty, out),
            Cell::Bytes(value) => value.to_sql_checked(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        <i64 as ToSql>::accepts(ty) || <&str as ToSql>::accepts(ty) || <&[u8] as ToSql>::accepts(ty)
    }

    tokio_postgres::types::to_sql_checked!();
}

impl Cell<'_> {
    /// The column type of this cell, for binary `COPY`.
    pub(super) fn pg_type(&self) -> Type {
        match self {
            Cell::Int(_) => Type::INT8,
            Cell::Text(_) => Type::TEXT,
            Cell::Bytes(_) => Type::BYTEA,
        }
    }
}

/// A row's columns, read in order.
pub(super) struct Cells<'r> {
    row: &'r Row,
    next: usize,
}

impl<'r> Cells<'r> {
    pub(super) fn of(row: &'r Row) -> Self {
        Cells { row, next: 0 }
    }

    fn get<T: for<'a> tokio_postgres::types::FromSql<'a>>(&mut self) -> Result<Option<T>, String> {
        let value = self.row.try_get(self.next).map_err(|e| e.to_string());
        self.next += 1;
        value
    }
}

impl ReadCells for Cells<'_> {
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

/// Reads a key selected as [`select_list`]; a row whose contents do not parse is `Err(why)`.
fn read_row(row: &Row) -> Result<StoredKey, String> {
    KeyRow::read(&mut Cells::of(row)).and_then(KeyRow::decode)
}

pub(super) async fn select_one(
    client: &impl GenericClient,
    id: &str,
) -> Result<Option<StoredKey>, StoreError> {
    let row = client
        .query_opt(
            &format!("SELECT {} FROM keys WHERE id = $1", select_list()),
            &[&id],
        )
        .await?;
    row.map(|row| read_row(&row).map_err(StoreError::Corrupt))
        .transpose()
}

/// The key that holds `hash` as its current secret, or as the one a regeneration replaced
/// while its grace period runs at `now`; deleted keys hold none. One lookup in the index of
/// every secret (`key_secrets`), then the key by its primary key.
pub(super) async fn by_hash(
    client: &impl GenericClient,
    hash: &KeyHash,
    now: Timestamp,
) -> Result<Option<StoredKey>, StoreError> {
    let sql = format!(
        "SELECT {} FROM keys WHERE seq = (SELECT key_seq FROM key_secrets WHERE hash = $1) \
         AND status <> 'deleted' AND (hash = $1 OR (previous_hash = $1 AND grace_until > $2))",
        select_list()
    );
    let statement = client.prepare_cached(&sql).await?;
    let row = client
        .query_opt(&statement, &[&&hash.0[..], &now.as_second()])
        .await?;
    row.map(|row| read_row(&row).map_err(StoreError::Corrupt))
        .transpose()
}

/// [`by_hash`] for many secrets, in their order, in one statement.
pub(super) async fn by_hashes(
    client: &impl GenericClient,
    hashes: &[KeyHash],
    now: Timestamp,
) -> Result<Vec<Option<StoredKey>>, StoreError> {
    let sql = format!(
        "SELECT {} FROM keys WHERE seq IN (SELECT key_seq FROM key_secrets WHERE hash = ANY($1)) \
         AND status <> 'deleted'",
        select_list()
    );
    let wanted: Vec<&[u8]> = hashes.iter().map(|hash| &hash.0[..]).collect();
    let statement = client.prepare_cached(&sql).await?;
    let mut holders = std::collections::HashMap::new();
    for row in client.query(&statement, &[&wanted]).await? {
        let key = read_row(&row).map_err(StoreError::Corrupt)?;
        if let Some(previous) = key.previous_hash.filter(|_| key.grace_until > Some(now)) {
            holders.insert(previous.0, key.clone());
        }
        holders.insert(key.hash.0, key);
    }
    Ok(hashes.iter().map(|hash| holders.get(&hash.0).cloned()).collect())
}

/// Bumps the store revision: the revision of the change being written. Writers queue on this
/// row, so changes commit in revision order.
pub(super) async fn next_revision(tx: &Tx<'_>) -> Result<u64, StoreError> {
    let value: i64 = tx
        .query_one(
            "UPDATE meta SET value = value + 1 WHERE name = 'revision' RETURNING value",
            &[],
        )
        .await?
        .get(0);
    Ok(value as u64)
}

/// Inserts a new key at the next revision, and reads it back.
pub(super) async fn insert(tx: &Tx<'_>, key: &NewKey, audit: Audit<'_>) -> Result<StoredKey, StoreError> {
    let revision = next_revision(tx).await?;
    let row = KeyRow::of_new(key, revision);
    let cells = row.cells();
    let statement = tx.prepare_cached(&KeyWrite::New.sql(mark)).await?;
    tx.execute(&statement, &sql_values(KeyWrite::New, &cells))
        .await
        .map_err(|e| conflict(e, "a key with this secret or id exists already"))?;
    record_event(tx, &key.id, audit, key.now, new_key_fields(key)).await?;
    select_one(tx, &key.id).await?.ok_or(StoreError::NotFound)
}

/// Reads the key (locking its row), lets `change` edit it, and writes it back at a new revision
/// with its audit record (and `webhook` queued), unless the change changed nothing.
pub(super) async fn modify(
    tx: &Tx<'_>,
    id: &str,
    audit: Audit<'_>,
    webhook: Option<&str>,
    change: &mut (dyn FnMut(&mut StoredKey) -> Result<(), StoreError> + Send),
) -> Result<Modified, StoreError> {
    let row = tx
        .query_opt(
            &format!("SELECT {} FROM keys WHERE id = $1 FOR UPDATE", select_list()),
            &[&id],
        )
        .await?;
    let mut key = match row.map(|row| read_row(&row)) {
        Some(Ok(key)) if key.status != StoredStatus::Deleted => key,
        Some(Err(why)) => return Err(StoreError::Corrupt(why)),
        _ => return Err(StoreError::NotFound),
    };
    let before = key.clone();
    change(&mut key)?;
    if is_no_change(&before, &key) {
        // A leak report is recorded even when the key was revoked already.
        if audit.report.is_some() {
            record_event(tx, &key.id, audit, key.updated_at, Fields::new()).await?;
        }
        return Ok(Modified {
            key: before,
            changed: false,
        });
    }
    key.revision = next_revision(tx).await?;
    let row = KeyRow::of_stored(&key);
    let cells = row.cells();
    let statement = tx.prepare_cached(&KeyWrite::Change.sql(mark)).await?;
    tx.execute(&statement, &sql_values(KeyWrite::Change, &cells))
        .await
        .map_err(|e| conflict(e, "a key with this secret exists already"))?;
    record_event(tx, &key.id, audit, key.updated_at, changed_fields(&before, &key)).await?;
    if let Some(payload) = webhook {
        super::jobs::enqueue(tx, payload, key.updated_at).await?;
    }
    Ok(Modified { key, changed: true })
}

/// The parameters of `write` as tokio-postgres takes them.
pub(super) fn sql_values<'c>(
    write: KeyWrite,
    cells: &'c [Cell<'_>; KEY_COLUMN_COUNT],
) -> Vec<&'c (dyn ToSql + Sync)> {
    write
        .values(cells)
        .into_iter()
        .map(|cell| cell as &(dyn ToSql + Sync))
        .collect()
}

pub(super) async fn record_event(
    tx: &Tx<'_>,
    key_id: &str,
    audit: Audit<'_>,
    at: Timestamp,
    changes: Fields,
) -> Result<(), StoreError> {
    let (token, client) = audit.actor.origin();
    tx.execute(
        "INSERT INTO key_events (key_id, at, actor, event, changes, token, client) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &key_id,
            &at.as_second(),
            &audit.actor.as_str(),
            &audit.event,
            &to_json(&with_report(changes, audit.report)),
            &token,
            &client,
        ],
    )
    .await?;
    Ok(())
}

/// A key's audit trail, oldest first, from after event `after` on.
pub(super) async fn events(
    client: &impl GenericClient,
    id: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<KeyEvent>, StoreError> {
    let exists: bool = client
        .query_one("SELECT EXISTS (SELECT 1 FROM keys WHERE id = $1)", &[&id])
        .await?
        .get(0);
    if !exists {
        return Err(StoreError::NotFound);
    }
    let rows = client
        .query(
            "SELECT id, at, actor, event, changes, token, client FROM key_events \
             WHERE key_id = $1 AND id > $2 ORDER BY id LIMIT $3",
            &[&id, &signed(after), &signed_len(limit)],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let event_id: i64 = row.get(0);
            Ok(KeyEvent {
                id: event_id as u64,
                key_id: id.to_owned(),
                at: instant(Some(row.get(1)))
                    .map_err(StoreError::Corrupt)?
                    .ok_or_else(|| StoreError::Corrupt(format!("event {event_id} has no time")))?,
                actor: row.get(2),
                event: row.get(3),
                token: row.get(5),
                client: row.get(6),
                changes: json("changes", row.get(4)).map_err(StoreError::Corrupt)?,
            })
        })
        .collect()
}

/// Keys matching `filter`, in creation order, after sequence number `after`, at most `limit`.
pub(super) async fn list(
    client: &impl GenericClient,
    filter: &KeyFilter,
    now: Timestamp,
    after: u64,
    limit: usize,
) -> Result<Vec<StoredKey>, StoreError> {
    let status = match filter.status {
        None => "status <> 'deleted'",
        Some(KeyStatus::Active) => "status = 'active' AND (expires_at IS NULL OR expires_at > $4)",
        Some(KeyStatus::Expired) => "status = 'active' AND expires_at <= $4",
        Some(KeyStatus::Revoked) => "status = 'revoked'",
        Some(KeyStatus::Deleted) => "status = 'deleted'",
    };
    let query = format!(
        "SELECT {} FROM keys WHERE {status} AND seq > $3 \
         AND ($1::TEXT IS NULL OR environment = $1) AND ($2::TEXT IS NULL OR customer_id = $2) \
         AND $4::BIGINT IS NOT NULL ORDER BY seq LIMIT $5",
        select_list()
    );
    let environment = filter.environment.map(|env| env.as_str());
    let rows = client
        .query(
            &query,
            &[
                &environment,
                &filter.customer_id,
                &signed(after),
                &now.as_second(),
                &signed_len(limit),
            ],
        )
        .await?;
    rows.iter()
        .map(|row| read_row(row).map_err(StoreError::Corrupt))
        .collect()
}

/// Up to `limit` rows changed after `revision`, read in one snapshot with the store's revision.
pub(super) async fn changes_since(
    client: &mut deadpool_postgres::Client,
    revision: u64,
    limit: usize,
) -> Result<Changes, StoreError> {
    let (tx, current) = snapshot(client).await?;
    let rows = tx
        .query(
            &format!(
                "SELECT {} FROM keys WHERE revision > $1 ORDER BY revision LIMIT $2",
                select_list()
            ),
            &[&signed(revision), &signed_len(limit)],
        )
        .await?;
    let mut changes = Changes::default();
    let mut last = revision;
    for row in &rows {
        last = row.get::<_, i64>(REVISION_COLUMN) as u64;
        match read_row(row) {
            Ok(key) => changes.keys.push(key),
            Err(why) => changes.bad_rows.push(why),
        }
    }
    changes.more = rows.len() == limit;
    changes.revision = if changes.more { last } else { current.max(last) };
    // The customers changed in the same revisions, in the same snapshot and round of reads.
    super::customers::add_changes(&tx, revision, &mut changes, limit).await?;
    tx.commit().await?;
    Ok(changes)
}

/// Every row changed after `revision`, in one snapshot through one cursor (one query, however
/// many rows): `batch` rows a fetch, each batch decoded and handed to `apply` before the next
/// is fetched, so memory beside the table is one batch's. The rows come in the order the
/// server finds cheapest, not by revision, so a batch before the last records `revision` (the
/// table holds at least what it did, and the rest of the snapshot is coming); the last records
/// the snapshot's revision and brings the customers changed up to it, read once. Each fetch is
/// allowed `each`; the whole read as long as it takes.
pub(super) async fn stream_changes(
    client: &mut deadpool_postgres::Client,
    revision: u64,
    batch: usize,
    each: std::time::Duration,
    apply: &mut (dyn FnMut(Changes) + Send),
) -> Result<(), StoreError> {
    let within = |what| StoreError::Unavailable(format!("PostgreSQL did not answer {what} within {each:?}"));
    let (tx, current) = tokio::time::timeout(each, snapshot(client))
        .await
        .map_err(|_| within("the snapshot's start"))??;
    let sql = format!("SELECT {} FROM keys WHERE revision > $1", select_list());
    let portal = tokio::time::timeout(each, tx.bind(sql.as_str(), &[&signed(revision)]))
        .await
        .map_err(|_| within("the key query"))??;
    let fetch = i32::try_from(batch.max(1)).unwrap_or(i32::MAX);
    let mut last = revision;
    loop {
        let rows = tokio::time::timeout(each, tx.query_portal(&portal, fetch))
            .await
            .map_err(|_| within("a batch of keys"))??;
        let more = rows.len() == fetch as usize;
        let mut changes = Changes {
            more,
            revision,
            ..Changes::default()
        };
        for row in &rows {
            last = last.max(row.get::<_, i64>(REVISION_COLUMN) as u64);
            match read_row(row) {
                Ok(key) => changes.keys.push(key),
                Err(why) => changes.bad_rows.push(why),
            }
        }
        drop(rows);
        if !more {
            changes.revision = current.max(last);
            tokio::time::timeout(
                each,
                super::customers::add_changes(&tx, revision, &mut changes, usize::MAX),
            )
            .await
            .map_err(|_| within("the customers"))??;
            tx.commit().await?;
            apply(changes);
            return Ok(());
        }
        apply(changes);
    }
}
