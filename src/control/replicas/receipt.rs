//! Receipts (SPEC 12): after a change, wait until every live replica reports the change's
//! revision in its row, and say which did, in how long, and which did not.
//!
//! The replicas that count are those live when the wait starts and serving a table (loaded,
//! from the store or a snapshot); one that starts later loads the change with its table. A
//! replica whose row goes away during the wait (it stopped cleanly, or its heartbeat stopped
//! for three intervals) is named in `gone`, not counted as having applied the change.
//! The waiting replica is in the receipt at 0 ms: it applied the change before answering.
//!
//! The rows are read again whenever a replica announces an early heartbeat (PostgreSQL), and
//! every [`POLL`] in any case (every [`POLL_UNPUSHED`] where the store pushes nothing).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::Replica;
use crate::control::store::{ReplicaRow, StoreError};
use crate::telemetry::logs::millis;

/// The longest wait a caller may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// The wait of `?wait=applied` without `Prefer: wait=N`.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);
/// How often the rows are read again where the store announces early heartbeats.
const POLL: Duration = Duration::from_millis(100);
/// How often where it does not (SQLite: a local read).
const POLL_UNPUSHED: Duration = Duration::from_millis(5);

/// What a change's receipt says.
#[derive(Debug, Serialize)]
pub struct Receipt {
    /// The store revision the change made (or a later one).
    pub revision: u64,
    /// Replicas that count: live and serving when the wait started.
    pub replicas: usize,
    pub applied: Vec<Applied>,
    pub behind: Vec<Behind>,
    /// Replicas whose row went away during the wait.
    pub gone: Vec<String>,
    /// How long the wait took, in milliseconds.
    pub waited_ms: f64,
    /// In words: "applied on 3 of 3 replicas in 14 ms".
    pub summary: String,
}

#[derive(Debug, Serialize)]
pub struct Applied {
    pub replica: String,
    pub host: String,
    /// From the change's answer on this replica to the row that reported it, in milliseconds.
    pub ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Behind {
    pub replica: String,
    pub host: String,
    /// The revision it last reported.
    pub revision: u64,
}

impl Receipt {
    /// Whether every replica that counts reported the revision.
    pub fn complete(&self) -> bool {
        self.behind.is_empty()
    }
}

/// Waits up to `within` for every live replica to report `revision`. Errors only when the
/// rows cannot be read at the start; a failure later ends the wait with what it has.
pub async fn wait(replica: &Replica, revision: u64, within: Duration) -> Result<Receipt, StoreError> {
    let started = Instant::now();
    // Subscribed before the receipt is announced: a replica's report that arrives while the
    // first rows are read must still wake the wait.
    let feed = replica.store().fleet_feed();
    let store = replica.store().clone();
    let live_since = replica.live_since();
    let rows = tokio::task::spawn_blocking(move || {
        if let Err(error) = store.want_receipt(revision) {
            tracing::warn!(%error, "cannot announce the receipt waited for; replicas report at their next heartbeat");
        }
        store.replicas(live_since)
    })
    .await
    .map_err(|e| StoreError::Unavailable(format!("receipt task failed: {e}")))??;
    let announced = started.elapsed();
    let mut wait = Wait::new(replica, revision, &rows);
    let poll = replica
        .receipt_poll()
        .unwrap_or(if feed.is_some() { POLL } else { POLL_UNPUSHED });
    let mut reported = feed.map(|feed| feed.reported);
    let deadline = started + within;
    let mut reads = Reads::default();
    while !wait.pending.is_empty() {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            _ = tokio::time::sleep(poll) => reads.polled += 1,
            Some(()) = next(&mut reported) => reads.announced += 1,
        }
        let store = replica.store().clone();
        let live_since = replica.live_since();
        match tokio::task::spawn_blocking(move || store.replicas(live_since)).await {
            Ok(Ok(rows)) => wait.saw(&rows, started.elapsed()),
            Ok(Err(error)) => {
                tracing::warn!(%error, "receipt: cannot read the replicas; answering with what is known");
                break;
            }
            Err(panic) => {
                tracing::error!(%panic, "receipt task failed");
                break;
            }
        }
    }
    tracing::debug!(
        revision,
        after_announcements = reads.announced,
        after_polls = reads.polled,
        pending = wait.pending.len(),
        announce_ms = millis(announced),
        waited_ms = millis(started.elapsed()),
        "receipt: rows read again"
    );
    Ok(wait.receipt(started.elapsed()))
}

