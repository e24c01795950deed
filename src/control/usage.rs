//! Writes the hot path's per-key usage counters to the store in batches (control plane), so
//! `last_used_at` and daily counts cost no store write per request.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

use super::store::{KeyStore, UsageDelta};
use crate::core::clock::Clock;
use crate::proxy::usage::UsageCounters;
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
        if self.generation.swap(generation, Ordering::AcqRel) != generation {
            if !counted.is_empty() {
                tracing::warn!(
                    keys = counted.len(),
                    "key usage counted before the store file was replaced is dropped"
                );
            }
            return;
        }
        if counted.is_empty() {
            self.flushed(started);
            return;
        }
        let deltas: Vec<UsageDelta> = counted
            .iter()
            .map(|c| UsageDelta {
                seq: c.seq,
                previous: c.previous,
                requests: c.requests,
                last_used_at: Timestamp::from_second(c.last_used).unwrap_or(Timestamp::UNIX_EPOCH),
            })
            .collect();
        match self.store.record_usage(&deltas) {
            Ok(()) => self.flushed(started),
            Err(error) => {
                self.metrics.usage_flush_errors.inc();
                self.counters.restore(&counted);
                tracing::warn!(%error, "could not write key usage; will retry");
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
}
