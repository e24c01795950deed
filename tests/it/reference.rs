//! The reference in `docs/` held to the code, as cargo and Vector hold theirs: the settings
//! the parser accepts, their defaults and what a reload does with them
//! (`docs/configuration.md`); the metrics the registry holds and the label values a gateway
//! exports (`docs/metrics.md`); the answers the proxy gives itself and the admin API's
//! endpoints (`docs/http.md`). Each list is read from the code, so neither side can drift.

use std::collections::BTreeSet;
use std::path::Path;

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::{BodyExt, Either};
use keygate::config::effective::Effective;
use keygate::config::{parse, raw, Config, RestartOnly};
use keygate::proxy::error::{
    AuthFailure, BadRequest, BodyFault, Denial, QuotaScope, Refusal, RefusalHeaders, UpstreamFailure,
};
use keygate::proxy::limits::LimitState;

use keygate::core::environment::Environment;

use crate::support::{spec, Harness};

fn doc(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A table row of a Markdown page, under the heading it follows.
#[derive(Debug)]
struct Row {
    heading: String,
    cells: Vec<String>,
}

/// The body rows of every table in `text` (not their header or separator rows).
fn rows(text: &str) -> Vec<Row> {
    let lines: Vec<&str> = text.lines().collect();
    let mut heading = String::new();
    let mut rows = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with('#') {
            heading = line.trim_start_matches('#').trim().to_owned();
        }
        let is_header = lines.get(i + 1).is_some_and(|next| next.starts_with("|---"));
        if !line.starts_with("| ") || is_header {
            continue;
        }
        let cells = line
            .trim_matches('|')
            .split('|')
            .map(|cell| cell.trim().to_owned());
        rows.push(Row {
            heading: heading.clone(),
            cells: cells.collect(),
        });
    }
    rows
}

/// The spans in backticks of a cell, in order.
fn quoted(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

fn duplicates<'a>(items: impl IntoIterator<Item = &'a String>) -> Vec<&'a String> {
    let mut seen = BTreeSet::new();
    items.into_iter().filter(|item| !seen.insert(*item)).collect()
}

// ---- docs/configuration.md ----

/// A documented setting: its dotted path and its row's cells.
struct Setting {
    path: String,
    default: String,
    reload: String,
}

fn settings() -> Vec<Setting> {
    rows(&doc("configuration.md"))
        .into_iter()
        .filter_map(|row| {
            // `[server]`: ..., `[[upstream]]`: ...
            let section = quoted(&row.heading).first()?.trim_matches(['[', ']']).to_owned();
            let name = quoted(&row.cells[0]).first()?.to_string();
            Some(Setting {
                path: format!("{section}.{name}"),
                default: row.cells[2].clone(),
                reload: row.cells[3].clone(),
            })
        })
        .collect()
}

#[test]
fn the_configuration_reference_lists_exactly_the_settings_the_parser_accepts() {
    let documented: Vec<String> = settings().into_iter().map(|s| s.path).collect();
    assert!(
        duplicates(&documented).is_empty(),
        "listed twice: {:?}",
        duplicates(&documented)
    );
    let accepted = raw::settings();
    let missing: Vec<_> = accepted.iter().filter(|s| !documented.contains(s)).collect();
    let gone: Vec<_> = documented.iter().filter(|s| !accepted.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "accepted but not in docs/configuration.md: {missing:?}"
    );
    assert!(
        gone.is_empty(),
        "in docs/configuration.md but not accepted: {gone:?}"
    );
}

/// The least a file needs for every table to be there.
const MINIMAL: &str = r#"
[[upstream]]
name = "api"
url = "http://127.0.0.1:7001"
[[route]]
name = "customers"
path = "/v1/customers/{customer}"
upstream = "api"
"#;

/// Settings whose default is another's value, not a constant: printed, but described.
const DERIVED: [&str; 2] = ["rate_limit.default_burst", "route.environment"];

/// What a setting needs beside it to be taken at all.
fn context(path: &str) -> &'static str {
    if path.starts_with("rate_limit.redis_") && path != "rate_limit.redis_url" {
        "[rate_limit]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"\n"
    } else {
        ""
    }
}

fn config(source: &str) -> Result<Config, String> {
    parse(source, Path::new("/etc/keygate")).map_err(|error| error.to_string())
}

