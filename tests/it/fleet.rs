//! Three gateways on one PostgreSQL store and one Redis, acting as one: a change made through
//! any of them is in force on all (pushed by NOTIFY: the poll here is an hour), a key's limit
//! is one limit, and with PostgreSQL cut off every replica keeps serving and catches up once it
//! is back; a replica restarted from its own snapshot while PostgreSQL is down keeps every
//! revocation it enforced; and a key change finds the key's secrets by index however many the
//! store holds, or leaves them alone when it keeps them. Needs `KEYGATE_TEST_POSTGRES_URL` and `KEYGATE_TEST_REDIS_URL`; each test has a
//! schema and a bucket prefix of its own.

use std::sync::Arc;
use std::time::Duration;

use crate::support::config::redis_limits;
use crate::support::postgres::{postgres_url, FreshSchema};
use crate::support::relay::{service_addr, Relay};
use crate::support::{
    admin_call, clients, eventually, loaded, redis_url, spec, ConfigEdit, Harness, STANDARD,
};
use keygate::config::StoreUrl;
use keygate::control::keys::KeyService;
use keygate::control::store;
use keygate::core::clock::ManualClock;
use keygate::core::environment::Environment;
use keygate::core::secret::Hasher;
use keygate::gateway::Gateway;

/// The standard config on PostgreSQL at `store` and Redis at `redis`, polling only hourly, so
/// whatever arrives sooner was pushed. Redis gets a budget of a second, not the default few
/// milliseconds: on a busy test machine a check past the budget is decided locally (as it
/// should be), and these tests are about the limit being shared, not about the budget.
fn fleet_config(store: &str, redis: &str) -> String {
    let prefix = format!("keygate-fleet:{:016x}:", rand::random::<u64>());
    STANDARD
        .edit("url = \"sqlite://keygate.db\"", &format!("url = \"{store}\""))
        .edit("sync_interval = \"100ms\"", "sync_interval = \"1h\"")
        .set("rate_limit", &redis_limits(redis, &prefix, "1s"))
}

async fn status(gateway: &Gateway, key: &str) -> u16 {
    clients::get(gateway, "/v1/status", key).await.status.as_u16()
}

/// Whether every replica answers `want` for `key` within a few seconds.
async fn all_answer(replicas: &[&Gateway], key: &str, want: u16) -> bool {
    for replica in replicas {
        let answered = eventually(Duration::from_secs(5), || async {
            status(replica, key).await == want
        })
        .await;
        if !answered {
            return false;
        }
    }
    true
}

