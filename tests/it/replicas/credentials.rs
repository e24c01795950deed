//! The fleet credential's stories (SPEC 12): what a false replica row receives, which
//! addresses are asked at all, and a token too short to sign.

use super::*;

/// A row that says "I am a replica" at `address`, written as any holder of a store credential
/// could write it, heartbeat now.
fn false_replica(gateway: &Gateway, address: &str, now: jiff::Timestamp) {
    false_row(gateway, "rep_00000000deadbeef", &format!("http://{address}"), now);
}

/// A row of id `id` advertising `advertise` (written whole), heartbeat now.
fn false_row(gateway: &Gateway, id: &str, advertise: &str, now: jiff::Timestamp) {
    let row = ReplicaRow {
        id: id.into(),
        host: "attacker".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        advertise: Some(advertise.into()),
        config_digest: "0000000000000000".into(),
        revision: 0,
        synced_at: Some(now),
        limiter: "local".into(),
        started_at: now,
        heartbeat_at: now,
    };
    let since = keygate::control::replicas::live_since(now);
    gateway.store.heartbeat(&row, since, false).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_false_replica_row_receives_no_admin_token_and_nothing_it_can_reuse() {
    let harness = Harness::with_config(&STANDARD.set("admin", ADVERTISE), "").await;
    let second = harness.another_gateway().await;
    let first = &harness.gateway;
    assert!(lists(&second, &[first, &second]).await);
    let (_, key) = harness.key(&["*"]).await;
    assert!(all_admit(&[first, &second], &key).await);
    let recorder = Upstream::start().await;
    false_replica(first, &recorder.addr.to_string(), harness.clock_now());

    for token in [ADMIN_TOKEN, READ_TOKEN] {
        let path = "/v1/requests?scope=fleet&status=200";
        let answer = admin_as(first, &format!("Bearer {token}"), "GET", path, &[]).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        let body = answer.json();
        assert_eq!(
            body["replicas"].as_array().unwrap().len(),
            2,
            "the real ones answer: {body}"
        );
        let from_second = body["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["replica"] == second.replica.id.as_str());
        assert!(from_second, "{body}");
        assert_eq!(body["missing"][0]["replica"], "rep_00000000deadbeef", "{body}");
    }

    let asked = recorder.requests();
    assert_eq!(asked.len(), 2, "the false replica was asked once per fleet read");
    for request in asked {
        let authorization = request.headers["authorization"].to_str().unwrap().to_owned();
        assert!(!authorization.contains(ADMIN_TOKEN) && !authorization.contains(READ_TOKEN));
        assert!(authorization.starts_with("KeygateFleet ts="), "{authorization}");
        // What the false replica got opens nothing on a real one: not the call it was made
        // for, not any other.
        let same = request.uri.path_and_query().unwrap().as_str().to_owned();
        for (method, path) in [
            ("GET", same.as_str()),
            ("GET", "/v1/requests?scope=local"),
            ("GET", "/v1/keys"),
            ("POST", "/v1/keys"),
        ] {
            for replica in [first, &second] {
                let answer = admin_as(replica, &authorization, method, path, &[]).await;
                assert_eq!(answer.status, 401, "{method} {path}: {}", answer.text());
            }
        }
    }
    // Refusals anyone can cause are counted (and logged at debug only): the same call and
    // the local read are for another replica (signature), the others not allowed at all.
    let metrics = harness.metrics().await;
    let refusals = |reason: &str| {
        let series = format!("keygate_fleet_credential_refusals_total{{reason=\"{reason}\"}}");
        crate::support::sample(&metrics, &series)
    };
    assert_eq!(refusals("signature"), Some(4.0), "{metrics}");
    assert_eq!(refusals("not_allowed"), Some(4.0), "{metrics}");
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_advertising_more_than_an_address_is_not_asked() {
    let harness = Harness::with_config(&STANDARD.set("admin", ADVERTISE), "").await;
    let first = &harness.gateway;
    let recorder = Upstream::start().await;
    let at = recorder.addr;
    let now = harness.clock_now();
    let rows = [
        ("rep_00000000000000b1", format!("http://{at}/v1/keys?x=")),
        ("rep_00000000000000b2", format!("http://user@{at}")),
        ("rep_00000000000000b3", format!("http://{at}?")),
        ("rep_00000000000000b4", format!("https://{at}")),
    ];
    for (id, advertise) in &rows {
        false_row(first, id, advertise, now);
    }
    let answer = admin_with(first, "GET", "/v1/requests?scope=fleet", &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body = answer.json();
    let missing = body["missing"].as_array().unwrap();
    assert_eq!(missing.len(), rows.len(), "{body}");
    assert!(missing.iter().all(|m| m["reason"] == "bad address"), "{body}");
    assert!(recorder.requests().is_empty(), "none was asked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_admin_token_signs_no_fleet_request_and_says_why() {
    let harness = Harness::with_config(&STANDARD.set("admin", ADVERTISE), "").await;
    let short = "s".repeat(31);
    let mut options = harness.options();
    options.admin_token = Some(short.clone());
    let text = std::fs::read_to_string(&harness.config_path).unwrap();
    let config = keygate::config::parse(&text, harness.dir.path()).unwrap();
    let warned = keygate::control::replicas::credential::short_token_warning(&config, Some(&short));
    assert!(
        warned.is_some_and(|w| w.contains("admin.advertise")),
        "serve and check warn"
    );
    let gateway = Gateway::start(config, options).await.unwrap();
    crate::support::loaded(&gateway).await;
    let first = &harness.gateway;
    assert!(lists(first, &[first, &gateway]).await);
    let answer = admin_as(
        &gateway,
        &format!("Bearer {short}"),
        "GET",
        "/v1/requests?scope=fleet",
        &[],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["missing"][0]["replica"], first.replica.id.as_str(), "{body}");
    assert_eq!(
        body["missing"][0]["reason"],
        "the admin token is too short to sign fleet requests (at least 32 characters)"
    );
    gateway.shutdown().await;
}
