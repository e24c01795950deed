//! Quotas across replicas without Redis, and quota warnings (SPEC 11): three gateways on one
//! PostgreSQL lease blocks of a key's quota from the store, so the fleet's total stays within
//! the limit plus one block per replica, an operator's top-up through one replica is spent
//! through the others, and a drain gives back what was leased and not spent, leaving the
//! store's counter equal to what was admitted. Warnings at `[quotas] warn_at` go out once a
//! period, as a metric and webhook payloads in the outbox, from the leases' counter and from
//! Redis's.

use std::time::Duration;

use jiff::Timestamp;
use serde_json::Value;

use crate::support::config::redis_limits;
use crate::support::postgres::{postgres_url, FreshSchema};
use crate::support::relay::{service_addr, Relay};
use crate::support::{
    admin_call, clients, eventually, loaded, redis_url, sample, ConfigEdit, Harness, STANDARD,
};
use keygate::gateway::Gateway;

/// A block is a tenth of the allowance: 20 of 200.
const QUOTAS: &str = "\n[quotas]\nwarn_at = [0.5, 1.0]\nlease_block = 0.1\n";
const LIMIT: u64 = 200;
const BLOCK: u64 = 20;

/// Admitted (200) answers to `count` requests of `key`, `lanes` at a time, through `replica`.
async fn admitted(replica: &Gateway, key: &str, lanes: usize, count: usize) -> u64 {
    let lane = |_| async move {
        let mut passed = 0;
        for _ in 0..count / lanes {
            passed += u64::from(clients::get(replica, "/v1/status", key).await.status == 200);
        }
        passed
    };
    futures_util::future::join_all((0..lanes).map(lane))
        .await
        .into_iter()
        .sum()
}

/// Three replicas with quota leases on a fresh PostgreSQL schema (kept while the value lives);
/// `None` when no PostgreSQL is at hand.
async fn three_replicas_on_postgres() -> Option<(FreshSchema, Harness, Gateway, Gateway)> {
    let schema = FreshSchema::new(&postgres_url()?);
    let config = STANDARD.edit(
        "url = \"sqlite://keygate.db\"",
        &format!("url = \"{}\"", schema.url),
    );
    let harness = Harness::with_config(&config, QUOTAS).await;
    let (second, third) = (harness.another_gateway().await, harness.another_gateway().await);
    Some((schema, harness, second, third))
}