fn printed(config: &Config) -> toml::Table {
    Effective::of(config).to_toml().parse().unwrap()
}

/// The table holding the setting at `path` (the first of an array of tables), and its name.
fn holder<'t, 'p>(table: &'t mut toml::Table, path: &'p str) -> (&'t mut toml::Table, &'p str) {
    let (parents, name) = path.rsplit_once('.').unwrap();
    let mut holder = table;
    for segment in parents.split('.') {
        let value = holder.entry(segment).or_insert_with(|| toml::Table::new().into());
        holder = match value {
            toml::Value::Array(items) => items[0].as_table_mut().unwrap(),
            value => value.as_table_mut().unwrap(),
        };
    }
    (holder, name)
}

fn value_at(table: &toml::Table, path: &str) -> Option<toml::Value> {
    let mut table = table.clone();
    let (holder, name) = holder(&mut table, path);
    holder.get(name).cloned()
}

/// A default given as a value (`` `"30s"` ``) is what the setting takes when it is left out: set
/// to it, nothing changes. One marked *required* is refused when missing. One in words is no
/// value at all: nothing is printed for it, unless it is another setting's ([`DERIVED`]).
#[test]
fn each_documented_default_is_the_value_a_missing_setting_takes() {
    for setting in settings() {
        let path = setting.path.as_str();
        let base_text = format!("{}{MINIMAL}", context(path));
        let base = config(&base_text).unwrap();
        let mut table: toml::Table = base_text.parse().unwrap();
        let (holder, name) = holder(&mut table, path);
        if setting.default.starts_with('`') {
            let literal = quoted(&setting.default)[0];
            let value: toml::Table = format!("v = {literal}")
                .parse()
                .unwrap_or_else(|e| panic!("{path}: the default {literal} is not a TOML value: {e}"));
            holder.insert(name.to_owned(), value["v"].clone());
            let with = config(&toml::to_string(&table).unwrap()).unwrap_or_else(|e| panic!("{path}: {e}"));
            let default = value_at(&printed(&base), path);
            assert!(default.is_some(), "{path} has no default");
            assert_eq!(
                value_at(&printed(&with), path),
                default,
                "{path} = {literal} is not its default"
            );
            assert!(
                printed(&with) == printed(&base),
                "{path} = {literal} changes other settings"
            );
        } else if setting.default == "required" {
            holder.remove(name).unwrap();
            let refused = config(&toml::to_string(&table).unwrap()).unwrap_err();
            assert!(
                refused.contains(&format!(".{name}: is required")),
                "{path}: {refused}"
            );
        } else {
            let shown = value_at(&printed(&base), path);
            assert_eq!(shown.is_some(), DERIVED.contains(&path), "{path}: {shown:?}");
        }
    }
}

/// `gateway.toml.example` shows each setting it sets at its default, but for what its one
/// upstream and one route must name: the same file without them is the same config.
#[test]
fn the_example_file_shows_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.toml.example");
    let example = config(&std::fs::read_to_string(path).unwrap()).unwrap();
    let own = r#"
[[upstream]]
name = "customers"
url = "http://127.0.0.1:7001"
[[route]]
name = "customers"
path = "/v1/customers/{customer}"
upstream = "customers"
customer_param = "customer"
permissions = { GET = "customer:read", HEAD = "customer:read", "*" = "customer:write" }
"#;
    assert_eq!(
        Effective::of(&example).to_toml(),
        Effective::of(&config(own).unwrap()).to_toml()
    );
}

#[test]
fn the_reload_column_says_which_settings_only_a_restart_applies() {
    let restart_only = RestartOnly::of(&config(MINIMAL).unwrap());
    for setting in settings() {
        let expected = if restart_only.includes(&setting.path) {
            "restart"
        } else {
            "applied"
        };
        assert_eq!(setting.reload, expected, "{}", setting.path);
    }
}

// ---- docs/metrics.md ----

/// A documented metric: its name, type, and labels with the values listed for each (none:
/// any value).
struct Metric {
    name: String,
    kind: String,
    labels: Vec<(String, Vec<String>)>,
}

