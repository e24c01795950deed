//! Every metric of SPEC section 6, in one owned registry (shared by both planes). Owned, not
//! global, so two gateways in one test process count apart. Label values come from bounded sets:
//! route and upstream names, reasons, status codes, idle-warning thresholds, key ids (switchable).

use std::sync::Arc;

use prometheus::core::Collector;
use prometheus::proto::MetricType;
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
    /// Every collector the registry may export, the one registered on demand included: what
    /// [`Metrics::catalogue`] describes.
    declared: Arc<Vec<Box<dyn Collector>>>,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub auth_failures: IntCounterVec,
    pub denied: IntCounterVec,
    pub rate_limited: IntCounterVec,
    /// Requests refused because a quota was spent, by `route` and `scope` (`key`, `customer`).
    pub quota_exceeded: IntCounterVec,
    pub key_requests: IntCounterVec,
    pub keys: IntGaugeVec,
    pub key_table_revision: IntGauge,
    pub key_table_last_sync: Gauge,
    /// Live replicas on the store by `state`: `current` or `lagging` (SPEC 12), as this
    /// replica's last heartbeat read them.
    pub fleet_replicas: IntGaugeVec,
    /// Live replicas whose config digest differs from the one most replicas run.
    pub fleet_config_mismatch: IntGauge,
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
    /// Quota warnings emitted, by `scope` (`key`, `customer`) and `threshold` (a `warn_at` share).
    pub quota_warnings: IntCounterVec,
    pub idle_revocations: IntCounter,
    pub webhook_deliveries: IntCounter,
    pub webhook_failures: IntCounter,
    pub webhook_abandoned: IntCounter,
    /// Leak reports by `source` (`github`, `gitlab`, `api`, `cli`) and `result`: the values
    /// of `control::leaks::Outcome::as_str`, and `unauthorized` for a delivery refused whole.
    pub leak_reports: IntCounterVec,
    /// Log lines dropped because the log queue was full (stdout too slow).
    pub log_lines_dropped: IntCounter,
    /// Fleet credentials refused by `reason`: the values of
    /// `control::replicas::credential::Refused::name`.
    pub fleet_credential_refusals: IntCounterVec,
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

/// A registry being filled, and every collector declared to it.
struct Registrar {
    registry: Registry,
    declared: Vec<Box<dyn Collector>>,
}

impl Registrar {
    /// Registers `metric` and declares it.
    fn register<C: Collector + Clone + 'static>(&mut self, metric: C) -> C {
        self.registry
            .register(Box::new(metric.clone()))
            .expect("metric names are unique");
        self.declare(metric)
    }

    /// Declares `metric` without registering it: it is exported once registered later.
    fn declare<C: Collector + Clone + 'static>(&mut self, metric: C) -> C {
        self.declared.push(Box::new(metric.clone()));
        metric
    }

    fn counter_vec(&mut self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition"))
    }

    fn counter(&mut self, name: &str, help: &str) -> IntCounter {
        self.register(IntCounter::new(name, help).expect("static metric definition"))
    }

    fn gauge(&mut self, name: &str, help: &str) -> Gauge {
        self.register(Gauge::new(name, help).expect("static metric definition"))
    }

    fn int_gauge(&mut self, name: &str, help: &str) -> IntGauge {
        self.register(IntGauge::new(name, help).expect("static metric definition"))
    }

    fn int_gauge_vec(&mut self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition"))
    }

    fn histogram_vec(&mut self, name: &str, help: &str, label: &str) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
        self.register(HistogramVec::new(opts, &[label]).expect("static metric definition"))
    }

    /// `keygate_config_reloads_total`, with both results at 0 from the start, so that a rule
    /// on failures sees the series before the first one.
    fn reloads(&mut self) -> IntCounterVec {
        let metric = self.counter_vec(
            "keygate_config_reloads_total",
            "Config reloads (SIGHUP) by result: success, or failure (refused, the running config kept)",
            &["result"],
        );
        for result in ["success", "failure"] {
            metric.with_label_values(&[result]);
        }
        metric
    }
}

