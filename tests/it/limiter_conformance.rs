//! One conformance suite for the limiter backends, written once as plain functions of the seam
//! ([`Limiter`]): each case runs against the local limiter, the local limiter spending quotas
//! out of blocks leased from a store (SQLite here; the lease task of a gateway), and Redis (the
//! throwaway server of `support::services`), all on one manual clock (Redis's rate buckets then
//! take their time from it too). A backend is done when it passes the same suite, so the two cannot
//! drift: burst, refill, a quota's period edge, a refusal that spends nothing, top-up, reset,
//! a cost above 1, and credits that never renew.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

use keygate::control::quota_leases::QuotaLeases;
use keygate::control::quota_warnings::Warner;
use keygate::control::store::{KeyStore, SqliteStore};
use keygate::core::clock::{Clock, ManualClock};
use keygate::core::key::RateLimitSpec;
use keygate::core::quota::{Period, QuotaChange, QuotaSpec, QuotaUse};
use keygate::core::secret::Hasher;
use keygate::proxy::limits::{
    Check, LeaseLink, LeaseOwner, LimitKind, Limiter, LocalLimits, Owner, Subject, Unavailable, Verdict,
};
use keygate::proxy::shared_limits::{RateClock, RedisSettings, SharedLimits};
use keygate::proxy::state::Shared;
use keygate::telemetry::Metrics;

use crate::support::{redis_url, STANDARD};

const START: &str = "2026-03-01T12:00:00Z";

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn rate(requests: u32, per: Duration, burst: u32) -> RateLimitSpec {
    RateLimitSpec {
        requests: NonZeroU32::new(requests).unwrap(),
        per,
        burst: NonZeroU32::new(burst),
    }
}

fn quota(limit: u64, period: Period, anchor: &str) -> QuotaSpec {
    QuotaSpec {
        limit,
        period,
        anchor: at(anchor),
    }
}

fn subject<'a>(id: &'a str, rate: Option<&'a RateLimitSpec>, quota: Option<&'a QuotaSpec>) -> Subject<'a> {
    Subject { id, rate, quota }
}

/// A check of key 1 (`key_a`) of cost 1, without a customer.
fn check<'a>(key: Subject<'a>) -> Check<'a> {
    Check {
        seq: 1,
        key,
        customer: None,
        cost: NonZeroU32::MIN,
    }
}

const KEY_A: Owner<'static> = Owner::Key {
    seq: 1,
    id: "key_a",
    customer: None,
};

async fn admit(limiter: &impl Limiter, check: &Check<'_>) -> Verdict {
    limiter.admit(check).await.expect("the backend answers")
}

fn remaining(verdict: &Verdict, kind: LimitKind) -> u64 {
    verdict.policy(kind).expect("the limit was checked").remaining
}

fn refused_by(verdict: &Verdict) -> Option<LimitKind> {
    verdict.refused.map(|refused| refused.by)
}

// --- the suite ---------------------------------------------------------------------------

async fn a_burst_is_admitted_at_once_then_refused(limiter: &impl Limiter, _clock: &ManualClock) {
    let five = rate(5, Duration::from_secs(1), 5);
    let request = check(subject("key_a", Some(&five), None));
    let mut left = Vec::new();
    for _ in 0..5 {
        let verdict = admit(limiter, &request).await;
        assert!(verdict.is_admitted(), "{verdict:?}");
        left.push(remaining(&verdict, LimitKind::KeyRate));
    }
    assert_eq!(left, [4, 3, 2, 1, 0]);
    let refused = admit(limiter, &request).await;
    let why = refused.refused.expect("past the burst");
    assert_eq!(
        (why.by, why.retry_after, why.resets_at),
        (LimitKind::KeyRate, Some(1), None)
    );
    let policy = refused.policy(LimitKind::KeyRate).unwrap();
    assert_eq!((policy.limit, policy.remaining, policy.window), (5, 0, Some(1)));
}

async fn a_bucket_refills_one_request_per_interval(limiter: &impl Limiter, clock: &ManualClock) {
    let two = rate(2, Duration::from_secs(1), 2);
    let request = check(subject("key_a", Some(&two), None));
    for _ in 0..2 {
        assert!(admit(limiter, &request).await.is_admitted());
    }
    assert!(!admit(limiter, &request).await.is_admitted());
    clock.advance(Duration::from_millis(499));
    assert!(!admit(limiter, &request).await.is_admitted());
    clock.advance(Duration::from_millis(1));
    assert!(admit(limiter, &request).await.is_admitted());
    assert!(!admit(limiter, &request).await.is_admitted());
    // Idle for long, the bucket is full again: no more than its burst.
    clock.advance(Duration::from_secs(3600));
    for _ in 0..2 {
        assert!(admit(limiter, &request).await.is_admitted());
    }
    assert!(!admit(limiter, &request).await.is_admitted());
}