fn metrics() -> Vec<Metric> {
    rows(&doc("metrics.md"))
        .into_iter()
        .filter(|row| row.cells.len() == 4)
        .map(|row| {
            // `reason`: `missing`, `malformed`; `route`
            let labels = row.cells[2]
                .split(';')
                .filter(|label| !label.trim().is_empty())
                .map(|label| {
                    let (name, values) = label.split_once(':').unwrap_or((label, ""));
                    let values = quoted(values).into_iter().map(str::to_owned).collect();
                    (quoted(name)[0].to_owned(), values)
                })
                .collect();
            Metric {
                name: quoted(&row.cells[0])[0].to_owned(),
                kind: row.cells[1].clone(),
                labels,
            }
        })
        .collect()
}

#[test]
fn the_metrics_reference_lists_exactly_the_registered_metrics() {
    let documented = metrics();
    let names: Vec<String> = documented.iter().map(|m| m.name.clone()).collect();
    assert!(
        duplicates(&names).is_empty(),
        "listed twice: {:?}",
        duplicates(&names)
    );
    let registered = keygate::telemetry::Metrics::new().catalogue();
    for metric in &registered {
        let listed = documented.iter().find(|m| m.name == metric.name);
        let listed = listed.unwrap_or_else(|| panic!("{} is not in docs/metrics.md", metric.name));
        assert_eq!(listed.kind, metric.kind, "{}", metric.name);
        let labels: Vec<&String> = listed.labels.iter().map(|(name, _)| name).collect();
        assert_eq!(
            labels,
            metric.labels.iter().collect::<Vec<_>>(),
            "{}",
            metric.name
        );
    }
    for name in &names {
        assert!(
            registered.iter().any(|m| &m.name == name),
            "{name} is in docs/metrics.md but not registered"
        );
    }
}

/// The values listed for `label` of `metric`.
fn listed_values<'m>(documented: &'m [Metric], metric: &str, label: &str) -> &'m [String] {
    let metric = documented.iter().find(|m| m.name == metric).unwrap();
    let (_, values) = metric.labels.iter().find(|(name, _)| name == label).unwrap();
    values
}

/// The metric, labels and values of a sample line: `a_total{x="1",y="2"} 3`.
fn series(line: &str) -> (&str, Vec<(&str, &str)>) {
    let (name, rest) = line.split_once(['{', ' ']).unwrap_or((line, ""));
    let labels = match rest.split_once('}') {
        Some((labels, _)) if line.contains('{') => labels
            .split("\",")
            .filter_map(|pair| pair.split_once("=\""))
            .map(|(label, value)| (label, value.trim_end_matches('"')))
            .collect(),
        _ => Vec::new(),
    };
    (name, labels)
}

#[tokio::test]
async fn every_label_value_a_gateway_exports_is_listed() {
    let documented = metrics();
    for (metric, label, values) in [
        (
            "keygate_auth_failures_total",
            "reason",
            AuthFailure::ALL.map(AuthFailure::as_str).to_vec(),
        ),
        (
            "keygate_denied_total",
            "reason",
            Denial::ALL.map(Denial::as_str).to_vec(),
        ),
        (
            "keygate_upstream_errors_total",
            "kind",
            UpstreamFailure::ALL.map(UpstreamFailure::as_str).to_vec(),
        ),
    ] {
        for value in values {
            assert!(
                listed_values(&documented, metric, label)
                    .iter()
                    .any(|v| v == value),
                "{metric} {label}={value}"
            );
        }
    }
    let h = Harness::start().await;
    let (_, key) = h
        .create_key(spec(Environment::Production, &["customer:read"]))
        .await;
    assert_eq!(h.get("/v1/customers/acme", &key).await.status, 200);
    assert_eq!(h.get("/v1/customers/acme", "kg_prod_nope").await.status, 401);
    let scraped = h.metrics().await;
    for line in scraped.lines().filter(|line| !line.starts_with('#')) {
        let (name, labels) = series(line);
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| documented.iter().any(|m| m.name == *base))
            .unwrap_or(name);
        let metric = documented.iter().find(|m| m.name == base);
        let metric = metric.unwrap_or_else(|| panic!("{base} is exported but not in docs/metrics.md"));
        for (label, value) in labels.into_iter().filter(|(label, _)| *label != "le") {
            let listed = metric.labels.iter().find(|(name, _)| name == label);
            let (_, values) = listed.unwrap_or_else(|| panic!("{line}: label {label} is not listed"));
            assert!(
                values.is_empty() || values.iter().any(|v| v == value),
                "{line}: {label}={value} is not listed"
            );
        }
    }
}

