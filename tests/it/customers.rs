//! Customers end to end (SPEC 11): the admin API and the CLI, the audit trail, and a customer's
//! limits held over all of its keys: two keys of one customer share its quota and its rate
//! limit, a refusal by the customer's limit spends nothing from the key's, a key whose customer
//! has no object keeps working, and a customer named by a key cannot be deleted. The
//! enforcement cases run on the local limiter and on Redis (skipped without one); the API
//! cases on SQLite and on PostgreSQL (skipped without one).

use std::num::NonZeroU32;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{json, Value};

use crate::support::config::redis_limits;
use crate::support::postgres::{postgres_url, FreshSchema};
use crate::support::{admin_call, redis_url, spec, Answer, ConfigEdit, Harness, STANDARD};
use keygate::core::environment::Environment;
use keygate::core::key::RateLimitSpec;
use keygate::core::quota::{Period, QuotaSpec};

/// The configs the enforcement cases run on: the local limiter, and Redis when there is one.
fn limiters() -> Vec<(&'static str, String)> {
    let mut configs = vec![("local", STANDARD.to_owned())];
    if let Some(url) = redis_url() {
        let prefix = format!("keygate-test:{:032x}:", rand::random::<u128>());
        configs.push((
            "redis",
            STANDARD.set("rate_limit", &redis_limits(&url, &prefix, "500ms")),
        ));
    }
    configs
}

/// The stores the API cases run on: SQLite, and PostgreSQL when there is one (its schema kept
/// for as long as the test runs).
fn stores() -> Vec<(&'static str, String, Option<FreshSchema>)> {
    let mut configs = vec![("sqlite", STANDARD.to_owned(), None)];
    if let Some(url) = postgres_url() {
        let schema = FreshSchema::new(&url);
        let config = STANDARD.edit(
            r#"url = "sqlite://keygate.db""#,
            &format!("url = \"{}\"", schema.url),
        );
        configs.push(("postgres", config, Some(schema)));
    }
    configs
}

async fn harness(config: &str) -> Harness {
    let h = Harness::with_config(config, "").await;
    h.clock.set(at("2026-03-10T10:00:00Z"));
    h
}

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

async fn call(h: &Harness, method: &str, path: &str, body: &str) -> Answer {
    admin_call(&h.gateway, method, path, body).await
}

/// Creates the customer `body` describes through the admin API; its answer.
async fn customer(h: &Harness, body: Value) -> Value {
    let created = call(h, "POST", "/v1/customers", &body.to_string()).await;
    assert_eq!(created.status, 201, "{}", created.text());
    created.json()
}

/// A production key of `customer` with `quota` of its own; (id, secret).
async fn key_of(h: &Harness, customer: &str, quota: Option<u64>) -> (String, String) {
    let mut spec = spec(Environment::Production, &["*"]);
    spec.customer_id = Some(customer.into());
    spec.quota = quota.map(|limit| QuotaSpec {
        limit,
        period: Period::Day,
        anchor: at("2026-01-01T00:00:00Z"),
    });
    h.create_key(spec).await
}

async fn statuses(h: &Harness, key: &str, n: usize) -> Vec<u16> {
    let mut seen = Vec::new();
    for _ in 0..n {
        seen.push(h.get("/v1/status", key).await.status.as_u16());
    }
    seen
}

async fn quota_state(h: &Harness, path: &str) -> Value {
    let shown = call(h, "GET", path, "").await;
    assert_eq!(shown.status, 200, "{}", shown.text());
    shown.json()["quota_state"].clone()
}

