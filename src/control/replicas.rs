//! This replica in the fleet (control plane, SPEC 12): it records itself in the store with a
//! heartbeat, and reads the others' rows for `GET /v1/replicas`, the receipts of `?wait=applied`
//! ([`receipt`]) and the fleet's recent requests ([`gather`]).
//!
//! The heartbeat is one write a second: this replica's row (id, version, advertised admin
//! address, config digest, applied key-table revision, when the table last synced, limiter
//! mode), the rows of replicas silent for three intervals dropped, and the live rows read back
//! in the same transaction for the `keygate_fleet_*` gauges. A receipt cannot wait a second per
//! replica, so a replica also writes its row as soon as it applies a revision a receipt waits
//! for: where the store pushes (PostgreSQL), the waiting replica announces the revision and
//! only then do the others write early; where it does not (SQLite, one host), each replica
//! writes early after every sync that applied a change, which its poll already bounds.
//!
//! The id is made at start (`rep_` and 16 random hex digits) and kept until the process
//! stops: a restarted gateway is a new replica, and its old row is removed at its clean stop
//! or dropped three intervals after its last heartbeat.

pub mod fleet;
pub mod gather;
pub mod receipt;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::watch;

use crate::config::config_digest;
use crate::control::store::{KeyStore, ReplicaRow, StoreError};
use crate::proxy::state::Shared;

/// How often a replica writes its row.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A replica is live while its last heartbeat is this recent; older rows are dropped.
pub const LIVE_WITHIN: Duration = Duration::from_secs(3);

pub struct Replica {
    pub id: String,
    host: String,
    started_at: Timestamp,
    /// The port the admin listener bound, for an `admin.advertise` without one.
    admin_port: u16,
    shared: Arc<Shared>,
    store: Arc<dyn KeyStore>,
    /// The revision the key table has applied, moved by each sync.
    applied: watch::Receiver<u64>,
    /// The live rows as the last heartbeat read them.
    last: Mutex<Vec<ReplicaRow>>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Replica {
    pub fn new(
        shared: Arc<Shared>,
        store: Arc<dyn KeyStore>,
        applied: watch::Receiver<u64>,
        admin_port: u16,
    ) -> Replica {
        Replica {
            id: format!("rep_{:016x}", rand::random::<u64>()),
            host: host_name(),
            started_at: shared.clock.now(),
            admin_port,
            shared,
            store,
            applied,
            last: Mutex::default(),
        }
    }

    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The oldest heartbeat of a live replica, now.
    pub fn live_since(&self) -> Timestamp {
        live_since(self.shared.clock.now())
    }

    /// This replica's row as of now.
    pub fn row(&self) -> ReplicaRow {
        let shared = &self.shared;
        let config = shared.snapshot.load().config.clone();
        let loaded = shared.sync.is_loaded();
        let synced_ms = shared.sync.last_success_ms();
        ReplicaRow {
            id: self.id.clone(),
            host: self.host.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            advertise: config.admin.advertise.as_ref().map(|a| a.url(self.admin_port)),
            config_digest: config_digest(&config),
            revision: shared.keys.revision(),
            synced_at: loaded
                .then(|| Timestamp::from_millisecond(synced_ms).ok())
                .flatten(),
            limiter: self.limiter().to_owned(),
            started_at: self.started_at,
            heartbeat_at: shared.clock.now(),
        }
    }

    fn limiter(&self) -> &'static str {
        match &self.shared.shared_limits {
            None => "local",
            Some(limits) if limits.is_shared() => "redis",
            Some(_) => "redis-fallback",
        }
    }

    /// Writes the row once, reads the live rows back, and sets the fleet gauges from them.
    /// Blocking.
    pub fn beat(&self, announce: bool) -> Result<(), StoreError> {
        let row = self.row();
        let live = self
            .store
            .heartbeat(&row, live_since(row.heartbeat_at), announce)?;
        let view = fleet::Fleet::new(&live, &self.id);
        view.export(&self.shared.metrics);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = live;
        Ok(())
    }

    /// Writes the row every [`HEARTBEAT`], and at once when a receipt waits for the revision
    /// just applied (see the module doc), until the task is dropped. A failed write is logged;
    /// the next one tries again.
    pub async fn run(self: Arc<Self>) {
        let feed = self.store.fleet_feed();
        let mut wanted = feed.map(|feed| feed.wanted);
        let mut applied = self.applied.clone();
        let mut ticker = tokio::time::interval(HEARTBEAT);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut reported, mut reported_loaded) = (0, false);
        loop {
            let prompt = tokio::select! {
                _ = ticker.tick() => false,
                Ok(()) = applied.changed() => true,
                Some(()) = changed(&mut wanted) => true,
            };
            let revision = self.shared.keys.revision();
            let loaded = self.shared.sync.is_loaded();
            let want = wanted.as_ref().map_or(revision, |wanted| *wanted.borrow());
            // The first load counts the replica in receipts: reported at once too.
            let wanted_now = (want > reported && revision >= want) || (loaded && !reported_loaded);
            if prompt && !wanted_now {
                continue;
            }
            if prompt {
                ticker.reset();
            }
            let replica = self.clone();
            match tokio::task::spawn_blocking(move || replica.beat(prompt)).await {
                Ok(Ok(())) => (reported, reported_loaded) = (revision, loaded),
                Ok(Err(error)) => tracing::warn!(%error, "cannot write this replica's heartbeat"),
                Err(panic) => tracing::error!(%panic, "replica heartbeat task failed"),
            }
        }
    }

    /// Removes this replica's row: it stops cleanly. Blocking.
    pub fn leave(&self) {
        if let Err(error) = self.store.remove_replica(&self.id) {
            tracing::warn!(%error, "cannot remove this replica's row; it is dropped after three heartbeats");
        }
    }
}

/// The oldest heartbeat of a live replica at `now`.
pub fn live_since(now: Timestamp) -> Timestamp {
    now.checked_sub(LIVE_WITHIN).unwrap_or(now)
}

/// The next change of a watched value; `None` when nothing is watched (or the sender is
/// gone), which leaves the other branches to wake the loop.
async fn changed(watched: &mut Option<watch::Receiver<u64>>) -> Option<()> {
    match watched {
        Some(receiver) => match receiver.changed().await {
            Ok(()) => Some(()),
            Err(_) => {
                *watched = None;
                None
            }
        },
        None => None,
    }
}

/// The machine's host name, as Linux tells it; `unknown` elsewhere.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}
