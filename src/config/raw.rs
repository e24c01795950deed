//! `gateway.toml` exactly as written: serde structs that refuse unknown fields and keep the
//! position of every value, so [`super::validate`] can name the line of each mistake.
//!
//! Every section and every field is optional; the default each one takes is named on its doc
//! line (a constant beside the validated type) and applied in validation, which owns all
//! meaning. Nothing here interprets a value; a value of
//! the wrong type is refused here, naming its field.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

#[cfg(doc)]
use super::{Admin, Auth, Lifecycle, Logs, Metrics, RateLimit, Server, Store, Tracing, Upstream, Usage};

/// A value that may be absent, with its position in the file when present.
pub type Field<T> = Option<Spanned<T>>;

/// A file these structs cannot take: where, the dotted field (empty when the TOML itself is
/// broken), and why in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub span: Option<Range<usize>>,
    pub field: String,
    pub message: String,
}

/// Reads `source` into the raw structs. A value of the wrong type is named by its field and
/// the shape it takes (`store.sync_interval: got integer `1`, expected a string in quotes, like
/// "1s"`), not by serde's types alone.
pub fn from_toml(source: &str) -> Result<RawConfig, Refusal> {
    let deserializer = toml::Deserializer::parse(source).map_err(|error| Refusal {
        span: error.span(),
        field: String::new(),
        message: error.message().trim().replace('\n', " "),
    })?;
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let field = field_path(&error.path().to_string());
        let inner = error.into_inner();
        let message = inner.message().trim().replace('\n', " ");
        Refusal {
            span: inner.span(),
            message: reword(&field, &message),
            field,
        }
    })
}

/// The dotted path of a field, less the segments `Spanned` adds inside each value and the
/// trailing name of an unknown field (its message names it).
fn field_path(path: &str) -> String {
    let path = if path == "." { "" } else { path };
    let segments: Vec<&str> = path
        .split('.')
        .filter(|segment| !segment.starts_with("$__") && !segment.is_empty())
        .collect();
    segments.join(".")
}

/// serde's `invalid type: integer `1`, expected a string` in the words of this file: what was
/// written, and how the field is written, with an example where the field's name tells it.
fn reword(field: &str, message: &str) -> String {
    let Some(rest) = message.strip_prefix("invalid type: ") else {
        return message.to_owned();
    };
    let Some((got, expected)) = rest.split_once(", expected ") else {
        return message.to_owned();
    };
    let name = field.rsplit('.').next().unwrap_or(field);
    let example = match name {
        "failed_per_ip" | "default" => Some("\"100/s\""),
        _ if [
            "interval",
            "timeout",
            "grace",
            "staleness",
            "expiry",
            "warn_before",
        ]
        .iter()
        .any(|part| name.contains(part)) =>
        {
            Some("\"1s\"")
        }
        _ => None,
    };
    match (expected, example) {
        ("a string", Some(example)) => format!("got {got}, expected a string in quotes, like {example}"),
        ("a string", None) => format!("got {got}, expected a string in quotes"),
        (expected, _) => format!("got {got}, expected {expected}"),
    }
}

/// Every setting the file takes, as dotted paths in the order of the structs below:
/// `server.listen`, `server.tls` and its `server.tls.cert`, ..., `upstream.timeout`,
/// `route.permissions`. Asked of the parser itself (serde names the fields a table takes when
/// it refuses an unknown one), so that the reference in `docs/` and the classification of
/// [`super::RestartOnly`] are checked against what is accepted, not against another list.
pub fn settings() -> Vec<String> {
    let mut found = Vec::new();
    let mut path = Vec::new();
    for section in table_fields(&path).unwrap_or_default() {
        path.push(Segment::new(section));
        walk(&mut path, &mut found);
        path.pop();
    }
    found
}

/// One step of a setting's path: a field, and whether it holds an array of tables.
struct Segment {
    name: String,
    array: bool,
}

impl Segment {
    fn new(name: String) -> Segment {
        Segment { name, array: false }
    }
}

