//! Key quotas end to end (SPEC 11): the 429 of a spent quota and its headers, a route's cost,
//! a period boundary on the gateway's manual clock, top-ups and resets through the admin API,
//! and the quota in the draft `RateLimit` headers. Each behaviour runs on the local limiter and
//! on Redis (`rate_limit.backend = "redis"`, skipped without a Redis), which must agree.

use std::time::Duration;

use jiff::Timestamp;
use serde_json::{json, Value};

use crate::support::config::redis_limits;
use crate::support::{admin_call, redis_url, spec, Answer, ConfigEdit, Harness, STANDARD};
use keygate::core::environment::Environment;
use keygate::core::quota::{Period, QuotaSpec};

/// A route whose requests cost 5.
const REPORTS: &str = r#"
[[route]]
name = "reports"
path = "/v1/reports"
upstream = "api"
cost = 5
"#;

/// The configs each test runs on: the local limiter, and Redis when there is one.
fn configs() -> Vec<(&'static str, String)> {
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

/// A harness on `config`, its manual clock an hour into a day quota's period (whole seconds,
/// so the anchor a key gets by default is the one the test expects).
async fn harness(config: &str) -> Harness {
    let h = Harness::with_config(config, REPORTS).await;
    h.clock.set(at("2026-03-10T10:00:00Z"));
    h
}

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

/// A production key with `quota`; returns (id, secret).
async fn key_with(h: &Harness, limit: u64, period: Period, anchor: &str) -> (String, String) {
    let mut spec = spec(Environment::Production, &["*"]);
    spec.quota = Some(QuotaSpec {
        limit,
        period,
        anchor: at(anchor),
    });
    h.create_key(spec).await
}

async fn statuses(h: &Harness, path: &str, key: &str, n: usize) -> Vec<u16> {
    let mut seen = Vec::new();
    for _ in 0..n {
        seen.push(h.get(path, key).await.status.as_u16());
    }
    seen
}

async fn quota_state(h: &Harness, id: &str) -> Value {
    let shown = admin_call(&h.gateway, "GET", &format!("/v1/keys/{id}"), "").await;
    assert_eq!(shown.status, 200, "{}", shown.text());
    shown.json()["quota_state"].clone()
}

async fn change(h: &Harness, id: &str, body: &str) -> Answer {
    admin_call(&h.gateway, "POST", &format!("/v1/keys/{id}/quota"), body).await
}

#[tokio::test]
async fn a_spent_quota_is_429_with_when_it_renews() {
    for (mode, config) in configs() {
        let h = harness(&config).await;
        let (id, key) = key_with(&h, 3, Period::Day, "2026-01-01T00:00:00Z").await;
        assert_eq!(statuses(&h, "/v1/status", &key, 3).await, [200; 3], "{mode}");
        let refused = h
            .call(
                "GET",
                "/v1/status",
                Some(&key),
                &[("x-request-id", "spent-quota")],
            )
            .await;
        assert_eq!(refused.status, 429, "{mode}");
        assert_eq!(
            refused.json(),
            json!({"error": "quota exceeded", "resets_at": "2026-03-11T00:00:00Z"}),
            "{mode}"
        );
        // 14 hours to midnight.
        assert_eq!(refused.headers["retry-after"], "50400", "{mode}");
        assert_eq!(refused.headers["cache-control"], "no-store", "{mode}");
        // The classic headers answer for the rate limit, as before quotas.
        assert_eq!(refused.headers["ratelimit-limit"], "1000", "{mode}");
        assert_eq!(
            h.upstream.count(),
            3,
            "{mode}: a refused request never goes upstream"
        );
        let series = r#"keygate_quota_exceeded_total{route="status",scope="key"}"#;
        assert_eq!(h.metric(series).await, Some(1.0), "{mode}");
        let record = &h.recorded("spent-quota").await[0];
        assert_eq!(record["reason"], "quota", "{mode}: {record}");
        assert_eq!(
            quota_state(&h, &id).await,
            json!({"limit": 3, "used": 3, "remaining": 0, "resets_at": "2026-03-11T00:00:00Z"}),
            "{mode}"
        );
    }
}

#[tokio::test]
async fn a_routes_cost_is_taken_from_the_quota_and_a_refused_request_takes_nothing() {
    for (mode, config) in configs() {
        let h = harness(&config).await;
        let (id, key) = key_with(&h, 12, Period::Day, "2026-01-01T00:00:00Z").await;
        // 5 + 5, then a third would be 15 of 12.
        assert_eq!(
            statuses(&h, "/v1/reports", &key, 3).await,
            [200, 200, 429],
            "{mode}"
        );
        // Two left: two requests of cost 1, then none.
        assert_eq!(
            statuses(&h, "/v1/status", &key, 3).await,
            [200, 200, 429],
            "{mode}"
        );
        assert_eq!(quota_state(&h, &id).await["used"], 12, "{mode}");
    }
}

#[tokio::test]
async fn a_period_boundary_neither_loses_nor_double_counts() {
    for (mode, config) in configs() {
        let h = harness(&config).await;
        let (id, key) = key_with(&h, 5, Period::Hour, "2026-01-01T00:30:00Z").await;
        h.clock.set(at("2026-03-10T10:29:59Z"));
        // Twenty at once on a quota of five: exactly five pass.
        let burst = || async {
            let calls = (0..20).map(|_| h.get("/v1/status", &key));
            let answers = futures_util::future::join_all(calls).await;
            answers.iter().filter(|a| a.status == 200).count()
        };
        assert_eq!(burst().await, 5, "{mode}: the first period");
        h.clock.set(at("2026-03-10T10:30:00Z"));
        assert_eq!(
            burst().await,
            5,
            "{mode}: the next period, from its first instant"
        );
        assert_eq!(
            quota_state(&h, &id).await,
            json!({"limit": 5, "used": 5, "remaining": 0, "resets_at": "2026-03-10T11:30:00Z"}),
            "{mode}"
        );
        assert_eq!(h.upstream.count(), 10, "{mode}");
    }
}

#[tokio::test]
async fn an_operator_tops_up_and_resets_a_quota_and_the_trail_says_so() {
    for (mode, config) in configs() {
        let h = harness(&config).await;
        let (id, key) = key_with(&h, 2, Period::Month, "2026-01-31T00:00:00Z").await;
        assert_eq!(
            statuses(&h, "/v1/status", &key, 3).await,
            [200, 200, 429],
            "{mode}"
        );
        let topped = change(&h, &id, r#"{"add": 2}"#).await;
        assert_eq!(
            topped.json(),
            json!({"limit": 4, "used": 2, "remaining": 2, "resets_at": "2026-03-31T00:00:00Z"}),
            "{mode}"
        );
        assert_eq!(
            statuses(&h, "/v1/status", &key, 3).await,
            [200, 200, 429],
            "{mode}"
        );
        let reset = change(&h, &id, r#"{"reset": true}"#).await;
        assert_eq!(
            (reset.json()["used"].clone(), reset.json()["limit"].clone()),
            (json!(0), json!(2))
        );
        assert_eq!(
            statuses(&h, "/v1/status", &key, 3).await,
            [200, 200, 429],
            "{mode}"
        );
        let events = admin_call(&h.gateway, "GET", &format!("/v1/keys/{id}/events"), "").await;
        let trail: Vec<Value> = events.json().as_array().unwrap().clone();
        let names: Vec<&str> = trail.iter().map(|e| e["event"].as_str().unwrap()).collect();
        assert_eq!(names, ["created", "quota_topped_up", "quota_reset"], "{mode}");
        assert_eq!(trail[1]["changes"], json!({"add": 2}), "{mode}");
        assert_eq!(trail[1]["actor"], "admin_api", "{mode}");
    }
}

#[tokio::test]
async fn a_quota_change_that_is_not_one_is_refused() {
    let h = harness(STANDARD).await;
    let (id, _) = key_with(&h, 2, Period::Day, "2026-01-01T00:00:00Z").await;
    for (body, field) in [
        ("{}", "body"),
        (r#"{"add": 0}"#, "add"),
        (r#"{"add": -1}"#, "add"),
        (r#"{"reset": false}"#, "reset"),
        (r#"{"add": 1, "reset": true}"#, "body"),
        (r#"{"take": 1}"#, "take"),
    ] {
        let refused = change(&h, &id, body).await;
        assert_eq!(refused.status, 400, "{body}: {}", refused.text());
        assert_eq!(refused.json()["field"], field, "{body}");
    }
    assert_eq!(change(&h, "key_nope", r#"{"add": 1}"#).await.status, 404);
    let (plain, _) = h.key(&["*"]).await;
    assert_eq!(change(&h, &plain, r#"{"add": 1}"#).await.status, 409);
    assert!(quota_state(&h, &plain).await.is_null(), "no quota, no state");
}

#[tokio::test]
async fn the_admin_api_sets_checks_and_removes_a_quota() {
    let h = harness(STANDARD).await;
    let create = |quota: &str| format!(r#"{{"name": "q", "environment": "production", "quota": {quota}}}"#);
    let created = admin_call(
        &h.gateway,
        "POST",
        "/v1/keys",
        &create(r#"{"limit": 100, "period": "week"}"#),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let key = created.json();
    // The anchor defaults to the key's creation.
    assert_eq!(key["quota"]["anchor"], key["created_at"]);
    assert_eq!(key["quota"]["anchor"], "2026-03-10T10:00:00Z");
    for bad in [
        r#"{"limit": 0, "period": "day"}"#,
        r#"{"limit": 10, "period": "fortnight"}"#,
        r#"{"limit": 10, "period": "day", "anchor": "tomorrow"}"#,
        r#"{"limit": 10}"#,
        r#""100/month""#,
    ] {
        let refused = admin_call(&h.gateway, "POST", "/v1/keys", &create(bad)).await;
        assert_eq!(refused.status, 400, "{bad}: {}", refused.text());
        assert_eq!(refused.json()["field"], "quota", "{bad}");
    }
    let id = key["id"].as_str().unwrap();
    let path = format!("/v1/keys/{id}");
    // A new limit without an anchor keeps the quota's anchor.
    h.clock.advance(Duration::from_secs(3600));
    let patched = admin_call(
        &h.gateway,
        "PATCH",
        &path,
        r#"{"quota": {"limit": 7, "period": "week"}}"#,
    )
    .await;
    assert_eq!(
        patched.json()["quota"]["anchor"],
        "2026-03-10T10:00:00Z",
        "{}",
        patched.text()
    );
    assert_eq!(patched.json()["quota"]["limit"], 7);
    let removed = admin_call(&h.gateway, "PATCH", &path, r#"{"quota": null}"#).await;
    assert!(removed.json()["quota"].is_null(), "{}", removed.text());
}

#[tokio::test]
async fn credits_that_never_renew_say_so_without_a_retry() {
    for (mode, config) in configs() {
        let h = harness(&config).await;
        let (_, key) = key_with(&h, 1, Period::None, "2026-01-01T00:00:00Z").await;
        assert_eq!(h.get("/v1/status", &key).await.status, 200, "{mode}");
        let refused = h.get("/v1/status", &key).await;
        assert_eq!(refused.status, 429, "{mode}");
        assert_eq!(
            refused.json(),
            json!({"error": "quota exceeded", "resets_at": null})
        );
        assert!(refused.headers.get("retry-after").is_none(), "{mode}");
    }
}

#[tokio::test]
async fn the_draft_headers_name_the_quota_beside_the_rate_limit() {
    for (mode, config) in configs() {
        let h = harness(&config.set("rate_limit", "draft_headers = true")).await;
        let (_, key) = key_with(&h, 100, Period::Day, "2026-01-01T00:00:00Z").await;
        let answer = h.get("/v1/reports", &key).await;
        assert_eq!(answer.status, 200, "{mode}");
        assert_eq!(
            answer.headers["ratelimit-policy"], r#""key";q=1000;w=1, "quota";q=100;w=86400"#,
            "{mode}"
        );
        let current = answer.headers["ratelimit"].to_str().unwrap();
        assert!(
            current.ends_with(r#", "quota";r=95;t=50400"#),
            "{mode}: {current}"
        );
        // A key without a quota names its rate limit alone, as before.
        let (_, plain) = h.key(&["*"]).await;
        let answer = h.get("/v1/status", &plain).await;
        assert_eq!(
            answer.headers["ratelimit-policy"], r#""key";q=1000;w=1"#,
            "{mode}"
        );
    }
}

#[tokio::test]
async fn a_rate_limit_that_refuses_spends_no_quota() {
    for (mode, config) in configs() {
        let h = harness(&config).await;
        let mut spec = spec(Environment::Production, &["*"]);
        spec.rate_limit = Some(keygate::core::key::RateLimitSpec {
            requests: std::num::NonZeroU32::new(2).unwrap(),
            per: Duration::from_secs(3600),
            burst: None,
        });
        spec.quota = Some(QuotaSpec {
            limit: 100,
            period: Period::Day,
            anchor: at("2026-01-01T00:00:00Z"),
        });
        let (id, key) = h.create_key(spec).await;
        assert_eq!(
            statuses(&h, "/v1/status", &key, 4).await,
            [200, 200, 429, 429],
            "{mode}"
        );
        let refused = h.get("/v1/status", &key).await;
        assert_eq!(refused.json()["error"], "rate limit exceeded", "{mode}");
        assert_eq!(quota_state(&h, &id).await["used"], 2, "{mode}");
    }
}

/// `keygate keys <args> --json` on the harness's store: the exit code and stdout.
fn cli(h: &Harness, args: &[&str]) -> (i32, String) {
    let config = h.config_path.to_str().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["keys", "--config", config, "--json"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output.status.code().unwrap(), stdout)
}

#[tokio::test]
async fn the_cli_sets_and_removes_a_quota_and_refuses_a_bad_one() {
    let h = harness(STANDARD).await;
    let (code, out) = cli(
        &h,
        &[
            "create", "--name", "plan", "--env", "prod", "--perm", "*", "--quota", "2/day",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let created: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(created["quota"]["limit"], 2);
    assert_eq!(created["quota"]["period"], "day");
    let (id, secret) = (created["id"].as_str().unwrap(), created["key"].as_str().unwrap());
    h.sync().await;
    assert_eq!(statuses(&h, "/v1/status", secret, 3).await, [200, 200, 429]);
    let anchored = [
        "update",
        id,
        "--quota",
        "100000/month",
        "--quota-anchor",
        "2026-01-31T00:00:00Z",
    ];
    let (code, out) = cli(&h, &anchored);
    assert_eq!(code, 0, "{out}");
    let expected = json!({"limit": 100000, "period": "month", "anchor": "2026-01-31T00:00:00Z"});
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["quota"], expected);
    let (code, out) = cli(&h, &["update", id, "--no-quota"]);
    assert_eq!(code, 0, "{out}");
    assert!(serde_json::from_str::<Value>(&out).unwrap()["quota"].is_null());
    for bad in [
        &["create", "--name", "x", "--env", "prod", "--quota", "0/day"][..],
        &["create", "--name", "x", "--env", "prod", "--quota", "5/fortnight"],
        &["create", "--name", "x", "--env", "prod", "--quota", "lots"],
        &[
            "create",
            "--name",
            "x",
            "--env",
            "prod",
            "--quota-anchor",
            "2026-01-01T00:00:00Z",
        ],
        &["update", id, "--quota", "5/day", "--no-quota"],
    ] {
        assert_eq!(cli(&h, bad).0, 2, "{bad:?}");
    }
}

#[tokio::test]
async fn verify_spends_the_quota_like_a_request_and_says_when_it_is_spent() {
    let h = harness(STANDARD).await;
    let (_, key) = key_with(&h, 1, Period::Day, "2026-01-01T00:00:00Z").await;
    let body = format!(r#"{{"key": "{key}"}}"#);
    let verify = || admin_call(&h.gateway, "POST", "/v1/keys/verify", &body);
    assert_eq!(verify().await.json()["code"], "VALID");
    assert_eq!(verify().await.json()["code"], "QUOTA_EXCEEDED");
    assert_eq!(h.get("/v1/status", &key).await.status, 429);
}

#[tokio::test]
async fn an_import_file_carries_quotas_and_refuses_a_bad_one() {
    let h = harness(STANDARD).await;
    let file = h.dir.path().join("keys.jsonl");
    let line = |secret: &str, quota: &str| {
        format!(r#"{{"key":"{secret}","name":"n","environment":"production","quota":{quota}}}"#)
    };
    let lines = [
        line("imported-secret-0123456789", r#"{"limit":5,"period":"day"}"#),
        line("imported-secret-9876543210", r#"{"limit":0,"period":"day"}"#),
    ];
    std::fs::write(&file, lines.join("\n")).unwrap();
    let (code, out) = cli(&h, &["import-file", file.to_str().unwrap()]);
    assert_eq!(code, 1, "all or none: {out}");
    std::fs::write(&file, &lines[0]).unwrap();
    let (code, out) = cli(&h, &["import-file", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    // A gateway that loads the store holds the imported key to its quota.
    let gateway = h.another_gateway().await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        let answer = crate::support::clients::get(&gateway, "/v1/status", "imported-secret-0123456789").await;
        seen.push(answer.status.as_u16());
    }
    assert_eq!(seen, [200, 200, 200, 200, 200, 429]);
    gateway.shutdown().await;
}
