//! The configuration a gateway runs with, written back out in the file's own shape: every
//! default filled in, relative paths resolved, and every value that could hold a secret
//! redacted. `keygate check --print` shows it; the printed TOML passes `keygate check` again.
//!
//! Control plane, pure: it reads a validated [`Config`] and nothing else. Values that have no
//! default (no TLS, no body limit, ...) are left out, as they would be from the file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::{Config, RateLimitBackend, Route, Segment, StoreUrl, UnderscoreHeaders, Upstream};
use crate::core::units::format_duration;

/// What replaces a secret: URL-safe, so a redacted URL still parses.
pub const REDACTED: &str = "REDACTED";

/// The effective configuration, field for field as in `gateway.toml`.
#[derive(Debug, Serialize)]
pub struct Effective {
    server: ServerOut,
    admin: AdminOut,
    store: StoreOut,
    auth: AuthOut,
    rate_limit: RateLimitOut,
    lifecycle: LifecycleOut,
    metrics: MetricsOut,
    logs: LogsOut,
    tracing: TracingOut,
    usage: UsageOut,
    leaks: super::leaks::LeaksOut,
    quotas: QuotasOut,
    upstream: Vec<UpstreamOut>,
    route: Vec<RouteOut>,
}

#[derive(Debug, Serialize)]
struct ServerOut {
    listen: String,
    environment: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<TlsOut>,
    trusted_proxies: Vec<String>,
    shutdown_grace: String,
    first_byte_timeout: String,
    tls_handshake_timeout: String,
    header_read_timeout: String,
    body_idle_timeout: String,
    max_header_bytes: u64,
    max_headers: u64,
    max_uri_bytes: u64,
    idle_timeout: String,
    http2_max_concurrent_streams: u64,
    max_connections: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_request_body: Option<u64>,
    underscore_headers: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    worker_threads: Option<u64>,
}

#[derive(Debug, Serialize)]
struct TlsOut {
    cert: String,
    key: String,
}

#[derive(Debug, Serialize)]
struct AdminOut {
    listen: String,
    token_env: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    read_token_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    advertise: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    advertise_env: Option<String>,
}

#[derive(Debug, Serialize)]
struct StoreOut {
    url: String,
    sync_interval: String,
    usage_flush_interval: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pepper_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_staleness: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot: Option<String>,
}

#[derive(Debug, Serialize)]
struct AuthOut {
    schemes: Vec<&'static str>,
    header: String,
    realm: String,
    failed_per_ip: String,
}

#[derive(Debug, Serialize)]
struct RateLimitOut {
    default: String,
    default_burst: u32,
    draft_headers: bool,
    backend: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_prefix: Option<String>,
}

#[derive(Debug, Serialize)]
struct LifecycleOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_expiry: Option<String>,
    warn_before: Vec<String>,
    check_interval: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook: Option<String>,
}

#[derive(Debug, Serialize)]
struct MetricsOut {
    per_key: bool,
}

#[derive(Debug, Serialize)]
struct LogsOut {
    access: bool,
    recent: u64,
}

#[derive(Debug, Serialize)]
struct TracingOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    otlp_endpoint: Option<String>,
    sample_ratio: f64,
    service_name: String,
    export_interval: String,
}

#[derive(Debug, Serialize)]
struct QuotasOut {
    warn_at: Vec<f64>,
    lease_block: f64,
    lease_ttl: String,
}

#[derive(Debug, Serialize)]
struct UsageOut {
    retention: String,
}

#[derive(Debug, Serialize)]
struct UpstreamOut {
    name: String,
    url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_cert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_key: Option<String>,
    connect_timeout: String,
    timeout: String,
    pool_max_connections: u64,
    queue_timeout: String,
    pool_max_idle: u64,
    pool_idle_timeout: String,
}