async fn a_quota_renews_exactly_at_its_periods_edge(limiter: &impl Limiter, clock: &ManualClock) {
    let day = quota(3, Period::Day, "2026-01-01T00:00:00Z");
    let request = check(subject("key_a", None, Some(&day)));
    clock.set(at("2026-03-01T23:59:59.999Z"));
    for left in [2, 1, 0] {
        let verdict = admit(limiter, &request).await;
        assert_eq!(remaining(&verdict, LimitKind::KeyQuota), left, "{verdict:?}");
    }
    let refused = admit(limiter, &request)
        .await
        .refused
        .expect("the day's quota is spent");
    assert_eq!(refused.by, LimitKind::KeyQuota);
    assert_eq!(refused.retry_after, Some(1));
    assert_eq!(refused.resets_at, Some(at("2026-03-02T00:00:00Z")));
    clock.advance(Duration::from_millis(1));
    let next_day = admit(limiter, &request).await;
    assert!(next_day.is_admitted(), "{next_day:?}");
    assert_eq!(remaining(&next_day, LimitKind::KeyQuota), 2);
    let state = limiter.quota(KEY_A, &day, QuotaChange::Read).await.unwrap();
    assert_eq!(
        (state.used, state.resets_at),
        (1, Some(at("2026-03-03T00:00:00Z")))
    );

    // A month anchored on the 31st renews on the last day of a shorter month.
    let month = quota(1, Period::Month, "2026-01-31T00:00:00Z");
    let request = check(subject("key_a", None, Some(&month)));
    clock.set(at("2026-02-27T23:00:00Z"));
    assert!(admit(limiter, &request).await.is_admitted());
    let refused = admit(limiter, &request).await.refused.unwrap();
    assert_eq!(refused.resets_at, Some(at("2026-02-28T00:00:00Z")));
    assert_eq!(refused.retry_after, Some(3600));
    clock.set(at("2026-02-28T00:00:00Z"));
    assert!(admit(limiter, &request).await.is_admitted());
}

async fn a_limit_that_refuses_spends_nothing_from_the_others(limiter: &impl Limiter, _clock: &ManualClock) {
    let key_rate = rate(10, Duration::from_secs(1), 10);
    let customer_rate = rate(10, Duration::from_secs(1), 10);
    let key_quota = quota(100, Period::Day, "2026-01-01T00:00:00Z");
    let customer_quota = quota(2, Period::Day, "2026-01-01T00:00:00Z");
    let acme = subject("acme", Some(&customer_rate), Some(&customer_quota));
    let request = Check {
        customer: Some(acme),
        ..check(subject("key_a", Some(&key_rate), Some(&key_quota)))
    };
    for _ in 0..2 {
        assert!(admit(limiter, &request).await.is_admitted());
    }
    let refused = admit(limiter, &request).await;
    assert_eq!(refused_by(&refused), Some(LimitKind::CustomerQuota));
    // The states after the refusal: as after the two admitted requests.
    for (kind, left) in [
        (LimitKind::KeyRate, 8),
        (LimitKind::CustomerRate, 8),
        (LimitKind::KeyQuota, 98),
        (LimitKind::CustomerQuota, 0),
    ] {
        assert_eq!(remaining(&refused, kind), left, "{kind:?}");
    }
    let key_a = Owner::Key {
        seq: 1,
        id: "key_a",
        customer: Some("acme"),
    };
    let used = limiter
        .quota(key_a, &key_quota, QuotaChange::Read)
        .await
        .unwrap()
        .used;
    assert_eq!(used, 2, "the key's quota paid nothing for the refusal");

    // Another key of the customer shares its limits: refused too, and charged nothing.
    let other = Check {
        seq: 2,
        key: subject("key_b", Some(&key_rate), Some(&key_quota)),
        ..request
    };
    assert_eq!(
        refused_by(&admit(limiter, &other).await),
        Some(LimitKind::CustomerQuota)
    );
    let key_b = Owner::Key {
        seq: 2,
        id: "key_b",
        customer: Some("acme"),
    };
    assert_eq!(
        limiter
            .quota(key_b, &key_quota, QuotaChange::Read)
            .await
            .unwrap()
            .used,
        0
    );

    // A rate limit that refuses spends no quota either.
    let one = rate(1, Duration::from_secs(60), 1);
    let slow = check(subject("key_c", Some(&one), Some(&key_quota)));
    let slow = Check { seq: 3, ..slow };
    assert!(admit(limiter, &slow).await.is_admitted());
    assert_eq!(refused_by(&admit(limiter, &slow).await), Some(LimitKind::KeyRate));
    let key_c = Owner::Key {
        seq: 3,
        id: "key_c",
        customer: None,
    };
    assert_eq!(
        limiter
            .quota(key_c, &key_quota, QuotaChange::Read)
            .await
            .unwrap()
            .used,
        1
    );
}

