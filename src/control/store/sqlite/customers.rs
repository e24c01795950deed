//! The SQLite store's customer rows and their audit trail (control plane), read through the
//! shared row decoding of [`crate::control::store::customers`].

use std::collections::HashMap;

use jiff::Timestamp;
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};

use super::keys::Cells;
use super::next_revision;
use crate::control::store::audit::{with_report, Fields};
use crate::control::store::customers::{
    add_customer_changes, changed_customer_fields, customer_fields, CustomerEvent, CustomerEventRow,
    CustomerRow, ModifiedCustomer, NewCustomer, StoredCustomer, CUSTOMER_COLUMNS, CUSTOMER_EVENT_COLUMNS,
    CUSTOMER_REVISION_COLUMN,
};
use crate::control::store::model::{Audit, Changes};
use crate::control::store::row::{instant, json, signed, to_json};
use crate::control::store::StoreError;

fn read_row(row: &Row<'_>) -> Result<StoredCustomer, String> {
    CustomerRow::read(&mut Cells::of(row)).and_then(CustomerRow::decode)
}

/// The customer row with this id, tombstone or not.
fn select_any(conn: &Connection, id: &str) -> Result<Option<StoredCustomer>, StoreError> {
    let sql = format!("SELECT {CUSTOMER_COLUMNS} FROM customers WHERE id = ?1");
    let mut stmt = conn.prepare_cached(&sql)?;
    let found = stmt.query_row([id], |row| Ok(read_row(row))).optional()?;
    found.transpose().map_err(StoreError::Corrupt)
}

/// The customer with this id, unless it is deleted.
pub(super) fn select_one(conn: &Connection, id: &str) -> Result<Option<StoredCustomer>, StoreError> {
    Ok(select_any(conn, id)?.filter(|customer| !customer.deleted))
}

/// Customers that are not deleted, in creation order, after `after`, at most `limit`.
pub(super) fn list(conn: &Connection, after: u64, limit: usize) -> Result<Vec<StoredCustomer>, StoreError> {
    let sql = format!(
        "SELECT {CUSTOMER_COLUMNS} FROM customers WHERE deleted = 0 AND seq > ?1 ORDER BY seq LIMIT ?2"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![signed(after), signed(limit as u64)], |row| {
        Ok(read_row(row))
    })?;
    rows.map(|row| row?.map_err(StoreError::Corrupt)).collect()
}

