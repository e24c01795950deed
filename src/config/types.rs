//! The validated configuration: typed values the gateway runs with, produced from the raw file
//! by [`super::validate`]. Nothing here is a string that still needs parsing.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use http::header::HeaderName;
use http::{Method, Uri};
use ipnet::IpNet;

use crate::core::environment::Environment;
use crate::core::key::RateLimitSpec;
use crate::core::permission::Permission;
use crate::core::units::Rate;

#[derive(Debug, Clone)]
pub struct Config {
    pub server: Server,
    pub admin: Admin,
    pub store: Store,
    pub auth: Auth,
    pub rate_limit: RateLimit,
    pub lifecycle: Lifecycle,
    pub metrics: Metrics,
    pub logs: Logs,
    pub tracing: Tracing,
    pub usage: Usage,
    pub leaks: super::Leaks,
    pub quotas: super::Quotas,
    pub upstreams: Vec<Upstream>,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: SocketAddr,
    /// Environment of routes that name none.
    pub environment: Environment,
    pub tls: Option<Tls>,
    /// Peers whose `X-Forwarded-For` is believed when finding the client IP.
    pub trusted_proxies: Vec<IpNet>,
    /// How long in-flight requests may run after SIGTERM.
    pub shutdown_grace: Duration,
    /// A new connection must send its first byte within this, or it is closed.
    pub first_byte_timeout: Duration,
    /// A TLS handshake must complete within this, or the connection is closed.
    pub tls_handshake_timeout: Duration,
    /// A request head must arrive within this.
    pub header_read_timeout: Duration,
    /// Longest pause in a request body being forwarded (408 past it).
    pub body_idle_timeout: Duration,
    /// Largest request head in bytes.
    pub max_header_bytes: usize,
    /// Most request headers.
    pub max_headers: usize,
    /// Longest request URI in bytes.
    pub max_uri_bytes: usize,
    /// Idle client connections (HTTP/2: no stream open) and idle upgrade tunnels are closed
    /// after this.
    pub idle_timeout: Duration,
    /// HTTP/2 streams per connection.
    pub http2_max_concurrent_streams: u32,
    /// Open client connections past which new ones wait.
    pub max_connections: usize,
    /// Largest request body in bytes (413 past it); none by default.
    pub max_request_body: Option<u64>,
    /// Threads of the async runtime; `None`: one per CPU.
    pub worker_threads: Option<usize>,
    /// What becomes of request headers whose name has `_`.
    pub underscore_headers: UnderscoreHeaders,
}

/// The defaults of `[server]`, each the value of its setting in a file that leaves it out.
impl Server {
    /// Every interface, port 8080.
    pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8080));
    pub const DEFAULT_ENVIRONMENT: Environment = Environment::Production;
    pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
    pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    /// Allows a mobile client's stalls, and frees a stalled upload's upstream connection
    /// within half a minute.
    pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
    pub const DEFAULT_MAX_HEADERS: usize = 100;
    pub const DEFAULT_MAX_URI_BYTES: usize = 8 * 1024;
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS: u32 = 100;
    pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
    /// As nginx does.
    pub const DEFAULT_UNDERSCORE_HEADERS: UnderscoreHeaders = UnderscoreHeaders::Drop;
}

/// Request headers whose name has `_`: CGI-style upstreams read `X_Keygate_Key_Id` as
/// `X-Keygate-Key-Id`, so such a name could pass for one the gateway sets or strips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnderscoreHeaders {
    /// Removed before forwarding (nginx's default).
    Drop,
    /// The request is refused with 400.
    Refuse,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
    /// Line and column of the two settings in the file, for the problems
    /// [`super::load_to_serve`] finds in the files they name.
    pub cert_line: Option<(usize, usize)>,
    pub key_line: Option<(usize, usize)>,
}

