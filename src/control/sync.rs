//! Keeps the key table in step with the store (control plane → data plane).
//!
//! At start the whole table is loaded; then only the rows whose revision is past the table's:
//! at once when the store announces a change (PostgreSQL's `NOTIFY`), and every
//! `store.sync_interval` in any case, the fallback for an announcement that was lost. Each changed key is one O(1) upsert or removal, so a change to
//! one key of a million rebuilds nothing. A row that cannot be read is logged, counted and
//! skipped; the rest still apply.
//!
//! The same reads bring the changed customers (they share the store's revision), whose limits
//! go into the hot path's customer map beside the table ([`crate::proxy::customers`]); the
//! customers are also read whole once the store first answers, since those a table started
//! from the snapshot holds may be older than the store's.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use self::customers::customer_change;

use super::snapshot::journal::{Change, Journal};
use super::store::{Changes, KeyStore, StoreError, StoredKey};
use crate::core::clock::Clock;
use crate::core::key::StoredStatus;
use crate::core::permission::{Permission, PermissionSet};
use crate::proxy::customers::CustomerMap;
use crate::proxy::state::SyncStatus;
use crate::proxy::table::{AuthKey, Extras, KeyTable, PreviousSecret, NEVER};
use crate::telemetry::Metrics;

mod customers;
mod saving;

/// Rows a batch: bounds the memory a full load needs beside the table itself (PostgreSQL reads
/// them through one cursor, a batch a fetch; SQLite one query a batch).
const BATCH: usize = 10_000;
/// Waits between attempts of the first load.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct KeySync {
    store: Arc<dyn KeyStore>,
    table: Arc<KeyTable>,
    /// The customers' limits, beside the table: the same change reads fill both.
    customers: Arc<CustomerMap>,
    /// Whether every customer has been read whole ([`KeySync::load_customers`]).
    customers_loaded: AtomicBool,
    status: Arc<SyncStatus>,
    metrics: Metrics,
    clock: Clock,
    /// Keys mostly share a few permission sets; each distinct set is kept once.
    interned: Mutex<HashMap<Vec<Permission>, Arc<PermissionSet>>>,
    /// Held through a sync: the periodic one and those the admin API runs after a change take
    /// turns, so an older read of a key never lands after a newer one.
    running: Mutex<()>,
    /// The store file was replaced: the next sync loads the whole table again.
    reload_pending: AtomicBool,
    /// The store's [`KeyStore::generation`] the table reflects.
    generation: AtomicU64,
    /// `store.snapshot`: where the table is saved, and how often at most it is written whole.
    snapshot: Option<(PathBuf, Duration)>,
    /// The snapshot's journal; locked inside `running` by whoever holds the sync's turn.
    journal: Mutex<Option<Journal>>,
    /// When the snapshot was last written whole.
    saved: Mutex<Option<std::time::Instant>>,
    /// A whole write runs (in the background, without the sync's turn).
    writing: Arc<AtomicBool>,
    /// The revision the table has applied, for the replica's heartbeat to report at once.
    applied: watch::Sender<u64>,
}

impl KeySync {
    pub fn new(
        store: Arc<dyn KeyStore>,
        table: Arc<KeyTable>,
        status: Arc<SyncStatus>,
        metrics: Metrics,
        clock: Clock,
    ) -> Self {
        KeySync {
            store,
            table,
            customers: Arc::default(),
            customers_loaded: AtomicBool::new(false),
            status,
            metrics,
            clock,
            interned: Mutex::default(),
            running: Mutex::default(),
            reload_pending: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            snapshot: None,
            journal: Mutex::default(),
            saved: Mutex::default(),
            writing: Arc::default(),
            applied: watch::channel(0).0,
        }
    }

    /// Fills `customers` (the hot path's) with the customers' limits.
    pub fn with_customers(self, customers: Arc<CustomerMap>) -> Self {
        KeySync { customers, ..self }
    }

    /// The revision the key table has applied, as each sync (or a start from the snapshot)
    /// moves it.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Saves the table to `path` after changes, at most every `every`; starts from it when the
    /// store cannot be read at start ([`super::snapshot`]).
    pub fn with_snapshot(self, path: Option<PathBuf>, every: Duration) -> Self {
        KeySync {
            journal: Mutex::new(path.as_deref().map(Journal::new)),
            snapshot: path.map(|path| (path, every)),
            ..self
        }
    }