#[tokio::test]
async fn customers_are_created_read_listed_changed_and_deleted_through_the_api() {
    for (store, config, _schema) in stores() {
        let h = harness(&config).await;
        let created = customer(
            &h,
            json!({"id": "acme", "name": "Acme", "rate_limit": {"requests": 10, "per": "1s"},
                   "quota": {"limit": 1000, "period": "month"}, "metadata": {"plan": "gold"}}),
        )
        .await;
        assert_eq!(created["id"], "acme", "{store}");
        assert_eq!(
            created["rate_limit"],
            json!({"requests": 10, "per": "1s", "burst": 10})
        );
        assert_eq!(created["quota"]["anchor"], "2026-03-10T10:00:00Z", "{store}");
        let plain = customer(&h, json!({"id": "globex corp"})).await;
        assert_eq!(
            (plain["name"].clone(), plain["quota"].clone()),
            (json!("globex corp"), Value::Null)
        );

        let shown = call(&h, "GET", "/v1/customers/acme", "").await.json();
        assert_eq!(
            shown["quota_state"],
            json!({"limit": 1000, "used": 0, "remaining": 1000, "resets_at": "2026-04-10T10:00:00Z"}),
            "{store}"
        );
        let listed = call(&h, "GET", "/v1/customers?limit=1", "").await;
        assert_eq!(listed.json().as_array().unwrap().len(), 1, "{store}");
        let next = listed.headers["x-next-cursor"].to_str().unwrap().to_owned();
        let rest = call(&h, "GET", &format!("/v1/customers?cursor={next}"), "")
            .await
            .json();
        assert_eq!(
            rest[0]["id"], "globex corp",
            "{store}: the id is percent-decoded in paths"
        );
        assert_eq!(
            call(&h, "GET", "/v1/customers/globex%20corp", "").await.status,
            200
        );

        let patched = call(
            &h,
            "PATCH",
            "/v1/customers/acme",
            r#"{"rate_limit": null, "quota": {"limit": 5, "period": "month"}, "metadata": null}"#,
        )
        .await;
        assert_eq!(patched.status, 200, "{store}: {}", patched.text());
        let patched = patched.json();
        assert!(patched["rate_limit"].is_null(), "{store}");
        assert_eq!(
            patched["quota"]["anchor"], "2026-03-10T10:00:00Z",
            "{store}: anchor kept"
        );
        assert_eq!(patched["metadata"], json!({}), "{store}");

        assert_eq!(
            call(&h, "DELETE", "/v1/customers/acme", "").await.status,
            204,
            "{store}"
        );
        assert_eq!(
            call(&h, "GET", "/v1/customers/acme", "").await.status,
            404,
            "{store}"
        );
        let events = call(&h, "GET", "/v1/customers/acme/events", "").await.json();
        let names: Vec<&str> = events
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["created", "updated", "deleted"], "{store}");
        assert_eq!(events[1]["actor"], "admin_api", "{store}");
        assert_eq!(events[1]["token"], "write", "{store}");
        assert_eq!(events[1]["changes"]["rate_limit"], Value::Null, "{store}");
        // A deleted customer's id may be taken again.
        customer(&h, json!({"id": "acme"})).await;
    }
}

#[tokio::test]
async fn the_list_gives_each_customers_key_count_and_quota_state() {
    for (store, config, _schema) in stores() {
        let h = harness(&config).await;
        let day = json!({"limit": 10, "period": "day", "anchor": "2026-01-01T00:00:00Z"});
        customer(&h, json!({"id": "acme", "quota": day})).await;
        customer(&h, json!({"id": "globex"})).await;
        let (_, key) = key_of(&h, "acme", None).await;
        key_of(&h, "acme", None).await;
        let (gone, _) = key_of(&h, "acme", None).await;
        let deleted = call(&h, "DELETE", &format!("/v1/keys/{gone}"), "").await;
        assert!(deleted.status.is_success(), "{store}: {}", deleted.text());
        assert_eq!(h.get("/v1/status", &key).await.status, 200, "{store}");
        let listed = call(&h, "GET", "/v1/customers", "").await.json();
        assert_eq!(listed[0]["id"], "acme", "{store}: {listed}");
        assert_eq!(listed[0]["key_count"], 2, "{store}: a deleted key is not counted");
        let state = &listed[0]["quota_state"];
        assert_eq!(
            (&state["used"], &state["remaining"]),
            (&json!(1), &json!(9)),
            "{store}: {state}"
        );
        assert_eq!(
            listed[0]["quota_state"],
            quota_state(&h, "/v1/customers/acme").await,
            "{store}"
        );
        assert_eq!(listed[1]["key_count"], 0, "{store}");
        assert!(
            listed[1].get("quota_state").is_none(),
            "{store}: no quota, no state"
        );
    }
}