#[tokio::test]
async fn a_change_through_one_replica_is_in_force_on_all_and_a_limit_is_one_limit() {
    let (Some(postgres), Some(redis)) = (postgres_url(), redis_url()) else {
        return;
    };
    let schema = FreshSchema::new(&postgres);
    let harness = Harness::with_config(&fleet_config(&schema.url, &redis), "").await;
    let second = harness.another_gateway().await;
    let third = harness.another_gateway().await;
    loaded(&second).await;
    loaded(&third).await;
    let replicas = [&harness.gateway, &second, &third];

    let created = admin_call(
        &second,
        "POST",
        "/v1/keys",
        r#"{"name":"fleet","environment":"production","permissions":["*"],"rate_limit":{"requests":6,"per":"1m"}}"#,
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let created = created.json();
    let (id, key) = (created["id"].as_str().unwrap(), created["key"].as_str().unwrap());
    assert!(
        all_answer(&replicas, key, 200).await,
        "created through one, accepted by all"
    );

    // Three requests were admitted above; the limit of 6 is shared, so 3 more in all.
    let mut admitted = 3;
    for _ in 0..3 {
        for replica in replicas {
            admitted += usize::from(status(replica, key).await == 200);
        }
    }
    assert_eq!(admitted, 6, "6 a minute across three replicas");

    let revoked = admin_call(&third, "POST", &format!("/v1/keys/{id}/revoke"), "").await;
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    assert_eq!(
        status(&third, key).await,
        401,
        "in force where it was made, at once"
    );
    assert!(
        all_answer(&replicas, key, 401).await,
        "revoked through one, refused by all"
    );
    second.shutdown().await;
    third.shutdown().await;
}

/// A gateway on a fresh schema whose PostgreSQL connections go through a relay the test can
/// cut; `None` (the test skips) without PostgreSQL and Redis. The schema lives as long as the
/// value kept for it.
async fn behind_relay() -> Option<(Harness, Relay, FreshSchema)> {
    let (postgres, redis) = (postgres_url()?, redis_url()?);
    let schema = FreshSchema::new(&postgres);
    let relay = Relay::start(service_addr(&postgres)).await;
    let through_relay = schema
        .url
        .edit(&service_addr(&postgres).to_string(), &relay.addr.to_string());
    let harness = Harness::with_config(&fleet_config(&through_relay, &redis), "").await;
    Some((harness, relay, schema))
}

// Multi-threaded: the harness's own store calls block their thread, and the relay must go on
// forwarding meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_cut_off_every_replica_keeps_serving_and_catches_up() {
    let Some((harness, relay, schema)) = behind_relay().await else {
        return;
    };
    let second = harness.another_gateway().await;
    loaded(&second).await;
    let replicas = [&harness.gateway, &second];
    let (id, key) = harness.key(&["*"]).await;
    assert!(all_answer(&replicas, &key, 200).await);

    relay.cut();
    for replica in replicas {
        for _ in 0..5 {
            assert_eq!(status(replica, &key).await, 200, "the last table keeps serving");
        }
        let ready = admin_call(replica, "GET", "/readyz", "").await;
        assert_eq!(
            ready.status,
            200,
            "no max_staleness: still ready: {}",
            ready.text()
        );
    }
    // A revocation written straight to the database while the gateways cannot see it.
    let direct = keygate::control::store::PgStore::open(&schema.url).unwrap();
    let direct = keygate::control::keys::KeyService::new(
        std::sync::Arc::new(direct),
        keygate::core::secret::Hasher::unkeyed(),
        keygate::core::clock::system_clock(),
        keygate::control::store::Actor::Cli,
    );
    direct.revoke(&id).unwrap();
    assert_eq!(
        status(&harness.gateway, &key).await,
        200,
        "not seen while cut off"
    );

    relay.restore();
    assert!(
        all_answer(&replicas, &key, 401).await,
        "caught up once the store is back, without waiting for the hourly poll"
    );
    second.shutdown().await;
}

// Multi-threaded, as above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_while_postgres_is_down_is_not_ready_until_it_is_back() {
    let Some((harness, relay, _schema)) = behind_relay().await else {
        return;
    };
    let (_, key) = harness.key(&["*"]).await;

    relay.cut();
    let late = harness.another_gateway_loading().await;
    let ready = admin_call(&late, "GET", "/readyz", "").await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert_eq!(ready.json()["ready"], false);
    assert_eq!(
        status(&late, &key).await,
        503,
        "nothing is admitted against an empty table"
    );
    assert_eq!(
        status(&harness.gateway, &key).await,
        200,
        "the running replica keeps serving"
    );

    relay.restore();
    loaded(&late).await;
    assert!(
        all_answer(&[&late], &key, 200).await,
        "loaded once the store is back"
    );
    let ready = admin_call(&late, "GET", "/readyz", "").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    late.shutdown().await;
}

/// Replica B: the harness's config (through the same relay) with a snapshot of its own.
fn replica_with_snapshot(harness: &Harness, snapshot: &str) -> keygate::config::Config {
    let text = std::fs::read_to_string(&harness.config_path).unwrap();
    let text = text.set("store", &format!("snapshot = \"{snapshot}\""));
    keygate::config::parse(&text, harness.dir.path()).unwrap_or_else(|e| panic!("{e}"))
}

async fn start_replica(harness: &Harness, config: keygate::config::Config) -> Gateway {
    Gateway::start(config, harness.options()).await.unwrap()
}

