//! Delivers the lifecycle webhooks (control plane): POSTs the payloads the store's outbox holds
//! to `lifecycle.webhook`.
//!
//! Payloads are queued in the same transaction as the event they report, so a crash loses
//! none. A 2xx answer removes one from the outbox; anything else (another status, a
//! connection error, no answer within 10 s) is counted and retried with exponential backoff,
//! 5 s doubling up to 1 h, measured on the injected clock; after the tenth failed attempt the
//! payload is dropped, counted and logged. Only the gateway holding the lifecycle lease
//! delivers, and one pass at a time, so no payload is posted twice at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, USER_AGENT};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use jiff::Timestamp;
use tokio::sync::{Mutex, Notify};

use super::lifecycle::Lease;
use super::store::{KeyStore, PendingWebhook, StoreError};
use crate::core::clock::Clock;
use crate::core::outbound::{self, OutboundClient};
use crate::telemetry::Metrics;

/// How long one attempt may take, connection and answer included.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts before a payload is given up.
const MAX_ATTEMPTS: u32 = 10;
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// How often the outbox is checked besides right after a sweep.
const INTERVAL: Duration = Duration::from_secs(5);
/// Payloads attempted per pass.
const BATCH: usize = 100;
/// How long a payload stays claimed by the deliverer attempting it: its timeout and a margin.
const CLAIM: Duration = Duration::from_secs(TIMEOUT.as_secs() + 30);
/// Most of a receiver's answer body read (and discarded), so its connection can be reused.
const MAX_ANSWER: usize = 64 * 1024;
/// The `User-Agent` of the control plane's calls out.
pub const AGENT: &str = concat!("keygate/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("lifecycle.webhook {0:?} is not a URL")]
    Url(String),
    #[error("cannot set up TLS for the lifecycle webhook: {0}")]
    Tls(#[from] rustls::Error),
}

/// Why an attempt failed.
#[derive(Debug)]
enum Failure {
    Status(StatusCode),
    Transport(hyper_util::client::legacy::Error),
    Timeout,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status(status) => write!(f, "answered {status}"),
            Failure::Transport(error) => write!(f, "{error}"),
            Failure::Timeout => write!(f, "no answer within {TIMEOUT:?}"),
        }
    }
}

/// The wait before the next attempt, after `failed` attempts: 5 s, 10 s, 20 s, … at most 1 h.
pub fn backoff(failed: u32) -> Duration {
    let doublings = failed.saturating_sub(1).min(16);
    FIRST_BACKOFF.saturating_mul(1 << doublings).min(MAX_BACKOFF)
}

pub struct Deliverer {
    store: Arc<dyn KeyStore>,
    client: OutboundClient,
    url: Uri,
    clock: Clock,
    metrics: Metrics,
    lease: Lease,
    /// Wakes a pass early, when a sweep has queued payloads.
    wake: Arc<Notify>,
    /// Held through a pass: the timer and `deliver_due` never post the same payload twice.
    pass: Mutex<()>,
    /// Set at shutdown: no payload is started after it.
    stopped: AtomicBool,
}

impl Deliverer {
    pub fn new(
        url: &str,
        store: Arc<dyn KeyStore>,
        clock: Clock,
        metrics: Metrics,
        lease: Lease,
        wake: Arc<Notify>,
    ) -> Result<Self, SetupError> {
        let url: Uri = url.parse().map_err(|_| SetupError::Url(url.to_owned()))?;
        Ok(Deliverer {
            store,
            client: outbound::client()?,
            url,
            clock,
            metrics,
            lease,
            wake,
            pass: Mutex::new(()),
            stopped: AtomicBool::new(false),
        })
    }

    pub async fn run(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = self.wake.notified() => {}
            }
            self.deliver_due().await;
        }
    }

    /// Attempts the payloads due now, if this gateway holds the lifecycle lease. The lease is
    /// asked for only when something is due, so an idle deliverer never takes it from a sweeper.
    pub async fn deliver_due(&self) {
        let _pass = self.pass.lock().await;
        if self.stopped.load(Ordering::SeqCst) {
            return;
        }
        for _ in 0..BATCH {
            if self.stopped.load(Ordering::SeqCst) {
                return;
            }
            // One payload at a time, claimed for the length of its attempt: a lease that runs
            // out during a long pass cannot let another gateway post the same payload.
            let now = self.clock.now();
            let until = now.checked_add(CLAIM).unwrap_or(Timestamp::MAX);
            let (store, lease) = (self.store.clone(), self.lease.clone());
            let claimed = blocking(move || {
                if store.due_webhooks(now, 1)?.is_empty() || !lease.hold(now)? {
                    return Ok(None);
                }
                store.claim_webhook(now, until)
            })
            .await;
            match claimed {
                Ok(Some(pending)) => self.deliver(pending).await,
                Ok(None) => return,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the webhook outbox; retrying shortly");
                    return;
                }
            }
        }
    }

    /// Lets the attempt in flight finish and be recorded, then starts no other: a payload the
    /// receiver accepted is not posted again after a restart. Waits at most one attempt's
    /// timeout.
    pub async fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let _pass = self.pass.lock().await;
    }

    async fn deliver(&self, pending: PendingWebhook) {
        let about = About::of(&pending.payload);
        let result = self.post(pending.payload).await;
        let attempts = pending.attempts.saturating_add(1);
        let store = self.store.clone();
        let (id, now) = (pending.id, self.clock.now());
        let recorded = match result {
            Ok(status) => {
                self.metrics.webhook_deliveries.inc();
                tracing::info!(event = %about.event, key_id = %about.key_id, %status, attempts, "webhook delivered");
                blocking(move || store.webhook_done(id)).await
            }
            Err(failure) if attempts >= MAX_ATTEMPTS => {
                self.metrics.webhook_failures.inc();
                self.metrics.webhook_abandoned.inc();
                tracing::error!(event = %about.event, key_id = %about.key_id, %failure, attempts, "webhook failed for the last time; given up");
                blocking(move || store.webhook_done(id)).await
            }
            Err(failure) => {
                self.metrics.webhook_failures.inc();
                let wait = backoff(attempts);
                tracing::warn!(event = %about.event, key_id = %about.key_id, %failure, attempts, retry_in_s = wait.as_secs(), "webhook failed; will retry");
                let at = now.checked_add(wait).unwrap_or(Timestamp::MAX);
                blocking(move || store.webhook_retry_at(id, attempts, at)).await
            }
        };
        if let Err(error) = recorded {
            tracing::warn!(%error, key_id = %about.key_id, "cannot record a webhook attempt in the outbox");
        }
    }

    /// One attempt: Ok with a 2xx status, else why not.
    async fn post(&self, payload: String) -> Result<StatusCode, Failure> {
        let request = Request::post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, AGENT)
            .body(Full::new(Bytes::from(payload)))
            .expect("a validated URL and static headers make a valid request");
        let exchange = async {
            let response = self.client.request(request).await.map_err(Failure::Transport)?;
            let status = response.status();
            let _ = Limited::new(response.into_body(), MAX_ANSWER).collect().await;
            if status.is_success() {
                Ok(status)
            } else {
                Err(Failure::Status(status))
            }
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .unwrap_or(Err(Failure::Timeout))
    }
}