#[tokio::test]
async fn bad_customers_are_refused_by_field_and_unknown_ones_are_404() {
    let h = harness(STANDARD).await;
    customer(&h, json!({"id": "acme"})).await;
    for (body, status, field) in [
        (r#"{"id": ""}"#, 400, Some("id")),
        (r#"{"id": "a/b"}"#, 400, Some("id")),
        (r#"{"name": "x"}"#, 400, Some("id")),
        (r#"{"id": "x", "name": ""}"#, 400, Some("name")),
        (
            r#"{"id": "x", "quota": {"limit": 0, "period": "day"}}"#,
            400,
            Some("quota"),
        ),
        (r#"{"id": "x", "rate_limit": "lots"}"#, 400, Some("rate_limit")),
        (r#"{"id": "x", "plan": "gold"}"#, 400, Some("plan")),
        (r#"{"id": "acme"}"#, 409, None),
    ] {
        let refused = call(&h, "POST", "/v1/customers", body).await;
        assert_eq!(refused.status, status, "{body}: {}", refused.text());
        assert_eq!(refused.json()["field"].as_str(), field, "{body}");
    }
    for (method, path, body) in [
        ("GET", "/v1/customers/nope", ""),
        ("PATCH", "/v1/customers/nope", "{}"),
        ("DELETE", "/v1/customers/nope", ""),
        ("POST", "/v1/customers/nope/quota", r#"{"add": 1}"#),
        ("GET", "/v1/customers/nope/events", ""),
    ] {
        let answer = call(&h, method, path, body).await;
        assert_eq!(answer.status, 404, "{method} {path}: {}", answer.text());
        assert_eq!(answer.json(), json!({"error": "customer not found"}));
    }
    let wrong = call(&h, "PUT", "/v1/customers/acme", "{}").await;
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.headers["allow"], "GET, HEAD, PATCH, DELETE");
    assert_eq!(
        call(&h, "POST", "/v1/customers/acme/quota", r#"{"add": 1}"#)
            .await
            .status,
        409
    );
}

#[tokio::test]
async fn a_customer_named_by_a_key_cannot_be_deleted() {
    for (store, config, _schema) in stores() {
        let h = harness(&config).await;
        customer(&h, json!({"id": "acme"})).await;
        let (id, _) = key_of(&h, "acme", None).await;
        let refused = call(&h, "DELETE", "/v1/customers/acme", "").await;
        assert_eq!(refused.status, 409, "{store}: {}", refused.text());
        assert!(
            refused.json()["error"].as_str().unwrap().contains("1 key"),
            "{store}"
        );
        h.keys.delete(&id).unwrap();
        assert_eq!(
            call(&h, "DELETE", "/v1/customers/acme", "").await.status,
            204,
            "{store}"
        );
    }
}

#[tokio::test]
async fn two_keys_of_a_customer_share_its_quota_and_a_refusal_spends_nothing_of_theirs() {
    for (mode, config) in limiters() {
        let h = harness(&config).await;
        customer(
            &h,
            json!({"id": "acme", "quota": {"limit": 4, "period": "day",
                                                   "anchor": "2026-01-01T00:00:00Z"}}),
        )
        .await;
        let (first_id, first) = key_of(&h, "acme", Some(100)).await;
        let (_, second) = key_of(&h, "acme", None).await;
        assert_eq!(statuses(&h, &first, 3).await, [200; 3], "{mode}");
        let answer = h
            .call(
                "GET",
                "/v1/status",
                Some(&second),
                &[("x-request-id", "customer-spent")],
            )
            .await;
        assert_eq!(answer.status, 200, "{mode}");
        let refused = h
            .call(
                "GET",
                "/v1/status",
                Some(&second),
                &[("x-request-id", "customer-refused")],
            )
            .await;
        assert_eq!(refused.status, 429, "{mode}");
        assert_eq!(
            refused.json(),
            json!({"error": "quota exceeded", "resets_at": "2026-03-11T00:00:00Z"}),
            "{mode}"
        );
        assert_eq!(refused.headers["retry-after"], "50400", "{mode}");
        assert_eq!(
            h.get("/v1/status", &first).await.status,
            429,
            "{mode}: the other key too"
        );
        let record = &h.recorded("customer-refused").await[0];
        assert_eq!(record["reason"], "customer_quota", "{mode}: {record}");
        let series = r#"keygate_quota_exceeded_total{route="status",scope="customer"}"#;
        assert_eq!(h.metric(series).await, Some(2.0), "{mode}");
        // The key's own quota was charged for its three admitted requests only.
        let key_state = quota_state(&h, &format!("/v1/keys/{first_id}")).await;
        assert_eq!(key_state["used"], 3, "{mode}");
        assert_eq!(
            quota_state(&h, "/v1/customers/acme").await,
            json!({"limit": 4, "used": 4, "remaining": 0, "resets_at": "2026-03-11T00:00:00Z"}),
            "{mode}"
        );
        // A top-up of the customer's quota lets its keys through again, audited.
        let topped = call(&h, "POST", "/v1/customers/acme/quota", r#"{"add": 1}"#).await;
        assert_eq!(topped.json()["remaining"], 1, "{mode}: {}", topped.text());
        assert_eq!(statuses(&h, &second, 2).await, [200, 429], "{mode}");
        let events = call(&h, "GET", "/v1/customers/acme/events", "").await.json();
        assert_eq!(events[1]["event"], "quota_topped_up", "{mode}");
        assert_eq!(events[1]["changes"], json!({"add": 1}), "{mode}");
        assert_eq!(h.upstream.count(), 5, "{mode}");
    }
}

#[tokio::test]
async fn two_keys_of_a_customer_share_its_rate_limit() {
    for (mode, config) in limiters() {
        let h = harness(&config).await;
        customer(
            &h,
            json!({"id": "acme", "rate_limit": {"requests": 3, "per": "1h"}}),
        )
        .await;
        let (_, first) = key_of(&h, "acme", None).await;
        let (_, second) = key_of(&h, "acme", Some(100)).await;
        assert_eq!(statuses(&h, &first, 2).await, [200, 200], "{mode}");
        assert_eq!(h.get("/v1/status", &second).await.status, 200, "{mode}");
        let refused = h
            .call(
                "GET",
                "/v1/status",
                Some(&second),
                &[("x-request-id", "customer-rate")],
            )
            .await;
        assert_eq!(refused.status, 429, "{mode}");
        assert_eq!(refused.json(), json!({"error": "rate limit exceeded"}), "{mode}");
        // The headers show the bucket that refused: the customer's, empty.
        assert_eq!(refused.headers["ratelimit-limit"], "3", "{mode}");
        assert_eq!(refused.headers["ratelimit-remaining"], "0", "{mode}");
        assert!(refused.headers.contains_key("retry-after"), "{mode}");
        let record = &h.recorded("customer-rate").await[0];
        assert_eq!(record["reason"], "customer_rate_limited", "{mode}: {record}");
        assert_eq!(h.get("/v1/status", &first).await.status, 429, "{mode}");
    }
}

#[tokio::test]
async fn the_draft_headers_name_the_customers_limits_and_the_classic_ones_the_tightest() {
    for (mode, config) in limiters() {
        let h = harness(&config.set("rate_limit", "draft_headers = true")).await;
        let day = json!({"limit": 1000, "period": "day", "anchor": "2026-01-01T00:00:00Z"});
        let limits = json!({"id": "acme", "rate_limit": {"requests": 3, "per": "1h"}, "quota": day});
        customer(&h, limits).await;
        let (_, key) = key_of(&h, "acme", Some(100)).await;
        let answer = h.get("/v1/status", &key).await;
        assert_eq!(answer.status, 200, "{mode}");
        assert_eq!(
            answer.headers["ratelimit-policy"],
            r#""key";q=1000;w=1, "customer";q=3;w=3600, "quota";q=100;w=86400, "customer_quota";q=1000;w=86400"#,
            "{mode}"
        );
        assert_eq!(
            answer.headers["ratelimit"],
            r#""key";r=999;t=1, "customer";r=2;t=1200, "quota";r=99;t=50400, "customer_quota";r=999;t=50400"#,
            "{mode}"
        );
        // The classic triple: the rate limit with the least room, the customer's.
        assert_eq!(answer.headers["ratelimit-limit"], "3", "{mode}");
        assert_eq!(answer.headers["ratelimit-remaining"], "2", "{mode}");
        assert_eq!(answer.headers["ratelimit-reset"], "1200", "{mode}");
    }
}

#[tokio::test]
async fn a_refusal_by_the_customers_rate_limit_spends_none_of_the_keys_quota() {
    for (mode, config) in limiters() {
        let h = harness(&config).await;
        customer(
            &h,
            json!({"id": "acme", "rate_limit": {"requests": 2, "per": "1h"}}),
        )
        .await;
        let (id, key) = key_of(&h, "acme", Some(100)).await;
        assert_eq!(statuses(&h, &key, 4).await, [200, 200, 429, 429], "{mode}");
        assert_eq!(
            quota_state(&h, &format!("/v1/keys/{id}")).await["used"],
            2,
            "{mode}"
        );
    }
}

#[tokio::test]
async fn a_key_whose_customer_has_no_object_or_no_limits_keeps_working() {
    for (mode, config) in limiters() {
        let h = harness(&config).await;
        let (_, orphan) = key_of(&h, "initech", None).await;
        assert_eq!(statuses(&h, &orphan, 3).await, [200; 3], "{mode}");
        customer(
            &h,
            json!({"id": "initech", "quota": {"limit": 1, "period": "day"}}),
        )
        .await;
        assert_eq!(
            statuses(&h, &orphan, 2).await,
            [200, 429],
            "{mode}: limited once it exists"
        );
        // Its limits removed, the customer limits nothing again.
        let patched = call(&h, "PATCH", "/v1/customers/initech", r#"{"quota": null}"#).await;
        assert_eq!(patched.status, 200, "{mode}");
        assert_eq!(statuses(&h, &orphan, 2).await, [200, 200], "{mode}");
    }
}

#[tokio::test]
async fn another_replica_takes_a_customers_limits_at_its_sync() {
    let Some(url) = postgres_url() else { return };
    let schema = FreshSchema::new(&url);
    let config = STANDARD.edit(
        r#"url = "sqlite://keygate.db""#,
        &format!("url = \"{}\"", schema.url),
    );
    let h = harness(&config).await;
    let (_, key) = key_of(&h, "acme", None).await;
    let replica = h.another_gateway().await;
    crate::support::loaded(&replica).await;
    customer(&h, json!({"id": "acme", "quota": {"limit": 1, "period": "day"}})).await;
    // Announced by NOTIFY, read with the keys' changes: the replica limits the key too.
    let limited = crate::support::eventually(Duration::from_secs(5), || async {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let answer = crate::support::clients::get(&replica, "/v1/status", &key).await;
            seen.push(answer.status.as_u16());
        }
        seen.contains(&429)
    })
    .await;
    assert!(limited, "the replica never held the key to its customer's quota");
    replica.shutdown().await;
}

/// `keygate customers <args> --json` on the harness's store: the exit code and stdout.
fn cli(h: &Harness, args: &[&str]) -> (i32, String) {
    let config = h.config_path.to_str().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["customers", "--config", config, "--json"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output.status.code().unwrap(), stdout)
}

#[tokio::test]
async fn the_cli_manages_customers_and_a_gateway_enforces_them() {
    let h = harness(STANDARD).await;
    let (code, out) = cli(
        &h,
        &[
            "create",
            "acme",
            "--name",
            "Acme",
            "--quota",
            "2/day",
            "--metadata",
            r#"{"plan":"gold"}"#,
        ],
    );
    assert_eq!(code, 0, "{out}");
    let created: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (created["name"].clone(), created["quota"]["limit"].clone()),
        (json!("Acme"), json!(2))
    );
    // The key through the CLI too, and what the gateway does with a customer's change is the
    // API cases' to show: in this harness, a CLI's writes after the gateway process has written
    // (its usage flush) do not reach the gateway (a defect of SQLite stores opened twice in one
    // process, reported apart).
    let config = h.config_path.to_str().unwrap();
    let created = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args([
            "keys", "--config", config, "--json", "create", "--name", "k", "--env", "prod",
        ])
        .args(["--customer", "acme"])
        .output()
        .unwrap();
    let created: Value = serde_json::from_slice(&created.stdout).unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    h.sync().await;
    assert_eq!(statuses(&h, &key, 3).await, [200, 200, 429]);

    let (code, out) = cli(&h, &["update", "acme", "--rate", "10/s", "--no-quota"]);
    assert_eq!(code, 0, "{out}");
    let updated: Value = serde_json::from_str(&out).unwrap();
    assert!(updated["quota"].is_null(), "{out}");
    assert_eq!(updated["rate_limit"]["requests"], 10);

    let (code, out) = cli(&h, &["list"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()[0]["id"], "acme");
    let (code, out) = cli(&h, &["show", "acme"]);
    assert_eq!(
        (code, serde_json::from_str::<Value>(&out).unwrap()["name"].clone()),
        (0, json!("Acme"))
    );
    let (code, out) = cli(&h, &["delete", "acme"]);
    assert_eq!(code, 1, "a key names it: {out}");
    assert!(serde_json::from_str::<Value>(&out).unwrap()["error"].is_string());
    let (code, out) = cli(&h, &["events", "acme"]);
    assert_eq!(code, 0, "{out}");
    let events: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(events[0]["actor"], "cli");
    assert_eq!(events.as_array().unwrap().len(), 2);

    for bad in [
        &["create", "a/b"][..],
        &["create", "x", "--quota", "0/day"],
        &["create", "x", "--burst", "3"],
        &["update", "acme", "--quota", "5/day", "--no-quota"],
    ] {
        assert_eq!(cli(&h, bad).0, 2, "{bad:?}");
    }
    let (code, out) = cli(&h, &["show", "nope"]);
    assert_eq!(code, 1);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["error"],
        "no customer with id nope"
    );
}

#[tokio::test]
async fn patch_of_a_key_answers_with_its_quota_state() {
    let h = harness(STANDARD).await;
    let mut spec = spec(Environment::Production, &["*"]);
    spec.rate_limit = Some(RateLimitSpec {
        requests: NonZeroU32::new(100).unwrap(),
        per: Duration::from_secs(1),
        burst: None,
    });
    let (id, key) = h.create_key(spec).await;
    let patched = call(
        &h,
        "PATCH",
        &format!("/v1/keys/{id}"),
        r#"{"quota": {"limit": 3, "period": "day", "anchor": "2026-01-01T00:00:00Z"}}"#,
    )
    .await;
    assert_eq!(patched.status, 200, "{}", patched.text());
    assert_eq!(
        patched.json()["quota_state"],
        json!({"limit": 3, "used": 0, "remaining": 3, "resets_at": "2026-03-11T00:00:00Z"})
    );
    assert_eq!(h.get("/v1/status", &key).await.status, 200);
    let patched = call(&h, "PATCH", &format!("/v1/keys/{id}"), r#"{"name": "renamed"}"#).await;
    assert_eq!(patched.json()["quota_state"]["used"], 1);
}
