//! The PostgreSQL store's customer rows and their audit trail (control plane), read through
//! the shared row decoding of [`crate::control::store::customers`]. Every write takes the
//! revision counter's row first (as key writes do), so customer writes are serialized with
//! each other and with key writes: a delete's check of the keys that name the customer sees
//! every key committed before it.

use std::collections::HashMap;

use deadpool_postgres::GenericClient;
use jiff::Timestamp;
use tokio_postgres::Row;

use super::keys::{next_revision, Cells};
use super::{signed_len, Tx};
use crate::control::store::audit::{with_report, Fields};
use crate::control::store::customers::{
    add_customer_changes, changed_customer_fields, customer_fields, CustomerEvent, CustomerEventRow,
    CustomerRow, ModifiedCustomer, NewCustomer, StoredCustomer, CUSTOMER_COLUMNS, CUSTOMER_EVENT_COLUMNS,
    CUSTOMER_REVISION_COLUMN,
};
use crate::control::store::model::{Audit, Changes};
use crate::control::store::row::{instant, json, signed, to_json};
use crate::control::store::StoreError;

fn read_row(row: &Row) -> Result<StoredCustomer, String> {
    CustomerRow::read(&mut Cells::of(row)).and_then(CustomerRow::decode)
}

/// The customer row with this id, tombstone or not.
async fn select_any(client: &impl GenericClient, id: &str) -> Result<Option<StoredCustomer>, StoreError> {
    let sql = format!("SELECT {CUSTOMER_COLUMNS} FROM customers WHERE id = $1");
    let row = client.query_opt(&sql, &[&id]).await?;
    row.map(|row| read_row(&row).map_err(StoreError::Corrupt))
        .transpose()
}

/// The customer with this id, unless it is deleted.
pub(super) async fn select_one(
    client: &impl GenericClient,
    id: &str,
) -> Result<Option<StoredCustomer>, StoreError> {
    Ok(select_any(client, id).await?.filter(|customer| !customer.deleted))
}

/// Customers that are not deleted, in creation order, after `after`, at most `limit`.
pub(super) async fn list(
    client: &impl GenericClient,
    after: u64,
    limit: usize,
) -> Result<Vec<StoredCustomer>, StoreError> {
    let sql = format!(
        "SELECT {CUSTOMER_COLUMNS} FROM customers WHERE deleted = 0 AND seq > $1 ORDER BY seq LIMIT $2"
    );
    let rows = client.query(&sql, &[&signed(after), &signed_len(limit)]).await?;
    rows.iter()
        .map(|row| read_row(row).map_err(StoreError::Corrupt))
        .collect()
}

/// How many keys that are not deleted name each of `ids`: one statement.
pub(super) async fn key_counts(
    client: &impl GenericClient,
    ids: &[&str],
) -> Result<HashMap<String, u64>, StoreError> {
    let rows = client
        .query(
            "SELECT customer_id, count(*) FROM keys WHERE status <> 'deleted' \
             AND customer_id = ANY($1) GROUP BY customer_id",
            &[&ids],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| (row.get(0), row.get::<_, i64>(1) as u64))
        .collect())
}

/// Inserts the customer at the next revision, or takes over a deleted one's row.
pub(super) async fn insert(
    tx: &Tx<'_>,
    customer: &NewCustomer,
    audit: Audit<'_>,
) -> Result<StoredCustomer, StoreError> {
    let revision = next_revision(tx).await?;
    let existing = select_any(tx, &customer.id).await?;
    if existing.as_ref().is_some_and(|found| !found.deleted) {
        return Err(StoreError::Conflict(
            "a customer with this id exists already".into(),
        ));
    }
    let row = CustomerRow::of(
        &customer.id,
        &customer.spec,
        (customer.now, customer.now),
        revision,
    );
    if existing.is_some() {
        write(tx, &row, true).await?;
    } else {
        tx.execute(
            "INSERT INTO customers (id, name, rate_limit, quota, metadata, created_at, updated_at, revision, deleted) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0)",
            &[
                &row.id,
                &row.name,
                &row.rate_limit,
                &row.quota,
                &row.metadata,
                &row.created_at,
                &row.updated_at,
                &row.revision,
            ],
        )
        .await?;
    }
    let fields = customer_fields(&customer.spec);
    record_event(tx, &customer.id, audit, customer.now, fields).await?;
    select_one(tx, &customer.id).await?.ok_or(StoreError::NotFound)
}