    /// Pulls and applies the changes since the table's revision. Blocking: call it from a
    /// blocking thread.
    ///
    /// First it checks that the store's path still names the file it has open: a file renamed
    /// over it is another store, whose revisions say nothing about this table's, so it is
    /// reopened and the whole table reloaded from it. A path that names nothing any more is a
    /// failed sync: the table keeps serving what it has.
    ///
    /// With `store.snapshot`, what the table takes is saved first: the first load is written
    /// whole before the gateway is ready, and each later change set is journaled before it is
    /// applied, so the saved table is never older than the one enforced.
    pub fn sync_once(&self) -> Result<usize, StoreError> {
        let _turn = self.running.lock().unwrap_or_else(|p| p.into_inner());
        // The first load fills an empty table the proxy does not use yet: nothing to journal,
        // it is written whole below.
        let first = !self.status.is_loaded();
        if first {
            self.size_table();
        }
        let result = self.check_file().and_then(|()| {
            if self.reload_pending.load(Ordering::Acquire) {
                self.reload()
            } else {
                self.pull(self.table.revision(), |_| {}, !first)
            }
            .and_then(|applied| self.load_customers(!first).map(|()| applied))
        });
        let applied = result.inspect_err(|error| {
            self.metrics.store_sync_errors.inc();
            self.status.record_failure(error.to_string());
        })?;
        let now_ms = self.clock.now().as_millisecond();
        if first {
            self.write_whole(now_ms);
        } else {
            self.with_journal(|journal, every| journal.mark(now_ms, every.as_millis() as i64));
        }
        self.status.record_success(now_ms);
        self.metrics.key_table_last_sync.set(now_ms as f64 / 1000.0);
        let revision = self.table.revision();
        self.applied
            .send_if_modified(|applied| std::mem::replace(applied, revision) != revision);
        Ok(applied)
    }

    /// Makes room in the table for the keys the store holds beyond those it has, before the
    /// first load: its indexes are allocated once, not doubled step by step under the load.
    /// A count that fails changes nothing (the load reports the store's error).
    fn size_table(&self) {
        match self.store.live_keys() {
            Ok(keys) => {
                let missing = usize::try_from(keys)
                    .unwrap_or(usize::MAX)
                    .saturating_sub(self.table.len());
                self.table.reserve(missing);
            }
            Err(error) => tracing::debug!(%error, "cannot count the store's keys to size the table"),
        }
    }

