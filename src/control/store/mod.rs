//! The backing store of keys and their usage (control plane), behind one seam: [`KeyStore`].
//! SQLite, embedded, for one host; PostgreSQL for replicas on several hosts. The CLI, the admin
//! API, the key sync, the lifecycle sweep, the webhook outbox and the usage flusher name only
//! [`KeyStore`] and the [`model`] types.
//!
//! Both stores are synchronous and are called from blocking threads (`spawn_blocking`, the
//! CLI); the PostgreSQL one also copes with a caller inside a runtime.
//!
//! What both backends share lives here, beside the seam, not in either: `row` (a key's
//! columns, listed once, and the one way a key becomes a row and back), `audit` (what an
//! audit record says of a change), [`dump`] (a whole store as data). Each backend is a folder
//! split along its own sections (`sqlite/`, `postgres/`).

pub mod analytics;
mod audit;
pub mod customers;
pub mod dump;
pub mod model;
mod postgres;
pub mod quota;
pub mod replicas;
mod row;
mod sqlite;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::watch;

use crate::core::secret::KeyHash;
pub use analytics::{HourRow, UsageGroup, UsageOf, UsagePoint, UsageQuery};
pub use audit::Fields;
pub use customers::{CustomerEvent, CustomerSpec, ModifiedCustomer, NewCustomer, StoredCustomer};

pub use model::*;
pub use postgres::PgStore;
pub use replicas::{FleetFeed, ReplicaRow};
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no such key")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    /// The secret of a change is another key's, current or in its grace period. The message
    /// names no key: whoever tries a secret must not learn which key holds it.
    #[error("this secret is already in use")]
    SecretInUse,
    /// The store does not exist (or the folder it would be in): it is created only on purpose.
    #[error("{0}")]
    Missing(String),
    /// The file is there but is not a keygate store (an empty file included): it gets a schema
    /// only from `keygate store init`, never because something opened it.
    #[error("{0}")]
    NotAStore(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store holds an unreadable row: {0}")]
    Corrupt(String),
}

/// Opens the existing store a config names; a missing one is [`StoreError::Missing`].
pub fn open(url: &crate::config::StoreUrl) -> Result<Arc<dyn KeyStore>, StoreError> {
    match url {
        crate::config::StoreUrl::Sqlite(path) => Ok(Arc::new(SqliteStore::open(Path::new(path))?)),
        crate::config::StoreUrl::Postgres(url) => Ok(Arc::new(PgStore::open(url)?)),
    }
}

/// The existing store a config names, opened by the key sync's first attempt that can (a
/// gateway starts while its store is locked); a missing one is [`StoreError::Missing`].
pub fn open_later(url: &crate::config::StoreUrl) -> Result<Arc<dyn KeyStore>, StoreError> {
    match url {
        crate::config::StoreUrl::Sqlite(path) => Ok(Arc::new(SqliteStore::open_later(Path::new(path))?)),
        crate::config::StoreUrl::Postgres(url) => Ok(Arc::new(PgStore::open_later(url)?)),
    }
}

/// Opens the store a config names, creating it first when it does not exist: the explicit act
/// of the commands that add keys. A file that exists must be a keygate store already.
pub fn create(url: &crate::config::StoreUrl) -> Result<Arc<dyn KeyStore>, StoreError> {
    match url {
        crate::config::StoreUrl::Sqlite(path) => Ok(Arc::new(SqliteStore::create(Path::new(path))?)),
        // The database is the operator's to create; its tables are created on first open.
        crate::config::StoreUrl::Postgres(url) => Ok(Arc::new(PgStore::open(url)?)),
    }
}

/// `keygate store init`: [`create`], and an existing empty file gets keygate's schema too.
pub fn init(url: &crate::config::StoreUrl) -> Result<Arc<dyn KeyStore>, StoreError> {
    match url {
        crate::config::StoreUrl::Sqlite(path) => Ok(Arc::new(SqliteStore::init(Path::new(path))?)),
        crate::config::StoreUrl::Postgres(url) => Ok(Arc::new(PgStore::open(url)?)),
    }
}

