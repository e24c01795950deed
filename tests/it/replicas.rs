//! Proof across the fleet (SPEC 12), from the outside: three gateways on one PostgreSQL list
//! one another in `GET /v1/replicas` (a stopped one drops out, an odd config is flagged), a
//! revocation asked with `?wait=applied` answers once all three refuse the key, a replica cut
//! off from the store is named in a 202, and `GET /v1/requests?scope=fleet` merges every
//! replica's records, naming those it could not ask ([`credentials`]: what a false row
//! receives). Gateways sharing one SQLite file do the same. The PostgreSQL cases need `KEYGATE_TEST_POSTGRES_URL`; each has a schema of its own.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::support::postgres::{postgres_url, FreshSchema};
use crate::support::relay::{service_addr, Relay};
use crate::support::{
    admin_call, clients, eventually, loaded, read, Answer, ConfigEdit, Harness, Upstream, ADMIN_TOKEN,
    READ_TOKEN, STANDARD,
};
use keygate::control::store::ReplicaRow;
use keygate::gateway::Gateway;

mod credentials;

/// Every replica advertises its admin listener on loopback, at the port it bound.
const ADVERTISE: &str = "advertise = \"http://127.0.0.1\"";

/// The standard config on PostgreSQL at `store`, polling only hourly (whatever arrives
/// sooner was pushed), advertising its admin listener.
fn postgres_config(store: &str) -> String {
    STANDARD
        .edit("url = \"sqlite://keygate.db\"", &format!("url = \"{store}\""))
        .edit("sync_interval = \"100ms\"", "sync_interval = \"1h\"")
        .set("admin", ADVERTISE)
}

/// A harness gateway on a fresh PostgreSQL schema and two more replicas beside it; `None`
/// (the test skips) without PostgreSQL. The schema lives as long as the value kept for it.
async fn three_on_postgres() -> Option<(Harness, Gateway, Gateway, FreshSchema)> {
    let schema = FreshSchema::new(&postgres_url()?);
    let harness = Harness::with_config(&postgres_config(&schema.url), "").await;
    let second = harness.another_gateway().await;
    let third = harness.another_gateway().await;
    Some((harness, second, third, schema))
}

/// A replica started from the harness's config file as `edit` changes it.
async fn replica_with(harness: &Harness, edit: impl Fn(&str) -> String) -> Gateway {
    let text = edit(&std::fs::read_to_string(&harness.config_path).unwrap());
    let config = keygate::config::parse(&text, harness.dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let gateway = Gateway::start(config, harness.options()).await.unwrap();
    loaded(&gateway).await;
    gateway
}

async fn listing(gateway: &Gateway) -> Value {
    let answer = admin_call(gateway, "GET", "/v1/replicas", "").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    answer.json()
}

fn ids(listing: &Value) -> Vec<String> {
    let mut ids: Vec<String> = listing["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn sorted(gateways: &[&Gateway]) -> Vec<String> {
    let mut ids: Vec<String> = gateways.iter().map(|g| g.replica.id.clone()).collect();
    ids.sort();
    ids
}

/// Whether `gateway` lists exactly `expected` within a few seconds.
async fn lists(gateway: &Gateway, expected: &[&Gateway]) -> bool {
    let expected = sorted(expected);
    eventually(Duration::from_secs(10), || async {
        ids(&listing(gateway).await) == expected
    })
    .await
}

/// An admin call with extra headers.
async fn admin_with(gateway: &Gateway, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    admin_as(gateway, &bearer, method, path, headers).await
}

/// An admin call with `authorization` and extra headers.
async fn admin_as(
    gateway: &Gateway,
    authorization: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", gateway.admin_addr))
        .header("authorization", authorization);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::new())).unwrap();
    read(client.request(request).await.unwrap()).await
}

async fn status(gateway: &Gateway, key: &str) -> u16 {
    clients::get(gateway, "/v1/status", key).await.status.as_u16()
}

/// Whether every replica admits `key` within a few seconds.
async fn all_admit(replicas: &[&Gateway], key: &str) -> bool {
    for replica in replicas {
        let admitted = eventually(Duration::from_secs(10), || async {
            status(replica, key).await == 200
        })
        .await;
        if !admitted {
            return false;
        }
    }
    true
}

