//! Every row of SPEC section 1's table, from the outside: status, body, headers.

use crate::support;

use std::time::Duration;

use crate::support::{admin_call, basic, eventually, sample, spec, ConfigEdit, Harness};
use keygate::core::environment::Environment;
use keygate::core::key::RateLimitSpec;

const AUTH_FAILED: &str = r#"{"error":"authentication failed"}"#;

#[tokio::test]
async fn an_unrouted_path_is_404_no_route() {
    let h = Harness::start().await;
    let (_, key) = h.key(&["*"]).await;
    let answer = h.get("/nowhere", &key).await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.text(), r#"{"error":"no route"}"#);
    assert_eq!(answer.headers["content-type"], "application/json; charset=utf-8");
    assert_eq!(h.upstream.count(), 0);
}

#[tokio::test]
async fn every_authentication_failure_is_the_same_401() {
    let h = Harness::start().await;
    let (revoked_id, revoked) = h.key(&["*"]).await;
    h.keys.revoke(&revoked_id).unwrap();
    let (deleted_id, deleted) = h.key(&["*"]).await;
    h.keys.delete(&deleted_id).unwrap();
    let (_, staging) = h.create_key(spec(Environment::Staging, &["*"])).await;
    h.sync().await;
    let unknown = keygate::core::secret::Secret::generate(Environment::Production);
    let cases = [
        ("missing", None),
        ("malformed", Some("short")),
        (
            "malformed",
            Some("kg_prod_0000000000000000000000000000000000000000"),
        ),
        ("unknown", Some(unknown.expose())),
        ("revoked", Some(revoked.as_str())),
        ("unknown", Some(deleted.as_str())),
        ("wrong_environment", Some(staging.as_str())),
    ];
    for (reason, key) in cases {
        let answer = h.call("GET", "/v1/customers/acme", key, &[]).await;
        assert_eq!(answer.status, 401, "{reason}");
        assert_eq!(answer.text(), AUTH_FAILED, "{reason}");
        assert_eq!(
            answer.headers["www-authenticate"], r#"Basic realm="keygate""#,
            "{reason}"
        );
        assert_eq!(answer.headers["content-type"], "application/json; charset=utf-8");
    }
    let metrics = h.metrics().await;
    for reason in ["missing", "malformed", "unknown", "revoked", "wrong_environment"] {
        let series = format!("keygate_auth_failures_total{{reason=\"{reason}\"}}");
        assert!(sample(&metrics, &series).unwrap_or(0.0) >= 1.0, "{series}");
    }
    assert_eq!(h.upstream.count(), 0);
}

#[tokio::test]
async fn a_key_as_the_basic_username_with_an_empty_password_is_taken() {
    use base64::Engine;
    let h = Harness::start().await;
    let (id, key) = h.key(&["*"]).await;
    let basic = |user_pass: String| {
        let encoded = base64::engine::general_purpose::STANDARD.encode(user_pass);
        format!("Basic {encoded}")
    };
    // `curl -u $KEY:`, Stripe's convention.
    let stripe = basic(format!("{key}:"));
    let answer = h
        .call("GET", "/v1/customers/acme", None, &[("authorization", &stripe)])
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let forwarded = h.upstream.last();
    assert_eq!(forwarded.headers["x-keygate-key-id"], id.as_str());
    assert!(
        !forwarded.headers.contains_key("authorization"),
        "the credential is not forwarded"
    );
    // A user name with no password is no key: the same 401 as ever, counted malformed.
    for user_pass in ["alice:".to_owned(), ":".to_owned()] {
        let answer = h
            .call(
                "GET",
                "/v1/customers/acme",
                None,
                &[("authorization", &basic(user_pass.clone()))],
            )
            .await;
        assert_eq!(
            (answer.status.as_u16(), answer.text()),
            (401, AUTH_FAILED.to_owned()),
            "{user_pass}"
        );
    }
    // With a password, the password is the key, whatever the username looks like.
    let unknown = keygate::core::secret::Secret::generate(Environment::Production);
    let both = basic(format!("{key}:{}", unknown.expose()));
    let answer = h
        .call("GET", "/v1/customers/acme", None, &[("authorization", &both)])
        .await;
    assert_eq!(answer.status, 401);
    assert_eq!(h.upstream.count(), 1);
}

