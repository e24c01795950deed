use std::path::Path;
use std::time::Duration;

use http::Method;

use super::*;

const MINIMAL: &str = r#"
[[upstream]]
name = "api"
url = "http://127.0.0.1:7001"

[[route]]
name = "api"
path = "/"
upstream = "api"
"#;

fn parse_ok(source: &str) -> Config {
    parse(source, Path::new("/etc/keygate")).unwrap_or_else(|e| panic!("{e}"))
}

fn problems(source: &str) -> Vec<Problem> {
    match parse(source, Path::new("/etc/keygate")) {
        Ok(_) => panic!("accepted:\n{source}"),
        Err(error) => error.problems,
    }
}

#[test]
fn an_empty_file_takes_every_default() {
    let config = parse_ok("");
    assert_eq!(config.server.listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(config.server.environment, Environment::Production);
    assert_eq!(config.server.shutdown_grace, Duration::from_secs(30));
    assert_eq!(config.server.header_read_timeout, Duration::from_secs(10));
    assert_eq!(config.server.body_idle_timeout, Duration::from_secs(30));
    assert_eq!(config.server.max_header_bytes, 65_536);
    assert_eq!(config.server.max_headers, 100);
    assert_eq!(config.server.max_uri_bytes, 8_192);
    assert_eq!(config.server.http2_max_concurrent_streams, 100);
    assert_eq!(config.server.max_request_body, None);
    assert_eq!(config.server.first_byte_timeout, Duration::from_secs(5));
    assert_eq!(config.server.tls_handshake_timeout, Duration::from_secs(5));
    assert_eq!(config.server.underscore_headers, UnderscoreHeaders::Drop);
    assert_eq!(config.admin.listen, "127.0.0.1:9901".parse().unwrap());
    assert_eq!(config.admin.token_env, "KEYGATE_ADMIN_TOKEN");
    assert_eq!(
        config.store.url,
        StoreUrl::Sqlite("/etc/keygate/keygate.db".into())
    );
    assert_eq!(config.store.sync_interval, Duration::from_secs(1));
    assert!(config.auth.basic && config.auth.bearer);
    assert_eq!(config.auth.header.as_str(), "x-api-key");
    assert!(config.auth.header_scheme);
    assert_eq!(config.auth.realm, "keygate");
    assert_eq!(config.auth.failed_per_ip.to_string(), "30/m");
    assert_eq!(config.rate_limit.default.rate().to_string(), "100/s");
    assert_eq!(config.rate_limit.backend, RateLimitBackend::Local);
    assert_eq!(config.lifecycle.check_interval, Duration::from_secs(3600));
    assert!(config.metrics.per_key);
    assert!(config.logs.access);
    assert!(config.routes.is_empty() && config.upstreams.is_empty());
}

#[test]
fn the_example_file_is_valid() {
    let example = include_str!("../../../gateway.toml.example");
    let config = parse_ok(example);
    assert_eq!(config.routes.len(), 1);
    let route = &config.routes[0];
    assert_eq!(route.customer_param, Some(2));
    let permissions = route.permissions.as_ref().unwrap();
    assert_eq!(
        permissions.required(&Method::GET).unwrap().as_str(),
        "customer:read"
    );
    assert_eq!(
        permissions.required(&Method::DELETE).unwrap().as_str(),
        "customer:write"
    );
}

#[test]
fn routes_compile_to_segments_and_upstream_indexes() {
    let config = parse_ok(
        r#"
[server]
environment = "staging"
[[upstream]]
name = "a"
url = "http://127.0.0.1:1"
[[upstream]]
name = "b"
url = "http://localhost:2/base/"
[[route]]
name = "r"
host = "API.Example.com"
path = "/v1/{org}/items/"
upstream = "b"
customer_param = "org"
permissions = { get = "item:read" }
"#,
    );
    let route = &config.routes[0];
    assert_eq!(route.upstream, 1);
    assert_eq!(route.host.as_deref(), Some("api.example.com"));
    assert_eq!(route.environment, Environment::Staging);
    assert_eq!(
        route.path.segments,
        vec![
            Segment::Literal("v1".into()),
            Segment::Param("org".into()),
            Segment::Literal("items".into())
        ]
    );
    assert_eq!(route.customer_param, Some(1));
    let permissions = route.permissions.as_ref().unwrap();
    assert_eq!(permissions.required(&Method::GET).unwrap().as_str(), "item:read");
    assert_eq!(permissions.required(&Method::POST), None);
    assert_eq!(config.upstreams[1].url.to_string(), "http://localhost:2/base");
}

#[test]
fn edge_settings_parse() {
    let config = parse_ok(&format!(
        "[server]\nfirst_byte_timeout = \"250ms\"\ntls_handshake_timeout = \"2s\"\n\
         underscore_headers = \"refuse\"\n{MINIMAL}allow_method_override = true\n"
    ));
    assert_eq!(config.server.first_byte_timeout, Duration::from_millis(250));
    assert_eq!(config.server.tls_handshake_timeout, Duration::from_secs(2));
    assert_eq!(config.server.underscore_headers, UnderscoreHeaders::Refuse);
    assert!(config.routes[0].allow_method_override);
    assert!(!parse_ok(MINIMAL).routes[0].allow_method_override);
}

#[test]
fn store_urls_resolve_against_the_config_folder() {
    for (written, expected) in [
        (
            "sqlite://keys.db",
            StoreUrl::Sqlite("/etc/keygate/keys.db".into()),
        ),
        (
            "sqlite:data/keys.db",
            StoreUrl::Sqlite("/etc/keygate/data/keys.db".into()),
        ),
        (
            "sqlite:///var/lib/keys.db",
            StoreUrl::Sqlite("/var/lib/keys.db".into()),
        ),
        (
            "postgres://u@h/db",
            StoreUrl::Postgres("postgres://u@h/db".into()),
        ),
        (
            "postgresql://u@h:5433/db?sslmode=require",
            StoreUrl::Postgres("postgresql://u@h:5433/db?sslmode=require".into()),
        ),
    ] {
        let config = parse_ok(&format!("[store]\nurl = {written:?}\n"));
        assert_eq!(config.store.url, expected, "{written}");
    }
}

#[test]
fn schemes_and_trusted_proxies_parse() {
    let config = parse_ok(
        "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"192.168.1.1\", \"::1\"]\n[auth]\nschemes = [\"bearer\"]\n",
    );
    assert!(!config.auth.basic && config.auth.bearer && !config.auth.header_scheme);
    let proxies: Vec<String> = config
        .server
        .trusted_proxies
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(proxies, ["10.0.0.0/8", "192.168.1.1/32", "::1/128"]);
}

#[test]
fn warnings_are_sorted_longest_first() {
    let config = parse_ok("[lifecycle]\nidle_expiry = \"90d\"\nwarn_before = [\"1d\", \"15d\", \"7d\"]\n");
    let days: Vec<u64> = config
        .lifecycle
        .warn_before
        .iter()
        .map(|d| d.as_secs() / 86_400)
        .collect();
    assert_eq!(days, [15, 7, 1]);
}

/// Each mistake is reported with its field and the line it is on (1-based, counting the
/// leading newline of the snippet as line 1).
#[test]
fn each_mistake_names_its_field_and_line() {
    let cases: &[(&str, &str, usize)] = &[
        ("\n[server]\nlisen = 1\n", "lisen", 3),
        ("\n[server]\nlisten = \"8080\"\n", "server.listen", 3),
        ("\n[server]\nenvironment = \"live\"\n", "server.environment", 3),
        ("\n[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n", "server.trusted_proxies", 3),
        ("\n[server]\nshutdown_grace = \"30\"\n", "server.shutdown_grace", 3),
        ("\n[server]\nheader_read_timeout = \"0s\"\n", "server.header_read_timeout", 3),
        ("\n[server]\nbody_idle_timeout = \"soon\"\n", "server.body_idle_timeout", 3),
        ("\n[server]\nmax_headers = 0\n", "server.max_headers", 3),
        ("\n[server]\nfirst_byte_timeout = \"0s\"\n", "server.first_byte_timeout", 3),
        ("\n[server]\nfirst_byte_timeout = \"soon\"\n", "server.first_byte_timeout", 3),
        ("\n[server]\ntls_handshake_timeout = \"5\"\n", "server.tls_handshake_timeout", 3),
        ("\n[server]\nunderscore_headers = \"keep\"\n", "server.underscore_headers", 3),
        ("\n[server]\ntls = { cert = \"c.pem\" }\n", "key", 3),
        ("\n[admin]\ntoken_env = \"not a name\"\n", "admin.token_env", 3),
        ("\n[store]\nurl = \"mysql://x\"\n", "store.url", 3),
        ("\n[store]\nsync_interval = \"fast\"\n", "store.sync_interval", 3),
        ("\n[auth]\nschemes = []\n", "auth.schemes", 3),
        ("\n[auth]\nschemes = [\"basic\", \"digest\"]\n", "auth.schemes", 3),
        ("\n[auth]\nschemes = [\"basic\", \"basic\"]\n", "auth.schemes", 3),
        ("\n[auth]\nheader = \"Authorization\"\n", "auth.header", 3),
        ("\n[auth]\nheader = \"X-Forwarded-For\"\n", "auth.header", 3),
        ("\n[auth]\nheader = \"Content-Length\"\n", "auth.header", 3),
        ("\n[auth]\nheader = \"Upgrade\"\n", "auth.header", 3),
        ("\n[auth]\nheader = \"bad header\"\n", "auth.header", 3),
        ("\n[auth]\nrealm = 'a\"b'\n", "auth.realm", 3),
        ("\n[auth]\nfailed_per_ip = \"30 per minute\"\n", "auth.failed_per_ip", 3),
        ("\n[rate_limit]\ndefault = \"0/s\"\n", "rate_limit.default", 3),
        ("\n[rate_limit]\nbackend = \"redis\"\n", "rate_limit.redis_url", 3),
        ("\n[rate_limit]\nbackend = \"memcached\"\n", "rate_limit.backend", 3),
        ("\n[rate_limit]\nbackend = \"redis\"\nredis_url = \"http://r\"\n", "rate_limit.redis_url", 4),
        ("\n[rate_limit]\nbackend = \"redis\"\nredis_url = \"redis://r:port\"\n", "rate_limit.redis_url", 4),
        ("\n[rate_limit]\nbackend = \"redis\"\nredis_url = \"redis://r\"\nredis_timeout = \"0ms\"\n", "rate_limit.redis_timeout", 5),
        ("\n[rate_limit]\nredis_timeout = \"5ms\"\n", "rate_limit.redis_timeout", 3),
        ("\n[rate_limit]\nredis_prefix = \"x:\"\n", "rate_limit.redis_prefix", 3),
        ("\n[rate_limit]\nbackend = \"local\"\nredis_url = \"redis://r\"\n", "rate_limit.redis_url", 4),
        ("\n[store]\nurl = \"postgres://u@h/db?sslmode=sometimes\"\n", "store.url", 3),
        ("\n[lifecycle]\nwarn_before = [\"1d\"]\n", "lifecycle.warn_before", 3),
        ("\n[lifecycle]\nidle_expiry = \"7d\"\nwarn_before = [\"7d\"]\n", "lifecycle.warn_before", 4),
        ("\n[lifecycle]\nidle_expiry = \"9d\"\nwarn_before = [\"1d\", \"1d\"]\n", "lifecycle.warn_before", 4),
        ("\n[lifecycle]\nwebhook = \"ftp://x\"\n", "lifecycle.webhook", 3),
        ("\n[[upstream]]\nname = \"a\"\nurl = \"ftp://x\"\n", "upstream \"a\".url", 4),
        ("\n[[upstream]]\nname = \"a\"\nurl = \"http://x\"\nca = \"ca.pem\"\n", "upstream \"a\".ca", 5),
        ("\n[[upstream]]\nname = \"a\"\nurl = \"https://x\"\nca = \"/nonexistent/ca.pem\"\n", "upstream \"a\".ca", 5),
        ("\n[[upstream]]\nname = \"a\"\nurl = \"https://x\"\nclient_key = \"/nonexistent/k.pem\"\n", "upstream \"a\".client_key", 5),
        ("\n[[upstream]]\nname = \"a\"\nurl = \"http://x/?q=1\"\n", "upstream \"a\".url", 4),
        ("\n[[upstream]]\nname = \"a\"\n", "upstream \"a\".url", 2),
        ("\n[[upstream]]\nname = \"a\"\nurl = \"http://x\"\npool_max_connections = 0\n", "upstream \"a\".pool_max_connections", 5),
        ("\n[[upstream]]\nname = \"a\"\nurl = \"http://x\"\ntimeout = \"1s\"\nqueue_timeout = \"1s\"\n", "upstream \"a\".queue_timeout", 6),
        ("\n[[upstream]]\nname = \"a\"\nurl = \"http://x\"\nqueue_timeout = \"0ms\"\n", "upstream \"a\".queue_timeout", 5),
        ("\n[[upstream]]\nname = \"a\"\nurl = \"http://x\"\n[[upstream]]\nname = \"a\"\nurl = \"http://y\"\n", "upstream \"a\".name", 6),
    ];
    for (source, field, line) in cases {
        let found = problems(source);
        assert!(
            found
                .iter()
                .any(|p| p.line == Some(*line) && (p.field.contains(field) || p.message.contains(field))),
            "{source:?}: expected {field} on line {line}, got {found:?}"
        );
    }
}

#[test]
fn route_mistakes_name_the_route_and_line() {
    let route = |body: &str| format!("{MINIMAL}\n[[route]]\nname = \"r\"\nupstream = \"api\"\n{body}\n");
    let body_line = MINIMAL.lines().count() + 5;
    let cases: &[(&str, &str)] = &[
        ("path = \"v1\"", "must start with"),
        ("path = \"/v1//x\"", "empty segment"),
        ("path = \"/v1/../x\"", "dot segment"),
        ("path = \"/v1/%2F\"", "character"),
        ("path = \"/{a}/{a}\"", "twice"),
        ("path = \"/{a-b}\"", "parameter"),
        ("path = \"/x\"\ncustomer_param = \"c\"", "no {c} segment"),
        ("path = \"/x\"\nhost = \"a.com:443\"", "host name"),
        ("path = \"/x\"\nenvironment = \"qa\"", "qa"),
        ("path = \"/x\"\npermissions = {}", "at least one method"),
        (
            "path = \"/x\"\npermissions = { GET = \"read\" }",
            "resource:action",
        ),
        (
            "path = \"/x\"\npermissions = { \"G T\" = \"a:b\" }",
            "not an HTTP method",
        ),
        (
            "path = \"/x\"\npermissions = { GET = \"a:b\", get = \"a:c\" }",
            "twice",
        ),
        ("path = \"/\"", "same host and path"),
    ];
    for (body, message) in cases {
        let found = problems(&route(body));
        assert!(
            found.iter().any(|p| p.field.starts_with("route \"r\"")
                && p.message.contains(message)
                && p.line.is_some_and(|l| l >= body_line)),
            "{body:?}: expected {message:?} at or after line {body_line}, got {found:?}"
        );
    }
    let missing = problems(&format!("{MINIMAL}\n[[route]]\nname = \"r\"\n"));
    let fields: Vec<&str> = missing.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["route \"r\".path", "route \"r\".upstream"]);
    let unknown = problems(&format!(
        "{MINIMAL}\n[[route]]\nname = \"r\"\npath = \"/x\"\nupstream = \"nope\"\n"
    ));
    assert_eq!(unknown[0].message, "no upstream named \"nope\"");
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let error = parse(
        "[server]\nlisten = \"x\"\n[store]\nsync_interval = \"y\"\n[auth]\nrealm = \"\"\n",
        Path::new("."),
    )
    .unwrap_err();
    assert_eq!(error.problems.len(), 3, "{error}");
    let text = error.to_string();
    assert_eq!(text.lines().count(), 3);
    assert!(
        text.lines()
            .next()
            .unwrap()
            .starts_with("line 2: server.listen: "),
        "{text}"
    );
}