#[derive(Debug, Clone)]
pub struct Admin {
    pub listen: SocketAddr,
    /// Name of the environment variable holding the admin bearer token.
    pub token_env: String,
    /// Name of the environment variable holding the read-only admin token, if there is one.
    pub read_token_env: Option<String>,
    /// Where the other replicas reach this admin listener (`admin.advertise`), if anywhere.
    pub advertise: Option<Advertise>,
    /// Environment variable holding this replica's advertised address (`admin.advertise_env`),
    /// read at start ([`Advertise::from_env_value`]); never set with `advertise`.
    pub advertise_env: Option<String>,
}

/// `admin.advertise`: an `http://` host, and a port unless the admin listener's own is meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertise {
    /// A host name, an IPv4 address, or an IPv6 address in brackets.
    pub host: String,
    pub port: Option<u16>,
}

impl Advertise {
    /// Reads `http://HOST[:PORT]` (a trailing `/` allowed; no user, path, query or fragment).
    pub fn parse(text: &str) -> Result<Advertise, String> {
        const SHAPE: &str = "must be http://HOST or http://HOST:PORT";
        let rest = text.strip_prefix("http://").ok_or(SHAPE)?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
            return Err(SHAPE.to_owned());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or("the port must be 1 to 65535")?;
                (host, Some(port))
            }
            _ => (authority, None),
        };
        let bracketed = host.starts_with('[') && host.ends_with(']');
        let valid = if bracketed {
            host[1..host.len() - 1].parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        };
        if !valid {
            return Err(format!("{host:?} is not a host name or an IP address"));
        }
        Ok(Advertise {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// The value of `admin.advertise_env`'s variable: a URL as `admin.advertise` takes, or a
    /// bare host (a pod IP from Kubernetes' `status.podIP`, IPv6 without brackets too).
    pub fn from_env_value(text: &str) -> Result<Advertise, String> {
        let text = text.trim();
        if text.starts_with("http://") {
            Advertise::parse(text)
        } else if text.parse::<std::net::Ipv6Addr>().is_ok() {
            Advertise::parse(&format!("http://[{text}]"))
        } else {
            Advertise::parse(&format!("http://{text}"))
        }
    }

    /// The URL the other replicas call, with `bound` (the admin listener's port) when no
    /// port was given.
    pub fn url(&self, bound: u16) -> String {
        format!("http://{}:{}", self.host, self.port.unwrap_or(bound))
    }
}

impl std::fmt::Display for Advertise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(port) => write!(f, "http://{}:{port}", self.host),
            None => write!(f, "http://{}", self.host),
        }
    }
}

impl Admin {
    /// Loopback, port 9901: the admin API is not for the network the proxy serves.
    pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9901));
    pub const DEFAULT_TOKEN_ENV: &str = "KEYGATE_ADMIN_TOKEN";
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// An embedded SQLite database file (resolved against the config file's folder).
    Sqlite(PathBuf),
    /// A PostgreSQL connection string, as given.
    Postgres(String),
}

#[derive(Debug, Clone)]
pub struct Store {
    pub url: StoreUrl,
    /// How often a gateway pulls key changes.
    pub sync_interval: Duration,
    /// Environment variable holding the hash pepper, if any.
    pub pepper_env: Option<String>,
    /// Past this age of the key table, fail closed with 503. None by default: serve stale.
    pub max_staleness: Option<Duration>,
    /// How often per-key usage is written to the store.
    pub usage_flush_interval: Duration,
    /// Where the loaded key table is saved (hashes only), to start from while the store is
    /// down. None by default.
    pub snapshot: Option<std::path::PathBuf>,
}

impl Store {
    /// The SQLite file of `store.url` by default, beside the config file.
    pub const DEFAULT_SQLITE_FILE: &str = "keygate.db";
    pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(1);
    pub const DEFAULT_USAGE_FLUSH_INTERVAL: Duration = Duration::from_secs(5);
}

#[derive(Debug, Clone)]
pub struct Auth {
    pub basic: bool,
    pub bearer: bool,
    /// The API-key header. Removed from every forwarded request (unless
    /// the route forwards credentials), whether or not the `header` scheme is on.
    pub header: HeaderName,
    /// Whether a key is looked for in `header` (the `header` scheme).
    pub header_scheme: bool,
    pub realm: String,
    /// Failed authentications allowed per client IP.
    pub failed_per_ip: Rate,
}