#[tokio::test]
async fn an_expired_key_is_refused_once_its_time_passes() {
    let h = Harness::start().await;
    let mut expiring = spec(Environment::Production, &["*"]);
    expiring.expires_at = Some(h.clock_now() + Duration::from_secs(3600));
    let (_, key) = h.create_key(expiring).await;
    assert_eq!(h.get("/v1/customers/acme", &key).await.status, 200);
    h.clock.advance(Duration::from_secs(3601));
    let answer = h.get("/v1/customers/acme", &key).await;
    assert_eq!(
        (answer.status.as_u16(), answer.text()),
        (401, AUTH_FAILED.to_owned())
    );
    assert!(sample(
        &h.metrics().await,
        r#"keygate_auth_failures_total{reason="expired"}"#
    )
    .is_some());
}

#[tokio::test]
async fn keys_work_only_in_their_own_environment() {
    let h = Harness::start().await;
    let (_, production) = h.key(&["*"]).await;
    let (_, staging) = h.create_key(spec(Environment::Staging, &["*"])).await;
    assert_eq!(h.get("/staging/customers", &staging).await.status, 200);
    assert_eq!(h.get("/staging/customers", &production).await.status, 401);
    assert_eq!(h.get("/v1/customers/acme", &staging).await.status, 401);
    assert_eq!(h.get("/v1/customers/acme", &production).await.status, 200);
}

#[tokio::test]
async fn bearer_and_header_credentials_work_and_duplicates_are_refused() {
    let h = Harness::start().await;
    let (_, key) = h.key(&["*"]).await;
    let bearer = format!("Bearer {key}");
    let answer = h
        .call("GET", "/v1/status", None, &[("authorization", &bearer)])
        .await;
    assert_eq!(answer.status, 200);
    let answer = h.call("GET", "/v1/status", None, &[("x-api-key", &key)]).await;
    assert_eq!(answer.status, 200);
    let answer = h
        .call("GET", "/v1/status", Some(&key), &[("x-api-key", &key)])
        .await;
    assert_eq!(answer.status, 400);
    let raw = format!(
        "GET /v1/status HTTP/1.1\r\nhost: x\r\nauthorization: {bearer}\r\nauthorization: Bearer other-key-0000000\r\nconnection: close\r\n\r\n"
    );
    assert!(h.raw(raw.as_bytes()).await.starts_with("HTTP/1.1 400"));
}