#[test]
fn toml_syntax_errors_carry_their_line() {
    let found = problems("[server]\nlisten = \"127.0.0.1:1\"\nenvironment = \n");
    assert_eq!(found[0].line, Some(3), "{found:?}");
    assert!(found[0].column.is_some(), "{found:?}");
}

#[test]
fn problems_carry_the_column_of_the_value() {
    let found = problems("[server]\n  listen = \"x\"\n");
    assert_eq!((found[0].line, found[0].column), (Some(2), Some(12)), "{found:?}");
    // Columns count characters, not bytes.
    let found = problems("[auth]\nschemes = [\"é\", \"nope\"]\n");
    assert_eq!(found[1].column, Some(17), "{found:?}");
    assert_eq!(position("ab\ncé\nd", 6), (2, 3));
    assert_eq!(position("", 10), (1, 1));
}

#[test]
fn the_redis_backend_takes_its_url_prefix_and_budget() {
    let config = parse_ok(&format!(
        "{MINIMAL}\n[rate_limit]\nbackend = \"redis\"\nredis_url = \"rediss://:pw@cache.internal:6380/2\"\n"
    ));
    assert_eq!(
        config.rate_limit.backend,
        RateLimitBackend::Redis {
            url: "rediss://:pw@cache.internal:6380/2".into(),
            prefix: "keygate:".into(),
            timeout: Duration::from_millis(25),
        }
    );
    let config = parse_ok(&format!(
        "{MINIMAL}\n[rate_limit]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1\"\nredis_prefix = \"eu1:\"\nredis_timeout = \"20ms\"\n"
    ));
    assert_eq!(
        config.rate_limit.backend,
        RateLimitBackend::Redis {
            url: "redis://127.0.0.1".into(),
            prefix: "eu1:".into(),
            timeout: Duration::from_millis(20),
        }
    );
}

