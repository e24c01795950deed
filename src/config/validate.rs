//! Turns the raw file into a [`Config`]: parses every value, fills defaults, checks every
//! reference, and collects every problem (not just the first) with its line and field.
//!
//! Pure: reads no environment variable and binds no socket, so `keygate check` and `keygate
//! serve` share it. The only I/O is [`load`] reading the file, and reading the certificate
//! files an `https` upstream names (`upstream_tls`), so that `check` finds what `serve` would.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::ops::Range;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use http::header::HeaderName;
use ipnet::IpNet;
use toml::Spanned;

use super::problem::{position, ConfigError, Problem};
use super::raw::{self, Field, RawConfig};
use super::routes;
use super::tls_files::{self, CertificatePair, TlsFile};
use super::traces;
use super::urls::{redis_url, resolve, store_url};
use super::*;
use crate::core::environment::Environment;
use crate::core::key::RateLimitSpec;
use crate::core::units::{parse_duration, Rate};

/// [`load`], refused when it would serve nothing (see [`super::serving_problems`]), and the
/// files the config names read and checked as `serve` uses them: the TLS certificate and key
/// (see [`super::tls_files`]). What `check`, `serve` and a reload read; the `keys` commands,
/// which serve nothing, read the file with [`load`].
pub fn load_to_serve(path: &Path) -> Result<Config, ConfigError> {
    let config = load(path)?;
    let problems = super::serving_problems(&config);
    if !problems.is_empty() {
        return Err(ConfigError { problems });
    }
    check_files(&config, jiff::Timestamp::now().as_second())?;
    Ok(config)
}

/// Reads and validates the file at `path`; relative paths in it are taken from its folder.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let source = std::fs::read_to_string(path).map_err(|error| ConfigError {
        problems: vec![Problem {
            line: None,
            field: String::new(),
            column: None,
            message: format!("cannot read {}: {error}", path.display()),
        }],
    })?;
    let base_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    parse(&source, base_dir)
}

/// The problems of the files a valid config names, as of `now` (Unix seconds): the TLS pair,
/// and a `store.snapshot` whose folder is missing (every save would fail).
pub fn check_files(config: &Config, now: i64) -> Result<(), ConfigError> {
    tls_pair(config, now)?;
    let snapshot_folder = config.store.snapshot.as_deref().and_then(Path::parent);
    match snapshot_folder {
        Some(folder) if !folder.as_os_str().is_empty() && !folder.is_dir() => Err(ConfigError {
            problems: vec![Problem {
                line: None,
                column: None,
                field: "store.snapshot".to_owned(),
                message: format!(
                    "the folder {} does not exist: create it (or mount its volume); no snapshot could be saved there",
                    folder.display()
                ),
            }],
        }),
        _ => Ok(()),
    }
}

/// The TLS certificate and key `server.tls` names, read and checked as of `now` (Unix
/// seconds); `None` without TLS. A problem names the setting and its line.
pub fn tls_pair(config: &Config, now: i64) -> Result<Option<CertificatePair>, ConfigError> {
    let Some(tls) = &config.server.tls else {
        return Ok(None);
    };
    let at = |file: TlsFile| match file {
        TlsFile::Cert => tls.cert_line,
        TlsFile::Key => tls.key_line,
    };
    tls_files::read_pair(tls, now)
        .map(Some)
        .map_err(|error| ConfigError {
            problems: vec![Problem {
                line: at(error.file).map(|(line, _)| line),
                column: at(error.file).map(|(_, column)| column),
                field: error.file.field().to_owned(),
                message: error.message,
            }],
        })
}

/// Validates config text; relative paths in it are taken from `base_dir`.
pub fn parse(source: &str, base_dir: &Path) -> Result<Config, ConfigError> {
    let mut checker = Checker {
        source,
        problems: Vec::new(),
    };
    let raw: RawConfig = match raw::from_toml(source) {
        Ok(raw) => raw,
        Err(refusal) => {
            let position = refusal.span.map(|span| checker.position(&span));
            return Err(ConfigError {
                problems: vec![Problem {
                    line: position.map(|(line, _)| line),
                    column: position.map(|(_, column)| column),
                    field: refusal.field,
                    message: refusal.message,
                }],
            });
        }
    };
    let config = checker.config(raw, base_dir);
    match config {
        Some(config) if checker.problems.is_empty() => Ok(config),
        _ => Err(ConfigError {
            problems: checker.problems,
        }),
    }
}