impl Auth {
    pub const DEFAULT_HEADER: HeaderName = HeaderName::from_static("x-api-key");
    pub const DEFAULT_REALM: &str = "keygate";
    pub const DEFAULT_FAILED_PER_IP: Rate = rate(30, Duration::from_secs(60));
}

/// `requests` per `per`, for the default rates; a zero fails the build.
const fn rate(requests: u32, per: Duration) -> Rate {
    match NonZeroU32::new(requests) {
        Some(requests) => Rate { requests, per },
        None => panic!("a default rate allows at least one request"),
    }
}

#[derive(Debug, Clone)]
pub struct RateLimit {
    /// Limit of keys that have none of their own.
    pub default: RateLimitSpec,
    /// Also send the IETF draft `RateLimit-Policy` and `RateLimit` headers.
    pub draft_headers: bool,
    pub backend: RateLimitBackend,
}

impl RateLimit {
    /// The rate of keys without their own; the burst is its request count.
    pub const DEFAULT_RATE: Rate = rate(100, Duration::from_secs(1));
    /// How long a check waits on Redis by default. Measured (benches/load/run --redis ...
    /// --redis-timeout T): at saturation on two busy cores the answer of a local Redis waits
    /// behind the gateway's own queue of requests, and 5ms decided 66% of checks locally, 10ms
    /// 21%, 15ms 0.2%, 25ms none.
    pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(25);
    pub const DEFAULT_REDIS_PREFIX: &str = "keygate:";
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitBackend {
    Local,
    /// One limit per key across every replica that shares the Redis.
    Redis {
        url: String,
        /// Prefix of the bucket names, so deployments can share one Redis.
        prefix: String,
        /// The longest a check waits on Redis before it is decided locally. Default
        /// [`RateLimit::DEFAULT_REDIS_TIMEOUT`].
        timeout: Duration,
    },
}

#[derive(Debug, Clone)]
pub struct Lifecycle {
    /// Keys unused this long are revoked. None: never.
    pub idle_expiry: Option<Duration>,
    /// Warning thresholds before idle revocation, longest first.
    pub warn_before: Vec<Duration>,
    /// How often the idle sweep runs.
    pub check_interval: Duration,
    pub webhook: Option<String>,
}

impl Lifecycle {
    pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(3600);
}

#[derive(Debug, Clone)]
pub struct Metrics {
    /// Export `keygate_key_requests_total` per key. Switched off for very many keys.
    pub per_key: bool,
}

impl Metrics {
    pub const DEFAULT_PER_KEY: bool = true;
}

#[derive(Debug, Clone)]
pub struct Logs {
    /// One access record per request on stdout.
    pub access: bool,
    /// Recent access records kept in memory (`GET /v1/requests`). 0 keeps none.
    pub recent: usize,
}

impl Logs {
    pub const DEFAULT_ACCESS: bool = true;
    /// A few minutes of a busy replica; a record takes at most about 800 bytes, so a few MB.
    pub const DEFAULT_RECENT: usize = 10_000;
}

/// `[usage]`: the usage analytics kept in the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    /// How long the hourly rows are kept; older ones are pruned at most hourly.
    pub retention: Duration,
}

impl Usage {
    pub const DEFAULT_RETENTION: Duration = Duration::from_secs(90 * 86_400);
    /// Rows are hourly: a shorter retention would prune the hour being counted.
    pub const MIN_RETENTION: Duration = Duration::from_secs(3_600);
}

/// `[tracing]`: a span per request, exported over OTLP/HTTP.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Tracing {
    /// Base URL of the collector (spans go to its `/v1/traces`), no trailing slash. None: off.
    pub otlp_endpoint: Option<String>,
    /// Share of root requests traced, 0.0 to 1.0; a request with a parent follows its sampled
    /// flag.
    pub sample_ratio: f64,
    /// `service.name` of the spans.
    pub service_name: String,
    /// Time between two exports of the ended spans.
    pub export_interval: Duration,
}

