//! The control plane: the store, the sync that feeds the key table, the key lifecycle (with the
//! idle sweep and its webhooks), usage flushing, the admin listener, leaked-key reports.
//! Nothing here runs per proxied request.

pub mod admin;
pub mod customers;
pub mod keys;
pub mod leaks;
pub mod lifecycle;
pub mod quota_leases;
pub mod quota_warnings;
pub mod replicas;
pub mod snapshot;
pub mod store;
pub mod sync;
pub mod usage;
pub mod webhook;