#[derive(Debug, Serialize)]
struct RouteOut {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    path: String,
    environment: String,
    upstream: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    customer_param: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    permissions: Option<BTreeMap<String, String>>,
    forward_credentials: bool,
    preserve_host: bool,
    allow_method_override: bool,
    cost: u32,
}

impl Effective {
    pub fn of(config: &Config) -> Effective {
        Effective {
            server: server(config),
            admin: AdminOut {
                listen: config.admin.listen.to_string(),
                token_env: config.admin.token_env.clone(),
                read_token_env: config.admin.read_token_env.clone(),
                advertise: config.admin.advertise.as_ref().map(ToString::to_string),
                advertise_env: config.admin.advertise_env.clone(),
            },
            store: store(config),
            auth: auth(config),
            rate_limit: rate_limit(config),
            lifecycle: lifecycle(config),
            metrics: MetricsOut {
                per_key: config.metrics.per_key,
            },
            logs: LogsOut {
                access: config.logs.access,
                recent: config.logs.recent as u64,
            },
            tracing: TracingOut {
                // A collector's URL may carry a password in its user part.
                otlp_endpoint: config
                    .tracing
                    .otlp_endpoint
                    .as_deref()
                    .map(|url| redact_url(url, Keep::Path)),
                sample_ratio: config.tracing.sample_ratio,
                service_name: config.tracing.service_name.clone(),
                export_interval: time(config.tracing.export_interval),
            },
            usage: UsageOut {
                retention: time(config.usage.retention),
            },
            leaks: super::leaks::effective(&config.leaks),
            quotas: QuotasOut {
                warn_at: config.quotas.warn_at.clone(),
                lease_block: config.quotas.lease_block,
                lease_ttl: time(config.quotas.lease_ttl),
            },
            upstream: config.upstreams.iter().map(upstream).collect(),
            route: config.routes.iter().map(|r| route(r, config)).collect(),
        }
    }

    /// As a `gateway.toml`.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("the effective config is plain strings, numbers and tables")
    }
}

fn time(duration: Duration) -> String {
    format_duration(duration)
}

fn server(config: &Config) -> ServerOut {
    let s = &config.server;
    ServerOut {
        listen: s.listen.to_string(),
        environment: s.environment.to_string(),
        tls: s.tls.as_ref().map(|tls| TlsOut {
            cert: tls.cert.display().to_string(),
            key: tls.key.display().to_string(),
        }),
        trusted_proxies: s.trusted_proxies.iter().map(ToString::to_string).collect(),
        shutdown_grace: time(s.shutdown_grace),
        first_byte_timeout: time(s.first_byte_timeout),
        tls_handshake_timeout: time(s.tls_handshake_timeout),
        header_read_timeout: time(s.header_read_timeout),
        body_idle_timeout: time(s.body_idle_timeout),
        max_header_bytes: s.max_header_bytes as u64,
        max_headers: s.max_headers as u64,
        max_uri_bytes: s.max_uri_bytes as u64,
        idle_timeout: time(s.idle_timeout),
        http2_max_concurrent_streams: s.http2_max_concurrent_streams.into(),
        max_connections: s.max_connections as u64,
        max_request_body: s.max_request_body,
        underscore_headers: match s.underscore_headers {
            UnderscoreHeaders::Drop => "drop",
            UnderscoreHeaders::Refuse => "refuse",
        },
        worker_threads: s.worker_threads.map(|n| n as u64),
    }
}

fn store(config: &Config) -> StoreOut {
    let s = &config.store;
    StoreOut {
        url: match &s.url {
            StoreUrl::Sqlite(path) => format!("sqlite://{}", path.display()),
            StoreUrl::Postgres(url) => redact_url(url, Keep::Path),
        },
        sync_interval: time(s.sync_interval),
        usage_flush_interval: time(s.usage_flush_interval),
        pepper_env: s.pepper_env.clone(),
        max_staleness: s.max_staleness.map(time),
        snapshot: s.snapshot.as_ref().map(|p| p.display().to_string()),
    }
}