/// Whether the store a config names exists ([`StoreError::Missing`] when it does not) and is a
/// keygate store ([`StoreError::NotAStore`] when it is not), without writing to it. A store
/// that cannot be read now (locked) is [`StoreError::Unavailable`].
pub fn check(url: &crate::config::StoreUrl) -> Result<(), StoreError> {
    match url {
        crate::config::StoreUrl::Sqlite(path) => sqlite::check_store(Path::new(path)),
        crate::config::StoreUrl::Postgres(_) => Ok(()),
    }
}

/// Why the user this process runs as cannot use the store a config names (the file, its owner
/// and mode, and that user), as `keygate check` tells it: tried, then explained. `None` when
/// nothing is refused. Not for a process that holds the store open.
pub fn access_problem(url: &crate::config::StoreUrl) -> Option<String> {
    match url {
        crate::config::StoreUrl::Sqlite(path) => sqlite::access::confirmed_problem(Path::new(path)),
        crate::config::StoreUrl::Postgres(_) => None,
    }
}

/// Whether the store a config names exists, without opening it: [`StoreError::Missing`] when
/// it does not.
pub fn exists(url: &crate::config::StoreUrl) -> Result<(), StoreError> {
    match url {
        crate::config::StoreUrl::Sqlite(path) => sqlite::exists(Path::new(path)),
        crate::config::StoreUrl::Postgres(_) => Ok(()),
    }
}

/// What the control plane asks of a store, whichever backend it is. Every change to a key bumps
/// the store-wide revision, stamps the key's row with it and writes its audit record, in one
/// transaction; deleted keys stay as tombstones, so a reader that asks for the changes since
/// the last revision it saw misses none.
pub trait KeyStore: Send + Sync + std::fmt::Debug {
    /// Inserts a new key with its creation's audit record. A secret another key holds
    /// (current or in its grace period) is [`StoreError::SecretInUse`]; an id in use a
    /// [`StoreError::Conflict`].
    fn insert(&self, key: &NewKey, audit: Audit) -> Result<StoredKey, StoreError>;

    /// The key with this id, deleted or not.
    fn get(&self, id: &str) -> Result<Option<StoredKey>, StoreError>;

    /// The key that holds the secret of `hash`: as its current secret, or as the one a
    /// regeneration replaced while its grace period runs at `now`. Deleted keys hold none.
    /// One lookup in the index of every secret, however many keys there are.
    fn key_by_hash(&self, hash: &KeyHash, now: Timestamp) -> Result<Option<StoredKey>, StoreError>;

    /// [`KeyStore::key_by_hash`] for many secrets, in their order: one round trip where the
    /// store is across a network (a leak report's batch of 1,000 tokens).
    fn keys_by_hash(&self, hashes: &[KeyHash], now: Timestamp) -> Result<Vec<Option<StoredKey>>, StoreError> {
        hashes.iter().map(|hash| self.key_by_hash(hash, now)).collect()
    }

    /// Reads the key, lets `change` edit it, and writes it back with a new revision and an
    /// audit record of what changed, in one transaction, so concurrent changes cannot lose
    /// each other. A change that changes nothing but `updated_at` writes nothing
    /// ([`Modified::changed`] false). Deleted keys are not found. `webhook`: a payload to queue
    /// in the same transaction (lifecycle events). An `Err` from `change` is returned as it is,
    /// nothing written. An audit record with a leak report ([`Audit::report`]) is written even
    /// when nothing changed.
    fn modify(
        &self,
        id: &str,
        audit: Audit,
        webhook: Option<&str>,
        change: &mut (dyn FnMut(&mut StoredKey) -> Result<(), StoreError> + Send),
    ) -> Result<Modified, StoreError>;

    /// Adds an event to a key's audit trail that changes no key row: an operator's top-up or
    /// reset of the key's quota, whose state lives in the limiters, not in the store.
    fn record_event(
        &self,
        key_id: &str,
        audit: Audit,
        at: Timestamp,
        changes: &Fields,
    ) -> Result<(), StoreError>;

