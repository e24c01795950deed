//! This replica in the fleet (control plane, SPEC 12): it records itself in the store with a
//! heartbeat, and reads the others' rows for `GET /v1/replicas`, the receipts of `?wait=applied`
//! ([`receipt`]) and the fleet's recent requests ([`gather`], asked with a [`credential`]).
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

pub mod credential;
pub mod fleet;
pub mod gather;
pub mod receipt;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::watch;

use crate::config::{config_digest, Advertise, Config};
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
    /// `admin.advertise_env`'s value, read at start ([`advertise_from_env`]).
    advertise_from_env: Option<Advertise>,
    /// The receipts' fallback poll in milliseconds when set ([`Replica::set_receipt_poll`]);
    /// 0: the store's default.
    receipt_poll_ms: AtomicU64,
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
            advertise_from_env: None,
            receipt_poll_ms: AtomicU64::new(0),
        }
    }

    /// Replaces the receipts' fallback poll: tests set it to hours, to prove that a receipt
    /// completes on the replicas' announcements alone.
    #[doc(hidden)]
    pub fn set_receipt_poll(&self, every: Duration) {
        let ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1);
        self.receipt_poll_ms.store(ms, Ordering::Relaxed);
    }

    /// The receipts' fallback poll, when a test replaced it.
    pub fn receipt_poll(&self) -> Option<Duration> {
        match self.receipt_poll_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Advertises `from_env` (`admin.advertise_env`'s value) while the config names a variable.
    pub fn advertising(mut self, from_env: Option<Advertise>) -> Replica {
        self.advertise_from_env = from_env;
        self
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
            advertise: self.advertised(),
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

    /// Where the other replicas reach this admin listener, as its row says; `None` when it
    /// advertises nothing (then no fleet credential is for it).
    pub fn advertised(&self) -> Option<String> {
        let config = &self.shared.snapshot.load().config;
        let from_env = config
            .admin
            .advertise_env
            .as_ref()
            .and(self.advertise_from_env.as_ref());
        let advertise = config.admin.advertise.as_ref().or(from_env);
        advertise.map(|a| a.url(self.admin_port))
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
    ///
    /// What a receipt waits for is an *announced* row: one written with the revision and
    /// announced, which wakes the waiting replica. So the loop remembers the revision it last
    /// announced, not the one it last wrote: a regular heartbeat that happened to write the
    /// wanted revision just before the receipt's announcement arrived wakes nobody, and the
    /// row is written again, announced ([`Owed`]).
    pub async fn run(self: Arc<Self>) {
        let feed = self.store.fleet_feed();
        let mut wanted = feed.map(|feed| feed.wanted);
        let mut applied = self.applied.clone();
        let mut ticker = tokio::time::interval(HEARTBEAT);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut owed = Owed::default();
        loop {
            let prompt = tokio::select! {
                _ = ticker.tick() => false,
                Ok(()) = applied.changed() => true,
                Some(()) = changed(&mut wanted) => true,
            };
            let revision = self.shared.keys.revision();
            let loaded = self.shared.sync.is_loaded();
            let want = wanted.as_ref().map_or(revision, |wanted| *wanted.borrow());
            let early = owed.early(want, revision, loaded);
            if prompt && !early {
                continue;
            }
            if prompt {
                ticker.reset();
            }
            let (replica, started) = (self.clone(), std::time::Instant::now());
            match tokio::task::spawn_blocking(move || replica.beat(early)).await {
                Ok(Ok(())) => {
                    owed.written(early, revision, loaded);
                    if early {
                        let beat_ms = crate::telemetry::logs::millis(started.elapsed());
                        tracing::debug!(
                            revision,
                            want,
                            beat_ms,
                            "replica heartbeat written early for a receipt"
                        );
                    }
                }
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

/// `admin.advertise_env`'s value, as `serve` reads it at start: a variable the config names
/// but the environment does not set, or sets to what is not an address, stops the start (the
/// replica would otherwise run unasked, its records silently missing from the fleet's).
pub fn advertise_from_env(config: &Config) -> anyhow::Result<Option<Advertise>> {
    let Some(name) = &config.admin.advertise_env else {
        return Ok(None);
    };
    let value = std::env::var(name).ok().filter(|value| !value.trim().is_empty());
    let Some(value) = value else {
        anyhow::bail!("admin.advertise_env names {name}, but that environment variable is not set");
    };
    Advertise::from_env_value(&value)
        .map(Some)
        .map_err(|error| anyhow::anyhow!("admin.advertise_env: {name}={value:?}: {error}"))
}

/// What this replica owes the receipts waited for (pure, for the heartbeat loop): the highest
/// revision it has announced, and whether it has announced its first load.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Owed {
    announced: u64,
    announced_loaded: bool,
}

impl Owed {
    /// Whether the row must be written and announced now: a receipt waits for `want`, which
    /// this replica has applied (`revision`) and not announced; or its table just loaded,
    /// which counts it in receipts.
    fn early(&self, want: u64, revision: u64, loaded: bool) -> bool {
        (want > self.announced && revision >= want) || (loaded && !self.announced_loaded)
    }

    /// A row was written with `revision`; `announced` when it was announced.
    fn written(&mut self, announced: bool, revision: u64, loaded: bool) {
        if announced {
            self.announced = self.announced.max(revision);
            self.announced_loaded |= loaded;
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

#[cfg(test)]
mod tests {
    use super::Owed;

    #[test]
    fn a_wanted_revision_is_announced_even_when_a_regular_heartbeat_wrote_it_first() {
        let mut owed = Owed::default();
        assert!(owed.early(0, 0, true), "the first load is announced");
        owed.written(true, 4, true);
        assert!(!owed.early(4, 4, true), "nothing owed");
        // The regular heartbeat writes revision 5 before the receipt for 5 is announced.
        owed.written(false, 5, true);
        assert!(owed.early(5, 5, true), "the receipt still needs an announced row");
        owed.written(true, 5, true);
        assert!(!owed.early(5, 5, true));
        assert!(
            !owed.early(6, 5, true),
            "not applied yet: the sync's own wake-up comes"
        );
        assert!(owed.early(6, 6, true));
    }

    #[test]
    fn without_a_feed_every_applied_revision_is_announced_once() {
        // SQLite: the revision wanted is the one applied.
        let mut owed = Owed::default();
        owed.written(true, 3, true);
        assert!(owed.early(4, 4, true));
        owed.written(true, 4, true);
        assert!(!owed.early(4, 4, true));
    }
}
