//! The fleet as its rows show it (pure): which replicas lag, and which run a config or a
//! version that differs from the others'. `GET /v1/replicas` answers it; the heartbeat sets
//! `keygate_fleet_replicas{state}` and `keygate_fleet_config_mismatch` from it.
//!
//! - **Differs**: the fleet's config digest (and version) is the one most live replicas run
//!   (ties: the smallest, so every replica names the same one); a replica running another is
//!   flagged.
//! - **Lagging**: a replica's revision is below one that another live replica reported at
//!   least [`LAG_TOLERANCE`] before this replica's own last heartbeat: it had that long to
//!   apply the change and had not. A change reaches every replica in milliseconds, so the
//!   tolerance only absorbs the heartbeats' spacing.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use crate::control::store::ReplicaRow;
use crate::telemetry::Metrics;

/// How long after another replica reported a revision this one may still be without it.
pub const LAG_TOLERANCE: Duration = Duration::from_millis(500);

/// The live replicas, each with what is flagged about it.
#[derive(Debug, Serialize)]
pub struct Fleet {
    /// The config digest most replicas run.
    pub config_digest: Option<String>,
    /// The version most replicas run.
    pub version: Option<String>,
    /// The highest revision a live replica reported.
    pub revision: u64,
    pub replicas: Vec<Listed>,
}

/// One replica in the listing.
#[derive(Debug, Serialize)]
pub struct Listed {
    #[serde(flatten)]
    pub row: ReplicaRow,
    /// The replica answering this listing.
    #[serde(rename = "self")]
    pub this: bool,
    /// Its key table's age at its last heartbeat, in seconds; `None` before its first load.
    pub table_age_seconds: Option<f64>,
    pub config_differs: bool,
    pub version_differs: bool,
    pub lagging: bool,
}

impl Fleet {
    /// The fleet of `rows` (the live ones), seen from replica `this`.
    pub fn new(rows: &[ReplicaRow], this: &str) -> Fleet {
        let config_digest = most_common(rows.iter().map(|row| row.config_digest.as_str()));
        let version = most_common(rows.iter().map(|row| row.version.as_str()));
        let replicas = rows
            .iter()
            .map(|row| Listed {
                this: row.id == this,
                table_age_seconds: row.synced_at.map(|at| age(at, row.heartbeat_at)),
                config_differs: config_digest.as_deref() != Some(row.config_digest.as_str()),
                version_differs: version.as_deref() != Some(row.version.as_str()),
                lagging: lagging(row, rows),
                row: row.clone(),
            })
            .collect();
        Fleet {
            config_digest,
            version,
            revision: rows.iter().map(|row| row.revision).max().unwrap_or(0),
            replicas,
        }
    }

    /// Sets the fleet gauges: replicas by state (`current`, `lagging`), and how many run a
    /// config other than the fleet's.
    pub fn export(&self, metrics: &Metrics) {
        let lagging = self.replicas.iter().filter(|r| r.lagging).count() as i64;
        let total = self.replicas.len() as i64;
        metrics
            .fleet_replicas
            .with_label_values(&["current"])
            .set(total - lagging);
        metrics
            .fleet_replicas
            .with_label_values(&["lagging"])
            .set(lagging);
        let differ = self.replicas.iter().filter(|r| r.config_differs).count();
        metrics.fleet_config_mismatch.set(differ as i64);
    }
}

/// The value most items have; ties go to the smallest.
fn most_common<'a>(items: impl Iterator<Item = &'a str>) -> Option<String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for item in items {
        *counts.entry(item).or_default() += 1;
    }
    let best = counts.values().copied().max()?;
    counts
        .into_iter()
        .find(|(_, count)| *count == best)
        .map(|(item, _)| item.to_owned())
}

fn lagging(row: &ReplicaRow, rows: &[ReplicaRow]) -> bool {
    let Some(cutoff) = row.heartbeat_at.checked_sub(LAG_TOLERANCE).ok() else {
        return false;
    };
    rows.iter()
        .any(|other| other.revision > row.revision && other.heartbeat_at <= cutoff)
}

fn age(synced_at: Timestamp, at: Timestamp) -> f64 {
    let ms = at.as_millisecond() - synced_at.as_millisecond();
    ms.max(0) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, digest: &str, version: &str, revision: u64, heartbeat_ms: i64) -> ReplicaRow {
        let at = |ms: i64| Timestamp::from_millisecond(1_800_000_000_000 + ms).unwrap();
        ReplicaRow {
            id: id.into(),
            host: "h".into(),
            version: version.into(),
            advertise: None,
            config_digest: digest.into(),
            revision,
            synced_at: Some(at(heartbeat_ms - 2_000)),
            limiter: "local".into(),
            started_at: at(0),
            heartbeat_at: at(heartbeat_ms),
        }
    }

    fn flags(fleet: &Fleet) -> Vec<(bool, bool, bool)> {
        fleet
            .replicas
            .iter()
            .map(|r| (r.config_differs, r.version_differs, r.lagging))
            .collect()
    }

    #[test]
    fn the_odd_config_and_the_odd_version_are_flagged() {
        let rows = [
            row("a", "d1", "0.1.0", 5, 10_000),
            row("b", "d2", "0.1.0", 5, 10_000),
            row("c", "d1", "0.2.0", 5, 10_000),
        ];
        let fleet = Fleet::new(&rows, "a");
        assert_eq!(fleet.config_digest.as_deref(), Some("d1"));
        assert_eq!(
            flags(&fleet),
            [(false, false, false), (true, false, false), (false, true, false)]
        );
        assert!(fleet.replicas[0].this);
        assert_eq!(fleet.replicas[0].table_age_seconds, Some(2.0));
    }

    #[test]
    fn a_tie_names_the_smallest_digest_so_every_replica_agrees() {
        let rows = [row("a", "d2", "v", 1, 0), row("b", "d1", "v", 1, 0)];
        assert_eq!(Fleet::new(&rows, "a").config_digest.as_deref(), Some("d1"));
        assert_eq!(Fleet::new(&rows, "b").config_digest.as_deref(), Some("d1"));
    }

    #[test]
    fn a_replica_lags_only_once_it_had_the_tolerance_to_catch_up() {
        // b reported revision 9 at 10.0 s; a heartbeats at 10.2 s with 8: within tolerance.
        let fresh = [row("a", "d", "v", 8, 10_200), row("b", "d", "v", 9, 10_000)];
        assert!(!Fleet::new(&fresh, "a").replicas[0].lagging);
        // At 10.6 s a still reports 8: it lags.
        let stale = [row("a", "d", "v", 8, 10_600), row("b", "d", "v", 9, 10_000)];
        let fleet = Fleet::new(&stale, "a");
        assert!(fleet.replicas[0].lagging);
        assert!(!fleet.replicas[1].lagging);
        assert_eq!(fleet.revision, 9);
    }

    #[test]
    fn the_gauges_count_replicas_by_state_and_the_odd_configs() {
        let rows = [
            row("a", "d1", "v", 8, 10_600),
            row("b", "d1", "v", 9, 10_000),
            row("c", "d2", "v", 9, 10_000),
        ];
        let metrics = Metrics::new();
        Fleet::new(&rows, "a").export(&metrics);
        let gauge = |state: &str| metrics.fleet_replicas.with_label_values(&[state]).get();
        assert_eq!((gauge("current"), gauge("lagging")), (2, 1));
        assert_eq!(metrics.fleet_config_mismatch.get(), 1);
    }
}
