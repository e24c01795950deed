//! Usage analytics end to end (SPEC 11): requests through a gateway are counted by key, route,
//! status and hour, refused ones of a known key included; `GET /v1/usage` answers them as JSON
//! and CSV, by status, route, hour or day, for a key or a customer; unknown keys leave nothing
//! in memory; two replicas on one PostgreSQL add up.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::{json, Value};

use crate::support::postgres::{postgres_url, FreshSchema};
use crate::support::relay::{service_addr, Relay};
use crate::support::{admin_call, clients, spec, Answer, ConfigEdit, Harness, READ_TOKEN, STANDARD};
use keygate::core::environment::Environment;

/// 10:20 UTC: requests before an advance of an hour count in the 10:00 hour.
const AT: &str = "2026-12-06T10:20:00Z";

/// `GET /v1/usage?query` with the read-only token (it may read usage).
async fn usage(h: &Harness, query: &str) -> Answer {
    let request = Request::builder()
        .uri(h.admin_url(&format!("/v1/usage?{query}")))
        .header("authorization", format!("Bearer {READ_TOKEN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    h.send(request).await
}

async fn series(h: &Harness, query: &str) -> Value {
    let answer = usage(h, query).await;
    assert_eq!(answer.status, 200, "{query}: {}", answer.text());
    answer.json()["series"].clone()
}

/// A key of customer `acme` that may read customers, with some traffic: at 10:xx, three 200s
/// and a 403 on `customers`, two 200s on `status`; at 11:xx, one 200 on `status`.
async fn traffic(h: &Harness) -> String {
    h.clock.set(AT.parse().unwrap());
    let mut key = spec(Environment::Production, &["customer:read"]);
    key.customer_id = Some("acme".into());
    let (id, secret) = h.create_key(key).await;
    for _ in 0..3 {
        assert_eq!(h.get("/v1/customers/acme", &secret).await.status, 200);
    }
    assert_eq!(h.get("/v1/customers/other", &secret).await.status, 403);
    for _ in 0..2 {
        assert_eq!(h.get("/v1/status", &secret).await.status, 200);
    }
    h.clock.advance(std::time::Duration::from_secs(3600));
    assert_eq!(h.get("/v1/status", &secret).await.status, 200);
    id
}

#[tokio::test]
async fn requests_are_answered_by_status_route_and_day_as_json_and_csv() {
    let h = Harness::start().await;
    let id = traffic(&h).await;
    // No flush here: the answer flushes this replica's counts first.
    let from = "from=2026-12-06T00:00:00Z";
    assert_eq!(
        series(&h, &format!("key_id={id}&{from}&group_by=status")).await,
        json!([
            {"group": "200", "points": [
                {"t": "2026-12-06T10:00:00Z", "count": 5},
                {"t": "2026-12-06T11:00:00Z", "count": 1}]},
            {"group": "403", "points": [{"t": "2026-12-06T10:00:00Z", "count": 1}]},
        ])
    );
    assert_eq!(
        series(&h, &format!("key_id={id}&{from}&group_by=route")).await,
        json!([
            {"group": "customers", "points": [{"t": "2026-12-06T10:00:00Z", "count": 4}]},
            {"group": "status", "points": [
                {"t": "2026-12-06T10:00:00Z", "count": 2},
                {"t": "2026-12-06T11:00:00Z", "count": 1}]},
        ])
    );
    let daily = json!([{"group": "all", "points": [{"t": "2026-12-06T00:00:00Z", "count": 7}]}]);
    assert_eq!(series(&h, &format!("key_id={id}&granularity=day")).await, daily);
    assert_eq!(series(&h, "customer_id=acme&granularity=day").await, daily);

    let csv = usage(&h, &format!("key_id={id}&{from}&group_by=status&format=csv")).await;
    assert_eq!(csv.headers["content-type"], "text/csv; charset=utf-8");
    assert_eq!(
        csv.text(),
        "t,group,count\n2026-12-06T10:00:00Z,200,5\n2026-12-06T11:00:00Z,200,1\n\
         2026-12-06T10:00:00Z,403,1\n"
    );
}

#[tokio::test]
async fn bad_usage_queries_name_their_parameter_and_an_unknown_key_is_404() {
    let h = Harness::start().await;
    let id = traffic(&h).await;
    for (query, field) in [
        ("granularity=hour".to_owned(), "key_id"),
        (
            format!("key_id={id}&from=2026-12-06T12:00:00Z&to=2026-12-06T11:00:00Z"),
            "from",
        ),
        (format!("key_id={id}&from=2026-01-01T00:00:00Z"), "from"),
        (format!("key_id={id}&group_by=method"), "group_by"),
        (format!("key_id={id}&page=2"), "page"),
    ] {
        let answer = usage(&h, &query).await;
        assert_eq!(answer.status, 400, "{query}");
        assert_eq!(answer.json()["field"], field, "{query}");
    }
    assert_eq!(usage(&h, "key_id=key_missing").await.status, 404);
}

#[tokio::test]
async fn requests_without_a_known_key_leave_nothing_in_memory() {
    let h = Harness::start().await;
    let analytics = h.gateway.shared.analytics();
    for n in 0..200 {
        let answer = h.get("/v1/status", &format!("kg_prod_scanning{n:04}")).await;
        assert_eq!(answer.status, 401);
    }
    assert_eq!(h.get("/v1/status", "").await.status, 401);
    assert!(analytics.is_empty(), "{} cells", analytics.len());
    let (_, secret) = h.key(&[]).await;
    h.get("/v1/status", &secret).await;
    assert_eq!(analytics.len(), 1, "a known key's request is counted");
}

#[tokio::test]
async fn two_replicas_on_one_postgresql_add_up() {
    let Some(postgres) = postgres_url() else { return };
    let schema = FreshSchema::new(&postgres);
    let config = STANDARD.edit(
        "url = \"sqlite://keygate.db\"",
        &format!("url = \"{}\"", schema.url),
    );
    let h = Harness::with_config(&config, "").await;
    let second = h.another_gateway().await;
    h.clock.set(AT.parse().unwrap());
    let (id, secret) = h.key(&[]).await;
    second.sync_now().await.unwrap();
    for _ in 0..2 {
        assert_eq!(h.get("/v1/status", &secret).await.status, 200);
    }
    for _ in 0..3 {
        assert_eq!(clients::get(&second, "/v1/status", &secret).await.status, 200);
    }
    second.flush_usage().await;
    let query = format!("/v1/usage?key_id={id}&from=2026-12-06T00:00:00Z");
    let answer = admin_call(&second, "GET", &query, "").await;
    assert_eq!(
        answer.json()["series"],
        json!([{"group": "all", "points": [{"t": "2026-12-06T10:00:00Z", "count": 3}]}]),
        "before the first replica flushes"
    );
    assert_eq!(
        series(&h, &format!("key_id={id}&from=2026-12-06T00:00:00Z")).await,
        json!([{"group": "all", "points": [{"t": "2026-12-06T10:00:00Z", "count": 5}]}]),
        "the fleet's sum, the asking replica's counts flushed first"
    );
}

// Multi-threaded: the flush blocks its thread while the relay must go on holding connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_of_a_failed_flush_are_written_by_the_next() {
    let Some(postgres) = postgres_url() else { return };
    let schema = FreshSchema::new(&postgres);
    let relay = Relay::start(service_addr(&postgres)).await;
    let url = schema
        .url
        .edit(&service_addr(&postgres).to_string(), &relay.addr.to_string());
    let config = STANDARD.edit("url = \"sqlite://keygate.db\"", &format!("url = \"{url}\""));
    let h = Harness::with_config(&config, "").await;
    h.clock.set(AT.parse().unwrap());
    let (id, secret) = h.key(&[]).await;
    for _ in 0..4 {
        assert_eq!(h.get("/v1/status", &secret).await.status, 200);
    }
    relay.cut();
    h.gateway.flush_usage().await;
    assert_eq!(h.metric("keygate_usage_flush_errors_total").await, Some(1.0));
    relay.restore();
    assert_eq!(
        series(&h, &format!("key_id={id}&from=2026-12-06T00:00:00Z")).await,
        json!([{"group": "all", "points": [{"t": "2026-12-06T10:00:00Z", "count": 4}]}]),
        "kept through the failed flush, none lost, none twice"
    );
}
