//! Writes the hot path's per-key usage counters to the store in batches (control plane), so
//! `last_used_at` and daily counts cost no store write per request.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

use super::store::{Store, UsageDelta};
use crate::proxy::usage::UsageCounters;
use crate::telemetry::Metrics;

pub struct UsageFlusher {
    pub store: Arc<Store>,
    pub counters: Arc<UsageCounters>,
    pub metrics: Metrics,
}

impl UsageFlusher {
    /// Writes what has been counted. On failure the counts go back, to be written next time.
    pub fn flush(&self) {
        let counted = self.counters.drain();
        if counted.is_empty() {
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
        if let Err(error) = self.store.record_usage(&deltas) {
            self.metrics.usage_flush_errors.inc();
            self.counters.restore(&counted);
            tracing::warn!(%error, "could not write key usage; will retry");
        }
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