async fn a_top_up_adds_to_this_period_only(limiter: &impl Limiter, clock: &ManualClock) {
    let day = quota(2, Period::Day, "2026-01-01T00:00:00Z");
    let request = check(subject("key_a", None, Some(&day)));
    for _ in 0..2 {
        assert!(admit(limiter, &request).await.is_admitted());
    }
    assert!(!admit(limiter, &request).await.is_admitted());
    let topped = limiter.quota(KEY_A, &day, QuotaChange::Add(3)).await.unwrap();
    assert_eq!((topped.limit, topped.used, topped.remaining), (5, 2, 3));
    for _ in 0..3 {
        assert!(admit(limiter, &request).await.is_admitted());
    }
    assert!(!admit(limiter, &request).await.is_admitted());
    clock.advance(Duration::from_secs(86_400));
    let next_day = limiter.quota(KEY_A, &day, QuotaChange::Read).await.unwrap();
    assert_eq!((next_day.limit, next_day.used), (2, 0));
}

async fn a_reset_starts_the_period_afresh(limiter: &impl Limiter, _clock: &ManualClock) {
    let hour = quota(2, Period::Hour, "2026-01-01T00:00:00Z");
    let request = check(subject("key_a", None, Some(&hour)));
    for _ in 0..2 {
        assert!(admit(limiter, &request).await.is_admitted());
    }
    assert!(!admit(limiter, &request).await.is_admitted());
    let reset = limiter.quota(KEY_A, &hour, QuotaChange::Reset).await.unwrap();
    assert_eq!((reset.used, reset.remaining), (0, 2));
    assert!(admit(limiter, &request).await.is_admitted());
    let customer = quota(5, Period::Hour, "2026-01-01T00:00:00Z");
    let acme = Owner::Customer { id: "acme" };
    let untouched = limiter.quota(acme, &customer, QuotaChange::Reset).await.unwrap();
    assert_eq!((untouched.used, untouched.remaining), (0, 5));
}

async fn a_cost_is_taken_from_every_limit_or_from_none(limiter: &impl Limiter, _clock: &ManualClock) {
    let ten = rate(10, Duration::from_secs(10), 10);
    let day = quota(10, Period::Day, "2026-01-01T00:00:00Z");
    let four = Check {
        cost: NonZeroU32::new(4).unwrap(),
        ..check(subject("key_a", Some(&ten), Some(&day)))
    };
    for left in [6, 2] {
        let verdict = admit(limiter, &four).await;
        assert!(verdict.is_admitted());
        assert_eq!(remaining(&verdict, LimitKind::KeyRate), left);
        assert_eq!(remaining(&verdict, LimitKind::KeyQuota), left);
    }
    let refused = admit(limiter, &four).await;
    assert!(!refused.is_admitted());
    assert_eq!(
        refused_by(&refused),
        Some(LimitKind::KeyQuota),
        "the quota lifts last"
    );
    assert_eq!(remaining(&refused, LimitKind::KeyQuota), 2);
    let two = Check {
        cost: NonZeroU32::new(2).unwrap(),
        ..four
    };
    let verdict = admit(limiter, &two).await;
    assert!(verdict.is_admitted(), "{verdict:?}");
    assert_eq!(
        limiter.quota(KEY_A, &day, QuotaChange::Read).await.unwrap().used,
        10
    );
}

async fn credits_that_never_renew_are_refused_without_a_retry(limiter: &impl Limiter, clock: &ManualClock) {
    let credits = quota(3, Period::None, "2026-01-01T00:00:00Z");
    let request = check(subject("key_a", None, Some(&credits)));
    for _ in 0..3 {
        assert!(admit(limiter, &request).await.is_admitted());
    }
    clock.advance(Duration::from_secs(400 * 86_400));
    let refused = admit(limiter, &request).await;
    let why = refused.refused.expect("no credits left");
    assert_eq!(
        (why.by, why.retry_after, why.resets_at),
        (LimitKind::KeyQuota, None, None)
    );
    assert_eq!(refused.policy(LimitKind::KeyQuota).unwrap().reset, None);
    limiter.quota(KEY_A, &credits, QuotaChange::Add(2)).await.unwrap();
    for _ in 0..2 {
        assert!(admit(limiter, &request).await.is_admitted());
    }
    assert!(!admit(limiter, &request).await.is_admitted());
}

