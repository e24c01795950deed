//! Idle expiry (control plane): the sweep that warns about and then revokes keys left unused
//! for `lifecycle.idle_expiry`, and the jobs that run it and deliver its webhooks.
//!
//! Every `lifecycle.check_interval` the gateway holding the store lease `lifecycle` sweeps (on
//! a shared store, one gateway at a time). For each key idle long enough to concern it:
//!
//! 1. the deadline is `idle_since + idle_expiry` (idle time counts from the last use, else from
//!    creation, reactivation or regeneration);
//! 2. every warning of `lifecycle.warn_before` whose time has come and that has not gone out
//!    for this deadline goes out now, longest first: the store records it and queues its
//!    webhook in one transaction, so each goes out once across sweeps, replicas and restarts;
//! 3. at the deadline, and only once all its warnings have gone out, the key is revoked,
//!    unless it was used or reactivated since the store was read. A key whose first warning
//!    came late (idle expiry just switched on, sweeps stopped for a while) is revoked no
//!    sooner than the shortest warning's lead after it: never without notice.
//!
//! A key used again gets a new deadline, and so fresh warnings. Decisions read the injected
//! clock, so tests move time instead of waiting. The webhook payloads, all instants RFC 3339:
//!
//! ```json
//! {"event_id":"key_….warn.<deadline>.7d","event":"key.idle_warning","key_id":"key_…","name":"…","environment":"production",
//!  "last_used_at":null,"idle_since":"…","revokes_at":"…","warn_before":"7d","sent_at":"…"}
//! {"event_id":"key_….revoked.<time>","event":"key.idle_revoked","key_id":"key_…","name":"…","environment":"production",
//!  "last_used_at":null,"idle_since":"…","revoked_at":"…","idle_expiry":"90d","sent_at":"…"}
//! ```

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::keys::KeyService;
use super::store::{IdleKey, KeyStore, StoreError};
use super::webhook::{Deliverer, SetupError};
use crate::config;
use crate::core::clock::Clock;
use crate::core::units::format_duration;
use crate::telemetry::Metrics;

/// The shortest sweep interval and lease, whatever the config says.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const MIN_LEASE: Duration = Duration::from_secs(30);
/// Idle keys read from the store per query during a sweep.
const SWEEP_PAGE: usize = 1000;

/// The lifecycle jobs a config asks for: the sweeper when `idle_expiry` is set, the webhook
/// deliverer when `webhook` is.
pub struct LifecycleJobs {
    sweeper: Option<Arc<Sweeper>>,
    deliverer: Option<Arc<Deliverer>>,
}

impl LifecycleJobs {
    /// `keys` records its changes as the lifecycle's.
    pub fn new(
        config: &config::Lifecycle,
        store: Arc<dyn KeyStore>,
        keys: KeyService,
        clock: Clock,
        metrics: Metrics,
    ) -> Result<Self, SetupError> {
        let lease = Lease::new(store.clone(), config.check_interval);
        let queued = Arc::new(Notify::new());
        let deliverer = match &config.webhook {
            Some(url) => Some(Arc::new(Deliverer::new(
                url,
                store.clone(),
                clock.clone(),
                metrics.clone(),
                lease.clone(),
                queued.clone(),
            )?)),
            None => None,
        };
        let sweeper = config.idle_expiry.map(|idle_expiry| {
            Arc::new(Sweeper {
                store,
                keys,
                clock,
                metrics,
                lease,
                policy: Policy::new(idle_expiry, &config.warn_before),
                every: config.check_interval.max(MIN_INTERVAL),
                webhooks: config.webhook.is_some(),
                queued,
            })
        });
        Ok(LifecycleJobs { sweeper, deliverer })
    }

    pub fn spawn(&self) -> Vec<JoinHandle<()>> {
        let sweeper = self.sweeper.clone().map(|s| tokio::spawn(s.run()));
        let deliverer = self.deliverer.clone().map(|d| tokio::spawn(d.run()));
        sweeper.into_iter().chain(deliverer).collect()
    }

    pub async fn sweep_now(&self) {
        if let Some(sweeper) = &self.sweeper {
            sweeper.sweep_now().await;
        }
    }