/// Collects problems while turning raw values into typed ones. Each method returns a usable
/// value (the default, when the written one is wrong) so validation goes on and reports all.
pub(super) struct Checker<'s> {
    source: &'s str,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    /// The 1-based line and column (in characters) where `span` starts.
    pub(super) fn position(&self, span: &Range<usize>) -> (usize, usize) {
        position(self.source, span.start)
    }

    pub(super) fn fail(&mut self, span: &Range<usize>, field: &str, message: impl Into<String>) {
        let (line, column) = self.position(span);
        self.problems.push(Problem {
            line: Some(line),
            column: Some(column),
            field: field.to_owned(),
            message: message.into(),
        });
    }

    /// Parses a present value with `parse`, reporting its error; `None` when absent or wrong.
    pub(super) fn parsed<T, R, E: fmt::Display>(
        &mut self,
        value: &Field<R>,
        field: &str,
        parse: impl FnOnce(&R) -> Result<T, E>,
    ) -> Option<T> {
        let value = value.as_ref()?;
        match parse(value.get_ref()) {
            Ok(parsed) => Some(parsed),
            Err(error) => {
                self.fail(&value.span(), field, error.to_string());
                None
            }
        }
    }

    pub(super) fn duration(&mut self, value: &Field<String>, field: &str) -> Option<Duration> {
        self.parsed(value, field, |text| match parse_duration(text) {
            Ok(duration) if duration.is_zero() => Err("must be longer than zero".to_owned()),
            Ok(duration) => Ok(duration),
            Err(error) => Err(error.to_string()),
        })
    }

    pub(super) fn duration_or(&mut self, value: &Field<String>, field: &str, default: Duration) -> Duration {
        self.duration(value, field).unwrap_or(default)
    }

    /// A count between 1 and `max`.
    pub(super) fn count(&mut self, value: &Field<u64>, field: &str, max: u64) -> Option<u64> {
        self.parsed(value, field, |&n| match n {
            0 => Err("must be at least 1".to_owned()),
            n if n > max => Err(format!("must be at most {max}")),
            n => Ok(n),
        })
    }

    fn string_or(&mut self, value: &Field<String>, default: &str) -> String {
        value
            .as_ref()
            .map_or_else(|| default.to_owned(), |v| v.get_ref().clone())
    }

    fn config(&mut self, raw: RawConfig, base_dir: &Path) -> Option<Config> {
        let server = self.server(&raw.server, base_dir);
        let admin = self.admin(&raw.admin);
        let store = self.store(&raw.store, base_dir);
        let auth = self.auth(&raw.auth);
        let rate_limit = self.rate_limit(&raw.rate_limit);
        let lifecycle = self.lifecycle(&raw.lifecycle);
        let metrics = Metrics {
            per_key: raw
                .metrics
                .per_key
                .as_ref()
                .map_or(Metrics::DEFAULT_PER_KEY, |v| *v.get_ref()),
        };
        let logs = Logs {
            access: raw
                .logs
                .access
                .as_ref()
                .map_or(Logs::DEFAULT_ACCESS, |v| *v.get_ref()),
            recent: self.recent(&raw.logs.recent),
        };
        let tracing = traces::tracing(self, &raw.tracing);
        let usage = self.usage(&raw.usage);
        let leaks = super::leaks::leaks(self, &raw.leaks, base_dir);
        let quotas = super::quotas::quotas(self, &raw.quotas);
        if admin.listen == server.listen && server.listen.port() != 0 {
            let span = raw.admin.listen.as_ref().map_or(0..0, Spanned::span);
            self.fail(&span, "admin.listen", "must differ from server.listen");
        }
        let upstreams = routes::upstreams(self, &raw.upstreams, base_dir);
        let routes = routes::routes(self, &raw.routes, &upstreams, server.environment);
        Some(Config {
            server,
            admin,
            store,
            auth,
            rate_limit,
            lifecycle,
            metrics,
            logs,
            tracing,
            usage,
            leaks,
            quotas,
            upstreams,
            routes,
        })
    }

    fn socket_addr(&mut self, value: &Field<String>, field: &str, default: SocketAddr) -> SocketAddr {
        self.parsed(value, field, |text| {
            SocketAddr::from_str(text.trim()).map_err(|_| {
                format!("{text:?} is not a socket address like \"0.0.0.0:8080\" or \"[::1]:8080\"")
            })
        })
        .unwrap_or(default)
    }

    fn environment(&mut self, value: &Field<String>, field: &str) -> Option<Environment> {
        self.parsed(value, field, |text| Environment::from_str(text))
    }

    fn server(&mut self, raw: &raw::RawServer, base_dir: &Path) -> Server {
        let tls = raw.tls.as_ref().map(|tls| {
            let tls = tls.get_ref();
            let path = |checker: &mut Self, value: &Spanned<String>, field: &str| {
                if value.get_ref().trim().is_empty() {
                    checker.fail(&value.span(), field, "must name a PEM file");
                }
                base_dir.join(value.get_ref())
            };
            Tls {
                cert: path(self, &tls.cert, "server.tls.cert"),
                key: path(self, &tls.key, "server.tls.key"),
                cert_line: Some(self.position(&tls.cert.span())),
                key_line: Some(self.position(&tls.key.span())),
            }
        });
        let trusted_proxies = raw.trusted_proxies.as_ref().map_or_else(Vec::new, |list| {
            list.get_ref()
                .iter()
                .filter_map(|entry| {
                    self.parsed(&Some(entry.clone()), "server.trusted_proxies", |text| {
                        ip_net(text)
                    })
                })
                .collect()
        });
        Server {
            listen: self.socket_addr(&raw.listen, "server.listen", Server::DEFAULT_LISTEN),
            environment: self
                .environment(&raw.environment, "server.environment")
                .unwrap_or(Server::DEFAULT_ENVIRONMENT),
            tls,
            trusted_proxies,
            shutdown_grace: self.duration_or(
                &raw.shutdown_grace,
                "server.shutdown_grace",
                Server::DEFAULT_SHUTDOWN_GRACE,
            ),
            first_byte_timeout: self.duration_or(
                &raw.first_byte_timeout,
                "server.first_byte_timeout",
                Server::DEFAULT_FIRST_BYTE_TIMEOUT,
            ),
            tls_handshake_timeout: self.duration_or(
                &raw.tls_handshake_timeout,
                "server.tls_handshake_timeout",
                Server::DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            ),
            header_read_timeout: self.duration_or(
                &raw.header_read_timeout,
                "server.header_read_timeout",
                Server::DEFAULT_HEADER_READ_TIMEOUT,
            ),
            body_idle_timeout: self.duration_or(
                &raw.body_idle_timeout,
                "server.body_idle_timeout",
                Server::DEFAULT_BODY_IDLE_TIMEOUT,
            ),
            max_header_bytes: self.usize(
                &raw.max_header_bytes,
                "server.max_header_bytes",
                Server::DEFAULT_MAX_HEADER_BYTES,
            ),
            max_headers: self.usize(
                &raw.max_headers,
                "server.max_headers",
                Server::DEFAULT_MAX_HEADERS,
            ),
            max_uri_bytes: self.usize(
                &raw.max_uri_bytes,
                "server.max_uri_bytes",
                Server::DEFAULT_MAX_URI_BYTES,
            ),
            idle_timeout: self.duration_or(
                &raw.idle_timeout,
                "server.idle_timeout",
                Server::DEFAULT_IDLE_TIMEOUT,
            ),
            http2_max_concurrent_streams: self
                .count(
                    &raw.http2_max_concurrent_streams,
                    "server.http2_max_concurrent_streams",
                    1 << 20,
                )
                .map_or(Server::DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS, |n| n as u32),
            max_connections: self.usize(
                &raw.max_connections,
                "server.max_connections",
                Server::DEFAULT_MAX_CONNECTIONS,
            ),
            max_request_body: self.count(&raw.max_request_body, "server.max_request_body", u64::MAX),
            worker_threads: self
                .count(&raw.worker_threads, "server.worker_threads", 1024)
                .map(|n| n as usize),
            underscore_headers: self
                .parsed(&raw.underscore_headers, "server.underscore_headers", |text| {
                    underscore_headers(text)
                })
                .unwrap_or(Server::DEFAULT_UNDERSCORE_HEADERS),
        }
    }

    fn usize(&mut self, value: &Field<u64>, field: &str, default: usize) -> usize {
        self.count(value, field, u32::MAX.into())
            .map_or(default, |n| n as usize)
    }

    /// `logs.recent`: 0 keeps none; a record takes at most about 800 bytes.
    fn recent(&mut self, value: &Field<u64>) -> usize {
        const MAX: u64 = 1_000_000;
        self.parsed(value, "logs.recent", |&n| match n {
            n if n > MAX => Err(format!("must be at most {MAX}")),
            n => Ok(n as usize),
        })
        .unwrap_or(Logs::DEFAULT_RECENT)
    }

    fn admin(&mut self, raw: &raw::RawAdmin) -> Admin {
        let token_env = self.string_or(&raw.token_env, Admin::DEFAULT_TOKEN_ENV);
        if let Some(value) = &raw.token_env {
            if !is_env_name(value.get_ref()) {
                self.fail(
                    &value.span(),
                    "admin.token_env",
                    "must be an environment variable name",
                );
            }
        }
        let read_token_env = self.parsed(&raw.read_token_env, "admin.read_token_env", |name| {
            if !is_env_name(name) {
                Err("must be an environment variable name")
            } else if *name == token_env {
                Err("must differ from admin.token_env")
            } else {
                Ok(name.clone())
            }
        });
        let advertise_env = self.parsed(&raw.advertise_env, "admin.advertise_env", |name| {
            if !is_env_name(name) {
                Err("must be an environment variable name")
            } else if raw.advertise.is_some() {
                Err("set admin.advertise or admin.advertise_env, not both")
            } else {
                Ok(name.clone())
            }
        });
        Admin {
            listen: self.socket_addr(&raw.listen, "admin.listen", Admin::DEFAULT_LISTEN),
            token_env,
            read_token_env,
            advertise: self.parsed(&raw.advertise, "admin.advertise", |text| Advertise::parse(text)),
            advertise_env,
        }
    }

    fn store(&mut self, raw: &raw::RawStore, base_dir: &Path) -> Store {
        let url = self
            .parsed(&raw.url, "store.url", |text| store_url(text, base_dir))
            .unwrap_or_else(|| StoreUrl::Sqlite(base_dir.join(Store::DEFAULT_SQLITE_FILE)));
        let pepper_env = raw.pepper_env.as_ref().map(|value| {
            if !is_env_name(value.get_ref()) {
                self.fail(
                    &value.span(),
                    "store.pepper_env",
                    "must be an environment variable name",
                );
            }
            value.get_ref().clone()
        });
        Store {
            url,
            sync_interval: self.duration_or(
                &raw.sync_interval,
                "store.sync_interval",
                Store::DEFAULT_SYNC_INTERVAL,
            ),
            pepper_env,
            max_staleness: self.duration(&raw.max_staleness, "store.max_staleness"),
            snapshot: raw.snapshot.as_ref().and_then(|value| {
                let text = value.get_ref().trim();
                if text.is_empty() {
                    self.fail(&value.span(), "store.snapshot", "must be a file path");
                    return None;
                }
                Some(resolve(base_dir, text))
            }),
            usage_flush_interval: self.duration_or(
                &raw.usage_flush_interval,
                "store.usage_flush_interval",
                Store::DEFAULT_USAGE_FLUSH_INTERVAL,
            ),
        }
    }

    /// `[usage]`: `retention`, an hour at least.
    fn usage(&mut self, raw: &raw::RawUsage) -> Usage {
        let retention = self.parsed(&raw.retention, "usage.retention", |text| {
            match parse_duration(text) {
                Ok(duration) if duration < Usage::MIN_RETENTION => Err("must be at least 1h".to_owned()),
                Ok(duration) => Ok(duration),
                Err(error) => Err(error.to_string()),
            }
        });
        Usage {
            retention: retention.unwrap_or(Usage::DEFAULT_RETENTION),
        }
    }

    fn auth(&mut self, raw: &raw::RawAuth) -> Auth {
        let (mut basic, mut bearer, mut header_on) = (true, true, true);
        if let Some(schemes) = &raw.schemes {
            (basic, bearer, header_on) = (false, false, false);
            if schemes.get_ref().is_empty() {
                self.fail(
                    &schemes.span(),
                    "auth.schemes",
                    "must name at least one of basic, bearer, header",
                );
                basic = true;
            }
            for scheme in schemes.get_ref() {
                let flag = match scheme.get_ref().as_str() {
                    "basic" => &mut basic,
                    "bearer" => &mut bearer,
                    "header" => &mut header_on,
                    other => {
                        let message = format!("unknown scheme {other:?} (use basic, bearer, header)");
                        self.fail(&scheme.span(), "auth.schemes", message);
                        continue;
                    }
                };
                if std::mem::replace(flag, true) {
                    self.fail(
                        &scheme.span(),
                        "auth.schemes",
                        format!("{:?} is listed twice", scheme.get_ref()),
                    );
                }
            }
        }
        let header = self
            .parsed(&raw.header, "auth.header", |text| key_header(text))
            .unwrap_or(Auth::DEFAULT_HEADER);
        let realm = self.string_or(&raw.realm, Auth::DEFAULT_REALM);
        if let Some(value) = &raw.realm {
            if realm.is_empty() || realm.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
                self.fail(
                    &value.span(),
                    "auth.realm",
                    "must be non-empty, without quotes, backslashes or control characters",
                );
            }
        }
        Auth {
            basic,
            bearer,
            header,
            header_scheme: header_on,
            realm,
            failed_per_ip: self
                .parsed(&raw.failed_per_ip, "auth.failed_per_ip", |text| {
                    Rate::from_str(text)
                })
                .unwrap_or(Auth::DEFAULT_FAILED_PER_IP),
        }
    }

    fn rate_limit(&mut self, raw: &raw::RawRateLimit) -> RateLimit {
        let rate = self
            .parsed(&raw.default, "rate_limit.default", |text| Rate::from_str(text))
            .unwrap_or(RateLimit::DEFAULT_RATE);
        let burst = self
            .count(&raw.default_burst, "rate_limit.default_burst", u32::MAX.into())
            .and_then(|n| NonZeroU32::new(n as u32));
        let backend = match raw.backend.as_ref().map(|b| (b.get_ref().as_str(), b.span())) {
            None | Some(("local", _)) => RateLimitBackend::Local,
            Some(("redis", span)) => match &raw.redis_url {
                Some(url) => match redis_url(url.get_ref()) {
                    Ok(()) => RateLimitBackend::Redis {
                        url: url.get_ref().clone(),
                        prefix: self.string_or(&raw.redis_prefix, RateLimit::DEFAULT_REDIS_PREFIX),
                        timeout: self.duration_or(
                            &raw.redis_timeout,
                            "rate_limit.redis_timeout",
                            RateLimit::DEFAULT_REDIS_TIMEOUT,
                        ),
                    },
                    Err(why) => {
                        self.fail(&url.span(), "rate_limit.redis_url", why);
                        RateLimitBackend::Local
                    }
                },
                None => {
                    self.fail(
                        &span,
                        "rate_limit.redis_url",
                        "is required by backend = \"redis\"",
                    );
                    RateLimitBackend::Local
                }
            },
            Some((other, span)) => {
                self.fail(
                    &span,
                    "rate_limit.backend",
                    format!("unknown backend {other:?} (use local or redis)"),
                );
                RateLimitBackend::Local
            }
        };
        // Explicitly local or left to the default alike: a Redis setting would be ignored.
        let local = raw.backend.as_ref().is_none_or(|b| b.get_ref() == "local");
        if local {
            let redis_only = [
                ("rate_limit.redis_url", raw.redis_url.as_ref().map(Spanned::span)),
                (
                    "rate_limit.redis_timeout",
                    raw.redis_timeout.as_ref().map(Spanned::span),
                ),
                (
                    "rate_limit.redis_prefix",
                    raw.redis_prefix.as_ref().map(Spanned::span),
                ),
            ];
            for (field, span) in redis_only {
                if let Some(span) = span {
                    self.fail(&span, field, "is only used with backend = \"redis\"");
                }
            }
        }
        RateLimit {
            default: RateLimitSpec::from_rate(rate, burst),
            draft_headers: raw.draft_headers.as_ref().is_some_and(|v| *v.get_ref()),
            backend,
        }
    }

    fn lifecycle(&mut self, raw: &raw::RawLifecycle) -> Lifecycle {
        let idle_expiry = self.duration(&raw.idle_expiry, "lifecycle.idle_expiry");
        let mut warn_before: Vec<Duration> = Vec::new();
        if let Some(list) = &raw.warn_before {
            if idle_expiry.is_none() && !list.get_ref().is_empty() {
                self.fail(
                    &list.span(),
                    "lifecycle.warn_before",
                    "needs lifecycle.idle_expiry",
                );
            }
            for entry in list.get_ref() {
                let Some(warning) = self.duration(&Some(entry.clone()), "lifecycle.warn_before") else {
                    continue;
                };
                if warn_before.contains(&warning) {
                    self.fail(
                        &entry.span(),
                        "lifecycle.warn_before",
                        format!("{:?} is listed twice", entry.get_ref()),
                    );
                } else if idle_expiry.is_some_and(|idle| warning >= idle) {
                    self.fail(
                        &entry.span(),
                        "lifecycle.warn_before",
                        "must be shorter than lifecycle.idle_expiry",
                    );
                } else {
                    warn_before.push(warning);
                }
            }
        }
        warn_before.sort_unstable_by(|a, b| b.cmp(a));
        let webhook = self.parsed(&raw.webhook, "lifecycle.webhook", |text| webhook(text));
        Lifecycle {
            idle_expiry,
            warn_before,
            check_interval: self.duration_or(
                &raw.check_interval,
                "lifecycle.check_interval",
                Lifecycle::DEFAULT_CHECK_INTERVAL,
            ),
            webhook,
        }
    }
}

