//! Every metric of SPEC section 6, in one owned registry (shared by both planes). Owned, not
//! global, so two gateways in one test process count apart. Label values come from bounded sets:
//! route and upstream names, reasons, status codes, idle-warning thresholds, key ids (switchable).

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Buckets for request and upstream latency, in seconds: 100 µs to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0,
];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub auth_failures: IntCounterVec,
    pub denied: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub key_requests: IntCounterVec,
    pub keys: IntGaugeVec,
    pub key_table_revision: IntGauge,
    pub key_table_last_sync: Gauge,
    pub store_sync_errors: IntCounter,
    /// Times the store file was found replaced under a running gateway and reopened.
    pub store_reopened: IntCounter,
    /// Secrets the key table refused because another key holds the same hash.
    pub key_hash_conflicts: IntCounter,
    /// Failed upstream exchanges by `upstream` and `kind`: the values of
    /// [`crate::proxy::error::UpstreamFailure::as_str`].
    pub upstream_errors: IntCounterVec,
    /// Rate-limit checks decided locally because the shared backend (Redis) did not answer.
    pub rate_limit_fallback: IntCounter,
    pub usage_flush_errors: IntCounter,
    pub build_info: IntGaugeVec,
    pub idle_warnings: IntCounterVec,
    pub idle_revocations: IntCounter,
    pub webhook_deliveries: IntCounter,
    pub webhook_failures: IntCounter,
    pub webhook_abandoned: IntCounter,
    /// Log lines dropped because the log queue was full (stdout too slow).
    pub log_lines_dropped: IntCounter,
    /// Config reloads by `result`: `success` or `failure` (the file or its TLS pair refused).
    pub config_reloads: IntCounterVec,
    /// Unix time of the last config load that took effect (the start counts as one).
    pub config_last_reload_success: Gauge,
    /// 1 while `/readyz` answers 200, 0 otherwise; set at scrape time.
    pub ready: IntGauge,
    /// 1 while rate limits are shared through Redis, 0 while local (by design or in fallback).
    pub rate_limit_shared: IntGauge,
    /// Unix time the served TLS certificate expires; exported only with `server.tls`, see
    /// [`Metrics::tls_certificate_expires`].
    tls_certificate_expiry: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::new(name, help).expect("static metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Gauge {
    let metric = Gauge::new(name, help).expect("static metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

fn int_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).expect("static metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

/// `keygate_config_reloads_total`, with both results at 0 from the start, so that a rule on
/// failures sees the series before the first one.
fn reloads(registry: &Registry) -> IntCounterVec {
    let metric = counter_vec(
        registry,
        "keygate_config_reloads_total",
        "Config reloads (SIGHUP) by result: success, or failure (refused, the running config kept)",
        &["result"],
    );
    for result in ["success", "failure"] {
        metric.with_label_values(&[result]);
    }
    metric
}

fn histogram_vec(registry: &Registry, name: &str, help: &str, label: &str) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    let metric = HistogramVec::new(opts, &[label]).expect("static metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let keys = IntGaugeVec::new(
            Opts::new("keygate_keys", "Keys in the key table by environment and status"),
            &["environment", "status"],
        )
        .expect("static metric definition");
        let key_table_revision = IntGauge::new(
            "keygate_key_table_revision",
            "Store revision the key table reflects",
        )
        .expect("static metric definition");
        let key_table_last_sync = Gauge::new(
            "keygate_key_table_last_sync_timestamp_seconds",
            "Unix time of the last successful key sync",
        )
        .expect("static metric definition");
        let store_sync_errors = IntCounter::new("keygate_store_sync_errors_total", "Failed key syncs")
            .expect("static metric definition");
        let usage_flush_errors = IntCounter::new(
            "keygate_usage_flush_errors_total",
            "Failed writes of key usage to the store",
        )
        .expect("static metric definition");
        let build_info = IntGaugeVec::new(Opts::new("keygate_build_info", "Always 1"), &["version"])
            .expect("static metric definition");
        for metric in [
            Box::new(keys.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(key_table_revision.clone()),
            Box::new(key_table_last_sync.clone()),
            Box::new(store_sync_errors.clone()),
            Box::new(usage_flush_errors.clone()),
            Box::new(build_info.clone()),
        ] {
            registry.register(metric).expect("metric names are unique");
        }
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        // process_resident_memory_bytes, process_open_fds, process_cpu_seconds_total, ...
        // (Linux; read from /proc at scrape time).
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process metric names are unique");
        Metrics {
            requests: counter_vec(
                r,
                "keygate_requests_total",
                "Requests answered",
                &["route", "environment", "status"],
            ),
            request_duration: histogram_vec(
                r,
                "keygate_request_duration_seconds",
                "Time to answer a request",
                "route",
            ),
            upstream_duration: histogram_vec(
                r,
                "keygate_upstream_duration_seconds",
                "Time from forwarding to the upstream's response head",
                "upstream",
            ),
            auth_failures: counter_vec(
                r,
                "keygate_auth_failures_total",
                "Failed authentications",
                &["reason"],
            ),
            denied: counter_vec(
                r,
                "keygate_denied_total",
                "Authenticated requests refused",
                &["reason"],
            ),
            rate_limited: counter_vec(
                r,
                "keygate_rate_limited_total",
                "Requests over their key's limit",
                &["route"],
            ),
            key_requests: counter_vec(
                r,
                "keygate_key_requests_total",
                "Admitted requests per key",
                &["key_id", "environment"],
            ),
            upstream_errors: counter_vec(
                r,
                "keygate_upstream_errors_total",
                "Failed upstream exchanges",
                &["upstream", "kind"],
            ),
            idle_warnings: counter_vec(
                r,
                "keygate_idle_warnings_total",
                "Idle-expiry warnings issued, by how long before revocation",
                &["threshold"],
            ),
            rate_limit_fallback: counter(
                r,
                "keygate_rate_limit_fallback_total",
                "Rate-limit checks decided locally because Redis did not answer in time",
            ),
            idle_revocations: counter(r, "keygate_idle_revocations_total", "Keys revoked for idleness"),
            webhook_deliveries: counter(
                r,
                "keygate_webhook_deliveries_total",
                "Lifecycle webhooks the receiver accepted",
            ),
            webhook_failures: counter(
                r,
                "keygate_webhook_failures_total",
                "Failed lifecycle webhook attempts",
            ),
            webhook_abandoned: counter(
                r,
                "keygate_webhook_abandoned_total",
                "Lifecycle webhooks given up after the last retry",
            ),
            store_reopened: counter(
                r,
                "keygate_store_reopened_total",
                "Times the store file was replaced under the gateway and opened again",
            ),
            key_hash_conflicts: counter(
                r,
                "keygate_key_hash_conflicts_total",
                "Key secrets not admitted because another key holds the same hash",
            ),
            log_lines_dropped: counter(
                r,
                "keygate_log_lines_dropped_total",
                "Log lines dropped because stdout could not keep up",
            ),
            config_reloads: reloads(r),
            config_last_reload_success: gauge(
                r,
                "keygate_config_last_reload_success_timestamp_seconds",
                "Unix time of the last config load that took effect (the start included)",
            ),
            ready: int_gauge(
                r,
                "keygate_ready",
                "1 while this replica answers /readyz with 200 (key table loaded and fresh, not draining)",
            ),
            rate_limit_shared: int_gauge(
                r,
                "keygate_rate_limit_shared",
                "1 while key rate limits are shared through Redis; 0 while they are decided locally",
            ),
            tls_certificate_expiry: Gauge::new(
                "keygate_tls_certificate_expiry_timestamp_seconds",
                "Unix time the TLS certificate the proxy listener serves expires",
            )
            .expect("static metric definition"),
            keys,
            key_table_revision,
            key_table_last_sync,
            store_sync_errors,
            usage_flush_errors,
            build_info,
            registry,
        }
    }

    /// Records the expiry (Unix seconds) of the certificate now served, and exports the gauge
    /// from the first call on: a gateway without TLS has no certificate to alert on.
    pub fn tls_certificate_expires(&self, not_after: i64) {
        if self.tls_certificate_expiry.get() == 0.0 {
            // Registered once: a second attempt is refused by the registry, harmlessly.
            let _ = self
                .registry
                .register(Box::new(self.tls_certificate_expiry.clone()));
        }
        self.tls_certificate_expiry.set(not_after as f64);
    }

    /// Counts a reload; a successful one also sets the time of the last success to `now`.
    pub fn config_reloaded(&self, success: bool, now: jiff::Timestamp) {
        let result = if success { "success" } else { "failure" };
        self.config_reloads.with_label_values(&[result]).inc();
        if success {
            self.config_loaded(now);
        }
    }

    /// The time of the last config load that took effect (also set at start).
    pub fn config_loaded(&self, now: jiff::Timestamp) {
        self.config_last_reload_success
            .set(now.as_millisecond() as f64 / 1000.0);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into memory does not fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