/// How many keys that are not deleted name each of `ids`: one statement, the ids passed as one
/// JSON array.
pub(super) fn key_counts(conn: &Connection, ids: &[&str]) -> Result<HashMap<String, u64>, StoreError> {
    let ids = serde_json::to_string(ids).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let mut stmt = conn.prepare_cached(
        "SELECT customer_id, count(*) FROM keys WHERE status != 'deleted' \
         AND customer_id IN (SELECT value FROM json_each(?1)) GROUP BY customer_id",
    )?;
    let rows = stmt.query_map([ids], |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Inserts the customer at the next revision, or takes over a deleted one's row.
pub(super) fn insert(
    tx: &Transaction<'_>,
    customer: &NewCustomer,
    audit: Audit,
) -> Result<StoredCustomer, StoreError> {
    let existing = select_any(tx, &customer.id)?;
    if existing.as_ref().is_some_and(|found| !found.deleted) {
        return Err(StoreError::Conflict(
            "a customer with this id exists already".into(),
        ));
    }
    let revision = next_revision(tx)?;
    let row = CustomerRow::of(
        &customer.id,
        &customer.spec,
        (customer.now, customer.now),
        revision,
    );
    if existing.is_some() {
        write(tx, &row, true)?;
    } else {
        tx.prepare_cached(
            "INSERT INTO customers (id, name, rate_limit, quota, metadata, created_at, updated_at, revision, deleted) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0)",
        )?
        .execute(params![
            row.id,
            row.name,
            row.rate_limit,
            row.quota,
            row.metadata,
            row.created_at,
            row.updated_at,
            row.revision
        ])?;
    }
    record_event(
        tx,
        &customer.id,
        audit,
        customer.now,
        customer_fields(&customer.spec),
    )?;
    select_one(tx, &customer.id)?.ok_or(StoreError::NotFound)
}

/// Writes a row's settings, update time and revision over the row of its id, as not
/// deleted; `created`: its creation time too (a deleted customer's row taken over).
fn write(tx: &Transaction<'_>, row: &CustomerRow, created: bool) -> Result<(), StoreError> {
    let created_at = created.then_some(row.created_at);
    tx.prepare_cached(
        "UPDATE customers SET name = ?2, rate_limit = ?3, quota = ?4, metadata = ?5, \
         created_at = coalesce(?6, created_at), updated_at = ?7, revision = ?8, deleted = 0 WHERE id = ?1",
    )?
    .execute(params![
        row.id,
        row.name,
        row.rate_limit,
        row.quota,
        row.metadata,
        created_at,
        row.updated_at,
        row.revision
    ])?;
    Ok(())
}

/// Reads the customer, lets `change` edit it, and writes it back at a new revision with its
/// audit record, unless nothing changed.
pub(super) fn modify(
    tx: &Transaction<'_>,
    id: &str,
    audit: Audit,
    change: &mut (dyn FnMut(&mut StoredCustomer) -> Result<(), StoreError> + Send),
) -> Result<ModifiedCustomer, StoreError> {
    let before = select_one(tx, id)?.ok_or(StoreError::NotFound)?;
    let mut customer = before.clone();
    change(&mut customer)?;
    if customer.spec == before.spec {
        return Ok(ModifiedCustomer {
            customer: before,
            changed: false,
        });
    }
    customer.revision = next_revision(tx)?;
    let row = CustomerRow::of(
        id,
        &customer.spec,
        (customer.created_at, customer.updated_at),
        customer.revision,
    );
    write(tx, &row, false)?;
    let changes = changed_customer_fields(&before.spec, &customer.spec);
    record_event(tx, id, audit, customer.updated_at, changes)?;
    Ok(ModifiedCustomer {
        customer,
        changed: true,
    })
}

/// Marks the customer deleted at a new revision, unless a key that is not deleted names it.
pub(super) fn delete(tx: &Transaction<'_>, id: &str, audit: Audit, now: Timestamp) -> Result<(), StoreError> {
    select_one(tx, id)?.ok_or(StoreError::NotFound)?;
    let named: i64 = tx.query_row(
        "SELECT count(*) FROM keys WHERE customer_id = ?1 AND status != 'deleted'",
        [id],
        |r| r.get(0),
    )?;
    if named > 0 {
        return Err(StoreError::Conflict(format!(
            "{named} key(s) still name this customer; delete them or change their customer_id first"
        )));
    }
    let revision = next_revision(tx)?;
    tx.execute(
        "UPDATE customers SET deleted = 1, updated_at = ?2, revision = ?3 WHERE id = ?1",
        params![id, now.as_second(), signed(revision)],
    )?;
    record_event(tx, id, audit, now, Fields::new())
}

pub(super) fn record_event(
    tx: &Transaction<'_>,
    id: &str,
    audit: Audit,
    at: Timestamp,
    changes: Fields,
) -> Result<(), StoreError> {
    let (token, client) = audit.actor.origin();
    tx.prepare_cached(
        "INSERT INTO customer_events (customer_id, at, actor, event, changes, token, client) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        id,
        at.as_second(),
        audit.actor.as_str(),
        audit.event,
        to_json(&with_report(changes, audit.report)),
        token,
        client,
    ])?;
    Ok(())
}

/// A customer's audit trail, oldest first, after event `after`.
pub(super) fn events(
    conn: &Connection,
    id: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<CustomerEvent>, StoreError> {
    if select_any(conn, id)?.is_none() {
        return Err(StoreError::NotFound);
    }
    let mut stmt = conn.prepare_cached(
        "SELECT id, at, actor, event, changes, token, client FROM customer_events \
         WHERE customer_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![id, signed(after), signed(limit as u64)], |r| {
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
        events.push(CustomerEvent {
            id: event_id as u64,
            customer_id: id.to_owned(),
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

/// Adds the customers changed after `revision` and at most at `changes.revision` to a change
/// read, in the caller's snapshot.
pub(super) fn add_changes(
    conn: &Connection,
    revision: u64,
    changes: &mut Changes,
    limit: usize,
) -> Result<(), StoreError> {
    let sql = format!(
        "SELECT {CUSTOMER_COLUMNS} FROM customers WHERE revision > ?1 AND revision <= ?2 \
         ORDER BY revision LIMIT ?3"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let bounds = params![signed(revision), signed(changes.revision), signed(limit as u64)];
    let rows = stmt.query_map(bounds, |row| {
        Ok((row.get::<_, i64>(CUSTOMER_REVISION_COLUMN)? as u64, read_row(row)))
    })?;
    let rows = rows.collect::<Result<Vec<_>, _>>()?;
    add_customer_changes(changes, rows, limit);
    Ok(())
}

/// Every customer row (tombstones too) and customer event, for a dump, in the caller's read.
pub(super) fn export(conn: &Connection) -> Result<(Vec<CustomerRow>, Vec<CustomerEventRow>), StoreError> {
    let mut stmt = conn.prepare(&format!("SELECT {CUSTOMER_COLUMNS} FROM customers ORDER BY seq"))?;
    let customers = stmt
        .query_map([], |row| Ok(CustomerRow::read(&mut Cells::of(row))))?
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(StoreError::Corrupt)?;
    let mut stmt = conn.prepare(&format!(
        "SELECT {CUSTOMER_EVENT_COLUMNS} FROM customer_events ORDER BY id"
    ))?;
    let events = stmt
        .query_map([], |r| {
            Ok(CustomerEventRow {
                id: r.get(0)?,
                customer_id: r.get(1)?,
                at: r.get(2)?,
                actor: r.get(3)?,
                event: r.get(4)?,
                changes: r.get(5)?,
                token: r.get(6)?,
                client: r.get(7)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok((customers, events))
}

/// Writes a dump's customers (over the target's of the same id, at `stamp` when given, else
/// at their own revision) and the customer events the target lacks.
pub(super) fn import(
    tx: &Transaction<'_>,
    customers: &[CustomerRow],
    events: &[CustomerEventRow],
    stamp: Option<i64>,
) -> Result<(), StoreError> {
    for row in customers {
        tx.prepare_cached(
            "INSERT INTO customers (id, name, rate_limit, quota, metadata, created_at, updated_at, revision, deleted) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (id) DO UPDATE SET name = excluded.name, \
             rate_limit = excluded.rate_limit, quota = excluded.quota, metadata = excluded.metadata, \
             created_at = excluded.created_at, updated_at = excluded.updated_at, \
             revision = excluded.revision, deleted = excluded.deleted",
        )?
        .execute(params![
            row.id,
            row.name,
            row.rate_limit,
            row.quota,
            row.metadata,
            row.created_at,
            row.updated_at,
            stamp.unwrap_or(row.revision),
            row.deleted
        ])?;
    }
    for row in events {
        tx.prepare_cached(
            "INSERT INTO customer_events (id, customer_id, at, actor, event, changes, token, client) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (id) DO NOTHING",
        )?
        .execute(params![
            row.id,
            row.customer_id,
            row.at,
            row.actor,
            row.event,
            row.changes,
            row.token,
            row.client
        ])?;
    }
    Ok(())
}
