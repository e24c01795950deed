//! Criterion benches of the hot path: the whole verdict (credential parse, format check, BLAKE3
//! hash, table lookup, environment, permission, customer and rate-limit checks) with 1 thousand
//! and 1 million keys in the table, its parts on their own, the header rewriting of step 9, and
//! a request's span with `[tracing]` on.
//!
//! `cargo bench --bench hot_path`

use std::hint::black_box;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::header::{HeaderMap, HeaderValue};
use http::Request;

use keygate::core::clock::system_clock;
use keygate::core::environment::Environment;
use keygate::core::key::RateLimitSpec;
use keygate::core::permission::{Permission, PermissionSet};
use keygate::core::quota::{Period, QuotaSpec, MAX_QUOTA_LIMIT};
use keygate::core::secret::{check_format, Hasher, Secret};
use keygate::proxy::connection::Peer;
use keygate::proxy::credentials::{self, Schemes};
use keygate::proxy::customers::CustomerLimits;
use keygate::proxy::forward::{prepare, strip_hop_by_hop, Credentials, Identity, Passing};
use keygate::proxy::limits::KeyLimits;
use keygate::proxy::pipeline::decide;
use keygate::proxy::state::Shared;
use keygate::proxy::table::{AuthKey, KeyTable, NEVER};
use keygate::telemetry::Metrics;

/// The key header the rewrite strips, as the default config has it.
const KEY_HEADER: http::HeaderName = http::HeaderName::from_static("x-api-key");

const CONFIG: &str = r#"
[rate_limit]
default = "1000000000/s"

[[upstream]]
name = "api"
url = "http://127.0.0.1:9"

[[route]]
name = "customers"
path = "/v1/customers/{customer}"
upstream = "api"
customer_param = "customer"
permissions = { GET = "customer:read", "*" = "customer:write" }
"#;

fn basic(key: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("X:{key}"))
    )
}

/// A gateway state holding `n` production keys; returns it with one of their secrets.
fn gateway_with_keys(n: usize) -> (Shared, String) {
    let config = keygate::config::parse(CONFIG, std::path::Path::new(".")).expect("bench config is valid");
    let hasher = Hasher::unkeyed();
    let table = Arc::new(KeyTable::with_capacity(n));
    let permissions = Arc::new(PermissionSet::new(vec!["customer:read".parse().unwrap()]));
    let mut probe = String::new();
    for seq in 0..n as u64 {
        let secret = Secret::generate(Environment::Production);
        table.upsert(AuthKey {
            seq,
            id: format!("key_{seq:020}").into(),
            hash: hasher.hash(secret.expose().as_bytes()).into(),
            environment: Environment::Production,
            revoked: false,
            expires_at: NEVER,
            permissions: permissions.clone(),
            customer_id: Some("acme".into()),
            extras: None,
        });
        if seq == n as u64 / 2 {
            probe = secret.expose().to_owned();
        }
    }
    let shared = Shared::new(Arc::new(config), table, hasher, Metrics::new(), system_clock());
    // As the first sync does: the proxy answers 503 until the table is loaded.
    shared
        .sync
        .record_success(jiff::Timestamp::now().as_millisecond());
    (shared, probe)
}

fn verdict(c: &mut Criterion) {
    let peer = Peer {
        addr: SocketAddr::from(([127, 0, 0, 1], 40000)),
        tls: false,
    };
    let mut group = c.benchmark_group("verdict");
    for (label, n) in [("1k_keys", 1_000), ("1M_keys", 1_000_000)] {
        let (shared, key) = gateway_with_keys(n);
        let request = Request::get("http://api.example.com/v1/customers/acme/orders")
            .header("host", "api.example.com")
            .header("authorization", basic(&key))
            .body(())
            .unwrap();
        assert!(decide(&shared, peer, &request).is_ok());
        group.bench_function(format!("valid_key/{label}"), |b| {
            b.iter(|| decide(&shared, peer, black_box(&request)))
        });
        let wrong = Secret::generate(Environment::Production);
        let unknown = Request::get("http://api.example.com/v1/customers/acme")
            .header("host", "api.example.com")
            .header("authorization", basic(wrong.expose()))
            .body(())
            .unwrap();
        group.bench_function(format!("unknown_key/{label}"), |b| {
            b.iter(|| decide(&shared, peer, black_box(&unknown)))
        });
    }
    // The customer's limits asked beside the key's: its object in the customer map, with a
    // rate limit and a month's quota (the rows above: a customer without an object).
    let (shared, key) = gateway_with_keys(1_000);
    shared.customers.set(
        "acme",
        CustomerLimits {
            rate: Some(RateLimitSpec {
                requests: NonZeroU32::new(1_000_000_000).unwrap(),
                per: Duration::from_secs(1),
                burst: None,
            }),
            quota: Some(QuotaSpec {
                limit: MAX_QUOTA_LIMIT,
                period: Period::Month,
                anchor: jiff::Timestamp::now(),
            }),
        },
    );
    let request = Request::get("http://api.example.com/v1/customers/acme/orders")
        .header("host", "api.example.com")
        .header("authorization", basic(&key))
        .body(())
        .unwrap();
    assert!(decide(&shared, peer, &request).is_ok());
    group.bench_function("valid_key/1k_keys_customer_rate_and_quota", |b| {
        b.iter(|| decide(&shared, peer, black_box(&request)))
    });
    group.finish();
}