fn metric(metrics: &str, series: &str) -> Option<f64> {
    crate::support::sample(metrics, series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_list_one_another_and_a_stopped_one_drops_out() {
    let Some((harness, second, third, _schema)) = three_on_postgres().await else {
        return;
    };
    let first = &harness.gateway;
    assert!(
        lists(first, &[first, &second, &third]).await,
        "{}",
        listing(first).await
    );
    let seen = listing(&second).await;
    let this: Vec<&Value> = seen["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["self"] == true)
        .collect();
    assert_eq!(this.len(), 1);
    assert_eq!(this[0]["id"], second.replica.id.as_str());
    assert_eq!(
        this[0]["advertise"],
        format!("http://127.0.0.1:{}", second.admin_addr.port()).as_str()
    );
    for replica in seen["replicas"].as_array().unwrap() {
        assert_eq!(replica["config_differs"], false, "{replica}");
        assert_eq!(replica["version_differs"], false, "{replica}");
        assert_eq!(replica["limiter"], "local");
        assert_eq!(replica["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(replica["config_digest"], seen["config_digest"]);
    }
    let gauged = eventually(Duration::from_secs(10), || async {
        let metrics = admin_call(first, "GET", "/metrics", "").await.text();
        metric(&metrics, r#"keygate_fleet_replicas{state="current"}"#) == Some(3.0)
    })
    .await;
    assert!(gauged, "three current replicas in the gauge");

    third.shutdown().await;
    assert!(
        lists(first, &[first, &second]).await,
        "the stopped replica's row is removed"
    );
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_running_another_config_is_flagged() {
    let Some(schema) = postgres_url().map(|url| FreshSchema::new(&url)) else {
        return;
    };
    let harness = Harness::with_config(&postgres_config(&schema.url), "").await;
    let second = harness.another_gateway().await;
    let odd = replica_with(&harness, |text| {
        text.edit("default = \"1000/s\"", "default = \"999/s\"")
    })
    .await;
    let first = &harness.gateway;
    assert!(lists(first, &[first, &second, &odd]).await);
    let seen = listing(first).await;
    for replica in seen["replicas"].as_array().unwrap() {
        let is_odd = replica["id"] == odd.replica.id.as_str();
        assert_eq!(replica["config_differs"], is_odd, "{replica}");
    }
    let flagged = eventually(Duration::from_secs(10), || async {
        let metrics = admin_call(first, "GET", "/metrics", "").await.text();
        metric(&metrics, "keygate_fleet_config_mismatch") == Some(1.0)
    })
    .await;
    assert!(flagged, "one replica runs another config");
    second.shutdown().await;
    odd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_waited_for_answers_once_all_three_replicas_refuse_the_key() {
    let Some((harness, second, third, _schema)) = three_on_postgres().await else {
        return;
    };
    let replicas = [&harness.gateway, &second, &third];
    assert!(lists(&second, &replicas).await);
    let (id, key) = harness.key(&["*"]).await;
    assert!(all_admit(&replicas, &key).await);

    let revoked = admin_with(
        &second,
        "POST",
        &format!("/v1/keys/{id}/revoke?wait=applied"),
        &[],
    )
    .await;
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    let body = revoked.json();
    assert_eq!(body["status"], "revoked", "still the key object");
    let receipt = &body["receipt"];
    assert_eq!(receipt["replicas"], 3, "{receipt}");
    assert_eq!(receipt["applied"].as_array().unwrap().len(), 3, "{receipt}");
    assert_eq!(receipt["behind"], serde_json::json!([]));
    let mut named: Vec<String> = receipt["applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["replica"].as_str().unwrap().to_owned())
        .collect();
    named.sort();
    assert_eq!(named, sorted(&replicas));
    assert!(
        receipt["summary"]
            .as_str()
            .unwrap()
            .starts_with("applied on 3 of 3 replicas in "),
        "{receipt}"
    );
    // The receipt is the proof: every replica refuses the key now, none later.
    for replica in replicas {
        assert_eq!(status(replica, &key).await, 401);
    }

    let (other, _) = harness.key(&["*"]).await;
    let deleted = admin_with(
        &third,
        "DELETE",
        &format!("/v1/keys/{other}"),
        &[("prefer", "wait=5")],
    )
    .await;
    assert_eq!(
        deleted.status,
        200,
        "a 204 with a receipt answers 200: {}",
        deleted.text()
    );
    assert_eq!(deleted.headers["preference-applied"], "wait=5");
    assert_eq!(deleted.json()["receipt"]["applied"].as_array().unwrap().len(), 3);

    let refused = admin_with(
        &third,
        "POST",
        &format!("/v1/keys/{id}/activate"),
        &[("prefer", "wait=31")],
    )
    .await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert_eq!(refused.json()["field"], "Prefer");
    let key_now = admin_call(&third, "GET", &format!("/v1/keys/{id}"), "").await;
    assert_eq!(
        key_now.json()["status"],
        "revoked",
        "a refused wait changes nothing"
    );
    second.shutdown().await;
    third.shutdown().await;
}

// Multi-threaded: a store call of the cut replica blocks its thread, and the relay must go on
// forwarding meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_the_store_is_named_behind_in_a_202() {
    let Some(postgres) = postgres_url() else {
        return;
    };
    let schema = FreshSchema::new(&postgres);
    let harness = Harness::with_config(&postgres_config(&schema.url), "").await;
    let second = harness.another_gateway().await;
    let relay = Relay::start(service_addr(&postgres)).await;
    let through_relay = schema
        .url
        .edit(&service_addr(&postgres).to_string(), &relay.addr.to_string());
    let stalled = replica_with(&harness, |text| text.edit(&schema.url, &through_relay)).await;
    let first = &harness.gateway;
    assert!(lists(first, &[first, &second, &stalled]).await);
    let (id, key) = harness.key(&["*"]).await;
    assert!(all_admit(&[first, &second, &stalled], &key).await);

    // Counted in receipts once its row says it serves the key's revision.
    let reported = eventually(Duration::from_secs(10), || async {
        let seen = listing(first).await;
        seen["replicas"].as_array().unwrap().iter().any(|r| {
            r["id"] == stalled.replica.id.as_str()
                && r["revision"].as_u64() >= Some(1)
                && !r["synced_at"].is_null()
        })
    })
    .await;
    assert!(reported, "{}", listing(first).await);
    relay.cut();
    let revoked = admin_with(
        first,
        "POST",
        &format!("/v1/keys/{id}/revoke"),
        &[("prefer", "wait=1")],
    )
    .await;
    assert_eq!(revoked.status, 202, "{}", revoked.text());
    let receipt = &revoked.json()["receipt"];
    let behind = receipt["behind"].as_array().unwrap();
    assert_eq!(behind.len(), 1, "{receipt}");
    assert_eq!(behind[0]["replica"], stalled.replica.id.as_str());
    assert_eq!(receipt["applied"].as_array().unwrap().len(), 2, "{receipt}");
    assert!(receipt["summary"].as_str().unwrap().ends_with("1 still behind"));
    assert_eq!(status(&stalled, &key).await, 200, "what the receipt warns of");

    relay.restore();
    second.shutdown().await;
    stalled.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleets_recent_requests_are_merged_and_the_replicas_not_asked_are_named() {
    let Some((harness, second, third, _schema)) = three_on_postgres().await else {
        return;
    };
    let silent = replica_with(&harness, |text| text.edit(ADVERTISE, "")).await;
    let unreachable = replica_with(&harness, |text| {
        text.edit(ADVERTISE, "advertise = \"http://127.0.0.1:1\"")
    })
    .await;
    let first = &harness.gateway;
    let all = [first, &second, &third, &silent, &unreachable];
    assert!(lists(first, &all).await);
    let (_, key) = harness.key(&["*"]).await;
    assert!(all_admit(&[first, &second, &third], &key).await);

    let answer = admin_with(
        first,
        "GET",
        "/v1/requests?scope=fleet&status=200&limit=1000",
        &[],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body = answer.json();
    let items = body["items"].as_array().unwrap();
    let mut from: Vec<String> = items
        .iter()
        .map(|r| r["replica"].as_str().unwrap().to_owned())
        .collect();
    from.sort();
    from.dedup();
    assert_eq!(from, sorted(&[first, &second, &third]), "{body}");
    let times: Vec<jiff::Timestamp> = items
        .iter()
        .map(|r| r["time"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first: {times:?}");
    let missing: Vec<(&str, &str)> = body["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["replica"].as_str().unwrap(), m["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(missing.len(), 2, "{body}");
    for (replica, reason) in missing {
        if replica == silent.replica.id {
            assert!(reason.starts_with("not advertised"), "{reason}");
        } else {
            assert_eq!(replica, unreachable.replica.id);
            assert_eq!(reason, "unreachable", "no connection error text");
        }
    }
    let cursor = admin_with(first, "GET", "/v1/requests?scope=fleet&cursor=3", &[]).await;
    assert_eq!(cursor.status, 400);
    for gateway in [second, third, silent, unreachable] {
        gateway.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_sharing_one_sqlite_file_list_each_other_and_give_receipts() {
    let harness = Harness::with_config(&STANDARD.set("admin", ADVERTISE), "").await;
    let second = harness.another_gateway().await;
    let first = &harness.gateway;
    assert!(lists(&second, &[first, &second]).await);
    let (id, key) = harness.key(&["*"]).await;
    assert!(all_admit(&[first, &second], &key).await);

    let revoked = admin_with(first, "POST", &format!("/v1/keys/{id}/revoke?wait=applied"), &[]).await;
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    assert_eq!(revoked.json()["receipt"]["applied"].as_array().unwrap().len(), 2);
    assert_eq!(status(&second, &key).await, 401);

    let answer = admin_with(&second, "GET", "/v1/requests?scope=fleet", &[]).await;
    assert_eq!(
        answer.json()["missing"],
        serde_json::json!([]),
        "{}",
        answer.text()
    );
    second.shutdown().await;
    assert!(lists(first, &[first]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_advertises_the_address_its_environment_gives() {
    let harness = Harness::with_config(&STANDARD.set("admin", ADVERTISE), "").await;
    // A name of this test's own: no other test reads or sets it.
    let variable = "KEYGATE_TEST_ADVERTISE_FROM_ENV";
    std::env::set_var(variable, "127.0.0.1");
    let from_env = format!("advertise_env = \"{variable}\"");
    let pod = replica_with(&harness, |text| text.edit(ADVERTISE, &from_env)).await;
    let first = &harness.gateway;
    assert!(lists(first, &[first, &pod]).await);
    let seen = listing(first).await;
    let row = seen["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == pod.replica.id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(
        row["advertise"],
        format!("http://127.0.0.1:{}", pod.admin_addr.port()).as_str()
    );
    let answer = admin_with(first, "GET", "/v1/requests?scope=fleet", &[]).await;
    assert_eq!(
        answer.json()["missing"],
        serde_json::json!([]),
        "{}",
        answer.text()
    );

    let unset = std::fs::read_to_string(&harness.config_path)
        .unwrap()
        .edit(ADVERTISE, "advertise_env = \"KEYGATE_TEST_ADVERTISE_NEVER_SET\"");
    let config = keygate::config::parse(&unset, harness.dir.path()).unwrap();
    let refused = Gateway::start(config, harness.options())
        .await
        .err()
        .expect("refused");
    assert!(
        refused.to_string().contains("KEYGATE_TEST_ADVERTISE_NEVER_SET"),
        "{refused}"
    );
    pod.shutdown().await;
}

/// The receipt's answer comes from the replicas' announcements, not from the fallback poll:
/// with the poll set to an hour, every change still gets its full receipt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_complete_on_the_replicas_announcements_alone() {
    let Some((harness, second, third, _schema)) = three_on_postgres().await else {
        return;
    };
    let replicas = [&harness.gateway, &second, &third];
    assert!(lists(&second, &replicas).await);
    for replica in replicas {
        replica.replica.set_receipt_poll(Duration::from_secs(3600));
    }
    let mut keys = Vec::new();
    for _ in 0..5 {
        keys.push(harness.key(&["*"]).await);
    }
    for (n, (id, key)) in keys.iter().enumerate() {
        assert!(all_admit(&replicas, key).await);
        let asking = replicas[n % 3];
        let path = format!("/v1/keys/{id}/revoke");
        let revoked = admin_with(asking, "POST", &path, &[("prefer", "wait=10")]).await;
        assert_eq!(revoked.status, 200, "{}", revoked.text());
        let receipt = &revoked.json()["receipt"];
        assert_eq!(receipt["applied"].as_array().unwrap().len(), 3, "{receipt}");
    }
    second.shutdown().await;
    third.shutdown().await;
}