/// Writes a row's settings, update time and revision over the row of its id, as not
/// deleted; `created`: its creation time too (a deleted customer's row taken over).
async fn write(tx: &Tx<'_>, row: &CustomerRow, created: bool) -> Result<(), StoreError> {
    let created_at = created.then_some(row.created_at);
    tx.execute(
        "UPDATE customers SET name = $2, rate_limit = $3, quota = $4, metadata = $5, \
         created_at = coalesce($6, created_at), updated_at = $7, revision = $8, deleted = 0 WHERE id = $1",
        &[
            &row.id,
            &row.name,
            &row.rate_limit,
            &row.quota,
            &row.metadata,
            &created_at,
            &row.updated_at,
            &row.revision,
        ],
    )
    .await?;
    Ok(())
}

/// Reads the customer, lets `change` edit it, and writes it back at a new revision with its
/// audit record, unless nothing changed.
pub(super) async fn modify(
    tx: &Tx<'_>,
    id: &str,
    audit: Audit<'_>,
    change: &mut (dyn FnMut(&mut StoredCustomer) -> Result<(), StoreError> + Send),
) -> Result<ModifiedCustomer, StoreError> {
    let sql = format!("SELECT {CUSTOMER_COLUMNS} FROM customers WHERE id = $1 AND deleted = 0 FOR UPDATE");
    let row = tx.query_opt(&sql, &[&id]).await?.ok_or(StoreError::NotFound)?;
    let before = read_row(&row).map_err(StoreError::Corrupt)?;
    let mut customer = before.clone();
    change(&mut customer)?;
    if customer.spec == before.spec {
        return Ok(ModifiedCustomer {
            customer: before,
            changed: false,
        });
    }
    customer.revision = next_revision(tx).await?;
    let times = (customer.created_at, customer.updated_at);
    write(
        tx,
        &CustomerRow::of(id, &customer.spec, times, customer.revision),
        false,
    )
    .await?;
    let changes = changed_customer_fields(&before.spec, &customer.spec);
    record_event(tx, id, audit, customer.updated_at, changes).await?;
    Ok(ModifiedCustomer {
        customer,
        changed: true,
    })
}

/// Marks the customer deleted at a new revision, unless a key that is not deleted names it;
/// the revision it took, for the announcement.
pub(super) async fn delete(
    tx: &Tx<'_>,
    id: &str,
    audit: Audit<'_>,
    now: Timestamp,
) -> Result<u64, StoreError> {
    let revision = next_revision(tx).await?;
    select_one(tx, id).await?.ok_or(StoreError::NotFound)?;
    let named: i64 = tx
        .query_one(
            "SELECT count(*) FROM keys WHERE customer_id = $1 AND status <> 'deleted'",
            &[&id],
        )
        .await?
        .get(0);
    if named > 0 {
        return Err(StoreError::Conflict(format!(
            "{named} key(s) still name this customer; delete them or change their customer_id first"
        )));
    }
    tx.execute(
        "UPDATE customers SET deleted = 1, updated_at = $2, revision = $3 WHERE id = $1",
        &[&id, &now.as_second(), &signed(revision)],
    )
    .await?;
    record_event(tx, id, audit, now, Fields::new()).await?;
    Ok(revision)
}