fn auth(config: &Config) -> AuthOut {
    let a = &config.auth;
    let schemes = [
        ("basic", a.basic),
        ("bearer", a.bearer),
        ("header", a.header_scheme),
    ];
    AuthOut {
        schemes: schemes
            .iter()
            .filter(|(_, on)| *on)
            .map(|(name, _)| *name)
            .collect(),
        header: a.header.to_string(),
        realm: a.realm.clone(),
        failed_per_ip: a.failed_per_ip.to_string(),
    }
}

fn rate_limit(config: &Config) -> RateLimitOut {
    let r = &config.rate_limit;
    let (backend, redis_url, redis_timeout, redis_prefix) = match &r.backend {
        RateLimitBackend::Local => ("local", None, None, None),
        RateLimitBackend::Redis { url, prefix, timeout } => (
            "redis",
            Some(redact_url(url, Keep::Path)),
            Some(time(*timeout)),
            Some(prefix.clone()),
        ),
    };
    RateLimitOut {
        default: r.default.rate().to_string(),
        default_burst: r.default.burst().get(),
        draft_headers: r.draft_headers,
        backend,
        redis_url,
        redis_timeout,
        redis_prefix,
    }
}

fn lifecycle(config: &Config) -> LifecycleOut {
    let l = &config.lifecycle;
    LifecycleOut {
        idle_expiry: l.idle_expiry.map(time),
        warn_before: l.warn_before.iter().copied().map(time).collect(),
        check_interval: time(l.check_interval),
        // A webhook's path often is its secret (`/services/T0/B0/XXXX`).
        webhook: l.webhook.as_deref().map(|url| redact_url(url, Keep::Nothing)),
    }
}

fn upstream(u: &Upstream) -> UpstreamOut {
    let file = |path: Option<&PathBuf>| path.map(|path| path.display().to_string());
    let tls = u.tls.as_ref();
    UpstreamOut {
        name: u.name.clone(),
        url: u.url.to_string(),
        ca: file(tls.and_then(|tls| tls.ca.as_ref())),
        client_cert: file(tls.and_then(|tls| tls.client_cert.as_ref())),
        client_key: file(tls.and_then(|tls| tls.client_key.as_ref())),
        connect_timeout: time(u.connect_timeout),
        timeout: time(u.timeout),
        pool_max_connections: u.pool_max_connections as u64,
        queue_timeout: time(u.queue_timeout),
        pool_max_idle: u.pool_max_idle as u64,
        pool_idle_timeout: time(u.pool_idle_timeout),
    }
}

fn route(r: &Route, config: &Config) -> RouteOut {
    let customer_param = r.customer_param.and_then(|i| match r.path.segments.get(i) {
        Some(Segment::Param(name)) => Some(name.clone()),
        _ => None,
    });
    let permissions = r.permissions.as_ref().map(|p| {
        let mut map: BTreeMap<String, String> = p
            .by_method
            .iter()
            .map(|(method, permission)| (method.to_string(), permission.as_str().to_owned()))
            .collect();
        if let Some(fallback) = &p.fallback {
            map.insert("*".to_owned(), fallback.as_str().to_owned());
        }
        map
    });
    RouteOut {
        name: r.name.clone(),
        host: r.host.clone(),
        path: r.path.source.clone(),
        environment: r.environment.to_string(),
        upstream: config
            .upstreams
            .get(r.upstream)
            .map_or_else(String::new, |u| u.name.clone()),
        customer_param,
        permissions,
        forward_credentials: r.forward_credentials,
        preserve_host: r.preserve_host,
        allow_method_override: r.allow_method_override,
        cost: r.cost.get(),
    }
}

/// What of a URL's path a redaction keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Keep {
    /// The path names a database: kept.
    Path,
    /// The path may be a token: replaced.
    Nothing,
}

