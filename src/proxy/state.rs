//! What the hot path reads (data plane): the config snapshot, swapped whole on reload, and the
//! long-lived shared state (key table, limits, usage counters, metrics) that outlives reloads.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use governor::clock::DefaultClock;
use http::header::{HeaderName, HeaderValue};
use http::StatusCode;
use prometheus::{Histogram, IntCounter, IntCounterVec};

use super::analytics::Analytics;
use super::credentials::Schemes;
use super::customers::CustomerMap;
use super::error::{AuthFailure, Denial, QuotaScope, RefusalHeaders};
use super::intercept::Intercept;
use super::limits::{
    Check, GatewayClock, IpThrottle, KeyAsk, KeyLimits, LeaseLink, QuotaWarnings, Verdict, LEASE_WAIT,
};
use super::router::Router;
use super::shared_limits::SharedLimits;
use super::table::{AuthKey, KeyTable};
use super::tunnel::Tunnels;
use super::upstream::UpstreamClient;
use super::usage::UsageCounters;
use crate::config::{Config, RoutePermissions};
use crate::core::clock::Clock;
use crate::core::environment::Environment;
use crate::core::key::RateLimitSpec;
use crate::core::secret::Hasher;
use crate::telemetry::recent::Recent;
use crate::telemetry::traces::Traces;
use crate::telemetry::Metrics;

/// One route, ready for the hot path, with its metric handles resolved once.
pub struct RouteState {
    pub name: String,
    pub environment: Environment,
    pub upstream: usize,
    pub permissions: Option<RoutePermissions>,
    pub has_customer_param: bool,
    pub forward_credentials: bool,
    pub preserve_host: bool,
    pub allow_method_override: bool,
    pub duration: Histogram,
    pub rate_limited: IntCounter,
    /// `keygate_quota_exceeded_total` by [`QuotaScope`] (as its index).
    pub quota_exceeded: [IntCounter; 2],
    /// What a request takes from its key's limits.
    pub cost: NonZeroU32,
    pub requests: StatusCounters,
    /// Its name's id in [`Snapshot::analytics`].
    pub analytics_id: u32,
}

/// One upstream, ready for the hot path: its client (and connection pool) and its
/// `keygate_upstream_duration_seconds` series.
pub struct UpstreamState {
    pub client: UpstreamClient,
    pub duration: Histogram,
}

/// `keygate_requests_total` of one route, a counter per status code, each looked up in the
/// registry the first time that status is answered and never again.
pub struct StatusCounters {
    family: IntCounterVec,
    route: String,
    environment: &'static str,
    by_status: Box<[OnceLock<IntCounter>]>,
}

impl StatusCounters {
    pub fn new(family: &IntCounterVec, route: &str, environment: &'static str) -> Self {
        StatusCounters {
            family: family.clone(),
            route: route.to_owned(),
            environment,
            // Status codes are three digits: 100 to 999.
            by_status: (100..1000).map(|_| OnceLock::new()).collect(),
        }
    }

    pub fn get(&self, status: StatusCode) -> &IntCounter {
        self.by_status[usize::from(status.as_u16()) - 100].get_or_init(|| {
            self.family
                .with_label_values(&[&self.route, self.environment, status.as_str()])
        })
    }
}

