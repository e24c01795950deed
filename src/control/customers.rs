//! The customer lifecycle (control plane): create, show, list, update, delete, and the audit
//! trail of each, for the CLI and the admin API alike (SPEC 11). A customer's id is the
//! `customer_id` its keys carry; a key may name a customer that has no object (it is then
//! scoped, not limited), and a customer cannot be deleted while a key names it.
//!
//! What a customer's keys share (its rate limit and quota) reaches the hot path through the
//! key sync, not from here: a change made here is in force once a sync has read it.

use std::sync::Arc;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::keys::{check_customer_id, check_limits, check_name, KeyError, MAX_PAGE};
use super::store::{
    Actor, Audit, CustomerEvent, CustomerSpec, Fields, KeyStore, NewCustomer, StoreError, StoredCustomer,
};
use crate::core::clock::{whole_second, Clock};
use crate::core::key::RateLimitSpec;
use crate::core::quota::{QuotaChange, QuotaRequest, QuotaSpec};

#[derive(Debug, thiserror::Error)]
pub enum CustomerError {
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("no customer with id {0}")]
    NotFound(String),
    /// The id is taken, or keys still name the customer.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(StoreError),
}

impl CustomerError {
    fn from_store(error: StoreError, id: &str) -> Self {
        match error {
            StoreError::NotFound => CustomerError::NotFound(id.to_owned()),
            StoreError::Conflict(why) => CustomerError::Conflict(why),
            other => CustomerError::Store(other),
        }
    }
}

impl From<KeyError> for CustomerError {
    /// The rules shared with keys answer as key errors: only `Invalid` comes from them.
    fn from(error: KeyError) -> Self {
        match error {
            KeyError::Invalid { field, message } => CustomerError::Invalid {
                field: if field == "customer_id" { "id" } else { field },
                message,
            },
            KeyError::NotFound(id) => CustomerError::NotFound(id),
            KeyError::Conflict(why) => CustomerError::Conflict(why),
            KeyError::SecretInUse => CustomerError::Conflict(error.to_string()),
            KeyError::Store(error) => CustomerError::Store(error),
        }
    }
}

/// A customer as a client describes it: `POST /v1/customers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerRequest {
    pub id: String,
    /// Defaults to the id.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub rate_limit: Option<RateLimitSpec>,
    /// Its anchor defaults to the customer's creation.
    #[serde(default)]
    pub quota: Option<QuotaRequest>,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// A partial update, `PATCH /v1/customers/{id}`: a field left out stays; `null` clears
/// (`metadata` to empty).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerPatch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub rate_limit: Option<Option<RateLimitSpec>>,
    /// Without an anchor, a quota keeps the customer's current one, or else starts now.
    #[serde(default, deserialize_with = "present")]
    pub quota: Option<Option<QuotaRequest>>,
    #[serde(default, deserialize_with = "present_or_empty")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// `Some(None)` for an explicit `null` (clear the field), `None` when the field is absent.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    <Option<T> as Deserialize>::deserialize(deserializer).map(Some)
}

/// A field that `null` empties.
fn present_or_empty<'de, D: serde::Deserializer<'de>, T: Deserialize<'de> + Default>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    <Option<T> as Deserialize>::deserialize(deserializer).map(|value| Some(value.unwrap_or_default()))
}

/// The customer object of the admin API and the CLI's `--json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CustomerView {
    pub id: String,
    pub name: String,
    pub rate_limit: Option<RateLimitSpec>,
    pub quota: Option<QuotaSpec>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl CustomerView {
    pub fn of(customer: &StoredCustomer) -> Self {
        CustomerView {
            id: customer.id.clone(),
            name: customer.spec.name.clone(),
            rate_limit: customer.spec.rate_limit.map(RateLimitSpec::normalized),
            quota: customer.spec.quota,
            metadata: customer.spec.metadata.clone(),
            created_at: customer.created_at,
            updated_at: customer.updated_at,
        }
    }
}

/// One page of a customer listing.
#[derive(Debug, Clone)]
pub struct CustomerPage {
    pub customers: Vec<CustomerView>,
    /// Pass as `after` to read the next page; `None` on the last one.
    pub next: Option<u64>,
}

/// A customer as the store holds it, and how many keys (not deleted) name it.
pub type KeyCounted = (StoredCustomer, u64);

#[derive(Clone)]
pub struct CustomerService {
    store: Arc<dyn KeyStore>,
    clock: Clock,
    actor: Actor,
}

impl CustomerService {
    pub fn new(store: Arc<dyn KeyStore>, clock: Clock, actor: Actor) -> Self {
        CustomerService { store, clock, actor }
    }

