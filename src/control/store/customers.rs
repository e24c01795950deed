//! What the store holds for a customer, the same in both backends (control plane): the model
//! types, the one column list of a customer row and the one way a row becomes a
//! [`StoredCustomer`], and what a customer's audit record says of a change.
//!
//! Customers share the store-wide revision with keys: every change to a customer bumps it and
//! stamps the row, a deleted customer stays as a tombstone, and [`super::KeyStore::changes_since`]
//! returns the changed customers beside the changed keys, in the same read. A gateway's sync
//! thus takes both in one round trip, and a key and its customer changed one after the other
//! arrive in that order.

use jiff::Timestamp;
use serde::Serialize;

use super::audit::Fields;
use super::model::Changes;
use super::row::{instant, json, to_json, ReadCells};
use crate::core::key::RateLimitSpec;
use crate::core::quota::QuotaSpec;

/// A customer's settings: what an operator sets and the gateway enforces.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CustomerSpec {
    pub name: String,
    /// Shared by all of the customer's keys, on top of each key's own.
    pub rate_limit: Option<RateLimitSpec>,
    /// Shared by all of the customer's keys, on top of each key's own.
    pub quota: Option<QuotaSpec>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// A customer to insert: the caller has checked its id and spec.
#[derive(Debug, Clone)]
pub struct NewCustomer {
    pub id: String,
    pub spec: CustomerSpec,
    pub now: Timestamp,
}

/// One customer row.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCustomer {
    /// Internal sequence number: the order of listings.
    pub seq: u64,
    pub id: String,
    pub spec: CustomerSpec,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// The store revision of this row's last change.
    pub revision: u64,
    /// A tombstone: the customer was deleted (a new one may take its id).
    pub deleted: bool,
}

/// What a store's `modify_customer` left: the customer, and whether anything changed (a
/// change that changes nothing writes nothing: no revision, no audit record).
#[derive(Debug, Clone, PartialEq)]
pub struct ModifiedCustomer {
    pub customer: StoredCustomer,
    pub changed: bool,
}

/// One entry of a customer's audit trail, as [`super::KeyEvent`] is a key's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CustomerEvent {
    pub id: u64,
    pub customer_id: String,
    pub event: String,
    pub actor: String,
    pub token: Option<String>,
    pub client: Option<String>,
    pub at: Timestamp,
    pub changes: Fields,
}

/// The columns of a customer row, in the order every statement lists them.
pub const CUSTOMER_COLUMNS: &str =
    "seq, id, name, rate_limit, quota, metadata, created_at, updated_at, revision, deleted";

/// Where `revision` is in [`CUSTOMER_COLUMNS`].
pub const CUSTOMER_REVISION_COLUMN: usize = 8;

/// A customer row's values as stored: times in Unix seconds, JSON fields as their text.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomerRow {
    pub seq: i64,
    pub id: String,
    pub name: String,
    pub rate_limit: Option<String>,
    pub quota: Option<String>,
    pub metadata: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub revision: i64,
    pub deleted: i64,
}

impl CustomerRow {
    /// The columns a customer's spec fills, with the times and revision given.
    pub fn of(id: &str, spec: &CustomerSpec, times: (Timestamp, Timestamp), revision: u64) -> Self {
        CustomerRow {
            seq: 0,
            id: id.to_owned(),
            name: spec.name.clone(),
            rate_limit: spec.rate_limit.as_ref().map(to_json),
            quota: spec.quota.as_ref().map(to_json),
            metadata: to_json(&spec.metadata),
            created_at: times.0.as_second(),
            updated_at: times.1.as_second(),
            revision: super::row::signed(revision),
            deleted: 0,
        }
    }

    /// Reads a row selected as [`CUSTOMER_COLUMNS`]; `Err` says why it is bad.
    pub fn read(cells: &mut impl ReadCells) -> Result<CustomerRow, String> {
        let seq = required(cells.int(), "seq")?;
        let id = required(cells.text(), "id")?;
        let mut rest = || {
            Ok::<_, String>(CustomerRow {
                seq,
                id: id.clone(),
                name: required(cells.text(), "name")?,
                rate_limit: cells.text()?,
                quota: cells.text()?,
                metadata: required(cells.text(), "metadata")?,
                created_at: required(cells.int(), "created_at")?,
                updated_at: required(cells.int(), "updated_at")?,
                revision: required(cells.int(), "revision")?,
                deleted: required(cells.int(), "deleted")?,
            })
        };
        rest().map_err(|why| format!("customer {id}: {why}"))
    }