// --- the backends ------------------------------------------------------------------------

/// Runs every case on a fresh limiter from `fresh` (async, on the case's clock) and a fresh
/// clock at [`START`].
macro_rules! suite {
    ($fresh:expr) => {
        suite!(
            $fresh,
            a_burst_is_admitted_at_once_then_refused,
            a_bucket_refills_one_request_per_interval,
            a_quota_renews_exactly_at_its_periods_edge,
            a_limit_that_refuses_spends_nothing_from_the_others,
            a_top_up_adds_to_this_period_only,
            a_reset_starts_the_period_afresh,
            a_cost_is_taken_from_every_limit_or_from_none,
            credits_that_never_renew_are_refused_without_a_retry,
        )
    };
    ($fresh:expr, $($case:ident),+ $(,)?) => {
        $(
            let clock = ManualClock::new(at(START));
            let limiter = $fresh(&clock).await;
            eprintln!("{}: {}", stringify!($fresh), stringify!($case));
            $case(&*limiter, &clock).await;
        )+
    };
}

#[tokio::test]
async fn the_local_limiter_passes_the_suite() {
    let local = async |clock: &ManualClock| Arc::new(LocalLimits::with_clock(clock.clone()));
    suite!(local);
}

/// The local limiter of a gateway without Redis: quotas leased from its store, blocks of a
/// tenth (so the cases' small quotas lease a unit at a time, and a larger one several times).
struct Leasing {
    shared: Arc<Shared>,
    leases: Arc<QuotaLeases>,
    _dir: tempfile::TempDir,
}

impl Leasing {
    async fn new(clock: &ManualClock) -> Arc<Self> {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{}\n[quotas]\nlease_block = 0.1\n",
            STANDARD.replace("{upstream}", "127.0.0.1:9")
        );
        let config = Arc::new(keygate::config::parse(&text, dir.path()).unwrap());
        let store: Arc<dyn KeyStore> = Arc::new(SqliteStore::create(&dir.path().join("keys.db")).unwrap());
        let clock: Clock = Arc::new(clock.clone());
        let metrics = Metrics::new();
        let (link, wants) = LeaseLink::new(config.quotas.lease_block);
        let shared = Shared::new(
            config.clone(),
            Arc::default(),
            Hasher::unkeyed(),
            metrics.clone(),
            clock.clone(),
        )
        .with_quota_leases(link);
        let shared = Arc::new(shared);
        let warner = Arc::new(Warner::new(store.clone(), metrics, clock.clone(), false));
        let leases = Arc::new(QuotaLeases::new(
            store,
            shared.clone(),
            warner,
            &config.quotas,
            clock,
        ));
        tokio::spawn(leases.clone().run(wants));
        Arc::new(Leasing {
            shared,
            leases,
            _dir: dir,
        })
    }
}

impl Limiter for Leasing {
    async fn admit(&self, check: &Check<'_>) -> Result<Verdict, Unavailable> {
        Ok(self.shared.admit_locally(check).await)
    }

    async fn quota(
        &self,
        owner: Owner<'_>,
        spec: &QuotaSpec,
        change: QuotaChange,
    ) -> Result<QuotaUse, Unavailable> {
        let owner = match owner {
            Owner::Key { seq, id, .. } => LeaseOwner::Key { seq, id: id.into() },
            Owner::Customer { id } => LeaseOwner::Customer { id: id.into() },
        };
        self.leases
            .change(owner, *spec, change)
            .await
            .map_err(|_| Unavailable)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leasing_limiter_passes_the_suite() {
    let leasing = async |clock: &ManualClock| Leasing::new(clock).await;
    suite!(leasing);
}

#[tokio::test]
async fn the_redis_limiter_passes_the_suite() {
    let Some(url) = redis_url() else { return };
    let fallbacks = prometheus::IntCounter::new("f", "f").unwrap();
    let redis = async |clock: &ManualClock| {
        // A key prefix of its own for each case.
        let prefix = format!("keygate-test:{:032x}:", rand::random::<u128>());
        let settings = RedisSettings {
            url: &url,
            prefix: &prefix,
            timeout: Duration::from_secs(2),
        };
        let limits = SharedLimits::new(&settings, fallbacks.clone())
            .unwrap()
            .with_clock(Arc::new(clock.clone()), RateClock::Caller);
        let limits = Arc::new(limits);
        assert!(limits.connect(Duration::from_secs(5)).await, "Redis answers");
        limits
    };
    suite!(redis);
    assert_eq!(fallbacks.get(), 0, "every check was decided in Redis");
}