    fn audit(&self, event: &'static str) -> Audit<'static> {
        Audit::of(self.actor, event)
    }

    /// The time of a change, in whole seconds as the store keeps it.
    pub fn now(&self) -> Timestamp {
        whole_second(self.clock.now())
    }

    pub fn create(&self, request: CustomerRequest) -> Result<CustomerView, CustomerError> {
        let now = self.now();
        check_customer_id(&request.id)?;
        let spec = CustomerSpec {
            name: request.name.unwrap_or_else(|| request.id.clone()),
            rate_limit: request.rate_limit,
            quota: request.quota.map(|quota| quota.anchored(now)),
            metadata: request.metadata,
        };
        validate(&spec)?;
        let new = NewCustomer {
            id: request.id,
            spec,
            now,
        };
        let stored = self
            .store
            .insert_customer(&new, self.audit("created"))
            .map_err(|e| CustomerError::from_store(e, &new.id))?;
        tracing::info!(customer_id = %stored.id, revision = stored.revision, actor = self.actor.as_str(), "customer created");
        Ok(CustomerView::of(&stored))
    }

    /// The customer as the store holds it (not deleted).
    pub fn stored(&self, id: &str) -> Result<StoredCustomer, CustomerError> {
        self.store
            .customer(id)
            .map_err(|e| CustomerError::from_store(e, id))?
            .ok_or_else(|| CustomerError::NotFound(id.to_owned()))
    }

    pub fn get(&self, id: &str) -> Result<CustomerView, CustomerError> {
        self.stored(id).map(|customer| CustomerView::of(&customer))
    }

    /// A page of customers in creation order, after `after`, at most `limit`.
    pub fn page(&self, after: u64, limit: usize) -> Result<CustomerPage, CustomerError> {
        let (found, next) = self.stored_page(after, limit)?;
        Ok(CustomerPage {
            customers: found.iter().map(CustomerView::of).collect(),
            next,
        })
    }

    /// A page as the store holds it, and the next page's cursor.
    fn stored_page(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<StoredCustomer>, Option<u64>), CustomerError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let mut found = self
            .store
            .customers(after, limit + 1)
            .map_err(CustomerError::Store)?;
        let more = found.len() > limit;
        found.truncate(limit);
        let next = more.then(|| found.last().map(|customer| customer.seq)).flatten();
        Ok((found, next))
    }

    /// A page as the store holds it, each customer with how many keys (not deleted) name it,
    /// counted in one query; and the next page's cursor.
    pub fn page_with_key_counts(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<KeyCounted>, Option<u64>), CustomerError> {
        let (found, next) = self.stored_page(after, limit)?;
        let ids: Vec<&str> = found.iter().map(|customer| customer.id.as_str()).collect();
        let counts = self
            .store
            .customer_key_counts(&ids)
            .map_err(CustomerError::Store)?;
        let counted = found
            .into_iter()
            .map(|customer| {
                let keys = counts.get(&customer.id).copied().unwrap_or(0);
                (customer, keys)
            })
            .collect();
        Ok((counted, next))
    }

    /// Every customer, page after page.
    pub fn list(&self) -> Result<Vec<CustomerView>, CustomerError> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let page = self.page(after, MAX_PAGE)?;
            all.extend(page.customers);
            match page.next {
                Some(next) => after = next,
                None => return Ok(all),
            }
        }
    }

    pub fn update(&self, id: &str, patch: CustomerPatch) -> Result<CustomerView, CustomerError> {
        let now = self.now();
        let mut failure = None;
        let result = self
            .store
            .modify_customer(id, self.audit("updated"), &mut |customer| {
                let patched = apply_patch(customer, patch.clone(), now);
                patched.map_err(|error| {
                    failure = Some(error);
                    StoreError::Conflict(String::new())
                })
            });
        if let Some(failure) = failure {
            return Err(failure);
        }
        let modified = result.map_err(|e| CustomerError::from_store(e, id))?;
        if modified.changed {
            tracing::info!(customer_id = %id, revision = modified.customer.revision, actor = self.actor.as_str(), "customer updated");
        }
        Ok(CustomerView::of(&modified.customer))
    }

    /// Deletes the customer; refused (conflict) while a key names it.
    pub fn delete(&self, id: &str) -> Result<(), CustomerError> {
        self.store
            .delete_customer(id, self.audit("deleted"), self.now())
            .map_err(|e| CustomerError::from_store(e, id))?;
        tracing::info!(customer_id = %id, actor = self.actor.as_str(), "customer deleted");
        Ok(())
    }

    /// The customer's audit trail, a page after event `after`, and the next page's cursor.
    pub fn events(
        &self,
        id: &str,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<CustomerEvent>, Option<u64>), CustomerError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let mut events = self
            .store
            .customer_events(id, after, limit + 1)
            .map_err(|e| CustomerError::from_store(e, id))?;
        let more = events.len() > limit;
        events.truncate(limit);
        let next = more.then(|| events.last().map(|event| event.id)).flatten();
        Ok((events, next))
    }

    /// Records an operator's top-up or reset of the customer's quota in its audit trail (the
    /// counters are the limiter's).
    pub fn record_quota_change(&self, id: &str, change: QuotaChange) -> Result<(), CustomerError> {
        let (event, field, value) = match change {
            QuotaChange::Read => return Ok(()),
            QuotaChange::Add(more) => ("quota_topped_up", "add", more.into()),
            QuotaChange::Reset => ("quota_reset", "reset", true.into()),
        };
        let changes = Fields::from_iter([(field.to_owned(), value)]);
        self.store
            .record_customer_event(id, self.audit(event), self.now(), &changes)
            .map_err(|e| CustomerError::from_store(e, id))?;
        tracing::info!(customer_id = %id, actor = self.actor.as_str(), "customer {event}");
        Ok(())
    }
}