/// What a payload is about, for the log; the payload itself is not logged.
#[derive(Debug, Default, serde::Deserialize)]
struct About {
    #[serde(default)]
    event: String,
    #[serde(default)]
    key_id: String,
}

impl About {
    fn of(payload: &str) -> About {
        serde_json::from_str(payload).unwrap_or_default()
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|error| Err(StoreError::Unavailable(format!("store task failed: {error}"))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::store::SqliteStore;
    use crate::core::clock::ManualClock;

    fn deliverer(url: &str, clock: &ManualClock) -> Result<Deliverer, SetupError> {
        let store = Arc::new(SqliteStore::open(std::path::Path::new(":memory:")).unwrap());
        let lease = Lease::new(store.clone(), Duration::from_secs(3600));
        let clock = Arc::new(clock.clone());
        Deliverer::new(url, store, clock, Metrics::new(), lease, Arc::default())
    }

    #[test]
    fn https_receivers_are_supported_and_bad_urls_refused() {
        let clock = ManualClock::new(Timestamp::UNIX_EPOCH);
        assert!(deliverer("https://hooks.example.com/keygate", &clock).is_ok());
        assert!(matches!(deliverer("not a url", &clock), Err(SetupError::Url(_))));
    }

    #[tokio::test]
    async fn an_unreachable_receiver_is_a_failure_retried_after_the_backoff() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", closed.local_addr().unwrap());
        drop(closed);
        let clock = ManualClock::new(Timestamp::UNIX_EPOCH);
        let deliverer = deliverer(&url, &clock).unwrap();
        let now = Timestamp::UNIX_EPOCH;
        deliverer.store.enqueue_webhook(r#"{"event":"x"}"#, now).unwrap();

        deliverer.deliver_due().await;

        assert_eq!(deliverer.metrics.webhook_failures.get(), 1);
        assert!(deliverer.store.due_webhooks(now, 10).unwrap().is_empty());
        let retry = deliverer
            .store
            .due_webhooks(now.checked_add(FIRST_BACKOFF).unwrap(), 10);
        assert_eq!(retry.unwrap()[0].attempts, 1);
    }

    #[test]
    fn a_claimed_payload_is_not_due_to_anyone_else_until_its_claim_ends() {
        let store = SqliteStore::open(std::path::Path::new(":memory:")).unwrap();
        let now = Timestamp::UNIX_EPOCH;
        store.enqueue_webhook(r#"{"event":"x"}"#, now).unwrap();
        let until = now.checked_add(CLAIM).unwrap();
        assert!(store.claim_webhook(now, until).unwrap().is_some());
        let later = now.checked_add(Duration::from_secs(31)).unwrap();
        assert_eq!(
            store.claim_webhook(later, until).unwrap(),
            None,
            "a second deliverer"
        );
        assert!(
            store.claim_webhook(until, until).unwrap().is_some(),
            "after a dead attempt"
        );
    }

    #[test]
    fn backoff_doubles_from_five_seconds_up_to_an_hour() {
        let secs = |failed| backoff(failed).as_secs();
        let expected = [5, 5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600];
        for (failed, wait) in expected.into_iter().enumerate() {
            assert_eq!(secs(failed as u32), wait, "after {failed} failures");
        }
        assert_eq!(secs(u32::MAX), 3600);
    }

    #[test]
    fn the_log_summary_of_a_payload_tolerates_anything() {
        let about = About::of(r#"{"event":"key.idle_warning","key_id":"key_1","name":"x"}"#);
        assert_eq!(
            (about.event.as_str(), about.key_id.as_str()),
            ("key.idle_warning", "key_1")
        );
        let about = About::of("not json");
        assert_eq!((about.event.as_str(), about.key_id.as_str()), ("", ""));
        let about = About::of(r#"{"event":5}"#);
        assert_eq!(about.event, "");
    }
}