// ---- docs/http.md ----

/// Every answer the proxy gives itself; the `match` fails to compile when a kind of refusal is
/// added, until it is added here (and to docs/http.md).
fn every_refusal() -> Vec<Refusal> {
    let listed = |refusal: &Refusal| match refusal {
        Refusal::BadRequest(_)
        | Refusal::NoRoute
        | Refusal::Unauthenticated(_)
        | Refusal::IpThrottled { .. }
        | Refusal::Denied(_)
        | Refusal::MissingPermission(_)
        | Refusal::RateLimited { .. }
        | Refusal::QuotaExceeded { .. }
        | Refusal::TooLarge
        | Refusal::BodyTimeout
        | Refusal::TooManyHeaders
        | Refusal::UriTooLong
        | Refusal::Stale { .. }
        | Refusal::Upstream(_)
        | Refusal::ClientBody(_) => true,
    };
    let state = LimitState {
        limit: 1,
        remaining: 0,
        reset: 1,
        window: 1,
    };
    let refusals: Vec<Refusal> = [
        vec![
            Refusal::NoRoute,
            Refusal::BadRequest(BadRequest::Host),
            Refusal::IpThrottled { retry_after: 1 },
            Refusal::MissingPermission(None),
            Refusal::MissingPermission(Some("customer:write".parse().unwrap())),
            Refusal::RateLimited {
                state,
                retry_after: 1,
                scope: QuotaScope::Key,
            },
            Refusal::QuotaExceeded {
                scope: QuotaScope::Key,
                retry_after: Some(1),
                resets_at: Some("2026-12-08T00:00:00Z".parse().unwrap()),
            },
            Refusal::TooLarge,
            Refusal::BodyTimeout,
            Refusal::TooManyHeaders,
            Refusal::UriTooLong,
            Refusal::Stale { retry_after: 1 },
            Refusal::ClientBody(BodyFault::Malformed),
            Refusal::ClientBody(BodyFault::Gone),
        ],
        AuthFailure::ALL.map(Refusal::Unauthenticated).to_vec(),
        Denial::ALL.map(Refusal::Denied).to_vec(),
        UpstreamFailure::ALL.map(Refusal::Upstream).to_vec(),
    ]
    .concat();
    assert!(refusals.iter().all(listed));
    refusals
}

/// The status and body of `refusal`'s answer.
async fn answer(refusal: Refusal) -> (String, String) {
    let templates = RefusalHeaders::new(HeaderValue::from_static("Basic realm=\"keygate\""));
    let response = refusal.into_response(&templates, true);
    let status = response.status().as_u16().to_string();
    let Either::Right(body) = response.into_body() else {
        panic!("a refusal has the gateway's own body")
    };
    let body: Bytes = body.collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn the_http_reference_lists_every_answer_the_proxy_gives_itself() {
    let documented: Vec<(String, String)> = rows(&doc("http.md"))
        .into_iter()
        .filter(|row| row.heading == "The answers the proxy gives itself")
        .map(|row| (row.cells[0].clone(), quoted(&row.cells[1])[0].to_owned()))
        .collect();
    let mut sent = Vec::new();
    for refusal in every_refusal() {
        let answer = answer(refusal.clone()).await;
        assert!(
            documented.contains(&answer),
            "{refusal:?} answers {} {} and docs/http.md does not list it",
            answer.0,
            answer.1
        );
        sent.push(answer);
    }
    for listed in &documented {
        assert!(
            sent.contains(listed),
            "docs/http.md lists {listed:?}, which the proxy never sends"
        );
    }
}

#[test]
fn the_http_reference_lists_exactly_the_admin_api_of_the_openapi_document() {
    let openapi: serde_json::Value = serde_json::from_str(keygate::control::admin::OPENAPI).unwrap();
    let mut described = BTreeSet::new();
    for (path, operations) in openapi["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                described.insert(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    let documented: BTreeSet<String> = rows(&doc("http.md"))
        .into_iter()
        .filter(|row| row.heading == "The admin API")
        .map(|row| quoted(&row.cells[0])[0].to_owned())
        .collect();
    assert_eq!(documented, described);
}
