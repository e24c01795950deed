//! Writes the hot path's per-key usage counters to the store in batches (control plane), so
//! `last_used_at`, daily counts and the hourly analytics rows cost no store write per request.
//! The analytics rows older than `usage.retention` are pruned here too, at most once an hour
//! by each replica (the delete is idempotent, so replicas need not agree on who does it), and
//! with them the quota counters of periods that ended longer than `usage.retention` ago.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

use super::store::{HourRow, KeyStore, UsageDelta};
use crate::core::clock::Clock;
use crate::proxy::analytics::{Analytics, HourCount, HOUR};
use crate::proxy::usage::{Drained, UsageCounters};
use crate::telemetry::Metrics;

pub struct UsageFlusher {
    store: Arc<dyn KeyStore>,
    counters: Arc<UsageCounters>,
    metrics: Metrics,
    /// The store's [`KeyStore::generation`] the counts were made under.
    generation: AtomicU64,
    clock: Clock,
    /// When the store last took every count made before it, in Unix microseconds;
    /// [`NEVER`] until then.
    flushed_at: AtomicI64,
    /// The hourly counts, and how long their rows are kept; `None`: not counted.
    analytics: Option<(Arc<Analytics>, Duration)>,
    /// The hour (Unix seconds of its start) old rows were last pruned in; [`NEVER`] until then.
    pruned_in: AtomicI64,
}

const NEVER: i64 = i64::MIN;

impl UsageFlusher {
    pub fn new(
        store: Arc<dyn KeyStore>,
        counters: Arc<UsageCounters>,
        metrics: Metrics,
        clock: Clock,
    ) -> Self {
        let generation = AtomicU64::new(store.generation());
        UsageFlusher {
            store,
            counters,
            metrics,
            generation,
            clock,
            flushed_at: AtomicI64::new(NEVER),
            analytics: None,
            pruned_in: AtomicI64::new(NEVER),
        }
    }

    /// Writes the hourly counts of `analytics` too, keeping their rows for `retention`.
    pub fn with_analytics(self, analytics: Arc<Analytics>, retention: Duration) -> Self {
        UsageFlusher {
            analytics: Some((analytics, retention)),
            ..self
        }
    }

    /// When this replica last wrote its counts (or found none to write), so a reader of the
    /// store's counts knows what they include; `None` before the first flush.
    pub fn flushed_at(&self) -> Option<Timestamp> {
        match self.flushed_at.load(Ordering::Acquire) {
            NEVER => None,
            micros => Timestamp::from_microsecond(micros).ok(),
        }
    }

    /// Writes what has been counted. On failure the counts go back, to be written next time.
    ///
    /// Counts are by key sequence number, which means something only within one store file:
    /// those made before the file was replaced are dropped, not credited to whichever key of
    /// the new file has the same number.
    pub fn flush(&self) {
        // Reopens a replaced file now, so the generation below is the one the write goes to.
        let _ = self.store.reopen_if_replaced();
        let generation = self.store.generation();
        let started = self.clock.now();
        let counted = self.counters.drain();
        let hours = self.drain_hours(started.as_second());
        if self.generation.swap(generation, Ordering::AcqRel) != generation {
            if !counted.is_empty() || !hours.is_empty() {
                tracing::warn!(
                    keys = counted.len(),
                    "key usage counted before the store file was replaced is dropped"
                );
            }
            return;
        }
        self.write(&counted, &hours, started);
        self.prune_if_due(started.as_second());
    }

    fn drain_hours(&self, now: i64) -> Vec<HourCount> {
        match &self.analytics {
            Some((analytics, _)) => analytics.drain(now),
            None => Vec::new(),
        }
    }

    /// Writes one flush's counts; on failure they go back, to be written next time.
    fn write(&self, counted: &[Drained], hours: &[HourCount], started: Timestamp) {
        if counted.is_empty() && hours.is_empty() {
            self.flushed(started);
            return;
        }
        let deltas: Vec<UsageDelta> = counted.iter().map(delta).collect();
        match self.store.record_usage_rows(&deltas, &rows(hours)) {
            Ok(()) => self.flushed(started),
            Err(error) => {
                self.metrics.usage_flush_errors.inc();
                self.counters.restore(counted);
                if let Some((analytics, _)) = &self.analytics {
                    analytics.restore(hours);
                }
                tracing::warn!(%error, "could not write key usage; will retry");
            }
        }
    }

    /// Deletes the analytics rows and the quota counters past retention, once in each hour
    /// (`now`, Unix seconds).
    fn prune_if_due(&self, now: i64) {
        let Some((_, retention)) = &self.analytics else {
            return;
        };
        let hour = now - now.rem_euclid(HOUR);
        if self.pruned_in.swap(hour, Ordering::AcqRel) == hour {
            return;
        }
        let before = hour - i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
        let pruned = self.store.prune_usage_rows(before).and_then(|rows| {
            let counters = self.store.prune_quota_counters(before)?;
            Ok((rows, counters))
        });
        match pruned {
            Ok((rows, counters)) => {
                tracing::debug!(
                    rows,
                    counters,
                    "usage rows and quota counters past retention pruned"
                );
            }
            Err(error) => {
                self.pruned_in.store(NEVER, Ordering::Release);
                tracing::warn!(%error, "could not prune usage rows past retention; will retry");
            }
        }
    }

    /// Every count made before `at` is in the store.
    fn flushed(&self, at: Timestamp) {
        self.flushed_at.fetch_max(at.as_microsecond(), Ordering::AcqRel);
    }

    pub async fn run(self: Arc<Self>, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let flusher = self.clone();
            let _ = tokio::task::spawn_blocking(move || flusher.flush()).await;
        }
    }
}