/// Everything the config decides, swapped whole when the config is reloaded.
pub struct Snapshot {
    pub config: Arc<Config>,
    pub router: Router,
    pub routes: Vec<RouteState>,
    pub upstreams: Vec<UpstreamState>,
    pub schemes: Schemes,
    /// `auth.header`, stripped before forwarding even when its scheme is off.
    pub key_header: HeaderName,
    /// What refusals' headers are cloned from, with the realm's challenge.
    pub refusal_headers: RefusalHeaders,
    pub default_limit: RateLimitSpec,
    pub ip_throttle: IpThrottle,
    /// The same allowance for `POST /v1/keys/verify`, per admin token kind and client IP, so the
    /// admin API is no unthrottled oracle for guessing keys.
    pub verify_throttle: IpThrottle<DefaultClock, (&'static str, IpAddr)>,
    /// `keygate_requests_total` of requests that matched no route.
    pub unrouted: StatusCounters,
    /// The last `logs.recent` access records. A reload that keeps the size keeps the records.
    pub recent: Arc<Recent>,
    /// Requests by key, route, status and hour, kept across reloads.
    pub analytics: Arc<Analytics>,
}

impl Snapshot {
    /// The snapshot of `config`; `previous`, the one it replaces, lends it the upstream pools
    /// that carry on unchanged.
    pub fn new(config: Arc<Config>, metrics: &Metrics, previous: Option<&Snapshot>) -> Self {
        let analytics = previous.map_or_else(Arc::default, |p| p.analytics.clone());
        let routes = config
            .routes
            .iter()
            .map(|route| RouteState {
                name: route.name.clone(),
                environment: route.environment,
                upstream: route.upstream,
                permissions: route.permissions.clone(),
                has_customer_param: route.customer_param.is_some(),
                forward_credentials: route.forward_credentials,
                preserve_host: route.preserve_host,
                allow_method_override: route.allow_method_override,
                duration: metrics.request_duration.with_label_values(&[&route.name]),
                rate_limited: metrics.rate_limited.with_label_values(&[&route.name]),
                quota_exceeded: QuotaScope::ALL.map(|scope| {
                    metrics
                        .quota_exceeded
                        .with_label_values(&[&route.name, scope.as_str()])
                }),
                cost: route.cost,
                requests: StatusCounters::new(&metrics.requests, &route.name, route.environment.as_str()),
                analytics_id: analytics.route_id(&route.name),
            })
            .collect();
        let upstreams = config
            .upstreams
            .iter()
            .map(|upstream| {
                let previous = previous.and_then(|p| {
                    p.upstreams
                        .iter()
                        .find(|state| state.client.name == upstream.name)
                });
                UpstreamState {
                    client: UpstreamClient::new(upstream, previous.map(|state| &state.client)),
                    duration: metrics.upstream_duration.with_label_values(&[&upstream.name]),
                }
            })
            .collect();
        let auth = &config.auth;
        let challenge = format!("Basic realm=\"{}\"", auth.realm);
        Snapshot {
            router: Router::new(&config.routes),
            routes,
            upstreams,
            schemes: Schemes {
                basic: auth.basic,
                bearer: auth.bearer,
                header: auth.header_scheme.then(|| auth.header.clone()),
            },
            key_header: auth.header.clone(),
            refusal_headers: RefusalHeaders::new(
                HeaderValue::from_str(&challenge)
                    .unwrap_or_else(|_| HeaderValue::from_static("Basic realm=\"keygate\"")),
            ),
            default_limit: config.rate_limit.default,
            ip_throttle: IpThrottle::new(auth.failed_per_ip),
            verify_throttle: IpThrottle::new(auth.failed_per_ip),
            unrouted: StatusCounters::new(&metrics.requests, "none", "none"),
            recent: match previous {
                Some(previous) if previous.recent.capacity() == config.logs.recent => previous.recent.clone(),
                _ => Arc::new(Recent::new(config.logs.recent)),
            },
            analytics,
            config,
        }
    }
}

/// A counter family's series for a fixed set of label values, looked up in the registry once.
/// They exist, at 0, from the start, as Prometheus advises for series that may appear later.
pub struct Series {
    family: IntCounterVec,
    by_label: Vec<(&'static str, IntCounter)>,
}

impl Series {
    pub fn new(family: &IntCounterVec, labels: &[&'static str]) -> Self {
        Series {
            family: family.clone(),
            by_label: labels
                .iter()
                .map(|&label| (label, family.with_label_values(&[label])))
                .collect(),
        }
    }

    pub fn inc(&self, label: &'static str) {
        // Callers pass the very `&'static str`s the series were made with: found by address,
        // with no text compared; a label from elsewhere is then found by its text.
        let by_address = self
            .by_label
            .iter()
            .find(|(known, _)| std::ptr::eq(*known, label));
        let found = by_address.or_else(|| self.by_label.iter().find(|(known, _)| *known == label));
        match found {
            Some((_, counter)) => counter.inc(),
            None => self.family.with_label_values(&[label]).inc(),
        }
    }
}

/// A refusal enum's reasons, and the one reason outside it.
fn reasons<const N: usize>(known: [&'static str; N], other: &'static str) -> Vec<&'static str> {
    known.into_iter().chain([other]).collect()
}

/// How fresh the key table is, as the sync last reported.
#[derive(Debug, Default)]
pub struct SyncStatus {
    loaded: AtomicBool,
    /// Unix milliseconds of the last successful sync.
    last_success_ms: AtomicI64,
    /// Why the last sync failed, until one succeeds (for `/readyz`; never read on the hot path).
    last_error: Mutex<Option<String>>,
    /// The table came from the local snapshot, not (yet) from the store.
    from_snapshot: AtomicBool,
}

impl SyncStatus {
    pub fn record_success(&self, now_ms: i64) {
        self.last_success_ms.store(now_ms, Ordering::Release);
        self.loaded.store(true, Ordering::Release);
        self.from_snapshot.store(false, Ordering::Release);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The table was loaded from the local snapshot reflecting the sync at `synced_ms`: its age
    /// counts from then (`store.max_staleness` included).
    pub fn record_snapshot(&self, synced_ms: i64) {
        self.last_success_ms.store(synced_ms, Ordering::Release);
        self.from_snapshot.store(true, Ordering::Release);
        self.loaded.store(true, Ordering::Release);
    }

    /// Whether the table came from the local snapshot and the store has not answered since.
    pub fn from_snapshot(&self) -> bool {
        self.from_snapshot.load(Ordering::Acquire)
    }

    pub fn record_failure(&self, why: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    /// Why the last sync failed, if it did.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether the key table has been loaded once.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub fn last_success_ms(&self) -> i64 {
        self.last_success_ms.load(Ordering::Acquire)
    }
}

/// The hot path's whole world.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub keys: Arc<KeyTable>,
    /// The customers' limits beside the key table, filled by the key sync.
    pub customers: Arc<CustomerMap>,
    /// On the gateway's clock, so tests move it instead of sleeping.
    pub key_limits: KeyLimits<GatewayClock>,
    /// The fleet-wide limiter of `rate_limit.backend = "redis"`; `None`: limits are local.
    pub shared_limits: Option<Arc<SharedLimits>>,
    /// Where admitted checks note quota warnings; `None`: no `warn_at`, or noted elsewhere.
    pub quota_warnings: Option<QuotaWarnings>,
    pub usage: Arc<UsageCounters>,
    pub metrics: Metrics,
    /// `keygate_auth_failures_total` by reason.
    pub auth_failures: Series,
    /// `keygate_denied_total` by reason.
    pub denied: Series,
    pub sync: Arc<SyncStatus>,
    pub clock: Clock,
    /// The open upgrade tunnels, closed at the end of the shutdown grace.
    pub tunnels: Tunnels,
    /// The span exporter of `[tracing] otlp_endpoint`; `None`: no spans.
    pub traces: Option<Traces>,
    /// Paths answered before routing (`[leaks]` endpoints); `None`: every request is routed.
    pub intercept: Option<Arc<dyn Intercept>>,
    hasher: Hasher,
}

impl Shared {
    pub fn new(
        config: Arc<Config>,
        keys: Arc<KeyTable>,
        hasher: Hasher,
        metrics: Metrics,
        clock: Clock,
    ) -> Self {
        Shared {
            hasher,
            snapshot: ArcSwap::from_pointee(Snapshot::new(config, &metrics, None)),
            keys,
            customers: Arc::default(),
            key_limits: KeyLimits::with_clock(GatewayClock(clock.clone())),
            shared_limits: None,
            quota_warnings: None,
            usage: Arc::default(),
            auth_failures: Series::new(
                &metrics.auth_failures,
                &reasons(AuthFailure::ALL.map(AuthFailure::as_str), "ip_throttled"),
            ),
            denied: Series::new(
                &metrics.denied,
                &reasons(Denial::ALL.map(Denial::as_str), "permission"),
            ),
            metrics,
            sync: Arc::default(),
            clock,
            tunnels: Tunnels::default(),
            traces: None,
            intercept: None,
        }
    }