impl Tracing {
    /// All root requests.
    pub const DEFAULT_SAMPLE_RATIO: f64 = 1.0;
    pub const DEFAULT_SERVICE_NAME: &str = "keygate";
    /// As the OpenTelemetry SDKs do.
    pub const DEFAULT_EXPORT_INTERVAL: Duration = Duration::from_secs(5);
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    /// Scheme `http` or `https`, an authority, and an optional path prefix (no trailing slash,
    /// no query).
    pub url: Uri,
    /// For an `https` URL: how to verify the upstream, and what to present to it.
    pub tls: Option<UpstreamTls>,
    /// Time to a connection (502 past it).
    pub connect_timeout: Duration,
    /// Time to the response head, from the end of the request body.
    pub timeout: Duration,
    /// Longest wait for a turn past `pool_max_connections` (503 past it).
    pub queue_timeout: Duration,
    /// Open connections per upstream at most, busy or idle.
    pub pool_max_connections: usize,
    /// Idle pooled connections kept per upstream.
    pub pool_max_idle: usize,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
}

impl Upstream {
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    /// Short because a wait past the cap is only worth it when a connection is about to come
    /// free; behind a stalled upstream every waiter would wait in vain, and the client is
    /// better off with a prompt 503 to retry or go elsewhere. A tenth of a second covers a busy
    /// upstream answering in tens of milliseconds. At most half of `timeout`.
    pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_millis(100);
    pub const DEFAULT_POOL_MAX_CONNECTIONS: usize = 1024;
    pub const DEFAULT_POOL_MAX_IDLE: usize = 128;
    pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    /// Lower-case host (port stripped) this route is limited to.
    pub host: Option<String>,
    pub path: PathPattern,
    pub environment: Environment,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// Index into `path.segments` of the parameter holding the customer id.
    pub customer_param: Option<usize>,
    /// None: any valid key of the environment is admitted.
    pub permissions: Option<RoutePermissions>,
    pub forward_credentials: bool,
    pub preserve_host: bool,
    /// Forward the method-override headers and check the permission of the method they name.
    pub allow_method_override: bool,
    /// What a request takes from its key's quota (and its rate limit).
    pub cost: NonZeroU32,
}

/// A route's `cost` when it sets none.
pub const DEFAULT_COST: NonZeroU32 = NonZeroU32::MIN;

/// `/v1/customers/{customer}`: literal and parameter segments; matches the path and all below.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    pub segments: Vec<Segment>,
    /// As written in the file, for messages.
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Param(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePermissions {
    /// Methods in upper case, each once.
    pub by_method: Vec<(Method, Permission)>,
    /// The `"*"` entry: every method not listed.
    pub fallback: Option<Permission>,
}

impl RoutePermissions {
    /// The permission `method` needs; `None` when the map names neither it nor `"*"`.
    pub fn required(&self, method: &Method) -> Option<&Permission> {
        self.by_method
            .iter()
            .find(|(listed, _)| listed == method)
            .map(|(_, permission)| permission)
            .or(self.fallback.as_ref())
    }
}

/// An `https` upstream's TLS client, built and checked (files read, PEM parsed, certificate and
/// key matched) when the config is validated, so `keygate check` finds what `serve` would.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// Roots (the configured `ca` or the web's), the optional client certificate, ALPN
    /// `http/1.1`.
    pub client: std::sync::Arc<rustls::ClientConfig>,
    /// The name sent as SNI and verified in the certificate: the URL's host.
    pub server_name: rustls::pki_types::ServerName<'static>,
    /// A digest of the files' contents and of the name: equal digests, interchangeable
    /// connections, so a reload that changes none of them keeps the pool.
    pub digest: [u8; 32],
    /// The files `ca`, `client_cert` and `client_key` name, resolved against the config
    /// file's folder.
    pub ca: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}