#[test]
fn the_access_log_can_be_switched_off() {
    assert!(!parse_ok("[logs]\naccess = false\n").logs.access);
    assert!(parse_ok("[logs]\naccess = true\n").logs.access);
}

#[test]
fn recent_requests_are_kept_by_default_and_bounded() {
    assert_eq!(parse_ok("").logs.recent, 10_000);
    assert_eq!(parse_ok("[logs]\nrecent = 0\n").logs.recent, 0);
    assert_eq!(parse_ok("[logs]\nrecent = 500\n").logs.recent, 500);
    let error = parse("[logs]\nrecent = 2000000\n", Path::new("/")).unwrap_err();
    assert!(error.to_string().contains("logs.recent"), "{error}");
}

#[test]
fn the_read_only_token_is_optional_and_differs_from_the_admin_token() {
    assert_eq!(parse_ok("").admin.read_token_env, None);
    let config = parse_ok("[admin]\nread_token_env = \"KEYGATE_READ_TOKEN\"\n");
    assert_eq!(config.admin.read_token_env.as_deref(), Some("KEYGATE_READ_TOKEN"));
    for (text, why) in [
        (
            "[admin]\nread_token_env = \"KEYGATE_ADMIN_TOKEN\"\n",
            "must differ",
        ),
        (
            "[admin]\nread_token_env = \"not a name\"\n",
            "environment variable name",
        ),
    ] {
        let error = parse(text, Path::new("/")).unwrap_err().to_string();
        assert!(
            error.contains("admin.read_token_env") && error.contains(why),
            "{error}"
        );
    }
}