    /// With the span exporter of `[tracing]`.
    pub fn with_traces(self, traces: Option<Traces>) -> Self {
        Shared { traces, ..self }
    }

    /// With paths answered before routing.
    pub fn with_intercept(self, intercept: Arc<dyn Intercept>) -> Self {
        Shared {
            intercept: Some(intercept),
            ..self
        }
    }

    /// The intercept that answers a request for `path`, if one claims it.
    pub fn intercepting(&self, path: &str) -> Option<&Arc<dyn Intercept>> {
        self.intercept.as_ref().filter(|intercept| intercept.claims(path))
    }

    /// With the shared limiter of `rate_limit.backend = "redis"`.
    pub fn with_shared_limits(self, limits: Arc<SharedLimits>) -> Self {
        Shared {
            shared_limits: Some(limits),
            ..self
        }
    }

    /// With quotas spent out of blocks leased through `link`.
    pub fn with_quota_leases(self, link: LeaseLink) -> Self {
        Shared {
            key_limits: self.key_limits.with_leases(link),
            ..self
        }
    }

    /// With quota warnings noted from the limiter's verdicts.
    pub fn with_quota_warnings(self, warnings: QuotaWarnings) -> Self {
        Shared {
            quota_warnings: Some(warnings),
            ..self
        }
    }