    pub async fn deliver_now(&self) {
        if let Some(deliverer) = &self.deliverer {
            deliverer.deliver_due().await;
        }
    }

    /// Before the tasks are aborted at shutdown: finishes the webhook attempt in flight.
    pub async fn stop(&self) {
        if let Some(deliverer) = &self.deliverer {
            deliverer.stop().await;
        }
    }
}

/// The store lease that lets one gateway of those sharing a store do the lifecycle work.
#[derive(Clone)]
pub struct Lease {
    store: Arc<dyn KeyStore>,
    /// Random per gateway, so two in one process (tests) or on one host contend like any two.
    holder: Arc<str>,
    ttl: Duration,
}

impl Lease {
    const NAME: &'static str = "lifecycle";

    pub(crate) fn new(store: Arc<dyn KeyStore>, check_interval: Duration) -> Self {
        Lease {
            store,
            holder: format!("{:016x}", rand::random::<u64>()).into(),
            // Outlives one missed sweep, so a busy holder keeps it; a dead one frees it soon.
            ttl: check_interval.saturating_mul(2).max(MIN_LEASE),
        }
    }

    /// Takes or renews the lease; false when another gateway holds it. Blocking.
    pub fn hold(&self, now: Timestamp) -> Result<bool, StoreError> {
        self.store.try_lease(Self::NAME, &self.holder, now, self.ttl)
    }
}

/// What the sweep enforces.
#[derive(Debug, Clone, PartialEq)]
struct Policy {
    idle_expiry: Duration,
    /// Longest first.
    warn_before: Vec<Duration>,
}

impl Policy {
    fn new(idle_expiry: Duration, warn_before: &[Duration]) -> Self {
        let mut warn_before = warn_before.to_vec();
        warn_before.sort_unstable_by(|a, b| b.cmp(a));
        warn_before.dedup();
        Policy {
            idle_expiry,
            warn_before,
        }
    }

    /// The least notice a key gets before it is revoked: the shortest warning.
    fn notice(&self) -> Option<Duration> {
        self.warn_before.last().copied()
    }

    /// When a key first warned at `first_warning` about `deadline` is revoked: the deadline,
    /// or the shortest warning's lead after the first warning when that came late.
    fn revokes_at(&self, deadline: Timestamp, first_warning: Timestamp) -> Timestamp {
        let notice = self.notice().unwrap_or_default();
        first_warning
            .checked_add(notice)
            .map_or(deadline, |noticed| noticed.max(deadline))
    }

    /// How long a key must have been idle before the sweep has anything to do about it.
    fn concern_after(&self) -> Duration {
        let earliest_warning = self.warn_before.first().copied().unwrap_or_default();
        self.idle_expiry.saturating_sub(earliest_warning)
    }

    /// The warnings whose time has come at `now` for a key revoked at `deadline`, longest
    /// first. A warning time before the first instant jiff knows has come long ago.
    fn due_warnings(&self, deadline: Timestamp, now: Timestamp) -> impl Iterator<Item = Duration> + '_ {
        self.warn_before
            .iter()
            .copied()
            .filter(move |before| deadline.checked_sub(*before).map_or(true, |at| now >= at))
    }
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub warned: usize,
    pub revoked: usize,
}

pub struct Sweeper {
    store: Arc<dyn KeyStore>,
    keys: KeyService,
    clock: Clock,
    metrics: Metrics,
    lease: Lease,
    policy: Policy,
    every: Duration,
    /// Whether to queue webhook payloads (a webhook is configured).
    webhooks: bool,
    /// Wakes the deliverer when a sweep has queued payloads.
    queued: Arc<Notify>,
}