fn validate(spec: &CustomerSpec) -> Result<(), CustomerError> {
    check_name(&spec.name)?;
    check_limits(spec.rate_limit.as_ref(), spec.quota.as_ref())?;
    Ok(())
}

fn apply_patch(
    customer: &mut StoredCustomer,
    patch: CustomerPatch,
    now: Timestamp,
) -> Result<(), CustomerError> {
    let spec = &mut customer.spec;
    if let Some(name) = patch.name {
        spec.name = name;
    }
    if let Some(rate_limit) = patch.rate_limit {
        spec.rate_limit = rate_limit;
    }
    if let Some(quota) = patch.quota {
        let anchor = spec.quota.map_or(now, |kept| kept.anchor);
        spec.quota = quota.map(|quota| quota.anchored(anchor));
    }
    if let Some(metadata) = patch.metadata {
        spec.metadata = metadata;
    }
    validate(spec)?;
    customer.updated_at = now;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::store::SqliteStore;
    use crate::core::clock::ManualClock;

    fn service() -> CustomerService {
        let store = Arc::new(SqliteStore::open(std::path::Path::new(":memory:")).unwrap());
        let clock = ManualClock::new("2026-12-07T10:00:00Z".parse().unwrap());
        CustomerService::new(store, Arc::new(clock), Actor::Cli)
    }

    fn request(json: &str) -> CustomerRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_customer_is_created_named_after_its_id_with_its_quota_anchored_now() {
        let customers = service();
        let created = customers
            .create(request(r#"{"id":"acme","quota":{"limit":10,"period":"day"}}"#))
            .unwrap();
        assert_eq!(created.name, "acme");
        assert_eq!(created.quota.unwrap().anchor, customers.now());
        assert_eq!(customers.get("acme").unwrap(), created);
    }

    #[test]
    fn bad_ids_names_and_limits_are_refused_by_field() {
        let customers = service();
        for (json, field) in [
            (r#"{"id":""}"#, "id"),
            (r#"{"id":"a/b"}"#, "id"),
            (r#"{"id":"a","name":" "}"#, "name"),
            (
                r#"{"id":"a","rate_limit":{"requests":1,"per":"1d","burst":1000}}"#,
                "rate_limit",
            ),
        ] {
            match customers.create(request(json)) {
                Err(CustomerError::Invalid { field: got, .. }) => assert_eq!(got, field, "{json}"),
                other => panic!("{json}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_patch_changes_what_it_names_and_keeps_the_quota_anchor() {
        let customers = service();
        let created = customers
            .create(request(r#"{"id":"acme","quota":{"limit":10,"period":"day"}}"#))
            .unwrap();
        let patch: CustomerPatch =
            serde_json::from_str(r#"{"quota":{"limit":20,"period":"day"},"metadata":null}"#).unwrap();
        let updated = customers.update("acme", patch).unwrap();
        assert_eq!(updated.quota.unwrap().limit, 20);
        assert_eq!(updated.quota.unwrap().anchor, created.quota.unwrap().anchor);
        let patch: CustomerPatch = serde_json::from_str(r#"{"name":""}"#).unwrap();
        assert!(matches!(
            customers.update("acme", patch),
            Err(CustomerError::Invalid { field: "name", .. })
        ));
    }
}