    /// Step 8 for a key, when local: decided at once at `now` (the request's reading of the
    /// gateway's clock), its quota warnings noted; `None` when a quota lease is pending (the
    /// request then waits in [`Shared::limit`]).
    pub fn limit_locally(&self, key: &AuthKey, ask: &KeyAsk, now: jiff::Timestamp) -> Option<Verdict> {
        let check = ask.check(key);
        let verdict = self.key_limits.try_admit_at(&check, now).ok()?;
        self.note_warnings(&check, &verdict);
        Some(verdict)
    }

    fn note_warnings(&self, check: &Check<'_>, verdict: &Verdict) {
        if let Some(warnings) = &self.quota_warnings {
            warnings.note(check, verdict);
        }
    }

    /// Step 8 for a key: its shared limits when there is a shared backend that answers in
    /// time, its local ones otherwise, waiting up to [`LEASE_WAIT`] for a quota lease. The
    /// request path calls it only with a shared backend or a pending lease, and decides
    /// locally without awaiting anything otherwise.
    pub async fn limit(&self, key: &AuthKey, ask: &KeyAsk) -> Verdict {
        let check = ask.check(key);
        if let Some(shared) = &self.shared_limits {
            if let Some(verdict) = shared.admit(&check).await {
                self.note_warnings(&check, &verdict);
                return verdict;
            }
        }
        let verdict = self.admit_locally(&check).await;
        self.note_warnings(&check, &verdict);
        verdict
    }

    /// A check on the local limiter, waiting for a quota lease when one is pending.
    pub async fn admit_locally(&self, check: &Check<'_>) -> Verdict {
        match self.key_limits.lease_link() {
            Some(link) => self.wait_for_lease(link, check).await,
            None => self.key_limits.admit(check),
        }
    }

    /// The check, retried as lease answers come in, until [`LEASE_WAIT`] has passed; then
    /// decided with what there is (a provisional block, see `limits::leased`).
    async fn wait_for_lease(&self, link: &LeaseLink, check: &Check<'_>) -> Verdict {
        let deadline = tokio::time::Instant::now() + LEASE_WAIT;
        loop {
            let answered = link.answered();
            tokio::pin!(answered);
            answered.as_mut().enable();
            if let Ok(verdict) = self.key_limits.try_admit(check) {
                return verdict;
            }
            if tokio::time::timeout_at(deadline, answered).await.is_err() {
                return self.key_limits.admit(check);
            }
        }
    }

    /// What step 8 asks of `key` at `cost`: its own rate limit (or the default) and quota, and
    /// its customer's limits when the customer has some.
    pub fn ask(&self, snapshot: &Snapshot, key: &AuthKey, cost: std::num::NonZeroU32) -> KeyAsk {
        KeyAsk {
            rate: key.rate_limit().copied().unwrap_or(snapshot.default_limit),
            cost,
            customer: key
                .customer_id
                .as_ref()
                .and_then(|id| self.customers.get(id.as_bytes())),
        }
    }

    pub fn hasher(&self) -> &Hasher {
        &self.hasher
    }

    /// Counts an authenticated request of `key` (`previous`: with its pre-regeneration secret).
    pub fn record_use(&self, key: &AuthKey, previous: bool, now: i64, per_key_metric: bool) {
        self.usage.record(key.seq, previous, now, per_key_metric);
    }

    /// The per-key analytics counts, for the usage flush.
    pub fn analytics(&self) -> Arc<Analytics> {
        self.snapshot.load().analytics.clone()
    }

    /// How old the key table is, in milliseconds, when that is past `store.max_staleness`
    /// (the gateway then fails closed); `None` while it is fresh enough or without a limit.
    pub fn staleness(&self, config: &Config) -> Option<i64> {
        let max = config.store.max_staleness?;
        let age_ms = self.clock.now().as_millisecond() - self.sync.last_success_ms();
        (age_ms > max.as_millis() as i64).then_some(age_ms)
    }

    /// Installs a new config; requests already running finish with the old one.
    pub fn reload(&self, config: Arc<Config>) {
        let previous = self.snapshot.load();
        let next = Snapshot::new(config, &self.metrics, Some(&previous));
        self.snapshot.store(Arc::new(next));
    }
}