    /// A key's audit trail, oldest first, from after event `after` on, at most `limit`. Kept
    /// for deleted keys; an unknown id is [`StoreError::NotFound`].
    fn events(&self, id: &str, after: u64, limit: usize) -> Result<Vec<KeyEvent>, StoreError>;

    /// Keys matching `filter` (statuses as of `now`), in creation order, starting after the key
    /// with sequence number `after`, at most `limit`. Every condition is in SQL, so a page
    /// costs the same however many keys there are.
    fn list(
        &self,
        filter: &KeyFilter,
        now: Timestamp,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredKey>, StoreError>;

    /// Up to `limit` rows changed after `revision`, tombstones included, oldest change first,
    /// read in one snapshot with the store's revision. [`Changes::revision`] is where the next
    /// call starts: the last row's revision when there may be more, the store's when this was
    /// the last batch. A row that cannot be decoded is reported in [`Changes::bad_rows`].
    fn changes_since(&self, revision: u64, limit: usize) -> Result<Changes, StoreError>;

    /// Every row changed after `revision`, handed to `apply` in batches of up to `batch` keys
    /// as they are read; what the key sync's pulls (the first load of a whole table among them)
    /// go through. A batch's [`Changes::revision`] is one the table may record once it has
    /// taken the batch, and the last batch's (its `more` false) is where the next pull starts.
    /// By default, [`KeyStore::changes_since`] page after page; a store that can read all of it
    /// in one snapshot with one cursor does so (PostgreSQL: one query, not one per batch).
    fn stream_changes(
        &self,
        revision: u64,
        batch: usize,
        apply: &mut (dyn FnMut(Changes) + Send),
    ) -> Result<(), StoreError> {
        let mut revision = revision;
        loop {
            let changes = self.changes_since(revision, batch)?;
            let more = changes.more;
            revision = changes.revision;
            apply(changes);
            if !more {
                return Ok(());
            }
        }
    }

    /// Adds counted requests to the keys' daily totals and moves their `last_used_at` (or
    /// `previous_last_used_at`) forward. Usage does not bump the revision: it does not change
    /// what a gateway admits.
    fn record_usage(&self, deltas: &[UsageDelta]) -> Result<(), StoreError>;

    /// A key's usage history, deleted or not.
    fn usage(&self, id: &str) -> Result<Usage, StoreError>;

    /// [`KeyStore::record_usage`] and the hourly analytics rows of the same flush, added to
    /// what is there (every replica adds its own), in one transaction: with one statement for
    /// the rows on PostgreSQL, one per thousand rows on SQLite.
    fn record_usage_rows(&self, deltas: &[UsageDelta], rows: &[HourRow]) -> Result<(), StoreError>;

    /// The hourly rows a query asks for, summed by its bucket and group. An unknown key id is
    /// [`StoreError::NotFound`]; a customer without keys has no points.
    fn usage_series(&self, query: &UsageQuery) -> Result<Vec<UsagePoint>, StoreError>;

    /// Deletes the hourly rows of hours that started before `before` (Unix seconds): how many.
    fn prune_usage_rows(&self, before: i64) -> Result<u64, StoreError>;

    /// The current store revision.
    fn revision(&self) -> Result<u64, StoreError>;

    /// How many keys are not deleted: what a whole load of the key table takes, counted
    /// before it to size the table (one `count(*)`, no row read).
    fn live_keys(&self) -> Result<u64, StoreError>;

    /// Inserts a customer with its creation's audit record, at a new revision. An id that a
    /// customer holds is a [`StoreError::Conflict`]; a deleted one's is taken over (its audit
    /// trail goes on).
    fn insert_customer(&self, customer: &NewCustomer, audit: Audit) -> Result<StoredCustomer, StoreError>;

    /// The customer with this id, unless it is deleted.
    fn customer(&self, id: &str) -> Result<Option<StoredCustomer>, StoreError>;

    /// Customers that are not deleted, in creation order, after sequence number `after`, at
    /// most `limit`.
    fn customers(&self, after: u64, limit: usize) -> Result<Vec<StoredCustomer>, StoreError>;

    /// Reads the customer, lets `change` edit it, and writes it back at a new revision with an
    /// audit record of what changed, in one transaction; a change that changes nothing but
    /// `updated_at` writes nothing. Deleted customers are not found.
    fn modify_customer(
        &self,
        id: &str,
        audit: Audit,
        change: &mut (dyn FnMut(&mut StoredCustomer) -> Result<(), StoreError> + Send),
    ) -> Result<ModifiedCustomer, StoreError>;

    /// Deletes the customer (a tombstone, at a new revision, audited) unless a key that is not
    /// deleted names it: then [`StoreError::Conflict`], checked in the same transaction.
    fn delete_customer(&self, id: &str, audit: Audit, now: Timestamp) -> Result<(), StoreError>;

    /// Adds an event to a customer's audit trail that changes no row (a quota top-up or reset).
    fn record_customer_event(
        &self,
        id: &str,
        audit: Audit,
        at: Timestamp,
        changes: &Fields,
    ) -> Result<(), StoreError>;

    /// A customer's audit trail, oldest first, after event `after`, at most `limit`; kept after
    /// its deletion. An id no customer ever had is [`StoreError::NotFound`].
    fn customer_events(&self, id: &str, after: u64, limit: usize) -> Result<Vec<CustomerEvent>, StoreError>;

    /// Up to `limit` active keys, unexpired at `now`, idle since `cutoff` or longer, in
    /// creation order from after the key with sequence number `after` (a page; the sweep reads
    /// them all).
    fn idle_keys(
        &self,
        cutoff: Timestamp,
        now: Timestamp,
        after: u64,
        limit: usize,
    ) -> Result<Vec<IdleKey>, StoreError>;

    /// Records that the idle warning `threshold` (seconds before `deadline`) went out for a key,
    /// and queues its webhook payload, in one transaction. False when it was recorded before:
    /// each warning goes out once, whichever gateway sweeps and however often it restarts.
    fn record_warning(
        &self,
        seq: u64,
        deadline: Timestamp,
        threshold: u64,
        now: Timestamp,
        webhook: Option<&str>,
    ) -> Result<bool, StoreError>;

    /// When the first idle warning for this key and deadline went out, if one did.
    fn first_warning_at(&self, seq: u64, deadline: Timestamp) -> Result<Option<Timestamp>, StoreError>;

    /// Queues a webhook payload for delivery.
    fn enqueue_webhook(&self, payload: &str, now: Timestamp) -> Result<(), StoreError>;

    /// Webhook deliveries due at `now`, oldest first, at most `limit`.
    fn due_webhooks(&self, now: Timestamp, limit: usize) -> Result<Vec<PendingWebhook>, StoreError>;

    /// Takes the oldest payload due at `now` for one delivery attempt: it is not due again
    /// before `until`, so no other deliverer (another replica included) posts it meanwhile,
    /// and a deliverer that dies mid-attempt leaves it to be tried again after `until`.
    fn claim_webhook(&self, now: Timestamp, until: Timestamp) -> Result<Option<PendingWebhook>, StoreError>;

    /// Removes a delivered (or abandoned) webhook from the outbox.
    fn webhook_done(&self, id: u64) -> Result<(), StoreError>;

    /// Counts a failed delivery attempt and sets when to try again.
    fn webhook_retry_at(&self, id: u64, attempts: u32, at: Timestamp) -> Result<(), StoreError>;

    /// Takes or renews the lease `name` for `holder` until `now + ttl`. True when `holder` has
    /// it: nobody held it, its holder let it run out, or `holder` held it already.
    fn try_lease(&self, name: &str, holder: &str, now: Timestamp, ttl: Duration) -> Result<bool, StoreError>;

    /// One replica's quota lease round trip on a counter (see [`quota`]): gives back, grants,
    /// notes the warnings reached, in one transaction that holds the row.
    fn lease_quota(&self, ask: &quota::LeaseAsk<'_>) -> Result<quota::LeaseGrant, StoreError>;

    /// Deletes the quota counters of periods that ended before `before` (Unix seconds): a row
    /// is deleted when a later period of the same owner started by then (a period ends when
    /// the next starts). The one counter of a quota that never renews (period `none`) and each
    /// owner's latest period are kept. How many rows went.
    fn prune_quota_counters(&self, before: i64) -> Result<u64, StoreError>;

    /// How many keys that are not deleted name each of the customers `ids`, in one query; a
    /// customer no key names is absent.
    fn customer_key_counts(&self, ids: &[&str])
        -> Result<std::collections::HashMap<String, u64>, StoreError>;

    /// Reads, tops up or resets a quota counter, for the whole fleet; the row after.
    fn change_quota(
        &self,
        counter: &quota::CounterId<'_>,
        change: crate::core::quota::QuotaChange,
    ) -> Result<quota::CounterRow, StoreError>;

    /// Inserts many keys in one transaction, all or none, each with its own revision and audit
    /// record: benchmarks, tests. See [`KeyStore::insert_batches`] for keys read as they come.
    fn insert_many(&self, keys: &[NewKey], audit: Audit) -> Result<(), StoreError> {
        let mut batch = Some(keys.to_vec());
        self.insert_batches(&mut || Ok(batch.take()), audit).map(drop)
    }

    /// Inserts the keys `next` hands out, batch by batch as a bulk import reads them, in one
    /// transaction: all or none, each key with its own revision and audit record. `next`
    /// answers `Ok(None)` at the end; its error calls the import off (nothing is written) and
    /// is the answer. How many keys went in.
    fn insert_batches(&self, next: &mut KeyBatches<'_>, audit: Audit) -> Result<u64, StoreError>;

    /// Every row, read in one consistent snapshot while gateways write: `keygate store export`
    /// and `copy`.
    fn export_dump(&self) -> Result<dump::Dump, StoreError>;

    /// Writes `dump` in one transaction, all of it or nothing. See [`dump::Onto`] for a store
    /// that holds keys already.
    fn import_dump(&self, dump: &dump::Dump, onto: dump::Onto) -> Result<(), StoreError>;

    /// Writes this replica's row (inserted or replaced), drops the rows whose heartbeat is
    /// older than `stale_before`, and answers the rows left, by id, in one transaction.
    /// `announce`: tell the replicas that listen ([`KeyStore::fleet_feed`]) that a row changed,
    /// so a receipt waiting for it reads the rows at once.
    fn heartbeat(
        &self,
        row: &ReplicaRow,
        stale_before: Timestamp,
        announce: bool,
    ) -> Result<Vec<ReplicaRow>, StoreError>;

    /// The replicas whose heartbeat is at or after `live_since`, by id.
    fn replicas(&self, live_since: Timestamp) -> Result<Vec<ReplicaRow>, StoreError>;

    /// Removes a replica's row: it stopped cleanly.
    fn remove_replica(&self, id: &str) -> Result<(), StoreError>;

    /// Tells the replicas that listen that a receipt for `revision` is waited for, so each
    /// reports at once when it has applied it. Nothing where the store pushes nothing: there
    /// every replica reports as soon as it applies a change.
    fn want_receipt(&self, _revision: u64) -> Result<(), StoreError> {
        Ok(())
    }

    /// The wake-ups between replicas, where the store pushes them; `None` where it does not.
    fn fleet_feed(&self) -> Option<FleetFeed> {
        None
    }

    /// Wakes on each change committed anywhere, where the store pushes changes
    /// (PostgreSQL's `NOTIFY`); `None` where readers poll.
    fn change_feed(&self) -> Option<watch::Receiver<u64>> {
        None
    }

    /// Opens a store not open yet, and reopens one whose file was replaced under it: true
    /// when it was (a file store's concern; a database server's store is never replaced under
    /// its clients).
    fn reopen_if_replaced(&self) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// How many times the store was reopened because it was replaced.
    fn generation(&self) -> u64 {
        0
    }
}