// Issue 19 item 4, on PostgreSQL. Multi-threaded, as above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_restarted_from_its_snapshot_while_postgres_is_down_refuses_a_key_revoked_just_before() {
    let Some((a, relay, _schema)) = behind_relay().await else {
        return;
    };
    let (id, key) = a.key(&["*"]).await;
    let b = start_replica(&a, replica_with_snapshot(&a, "replica-b.snap")).await;
    loaded(&b).await;
    assert_eq!(status(&b, &key).await, 200);
    assert!(
        a.dir.path().join("replica-b.snap").exists(),
        "written whole at B's first load"
    );

    let revoked = admin_call(&a.gateway, "POST", &format!("/v1/keys/{id}/revoke"), "").await;
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    assert!(
        all_answer(&[&b], &key, 401).await,
        "pushed to B (its poll is hourly)"
    );
    // Stopped at once: long before B's next whole write of its snapshot (ten intervals, or a
    // minute at most).
    b.shutdown().await;

    relay.cut();
    let b = start_replica(&a, replica_with_snapshot(&a, "replica-b.snap")).await;
    loaded(&b).await;
    let ready = admin_call(&b, "GET", "/readyz", "").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["table_source"], "snapshot", "{}", ready.text());
    assert_eq!(
        status(&b, &key).await,
        401,
        "the revocation B enforced before its stop is in force after its start from the snapshot"
    );
    relay.restore();
    b.shutdown().await;
}

/// A store of 20 keys on a fresh schema, one of them (the 8th) with a grace-period secret too
/// (two rows of its own), and a connection of its own; the schema goes with the first.
async fn keys_and_a_connection(postgres: &str) -> (FreshSchema, Vec<String>, tokio_postgres::Client) {
    let schema = FreshSchema::new(postgres);
    let store = store::open(&StoreUrl::Postgres(schema.url.clone())).unwrap();
    let clock = Arc::new(ManualClock::new(jiff::Timestamp::now()));
    let keys = KeyService::new(store, Hasher::unkeyed(), clock, store::Actor::Cli);
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(keys.create(spec(Environment::Production, &[])).unwrap().view.id);
    }
    keys.regenerate(&ids[7], Some(Duration::from_secs(3600))).unwrap();
    let (client, connection) = tokio_postgres::connect(&schema.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    (schema, ids, client)
}

/// Runs `update` (with `$1` the key's id) in a transaction that is rolled back, with sequential
/// scans switched off (so that even these few rows go through an index when one can serve),
/// and answers the scans of `key_secrets` it made: `(sequential, by index)`, from the
/// transaction's own statistics.
async fn secrets_scans(client: &tokio_postgres::Client, update: &str, id: &str) -> (i64, i64) {
    let scans = "SELECT seq_scan, COALESCE(idx_scan, 0) FROM pg_stat_xact_user_tables \
         WHERE relid = 'key_secrets'::regclass";
    client
        .batch_execute("BEGIN; SET LOCAL enable_seqscan = off")
        .await
        .unwrap();
    let before = client.query_one(scans, &[]).await.unwrap();
    let changed = client.execute(update, &[&id]).await.unwrap();
    let after = client.query_one(scans, &[]).await.unwrap();
    client.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(changed, 1);
    let count = |column: usize| after.get::<_, i64>(column) - before.get::<_, i64>(column);
    (count(0), count(1))
}

/// A change to a key's secrets (a regeneration) runs the secrets' trigger, which must find the
/// key's own secrets through an index: reading every secret took 60 ms at a million keys idle
/// and about a second under load, and every revocation, leak report and receipt waited for it
/// (issue 24).
#[tokio::test(flavor = "multi_thread")]
async fn a_key_change_finds_the_keys_secrets_by_index_not_by_reading_them_all() {
    let Some(postgres) = postgres_url() else {
        return;
    };
    let (_schema, ids, client) = keys_and_a_connection(&postgres).await;
    // A new current secret: the trigger releases the old one and claims the new.
    let update = "UPDATE keys SET hash = hash || '\\x01'::bytea, previous_hash = previous_hash \
         WHERE id = $1";
    for id in [&ids[3], &ids[7]] {
        let (sequential, _) = secrets_scans(&client, update, id).await;
        assert_eq!(sequential, 0, "the trigger read every secret to change key {id}");
    }
}

/// A change that leaves a key's secrets as they were (a revocation, a leak report, an edit)
/// does not touch `key_secrets` at all, though the store's write sets the secrets' columns
/// too, as every key write does.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_change_that_keeps_its_secrets_leaves_the_secrets_alone() {
    let Some(postgres) = postgres_url() else {
        return;
    };
    let (_schema, ids, client) = keys_and_a_connection(&postgres).await;
    let update = "UPDATE keys SET status = 'revoked', hash = hash, previous_hash = previous_hash \
         WHERE id = $1";
    for id in [&ids[3], &ids[7]] {
        let scans = secrets_scans(&client, update, id).await;
        assert_eq!(scans, (0, 0), "revoking key {id} read its secrets");
    }
}