async fn quota_state(replica: &Gateway, id: &str) -> Value {
    let shown = admin_call(replica, "GET", &format!("/v1/keys/{id}"), "").await;
    assert_eq!(shown.status, 200, "{}", shown.text());
    shown.json()["quota_state"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_stay_within_a_block_each_and_give_back_at_drain() {
    let Some((_schema, harness, second, third)) = three_replicas_on_postgres().await else {
        return;
    };
    loaded(&second).await;
    loaded(&third).await;
    let created = admin_call(
        &harness.gateway,
        "POST",
        "/v1/keys",
        &format!(r#"{{"name":"plan","environment":"production","permissions":["*"],"quota":{{"limit":{LIMIT},"period":"day"}}}}"#),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let created = created.json();
    let (id, key) = (created["id"].as_str().unwrap(), created["key"].as_str().unwrap());
    let replicas = [&harness.gateway, &second, &third];
    for replica in replicas {
        assert!(
            eventually(Duration::from_secs(5), || async {
                quota_state(replica, id).await["limit"] == LIMIT
            })
            .await
        );
    }

    // Twice the limit asked, four at a time through each replica at once.
    let runs = replicas.map(|replica| admitted(replica, key, 4, 2 * LIMIT as usize / 3));
    let total: u64 = futures_util::future::join_all(runs).await.into_iter().sum();
    assert!(total <= LIMIT + 3 * BLOCK, "{total} admitted of {LIMIT}");
    assert!(
        total + 3 * BLOCK >= LIMIT,
        "{total} admitted of {LIMIT}: more held back than a block each"
    );

    // A top-up through one replica is spent through the others: each asks the store again a
    // second (on the gateways' clock) after it said the quota was spent.
    let topped = admin_call(&second, "POST", &format!("/v1/keys/{id}/quota"), r#"{"add":30}"#).await;
    assert_eq!(topped.status, 200, "{}", topped.text());
    harness.clock.advance(Duration::from_secs(2));
    let more = std::sync::atomic::AtomicU64::new(0);
    let spent = eventually(Duration::from_secs(10), || async {
        let passed = admitted(&third, key, 1, 5).await;
        more.fetch_add(passed, std::sync::atomic::Ordering::SeqCst) + passed >= 20
    })
    .await;
    let more = more.into_inner();
    assert!(spent, "the top-up reached the third replica: {more} admitted");

    // Drained, the two replicas give back what they leased and did not spend; the first's
    // read takes off what it holds itself: the counter is what was admitted.
    second.shutdown().await;
    third.shutdown().await;
    let state = quota_state(&harness.gateway, id).await;
    assert_eq!(state["used"], total + more, "{state}");
    assert_eq!(state["limit"], LIMIT + 30);
}

/// Requests of `key` through `replica`, one at a time, until one is refused (at most `most`):
/// how many were admitted.
async fn admitted_until_refused(replica: &Gateway, key: &str, most: u64) -> u64 {
    for passed in 0..most {
        if clients::get(replica, "/v1/status", key).await.status != 200 {
            return passed;
        }
    }
    most
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_store_cut_off_each_replica_spends_at_most_one_block_more() {
    let Some(postgres) = postgres_url() else { return };
    let schema = FreshSchema::new(&postgres);
    let relay = Relay::start(service_addr(&postgres)).await;
    let through_relay = schema
        .url
        .edit(&service_addr(&postgres).to_string(), &relay.addr.to_string());
    let config = STANDARD.edit(
        "url = \"sqlite://keygate.db\"",
        &format!("url = \"{through_relay}\""),
    );
    let harness = Harness::with_config(&config, QUOTAS).await;
    let second = harness.another_gateway().await;
    let created = admin_call(
        &harness.gateway,
        "POST",
        "/v1/keys",
        &format!(r#"{{"name":"plan","environment":"production","permissions":["*"],"quota":{{"limit":{LIMIT},"period":"day"}}}}"#),
    )
    .await;
    let key = created.json()["key"].as_str().unwrap().to_owned();
    let on_second = eventually(Duration::from_secs(5), || async {
        clients::get(&second, "/v1/status", &key).await.status == 200
    })
    .await;
    assert!(on_second);
    // Most of the quota spent while the store answers, each replica holding a lease.
    let before = 1 + admitted(&harness.gateway, &key, 1, 90).await + admitted(&second, &key, 1, 90).await;
    assert_eq!(before, 181);

    relay.cut();
    let (first, other) = tokio::join!(
        admitted_until_refused(&harness.gateway, &key, 3 * BLOCK),
        admitted_until_refused(&second, &key, 3 * BLOCK),
    );
    assert!(
        first < 3 * BLOCK && other < 3 * BLOCK,
        "each is refused in the end: {first}, {other}"
    );
    let total = before + first + other;
    assert!(
        total <= LIMIT + 2 * BLOCK,
        "{total} admitted of {LIMIT} with 2 replicas"
    );
    relay.restore();
}

/// Two replicas keep sending a key's requests while the gateways' clock crosses the hour its
/// quota renews at: every admitted request is counted in exactly one period's counter in the
/// store (the leases of the first period are given back to it when the second begins).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_period_boundary_under_load_is_counted_once_in_the_store() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let harness = Harness::with_config(STANDARD, QUOTAS).await;
    harness.clock.set("2026-03-10T10:29:59Z".parse().unwrap());
    let second = harness.another_gateway().await;
    let created = admin_call(
        &harness.gateway,
        "POST",
        "/v1/keys",
        r#"{"name":"plan","environment":"production","permissions":["*"],"quota":{"limit":1000,"period":"hour","anchor":"2026-01-01T00:30:00Z"}}"#,
    )
    .await;
    let created = created.json();
    let (id, key) = (created["id"].as_str().unwrap(), created["key"].as_str().unwrap());
    harness.sync().await;
    let on_second = eventually(Duration::from_secs(5), || async {
        clients::get(&second, "/v1/status", key).await.status == 200
    })
    .await;
    assert!(on_second);
    let (sent, stop) = (AtomicU64::new(1), AtomicBool::new(false));
    let lane = |replica: &'static str| {
        let (sent, stop, second, gateway) = (&sent, &stop, &second, &harness.gateway);
        async move {
            let replica = if replica == "second" { second } else { gateway };
            while !stop.load(Ordering::SeqCst) {
                assert_eq!(clients::get(replica, "/v1/status", key).await.status, 200);
                sent.fetch_add(1, Ordering::SeqCst);
            }
        }
    };
    let mover = async {
        for (at, then) in [(150, Some("2026-03-10T10:30:00Z")), (300, None)] {
            while sent.load(Ordering::SeqCst) < at {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            match then {
                Some(time) => harness.clock.set(time.parse().unwrap()),
                None => stop.store(true, Ordering::SeqCst),
            }
        }
    };
    let lanes = ["first", "second", "first", "second"].map(lane);
    tokio::join!(futures_util::future::join_all(lanes), mover);
    let admitted = sent.load(Ordering::SeqCst);
    assert_eq!(harness.upstream.count() as u64, admitted);

    second.shutdown().await;
    let first_hour = keygate::control::store::quota::CounterId {
        kind: "key",
        owner: id,
        period: "2026-03-10T09:30:00Z".parse::<Timestamp>().unwrap().as_second(),
    };
    let counted = eventually(Duration::from_secs(5), || async {
        let first = harness
            .gateway
            .store
            .change_quota(&first_hour, keygate::core::quota::QuotaChange::Read)
            .unwrap()
            .used;
        let now = quota_state(&harness.gateway, id).await["used"].as_u64().unwrap();
        first + now == admitted && first > 0 && now > 0
    })
    .await;
    assert!(counted, "each of {admitted} admitted requests counted once");
}

/// Waits until the outbox holds `count` payloads, and returns them.
async fn outbox(gateway: &Gateway, count: usize) -> Vec<Value> {
    let mut payloads = Vec::new();
    eventually(Duration::from_secs(5), || {
        payloads = gateway
            .store
            .due_webhooks(Timestamp::MAX, 100)
            .unwrap()
            .into_iter()
            .map(|pending| serde_json::from_str(&pending.payload).unwrap())
            .collect();
        let found = payloads.len();
        async move { found >= count }
    })
    .await;
    payloads
}

/// The events of the outbox, as (event, threshold, used, limit).
fn events(payloads: &[Value]) -> Vec<(String, f64, u64, u64)> {
    let mut events: Vec<_> = payloads
        .iter()
        .map(|p| {
            (
                p["event"].as_str().unwrap().to_owned(),
                p["threshold"].as_f64().unwrap(),
                p["used"].as_u64().unwrap(),
                p["limit"].as_u64().unwrap(),
            )
        })
        .collect();
    events.sort_by(|a, b| a.1.total_cmp(&b.1));
    events
}

/// Spends a quota of 10 past its end, tops it up, and checks that each share warned once.
async fn warns_once_a_period(config: &str) {
    // Webhooks go nowhere: only the outbox is looked at.
    let extra = format!("{QUOTAS}\n[lifecycle]\nwebhook = \"http://127.0.0.1:9/hook\"\n");
    let harness = Harness::with_config(config, &extra).await;
    let created = admin_call(
        &harness.gateway,
        "POST",
        "/v1/keys",
        r#"{"name":"plan","environment":"production","permissions":["*"],"quota":{"limit":10,"period":"day"}}"#,
    )
    .await;
    let created = created.json();
    let (id, key) = (created["id"].as_str().unwrap(), created["key"].as_str().unwrap());
    harness.sync().await;
    assert_eq!(admitted(&harness.gateway, key, 1, 14).await, 10);
    let payloads = outbox(&harness.gateway, 2).await;
    let found = events(&payloads);
    assert_eq!(found.len(), 2, "{payloads:?}");
    assert_eq!(
        (found[0].0.as_str(), found[0].1, found[0].3),
        ("quota.warning", 0.5, 10)
    );
    assert!((5..=10).contains(&found[0].2), "{payloads:?}");
    assert_eq!(found[1], ("quota.exhausted".to_owned(), 1.0, 10, 10));
    let payload = &payloads[0];
    assert_eq!(
        (payload["kind"].as_str(), payload["id"].as_str()),
        (Some("key"), Some(id))
    );
    assert!(payload["resets_at"].is_string() && payload["event_id"].is_string());

    let topped = admin_call(
        &harness.gateway,
        "POST",
        &format!("/v1/keys/{id}/quota"),
        r#"{"add":5}"#,
    )
    .await;
    assert_eq!(topped.status, 200);
    let more = eventually(Duration::from_secs(5), || async {
        clients::get(&harness.gateway, "/v1/status", key).await.status == 200
    })
    .await;
    assert!(more, "the top-up is spent");
    admitted(&harness.gateway, key, 1, 6).await;
    let metrics = harness.metrics().await;
    for threshold in ["0.5", "1"] {
        let series = format!("keygate_quota_warnings_total{{scope=\"key\",threshold=\"{threshold}\"}}");
        assert_eq!(sample(&metrics, &series), Some(1.0), "{series}\n{metrics}");
    }
    assert_eq!(
        outbox(&harness.gateway, 2).await.len(),
        2,
        "no warning twice in a period"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_quotas_warn_once_a_period() {
    warns_once_a_period(STANDARD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_in_redis_warn_once_a_period() {
    let Some(url) = redis_url() else { return };
    let prefix = format!("keygate-test:{:032x}:", rand::random::<u128>());
    warns_once_a_period(&STANDARD.set("rate_limit", &redis_limits(&url, &prefix, "500ms"))).await;
}

/// The status of a request of `key` to the proxy at `addr`; `None` once it no longer answers.
async fn try_status(addr: std::net::SocketAddr, key: &str) -> Option<u16> {
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    let client: Client<_, Full<bytes::Bytes>> =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let request = http::Request::get(format!("http://{addr}/v1/status"))
        .header("authorization", crate::support::basic(key))
        .body(Full::new(bytes::Bytes::new()))
        .unwrap();
    Some(client.request(request).await.ok()?.status().as_u16())
}

/// Three replicas stop while their requests, and so their lease round trips, are under way:
/// each gives back every block it holds, those granted during its drain too, so once all have
/// stopped the store's counter is exactly what was admitted. Whether a round trip is still out
/// at a stop depends on timing (measured: rarely), so this guards the end state; the wait for
/// such grants is `QuotaLeases::drain`'s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_stopped_under_load_give_back_every_block_the_counter_is_what_was_admitted() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let Some((schema, harness, second, third)) = three_replicas_on_postgres().await else {
        return;
    };
    let body = format!(
        r#"{{"name":"credits","environment":"production","permissions":["*"],"quota":{{"limit":{}, "period":"none"}}}}"#,
        10 * LIMIT
    );
    let created = admin_call(&harness.gateway, "POST", "/v1/keys", &body).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let created = created.json();
    let (id, key) = (
        created["id"].as_str().unwrap().to_owned(),
        created["key"].as_str().unwrap().to_owned(),
    );
    for replica in [&second, &third] {
        let known = eventually(Duration::from_secs(5), || async {
            clients::get(replica, "/v1/status", &key).await.status == 200
        })
        .await;
        assert!(known);
    }
    let admitted = Arc::new(AtomicU64::new(2));
    let mut lanes = Vec::new();
    for addr in [harness.gateway.proxy_addr, second.proxy_addr, third.proxy_addr] {
        for _ in 0..3 {
            let (admitted, key) = (admitted.clone(), key.clone());
            lanes.push(tokio::spawn(async move {
                // Until the replica stops answering; a 429 of the key's rate limit spends no
                // quota and is not counted.
                while let Some(status) = try_status(addr, &key).await {
                    if status == 200 {
                        admitted.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }));
        }
    }
    let under_way = eventually(Duration::from_secs(20), || async {
        admitted.load(Ordering::SeqCst) >= 3 * LIMIT
    })
    .await;
    assert!(under_way);
    let crate::support::Harness {
        gateway: first,
        upstream,
        dir: _dir,
        ..
    } = harness;
    tokio::join!(first.shutdown(), second.shutdown(), third.shutdown());
    for lane in lanes {
        lane.await.unwrap();
    }
    // Every request charged went upstream (a client cut off by the stop may miss its answer).
    let admitted = upstream.count() as u64;
    assert!(admitted >= 3 * LIMIT);
    let url = schema.url.clone();
    let counted = tokio::task::spawn_blocking(move || {
        let store = keygate::control::store::PgStore::open(&url).unwrap();
        let counter = keygate::control::store::quota::CounterId {
            kind: "key",
            owner: &id,
            period: keygate::control::store::quota::forever_period(),
        };
        use keygate::control::store::KeyStore;
        store
            .change_quota(&counter, keygate::core::quota::QuotaChange::Read)
            .unwrap()
            .used
    })
    .await
    .unwrap();
    assert_eq!(
        counted, admitted,
        "every block given back: the counter is what was admitted"
    );
}