    /// Notices a replaced store file, whichever operation reopened it (this check, or a write
    /// through the admin API in between), and schedules the whole table's reload.
    fn check_file(&self) -> Result<(), StoreError> {
        self.store.reopen_if_replaced()?;
        let generation = self.store.generation();
        let seen = self.generation.swap(generation, Ordering::AcqRel);
        if generation != seen {
            self.metrics
                .store_reopened
                .inc_by(generation.saturating_sub(seen));
            tracing::error!(
                "the store file was replaced under the running gateway; reopened it, reloading the whole key table"
            );
            self.reload_pending.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Applies every change after `revision`, batch by batch, showing each changed key's seq
    /// to `seen`, journaling each batch first when `journal`; how many.
    fn pull(
        &self,
        revision: u64,
        mut seen: impl FnMut(u64) + Send,
        journal: bool,
    ) -> Result<usize, StoreError> {
        let mut applied = 0;
        self.store.stream_changes(revision, BATCH, &mut |changes| {
            changes.keys.iter().for_each(|key| seen(key.seq));
            applied += self.apply(changes, journal);
        })?;
        Ok(applied)
    }

    /// Loads the whole store again, then drops the keys the table holds that it does not.
    fn reload(&self) -> Result<usize, StoreError> {
        let mut seen = HashSet::new();
        let applied = self.pull(
            0,
            |seq| {
                seen.insert(seq);
            },
            true,
        )?;
        let mut gone = Vec::new();
        self.table.for_each(|key| {
            if !seen.contains(&key.seq) {
                gone.push(key.seq);
            }
        });
        if !gone.is_empty() {
            let (revision, now_ms) = (self.table.revision(), self.clock.now().as_millisecond());
            let change = Change {
                del: &gone,
                ..Change::default()
            };
            self.with_journal(|journal, _| journal.record(&change, revision, now_ms));
        }
        for seq in &gone {
            self.table.remove(*seq);
        }
        self.customers_loaded.store(false, Ordering::Release);
        self.reload_pending.store(false, Ordering::Release);
        tracing::info!(
            keys = self.table.len(),
            dropped = gone.len(),
            "key table reloaded"
        );
        Ok(applied + gone.len())
    }

    /// Applies one batch of changes, journaled first when `journal` (and a snapshot is kept).
    fn apply(&self, changes: Changes, journal: bool) -> usize {
        for why in &changes.bad_rows {
            self.metrics.store_sync_errors.inc();
            tracing::error!(error = %why, "skipping a row the store holds in a form keygate cannot read");
        }
        let applied = changes.keys.len() + changes.customers.len();
        let keys: Vec<(&StoredKey, Option<AuthKey>)> =
            changes.keys.iter().map(|key| (key, self.auth_key(key))).collect();
        if journal && applied > 0 {
            let put: Vec<&AuthKey> = keys.iter().filter_map(|(_, auth)| auth.as_ref()).collect();
            let del: Vec<u64> = keys
                .iter()
                .filter(|(_, auth)| auth.is_none())
                .map(|(key, _)| key.seq)
                .collect();
            let customers = customer_change(&changes.customers);
            let change = Change {
                put: &put,
                del: &del,
                customers: &customers,
            };
            let now_ms = self.clock.now().as_millisecond();
            self.with_journal(|journal, _| journal.record(&change, changes.revision, now_ms));
        }
        self.apply_customers(&changes.customers);
        for (key, auth) in keys {
            match auth {
                Some(auth) => {
                    let upserted = self.table.upsert(auth);
                    if upserted.contested > 0 {
                        self.metrics.key_hash_conflicts.inc_by(upserted.contested as u64);
                        tracing::error!(
                            key_id = %key.id,
                            "a secret of this key is another key's too; neither key is admitted with it"
                        );
                    }
                }
                None => self.table.remove(key.seq),
            }
        }
        self.table.set_revision(changes.revision);
        self.metrics.key_table_revision.set(changes.revision as i64);
        applied
    }

    /// The hot path's view of a stored key; `None` for a deleted one.
    fn auth_key(&self, key: &StoredKey) -> Option<AuthKey> {
        if key.status == StoredStatus::Deleted {
            return None;
        }
        let previous = match (key.previous_hash, key.grace_until) {
            (Some(hash), Some(until)) => Some(PreviousSecret {
                hash: hash.into(),
                until: until.as_second(),
            }),
            _ => None,
        };
        let extras = Extras {
            rate_limit: key.spec.rate_limit,
            allowed_ips: key.spec.allowed_ips.clone().into_boxed_slice(),
            previous,
            quota: key.spec.quota,
        };
        Some(AuthKey {
            seq: key.seq,
            id: key.id.as_str().into(),
            hash: key.hash.into(),
            environment: key.spec.environment,
            revoked: key.status == StoredStatus::Revoked,
            expires_at: key.spec.expires_at.map_or(NEVER, |at| at.as_second()),
            permissions: self.intern(&key.spec.permissions),
            customer_id: key.spec.customer_id.as_deref().map(Into::into),
            extras: extras.shared(),
        })
    }

    fn intern(&self, permissions: &[Permission]) -> Arc<PermissionSet> {
        let mut interned = self.interned.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(set) = interned.get(permissions) {
            return set.clone();
        }
        let set = Arc::new(PermissionSet::new(permissions.to_vec()));
        interned.insert(permissions.to_vec(), set.clone());
        set
    }

    /// Loads the table (see [`KeySync::load`]), then syncs on each change the store announces
    /// and every `interval`, until the task is dropped. Failures are logged and counted; the
    /// table keeps serving what it has.
    pub async fn run(self: Arc<Self>, interval: Duration, loaded: watch::Sender<bool>) {
        // Subscribed before the load, so a change committed during it still wakes the sync.
        let mut announced = self.store.change_feed();
        self.load(&loaded).await;
        let _ = loaded.send(true);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate, and the table has just been loaded (and saved).
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                Some(()) = changed(&mut announced) => {}
            }
            let (sync, started) = (self.clone(), std::time::Instant::now());
            match tokio::task::spawn_blocking(move || sync.sync_once()).await {
                Ok(Ok(0)) => {}
                Ok(Ok(applied)) => tracing::info!(
                    applied,
                    revision = self.table.revision(),
                    elapsed_ms = crate::telemetry::logs::millis(started.elapsed()),
                    "key changes synced"
                ),
                Ok(Err(error)) => tracing::warn!(%error, "key sync failed; serving the last table"),
                Err(panic) => tracing::error!(%panic, "key sync task failed"),
            }
            self.save_snapshot().await;
        }
    }

    /// The first load, tried until the store answers: a store locked or unreachable at start
    /// delays readiness, it does not stop the gateway. Waits 100 ms after the first failure,
    /// doubling up to 5 s.
    async fn load(self: &Arc<Self>, loaded: &watch::Sender<bool>) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let started = std::time::Instant::now();
            let sync = self.clone();
            match tokio::task::spawn_blocking(move || sync.sync_once()).await {
                Ok(Ok(_)) => {
                    let (keys, revision) = (self.table.len(), self.table.revision());
                    tracing::info!(
                        keys,
                        revision,
                        elapsed_ms = crate::telemetry::logs::millis(started.elapsed()),
                        "key table loaded"
                    );
                    return;
                }
                Ok(Err(error)) => tracing::error!(
                    %error,
                    retry_in_s = backoff.as_secs_f64(),
                    "cannot load the key table; not ready until it loads"
                ),
                Err(panic) => tracing::error!(%panic, "key table load task failed"),
            }
            self.start_from_snapshot(loaded).await;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// The next announcement of a change; `None` when the store announces none (or stopped),
/// which leaves the ticker alone to wake the sync.
async fn changed(feed: &mut Option<tokio::sync::watch::Receiver<u64>>) -> Option<()> {
    match feed {
        Some(receiver) => match receiver.changed().await {
            Ok(()) => Some(()),
            Err(_) => {
                *feed = None;
                None
            }
        },
        None => None,
    }
}

#[cfg(test)]
mod tests;