    /// The customer the row holds; `Err` says why it cannot be read, naming it.
    pub fn decode(self) -> Result<StoredCustomer, String> {
        let id = self.id;
        let decoded = (|| {
            let spec = CustomerSpec {
                name: self.name,
                rate_limit: self
                    .rate_limit
                    .map(|text| json("rate_limit", &text))
                    .transpose()?,
                quota: self.quota.map(|text| json("quota", &text)).transpose()?,
                metadata: json("metadata", &self.metadata)?,
            };
            Ok::<_, String>(StoredCustomer {
                seq: self.seq as u64,
                id: id.clone(),
                spec,
                created_at: instant(Some(self.created_at))?.ok_or("no created_at")?,
                updated_at: instant(Some(self.updated_at))?.ok_or("no updated_at")?,
                revision: self.revision as u64,
                deleted: self.deleted != 0,
            })
        })();
        decoded.map_err(|why| format!("customer {id}: {why}"))
    }
}

fn required<T>(value: Result<Option<T>, String>, column: &str) -> Result<T, String> {
    value?.ok_or_else(|| format!("{column} is NULL"))
}

/// The fields of a customer an audit record shows, without nulls.
pub fn customer_fields(spec: &CustomerSpec) -> Fields {
    let mut fields = match serde_json::to_value(spec) {
        Ok(serde_json::Value::Object(fields)) => fields,
        // A struct of plain fields serializes to an object; nothing else can come back.
        _ => Fields::new(),
    };
    fields.retain(|_, value| !value.is_null());
    fields
}

/// The audited fields that differ between `before` and `after`, with their new values (`null`
/// for one cleared).
pub fn changed_customer_fields(before: &CustomerSpec, after: &CustomerSpec) -> Fields {
    let (old, new) = (customer_fields(before), customer_fields(after));
    old.keys()
        .chain(new.keys())
        .filter(|field| old.get(*field) != new.get(*field))
        .map(|field| (field.clone(), new.get(field).cloned().unwrap_or_default()))
        .collect()
}

/// Adds the customer rows of a change read to `changes`, whose keys were read first: `rows`
/// are the customers changed after the reader's revision and at most at `changes.revision`,
/// oldest change first, at most `limit`. A full batch of customers ends the read at its last
/// revision (the keys past it come again next time), so neither kind outruns the other.
pub fn add_customer_changes(
    changes: &mut Changes,
    rows: Vec<(u64, Result<StoredCustomer, String>)>,
    limit: usize,
) {
    if rows.len() >= limit {
        if let Some((last, _)) = rows.last() {
            changes.revision = *last;
            changes.more = true;
            changes.keys.retain(|key| key.revision <= *last);
        }
    }
    for (_, row) in rows {
        match row {
            Ok(customer) => changes.customers.push(customer),
            Err(why) => changes.bad_rows.push(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> CustomerSpec {
        CustomerSpec {
            name: name.into(),
            rate_limit: None,
            quota: None,
            metadata: Fields::new(),
        }
    }

    #[test]
    fn a_row_reads_back_as_the_customer_it_was_made_of() {
        let at = Timestamp::from_second(1_800_000_000).unwrap();
        let mut spec = spec("Acme");
        spec.quota = Some(QuotaSpec {
            limit: 10,
            period: crate::core::quota::Period::Day,
            anchor: at,
        });
        let row = CustomerRow::of("acme", &spec, (at, at), 7);
        let customer = row.decode().unwrap();
        assert_eq!((customer.id.as_str(), customer.revision), ("acme", 7));
        assert_eq!(customer.spec, spec);
        assert!(!customer.deleted);
    }

    #[test]
    fn a_bad_row_names_the_customer_and_the_column() {
        let at = Timestamp::from_second(1_800_000_000).unwrap();
        let mut row = CustomerRow::of("acme", &spec("Acme"), (at, at), 1);
        row.quota = Some("{".into());
        let why = row.decode().unwrap_err();
        assert!(why.starts_with("customer acme: quota:"), "{why}");
    }

    #[test]
    fn an_audit_record_shows_only_what_changed() {
        let before = spec("Acme");
        let mut after = spec("Acme Inc");
        after.metadata.insert("plan".into(), "gold".into());
        let changes = changed_customer_fields(&before, &after);
        assert_eq!(changes.len(), 2);
        assert_eq!(changes["name"], "Acme Inc");
        assert!(!customer_fields(&before).contains_key("rate_limit"));
    }
}