/// Why the rows were read again during a wait: a replica's announcement, or the poll. A
/// receipt answered on PostgreSQL within the poll owes nothing to it.
#[derive(Debug, Default)]
struct Reads {
    announced: u32,
    polled: u32,
}

/// A wait in progress: who has reported the revision, who has not yet.
struct Wait {
    revision: u64,
    replicas: usize,
    applied: Vec<Applied>,
    /// Replicas yet to report, by id: their host and last revision.
    pending: BTreeMap<String, (String, u64)>,
    gone: Vec<String>,
}

impl Wait {
    fn new(replica: &Replica, revision: u64, rows: &[ReplicaRow]) -> Wait {
        let counted: Vec<&ReplicaRow> = rows.iter().filter(|row| row.synced_at.is_some()).collect();
        let own = replica.row();
        let mut wait = Wait {
            revision,
            replicas: counted.len() + usize::from(!counted.iter().any(|row| row.id == own.id)),
            applied: Vec::new(),
            pending: BTreeMap::new(),
            gone: Vec::new(),
        };
        for row in counted.into_iter().filter(|row| row.id != own.id) {
            wait.pending
                .insert(row.id.clone(), (row.host.clone(), row.revision));
        }
        // This replica's table took the change before the answer: its row may not say so yet.
        wait.applied.push(Applied {
            replica: own.id,
            host: own.host,
            ms: 0.0,
        });
        wait.saw(rows, Duration::ZERO);
        wait
    }

    /// Takes the rows read `elapsed` after the change.
    fn saw(&mut self, rows: &[ReplicaRow], elapsed: Duration) {
        let ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3;
        let ids: Vec<String> = self.pending.keys().cloned().collect();
        for id in ids {
            match rows.iter().find(|row| row.id == id) {
                Some(row) if row.revision >= self.revision => {
                    self.pending.remove(&id);
                    self.applied.push(Applied {
                        replica: id,
                        host: row.host.clone(),
                        ms,
                    });
                }
                Some(row) => {
                    if let Some(pending) = self.pending.get_mut(&id) {
                        pending.1 = row.revision;
                    }
                }
                None => {
                    self.pending.remove(&id);
                    self.gone.push(id);
                }
            }
        }
    }

    fn receipt(self, elapsed: Duration) -> Receipt {
        let waited_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3;
        let behind: Vec<Behind> = self
            .pending
            .into_iter()
            .map(|(replica, (host, revision))| Behind {
                replica,
                host,
                revision,
            })
            .collect();
        let summary = summary(self.applied.len(), self.replicas, &behind, waited_ms);
        Receipt {
            revision: self.revision,
            replicas: self.replicas,
            applied: self.applied,
            behind,
            gone: self.gone,
            waited_ms,
            summary,
        }
    }
}

fn summary(applied: usize, replicas: usize, behind: &[Behind], waited_ms: f64) -> String {
    let plural = if replicas == 1 { "replica" } else { "replicas" };
    let head = format!("applied on {applied} of {replicas} {plural} in {waited_ms:.0} ms");
    match behind.len() {
        0 => head,
        n => format!("{head}; {n} still behind"),
    }
}

/// The next announcement; `None` when nothing announces (or stopped).
async fn next(watched: &mut Option<tokio::sync::watch::Receiver<u64>>) -> Option<()> {
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
