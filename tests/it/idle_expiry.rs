//! Idle expiry: a key left unused past `lifecycle.idle_expiry` is revoked after its warnings
//! reached the webhook, each exactly once, across restarts and replicas. The clock is the
//! harness's manual one: each step sets it, sweeps and delivers.

use crate::support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jiff::Timestamp;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::support::{sample, Harness, STANDARD};
use keygate::core::key::KeyStatus;
use keygate::gateway::Gateway;

const DAY: Duration = Duration::from_secs(86_400);
const HOUR: Duration = Duration::from_secs(3600);

/// What the webhook receiver got: the body, its headers, and whether it accepted it.
#[derive(Debug, Clone)]
struct Hit {
    accepted: bool,
    body: Value,
    content_type: String,
    user_agent: String,
}

/// A webhook receiver on a spare port that answers 500 to its first `failures` requests and
/// 200 to the rest.
struct Receiver {
    addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Receiver {
    async fn start(failures: usize) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let log = hits.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                let service = service_fn(move |request: Request<Incoming>| {
                    let log = log.clone();
                    async move { Ok::<_, Infallible>(record(&log, request, failures).await) }
                });
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { addr, hits }
    }

    fn url(&self) -> String {
        format!("http://{}/hooks/keygate", self.addr)
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// The bodies answered 200, in order.
    fn accepted(&self) -> Vec<Value> {
        self.hits()
            .into_iter()
            .filter(|h| h.accepted)
            .map(|h| h.body)
            .collect()
    }
}

async fn record(log: &Mutex<Vec<Hit>>, request: Request<Incoming>, failures: usize) -> Response<Full<Bytes>> {
    let header = |name| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (content_type, user_agent) = (header("content-type"), header("user-agent"));
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let mut hits = log.lock().unwrap();
    let accepted = hits.len() >= failures;
    hits.push(Hit {
        accepted,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        content_type,
        user_agent,
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    if !accepted {
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    }
    response
}

/// The `[lifecycle]` table for `receiver`, plus `extra` lines.
fn lifecycle(receiver: &Receiver, extra: &str) -> String {
    format!(
        "[lifecycle]\nidle_expiry = \"90d\"\nwarn_before = [\"15d\", \"7d\", \"1d\"]\nwebhook = \"{}\"\n{extra}",
        receiver.url()
    )
}

/// Each accepted body as `event threshold-or-expiry revokes_at`, for comparing whole stories.
fn story(bodies: &[Value]) -> Vec<String> {
    bodies
        .iter()
        .map(|b| match b["event"].as_str() {
            Some("key.idle_warning") => format!("warning {} {}", b["warn_before"], b["revokes_at"]),
            Some("key.idle_revoked") => format!("revoked {}", b["idle_expiry"]),
            _ => format!("unexpected {b}"),
        })
        .collect()
}

fn warning(before: &str, revokes_at: Timestamp) -> String {
    format!("warning \"{before}\" \"{revokes_at}\"")
}

const REVOKED: &str = "revoked \"90d\"";

/// A production key and the instant its idle time starts (its creation, to the second).
async fn idle_key(h: &Harness) -> (String, String, Timestamp) {
    let (id, secret) = h.key(&[]).await;
    let created = h.keys.get(&id).unwrap().created_at;
    (id, secret, created)
}

fn plus(at: Timestamp, by: Duration) -> Timestamp {
    at.checked_add(by).unwrap()
}

/// Sets the clock to `at` and sweeps.
async fn sweep_at(h: &Harness, gateway: &Gateway, at: Timestamp) {
    h.clock.set(at);
    gateway.sweep_now().await;
}

/// Delivers until the outbox is empty, moving the clock an hour (past any backoff of the first
/// attempts) after each pass that left something behind.
async fn deliver_all(h: &Harness, gateway: &Gateway) {
    for _ in 0..12 {
        gateway.deliver_webhooks_now().await;
        if gateway.store.due_webhooks(Timestamp::MAX, 1).unwrap().is_empty() {
            return;
        }
        h.clock.advance(HOUR);
    }
    panic!("the webhook outbox did not empty");
}

fn status(h: &Harness, id: &str) -> KeyStatus {
    h.keys.get(id).unwrap().status
}

#[tokio::test]
async fn warnings_then_revocation_reach_the_webhook_once_each() {
    let receiver = Receiver::start(2).await;
    let h = Harness::with_config(STANDARD, &lifecycle(&receiver, "")).await;
    let (id, secret, created) = idle_key(&h).await;
    let deadline = plus(created, DAY * 90);

    for days in [0, 74, 75, 76, 83, 89, 90, 91] {
        sweep_at(&h, &h.gateway, plus(created, DAY * days)).await;
        deliver_all(&h, &h.gateway).await;
    }

    let expected = [
        warning("15d", deadline),
        warning("7d", deadline),
        warning("1d", deadline),
        REVOKED.into(),
    ];
    assert_eq!(story(&receiver.accepted()), expected);
    let hits = receiver.hits();
    assert_eq!(hits.len(), 6, "two refused attempts, four accepted: {hits:?}");
    assert!(hits.iter().all(|h| h.content_type == "application/json"));
    assert!(hits.iter().all(|h| h.user_agent.starts_with("keygate/")));
    let first = &receiver.accepted()[0];
    assert_eq!(first["key_id"], id.as_str());
    assert_eq!(first["environment"], "production");
    assert_eq!(first["last_used_at"], Value::Null);
    assert_eq!(first["idle_since"], created.to_string());

    h.sync().await;
    assert_eq!(
        h.get("/v1/status", &secret).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(status(&h, &id), KeyStatus::Revoked);
    let (events, _) = h.keys.events(&id, 0, 100).unwrap();
    assert!(events
        .iter()
        .any(|e| e.event == "idle_revoked" && e.actor == "lifecycle"));

    let metrics = h.metrics().await;
    for threshold in ["15d", "7d", "1d"] {
        let series = format!("keygate_idle_warnings_total{{threshold=\"{threshold}\"}}");
        assert_eq!(sample(&metrics, &series), Some(1.0), "{series}");
    }
    assert_eq!(sample(&metrics, "keygate_idle_revocations_total"), Some(1.0));
    assert_eq!(sample(&metrics, "keygate_webhook_deliveries_total"), Some(4.0));
    assert_eq!(sample(&metrics, "keygate_webhook_failures_total"), Some(2.0));
    assert_eq!(sample(&metrics, "keygate_webhook_abandoned_total"), Some(0.0));
}

#[tokio::test]
async fn a_restarted_gateway_sends_no_warning_twice() {
    let receiver = Receiver::start(0).await;
    let mut h = Harness::with_config(STANDARD, &lifecycle(&receiver, "")).await;
    let (_, _, created) = idle_key(&h).await;
    let deadline = plus(created, DAY * 90);
    sweep_at(&h, &h.gateway, plus(created, DAY * 75)).await;
    deliver_all(&h, &h.gateway).await;
    // The 7d warning is queued, and perhaps not yet delivered, when the gateway stops.
    sweep_at(&h, &h.gateway, plus(created, DAY * 83)).await;

    let restarted = h.another_gateway().await;
    std::mem::replace(&mut h.gateway, restarted).shutdown().await;
    // The stopped gateway's lease runs out two check intervals after its last sweep.
    for at in [plus(created, DAY * 83 + HOUR * 3), plus(created, DAY * 84)] {
        sweep_at(&h, &h.gateway, at).await;
        deliver_all(&h, &h.gateway).await;
    }
    for days in [89, 90, 91] {
        sweep_at(&h, &h.gateway, plus(created, DAY * days)).await;
        deliver_all(&h, &h.gateway).await;
    }

    let expected = [
        warning("15d", deadline),
        warning("7d", deadline),
        warning("1d", deadline),
        REVOKED.into(),
    ];
    assert_eq!(story(&receiver.accepted()), expected);
    let metrics = h.metrics().await;
    assert_eq!(
        sample(&metrics, "keygate_idle_warnings_total{threshold=\"15d\"}"),
        None
    );
    assert_eq!(
        sample(&metrics, "keygate_idle_warnings_total{threshold=\"1d\"}"),
        Some(1.0)
    );
    assert_eq!(sample(&metrics, "keygate_idle_revocations_total"), Some(1.0));
}

#[tokio::test]
async fn a_key_used_after_a_warning_gets_a_new_deadline_and_fresh_warnings() {
    let receiver = Receiver::start(0).await;
    let h = Harness::with_config(STANDARD, &lifecycle(&receiver, "")).await;
    let (id, secret, created) = idle_key(&h).await;
    sweep_at(&h, &h.gateway, plus(created, DAY * 75)).await;
    deliver_all(&h, &h.gateway).await;

    h.clock.set(plus(created, DAY * 76));
    assert_eq!(h.get("/v1/status", &secret).await.status, StatusCode::OK);
    h.gateway.flush_usage().await;
    let used = plus(created, DAY * 76);
    assert_eq!(h.keys.get(&id).unwrap().last_used_at, Some(used));

    sweep_at(&h, &h.gateway, plus(created, DAY * 90)).await;
    deliver_all(&h, &h.gateway).await;
    assert_eq!(
        status(&h, &id),
        KeyStatus::Active,
        "not revoked at the old deadline"
    );

    let deadline = plus(used, DAY * 90);
    sweep_at(&h, &h.gateway, plus(used, DAY * 75)).await;
    deliver_all(&h, &h.gateway).await;
    // Past the new deadline at once: the two warnings not yet sent go out, longest first, and
    // only then the revocation.
    sweep_at(&h, &h.gateway, deadline).await;
    deliver_all(&h, &h.gateway).await;

    let expected = [
        warning("15d", plus(created, DAY * 90)),
        warning("15d", deadline),
        warning("7d", deadline),
        warning("1d", deadline),
        REVOKED.into(),
    ];
    assert_eq!(story(&receiver.accepted()), expected);
    assert_eq!(receiver.accepted()[1]["last_used_at"], used.to_string());
    assert_eq!(status(&h, &id), KeyStatus::Revoked);
}

#[tokio::test]
async fn a_never_used_key_counts_from_creation_and_reactivation_starts_the_count_over() {
    let receiver = Receiver::start(0).await;
    let h = Harness::with_config(STANDARD, &lifecycle(&receiver, "")).await;
    let (id, _, created) = idle_key(&h).await;
    let deadline = plus(created, DAY * 90);

    // The first sweep to see it comes a second before its deadline: every warning goes out
    // now, and the key gets the shortest of them (a day) as notice, deadline or not.
    let warned = deadline.checked_sub(Duration::from_secs(1)).unwrap();
    sweep_at(&h, &h.gateway, warned).await;
    assert_eq!(
        status(&h, &id),
        KeyStatus::Active,
        "one second before its deadline"
    );
    sweep_at(&h, &h.gateway, deadline).await;
    assert_eq!(
        status(&h, &id),
        KeyStatus::Active,
        "at its deadline, warned a second ago"
    );
    let revoked_at = plus(warned, DAY);
    sweep_at(&h, &h.gateway, revoked_at).await;
    assert_eq!(status(&h, &id), KeyStatus::Revoked, "a day after its warnings");
    deliver_all(&h, &h.gateway).await;
    let expected = [
        warning("15d", revoked_at),
        warning("7d", revoked_at),
        warning("1d", revoked_at),
        REVOKED.into(),
    ];
    assert_eq!(story(&receiver.accepted()), expected);

    h.clock.set(revoked_at);
    h.keys.activate(&id).unwrap();
    sweep_at(&h, &h.gateway, plus(revoked_at, HOUR)).await;
    sweep_at(&h, &h.gateway, plus(revoked_at, DAY * 74)).await;
    assert_eq!(
        status(&h, &id),
        KeyStatus::Active,
        "reactivated: idle from its reactivation"
    );
    // Swept on time this round: warned 15 days ahead, revoked at its deadline.
    sweep_at(&h, &h.gateway, plus(revoked_at, DAY * 76)).await;
    sweep_at(&h, &h.gateway, plus(revoked_at, DAY * 90)).await;
    assert_eq!(
        status(&h, &id),
        KeyStatus::Revoked,
        "90 days after its reactivation"
    );
}

#[tokio::test]
async fn only_the_gateway_holding_the_lease_sweeps_and_delivers() {
    let receiver = Receiver::start(0).await;
    // A long interval, so the lease outlasts the whole story.
    let config = lifecycle(&receiver, "check_interval = \"100d\"");
    let h = Harness::with_config(STANDARD, &config).await;
    let replica = h.another_gateway().await;
    let (id, _, created) = idle_key(&h).await;
    sweep_at(&h, &replica, created).await;

    sweep_at(&h, &h.gateway, plus(created, DAY * 91)).await;
    h.gateway.deliver_webhooks_now().await;
    assert!(
        receiver.hits().is_empty(),
        "the gateway without the lease neither sweeps nor delivers"
    );
    assert_eq!(status(&h, &id), KeyStatus::Active);

    replica.sweep_now().await;
    // Warned only now, a day past its deadline: revoked a day later, after its notice.
    sweep_at(&h, &replica, plus(created, DAY * 92)).await;
    deliver_all(&h, &replica).await;
    assert_eq!(receiver.accepted().len(), 4);
    assert_eq!(status(&h, &id), KeyStatus::Revoked);
    let (ours, theirs) = (h.metrics().await, replica.shared.metrics.encode());
    assert_eq!(sample(&ours, "keygate_idle_revocations_total"), Some(0.0));
    assert_eq!(sample(&theirs, "keygate_idle_revocations_total"), Some(1.0));
    assert_eq!(sample(&theirs, "keygate_webhook_deliveries_total"), Some(4.0));
    replica.shutdown().await;
}

#[tokio::test]
async fn a_webhook_failing_every_attempt_is_abandoned_after_the_last_retry() {
    let receiver = Receiver::start(usize::MAX).await;
    let h = Harness::with_config(STANDARD, &lifecycle(&receiver, "")).await;
    let (id, secret, created) = idle_key(&h).await;
    sweep_at(&h, &h.gateway, plus(created, DAY * 75)).await;
    deliver_all(&h, &h.gateway).await;

    assert_eq!(receiver.hits().len(), 10);
    assert!(receiver.accepted().is_empty());
    let metrics = h.metrics().await;
    assert_eq!(sample(&metrics, "keygate_webhook_failures_total"), Some(10.0));
    assert_eq!(sample(&metrics, "keygate_webhook_abandoned_total"), Some(1.0));
    assert_eq!(sample(&metrics, "keygate_webhook_deliveries_total"), Some(0.0));
    assert_eq!(
        sample(&metrics, "keygate_idle_warnings_total{threshold=\"15d\"}"),
        Some(1.0),
        "the warning counts although its webhook was lost"
    );
    assert_eq!(status(&h, &id), KeyStatus::Active);
    assert_eq!(h.get("/v1/status", &secret).await.status, StatusCode::OK);
}

#[tokio::test]
async fn use_of_the_old_secret_during_its_grace_counts_as_use() {
    let receiver = Receiver::start(0).await;
    let h = Harness::with_config(STANDARD, &lifecycle(&receiver, "")).await;
    let (id, old, created) = idle_key(&h).await;
    h.clock.set(plus(created, DAY));
    h.keys.regenerate(&id, Some(DAY * 30)).unwrap();
    h.sync().await;

    // Clients still on the old secret 20 days in: the key is in use.
    h.clock.set(plus(created, DAY * 20));
    assert_eq!(h.get("/v1/status", &old).await.status, StatusCode::OK);
    h.gateway.flush_usage().await;

    // 90 days after the regeneration, but only 72 and 76 after that use: not revoked.
    sweep_at(&h, &h.gateway, plus(created, DAY * 92)).await;
    deliver_all(&h, &h.gateway).await;
    assert!(
        receiver.accepted().is_empty(),
        "no warning for a deadline that moved on"
    );
    sweep_at(&h, &h.gateway, plus(created, DAY * 96)).await;
    assert_eq!(status(&h, &id), KeyStatus::Active);
    // Revoked 90 days after the last use.
    sweep_at(&h, &h.gateway, plus(created, DAY * 110)).await;
    assert_eq!(status(&h, &id), KeyStatus::Revoked);
}

/// `GET /v1/idle-keys` (for the page's notice): a key shows there once its deadline is within
/// the largest warning, with that deadline, and leaves once it is used again.
#[tokio::test]
async fn the_admin_api_lists_the_keys_idle_expiry_will_soon_revoke() {
    let receiver = Receiver::start(0).await;
    let h = Harness::with_config(STANDARD, &lifecycle(&receiver, "")).await;
    let (id, secret, created) = idle_key(&h).await;
    let idle = || async {
        support::admin_call(&h.gateway, "GET", "/v1/idle-keys", "")
            .await
            .json()
    };

    h.clock.set(plus(created, DAY * 74));
    let report = idle().await;
    assert_eq!(report["idle_expiry"], "90d");
    assert_eq!(report["warn_before"], serde_json::json!(["15d", "7d", "1d"]));
    assert_eq!(report["keys"], serde_json::json!([]), "16 days from its deadline");

    h.clock.set(plus(created, DAY * 76));
    let report = idle().await;
    assert_eq!(report["keys"][0]["id"], id.as_str());
    assert_eq!(
        report["keys"][0]["revokes_at"],
        plus(created, DAY * 90).to_string()
    );
    assert_eq!(report["truncated"], false);

    assert_eq!(h.get("/v1/status", &secret).await.status, StatusCode::OK);
    h.gateway.flush_usage().await;
    assert_eq!(
        idle().await["keys"],
        serde_json::json!([]),
        "used again: no longer idle"
    );
}
