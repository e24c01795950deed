//! The settings only a restart applies, grouped as one value: what the listeners, the store,
//! the rate limiter's backend, the span exporter and the background jobs are built from at
//! start. A reload compares the new file's [`RestartOnly`] with the one the gateway started
//! with, as a whole, and names each setting that differs; every other setting a reload applies
//! (routes, upstreams, `[auth]`, the limits, the per-request checks of `[server]`, the TLS
//! certificate files).
//!
//! Configuration, pure. A setting's name is its field's serde name below, so this struct is
//! the one list of restart-only settings; its test holds every setting the parser accepts to
//! a classification, so a new one cannot be left out and reported as reloaded.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use super::{Config, Leaks, RateLimitBackend, StoreUrl, Tracing};

/// What a gateway was built from at start and keeps until it restarts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RestartOnly {
    #[serde(rename = "server.listen")]
    listen: SocketAddr,
    /// Whether TLS is on; the certificate and key files are read again at every reload.
    #[serde(rename = "server.tls")]
    tls: bool,
    #[serde(rename = "server.shutdown_grace")]
    shutdown_grace: Duration,
    #[serde(rename = "server.first_byte_timeout")]
    first_byte_timeout: Duration,
    #[serde(rename = "server.tls_handshake_timeout")]
    tls_handshake_timeout: Duration,
    #[serde(rename = "server.header_read_timeout")]
    header_read_timeout: Duration,
    #[serde(rename = "server.max_header_bytes")]
    max_header_bytes: usize,
    /// Counted per request too, but hyper's HTTP/1 parser holds the first value.
    #[serde(rename = "server.max_headers")]
    max_headers: usize,
    #[serde(rename = "server.idle_timeout")]
    idle_timeout: Duration,
    #[serde(rename = "server.http2_max_concurrent_streams")]
    http2_max_concurrent_streams: u32,
    #[serde(rename = "server.max_connections")]
    max_connections: usize,
    #[serde(rename = "server.worker_threads")]
    worker_threads: Option<usize>,
    #[serde(rename = "admin.listen")]
    admin_listen: SocketAddr,
    /// The admin tokens are read from the environment once, at start.
    #[serde(rename = "admin.token_env")]
    token_env: String,
    #[serde(rename = "admin.read_token_env")]
    read_token_env: Option<String>,
    /// Its variable is read once, at start.
    #[serde(rename = "admin.advertise_env")]
    advertise_env: Option<String>,
    #[serde(rename = "store.url")]
    store_url: String,
    #[serde(rename = "store.sync_interval")]
    sync_interval: Duration,
    #[serde(rename = "store.usage_flush_interval")]
    usage_flush_interval: Duration,
    /// Every hash in the running key table was made with it.
    #[serde(rename = "store.pepper_env")]
    pepper_env: Option<String>,
    #[serde(rename = "store.snapshot")]
    snapshot: Option<String>,
    /// `local` or `redis`.
    #[serde(rename = "rate_limit.backend")]
    backend: &'static str,
    #[serde(rename = "rate_limit.redis_url")]
    redis_url: Option<String>,
    #[serde(rename = "rate_limit.redis_timeout")]
    redis_timeout: Option<Duration>,
    #[serde(rename = "rate_limit.redis_prefix")]
    redis_prefix: Option<String>,
    #[serde(rename = "lifecycle.idle_expiry")]
    idle_expiry: Option<Duration>,
    #[serde(rename = "lifecycle.warn_before")]
    warn_before: Vec<Duration>,
    #[serde(rename = "lifecycle.check_interval")]
    check_interval: Duration,
    #[serde(rename = "lifecycle.webhook")]
    webhook: Option<String>,
    /// The whole `[tracing]` section: the exporter is built once.
    tracing: Tracing,
    /// The usage flusher, which prunes by it, is built once.
    #[serde(rename = "usage.retention")]
    usage_retention: Duration,
    /// The whole `[leaks]` section: its endpoints and their keys are set up at start.
    leaks: Leaks,
    /// The whole `[quotas]` section: the warning and lease tasks are built once.
    quotas: super::Quotas,
}

impl RestartOnly {
    pub fn of(config: &Config) -> RestartOnly {
        let (server, store, lifecycle) = (&config.server, &config.store, &config.lifecycle);
        let (backend, redis_url, redis_timeout, redis_prefix) = match &config.rate_limit.backend {
            RateLimitBackend::Local => ("local", None, None, None),
            RateLimitBackend::Redis { url, prefix, timeout } => {
                ("redis", Some(url.clone()), Some(*timeout), Some(prefix.clone()))
            }
        };
        RestartOnly {
            listen: server.listen,
            tls: server.tls.is_some(),
            shutdown_grace: server.shutdown_grace,
            first_byte_timeout: server.first_byte_timeout,
            tls_handshake_timeout: server.tls_handshake_timeout,
            header_read_timeout: server.header_read_timeout,
            max_header_bytes: server.max_header_bytes,
            max_headers: server.max_headers,
            idle_timeout: server.idle_timeout,
            http2_max_concurrent_streams: server.http2_max_concurrent_streams,
            max_connections: server.max_connections,
            worker_threads: server.worker_threads,
            admin_listen: config.admin.listen,
            token_env: config.admin.token_env.clone(),
            read_token_env: config.admin.read_token_env.clone(),
            advertise_env: config.admin.advertise_env.clone(),
            // Both gateways' paths were resolved against the same config file's folder.
            store_url: match &store.url {
                StoreUrl::Sqlite(path) => format!("sqlite://{}", path.display()),
                StoreUrl::Postgres(url) => url.clone(),
            },
            sync_interval: store.sync_interval,
            usage_flush_interval: store.usage_flush_interval,
            pepper_env: store.pepper_env.clone(),
            snapshot: store.snapshot.as_ref().map(|path| path.display().to_string()),
            backend,
            redis_url,
            redis_timeout,
            redis_prefix,
            idle_expiry: lifecycle.idle_expiry,
            warn_before: lifecycle.warn_before.clone(),
            check_interval: lifecycle.check_interval,
            webhook: lifecycle.webhook.clone(),
            tracing: config.tracing.clone(),
            usage_retention: config.usage.retention,
            leaks: config.leaks.clone(),
            quotas: config.quotas.clone(),
        }
    }

    /// The names of the settings that differ in `next`, sorted; none when all are equal.
    pub fn changed(&self, next: &RestartOnly) -> Vec<String> {
        if self == next {
            return Vec::new();
        }
        let after = next.named();
        let mut changed: Vec<String> = self
            .named()
            .into_iter()
            .filter(|(name, value)| after.get(name) != Some(value))
            .map(|(name, _)| name)
            .collect();
        changed.sort_unstable();
        changed
    }

    /// Whether the setting at `path` (`server.listen`, `tracing.sample_ratio`) is one of these:
    /// named by its own path, or by its section's when the section is one setting
    /// (`tracing`).
    pub fn includes(&self, path: &str) -> bool {
        let section = path.split('.').next().unwrap_or(path);
        let named = self.named();
        named.contains_key(path) || named.contains_key(section)
    }

    /// Each setting by its name, as a JSON value to compare.
    fn named(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::to_value(self)
            .ok()
            .and_then(|value| match value {
                serde_json::Value::Object(named) => Some(named),
                _ => None,
            })
            .expect("a struct of strings, numbers and durations serializes to a JSON object")
    }
}

#[cfg(test)]
mod tests;
