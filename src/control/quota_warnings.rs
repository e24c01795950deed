//! Quota warnings (control plane): what happens once a quota's use reaches a share of
//! `[quotas] warn_at`: a log event, `keygate_quota_warnings_total{scope,threshold}` and, with
//! `lifecycle.webhook` set, the webhook `quota.warning` (or `quota.exhausted`, for the share
//! 1) queued in the store's outbox, which the lifecycle deliverer posts:
//!
//! ```json
//! {"event_id":"quota.key.key_….1767225600.0.8","event":"quota.warning","kind":"key","id":"key_…",
//!  "threshold":0.8,"used":80,"limit":100,"resets_at":"2026-01-02T00:00:00Z","sent_at":"…"}
//! ```
//!
//! The crossings come from the request path (noted on a channel, see
//! [`crate::proxy::limits::QuotaWarnings`]) or from the quota leases (the store's counter, see
//! `quota_leases`). Either way each is emitted once per (kind, id, period, share) by this
//! replica: a top-up or a reset that brings the use back under a share does not warn twice in
//! the period. Across a fleet, Redis and the leases see each crossing once; only replicas
//! deciding locally in Redis's fallback may each warn once, and the stable `event_id` lets a
//! receiver drop the repeats.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use jiff::Timestamp;
use serde::Serialize;
use tokio::sync::mpsc;

use super::store::KeyStore;
use crate::core::clock::Clock;
use crate::proxy::limits::{Crossing, QuotaOwner};
use crate::telemetry::Metrics;

/// Crossings remembered for deduplication before the ones of ended periods are forgotten.
const REMEMBERED: usize = 100_000;

/// One emitted crossing's identity: kind, id, period start (seconds), share (its bits).
type Seen = (QuotaOwner, Box<str>, i64, u64);

pub struct Warner {
    store: Arc<dyn KeyStore>,
    metrics: Metrics,
    clock: Clock,
    /// Whether to queue webhooks (`lifecycle.webhook` is set).
    webhooks: bool,
    /// Emitted crossings, with their period's end.
    seen: Mutex<HashMap<Seen, Option<Timestamp>>>,
}

impl Warner {
    pub fn new(store: Arc<dyn KeyStore>, metrics: Metrics, clock: Clock, webhooks: bool) -> Self {
        Warner {
            store,
            metrics,
            clock,
            webhooks,
            seen: Mutex::default(),
        }
    }

    /// Emits the crossings noted on the request path until it closes.
    pub async fn run(self: Arc<Self>, mut notes: mpsc::Receiver<Crossing>) {
        while let Some(crossing) = notes.recv().await {
            self.emit(crossing).await;
        }
    }

    /// Logs, counts and queues one crossing, unless it went out already this period.
    pub async fn emit(&self, crossing: Crossing) {
        if !self.first(&crossing) {
            return;
        }
        let event = event_name(crossing.share);
        tracing::warn!(
            event,
            kind = crossing.kind.as_str(),
            id = %crossing.id,
            threshold = crossing.share,
            used = crossing.used,
            limit = crossing.limit,
            resets_at = ?crossing.resets_at,
            "quota use reached a warning threshold"
        );
        self.metrics
            .quota_warnings
            .with_label_values(&[crossing.kind.as_str(), &threshold_label(crossing.share)])
            .inc();
        if !self.webhooks {
            return;
        }
        let now = self.clock.now();
        let payload = payload(&crossing, now);
        let store = self.store.clone();
        let queued = tokio::task::spawn_blocking(move || store.enqueue_webhook(&payload, now)).await;
        match queued {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, event, "cannot queue the quota webhook"),
            Err(error) => tracing::error!(%error, event, "the quota webhook task failed"),
        }
    }

    /// Whether `crossing` is the first of its kind, id, period and share here.
    fn first(&self, crossing: &Crossing) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.len() >= REMEMBERED {
            let now = self.clock.now();
            seen.retain(|_, ends| ends.is_none_or(|end| end > now));
            if seen.len() >= REMEMBERED {
                seen.clear();
            }
        }
        let id = (
            crossing.kind,
            crossing.id.clone(),
            crossing.period_start.as_second(),
            crossing.share.to_bits(),
        );
        seen.insert(id, crossing.resets_at).is_none()
    }
}

/// `quota.exhausted` when the whole allowance is used, `quota.warning` before.
pub fn event_name(share: f64) -> &'static str {
    if share >= 1.0 {
        "quota.exhausted"
    } else {
        "quota.warning"
    }
}

/// The metric's `threshold` label: the share as configured (`0.8`, `1`).
pub fn threshold_label(share: f64) -> String {
    format!("{share}")
}

#[derive(Serialize)]
struct Payload<'a> {
    /// The same for every delivery of this crossing, and for its repeats from other replicas.
    event_id: String,
    event: &'static str,
    kind: &'static str,
    id: &'a str,
    threshold: f64,
    used: u64,
    limit: u64,
    resets_at: Option<Timestamp>,
    sent_at: Timestamp,
}

fn payload(crossing: &Crossing, now: Timestamp) -> String {
    let payload = Payload {
        event_id: format!(
            "quota.{}.{}.{}.{}",
            crossing.kind.as_str(),
            crossing.id,
            crossing.period_start.as_second(),
            crossing.share
        ),
        event: event_name(crossing.share),
        kind: crossing.kind.as_str(),
        id: &crossing.id,
        threshold: crossing.share,
        used: crossing.used,
        limit: crossing.limit,
        resets_at: crossing.resets_at,
        sent_at: now,
    };
    serde_json::to_string(&payload).expect("strings, numbers and instants always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crossing(share: f64) -> Crossing {
        Crossing {
            kind: QuotaOwner::Customer,
            id: "acme".into(),
            share,
            used: 100,
            limit: 100,
            period_start: "2026-01-01T00:00:00Z".parse().unwrap(),
            resets_at: Some("2026-01-02T00:00:00Z".parse().unwrap()),
        }
    }

    #[test]
    fn the_payload_names_the_owner_the_use_and_the_reset() {
        let now: Timestamp = "2026-01-01T12:00:00Z".parse().unwrap();
        let json: serde_json::Value = serde_json::from_str(&payload(&crossing(1.0), now)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "event_id": "quota.customer.acme.1767225600.1",
                "event": "quota.exhausted",
                "kind": "customer",
                "id": "acme",
                "threshold": 1.0,
                "used": 100,
                "limit": 100,
                "resets_at": "2026-01-02T00:00:00Z",
                "sent_at": "2026-01-01T12:00:00Z",
            })
        );
        assert_eq!(event_name(0.8), "quota.warning");
        assert_eq!(threshold_label(0.8), "0.8");
        assert_eq!(threshold_label(1.0), "1");
    }
}