impl Sweeper {
    /// Sweeps every interval, the first one an interval after start. Deadlines come from the
    /// store's times alone, so a late sweep revokes late, never early.
    async fn run(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            self.sweep_now().await;
        }
    }

    async fn sweep_now(self: &Arc<Self>) {
        let sweeper = self.clone();
        match tokio::task::spawn_blocking(move || sweeper.sweep()).await {
            Ok(Ok(Some(swept))) if swept == Swept::default() => tracing::debug!("idle sweep: nothing to do"),
            Ok(Ok(Some(swept))) => {
                tracing::info!(warned = swept.warned, revoked = swept.revoked, "idle sweep done");
                self.queued.notify_one();
            }
            Ok(Ok(None)) => tracing::debug!("idle sweep: another gateway holds the lifecycle lease"),
            Ok(Err(error)) => tracing::warn!(%error, "idle sweep failed; trying again at the next one"),
            Err(error) => tracing::error!(%error, "idle sweep task failed"),
        }
    }

    /// One sweep, or `None` when another gateway holds the lease. Blocking.
    pub fn sweep(&self) -> Result<Option<Swept>, StoreError> {
        let now = self.clock.now();
        if !self.lease.hold(now)? {
            return Ok(None);
        }
        let cutoff = now
            .checked_sub(self.policy.concern_after())
            .unwrap_or(Timestamp::MIN);
        let mut swept = Swept::default();
        // A page at a time: a million idle keys never sit in memory at once.
        let mut after = 0;
        loop {
            let page = self.store.idle_keys(cutoff, now, after, SWEEP_PAGE)?;
            for key in &page {
                self.check(key, now, &mut swept);
            }
            match page.last() {
                Some(last) if page.len() == SWEEP_PAGE => after = last.seq,
                _ => break,
            }
        }
        Ok(Some(swept))
    }

    /// Warns about and revokes one key, as its deadline requires. A key whose warning could
    /// not be recorded is not revoked in this sweep: a warning always comes first.
    fn check(&self, key: &IdleKey, now: Timestamp, swept: &mut Swept) {
        let Ok(deadline) = key.idle_since.checked_add(self.policy.idle_expiry) else {
            tracing::warn!(key_id = %key.id, idle_since = %key.idle_since, "idle deadline out of range; skipped");
            return;
        };
        // A key warned on time is revoked at its deadline; one warned late (idle expiry just
        // switched on, sweeps stopped for a while) gets the shortest warning as notice first.
        let first_warning = match self.store.first_warning_at(key.seq, deadline) {
            Ok(first) => first,
            Err(error) => {
                tracing::error!(key_id = %key.id, %error, "cannot read an idle key's warnings; retrying at the next sweep");
                return;
            }
        };
        let revokes_at = self.policy.revokes_at(deadline, first_warning.unwrap_or(now));
        for before in self.policy.due_warnings(deadline, now) {
            match self.warn(key, deadline, revokes_at, before, now) {
                Ok(sent) => swept.warned += usize::from(sent),
                Err(error) => {
                    tracing::error!(key_id = %key.id, %error, "cannot record an idle warning; retrying at the next sweep");
                    return;
                }
            }
        }
        if now >= revokes_at && self.revoke(key, now) {
            swept.revoked += 1;
        }
    }

    /// Records the warning `before` the deadline, once; true when it went out now.
    fn warn(
        &self,
        key: &IdleKey,
        deadline: Timestamp,
        revokes_at: Timestamp,
        before: Duration,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let label = format_duration(before);
        let payload = self
            .webhooks
            .then(|| payloads::warning(key, deadline, revokes_at, &label, now));
        let sent = self
            .store
            .record_warning(key.seq, deadline, before.as_secs(), now, payload.as_deref())?;
        if sent {
            self.metrics.idle_warnings.with_label_values(&[&label]).inc();
            tracing::warn!(
                key_id = %key.id,
                name = %key.name,
                environment = key.environment.as_str(),
                revokes_at = %deadline,
                warn_before = %label,
                "API key idle: it will be revoked unless used"
            );
        }
        Ok(sent)
    }

    /// Revokes the key unless it was used or reactivated since the sweep read it; true when
    /// it did.
    fn revoke(&self, key: &IdleKey, now: Timestamp) -> bool {
        let idle_expiry = format_duration(self.policy.idle_expiry);
        let payload = self.webhooks.then(|| payloads::revoked(key, &idle_expiry, now));
        match self
            .keys
            .revoke_idle(&key.id, self.policy.idle_expiry, payload.as_deref())
        {
            Ok(Some(_)) => {}
            Ok(None) => {
                tracing::debug!(key_id = %key.id, "key used or reactivated since the sweep read it");
                return false;
            }
            Err(error) => {
                tracing::error!(key_id = %key.id, %error, "cannot revoke an idle key; retrying at the next sweep");
                return false;
            }
        }
        self.metrics.idle_revocations.inc();
        tracing::warn!(
            key_id = %key.id,
            name = %key.name,
            environment = key.environment.as_str(),
            idle_since = %key.idle_since,
            %idle_expiry,
            "API key revoked for idleness"
        );
        true
    }
}