#[tokio::test]
async fn an_ip_allowlist_admits_only_its_networks() {
    let h = Harness::start().await;
    let mut elsewhere = spec(Environment::Production, &["*"]);
    elsewhere.allowed_ips = vec!["10.0.0.0/8".parse().unwrap()];
    let (_, far) = h.create_key(elsewhere).await;
    let mut local = spec(Environment::Production, &["*"]);
    local.allowed_ips = vec!["127.0.0.0/8".parse().unwrap()];
    let (_, near) = h.create_key(local).await;
    let answer = h.get("/v1/status", &far).await;
    assert_eq!(
        (answer.status.as_u16(), answer.text()),
        (403, r#"{"error":"permission denied"}"#.to_owned())
    );
    assert_eq!(h.get("/v1/status", &near).await.status, 200);
    assert!(sample(&h.metrics().await, r#"keygate_denied_total{reason="ip"}"#).is_some());
}

#[tokio::test]
async fn forwarded_for_counts_only_through_a_trusted_proxy() {
    let h = Harness::start().await;
    let mut office = spec(Environment::Production, &["*"]);
    office.allowed_ips = vec!["203.0.113.0/24".parse().unwrap()];
    let (_, key) = h.create_key(office).await;
    let xff = [("x-forwarded-for", "203.0.113.7")];
    // From 127.0.0.1, which is not trusted: the header is ignored.
    assert_eq!(h.call("GET", "/v1/status", Some(&key), &xff).await.status, 403);
    // From 127.0.0.2, a trusted proxy: the header names the client.
    assert_eq!(
        h.call_from("127.0.0.2", "GET", "/v1/status", Some(&key), &xff)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn permissions_are_required_per_method_with_wildcards() {
    let h = Harness::start().await;
    let (_, reader) = h.key(&["customer:read"]).await;
    let (_, writer) = h.key(&["customer:*"]).await;
    let (_, admin) = h.key(&["*"]).await;
    let (_, other) = h.key(&["license:read"]).await;
    let path = "/v1/customers/acme";
    assert_eq!(h.call("GET", path, Some(&reader), &[]).await.status, 200);
    assert_eq!(h.call("HEAD", path, Some(&reader), &[]).await.status, 200);
    let refused = h.call("POST", path, Some(&reader), &[]).await;
    assert_eq!(refused.status, 403);
    assert_eq!(
        refused.json(),
        serde_json::json!({"error":"permission denied","required_permission":"customer:write"})
    );
    assert_eq!(h.call("DELETE", path, Some(&writer), &[]).await.status, 200);
    assert_eq!(h.call("PATCH", path, Some(&admin), &[]).await.status, 200);
    let refused = h.call("GET", path, Some(&other), &[]).await;
    assert_eq!(refused.json()["required_permission"], "customer:read");
    // A route without permissions admits any valid key of its environment.
    assert_eq!(h.call("POST", "/v1/status", Some(&other), &[]).await.status, 200);
}

#[tokio::test]
async fn a_customer_scoped_key_reaches_only_its_customer() {
    let h = Harness::start().await;
    let mut scoped = spec(Environment::Production, &["customer:read"]);
    scoped.customer_id = Some("acme".into());
    let (_, key) = h.create_key(scoped).await;
    assert_eq!(h.get("/v1/customers/acme", &key).await.status, 200);
    assert_eq!(h.get("/v1/customers/acme/orders/7", &key).await.status, 200);
    assert_eq!(h.get("/v1/customers/%61cme", &key).await.status, 200);
    let refused = h.get("/v1/customers/globex", &key).await;
    assert_eq!(
        (refused.status.as_u16(), refused.text()),
        (403, r#"{"error":"permission denied"}"#.to_owned())
    );
    assert_eq!(h.upstream.last().headers["x-keygate-customer"], "acme");
    // A route without customer_param has no customer to compare: the key passes, and the
    // upstream learns its customer (README, "1. Config").
    assert_eq!(h.get("/v1/status", &key).await.status, 200);
    assert_eq!(h.upstream.last().headers["x-keygate-customer"], "acme");
    let (_, unscoped) = h.key(&["customer:read"]).await;
    assert_eq!(h.get("/v1/customers/globex", &unscoped).await.status, 200);
    assert!(sample(&h.metrics().await, r#"keygate_denied_total{reason="customer"}"#).is_some());
}

#[tokio::test]
async fn a_key_over_its_limit_gets_429_with_retry_after_and_ratelimit_headers() {
    let h = Harness::start().await;
    let mut limited = spec(Environment::Production, &["*"]);
    limited.rate_limit = Some(RateLimitSpec::from_rate("2/m".parse().unwrap(), None));
    let (_, key) = h.create_key(limited).await;
    let first = h.get("/v1/status", &key).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.headers["ratelimit-limit"], "2");
    assert_eq!(first.headers["ratelimit-remaining"], "1");
    assert!(first.headers.contains_key("ratelimit-reset"));
    assert_eq!(
        h.get("/v1/status", &key).await.headers["ratelimit-remaining"],
        "0"
    );
    let limited = h.get("/v1/status", &key).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.text(), r#"{"error":"rate limit exceeded"}"#);
    // Two a minute, both taken at one instant of the harness clock: the next is due in 30 s,
    // and the bucket is full again in 60.
    assert_eq!(limited.headers["retry-after"], "30");
    assert_eq!(limited.headers["ratelimit-remaining"], "0");
    assert_eq!(limited.headers["ratelimit-reset"], "60");
    assert_eq!(h.upstream.count(), 2);
    assert_eq!(
        h.metric(r#"keygate_rate_limited_total{route="status"}"#).await,
        Some(1.0)
    );
    h.clock.advance(Duration::from_secs(29));
    let limited = h.get("/v1/status", &key).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.headers["retry-after"], "1");
    h.clock.advance(Duration::from_secs(1));
    assert_eq!(h.get("/v1/status", &key).await.status, 200);
}

#[tokio::test]
async fn draft_rate_limit_headers_are_sent_when_switched_on() {
    let config = support::STANDARD.set("rate_limit", "draft_headers = true");
    let h = Harness::with_config(&config, "").await;
    let (_, key) = h.key(&["*"]).await;
    let answer = h.get("/v1/status", &key).await;
    assert_eq!(answer.headers["ratelimit-policy"], r#""key";q=1000;w=1"#);
    assert!(answer.headers["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with(r#""key";r=999;t="#));
}

#[tokio::test]
async fn an_ip_that_keeps_failing_is_throttled_but_its_valid_keys_still_pass() {
    let config = support::STANDARD.edit("failed_per_ip = \"1000/m\"", "failed_per_ip = \"3/m\"");
    let h = Harness::with_config(&config, "").await;
    let (_, key) = h.key(&["*"]).await;
    let wrong = keygate::core::secret::Secret::generate(Environment::Production);
    for _ in 0..3 {
        assert_eq!(h.get("/v1/status", wrong.expose()).await.status, 401);
    }
    let throttled = h.get("/v1/status", wrong.expose()).await;
    assert_eq!(throttled.status, 429);
    // Its own words: not the key's limit, which a valid key's client could mistake it for.
    assert_eq!(throttled.text(), r#"{"error":"too many failed authentications"}"#);
    assert!(throttled.headers.contains_key("retry-after"));
    // A malformed key is throttled the same way.
    assert_eq!(h.get("/v1/status", "short").await.status, 429);
    assert_eq!(
        sample(
            &h.metrics().await,
            r#"keygate_auth_failures_total{reason="ip_throttled"}"#
        ),
        Some(2.0)
    );
    // A valid key from the same IP (another client behind the same NAT) still passes.
    assert_eq!(h.get("/v1/status", &key).await.status, 200);
    assert_eq!(h.upstream.count(), 1);
    // A request without any key is no guess: still 401.
    assert_eq!(h.call("GET", "/v1/status", None, &[]).await.status, 401);
    // Another client is not affected.
    assert_eq!(
        h.call_from("127.0.0.3", "GET", "/v1/status", Some(wrong.expose()), &[])
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn an_unreachable_upstream_is_502_and_a_slow_one_504() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let extra = format!(
        "[[upstream]]\nname = \"dead\"\nurl = \"http://{dead}\"\n\n[[route]]\nname = \"dead\"\npath = \"/dead\"\nupstream = \"dead\"\n"
    );
    let h = Harness::with_config(support::STANDARD, &extra).await;
    let (_, key) = h.key(&["*"]).await;
    let answer = h.get("/dead", &key).await;
    assert_eq!(
        (answer.status.as_u16(), answer.text()),
        (502, r#"{"error":"bad gateway"}"#.to_owned())
    );
    let answer = h.get("/slow", &key).await;
    assert_eq!(
        (answer.status.as_u16(), answer.text()),
        (504, r#"{"error":"gateway timeout"}"#.to_owned())
    );
    let metrics = h.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            r#"keygate_upstream_errors_total{kind="connect",upstream="dead"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"keygate_upstream_errors_total{kind="timeout",upstream="api"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn ambiguous_paths_and_methods_are_refused_before_routing() {
    let h = Harness::start().await;
    let (_, key) = h.key(&["*"]).await;
    let auth = support::basic(&key);
    for target in [
        "//v1/customers/acme",
        "/v1//customers/acme",
        "/v1/customers/acme/../globex",
        "/v1/customers/%2e%2e/x",
        "/v1/customers/acme%2Fx",
        "/v1/./customers/acme",
    ] {
        let raw =
            format!("GET {target} HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\nconnection: close\r\n\r\n");
        let answer = h.raw(raw.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{target}: {answer}");
    }
    let raw =
        format!("get /v1/status HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\nconnection: close\r\n\r\n");
    assert!(h.raw(raw.as_bytes()).await.starts_with("HTTP/1.1 400"));
    assert_eq!(h.upstream.count(), 0);
}

#[tokio::test]
async fn requests_and_durations_are_counted_per_route_and_status() {
    let h = Harness::start().await;
    let (id, key) = h.key(&["*"]).await;
    h.get("/v1/status", &key).await;
    h.call("GET", "/v1/status", None, &[]).await;
    let metrics = h.metrics().await;
    let ok = r#"keygate_requests_total{environment="production",route="status",status="200"}"#;
    assert_eq!(sample(&metrics, ok), Some(1.0));
    let refused = r#"keygate_requests_total{environment="production",route="status",status="401"}"#;
    assert_eq!(sample(&metrics, refused), Some(1.0));
    let per_key = format!(r#"keygate_key_requests_total{{environment="production",key_id="{id}"}}"#);
    assert_eq!(sample(&metrics, &per_key), Some(1.0));
    for name in [
        "keygate_request_duration_seconds_bucket",
        "keygate_upstream_duration_seconds_bucket",
        "keygate_keys{",
        "keygate_key_table_revision",
        "keygate_key_table_last_sync_timestamp_seconds",
        "keygate_store_sync_errors_total",
        "keygate_build_info{version=",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    assert_eq!(
        sample(
            &metrics,
            r#"keygate_keys{environment="production",status="active"}"#
        ),
        Some(1.0)
    );
}

/// How many times `keygate_upstream_errors_total` has counted a failure of `kind`.
fn upstream_errors(metrics: &str, kind: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with("keygate_upstream_errors_total{"))
        .filter(|line| line.contains(&format!("kind=\"{kind}\"")))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The one recent record of `request_id`, once there is one.
async fn record_of(h: &Harness, request_id: &str) -> serde_json::Value {
    let records = || async {
        let answer = admin_call(&h.gateway, "GET", "/v1/requests?limit=1000", "").await;
        let items = answer.json()["items"].as_array().cloned().unwrap_or_default();
        items
            .into_iter()
            .filter(|record| record["request_id"] == request_id)
            .collect::<Vec<_>>()
    };
    let found = eventually(Duration::from_secs(10), || async { !records().await.is_empty() }).await;
    assert!(found, "no record of {request_id}");
    let records = records().await;
    assert_eq!(records.len(), 1, "{records:?}");
    records[0].clone()
}

/// A POST of `body` (after the head) to `/v1/status` with `framing` among its headers, on a
/// connection of its own; what came back.
async fn post_raw(h: &Harness, key: &str, request_id: &str, framing: &str, body: &[u8]) -> String {
    let head = format!(
        "POST /v1/status HTTP/1.1\r\nHost: api.test\r\nAuthorization: {}\r\n\
         X-Request-Id: {request_id}\r\n{framing}\r\n\r\n",
        basic(key)
    );
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    h.raw(&bytes).await
}

#[tokio::test]
async fn a_request_body_with_broken_chunks_is_the_client_s_400_not_the_upstream_s_502() {
    let h = Harness::start().await;
    let (id, key) = h.key(&[]).await;
    for (request_id, body) in [
        ("bad-chunk-size", &b"zz\r\nhello\r\n0\r\n\r\n"[..]),
        ("bare-lf-chunks", &b"5\nhello\n0\n\n"[..]),
    ] {
        let answer = post_raw(&h, &key, request_id, "Transfer-Encoding: chunked", body).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{request_id}: {answer}");
        assert!(
            answer.ends_with(r#"{"error":"bad request"}"#),
            "{request_id}: {answer}"
        );
        let record = record_of(&h, request_id).await;
        assert_eq!(record["status"], 400, "{record}");
        assert_eq!(record["reason"], "bad_body", "{record}");
        assert_eq!(record["key_id"], id.as_str(), "{record}");
    }
    let metrics = h.metrics().await;
    assert_eq!(upstream_errors(&metrics, "reset"), 0.0, "{metrics}");
    // The gateway, and the upstream, serve on.
    assert_eq!(h.get("/v1/status", &key).await.status, 200);
}

#[tokio::test]
async fn a_client_that_closes_mid_upload_is_a_499_not_an_upstream_error() {
    use tokio::io::AsyncWriteExt;
    let h = Harness::start().await;
    let (id, key) = h.key(&[]).await;
    let mut stream = tokio::net::TcpStream::connect(h.gateway.proxy_addr)
        .await
        .unwrap();
    let head = format!(
        "POST /v1/status HTTP/1.1\r\nHost: api.test\r\nAuthorization: {}\r\n\
         X-Request-Id: gone-mid-upload\r\nContent-Length: 1000\r\n\r\n",
        basic(&key)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[b'x'; 100]).await.unwrap();
    stream.shutdown().await.unwrap();
    let record = record_of(&h, "gone-mid-upload").await;
    assert_eq!(record["status"], 499, "{record}");
    assert_eq!(record["reason"], "client_closed", "{record}");
    assert_eq!(record["key_id"], id.as_str(), "{record}");
    let metrics = h.metrics().await;
    assert_eq!(upstream_errors(&metrics, "reset"), 0.0, "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            r#"keygate_requests_total{environment="production",route="status",status="502"}"#
        ),
        None,
        "{metrics}"
    );
}