pub(super) async fn record_event(
    tx: &Tx<'_>,
    id: &str,
    audit: Audit<'_>,
    at: Timestamp,
    changes: Fields,
) -> Result<(), StoreError> {
    let (token, client) = audit.actor.origin();
    tx.execute(
        "INSERT INTO customer_events (customer_id, at, actor, event, changes, token, client) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &id,
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

/// A customer's audit trail, oldest first, after event `after`.
pub(super) async fn events(
    client: &impl GenericClient,
    id: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<CustomerEvent>, StoreError> {
    if select_any(client, id).await?.is_none() {
        return Err(StoreError::NotFound);
    }
    let rows = client
        .query(
            "SELECT id, at, actor, event, changes, token, client FROM customer_events \
             WHERE customer_id = $1 AND id > $2 ORDER BY id LIMIT $3",
            &[&id, &signed(after), &signed_len(limit)],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let event_id: i64 = row.get(0);
            Ok(CustomerEvent {
                id: event_id as u64,
                customer_id: id.to_owned(),
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

/// Adds the customers changed after `revision` and at most at `changes.revision` to a change
/// read, in the caller's snapshot.
pub(super) async fn add_changes(
    tx: &Tx<'_>,
    revision: u64,
    changes: &mut Changes,
    limit: usize,
) -> Result<(), StoreError> {
    let sql = format!(
        "SELECT {CUSTOMER_COLUMNS} FROM customers WHERE revision > $1 AND revision <= $2 \
         ORDER BY revision LIMIT $3"
    );
    let bounds = [&signed(revision), &signed(changes.revision), &signed_len(limit)];
    let rows = tx.query(&sql, &[bounds[0], bounds[1], bounds[2]]).await?;
    let rows = rows
        .iter()
        .map(|row| (row.get::<_, i64>(CUSTOMER_REVISION_COLUMN) as u64, read_row(row)))
        .collect();
    add_customer_changes(changes, rows, limit);
    Ok(())
}

/// Every customer row (tombstones too) and customer event, for a dump, in the caller's read.
pub(super) async fn export(tx: &Tx<'_>) -> Result<(Vec<CustomerRow>, Vec<CustomerEventRow>), StoreError> {
    let sql = format!("SELECT {CUSTOMER_COLUMNS} FROM customers ORDER BY seq");
    let customers = tx
        .query(&sql, &[])
        .await?
        .iter()
        .map(|row| CustomerRow::read(&mut Cells::of(row)))
        .collect::<Result<_, _>>()
        .map_err(StoreError::Corrupt)?;
    let sql = format!("SELECT {CUSTOMER_EVENT_COLUMNS} FROM customer_events ORDER BY id");
    let events = tx
        .query(&sql, &[])
        .await?
        .iter()
        .map(|r| CustomerEventRow {
            id: r.get(0),
            customer_id: r.get(1),
            at: r.get(2),
            actor: r.get(3),
            event: r.get(4),
            changes: r.get(5),
            token: r.get(6),
            client: r.get(7),
        })
        .collect();
    Ok((customers, events))
}

/// Writes a dump's customers (over the target's of the same id, at `stamp` when given, else
/// at their own revision) and the customer events the target lacks.
pub(super) async fn import(
    tx: &Tx<'_>,
    customers: &[CustomerRow],
    events: &[CustomerEventRow],
    stamp: Option<i64>,
) -> Result<(), StoreError> {
    for row in customers {
        tx.execute(
            "INSERT INTO customers (id, name, rate_limit, quota, metadata, created_at, updated_at, revision, deleted) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO UPDATE SET name = excluded.name, \
             rate_limit = excluded.rate_limit, quota = excluded.quota, metadata = excluded.metadata, \
             created_at = excluded.created_at, updated_at = excluded.updated_at, \
             revision = excluded.revision, deleted = excluded.deleted",
            &[
                &row.id,
                &row.name,
                &row.rate_limit,
                &row.quota,
                &row.metadata,
                &row.created_at,
                &row.updated_at,
                &stamp.unwrap_or(row.revision),
                &row.deleted,
            ],
        )
        .await?;
    }
    for row in events {
        tx.execute(
            "INSERT INTO customer_events (id, customer_id, at, actor, event, changes, token, client) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
            &[
                &row.id,
                &row.customer_id,
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
    Ok(())
}