fn is_env_name(text: &str) -> bool {
    !text.is_empty()
        && !text.starts_with(|c: char| c.is_ascii_digit())
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A CIDR, or a bare IP taken as a single host.
fn ip_net(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    IpNet::from_str(text)
        .or_else(|_| IpAddr::from_str(text).map(IpNet::from))
        .map_err(|_| format!("{text:?} is not a CIDR like \"10.0.0.0/8\" or an IP address"))
}

fn underscore_headers(text: &str) -> Result<UnderscoreHeaders, String> {
    match text.trim() {
        "drop" => Ok(UnderscoreHeaders::Drop),
        "refuse" => Ok(UnderscoreHeaders::Refuse),
        other => Err(format!("{other:?} is neither \"drop\" nor \"refuse\"")),
    }
}

fn key_header(text: &str) -> Result<HeaderName, String> {
    let name =
        HeaderName::from_str(text.trim()).map_err(|_| format!("{text:?} is not a valid header name"))?;
    // The key header is stripped from every forwarded request: not one that carries the
    // message's framing or routing, or one the gateway sets itself.
    let reserved = matches!(
        name.as_str(),
        "authorization" | "host" | "content-length" | "content-type" | "cookie" | "x-request-id"
    ) || crate::core::headers::is_hop_by_hop(name.as_str())
        || ["x-keygate-", "x-forwarded-"]
            .iter()
            .any(|prefix| name.as_str().starts_with(prefix));
    if reserved {
        return Err(format!("{text:?} is reserved; choose another header name"));
    }
    Ok(name)
}

fn webhook(text: &str) -> Result<String, String> {
    let uri = http::Uri::from_str(text.trim()).map_err(|_| format!("{text:?} is not a URL"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(text.trim().to_owned()),
        _ => Err(format!("{text:?} must be an http:// or https:// URL")),
    }
}

#[cfg(test)]
mod tests;
