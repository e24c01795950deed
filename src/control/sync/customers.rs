//! The customers' side of the key sync (control plane): their limits, read whole once the
//! store answers and with every change set, go into the hot path's customer map.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use super::{KeySync, BATCH};
use crate::control::snapshot::journal::Change;
use crate::control::store::{StoreError, StoredCustomer};
use crate::proxy::customers::CustomerLimits;

impl KeySync {
    /// Reads every customer whole, once the store answers: at the first sync (a table that
    /// came from the snapshot, whose customers may be older than the store's, then pulls only
    /// later changes) and after a reload from another store file (whose customers are
    /// others). Forgets the customers the store no longer holds. All of it is journaled first
    /// when `journal`, as one change set.
    pub(super) fn load_customers(&self, journal: bool) -> Result<(), StoreError> {
        if self.customers_loaded.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let page = self.store.customers(after, BATCH)?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            all.extend(page);
        }
        let live: HashSet<&str> = all.iter().map(|customer| customer.id.as_str()).collect();
        let mut gone = Vec::new();
        for (id, _) in self.customers.entries() {
            if !live.contains(&*id) {
                gone.push(id);
            }
        }
        if journal {
            let mut change = customer_change(&all);
            change.extend(gone.iter().map(|id| (&**id, CustomerLimits::NONE)));
            let (revision, now_ms) = (self.table.revision(), self.clock.now().as_millisecond());
            let change = Change {
                customers: &change,
                ..Change::default()
            };
            self.with_journal(|journal, _| journal.record(&change, revision, now_ms));
        }
        self.apply_customers(&all);
        for id in &gone {
            self.customers.remove(id);
        }
        self.customers_loaded.store(true, Ordering::Release);
        Ok(())
    }

    /// Applies the customers of a batch of changes: their limits, or their removal.
    pub(super) fn apply_customers(&self, customers: &[StoredCustomer]) {
        for customer in customers {
            self.customers.set(&customer.id, limits_of(customer));
        }
    }
}

/// A customer's limits as the hot path holds them: none for one deleted.
pub(super) fn limits_of(customer: &StoredCustomer) -> CustomerLimits {
    if customer.deleted {
        return CustomerLimits::NONE;
    }
    CustomerLimits {
        rate: customer.spec.rate_limit,
        quota: customer.spec.quota,
    }
}

/// Customers as a journal line takes them.
pub(super) fn customer_change(customers: &[StoredCustomer]) -> Vec<(&str, CustomerLimits)> {
    customers
        .iter()
        .map(|customer| (customer.id.as_str(), limits_of(customer)))
        .collect()
}