fn delta(c: &Drained) -> UsageDelta {
    UsageDelta {
        seq: c.seq,
        previous: c.previous,
        requests: c.requests,
        last_used_at: Timestamp::from_second(c.last_used).unwrap_or(Timestamp::UNIX_EPOCH),
    }
}

/// The store's rows of the hourly counts, in primary-key order, so that replicas writing the
/// same rows at once take their locks in the same order.
fn rows(hours: &[HourCount]) -> Vec<HourRow> {
    let mut rows: Vec<HourRow> = hours
        .iter()
        .map(|h| HourRow {
            seq: h.seq,
            route: h.route.clone(),
            status: h.status,
            hour: h.hour,
            requests: h.requests,
        })
        .collect();
    rows.sort_unstable_by(|a, b| {
        (a.seq, a.hour, &a.route, a.status).cmp(&(b.seq, b.hour, &b.route, b.status))
    });
    rows
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;

    use super::*;
    use crate::control::store::{Actor, Audit, NewKey, SqliteStore};
    use crate::core::environment::Environment;
    use crate::core::key::KeySpec;
    use crate::core::secret::Hasher;

    fn store_with_one_key(path: &std::path::Path, secret: &str) -> SqliteStore {
        let store = SqliteStore::create(path).unwrap();
        let key = NewKey {
            spec: KeySpec::new(secret, Environment::Production),
            id: format!("key_{secret}"),
            hash: Hasher::unkeyed().hash(secret.as_bytes()),
            prefix: "pfx_".into(),
            now: Timestamp::now(),
        };
        let audit = Audit {
            actor: Actor::Cli,
            event: "created",
            report: None,
        };
        store.insert(&key, audit).unwrap();
        store
    }

    #[test]
    fn usage_counted_before_the_store_file_was_replaced_is_not_credited_to_the_new_files_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let store = Arc::new(store_with_one_key(&path, "old-secret"));
        let counters = Arc::new(UsageCounters::default());
        let flusher = UsageFlusher::new(
            store.clone(),
            counters.clone(),
            Metrics::new(),
            crate::core::clock::system_clock(),
        );
        let now = Timestamp::now().as_second();
        counters.record(1, false, now, false);
        flusher.flush();
        assert_eq!(store.usage("key_old-secret").unwrap().total_requests, 1);

        counters.record(1, false, now, false);
        let restored = dir.path().join("restored.db");
        drop(store_with_one_key(&restored, "new-secret"));
        std::fs::rename(&restored, &path).unwrap();
        flusher.flush();
        assert_eq!(store.usage("key_new-secret").unwrap().total_requests, 0);

        counters.record(1, false, now, false);
        flusher.flush();
        assert_eq!(
            store.usage("key_new-secret").unwrap().total_requests,
            1,
            "counts since go in"
        );
    }

    #[test]
    fn hourly_counts_go_in_with_the_flush_and_rows_past_retention_are_pruned_once_an_hour() {
        use crate::control::store::quota::{CounterId, LeaseAsk};
        use crate::control::store::{HourRow, UsageGroup, UsageOf, UsageQuery};
        use crate::core::clock::ManualClock;
        use crate::core::quota::QuotaChange;
        use crate::proxy::analytics::{Analytics, HOUR};

        let t = 1_796_515_200 + 10 * HOUR;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(store_with_one_key(&dir.path().join("k.db"), "s"));
        let clock = ManualClock::new(Timestamp::from_second(t).unwrap());
        let analytics = Arc::new(Analytics::default());
        let flusher = UsageFlusher::new(
            store.clone(),
            Arc::default(),
            Metrics::new(),
            Arc::new(clock.clone()),
        )
        .with_analytics(analytics.clone(), Duration::from_secs(2 * 3600));
        let hours = || {
            let query = UsageQuery {
                of: UsageOf::Key("key_s".into()),
                from: 0,
                to: i64::MAX,
                bucket: HOUR,
                group: UsageGroup::All,
            };
            let points = store.usage_series(&query).unwrap();
            points.iter().map(|p| (p.t, p.count)).collect::<Vec<_>>()
        };
        let orders = analytics.route_id("orders");
        analytics.record(1, orders, 200, t - 3 * HOUR);
        analytics.record(1, orders, 429, t + 5);
        let counter = |period| CounterId {
            kind: "key",
            owner: "key_s",
            period,
        };
        for period in [t - 5 * HOUR, t - 3 * HOUR, t] {
            let ask = LeaseAsk {
                counter: counter(period),
                limit: 10,
                returned: 0,
                generation: 0,
                want: 1,
                spent: 0,
                warn_at: &[],
            };
            store.lease_quota(&ask).unwrap();
        }
        flusher.flush();
        assert_eq!(hours(), [(t, 1)], "written, and the row past retention pruned");
        let used = |period| {
            store
                .change_quota(&counter(period), QuotaChange::Read)
                .unwrap()
                .used
        };
        assert_eq!(
            used(t - 5 * HOUR),
            0,
            "a period that ended past retention is pruned"
        );
        assert_eq!(used(t - 3 * HOUR), 1, "one that ended within retention is kept");

        analytics.record(1, orders, 200, t + 10);
        let old = HourRow {
            seq: 1,
            route: "orders".into(),
            status: 200,
            hour: t - 5 * HOUR,
            requests: 1,
        };
        store.record_usage_rows(&[], &[old]).unwrap();
        flusher.flush();
        assert_eq!(
            hours(),
            [(t - 5 * HOUR, 1), (t, 2)],
            "pruned once in an hour, not at every flush"
        );

        clock.advance(Duration::from_secs(3 * 3600));
        flusher.flush();
        assert_eq!(hours(), [], "a later hour prunes again");
    }
}