fn parts(c: &mut Criterion) {
    let key = Secret::generate(Environment::Production);
    let mut headers = HeaderMap::new();
    headers.insert("authorization", basic(key.expose()).parse().unwrap());
    let schemes = Schemes {
        basic: true,
        bearer: true,
        header: Some(http::header::HeaderName::from_static("x-api-key")),
    };
    c.bench_function("credential/basic_extract_and_format_check", |b| {
        b.iter(|| {
            let mut buf = [0; 1024];
            let (secret, _) = credentials::extract(black_box(&headers), &schemes, &mut buf).unwrap();
            check_format(secret)
        })
    });
    let hasher = Hasher::unkeyed();
    c.bench_function("hash/blake3_generated_key", |b| {
        b.iter(|| hasher.hash(black_box(key.expose().as_bytes())))
    });

    let held = PermissionSet::new(
        ["customer:read", "license:*", "invoice:read", "order:write"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect(),
    );
    let required: Permission = "license:delete".parse().unwrap();
    c.bench_function("permission/grants_wildcard_of_four", |b| {
        b.iter(|| held.grants(black_box(&required)))
    });

    let limits = KeyLimits::default();
    let spec = RateLimitSpec {
        requests: NonZeroU32::new(1_000_000_000).unwrap(),
        per: Duration::from_secs(1),
        burst: None,
    };
    c.bench_function("rate_limit/check_existing_bucket", |b| {
        b.iter(|| limits.check(black_box(7), &spec))
    });
    c.bench_function("rate_limit/check_new_bucket", |b| {
        let mut seq = 1_000u64;
        b.iter_batched(
            || {
                seq += 1;
                seq
            },
            |seq| limits.check(seq, &spec),
            BatchSize::SmallInput,
        )
    });
}

/// Step 9's header work: the request head rewritten for the upstream (hop-by-hop, credential and
/// forged identity headers out; identity and forwarding headers in), and the upstream's
/// response head cleaned, for a typical request of a browser-less API client.
fn rewrite(c: &mut Criterion) {
    let request = || {
        Request::get("/v1/customers/acme?expand=plan")
            .header("host", "api.example.com")
            .header("authorization", "Basic WDprZ19wcm9kX3NlY3JldA==")
            .header("user-agent", "client/1.0")
            .header("accept", "application/json")
            .header("x-forwarded-for", "198.51.100.7")
            .body(())
            .unwrap()
    };
    let request_id = HeaderValue::from_static("6f1c0a6e2b8d4f00a1b2c3d4e5f60718");
    let upstream_host = HeaderValue::from_static("127.0.0.1:7001");
    let uri: http::Uri = "/v1/customers/acme?expand=plan".parse().unwrap();
    c.bench_function("rewrite/request_head", |b| {
        b.iter_batched(
            request,
            |mut request| {
                let host = request.headers().get(http::header::HOST).cloned();
                let identity = Identity {
                    seq: 1,
                    key_id: b"key_2Vx9c8aQe1",
                    environment: "production",
                    customer: None,
                    request_id: &request_id,
                    client: "203.0.113.5".parse().unwrap(),
                    tls: false,
                    host: host.as_ref(),
                };
                let passing = Passing {
                    credentials: Some(Credentials {
                        authorization: true,
                        header: &KEY_HEADER,
                    }),
                    preserve_host: false,
                    method_override: false,
                    trusted_peer: false,
                };
                prepare(&mut request, uri.clone(), &identity, &passing, &upstream_host);
                request
            },
            BatchSize::SmallInput,
        )
    });
    let response_head = || {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("server", "nginx"),
            ("date", "Wed, 25 Nov 2026 16:00:00 GMT"),
            ("content-type", "application/json"),
            ("content-length", "43"),
            ("connection", "keep-alive"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        headers
    };
    c.bench_function("rewrite/response_head", |b| {
        b.iter_batched(
            response_head,
            |mut headers| {
                strip_hop_by_hop(&mut headers);
                headers
            },
            BatchSize::SmallInput,
        )
    });
}

/// A request's span with `[tracing]` on, as the request path makes it: begun from the request's
/// headers (a `traceparent` to continue), its `traceparent` set on the upstream's request, and
/// ended with the outcome. The exporter runs as in production, every 10 ms here, to a collector
/// that refuses connections (its batches are dropped, so the queue does not fill).
fn traces(c: &mut Criterion) {
    use keygate::telemetry::traces::{Outcome, Traces};
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let _entered = runtime.enter();
    let config = keygate::config::Tracing {
        otlp_endpoint: Some("http://127.0.0.1:9".into()),
        sample_ratio: 1.0,
        service_name: "keygate".into(),
        export_interval: Duration::from_millis(10),
    };
    let traces = Traces::start(&config).expect("an exporter").expect("tracing on");
    let mut incoming = HeaderMap::new();
    incoming.insert(
        "traceparent",
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    let method = http::Method::GET;
    c.bench_function("traces/request_span_sampled", |b| {
        b.iter(|| {
            let span = traces.begin(black_box(&incoming));
            let mut outgoing = HeaderMap::new();
            span.propagate(&mut outgoing);
            span.end(&Outcome {
                method: &method,
                route: Some("customers"),
                key_id: Some("key_JltMfHLVnawG8RCJD3mS"),
                environment: Some("production"),
                status: http::StatusCode::OK,
                allowed: true,
                reason: None,
                upstream_time: Some(Duration::from_micros(1723)),
            });
            outgoing
        })
    });
}

criterion_group!(benches, traces, verdict, parts, rewrite);
criterion_main!(benches);
