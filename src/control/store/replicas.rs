//! The replicas' rows in the store (SPEC 12), shared by both backends: what each gateway says
//! of itself in its heartbeat, and how the fleet signals a receipt it waits for.
//!
//! Every gateway on a store writes one row, its own, once a second ([`super::KeyStore::heartbeat`]),
//! and removes it when it stops cleanly. A row whose heartbeat is older than three intervals is
//! dropped by the next heartbeat of any replica. Gateways sharing one SQLite file share the rows,
//! as replicas on one PostgreSQL do.

use jiff::Timestamp;
use serde::Serialize;
use tokio::sync::watch;

/// One replica as it last reported itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicaRow {
    /// Made at the gateway's start, kept until it stops: `rep_` and 16 hex digits.
    pub id: String,
    /// The machine's host name, as the replica read it at start.
    pub host: String,
    /// keygate's version.
    pub version: String,
    /// `admin.advertise` as a URL (`http://host:port`), where other replicas reach its admin
    /// API; `None`: it cannot be asked for its records.
    pub advertise: Option<String>,
    /// BLAKE3 of the effective config, secrets and per-replica addresses left out.
    pub config_digest: String,
    /// The key-table revision the replica has applied.
    pub revision: u64,
    /// When the replica's key table last synced with the store (`None`: never yet).
    pub synced_at: Option<Timestamp>,
    /// `local`, `redis`, or `redis-fallback` (Redis configured, but not answering).
    pub limiter: String,
    pub started_at: Timestamp,
    /// When the replica last wrote this row.
    pub heartbeat_at: Timestamp,
}

/// Wake-ups between replicas where the store pushes them (PostgreSQL's `NOTIFY`).
#[derive(Debug, Clone)]
pub struct FleetFeed {
    /// The highest revision some replica waits for a receipt of ([`super::KeyStore::want_receipt`]).
    pub wanted: watch::Receiver<u64>,
    /// Bumped on each heartbeat written with `announce`: a waiting receipt reads the rows again.
    pub reported: watch::Receiver<u64>,
}

/// Both ends of a [`FleetFeed`], for a store that pushes.
#[derive(Debug, Clone)]
pub struct FleetSignals {
    pub wanted: watch::Sender<u64>,
    pub reported: watch::Sender<u64>,
}

impl Default for FleetSignals {
    fn default() -> Self {
        FleetSignals {
            wanted: watch::channel(0).0,
            reported: watch::channel(0).0,
        }
    }
}

impl FleetSignals {
    pub fn feed(&self) -> FleetFeed {
        FleetFeed {
            wanted: self.wanted.subscribe(),
            reported: self.reported.subscribe(),
        }
    }

    /// A receipt for `revision` is wanted somewhere.
    pub fn want(&self, revision: u64) {
        self.wanted.send_if_modified(|wanted| {
            let more = revision > *wanted;
            *wanted = (*wanted).max(revision);
            more
        });
    }

    /// Some replica wrote its row to answer a receipt.
    pub fn reported(&self) {
        self.reported.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Takes a notification's payload that is the fleet's: true when it was (a change's
    /// revision is not).
    pub fn take(&self, payload: &str) -> bool {
        if payload == REPORTED {
            self.reported();
            return true;
        }
        match payload.strip_prefix(RECEIPT_PREFIX) {
            Some(revision) => {
                if let Ok(revision) = revision.parse() {
                    self.want(revision);
                }
                true
            }
            None => false,
        }
    }
}

/// The notification payloads the fleet sends on the store's channel beside change revisions.
pub const RECEIPT_PREFIX: &str = "receipt:";
pub const REPORTED: &str = "replica";

/// The `replicas` table's columns, in the order both backends write and read them.
pub const COLUMNS: &str = "id, host, version, advertise, config_digest, revision, synced_at_ms, limiter, \
                           started_at_ms, heartbeat_at_ms";

/// A row's cells as both backends read them; [`Cells::decode`] makes the row.
pub struct Cells {
    pub id: String,
    pub host: String,
    pub version: String,
    pub advertise: Option<String>,
    pub config_digest: String,
    pub revision: i64,
    pub synced_at_ms: Option<i64>,
    pub limiter: String,
    pub started_at_ms: i64,
    pub heartbeat_at_ms: i64,
}

impl Cells {
    pub fn decode(self) -> Result<ReplicaRow, super::StoreError> {
        let at = |ms: i64| {
            Timestamp::from_millisecond(ms)
                .map_err(|e| super::StoreError::Corrupt(format!("replica {}: bad time {ms}: {e}", self.id)))
        };
        Ok(ReplicaRow {
            synced_at: self.synced_at_ms.map(at).transpose()?,
            started_at: at(self.started_at_ms)?,
            heartbeat_at: at(self.heartbeat_at_ms)?,
            revision: u64::try_from(self.revision).unwrap_or(0),
            id: self.id,
            host: self.host,
            version: self.version,
            advertise: self.advertise,
            config_digest: self.config_digest,
            limiter: self.limiter,
        })
    }
}