/// Query parameters of store and Redis URLs that never hold a secret.
const PLAIN_PARAMS: [&str; 12] = [
    "sslmode",
    "connect_timeout",
    "application_name",
    "target_session_attrs",
    "keepalives",
    "keepalives_idle",
    "channel_binding",
    "load_balance_hosts",
    "dbname",
    "user",
    "host",
    "port",
];

/// `url` with the password of its userinfo, every query value that could be a secret, any
/// fragment and (with [`Keep::Nothing`]) its path replaced by [`REDACTED`]. User names, hosts
/// and ports stay: they say where the gateway connects.
pub(super) fn redact_url(url: &str, keep: Keep) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split('#').next().unwrap_or(rest);
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (path, query) = tail.split_once('?').map_or((tail, None), |(p, q)| (p, Some(q)));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:{REDACTED}@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    let path = match keep {
        Keep::Path => path.to_owned(),
        Keep::Nothing if path.is_empty() || path == "/" => path.to_owned(),
        Keep::Nothing => format!("/{REDACTED}"),
    };
    let query = query.map(|q| {
        let pairs: Vec<String> = q
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, value)) if keep == Keep::Path && PLAIN_PARAMS.contains(&name) => {
                    format!("{name}={value}")
                }
                Some((name, _)) => format!("{name}={REDACTED}"),
                None => pair.to_owned(),
            })
            .collect();
        format!("?{}", pairs.join("&"))
    });
    let scheme = if scheme.is_empty() {
        String::new()
    } else {
        format!("{scheme}://")
    };
    format!("{scheme}{authority}{path}{}", query.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_query_secrets_and_webhook_paths_are_redacted() {
        for (url, keep, printed) in [
            (
                "postgres://keygate:s3cret@db.internal:5432/keygate?sslmode=require&password=pw2",
                Keep::Path,
                "postgres://keygate:REDACTED@db.internal:5432/keygate?sslmode=require&password=REDACTED",
            ),
            ("postgres://db/keygate", Keep::Path, "postgres://db/keygate"),
            (
                "rediss://:pw@cache:6380/2",
                Keep::Path,
                "rediss://:REDACTED@cache:6380/2",
            ),
            ("redis://user@cache", Keep::Path, "redis://user@cache"),
            (
                "https://hooks.example.com/services/T0/B0/XXXX?token=abc#frag",
                Keep::Nothing,
                "https://hooks.example.com/REDACTED?token=REDACTED",
            ),
            (
                "https://u:p@hooks.example.com/",
                Keep::Nothing,
                "https://u:REDACTED@hooks.example.com/",
            ),
            ("http://127.0.0.1:9000", Keep::Nothing, "http://127.0.0.1:9000"),
        ] {
            assert_eq!(redact_url(url, keep), printed, "{url}");
        }
    }

    #[test]
    fn the_printed_config_is_valid_and_has_every_default() {
        let source = r#"
[store]
url = "postgres://keygate:hunter2@db/keygate?sslmode=require"
[rate_limit]
backend = "redis"
redis_url = "redis://:hunter3@127.0.0.1:6379"
[lifecycle]
idle_expiry = "90d"
warn_before = ["7d", "1d"]
webhook = "https://hooks.example.com/services/hunter4"
[[upstream]]
name = "api"
url = "http://127.0.0.1:7001/base"
[[route]]
name = "c"
path = "/v1/customers/{customer}"
upstream = "api"
customer_param = "customer"
permissions = { GET = "customer:read", "*" = "customer:write" }
"#;
        let dir = std::path::Path::new("/etc/keygate");
        let config = super::super::parse(source, dir).unwrap();
        let printed = Effective::of(&config).to_toml();
        assert!(!printed.contains("hunter"), "{printed}");
        for default in [
            "shutdown_grace = \"30s\"",
            "default = \"100/s\"",
            "default_burst = 100",
            "token_env = \"KEYGATE_ADMIN_TOKEN\"",
            "check_interval = \"1h\"",
            "schemes = [\"basic\", \"bearer\", \"header\"]",
            "customer_param = \"customer\"",
        ] {
            assert!(printed.contains(default), "{default} in\n{printed}");
        }
        let again = super::super::parse(&printed, dir).unwrap_or_else(|e| panic!("{e}\n{printed}"));
        assert_eq!(
            Effective::of(&again).to_toml(),
            printed,
            "printing is a fixed point"
        );
    }

    /// A config that sets every setting without a default, so that all are printed. A setting
    /// added to the parser is missing from the printed config until it is set here.
    const EVERY_SETTING: &str = r#"
[server]
tls = { cert = "cert.pem", key = "key.pem" }
max_request_body = 1024
worker_threads = 2
[admin]
read_token_env = "KEYGATE_ADMIN_READ_TOKEN"
advertise = "http://10.0.0.5:9901"
[store]
pepper_env = "KEYGATE_PEPPER"
max_staleness = "10m"
snapshot = "keytable.snap"
[rate_limit]
default_burst = 200
backend = "redis"
redis_url = "redis://127.0.0.1:6379"
[lifecycle]
idle_expiry = "90d"
warn_before = ["7d"]
webhook = "https://hooks.example.com/keygate"
[tracing]
otlp_endpoint = "http://127.0.0.1:4318"
[usage]
retention = "30d"
[leaks.github]
path = "/.well-known/keygate/github"
keys_url = "https://api.github.com/meta/public_keys/secret_scanning"
[leaks.gitlab]
path = "/.well-known/keygate/gitlab"
token_env = "KEYGATE_GITLAB_TOKEN"
[[upstream]]
name = "api"
url = "https://localhost:8443"
ca = "ca.pem"
client_cert = "client.pem"
client_key = "client.key"
[[route]]
name = "r"
host = "api.example.com"
path = "/v1/customers/{customer}"
upstream = "api"
customer_param = "customer"
permissions = { "*" = "customer:write" }
"#;

    /// The dotted paths of every value in `table`, arrays of tables taken as their tables.
    fn paths(table: &toml::Table, prefix: &str, found: &mut Vec<String>) {
        for (name, value) in table {
            let path = format!("{prefix}{name}");
            match value {
                toml::Value::Table(inner) => paths(inner, &format!("{path}."), found),
                toml::Value::Array(items) if items.iter().all(toml::Value::is_table) && !items.is_empty() => {
                    for item in items.iter().filter_map(toml::Value::as_table) {
                        paths(item, &format!("{path}."), found);
                    }
                }
                _ => {}
            }
            found.push(path);
        }
    }

    /// Settings that exclude one of [`EVERY_SETTING`]'s (`admin.advertise_env` and
    /// `admin.advertise`, GitHub's keys file and URL), printed from a config of their own.
    const ALTERNATIVES: &str = r#"
[admin]
advertise_env = "KEYGATE_ADVERTISE"
[leaks.github]
path = "/.well-known/keygate/github"
keys_file = "github-keys.json"
[[upstream]]
name = "api"
url = "http://127.0.0.1:7001"
[[route]]
name = "r"
path = "/"
upstream = "api"
"#;

    #[test]
    fn the_printed_config_names_every_setting_the_parser_accepts() {
        let dir = crate::config::upstream_tls::tests::files();
        let mut found = Vec::new();
        for source in [EVERY_SETTING, ALTERNATIVES] {
            let config = super::super::parse(source, dir.path()).unwrap_or_else(|e| panic!("{e}"));
            let text = Effective::of(&config).to_toml();
            let printed: toml::Table = text.parse().unwrap();
            paths(&printed, "", &mut found);
            let again = super::super::parse(&text, dir.path()).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(Effective::of(&again).to_toml(), text, "printing is a fixed point");
        }
        for setting in crate::config::raw::settings() {
            assert!(found.contains(&setting), "{setting} is not printed");
        }
    }
}
