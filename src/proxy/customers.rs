//! The customers' limits on the hot path (data plane): a map beside the key table, from a
//! customer id to the rate limit and quota its keys share, filled by the key sync
//! (`control::sync`) from the store's customer rows.
//!
//! A key names its customer by id (`AuthKey::customer_id`); step 8 looks the id up here and
//! asks the customer's limits beside the key's ([`super::limits::KeyAsk`]). A customer without
//! an object here, or one whose object sets no limits, limits nothing: its keys keep working
//! as before (scoping only). A change to one customer is one O(1) insert or removal.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use dashmap::DashMap;
use rustc_hash::FxBuildHasher;

use crate::core::key::RateLimitSpec;
use crate::core::quota::QuotaSpec;

/// What a customer's keys share: its rate limit and its quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CustomerLimits {
    pub rate: Option<RateLimitSpec>,
    pub quota: Option<QuotaSpec>,
}

impl CustomerLimits {
    /// No limits: a customer without an object, or deleted.
    pub const NONE: CustomerLimits = CustomerLimits {
        rate: None,
        quota: None,
    };

    pub fn is_empty(&self) -> bool {
        self.rate.is_none() && self.quota.is_none()
    }
}

/// A customer with limits, as step 8 finds it: its id (so the request needs not read the
/// key's copy of it, a UTF-8 check) and its limits. Replaced whole when the customer changes.
#[derive(Debug, PartialEq, Eq)]
pub struct Customer {
    pub id: Box<str>,
    pub limits: CustomerLimits,
}

/// A customer id as the map's key, hashed and compared as bytes: the request path looks a key's
/// customer up by the bytes the key table holds ([`crate::proxy::table::Text::as_bytes`]).
#[derive(PartialEq, Eq)]
struct Id(Box<str>);

impl Hash for Id {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.as_bytes().hash(state);
    }
}

impl Borrow<[u8]> for Id {
    fn borrow(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// The limits of every customer that has some, by id. Ids are an operator's, not a client's:
/// a fast hash is safe.
#[derive(Default)]
pub struct CustomerMap {
    limits: DashMap<Id, Arc<Customer>, FxBuildHasher>,
}

impl CustomerMap {
    /// The customer `id` (its bytes), when it has limits: a shared pointer, not a copy.
    pub fn get(&self, id: &[u8]) -> Option<Arc<Customer>> {
        self.limits.get(id).map(|found| found.clone())
    }

    /// The limits of the customer `id`, when it has any.
    pub fn limits(&self, id: &str) -> Option<CustomerLimits> {
        self.get(id.as_bytes()).map(|customer| customer.limits)
    }

    /// Sets a customer's limits; one without any is removed (nothing to ask).
    pub fn set(&self, id: &str, limits: CustomerLimits) {
        if limits.is_empty() {
            self.limits.remove(id.as_bytes());
        } else {
            let customer = Customer {
                id: id.into(),
                limits,
            };
            self.limits.insert(Id(id.into()), Arc::new(customer));
        }
    }

    /// Forgets a customer (deleted).
    pub fn remove(&self, id: &str) {
        self.limits.remove(id.as_bytes());
    }

    /// Keeps only the customers `keep` says yes to (a whole reload drops the rest).
    pub fn retain(&self, mut keep: impl FnMut(&str) -> bool) {
        self.limits.retain(|id, _| keep(&id.0));
    }

    /// Every customer with limits, copied out (a snapshot's whole write takes them).
    pub fn entries(&self) -> Vec<(Box<str>, CustomerLimits)> {
        self.limits
            .iter()
            .map(|entry| (entry.key().0.clone(), entry.value().limits))
            .collect()
    }

    /// How many customers have limits.
    pub fn len(&self) -> usize {
        self.limits.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }
}

impl std::fmt::Debug for CustomerMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomerMap").field("len", &self.len()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::time::Duration;

    use super::*;

    fn rate(requests: u32) -> CustomerLimits {
        CustomerLimits {
            rate: Some(RateLimitSpec {
                requests: NonZeroU32::new(requests).unwrap(),
                per: Duration::from_secs(1),
                burst: None,
            }),
            quota: None,
        }
    }

    #[test]
    fn a_customer_without_limits_is_not_kept() {
        let map = CustomerMap::default();
        map.set("acme", rate(5));
        assert_eq!(map.limits("acme"), Some(rate(5)));
        map.set(
            "acme",
            CustomerLimits {
                rate: None,
                quota: None,
            },
        );
        assert_eq!(map.limits("acme"), None);
        assert!(map.is_empty());
    }

    #[test]
    fn a_reload_keeps_only_the_customers_it_saw() {
        let map = CustomerMap::default();
        map.set("a", rate(1));
        map.set("b", rate(2));
        map.retain(|id| id == "b");
        assert_eq!((map.limits("a"), map.limits("b")), (None, Some(rate(2))));
        assert_eq!(map.get(b"b").unwrap().id.as_ref(), "b");
        map.remove("b");
        assert_eq!(map.len(), 0);
    }
}
