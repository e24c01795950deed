//! Leak reports reaching a running gateway (SPEC 12): GitHub's partner endpoint and GitLab's
//! token revocation API on the proxy listener, `POST /v1/leaks` on the admin API. GitHub's
//! alerts are signed with a key pair made here, its public key served from a file, since
//! nothing outside this machine is reachable.

use base64::prelude::{Engine, BASE64_STANDARD};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use jiff::Timestamp;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use serde_json::{json, Value};

use keygate::core::environment::Environment;
use keygate::core::secret::Secret;

use std::time::Duration;

use crate::support::browser::Browser;
use crate::support::postgres::{postgres_url, FreshSchema};
use crate::support::{admin_call, sample, Answer, Harness, ADMIN_TOKEN, READ_TOKEN, STANDARD};
use crate::support::{basic, eventually};

/// A P-256 key pair as GitHub holds one: signs bodies, shows its public key as PEM.
struct Signer {
    pair: EcdsaKeyPair,
    pem: String,
}

impl Signer {
    fn new() -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let pem = rcgen::KeyPair::try_from(pkcs8.as_ref()).unwrap().public_key_pem();
        Signer { pair, pem }
    }

    fn sign(&self, body: &[u8]) -> String {
        let signature = self.pair.sign(&SystemRandom::new(), body).unwrap();
        BASE64_STANDARD.encode(signature.as_ref())
    }
}

const GITHUB_PATH: &str = "/.well-known/keygate/github";
const GITLAB_PATH: &str = "/.well-known/keygate/gitlab";
const TYPE: &str = "gitleaks_rule_id_keygate_api_key";

/// A gateway with both endpoints on, GitHub's key `k1` in a file, GitLab's token in a variable
/// of its own, and `extra` settings of `[leaks]`.
struct Setup {
    h: Harness,
    github: Signer,
    gitlab_token: String,
    _keys_dir: tempfile::TempDir,
}

async fn setup(extra: &str) -> Setup {
    setup_on(STANDARD, extra).await
}

/// [`setup`] on the store of `template`.
async fn setup_on(template: &str, extra: &str) -> Setup {
    let github = Signer::new();
    let keys_dir = tempfile::tempdir().unwrap();
    let keys_file = keys_dir.path().join("github-keys.json");
    let document = json!({"public_keys": [{"key_identifier": "k1", "key": github.pem, "is_current": true}]});
    std::fs::write(&keys_file, document.to_string()).unwrap();
    let variable = format!("KEYGATE_TEST_GITLAB_{:016x}", rand::random::<u64>());
    let gitlab_token = format!("glt-{:016x}", rand::random::<u64>());
    std::env::set_var(&variable, &gitlab_token);
    let config = format!(
        "[lifecycle]\nwebhook = \"http://127.0.0.1:9/hook\"\n\
         [leaks]\nmax_body = 300000\n{extra}\n\
         [leaks.github]\npath = \"{GITHUB_PATH}\"\nkeys_file = \"{}\"\n\
         [leaks.gitlab]\npath = \"{GITLAB_PATH}\"\ntoken_env = \"{variable}\"\n",
        keys_file.display()
    );
    Setup {
        h: Harness::with_config(template, &config).await,
        github,
        gitlab_token,
        _keys_dir: keys_dir,
    }
}

impl Setup {
    /// POSTs `body` to GitHub's endpoint with these signature headers.
    async fn github_post(&self, body: &str, identifier: Option<&str>, signature: Option<&str>) -> Answer {
        let mut request = Request::post(self.h.url(GITHUB_PATH)).header("content-type", "application/json");
        if let Some(identifier) = identifier {
            request = request.header("github-public-key-identifier", identifier);
        }
        if let Some(signature) = signature {
            request = request.header("github-public-key-signature", signature);
        }
        let request = request.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
        self.h.send(request).await
    }

    /// `alerts` as GitHub sends them, signed by its key.
    async fn github_alerts(&self, alerts: &Value) -> Answer {
        let body = alerts.to_string();
        let signature = self.github.sign(body.as_bytes());
        self.github_post(&body, Some("k1"), Some(&signature)).await
    }

    async fn gitlab(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(self.h.url(&format!("{GITLAB_PATH}{path}")));
        if let Some(token) = token {
            request = request.header("authorization", token);
        }
        let request = request.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
        self.h.send(request).await
    }

    /// A key that may read customers: its id and secret.
    async fn key(&self) -> (String, String) {
        self.h.key(&["customer:read"]).await
    }

    async fn works(&self, secret: &str) -> StatusCode {
        self.h.get("/v1/customers/acme", secret).await.status
    }

    fn last_event(&self, id: &str) -> keygate::control::store::KeyEvent {
        let (events, _) = self.h.keys.events(id, 0, 100).unwrap();
        events.into_iter().last().unwrap()
    }