impl Registrar {
    /// `keygate_fleet_replicas`, with both states at 0 from the start.
    fn fleet_replicas(&mut self) -> IntGaugeVec {
        let metric = self.int_gauge_vec(
            "keygate_fleet_replicas",
            "Live replicas on the store by state: current, or lagging (their key table behind the others')",
            &["state"],
        );
        for state in ["current", "lagging"] {
            metric.with_label_values(&[state]);
        }
        metric
    }
}

/// One metric as `docs/metrics.md` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    pub name: String,
    /// `counter`, `gauge` or `histogram`.
    pub kind: &'static str,
    pub labels: Vec<String>,
    pub help: String,
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registrar {
            registry: Registry::new(),
            declared: Vec::new(),
        };
        let build_info = r.int_gauge_vec("keygate_build_info", "Always 1", &["version"]);
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        // process_resident_memory_bytes, process_open_fds, process_cpu_seconds_total, ...
        // (Linux; read from /proc at scrape time). Declared twice: the registry's own is boxed.
        #[cfg(target_os = "linux")]
        {
            use prometheus::process_collector::ProcessCollector;
            r.registry
                .register(Box::new(ProcessCollector::for_self()))
                .expect("process metric names are unique");
            r.declared.push(Box::new(ProcessCollector::for_self()));
        }
        Metrics {
            requests: r.counter_vec(
                "keygate_requests_total",
                "Requests answered",
                &["route", "environment", "status"],
            ),
            request_duration: r.histogram_vec(
                "keygate_request_duration_seconds",
                "Time to answer a request",
                "route",
            ),
            upstream_duration: r.histogram_vec(
                "keygate_upstream_duration_seconds",
                "Time from forwarding to the upstream's response head",
                "upstream",
            ),
            auth_failures: r.counter_vec(
                "keygate_auth_failures_total",
                "Failed authentications",
                &["reason"],
            ),
            denied: r.counter_vec(
                "keygate_denied_total",
                "Authenticated requests refused",
                &["reason"],
            ),
            rate_limited: r.counter_vec(
                "keygate_rate_limited_total",
                "Requests over their key's limit",
                &["route"],
            ),
            quota_exceeded: r.counter_vec(
                "keygate_quota_exceeded_total",
                "Requests refused because a quota was spent",
                &["route", "scope"],
            ),
            key_requests: r.counter_vec(
                "keygate_key_requests_total",
                "Admitted requests per key",
                &["key_id", "environment"],
            ),
            keys: r.int_gauge_vec(
                "keygate_keys",
                "Keys in the key table by environment and status",
                &["environment", "status"],
            ),
            key_table_revision: r.int_gauge(
                "keygate_key_table_revision",
                "Store revision the key table reflects",
            ),
            key_table_last_sync: r.gauge(
                "keygate_key_table_last_sync_timestamp_seconds",
                "Unix time of the last successful key sync",
            ),
            fleet_replicas: r.fleet_replicas(),
            fleet_config_mismatch: r.int_gauge(
                "keygate_fleet_config_mismatch",
                "Live replicas whose config digest differs from the one most replicas run",
            ),
            store_sync_errors: r.counter("keygate_store_sync_errors_total", "Failed key syncs"),
            usage_flush_errors: r.counter(
                "keygate_usage_flush_errors_total",
                "Failed writes of key usage to the store",
            ),
            upstream_errors: r.counter_vec(
                "keygate_upstream_errors_total",
                "Failed upstream exchanges",
                &["upstream", "kind"],
            ),
            quota_warnings: r.counter_vec(
                "keygate_quota_warnings_total",
                "Quota warnings emitted: a period's use reached a share of quotas.warn_at",
                &["scope", "threshold"],
            ),
            idle_warnings: r.counter_vec(
                "keygate_idle_warnings_total",
                "Idle-expiry warnings issued, by how long before revocation",
                &["threshold"],
            ),
            rate_limit_fallback: r.counter(
                "keygate_rate_limit_fallback_total",
                "Rate-limit checks decided locally because Redis did not answer in time",
            ),
            idle_revocations: r.counter("keygate_idle_revocations_total", "Keys revoked for idleness"),
            webhook_deliveries: r.counter(
                "keygate_webhook_deliveries_total",
                "Lifecycle webhooks the receiver accepted",
            ),
            webhook_failures: r.counter(
                "keygate_webhook_failures_total",
                "Failed lifecycle webhook attempts",
            ),
            webhook_abandoned: r.counter(
                "keygate_webhook_abandoned_total",
                "Lifecycle webhooks given up after the last retry",
            ),
            leak_reports: r.counter_vec(
                "keygate_leak_reports_total",
                "Leaked-key reports, by who delivered them and what they came to",
                &["source", "result"],
            ),
            store_reopened: r.counter(
                "keygate_store_reopened_total",
                "Times the store file was replaced under the gateway and opened again",
            ),
            key_hash_conflicts: r.counter(
                "keygate_key_hash_conflicts_total",
                "Key secrets not admitted because another key holds the same hash",
            ),
            log_lines_dropped: r.counter(
                "keygate_log_lines_dropped_total",
                "Log lines dropped because stdout could not keep up",
            ),
            fleet_credential_refusals: r.counter_vec(
                "keygate_fleet_credential_refusals_total",
                "Fleet credentials (another replica asking for recent requests) refused, by reason",
                &["reason"],
            ),
            config_reloads: r.reloads(),
            config_last_reload_success: r.gauge(
                "keygate_config_last_reload_success_timestamp_seconds",
                "Unix time of the last config load that took effect (the start included)",
            ),
            ready: r.int_gauge(
                "keygate_ready",
                "1 while this replica answers /readyz with 200 (key table loaded and fresh, not draining)",
            ),
            rate_limit_shared: r.int_gauge(
                "keygate_rate_limit_shared",
                "1 while key rate limits are shared through Redis; 0 while they are decided locally",
            ),
            // Registered by the first `tls_certificate_expires`.
            tls_certificate_expiry: r.declare(
                Gauge::new(
                    "keygate_tls_certificate_expiry_timestamp_seconds",
                    "Unix time the TLS certificate the proxy listener serves expires",
                )
                .expect("static metric definition"),
            ),
            build_info,
            registry: r.registry,
            declared: Arc::new(r.declared),
        }
    }

    /// Every metric this registry may export, each once, in the order declared: those with
    /// labels included before their first series, and the one registered on demand.
    pub fn catalogue(&self) -> Vec<Described> {
        let mut described = Vec::new();
        for collector in self.declared.iter() {
            let descs = collector.desc();
            for family in collector.collect() {
                let desc = descs.iter().find(|desc| desc.fq_name == family.name());
                described.push(Described {
                    name: family.name().to_owned(),
                    kind: match family.get_field_type() {
                        MetricType::COUNTER => "counter",
                        MetricType::GAUGE => "gauge",
                        MetricType::HISTOGRAM => "histogram",
                        MetricType::SUMMARY => "summary",
                        MetricType::UNTYPED => "untyped",
                    },
                    labels: desc.map_or_else(Vec::new, |desc| desc.variable_labels.clone()),
                    help: family.help().to_owned(),
                });
            }
        }
        described
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

#[cfg(test)]
mod tests {
    use super::Metrics;

    #[test]
    fn the_catalogue_names_every_exported_metric_once() {
        let metrics = Metrics::new();
        metrics.tls_certificate_expires(2_000_000_000);
        let catalogue = metrics.catalogue();
        let names: Vec<&str> = catalogue.iter().map(|metric| metric.name.as_str()).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        for line in metrics.encode().lines() {
            if let Some(name) = line
                .strip_prefix("# TYPE ")
                .and_then(|rest| rest.split(' ').next())
            {
                assert!(
                    names.contains(&name),
                    "{name} is exported but not in the catalogue"
                );
            }
        }
    }
}