#[test]
fn the_advertised_address_comes_from_the_file_or_from_a_variable_not_both() {
    let config = parse_ok("[admin]\nadvertise_env = \"KEYGATE_ADVERTISE\"\n");
    assert_eq!(config.admin.advertise_env.as_deref(), Some("KEYGATE_ADVERTISE"));
    assert_eq!(
        config.admin.advertise, None,
        "the variable is read by serve, not here"
    );
    for (text, why) in [
        (
            "[admin]\nadvertise = \"http://10.0.0.2\"\nadvertise_env = \"KEYGATE_ADVERTISE\"\n",
            "not both",
        ),
        (
            "[admin]\nadvertise_env = \"not a name\"\n",
            "environment variable name",
        ),
    ] {
        let error = parse(text, Path::new("/")).unwrap_err().to_string();
        assert!(
            error.contains("admin.advertise_env") && error.contains(why),
            "{error}"
        );
    }
}

#[test]
fn a_variables_address_is_a_url_or_a_bare_host() {
    use crate::config::Advertise;
    let cases = [
        ("http://10.0.0.2:9901", "http://10.0.0.2:9901"),
        ("10.1.2.3", "http://10.1.2.3:9901"),
        (" 10.1.2.3\n", "http://10.1.2.3:9901"),
        ("fd00::1", "http://[fd00::1]:9901"),
        ("gw-1.keygate.svc", "http://gw-1.keygate.svc:9901"),
        ("gw-1:9999", "http://gw-1:9999"),
    ];
    for (value, url) in cases {
        let advertise = Advertise::from_env_value(value).unwrap_or_else(|e| panic!("{value}: {e}"));
        assert_eq!(advertise.url(9901), url);
    }
    for bad in ["", "https://10.0.0.2", "10.0.0.2/path", "user@host", "a b"] {
        assert!(Advertise::from_env_value(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_file_without_routes_parses_but_would_serve_nothing() {
    let fields = |source: &str| -> Vec<String> {
        crate::config::serving_problems(&parse_ok(source))
            .into_iter()
            .map(|p| p.field)
            .collect()
    };
    assert_eq!(fields(""), ["upstream", "route"]);
    let upstream_only = MINIMAL.split("[[route]]").next().unwrap();
    assert_eq!(fields(upstream_only), ["route"]);
    assert!(fields(MINIMAL).is_empty());
}

#[test]
fn usage_rows_are_kept_90_days_by_default_and_an_hour_at_least() {
    assert_eq!(parse_ok("").usage.retention, Duration::from_secs(90 * 86_400));
    assert_eq!(
        parse_ok("[usage]\nretention = \"7d\"\n").usage.retention,
        Duration::from_secs(7 * 86_400)
    );
    for bad in ["\"59m\"", "\"0s\"", "\"90\"", "90"] {
        let found = problems(&format!("[usage]\nretention = {bad}\n"));
        assert_eq!(found[0].field, "usage.retention", "{bad}: {found:?}");
    }
}

#[test]
fn a_routes_cost_defaults_to_one_and_must_be_a_whole_number_from_one() {
    assert_eq!(parse_ok(MINIMAL).routes[0].cost.get(), 1);
    assert_eq!(
        parse_ok(&format!("{MINIMAL}cost = 10\n")).routes[0].cost.get(),
        10
    );
    for (cost, says) in [("0", "at least 1"), ("4294967296", "at most"), ("\"ten\"", "")] {
        let found = problems(&format!("{MINIMAL}cost = {cost}\n"));
        assert!(
            found
                .iter()
                .any(|p| p.field.ends_with(".cost") && p.message.contains(says)),
            "cost = {cost}: {found:?}"
        );
    }
}