    async fn reports(&self, source: &str, result: &str) -> Option<f64> {
        let series = format!("keygate_leak_reports_total{{result=\"{result}\",source=\"{source}\"}}");
        sample(&self.h.metrics().await, &series)
    }
}

fn sha256_hex(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn stranger() -> String {
    Secret::generate(Environment::Production).expose().to_owned()
}

#[tokio::test]
async fn a_github_alert_revokes_the_key_at_once_and_is_answered_with_githubs_feedback() {
    let s = setup("").await;
    let (id, secret) = s.key().await;
    let (quiet, quiet_secret) = s.key().await;
    assert_eq!(s.works(&secret).await, StatusCode::OK);
    let fake = stranger();
    let url = "https://github.com/octo/app/blob/abc123/.env";
    let alerts = json!([
        {"token": secret, "type": "keygate_api_key", "url": url, "source": "content"},
        {"token": fake, "type": "keygate_api_key", "url": "", "source": "commit"},
    ]);
    let answer = s.github_alerts(&alerts).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(
        answer.json(),
        json!([
            {"token_hash": sha256_hex(&secret), "token_type": "keygate_api_key", "label": "true_positive"},
            {"token_hash": sha256_hex(&fake), "token_type": "keygate_api_key", "label": "false_positive"},
        ])
    );
    // In force on this gateway before the answer went out.
    assert_eq!(s.works(&secret).await, StatusCode::UNAUTHORIZED);
    assert_eq!(s.works(&quiet_secret).await, StatusCode::OK);
    let event = s.last_event(&id);
    assert_eq!((event.event.as_str(), event.actor.as_str()), ("leaked", "github"));
    assert_eq!(event.changes["url"], url);
    assert_eq!(event.changes["status"], "revoked");
    assert_eq!(s.last_event(&quiet).event, "created");
    assert_eq!(s.reports("github", "revoked").await, Some(1.0));
    assert_eq!(s.reports("github", "unknown").await, Some(1.0));

    // The webhook went into the outbox with the change.
    let queued = s.h.gateway.store.due_webhooks(Timestamp::MAX, 10).unwrap();
    assert_eq!(queued.len(), 1);
    let payload: Value = serde_json::from_str(&queued[0].payload).unwrap();
    assert_eq!(payload["event"], "key.leaked");
    assert_eq!(payload["key_id"], id.as_str());
    assert_eq!(
        (&payload["source"], &payload["url"]),
        (&json!("github"), &json!(url))
    );
    assert_eq!(payload["result"], "revoked");
    assert!(!queued[0].payload.contains(&secret));

    // Delivered again: still true_positive, recorded, nothing else changes.
    let again = s.github_alerts(&alerts).await;
    assert_eq!(again.json()[0]["label"], "true_positive");
    assert_eq!(s.last_event(&id).changes.get("status"), None);
    assert_eq!(s.reports("github", "already_revoked").await, Some(1.0));
    assert_eq!(
        s.h.gateway.store.due_webhooks(Timestamp::MAX, 10).unwrap().len(),
        1
    );
}

#[tokio::test]
async fn a_bad_or_missing_signature_is_401_and_changes_nothing() {
    let s = setup("").await;
    let (_, secret) = s.key().await;
    let body =
        json!([{"token": secret, "type": "keygate_api_key", "url": "", "source": "content"}]).to_string();
    let signed = s.github.sign(body.as_bytes());
    let impostor = Signer::new().sign(body.as_bytes());
    let other_body = body.replace("content", "commit");
    for (body, identifier, signature) in [
        (body.as_str(), None, None),
        (&body, Some("k1"), None),
        (&body, None, Some(signed.as_str())),
        (&body, Some("k1"), Some(impostor.as_str())),
        (&body, Some("k2"), Some(&signed)),
        (&body, Some("k1"), Some("not base64!")),
        (&other_body, Some("k1"), Some(&signed)),
    ] {
        let answer = s.github_post(body, identifier, signature).await;
        assert_eq!(
            answer.status,
            StatusCode::UNAUTHORIZED,
            "{identifier:?} {signature:?}"
        );
        assert_eq!(answer.json(), json!({"error": "unauthorized"}));
    }
    assert_eq!(s.works(&secret).await, StatusCode::OK);
    assert_eq!(s.reports("github", "unauthorized").await, Some(7.0));

    // Bounded: past leaks.max_body by its length, or as it streams.
    let huge = format!("[{}]", vec!["{}"; 100_000].join(","));
    let answer = s.github_post(&huge, Some("k1"), Some(&signed)).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    let get = s.h.call("GET", GITHUB_PATH, None, &[]).await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(get.headers["allow"], "POST");
    // A signed body that is not GitHub's list.
    let odd = r#"{"token":"x"}"#;
    let answer = s
        .github_post(odd, Some("k1"), Some(&s.github.sign(odd.as_bytes())))
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(s.works(&secret).await, StatusCode::OK);
    // Other paths are routed as ever.
    assert_eq!(
        s.h.get("/.well-known/keygate/githubx", &secret).await.status,
        StatusCode::NOT_FOUND
    );
}

/// Correctness of a batch of 1,000 tokens; the time it took is printed, not asserted.
#[tokio::test]
async fn a_batch_of_a_thousand_tokens_is_decided_whole() {
    batch_of_a_thousand(&setup("").await).await;
}

/// The same on PostgreSQL, where each distinct token is one indexed lookup over the network,
/// and a second replica on the store refuses the reported keys once it has synced.
#[tokio::test]
async fn on_postgres_a_batch_is_decided_whole_and_every_replica_refuses_the_keys() {
    let Some(postgres) = postgres_url() else {
        return;
    };
    let schema = FreshSchema::new(&postgres);
    let template = STANDARD.replace("sqlite://keygate.db", &schema.url);
    let s = setup_on(&template, "").await;
    let replica = s.h.another_gateway().await;
    let ours = batch_of_a_thousand(&s).await;
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    for (_, secret) in &ours {
        let refused = eventually(Duration::from_secs(10), || {
            let request = Request::get(format!("http://{}/v1/customers/acme", replica.proxy_addr))
                .header("authorization", basic(secret))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let sent = client.request(request);
            async move { sent.await.unwrap().status() == StatusCode::UNAUTHORIZED }
        })
        .await;
        assert!(refused, "the replica refuses a reported key once it has synced");
    }
    replica.shutdown().await;
}

/// Reports 1,000 tokens, 10 of them keys of the store; checks every answer; the keys.
async fn batch_of_a_thousand(s: &Setup) -> Vec<(String, String)> {
    let mut ours = Vec::new();
    for _ in 0..10 {
        ours.push(s.key().await);
    }
    let mut tokens: Vec<String> = (0..990).map(|_| stranger()).collect();
    for (n, (_, secret)) in ours.iter().enumerate() {
        tokens.insert(n * 99, secret.clone());
    }
    let alerts: Vec<Value> = tokens
        .iter()
        .map(|token| json!({"token": token, "type": "keygate_api_key", "url": "https://github.com/o/r", "source": "content"}))
        .collect();
    let started = std::time::Instant::now();
    let answer = s.github_alerts(&Value::Array(alerts)).await;
    eprintln!("1,000 GitHub tokens answered in {:?}", started.elapsed());
    assert_eq!(answer.status, StatusCode::OK);
    let feedback = answer.json();
    let feedback = feedback.as_array().unwrap();
    assert_eq!(feedback.len(), 1000);
    for (entry, token) in feedback.iter().zip(&tokens) {
        let ours = ours.iter().any(|(_, secret)| secret == token);
        let label = if ours { "true_positive" } else { "false_positive" };
        assert_eq!(
            (&entry["token_hash"], &entry["label"]),
            (&json!(sha256_hex(token)), &json!(label))
        );
    }
    for (_, secret) in &ours {
        assert_eq!(s.works(secret).await, StatusCode::UNAUTHORIZED);
    }
    ours
}

#[tokio::test]
async fn gitlabs_endpoints_take_its_token_and_revoke() {
    let s = setup("").await;
    let (id, secret) = s.key().await;
    let token = s.gitlab_token.clone();
    let bearer = format!("Bearer {token}");
    for presented in [None, Some("wrong"), Some("Bearer wrong")] {
        let types = s.gitlab("GET", "/v1/revocable_token_types", presented, "").await;
        assert_eq!(types.status, StatusCode::UNAUTHORIZED, "{presented:?}");
    }
    for presented in [token.as_str(), bearer.as_str()] {
        let types = s
            .gitlab("GET", "/v1/revocable_token_types", Some(presented), "")
            .await;
        assert_eq!(types.status, StatusCode::OK);
        assert_eq!(types.json(), json!({"types": [TYPE]}));
    }
    let body = json!([{"type": TYPE, "token": secret, "location": "https://gitlab.example.com/g/p/-/blob/main/.env"}]);
    let refused = s
        .gitlab("POST", "/v1/revoke_tokens", None, &body.to_string())
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(s.works(&secret).await, StatusCode::OK);
    let unlisted = json!([{"type": "gitleaks_rule_id_gitlab_personal_access_token", "token": secret}]);
    let unlisted = s
        .gitlab("POST", "/v1/revoke_tokens", Some(&token), &unlisted.to_string())
        .await;
    assert_eq!(unlisted.status, StatusCode::BAD_REQUEST);
    assert_eq!(s.works(&secret).await, StatusCode::OK);

    let revoked = s
        .gitlab("POST", "/v1/revoke_tokens", Some(&token), &body.to_string())
        .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    assert_eq!(s.works(&secret).await, StatusCode::UNAUTHORIZED);
    let event = s.last_event(&id);
    assert_eq!((event.event.as_str(), event.actor.as_str()), ("leaked", "gitlab"));
    assert_eq!(
        event.changes["url"],
        "https://gitlab.example.com/g/p/-/blob/main/.env"
    );
    assert_eq!(s.reports("gitlab", "unauthorized").await, Some(4.0));
}

#[tokio::test]
async fn quarantine_keeps_the_key_working_flagged_and_the_api_takes_any_scanners_report() {
    let s = setup("action = \"quarantine\"").await;
    let (id, secret) = s.key().await;
    let report = json!({"key": secret, "source": "trufflehog", "url": "https://ci.example.com/job/7"});
    let answer = admin_call(&s.h.gateway, "POST", "/v1/leaks", &report.to_string()).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.json(), json!({"result": "quarantined", "key_id": id}));
    assert_eq!(
        s.works(&secret).await,
        StatusCode::OK,
        "quarantined keys keep working"
    );
    let shown = admin_call(&s.h.gateway, "GET", &format!("/v1/keys/{id}"), "").await;
    assert_eq!(shown.json()["quarantined"], true);
    let listed = admin_call(&s.h.gateway, "GET", "/v1/keys", "").await;
    let listed = listed.json();
    let row = listed.as_array().unwrap().iter().find(|k| k["id"] == id.as_str());
    assert_eq!(row.unwrap()["quarantined"], true, "{listed}");
    let event = s.last_event(&id);
    assert_eq!((event.event.as_str(), event.actor.as_str()), ("leaked", "api"));
    assert_eq!(event.token.as_deref(), Some("write"));
    assert_eq!(event.changes["url"], "https://ci.example.com/job/7");

    let unknown = json!({"key": stranger()}).to_string();
    let answer = admin_call(&s.h.gateway, "POST", "/v1/leaks", &unknown).await;
    assert_eq!(answer.json(), json!({"result": "unknown", "key_id": null}));
    for (body, field) in [
        (r#"{"key":""}"#, "key"),
        (r#"{"source":"x"}"#, "key"),
        (r#"{"key":"k","extra":1}"#, "extra"),
        (r#"{"key":"k","url":"a\u0007b"}"#, "url"),
    ] {
        let answer = admin_call(&s.h.gateway, "POST", "/v1/leaks", body).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer.json()["field"], field, "{body}");
    }
    let read_only = Request::post(s.h.admin_url("/v1/leaks"))
        .header("authorization", format!("Bearer {READ_TOKEN}"))
        .body(Full::new(Bytes::from(report.to_string())))
        .unwrap();
    assert_eq!(s.h.send(read_only).await.status, StatusCode::FORBIDDEN);
    assert_eq!(s.reports("api", "quarantined").await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_a_quarantined_key_with_a_badge() {
    let Some(browser) = Browser::start("quarantined").await else {
        return;
    };
    let s = setup("action = \"quarantine\"").await;
    let (id, secret) = s.key().await;
    let (other, _) = s.key().await;
    let report = json!({"key": secret}).to_string();
    let answer = admin_call(&s.h.gateway, "POST", "/v1/leaks", &report).await;
    assert_eq!(answer.json()["result"], "quarantined");
    browser.sign_in(&s.h.admin_url("/ui/"), ADMIN_TOKEN).await;
    browser
        .until_text(&format!("tr[data-key-id=\"{id}\"] .quarantined"), "quarantined")
        .await;
    let badges = browser
        .count(&format!("tr[data-key-id=\"{other}\"] .quarantined"))
        .await;
    assert_eq!(badges, 0);
    browser.finish().await;
}

#[tokio::test]
async fn a_gateway_refuses_to_start_without_githubs_keys_file_or_gitlabs_token() {
    let h = Harness::start().await;
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    let missing = h.dir.path().join("no-such-keys.json");
    for (extra, expected) in [
        (
            format!(
                "[leaks.github]\npath = \"/gh\"\nkeys_file = \"{}\"",
                missing.display()
            ),
            "leaks.github.keys_file",
        ),
        (
            "[leaks.gitlab]\npath = \"/gl\"\ntoken_env = \"KEYGATE_TEST_UNSET_GITLAB_TOKEN\"".to_owned(),
            "KEYGATE_TEST_UNSET_GITLAB_TOKEN",
        ),
    ] {
        let config = keygate::config::parse(&format!("{text}\n{extra}"), h.dir.path()).unwrap();
        let refused = keygate::gateway::Gateway::start(config, h.options()).await;
        let error = format!("{:#}", refused.err().expect("refused"));
        assert!(error.contains(expected), "{error}");
    }
}