/// Adds the settings at and under `path` (a section, or a field in one) to `found`.
fn walk(path: &mut Vec<Segment>, found: &mut Vec<String>) {
    // A table, or an array of tables (`[[upstream]]`), or neither: a setting's value.
    let fields = [false, true].into_iter().find_map(|array| {
        if let Some(last) = path.last_mut() {
            last.array = array;
        }
        table_fields(path)
    });
    let name = path.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(".");
    let Some(fields) = fields else {
        found.push(name);
        return;
    };
    // A table inside a section is a setting of its own (`server.tls`), beside its fields.
    if path.len() > 1 {
        found.push(name);
    }
    for field in fields {
        path.push(Segment::new(field));
        walk(path, found);
        path.pop();
    }
}

/// The fields of the table at `path`, as serde lists them refusing an unknown one; `None`
/// when the value there is not a table of named fields.
fn table_fields(path: &[Segment]) -> Option<Vec<String>> {
    const PROBE: &str = "__probe";
    let mut value = format!("{{ {PROBE} = 1 }}");
    let source = match path.split_last() {
        None => format!("{PROBE} = 1"),
        Some((last, outer)) => {
            if last.array {
                value = format!("[{value}]");
            }
            let mut assignment = format!("{} = {value}", last.name);
            for segment in outer.iter().rev() {
                let table = format!("{{ {assignment} }}");
                let table = if segment.array {
                    format!("[{table}]")
                } else {
                    table
                };
                assignment = format!("{} = {table}", segment.name);
            }
            assignment
        }
    };
    let message = from_toml(&source).err()?.message;
    let expected = message.strip_prefix(&format!("unknown field `{PROBE}`, expected "))?;
    Some(
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect(),
    )
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub rate_limit: RawRateLimit,
    #[serde(default)]
    pub lifecycle: RawLifecycle,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub logs: RawLogs,
    #[serde(default)]
    pub tracing: RawTracing,
    #[serde(default)]
    pub usage: RawUsage,
    #[serde(default)]
    pub leaks: RawLeaks,
    #[serde(default)]
    pub quotas: super::quotas::RawQuotas,
    /// `[[upstream]]` tables.
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<Spanned<RawUpstream>>,
    /// `[[route]]` tables.
    #[serde(default, rename = "route")]
    pub routes: Vec<Spanned<RawRoute>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Socket address of the proxy listener. Default [`Server::DEFAULT_LISTEN`].
    pub listen: Field<String>,
    /// Environment of routes that name none: production, staging, development. Default
    /// [`Server::DEFAULT_ENVIRONMENT`].
    pub environment: Field<String>,
    /// `{ cert = "cert.pem", key = "key.pem" }`, PEM files relative to the config file. Default: plain HTTP.
    pub tls: Field<RawTls>,
    /// CIDRs (or bare IPs) whose `X-Forwarded-For` is believed. Default none.
    pub trusted_proxies: Field<Vec<Spanned<String>>>,
    /// Duration in-flight requests may finish in after SIGTERM. Default
    /// [`Server::DEFAULT_SHUTDOWN_GRACE`].
    pub shutdown_grace: Field<String>,
    /// Duration within which a new connection must send its first byte, or it is closed. Default
    /// [`Server::DEFAULT_FIRST_BYTE_TIMEOUT`].
    pub first_byte_timeout: Field<String>,
    /// Duration within which a TLS handshake must complete, or the connection is closed. Default
    /// [`Server::DEFAULT_TLS_HANDSHAKE_TIMEOUT`].
    pub tls_handshake_timeout: Field<String>,
    /// Duration within which a request head must arrive. Default
    /// [`Server::DEFAULT_HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Field<String>,
    /// Longest pause in a request body while the upstream waits for it (408 past it). Default
    /// [`Server::DEFAULT_BODY_IDLE_TIMEOUT`].
    pub body_idle_timeout: Field<String>,
    /// Bytes of request head at most. Default [`Server::DEFAULT_MAX_HEADER_BYTES`].
    pub max_header_bytes: Field<u64>,
    /// Request headers at most. Default [`Server::DEFAULT_MAX_HEADERS`].
    pub max_headers: Field<u64>,
    /// Bytes of request URI at most. Default [`Server::DEFAULT_MAX_URI_BYTES`].
    pub max_uri_bytes: Field<u64>,
    /// Duration after which an idle keep-alive connection, or an upgrade tunnel without a byte
    /// either way, is closed. Default [`Server::DEFAULT_IDLE_TIMEOUT`].
    pub idle_timeout: Field<String>,
    /// Concurrent HTTP/2 streams per connection. Default
    /// [`Server::DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS`].
    pub http2_max_concurrent_streams: Field<u64>,
    /// Open client connections past which new ones wait. Default
    /// [`Server::DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: Field<u64>,
    /// Bytes of request body at most (413 past it). Default: no limit.
    pub max_request_body: Field<u64>,
    /// Request headers whose name has `_`: `"drop"` them before forwarding, or `"refuse"` the
    /// request with 400. Default [`Server::DEFAULT_UNDERSCORE_HEADERS`].
    pub underscore_headers: Field<String>,
    /// Threads serving requests. Default: one per CPU.
    pub worker_threads: Field<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain.
    pub cert: Spanned<String>,
    /// PEM private key.
    pub key: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Socket address of the admin listener. Default [`Admin::DEFAULT_LISTEN`].
    pub listen: Field<String>,
    /// Environment variable holding the admin bearer token. Default [`Admin::DEFAULT_TOKEN_ENV`].
    pub token_env: Field<String>,
    /// Environment variable holding a read-only admin token (every `GET`, and `verify`).
    /// Default: none.
    pub read_token_env: Field<String>,
    /// `http://HOST[:PORT]` where the other replicas reach this admin listener (SPEC 12); the
    /// port defaults to the one `listen` bound. Default: none (listed, not asked for records).
    pub advertise: Field<String>,
    /// Environment variable holding `admin.advertise`'s value (a URL as there, or a bare host
    /// such as a pod IP), read by `serve` at start: one config file for replicas that each
    /// advertise their own address. Default: none. Not with `advertise`.
    pub advertise_env: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// `sqlite://PATH` (relative to the config file) or `postgres://...`. Default: the SQLite file
    /// [`Store::DEFAULT_SQLITE_FILE`] beside the config file.
    pub url: Field<String>,
    /// Duration between pulls of key changes. Default [`Store::DEFAULT_SYNC_INTERVAL`].
    pub sync_interval: Field<String>,
    /// Duration between writes of per-key usage. Default [`Store::DEFAULT_USAGE_FLUSH_INTERVAL`].
    pub usage_flush_interval: Field<String>,
    /// Environment variable holding the hash pepper. Default: unkeyed BLAKE3.
    pub pepper_env: Field<String>,
    /// Duration of key-table staleness past which requests fail closed with 503. Default: never.
    pub max_staleness: Field<String>,
    /// File (relative to the config file) the loaded key table is saved to, hashes only, to
    /// start from while the store is down. Default: none.
    pub snapshot: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// Accepted credential schemes among basic, bearer, header. Default all three.
    pub schemes: Field<Vec<Spanned<String>>>,
    /// Header name of the `header` scheme, also stripped before forwarding when that scheme is off.
    /// Default [`Auth::DEFAULT_HEADER`].
    pub header: Field<String>,
    /// Realm of `WWW-Authenticate: Basic`. Default [`Auth::DEFAULT_REALM`].
    pub realm: Field<String>,
    /// Rate of failed authentications allowed per client IP. Default
    /// [`Auth::DEFAULT_FAILED_PER_IP`].
    pub failed_per_ip: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// Rate of keys without their own limit. Default [`RateLimit::DEFAULT_RATE`].
    pub default: Field<String>,
    /// Requests of burst for the default rate. Default: the rate's request count.
    pub default_burst: Field<u64>,
    /// Also send the IETF draft `RateLimit-Policy` / `RateLimit` headers. Default false.
    pub draft_headers: Field<bool>,
    /// `local` or `redis`. Default local.
    pub backend: Field<String>,
    /// `redis://...` or `rediss://...` (TLS), required by the redis backend.
    pub redis_url: Field<String>,
    /// Duration a check waits on Redis before it is decided locally. Default
    /// [`RateLimit::DEFAULT_REDIS_TIMEOUT`].
    pub redis_timeout: Field<String>,
    /// Prefix of the keygate's bucket names in Redis. Default [`RateLimit::DEFAULT_REDIS_PREFIX`].
    pub redis_prefix: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLifecycle {
    /// Duration of disuse after which a key is revoked. Default: never.
    pub idle_expiry: Field<String>,
    /// Durations before idle revocation at which to warn. Default none.
    pub warn_before: Field<Vec<Spanned<String>>>,
    /// Duration between idle sweeps. Default [`Lifecycle::DEFAULT_CHECK_INTERVAL`].
    pub check_interval: Field<String>,
    /// `http(s)://` URL receiving lifecycle events as JSON POSTs. Default none.
    pub webhook: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Export `keygate_key_requests_total` per key. Default [`Metrics::DEFAULT_PER_KEY`].
    pub per_key: Field<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogs {
    /// Write one access record per request to stdout. Default [`Logs::DEFAULT_ACCESS`].
    pub access: Field<bool>,
    /// How many recent access records to keep in memory for `GET /v1/requests` and the page.
    /// Default [`Logs::DEFAULT_RECENT`]; 0 keeps none.
    pub recent: Field<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUsage {
    /// How long the hourly usage analytics rows are kept (at least `1h`). Default
    /// [`Usage::DEFAULT_RETENTION`].
    pub retention: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    /// `http://` or `https://` base URL of an OTLP/HTTP collector; spans are posted to its
    /// `/v1/traces`. Default: none, no spans.
    pub otlp_endpoint: Field<String>,
    /// Share of root requests (no incoming sampled parent) traced, 0.0 to 1.0. Default
    /// [`Tracing::DEFAULT_SAMPLE_RATIO`].
    pub sample_ratio: Field<f64>,
    /// `service.name` of the spans. Default [`Tracing::DEFAULT_SERVICE_NAME`].
    pub service_name: Field<String>,
    /// Duration between exports of the ended spans. Default [`Tracing::DEFAULT_EXPORT_INTERVAL`].
    pub export_interval: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLeaks {
    /// `"revoke"` or `"quarantine"`: what a report does to a live key. Default
    /// [`LeakAction::Revoke`](super::LeakAction::Revoke).
    pub action: Field<String>,
    /// Largest report body read, in bytes. Default [`Leaks::DEFAULT_MAX_BODY`](super::Leaks::DEFAULT_MAX_BODY).
    pub max_body: Field<u64>,
    /// GitHub's secret scanning partner endpoint. Default: off.
    pub github: Field<RawGithubLeaks>,
    /// GitLab's token revocation API. Default: off.
    pub gitlab: Field<RawGitlabLeaks>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGithubLeaks {
    /// Path on the proxy listener GitHub POSTs to. Required.
    pub path: Spanned<String>,
    /// URL of GitHub's public keys document. One of this and `keys_file` is required.
    pub keys_url: Field<String>,
    /// A copy of that document, relative to the config file.
    pub keys_file: Field<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGitlabLeaks {
    /// Base path on the proxy listener of GitLab's two endpoints. Required.
    pub path: Spanned<String>,
    /// Environment variable holding the token GitLab presents. Required.
    pub token_env: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// Unique name routes refer to. Required.
    pub name: Field<String>,
    /// `http://host[:port][/prefix]` or `https://...`. Required.
    pub url: Field<String>,
    /// PEM file of the CA certificates an `https` upstream's certificate must chain to; they
    /// replace the web's roots. Relative to the config file. Default: the web's roots
    /// (Mozilla's, compiled in).
    pub ca: Field<String>,
    /// PEM file of the certificate chain presented to an `https` upstream that asks for one;
    /// with `client_key`. Default: none.
    pub client_cert: Field<String>,
    /// PEM file of `client_cert`'s private key. Default: none.
    pub client_key: Field<String>,
    /// Duration to establish a connection (502 past it). Default
    /// [`Upstream::DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Field<String>,
    /// Duration to the response head from the end of the request body (504 past it); also the
    /// longest the upstream may take none of a streaming body. Default
    /// [`Upstream::DEFAULT_TIMEOUT`].
    pub timeout: Field<String>,
    /// Connections in use at most, and open at most, busy or idle; past the cap a request queues
    /// for its turn, first come first served, within `queue_timeout`. Default
    /// [`Upstream::DEFAULT_POOL_MAX_CONNECTIONS`].
    pub pool_max_connections: Field<u64>,
    /// Duration a request waits for its turn past `pool_max_connections` before a 503 with
    /// `Retry-After: 1`; shorter than `timeout`. Default [`Upstream::DEFAULT_QUEUE_TIMEOUT`].
    pub queue_timeout: Field<String>,
    /// Idle pooled connections kept. Default [`Upstream::DEFAULT_POOL_MAX_IDLE`].
    pub pool_max_idle: Field<u64>,
    /// Duration an idle pooled connection is kept. Default [`Upstream::DEFAULT_POOL_IDLE_TIMEOUT`].
    pub pool_idle_timeout: Field<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Unique name, used in metrics and logs. Required.
    pub name: Field<String>,
    /// Host the route is limited to (no port). Default: any host.
    pub host: Field<String>,
    /// `/literal/{param}/...`: matches this path and everything below it. Required.
    pub path: Field<String>,
    /// Environment of keys admitted. Default `server.environment`.
    pub environment: Field<String>,
    /// Name of an `[[upstream]]`. Required.
    pub upstream: Field<String>,
    /// Name of the path parameter holding the customer id. Default none.
    pub customer_param: Field<String>,
    /// Method (or `"*"`) to required permission. Default: any valid key is admitted.
    pub permissions: Field<BTreeMap<String, Spanned<String>>>,
    /// Forward `Authorization` / the key header to the upstream. Default false.
    pub forward_credentials: Field<bool>,
    /// Forward the client's `Host` instead of the upstream's. Default false.
    pub preserve_host: Field<bool>,
    /// Forward `X-HTTP-Method-Override`, `X-Method-Override` and `X-HTTP-Method`, and check the
    /// permission of the method they name. Default false: they are stripped.
    pub allow_method_override: Field<bool>,
    /// What a request on this route takes from its key's quota, 1 to 2^32 - 1. Default 1.
    pub cost: Field<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(source: &str) -> Refusal {
        match from_toml(source) {
            Ok(raw) => panic!("accepted {source}: {raw:?}"),
            Err(refusal) => refusal,
        }
    }

    #[test]
    fn a_value_of_the_wrong_type_is_named_by_its_field_and_shape() {
        for (source, field, message) in [
            (
                "[store]\nsync_interval = 1\n",
                "store.sync_interval",
                r#"got integer `1`, expected a string in quotes, like "1s""#,
            ),
            (
                "[auth]\nfailed_per_ip = 30\n",
                "auth.failed_per_ip",
                r#"got integer `30`, expected a string in quotes, like "100/s""#,
            ),
            (
                "[server]\nlisten = 8080\n",
                "server.listen",
                "got integer `8080`, expected a string in quotes",
            ),
            (
                "[server]\nmax_headers = \"100\"\n",
                "server.max_headers",
                r#"got string "100", expected u64"#,
            ),
            (
                "[[route]]\nname = \"r\"\npath = 5\n",
                "route[0].path",
                "got integer `5`, expected a string in quotes",
            ),
        ] {
            let found = refusal(source);
            assert_eq!(
                (found.field.as_str(), found.message.as_str()),
                (field, message),
                "{source}"
            );
            assert_eq!(
                found.span.map(|span| &source[span]),
                source.lines().last().and_then(|l| l.split(" = ").nth(1)),
                "{source}"
            );
        }
    }

    #[test]
    fn broken_toml_and_unknown_fields_keep_their_messages() {
        let broken = refusal("[store\n");
        assert_eq!(broken.field, "");
        let unknown = refusal("[store]\nsync_intervall = \"1s\"\n");
        assert!(
            unknown.message.starts_with("unknown field `sync_intervall`"),
            "{unknown:?}"
        );
    }
}
