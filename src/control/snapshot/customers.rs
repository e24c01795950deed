//! The customers' limits in the key-table snapshot (control plane): one line per customer with
//! limits after the keys' lines (format version 2), and in the journal beside the keys'
//! changes, so a gateway started from the snapshot while the store is down holds its keys to
//! their customers' limits too. A snapshot of version 1 holds none: its gateway enforces no
//! customer limit until the store answers, as before.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::core::key::RateLimitSpec;
use crate::core::quota::QuotaSpec;
use crate::proxy::customers::CustomerLimits;

/// One customer's limits as a line of the snapshot, or as an item of a journal line (where
/// one without limits is a customer removed, as in the map).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct CustomerEntry {
    customer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rate_limit: Option<RateLimitSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    quota: Option<QuotaSpec>,
}

/// Customers' limits by id, as a snapshot and its journal leave them.
pub type Customers = HashMap<String, CustomerLimits>;

impl CustomerEntry {
    pub fn of(id: &str, limits: &CustomerLimits) -> Self {
        CustomerEntry {
            customer: id.to_owned(),
            rate_limit: limits.rate,
            quota: limits.quota,
        }
    }

    /// Puts this customer's limits in `customers`, or removes it when it has none.
    pub fn apply_to(self, customers: &mut Customers) {
        let limits = CustomerLimits {
            rate: self.rate_limit,
            quota: self.quota,
        };
        if limits.is_empty() {
            customers.remove(&self.customer);
        } else {
            customers.insert(self.customer, limits);
        }
    }
}