/// The webhook payloads (see the module doc).
mod payloads {
    use jiff::Timestamp;
    use serde::Serialize;

    use crate::control::store::IdleKey;

    /// What every payload carries, around its event's own fields.
    #[derive(Serialize)]
    struct Envelope<'a, T> {
        /// The same for every delivery attempt of this event, so a receiver can drop the
        /// duplicate that a crash between its 2xx and our bookkeeping would cause.
        event_id: String,
        event: &'static str,
        key_id: &'a str,
        name: &'a str,
        environment: &'static str,
        last_used_at: Option<Timestamp>,
        idle_since: Timestamp,
        #[serde(flatten)]
        detail: T,
        sent_at: Timestamp,
    }

    impl<'a, T: Serialize> Envelope<'a, T> {
        fn to_json(
            key: &'a IdleKey,
            event_id: String,
            event: &'static str,
            detail: T,
            now: Timestamp,
        ) -> String {
            let envelope = Envelope {
                event_id,
                event,
                key_id: &key.id,
                name: &key.name,
                environment: key.environment.as_str(),
                last_used_at: key.last_used_at,
                idle_since: key.idle_since,
                detail,
                sent_at: now,
            };
            serde_json::to_string(&envelope).expect("strings and instants always serialize")
        }
    }

    #[derive(Serialize)]
    struct Warning<'a> {
        revokes_at: Timestamp,
        warn_before: &'a str,
    }

    #[derive(Serialize)]
    struct Revoked<'a> {
        revoked_at: Timestamp,
        idle_expiry: &'a str,
    }

    /// `revokes_at` is the deadline, or later when the warning comes late (see
    /// `Policy::revokes_at`).
    pub fn warning(
        key: &IdleKey,
        deadline: Timestamp,
        revokes_at: Timestamp,
        warn_before: &str,
        now: Timestamp,
    ) -> String {
        let event_id = format!("{}.warn.{}.{warn_before}", key.id, deadline.as_second());
        let detail = Warning {
            revokes_at,
            warn_before,
        };
        Envelope::to_json(key, event_id, "key.idle_warning", detail, now)
    }

    pub fn revoked(key: &IdleKey, idle_expiry: &str, now: Timestamp) -> String {
        let event_id = format!("{}.revoked.{}", key.id, now.as_second());
        let detail = Revoked {
            revoked_at: now,
            idle_expiry,
        };
        Envelope::to_json(key, event_id, "key.idle_revoked", detail, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::store::SqliteStore;
    use crate::core::environment::Environment;
    use crate::core::key::KeySpec;

    const DAY: Duration = Duration::from_secs(86_400);

    fn at(days: u64) -> Timestamp {
        Timestamp::UNIX_EPOCH.checked_add(DAY * days as u32).unwrap()
    }

    fn policy() -> Policy {
        Policy::new(DAY * 90, &[DAY * 7, DAY, DAY * 15])
    }

    #[test]
    fn idle_keys_come_in_pages_that_cover_them_all_once() {
        use crate::control::store::{Actor, Audit, NewKey};
        let store = SqliteStore::open(std::path::Path::new(":memory:")).unwrap();
        let keys: Vec<NewKey> = (0..2 * SWEEP_PAGE + 7)
            .map(|i| NewKey {
                spec: KeySpec::new(format!("key {i}"), Environment::Production),
                id: format!("key_{i}"),
                hash: crate::core::secret::Hasher::unkeyed().hash(format!("idle-secret-{i:08}").as_bytes()),
                prefix: "idle".into(),
                now: at(1),
            })
            .collect();
        let audit = Audit {
            actor: Actor::Cli,
            event: "imported",
            report: None,
        };
        store.insert_many(&keys, audit).unwrap();
        let (mut seen, mut after) = (std::collections::HashSet::new(), 0);
        loop {
            let page = store.idle_keys(at(10), at(100), after, SWEEP_PAGE).unwrap();
            seen.extend(page.iter().map(|key| key.seq));
            match page.last() {
                Some(last) if page.len() == SWEEP_PAGE => after = last.seq,
                _ => break,
            }
        }
        assert_eq!(seen.len(), keys.len());
    }

    #[test]
    fn warnings_are_kept_longest_first_once_each() {
        let policy = Policy::new(DAY * 90, &[DAY, DAY * 15, DAY * 7, DAY]);
        assert_eq!(policy.warn_before, vec![DAY * 15, DAY * 7, DAY]);
    }

    #[test]
    fn keys_concern_the_sweep_from_the_earliest_warning() {
        assert_eq!(policy().concern_after(), DAY * 75);
        assert_eq!(Policy::new(DAY * 90, &[]).concern_after(), DAY * 90);
    }

    #[test]
    fn due_warnings_are_those_whose_time_has_come_longest_first() {
        let policy = policy();
        let deadline = at(100);
        let due = |now| policy.due_warnings(deadline, now).collect::<Vec<_>>();
        assert_eq!(due(at(84)), Vec::<Duration>::new());
        assert_eq!(due(at(85)), vec![DAY * 15]);
        assert_eq!(due(at(93)), vec![DAY * 15, DAY * 7]);
        assert_eq!(due(at(100)), vec![DAY * 15, DAY * 7, DAY]);
        assert_eq!(due(at(500)), vec![DAY * 15, DAY * 7, DAY]);
    }

    #[test]
    fn a_warning_before_the_first_instant_is_due() {
        let policy = policy();
        assert_eq!(policy.due_warnings(Timestamp::MIN, Timestamp::MIN).count(), 3);
    }

    #[test]
    fn the_lease_outlives_a_missed_sweep_and_half_a_minute() {
        let store = Arc::new(SqliteStore::open(std::path::Path::new(":memory:")).unwrap());
        assert_eq!(
            Lease::new(store.clone(), Duration::from_secs(3600)).ttl,
            Duration::from_secs(7200)
        );
        assert_eq!(Lease::new(store.clone(), Duration::from_secs(1)).ttl, MIN_LEASE);
        assert_eq!(Lease::new(store, Duration::MAX).ttl, Duration::MAX);
    }

    fn key(last_used_at: Option<Timestamp>) -> IdleKey {
        IdleKey {
            seq: 1,
            id: "key_1".into(),
            name: "Main \"Website\"".into(),
            environment: Environment::Production,
            last_used_at,
            idle_since: at(1),
        }
    }

    #[test]
    fn the_warning_payload_names_the_key_its_deadline_and_the_threshold() {
        let payload = payloads::warning(&key(None), at(91), at(91), "7d", at(84));
        let expected = serde_json::json!({
            "event_id": "key_1.warn.7862400.7d",
            "event": "key.idle_warning",
            "key_id": "key_1",
            "name": "Main \"Website\"",
            "environment": "production",
            "last_used_at": null,
            "idle_since": "1970-01-02T00:00:00Z",
            "revokes_at": "1970-04-02T00:00:00Z",
            "warn_before": "7d",
            "sent_at": "1970-03-26T00:00:00Z",
        });
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&payload).unwrap(),
            expected
        );
        assert!(payload.starts_with(r#"{"event_id":"key_1.warn.7862400.7d","event":"key.idle_warning""#));
    }

    #[test]
    fn the_revocation_payload_names_the_key_and_the_idle_expiry() {
        let payload = payloads::revoked(&key(Some(at(1))), "90d", at(91));
        let expected = serde_json::json!({
            "event_id": "key_1.revoked.7862400",
            "event": "key.idle_revoked",
            "key_id": "key_1",
            "name": "Main \"Website\"",
            "environment": "production",
            "last_used_at": "1970-01-02T00:00:00Z",
            "idle_since": "1970-01-02T00:00:00Z",
            "revoked_at": "1970-04-02T00:00:00Z",
            "idle_expiry": "90d",
            "sent_at": "1970-04-02T00:00:00Z",
        });
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&payload).unwrap(),
            expected
        );
    }
}
