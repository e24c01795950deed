//! Every setting the parser accepts, classified: applied by a reload, or restart-only (one of
//! [`RestartOnly`]'s). A setting added to `raw.rs` fails here until it is given a row.

use std::path::Path;

use super::RestartOnly;
use crate::config::{parse, raw, Config};

/// What a reload does with a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Applied,
    Restart,
}

/// How the row's setting is changed from [`BASE`] to see what a reload names.
#[derive(Debug, Clone, Copy)]
enum Change {
    /// Set to this TOML value.
    To(&'static str),
    /// Left out.
    Removed,
    /// In `[[upstream]]` or `[[route]]`, tables a reload replaces whole: none is restart-only.
    /// Also a setting that cannot be set beside [`BASE`]'s (`leaks.github.keys_file`).
    Table,
}

use Change::{Removed, Table, To};
use Class::{Applied, Restart};

/// A config in which every row's change is valid on its own.
const BASE: &str = r#"
[server]
tls = { cert = "cert.pem", key = "key.pem" }
[rate_limit]
backend = "redis"
redis_url = "redis://127.0.0.1:6379"
[lifecycle]
idle_expiry = "90d"
[leaks.github]
path = "/gh"
keys_url = "https://keys.example.com/github"
[leaks.gitlab]
path = "/gl"
token_env = "GITLAB_TOKEN"
[[upstream]]
name = "api"
url = "http://127.0.0.1:7001"
[[route]]
name = "customers"
path = "/v1/customers/{customer}"
upstream = "api"
"#;

const SETTINGS: &[(&str, Class, Change)] = &[
    ("server.listen", Restart, To(r#""127.0.0.1:1""#)),
    ("server.environment", Applied, To(r#""staging""#)),
    ("server.tls", Restart, Removed),
    ("server.tls.cert", Applied, To(r#""other.pem""#)),
    ("server.tls.key", Applied, To(r#""other.key""#)),
    ("server.trusted_proxies", Applied, To(r#"["10.0.0.0/8"]"#)),
    ("server.shutdown_grace", Restart, To(r#""5s""#)),
    ("server.first_byte_timeout", Restart, To(r#""1s""#)),
    ("server.tls_handshake_timeout", Restart, To(r#""1s""#)),
    ("server.header_read_timeout", Restart, To(r#""1s""#)),
    ("server.body_idle_timeout", Applied, To(r#""1s""#)),
    ("server.max_header_bytes", Restart, To("1024")),
    ("server.max_headers", Restart, To("10")),
    ("server.max_uri_bytes", Applied, To("100")),
    ("server.idle_timeout", Restart, To(r#""5s""#)),
    ("server.http2_max_concurrent_streams", Restart, To("10")),
    ("server.max_connections", Restart, To("10")),
    ("server.max_request_body", Applied, To("1024")),
    ("server.underscore_headers", Applied, To(r#""refuse""#)),
    ("server.worker_threads", Restart, To("1")),
    ("admin.listen", Restart, To(r#""127.0.0.1:2""#)),
    ("admin.token_env", Restart, To(r#""OTHER_TOKEN""#)),
    ("admin.read_token_env", Restart, To(r#""READ_TOKEN""#)),
    ("admin.advertise", Applied, To(r#""http://10.0.0.2""#)),
    ("admin.advertise_env", Restart, To(r#""POD_ADDRESS""#)),
    ("store.url", Restart, To(r#""sqlite://other.db""#)),
    ("store.sync_interval", Restart, To(r#""5s""#)),
    ("store.usage_flush_interval", Restart, To(r#""1s""#)),
    ("store.pepper_env", Restart, To(r#""PEPPER""#)),
    ("store.max_staleness", Applied, To(r#""10m""#)),
    ("store.snapshot", Restart, To(r#""keytable.snap""#)),
    ("auth.schemes", Applied, To(r#"["basic"]"#)),
    ("auth.header", Applied, To(r#""X-Key""#)),
    ("auth.realm", Applied, To(r#""api""#)),
    ("auth.failed_per_ip", Applied, To(r#""5/m""#)),
    ("rate_limit.default", Applied, To(r#""5/s""#)),
    ("rate_limit.default_burst", Applied, To("50")),
    ("rate_limit.draft_headers", Applied, To("true")),
    ("rate_limit.backend", Restart, To(r#""local""#)),
    ("rate_limit.redis_url", Restart, To(r#""redis://127.0.0.1:6380""#)),
    ("rate_limit.redis_timeout", Restart, To(r#""5ms""#)),
    ("rate_limit.redis_prefix", Restart, To(r#""other:""#)),
    ("lifecycle.idle_expiry", Restart, To(r#""30d""#)),
    ("lifecycle.warn_before", Restart, To(r#"["1d"]"#)),
    ("lifecycle.check_interval", Restart, To(r#""2h""#)),
    ("lifecycle.webhook", Restart, To(r#""http://127.0.0.1:9/hook""#)),
    ("metrics.per_key", Applied, To("false")),
    ("logs.access", Applied, To("false")),
    ("logs.recent", Applied, To("10")),
    ("tracing.otlp_endpoint", Restart, To(r#""http://127.0.0.1:4318""#)),
    ("tracing.sample_ratio", Restart, To("0.5")),
    ("tracing.service_name", Restart, To(r#""gateway""#)),
    ("tracing.export_interval", Restart, To(r#""1s""#)),
    ("usage.retention", Restart, To(r#""7d""#)),
    ("leaks.action", Restart, To(r#""quarantine""#)),
    ("leaks.max_body", Restart, To("10")),
    ("leaks.github", Restart, Removed),
    ("leaks.github.path", Restart, To(r#""/other""#)),
    (
        "leaks.github.keys_url",
        Restart,
        To(r#""https://keys.example.com/other""#),
    ),
    // Refused beside keys_url: changed in the effective config's test instead.
    ("leaks.github.keys_file", Restart, Table),
    ("leaks.gitlab", Restart, Removed),
    ("leaks.gitlab.path", Restart, To(r#""/other-gl""#)),
    ("leaks.gitlab.token_env", Restart, To(r#""OTHER_GITLAB_TOKEN""#)),
    ("quotas.warn_at", Restart, To("[0.5]")),
    ("quotas.lease_block", Restart, To("0.1")),
    ("quotas.lease_ttl", Restart, To(r#""10s""#)),
    ("upstream.name", Applied, Table),
    ("upstream.url", Applied, Table),
    ("upstream.ca", Applied, Table),
    ("upstream.client_cert", Applied, Table),
    ("upstream.client_key", Applied, Table),
    ("upstream.connect_timeout", Applied, Table),
    ("upstream.timeout", Applied, Table),
    ("upstream.pool_max_connections", Applied, Table),
    ("upstream.queue_timeout", Applied, Table),
    ("upstream.pool_max_idle", Applied, Table),
    ("upstream.pool_idle_timeout", Applied, Table),
    ("route.name", Applied, Table),
    ("route.host", Applied, Table),
    ("route.path", Applied, Table),
    ("route.environment", Applied, Table),
    ("route.upstream", Applied, Table),
    ("route.customer_param", Applied, Table),
    ("route.permissions", Applied, Table),
    ("route.forward_credentials", Applied, Table),
    ("route.preserve_host", Applied, Table),
    ("route.allow_method_override", Applied, Table),
    ("route.cost", Applied, Table),
];

fn config(source: &str) -> Config {
    parse(source, Path::new("/etc/keygate")).unwrap_or_else(|error| panic!("{error}\n{source}"))
}

/// [`BASE`] with `change` made at `path`.
fn changed(path: &str, change: Change) -> Config {
    let mut table: toml::Table = BASE.parse().unwrap();
    let (parents, name) = path.rsplit_once('.').unwrap();
    let mut parent = &mut table;
    for segment in parents.split('.') {
        parent = parent
            .entry(segment)
            .or_insert_with(|| toml::Table::new().into())
            .as_table_mut()
            .unwrap();
    }
    match change {
        To(value) => {
            let value: toml::Table = format!("v = {value}").parse().unwrap();
            parent.insert(name.to_owned(), value["v"].clone());
            // A local backend refuses the Redis settings: an operator switching drops them.
            if path == "rate_limit.backend" {
                parent.retain(|setting, _| !setting.starts_with("redis_"));
            }
        }
        Removed => {
            parent.remove(name).unwrap();
        }
        Table => unreachable!("not changed"),
    }
    config(&toml::to_string(&table).unwrap())
}

#[test]
fn every_setting_the_parser_accepts_is_classified() {
    let listed: Vec<&str> = SETTINGS.iter().map(|(path, _, _)| *path).collect();
    assert_eq!(raw::settings(), listed);
}

#[test]
fn a_reload_names_exactly_the_restart_only_settings_it_changes() {
    let base = RestartOnly::of(&config(BASE));
    assert!(base.changed(&RestartOnly::of(&config(BASE))).is_empty());
    for &(path, class, change) in SETTINGS {
        assert_eq!(base.includes(path), class == Restart, "{path}");
        if let Table = change {
            continue;
        }
        let named = base.changed(&RestartOnly::of(&changed(path, change)));
        let section = path.split('.').next().unwrap();
        let reported = if base.includes(section) { section } else { path };
        match class {
            Applied => assert!(named.is_empty(), "{path}: {named:?}"),
            // Switching the backend to local clears the Redis settings too.
            Restart if path == "rate_limit.backend" => assert!(named.iter().any(|n| n == path)),
            // A section that is one setting (`tracing`) is named as a whole.
            Restart => assert_eq!(named, [reported], "{path}"),
        }
    }
}
