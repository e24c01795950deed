//! The admin API of SPEC 5, from the outside: every endpoint, its errors, and every answer
//! checked against the OpenAPI document the gateway serves, so the two cannot drift apart.

use crate::support;

use std::collections::BTreeSet;
use std::sync::Mutex;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use serde_json::{json, Value};

use crate::support::{Answer, ConfigEdit, Harness, ADMIN_TOKEN, READ_TOKEN};
use keygate::core::environment::Environment;

/// The document, and which operations' answers have been checked against it.
struct Contract {
    doc: Value,
    checked: Mutex<BTreeSet<(String, String, u16)>>,
}

impl Contract {
    fn new() -> Contract {
        Contract {
            doc: serde_json::from_str(keygate::control::admin::OPENAPI)
                .expect("the OpenAPI document is JSON"),
            checked: Mutex::default(),
        }
    }

    /// Checks `answer` against the document's response for `method template`: the status is
    /// documented, and a JSON body matches its schema.
    fn check(&self, method: &Method, template: &str, answer: &Answer) {
        let status = answer.status.as_u16();
        let operation = &self.doc["paths"][template][method.as_str().to_ascii_lowercase()];
        assert!(
            operation.is_object(),
            "{method} {template} is not in the document"
        );
        let response = &operation["responses"][status.to_string()];
        assert!(
            response.is_object(),
            "{method} {template} answered {status}, which the document does not list: {}",
            answer.text()
        );
        match response["content"]["application/json"]["schema"].as_object() {
            Some(schema) => {
                let content_type = answer.headers.get("content-type").unwrap().to_str().unwrap();
                assert!(content_type.starts_with("application/json"), "{content_type}");
                let mut root = schema.clone();
                root.insert("components".into(), self.doc["components"].clone());
                root.insert(
                    "$schema".into(),
                    "https://json-schema.org/draft/2020-12/schema".into(),
                );
                let validator = jsonschema::draft202012::options()
                    .should_validate_formats(true)
                    .build(&Value::Object(root))
                    .expect("the document's schema compiles");
                let body = answer.json();
                let errors: Vec<String> = validator
                    .iter_errors(&body)
                    .map(|e| format!("{e} at {}", e.instance_path()))
                    .collect();
                assert!(
                    errors.is_empty(),
                    "{method} {template} {status}: {errors:?}\nbody: {body}"
                );
            }
            None => assert!(
                answer.body.is_empty(),
                "{method} {template} {status} has an undocumented body"
            ),
        }
        self.checked
            .lock()
            .unwrap()
            .insert((method.to_string(), template.to_owned(), status));
    }

    /// Every documented operation has had a success answer checked.
    fn assert_all_covered(&self) {
        let checked = self.checked.lock().unwrap();
        for (path, item) in self.doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                if method == "parameters" {
                    continue;
                }
                let method = method.to_ascii_uppercase();
                let success: Vec<u16> = operation["responses"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .filter_map(|code| code.parse().ok())
                    .filter(|code: &u16| (200..300).contains(code))
                    .collect();
                assert!(
                    success
                        .iter()
                        .any(|code| checked.contains(&(method.clone(), path.clone(), *code))),
                    "no test checked a success answer of {method} {path}"
                );
            }
        }
    }
}

/// Sends an admin request with the right token, or `token` when given.
async fn admin(h: &Harness, method: Method, path: &str, body: Option<&str>, token: Option<&str>) -> Answer {
    let token = token.unwrap_or(ADMIN_TOKEN);
    let mut request = Request::builder().method(method).uri(h.admin_url(path));
    if !token.is_empty() {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let body = Full::new(Bytes::from(body.unwrap_or("").to_owned()));
    h.send(request.body(body).unwrap()).await
}

async fn call(
    h: &Harness,
    c: &Contract,
    method: Method,
    path: &str,
    template: &str,
    body: Option<Value>,
) -> Answer {
    let text = body.map(|b| b.to_string());
    let answer = admin(h, method.clone(), path, text.as_deref(), None).await;
    c.check(&method, template, &answer);
    answer
}

#[tokio::test]
async fn every_endpoint_answers_as_documented() {
    let h = Harness::start().await;
    let c = Contract::new();

    // Create, with every field.
    let created = call(
        &h,
        &c,
        Method::POST,
        "/v1/keys",
        "/v1/keys",
        Some(json!({
            "name": "Main Website Integration",
            "environment": "production",
            "permissions": ["customer:read", "license:*"],
            "rate_limit": {"requests": 100, "per": "1s", "burst": 50},
            "customer_id": "cust_42",
            "allowed_ips": ["127.0.0.0/8", "::1"],
            "expires_in": "30d",
            "metadata": {"team": "web"}
        })),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let key = created.json();
    let id = key["id"].as_str().unwrap().to_owned();
    let secret = key["key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("kg_prod_"));
    assert_eq!(
        key["rate_limit"],
        json!({"requests": 100, "per": "1s", "burst": 50})
    );
    assert_eq!(key["allowed_ips"], json!(["127.0.0.0/8", "::1/128"]));

    // Import an existing secret.
    let imported = call(
        &h,
        &c,
        Method::POST,
        "/v1/keys",
        "/v1/keys",
        Some(json!({"name": "legacy", "environment": "staging", "key": "legacy-secret-0123456789"})),
    )
    .await;
    assert_eq!(imported.status, 201, "{}", imported.text());
    assert!(
        imported.json().get("key").is_none(),
        "an imported secret is never echoed"
    );

    // The new key works on the proxy.
    h.sync().await;
    assert_eq!(h.get("/v1/customers/cust_42", &secret).await.status, 200);

    // Show, list with filters, paging.
    let shown = call(
        &h,
        &c,
        Method::GET,
        &format!("/v1/keys/{id}"),
        "/v1/keys/{id}",
        None,
    )
    .await;
    assert_eq!(shown.json()["name"], "Main Website Integration");
    assert!(shown.json().get("key").is_none(), "the secret is shown only once");
    let listed = call(
        &h,
        &c,
        Method::GET,
        "/v1/keys?environment=production",
        "/v1/keys",
        None,
    )
    .await;
    assert_eq!(listed.json().as_array().unwrap().len(), 1);
    let listed = call(&h, &c, Method::GET, "/v1/keys?limit=1", "/v1/keys", None).await;
    assert_eq!(listed.json().as_array().unwrap().len(), 1);
    let cursor = listed
        .headers
        .get("x-next-cursor")
        .expect("a next page")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(listed
        .headers
        .get("link")
        .unwrap()
        .to_str()
        .unwrap()
        .contains("rel=\"next\""));
    let rest = call(
        &h,
        &c,
        Method::GET,
        &format!("/v1/keys?limit=1&cursor={cursor}"),
        "/v1/keys",
        None,
    )
    .await;
    assert_eq!(rest.json()[0]["environment"], "staging");
    assert!(
        rest.headers.get("x-next-cursor").is_none(),
        "the last page has no next cursor"
    );
    let by_customer = call(
        &h,
        &c,
        Method::GET,
        "/v1/keys?customer_id=cust_42&status=active",
        "/v1/keys",
        None,
    )
    .await;
    assert_eq!(by_customer.json()[0]["id"], id.as_str());

    // Update: change some fields, clear others with null.
    let updated = call(
        &h,
        &c,
        Method::PATCH,
        &format!("/v1/keys/{id}"),
        "/v1/keys/{id}",
        Some(
            json!({"name": "Renamed", "customer_id": null, "rate_limit": null, "metadata": {"team": "api"}}),
        ),
    )
    .await;
    assert_eq!(updated.status, 200, "{}", updated.text());
    let body = updated.json();
    assert_eq!(
        (body["name"].as_str(), body["customer_id"].is_null()),
        (Some("Renamed"), true)
    );
    assert!(body["rate_limit"].is_null());
    assert_eq!(
        body["permissions"],
        json!(["customer:read", "license:*"]),
        "absent fields stay"
    );

    // Verify.
    let verify = |key: &str, extra: Value| {
        let mut body = json!({"key": key});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let verdict = call(
        &h,
        &c,
        Method::POST,
        "/v1/keys/verify",
        "/v1/keys/verify",
        Some(verify(
            &secret,
            json!({"permission": "customer:read", "environment": "production"}),
        )),
    )
    .await;
    assert_eq!(
        (verdict.json()["valid"].as_bool(), verdict.json()["code"].as_str()),
        (Some(true), Some("VALID"))
    );
    assert_eq!(verdict.json()["key_id"], id.as_str());
    let codes = [
        (
            verify("kg_prod_nothingLikeARealKeyAtAll000000000", json!({})),
            "NOT_FOUND",
        ),
        (
            verify(&secret, json!({"environment": "staging"})),
            "WRONG_ENVIRONMENT",
        ),
        (
            verify(&secret, json!({"permission": "billing:write"})),
            "INSUFFICIENT_PERMISSIONS",
        ),
    ];
    for (body, code) in codes {
        let verdict = call(
            &h,
            &c,
            Method::POST,
            "/v1/keys/verify",
            "/v1/keys/verify",
            Some(body),
        )
        .await;
        assert_eq!(verdict.json()["code"], code);
        assert_eq!(verdict.json()["valid"], false);
    }

    // Regenerate with grace: both secrets work until it ends.
    let regenerated = call(
        &h,
        &c,
        Method::POST,
        &format!("/v1/keys/{id}/regenerate"),
        "/v1/keys/{id}/regenerate",
        Some(json!({"grace": "10m"})),
    )
    .await;
    assert_eq!(regenerated.status, 200, "{}", regenerated.text());
    let new_secret = regenerated.json()["key"].as_str().unwrap().to_owned();
    assert_eq!(regenerated.json()["id"], id.as_str());
    assert!(regenerated.json()["grace_until"].is_string());
    h.sync().await;
    assert_eq!(
        h.get("/v1/customers/x", &secret).await.status,
        200,
        "old secret in its grace"
    );
    assert_eq!(h.get("/v1/customers/x", &new_secret).await.status, 200);
    h.clock.advance(std::time::Duration::from_secs(601));
    assert_eq!(
        h.get("/v1/customers/x", &secret).await.status,
        401,
        "old secret after its grace"
    );
    assert_eq!(h.get("/v1/customers/x", &new_secret).await.status, 200);

    // Revoke, verify says so, activate.
    let revoked = call(
        &h,
        &c,
        Method::POST,
        &format!("/v1/keys/{id}/revoke"),
        "/v1/keys/{id}/revoke",
        None,
    )
    .await;
    assert_eq!(revoked.json()["status"], "revoked");
    h.sync().await;
    let verdict = call(
        &h,
        &c,
        Method::POST,
        "/v1/keys/verify",
        "/v1/keys/verify",
        Some(verify(&new_secret, json!({}))),
    )
    .await;
    assert_eq!(verdict.json()["code"], "REVOKED");
    let activated = call(
        &h,
        &c,
        Method::POST,
        &format!("/v1/keys/{id}/activate"),
        "/v1/keys/{id}/activate",
        None,
    )
    .await;
    assert_eq!(activated.json()["status"], "active");

    // Usage after a flush.
    h.gateway.flush_usage().await;
    let usage = call(
        &h,
        &c,
        Method::GET,
        &format!("/v1/keys/{id}/usage"),
        "/v1/keys/{id}/usage",
        None,
    )
    .await;
    assert!(
        usage.json()["total_requests"].as_u64().unwrap() >= 3,
        "{}",
        usage.text()
    );
    assert!(usage.json()["flushed_at"].is_string(), "{}", usage.text());

    // Idle expiry is off in this config: no settings, no keys.
    let idle = call(&h, &c, Method::GET, "/v1/idle-keys", "/v1/idle-keys", None).await;
    assert_eq!(idle.json()["idle_expiry"], Value::Null);

    // A quota: set, shown with its state, topped up.
    let quota = json!({"limit": 1000, "period": "month", "anchor": "2026-01-31T00:00:00Z"});
    let with_quota = call(
        &h,
        &c,
        Method::PATCH,
        &format!("/v1/keys/{id}"),
        "/v1/keys/{id}",
        Some(json!({ "quota": quota })),
    )
    .await;
    assert_eq!(with_quota.json()["quota"], quota, "{}", with_quota.text());
    let shown = call(
        &h,
        &c,
        Method::GET,
        &format!("/v1/keys/{id}"),
        "/v1/keys/{id}",
        None,
    )
    .await;
    assert_eq!(shown.json()["quota_state"]["limit"], 1000, "{}", shown.text());
    let topped_up = call(
        &h,
        &c,
        Method::POST,
        &format!("/v1/keys/{id}/quota"),
        "/v1/keys/{id}/quota",
        Some(json!({"add": 500})),
    )
    .await;
    assert_eq!(topped_up.status, 200, "{}", topped_up.text());
    assert_eq!(topped_up.json()["limit"], 1500);

    // Delete: 204, then 404, and the events stay.
    let deleted = call(
        &h,
        &c,
        Method::DELETE,
        &format!("/v1/keys/{id}"),
        "/v1/keys/{id}",
        None,
    )
    .await;
    assert_eq!(deleted.status, 204);
    let gone = call(
        &h,
        &c,
        Method::GET,
        &format!("/v1/keys/{id}"),
        "/v1/keys/{id}",
        None,
    )
    .await;
    assert_eq!(gone.status, 404);
    let events = call(
        &h,
        &c,
        Method::GET,
        &format!("/v1/keys/{id}/events"),
        "/v1/keys/{id}/events",
        None,
    )
    .await;
    let events = events.json();
    let names: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "created",
            "updated",
            "regenerated",
            "revoked",
            "activated",
            "updated",
            "quota_topped_up",
            "deleted"
        ]
    );
    assert!(events
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["actor"] == "admin_api" && e["token"] == "write" && e["client"] == "127.0.0.1"));
    assert_eq!(events[2]["changes"]["secret"], "replaced");
    assert!(!events.to_string().contains(&new_secret) && !events.to_string().contains(&secret));
    let page = call(
        &h,
        &c,
        Method::GET,
        &format!("/v1/keys/{id}/events?limit=2"),
        "/v1/keys/{id}/events",
        None,
    )
    .await;
    assert_eq!(page.json().as_array().unwrap().len(), 2);
    assert!(page.headers.get("x-next-cursor").is_some());
    let path = format!("/v1/keys/{id}/events?limit=8");
    let whole = call(&h, &c, Method::GET, &path, "/v1/keys/{id}/events", None).await;
    assert_eq!(whole.json().as_array().unwrap().len(), 8);
    assert!(
        whole.headers.get("x-next-cursor").is_none(),
        "a full last page has no next page"
    );

    // The token's access, and this replica's recent requests.
    let access = call(&h, &c, Method::GET, "/v1/token", "/v1/token", None).await;
    assert_eq!(access.json(), json!({ "access": "write" }));
    h.get("/v1/status", "kg_prod_not_a_key_at_all").await;
    let recent = call(&h, &c, Method::GET, "/v1/requests?limit=5", "/v1/requests", None).await;
    assert_eq!(recent.json()["items"][0]["status"], 401);

    // Usage analytics: a series, a bad parameter, an unknown key.
    let path = format!("/v1/usage?key_id={id}&group_by=status");
    let usage = call(&h, &c, Method::GET, &path, "/v1/usage", None).await;
    assert!(usage.json()["series"].is_array());
    assert_eq!(
        call(&h, &c, Method::GET, "/v1/usage", "/v1/usage", None)
            .await
            .status,
        400
    );
    let unknown = call(&h, &c, Method::GET, "/v1/usage?key_id=nope", "/v1/usage", None).await;
    assert_eq!(unknown.status, 404);
    // A leak report: a key's secret, audited as `leaked` by `api`; anything else is `unknown`.
    let (leaked, leaked_secret) = h.key(&[]).await;
    let report = json!({"key": leaked_secret, "source": "trufflehog", "url": "https://example.com/x"});
    let reported = call(&h, &c, Method::POST, "/v1/leaks", "/v1/leaks", Some(report)).await;
    assert_eq!(reported.json(), json!({"result": "revoked", "key_id": leaked}));
    let unknown = json!({"key": "kg_prod_not_a_key_at_all"});
    let unknown = call(&h, &c, Method::POST, "/v1/leaks", "/v1/leaks", Some(unknown)).await;
    assert_eq!(unknown.json()["result"], "unknown");
    let path = format!("/v1/keys/{leaked}/events");
    let events = call(&h, &c, Method::GET, &path, "/v1/keys/{id}/events", None).await;
    assert_eq!(events.json()[1]["actor"], "api");

    // Customers: created with every field, read with its quota's state, listed, changed,
    // topped up, audited, refused while a key names it, deleted.
    let acme = json!({"id": "acme co", "name": "Acme", "rate_limit": {"requests": 10, "per": "1s"},
                      "quota": {"limit": 100, "period": "month"}, "metadata": {"plan": "gold"}});
    let created = call(
        &h,
        &c,
        Method::POST,
        "/v1/customers",
        "/v1/customers",
        Some(acme.clone()),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let again = call(&h, &c, Method::POST, "/v1/customers", "/v1/customers", Some(acme)).await;
    assert_eq!(again.status, 409);
    let one = "/v1/customers/{id}";
    let shown = call(&h, &c, Method::GET, "/v1/customers/acme%20co", one, None).await;
    assert_eq!(shown.json()["quota_state"]["remaining"], 100);
    let listed = call(
        &h,
        &c,
        Method::GET,
        "/v1/customers?limit=10",
        "/v1/customers",
        None,
    )
    .await;
    assert_eq!(listed.json()[0]["id"], "acme co");
    let patch = json!({"name": "Acme Co", "rate_limit": null, "metadata": null});
    let patched = call(&h, &c, Method::PATCH, "/v1/customers/acme%20co", one, Some(patch)).await;
    assert_eq!(patched.json()["name"], "Acme Co");
    let topped = call(
        &h,
        &c,
        Method::POST,
        "/v1/customers/acme%20co/quota",
        "/v1/customers/{id}/quota",
        Some(json!({"add": 5})),
    )
    .await;
    assert_eq!(topped.json()["limit"], 105);
    let mut scoped = support::spec(Environment::Production, &[]);
    scoped.customer_id = Some("acme co".into());
    let (scoped_id, _) = h.create_key(scoped).await;
    let busy = call(&h, &c, Method::DELETE, "/v1/customers/acme%20co", one, None).await;
    assert_eq!(busy.status, 409);
    h.keys.delete(&scoped_id).unwrap();
    let gone = call(&h, &c, Method::DELETE, "/v1/customers/acme%20co", one, None).await;
    assert_eq!(gone.status, 204);
    let trail = call(
        &h,
        &c,
        Method::GET,
        "/v1/customers/acme%20co/events",
        "/v1/customers/{id}/events",
        None,
    )
    .await;
    assert_eq!(trail.json().as_array().unwrap().len(), 4);
    let missing = call(&h, &c, Method::GET, "/v1/customers/acme%20co", one, None).await;
    assert_eq!(missing.status, 404);

    // The document itself.
    let doc = call(&h, &c, Method::GET, "/v1/openapi.json", "/v1/openapi.json", None).await;
    assert_eq!(doc.json()["openapi"], "3.1.0");

    c.assert_all_covered();
}

#[tokio::test]
async fn the_admin_token_is_required_and_checked() {
    let h = Harness::start().await;
    let c = Contract::new();
    for token in [
        "",
        "wrong",
        "test-admin-token-012345678",
        "test-admin-token-0123456789x",
    ] {
        let answer = admin(&h, Method::GET, "/v1/keys", None, Some(token)).await;
        assert_eq!(answer.status, 401, "token {token:?}");
        c.check(&Method::GET, "/v1/keys", &answer);
        assert!(answer.headers.get("www-authenticate").is_some());
    }
    // Basic or a second Authorization header is not the bearer token.
    let request = Request::get(h.admin_url("/v1/keys"))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .header("authorization", "Bearer other")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(h.send(request).await.status, 401);
    assert_eq!(admin(&h, Method::GET, "/v1/keys", None, None).await.status, 200);
    // The open endpoints stay open.
    assert_eq!(h.admin_get("/healthz").await.status, 200);
    assert_eq!(h.admin_get("/metrics").await.status, 200);
}

#[tokio::test]
async fn a_gateway_without_an_admin_token_says_so_and_the_page_shows_it() {
    let h = Harness::start().await;
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    let config = keygate::config::parse(&text, h.dir.path()).unwrap();
    let options = keygate::gateway::Options {
        admin_token: None,
        admin_read_token: None,
        ..h.options()
    };
    let tokenless = keygate::gateway::Gateway::start(config, options).await.unwrap();
    let answer = support::admin_call(&tokenless, "GET", "/v1/token", "").await;
    assert_eq!(answer.status, 401);
    assert!(answer.headers.contains_key("www-authenticate"));
    let error = answer.json()["error"].as_str().unwrap().to_owned();
    assert!(
        error.starts_with("no admin token is configured: set the environment variable KEYGATE_ADMIN_TOKEN"),
        "{error}"
    );
    // A gateway with a token still says only that one is required.
    let answer = admin(&h, Method::GET, "/v1/token", None, Some("wrong")).await;
    assert_eq!(answer.text(), r#"{"error":"admin token required"}"#);
    // The page tells the two apart by these words.
    let signin = support::admin_call(&tokenless, "GET", "/ui/signin.js", "")
        .await
        .text();
    assert!(
        signin.contains(r#"const NO_TOKEN = "no admin token is configured: ";"#)
            && signin.contains("This gateway has no admin token configured"),
        "{signin}"
    );
}

#[tokio::test]
async fn bad_bodies_get_400_naming_the_field() {
    let h = Harness::start().await;
    let c = Contract::new();
    let cases: &[(&str, &str)] = &[
        ("{", "body"),
        ("[]", "body"),
        (r#"{"name": "x"}"#, "environment"),
        (r#"{"name": "x", "environment": "moon"}"#, "environment"),
        (r#"{"name": 5, "environment": "production"}"#, "name"),
        (
            r#"{"name": "x", "environment": "production", "colour": "red"}"#,
            "colour",
        ),
        (
            r#"{"name": "x", "environment": "production", "permissions": ["no spaces allowed"]}"#,
            "permissions[0]",
        ),
        (
            r#"{"name": "x", "environment": "production", "rate_limit": {"requests": 0, "per": "1s"}}"#,
            "rate_limit.requests",
        ),
        (
            r#"{"name": "x", "environment": "production", "rate_limit": {"requests": 5, "per": "soon"}}"#,
            "rate_limit.per",
        ),
        (
            r#"{"name": "x", "environment": "production", "rate_limit": {"requests": 5, "per": "1s", "x": 1}}"#,
            "rate_limit.x",
        ),
        (
            r#"{"name": "x", "environment": "production", "allowed_ips": ["10.0.0.0/33"]}"#,
            "allowed_ips[0]",
        ),
        (
            r#"{"name": "x", "environment": "production", "expires_at": "yesterday"}"#,
            "expires_at",
        ),
        (
            r#"{"name": "x", "environment": "production", "expires_at": "2001-01-01T00:00:00Z"}"#,
            "expires_at",
        ),
        (
            r#"{"name": "x", "environment": "production", "expires_in": "-1d"}"#,
            "expires_in",
        ),
        (r#"{"name": "", "environment": "production"}"#, "name"),
        (
            r#"{"name": "x", "environment": "production", "key": "short"}"#,
            "key",
        ),
        (
            r#"{"name": "x", "environment": "production", "metadata": []}"#,
            "metadata",
        ),
        (r#"{"name": "x", "environment": "production"} {}"#, "body"),
        // Limits governor could not hold (they used to panic the proxy).
        (
            r#"{"name": "x", "environment": "production", "rate_limit": {"requests": 1, "per": "99999999d", "burst": 1}}"#,
            "rate_limit",
        ),
        (
            r#"{"name": "x", "environment": "production", "rate_limit": {"requests": 1, "per": "1d", "burst": 4294967295}}"#,
            "rate_limit",
        ),
    ];
    for (body, field) in cases {
        let answer = admin(&h, Method::POST, "/v1/keys", Some(body), None).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.text());
        c.check(&Method::POST, "/v1/keys", &answer);
        assert_eq!(answer.json()["field"], *field, "{body}: {}", answer.text());
    }
    // Nothing was created by any of them.
    assert_eq!(
        admin(&h, Method::GET, "/v1/keys", None, None).await.json(),
        json!([])
    );

    let (id, _) = h.key(&["customer:read"]).await;
    let path = format!("/v1/keys/{id}");
    for (body, field) in [
        (r#"{"permissions": "customer:read"}"#, "permissions"),
        (r#"{"status": "active"}"#, "status"),
        ("{}", "body"),
    ] {
        let answer = admin(&h, Method::PATCH, &path, Some(body), None).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.text());
        c.check(&Method::PATCH, "/v1/keys/{id}", &answer);
        assert_eq!(answer.json()["field"], field, "{body}");
    }
    let answer = admin(
        &h,
        Method::POST,
        &format!("{path}/regenerate"),
        Some(r#"{"grace": "40d"}"#),
        None,
    )
    .await;
    assert_eq!(
        (answer.status.as_u16(), answer.json()["field"].as_str()),
        (400, Some("grace"))
    );
    let answer = admin(
        &h,
        Method::POST,
        &format!("{path}/revoke"),
        Some(r#"{"why": "x"}"#),
        None,
    )
    .await;
    assert_eq!(
        (answer.status.as_u16(), answer.json()["field"].as_str()),
        (400, Some("why"))
    );
    let answer = admin(
        &h,
        Method::POST,
        "/v1/keys/verify",
        Some(r#"{"permission": "customer:read"}"#),
        None,
    )
    .await;
    assert_eq!(
        (answer.status.as_u16(), answer.json()["field"].as_str()),
        (400, Some("key"))
    );
    for query in [
        "status=deleted",
        "environment=moon",
        "limit=0",
        "limit=5000",
        "cursor=abc",
        "cursor=18446744073709551615",
        "cursor=-1",
        "sort=name",
    ] {
        let answer = admin(&h, Method::GET, &format!("/v1/keys?{query}"), None, None).await;
        assert_eq!(answer.status, 400, "{query}");
        c.check(&Method::GET, "/v1/keys", &answer);
    }
}

/// Words a client should never read in an answer: Rust type names and jiff's internals.
const INTERNAL: [&str; 6] = [
    "struct",
    "RateLimitSpec",
    "NonZero",
    "u32",
    "unix-seconds",
    "time component",
];

#[tokio::test]
async fn expiry_takes_a_date_as_midnight_utc_and_refuses_past_9999_naming_the_field() {
    let h = Harness::start().await;
    let c = Contract::new();
    let created = admin(
        &h,
        Method::POST,
        "/v1/keys",
        Some(r#"{"name": "x", "environment": "production", "expires_at": "2099-01-31"}"#),
        None,
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
    c.check(&Method::POST, "/v1/keys", &created);
    assert_eq!(created.json()["expires_at"], "2099-01-31T00:00:00Z");
    let path = format!("/v1/keys/{}", created.json()["id"].as_str().unwrap());
    let patched = admin(
        &h,
        Method::PATCH,
        &path,
        Some(r#"{"expires_at": "2098-12-31"}"#),
        None,
    )
    .await;
    assert_eq!(patched.status, 200, "{}", patched.text());
    assert_eq!(patched.json()["expires_at"], "2098-12-31T00:00:00Z");

    // "Never", written as the last day there is: refused in words, on create and on change.
    for (method, path, template, body) in [
        (
            Method::POST,
            "/v1/keys",
            "/v1/keys",
            r#"{"name": "x", "environment": "production", "expires_at": "9999-12-31"}"#,
        ),
        (
            Method::POST,
            "/v1/keys",
            "/v1/keys",
            r#"{"name": "x", "environment": "production", "expires_at": "9999-12-31T23:59:59Z"}"#,
        ),
        (
            Method::PATCH,
            path.as_str(),
            "/v1/keys/{id}",
            r#"{"expires_at": "9999-12-31"}"#,
        ),
    ] {
        let answer = admin(&h, method.clone(), path, Some(body), None).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.text());
        c.check(&method, template, &answer);
        let error = answer.json();
        assert_eq!(error["field"], "expires_at", "{body}");
        let message = error["error"].as_str().unwrap();
        assert!(message.contains("9999-12-30T22:00:00Z"), "{body}: {message}");
        for internal in INTERNAL {
            assert!(!message.contains(internal), "{body}: {message}");
        }
    }

    // A value of the wrong type is answered with the shape the field takes, not a Rust type.
    for (body, field, says) in [
        (
            r#"{"name": "x", "environment": "production", "rate_limit": "5/s"}"#,
            "rate_limit",
            r#"got string "5/s", expected {"requests":N,"per":"1s","burst":N} or null"#,
        ),
        (
            r#"{"name": "x", "environment": "production", "expires_at": 5}"#,
            "expires_at",
            "got integer `5`, expected an RFC 3339 instant",
        ),
        (
            r#"{"name": "x", "environment": "production", "expires_at": "2099-01-31T10:00:00"}"#,
            "expires_at",
            "has no offset",
        ),
        (
            r#"{"name": "x", "environment": "production", "rate_limit": {"requests": 0, "per": "1s"}}"#,
            "rate_limit.requests",
            "got integer `0`, expected a whole number from 1",
        ),
    ] {
        let answer = admin(&h, Method::POST, "/v1/keys", Some(body), None).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.text());
        let error = answer.json();
        assert_eq!(error["field"], field, "{body}");
        let message = error["error"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
        for internal in INTERNAL {
            assert!(!message.contains(internal), "{body}: {message}");
        }
    }
    assert_eq!(
        admin(&h, Method::GET, "/v1/keys", None, None)
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn huge_bodies_wrong_types_and_unknown_paths() {
    let h = Harness::start().await;
    let c = Contract::new();
    let huge = format!(
        r#"{{"name": "{}", "environment": "production"}}"#,
        "x".repeat(100_000)
    );
    let answer = admin(&h, Method::POST, "/v1/keys", Some(&huge), None).await;
    assert_eq!(answer.status, 413);
    c.check(&Method::POST, "/v1/keys", &answer);

    let request = Request::post(h.admin_url("/v1/keys"))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(b"name=x")))
        .unwrap();
    let answer = h.send(request).await;
    assert_eq!(answer.status, 415);
    c.check(&Method::POST, "/v1/keys", &answer);

    let answer = admin(&h, Method::GET, "/v1/keys/key_doesNotExist", None, None).await;
    assert_eq!(answer.status, 404);
    c.check(&Method::GET, "/v1/keys/{id}", &answer);
    for (method, path) in [
        (Method::POST, "/v1/keys/key_nope/revoke"),
        (Method::DELETE, "/v1/keys/key_nope"),
        (Method::GET, "/v1/keys/key_nope/usage"),
        (Method::GET, "/v1/keys/key_nope/events"),
    ] {
        assert_eq!(
            admin(&h, method.clone(), path, None, None).await.status,
            404,
            "{method} {path}"
        );
    }
    assert_eq!(
        admin(&h, Method::GET, "/v1/nothing", None, None).await.status,
        404
    );
    let answer = admin(&h, Method::PUT, "/v1/keys", None, None).await;
    assert_eq!(answer.status, 405);
    assert_eq!(answer.headers.get("allow").unwrap(), "GET, HEAD, POST");
    let head = admin(&h, Method::HEAD, "/v1/keys", None, None).await;
    assert_eq!((head.status.as_u16(), head.body.len()), (200, 0));
}

#[tokio::test]
async fn verify_counts_against_the_rate_limit_and_sees_expiry() {
    let h = Harness::start().await;
    let c = Contract::new();
    let created = admin(
        &h,
        Method::POST,
        "/v1/keys",
        Some(r#"{"name": "tight", "environment": "production", "rate_limit": {"requests": 2, "per": "1h"}}"#),
        None,
    )
    .await;
    let secret = created.json()["key"].as_str().unwrap().to_owned();
    let id = created.json()["id"].as_str().unwrap().to_owned();
    h.sync().await;
    let body = json!({"key": secret}).to_string();
    let mut codes = Vec::new();
    for _ in 0..3 {
        let answer = admin(&h, Method::POST, "/v1/keys/verify", Some(&body), None).await;
        c.check(&Method::POST, "/v1/keys/verify", &answer);
        assert!(answer.headers.get("ratelimit-limit").is_some());
        codes.push(answer.json()["code"].as_str().unwrap().to_owned());
    }
    assert_eq!(codes, ["VALID", "VALID", "RATE_LIMITED"]);
    // The proxy shares the same bucket.
    assert_eq!(h.get("/v1/status", &secret).await.status, 429);

    let patch =
        json!({"expires_at": (h.clock_now() + std::time::Duration::from_secs(60)).to_string()}).to_string();
    assert_eq!(
        admin(&h, Method::PATCH, &format!("/v1/keys/{id}"), Some(&patch), None)
            .await
            .status,
        200
    );
    h.sync().await;
    h.clock.advance(std::time::Duration::from_secs(61));
    let answer = admin(&h, Method::POST, "/v1/keys/verify", Some(&body), None).await;
    assert_eq!(answer.json()["code"], "EXPIRED");
    let listed = admin(&h, Method::GET, "/v1/keys?status=expired", None, None).await;
    assert_eq!(listed.json()[0]["id"], id.as_str());
}

#[tokio::test]
async fn a_revoked_key_regenerated_with_grace_cannot_bring_its_old_secret_back() {
    let h = Harness::start().await;
    let (id, old) = h.key(&["*"]).await;
    let revoke = format!("/v1/keys/{id}/revoke");
    assert_eq!(admin(&h, Method::POST, &revoke, None, None).await.status, 200);
    let regenerate = format!("/v1/keys/{id}/regenerate");
    let answer = admin(&h, Method::POST, &regenerate, Some(r#"{"grace": "10m"}"#), None).await;
    assert_eq!(
        (answer.status.as_u16(), answer.json()["field"].as_str()),
        (400, Some("grace"))
    );
    let regenerated = admin(&h, Method::POST, &regenerate, None, None).await;
    assert_eq!(regenerated.status, 200);
    let activate = format!("/v1/keys/{id}/activate");
    assert_eq!(admin(&h, Method::POST, &activate, None, None).await.status, 200);
    h.sync().await;
    assert_eq!(
        h.get("/v1/status", &old).await.status,
        401,
        "the leaked secret stays dead"
    );
    let new = regenerated.json()["key"].as_str().unwrap().to_owned();
    assert_eq!(h.get("/v1/status", &new).await.status, 200);
}

#[tokio::test]
async fn verify_fails_closed_past_max_staleness_like_the_proxy() {
    let template = support::STANDARD.edit(
        "sync_interval = \"100ms\"",
        "sync_interval = \"1h\"\nmax_staleness = \"5s\"",
    );
    let h = Harness::with_config(&template, "").await;
    let (_, key) = h.key(&["*"]).await;
    let body = json!({ "key": key }).to_string();
    let answer = admin(&h, Method::POST, "/v1/keys/verify", Some(&body), None).await;
    assert_eq!(answer.json()["code"], "VALID");
    let gauge = |metrics: &str, name| support::sample(metrics, name);
    let metrics = h.metrics().await;
    assert_eq!(gauge(&metrics, "keygate_ready"), Some(1.0));
    assert_eq!(
        gauge(&metrics, "keygate_rate_limit_shared"),
        Some(0.0),
        "local limits"
    );
    h.clock.advance(std::time::Duration::from_secs(60));
    assert_eq!(h.get("/v1/status", &key).await.status, 503);
    assert_eq!(
        gauge(&h.metrics().await, "keygate_ready"),
        Some(0.0),
        "as /readyz says"
    );
    let answer = admin(&h, Method::POST, "/v1/keys/verify", Some(&body), None).await;
    assert_eq!(answer.status, 503);
    Contract::new().check(&Method::POST, "/v1/keys/verify", &answer);
}

#[tokio::test]
async fn an_import_of_a_secret_in_use_is_a_conflict_that_names_no_key() {
    let h = Harness::start().await;
    let (id, old) = h.key(&["customer:read"]).await;
    let regenerate = format!("/v1/keys/{id}/regenerate");
    let regenerated = admin(&h, Method::POST, &regenerate, Some(r#"{"grace":"10m"}"#), None).await;
    assert_eq!(regenerated.status, 200);
    let new = regenerated.json()["key"].as_str().unwrap().to_owned();
    for secret in [&old, &new] {
        let body = json!({ "name": "B", "environment": "production", "permissions": ["*"], "key": secret });
        let answer = admin(&h, Method::POST, "/v1/keys", Some(&body.to_string()), None).await;
        assert_eq!(answer.status, 409);
        assert_eq!(
            answer.json(),
            json!({ "error": "this secret is already in use", "field": "key" })
        );
        Contract::new().check(&Method::POST, "/v1/keys", &answer);
    }
    h.sync().await;
    let answer = h.get("/v1/customers/acme", &old).await;
    assert_eq!(
        answer.status, 200,
        "the old secret is still A's, in its grace period"
    );
    assert_eq!(h.upstream.last().headers["x-keygate-key-id"], id.as_str());
}

#[tokio::test]
async fn every_admin_change_is_in_force_on_the_answering_gateway_when_it_answers() {
    // No periodic sync within the test: only the change's own sync can bring it in.
    let template = support::STANDARD.edit("sync_interval = \"100ms\"", "sync_interval = \"1h\"");
    let h = Harness::with_config(&template, "").await;
    let post = |path: String, body: Option<Value>| {
        let h = &h;
        async move {
            let text = body.map(|b| b.to_string());
            admin(h, Method::POST, &path, text.as_deref(), None).await
        }
    };
    let status = |key: String| {
        let h = &h;
        async move { h.get("/v1/customers/acme", &key).await.status.as_u16() }
    };
    let body = json!({ "name": "A", "environment": "production", "permissions": ["customer:read"] });
    let created = post("/v1/keys".into(), Some(body)).await;
    assert_eq!(created.status, 201);
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let key = created.json()["key"].as_str().unwrap().to_owned();
    assert_eq!(status(key.clone()).await, 200, "created");

    assert_eq!(post(format!("/v1/keys/{id}/revoke"), None).await.status, 200);
    assert_eq!(status(key.clone()).await, 401, "revoked");
    assert_eq!(post(format!("/v1/keys/{id}/activate"), None).await.status, 200);
    assert_eq!(status(key.clone()).await, 200, "activated");

    let patch = json!({ "permissions": ["license:read"] }).to_string();
    let updated = admin(&h, Method::PATCH, &format!("/v1/keys/{id}"), Some(&patch), None).await;
    assert_eq!(updated.status, 200);
    assert_eq!(status(key.clone()).await, 403, "updated");

    let regenerated = post(format!("/v1/keys/{id}/regenerate"), None).await;
    let new = regenerated.json()["key"].as_str().unwrap().to_owned();
    assert_eq!(status(key).await, 401, "regenerated: the old secret stops");
    assert_eq!(status(new.clone()).await, 403, "regenerated: the new one works");

    let deleted = admin(&h, Method::DELETE, &format!("/v1/keys/{id}"), None, None).await;
    assert_eq!(deleted.status, 204);
    assert_eq!(status(new).await, 401, "deleted");

    let imported = json!({ "name": "B", "environment": "production", "permissions": ["*"], "key": "legacy-secret-0123456789" });
    assert_eq!(post("/v1/keys".into(), Some(imported)).await.status, 201);
    assert_eq!(status("legacy-secret-0123456789".into()).await, 200, "imported");
}

#[tokio::test]
async fn metrics_include_the_process_resident_memory_open_files_and_cpu() {
    let h = Harness::start().await;
    let metrics = h.metrics().await;
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
    ] {
        // CPU seconds may still round to 0 in a fresh test process; present is what counts.
        let value = support::sample(&metrics, name);
        assert!(value.is_some_and(|v| v >= 0.0), "{name}: {value:?}");
    }
    for name in ["process_resident_memory_bytes", "process_open_fds"] {
        assert!(support::sample(&metrics, name).is_some_and(|v| v > 0.0), "{name}");
    }
}

#[tokio::test]
async fn the_read_only_token_reads_and_verifies_but_changes_nothing() {
    let h = Harness::start().await;
    let c = Contract::new();
    let (id, secret) = h.key(&["customer:read"]).await;
    let read = |method: Method, path: &str, body: Option<&'static str>| {
        let h = &h;
        let path = path.to_owned();
        async move { admin(h, method, &path, body, Some(READ_TOKEN)).await }
    };

    let access = read(Method::GET, "/v1/token", None).await;
    assert_eq!(access.json(), json!({ "access": "read" }));
    for path in [
        "/v1/keys".to_owned(),
        format!("/v1/keys/{id}"),
        format!("/v1/keys/{id}/usage"),
        format!("/v1/keys/{id}/events"),
        "/v1/requests".to_owned(),
        "/v1/openapi.json".to_owned(),
    ] {
        assert_eq!(read(Method::GET, &path, None).await.status, 200, "GET {path}");
    }
    let verify = format!(r#"{{"key":"{secret}"}}"#);
    let verdict = admin(
        &h,
        Method::POST,
        "/v1/keys/verify",
        Some(&verify),
        Some(READ_TOKEN),
    )
    .await;
    assert_eq!(verdict.json()["valid"], true);

    let writes: [(Method, String, &str, Option<&'static str>); 7] = [
        (
            Method::POST,
            "/v1/keys".into(),
            "/v1/keys",
            Some(r#"{"name":"x","environment":"production"}"#),
        ),
        (
            Method::PATCH,
            format!("/v1/keys/{id}"),
            "/v1/keys/{id}",
            Some(r#"{"name":"renamed"}"#),
        ),
        (
            Method::POST,
            format!("/v1/keys/{id}/regenerate"),
            "/v1/keys/{id}/regenerate",
            None,
        ),
        (
            Method::POST,
            format!("/v1/keys/{id}/revoke"),
            "/v1/keys/{id}/revoke",
            None,
        ),
        (
            Method::POST,
            format!("/v1/keys/{id}/activate"),
            "/v1/keys/{id}/activate",
            None,
        ),
        (Method::DELETE, format!("/v1/keys/{id}"), "/v1/keys/{id}", None),
        // Unknown paths too: a read-only token learns nothing by writing.
        (Method::POST, "/v1/nothing".into(), "", None),
    ];
    for (method, path, template, body) in writes {
        let answer = read(method.clone(), &path, body).await;
        assert_eq!(answer.status, 403, "{method} {path}");
        assert_eq!(answer.json(), json!({ "error": "read-only admin token" }));
        if !template.is_empty() {
            c.check(&method, template, &answer);
        }
    }
    // Nothing changed: the key works, with its name, and its trail holds its creation only.
    assert_eq!(h.get("/v1/customers/c1", &secret).await.status, 200);
    let key = admin(&h, Method::GET, &format!("/v1/keys/{id}"), None, None).await;
    assert_eq!(key.json()["status"], "active");
    let events = admin(&h, Method::GET, &format!("/v1/keys/{id}/events"), None, None).await;
    assert_eq!(events.json().as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn recent_requests_show_each_answer_with_its_reason_newest_first() {
    let h = Harness::start().await;
    let c = Contract::new();
    let (id, secret) = h.key(&["customer:read"]).await;
    let (other, other_secret) = h.key(&["customer:read"]).await;
    assert_eq!(h.get("/v1/customers/c1?token=hidden", &secret).await.status, 200);
    assert_eq!(
        h.call("DELETE", "/v1/customers/c1", Some(&secret), &[])
            .await
            .status,
        403
    );
    assert_eq!(h.get("/v1/customers/c2", &other_secret).await.status, 200);
    assert_eq!(h.get("/v1/status", "kg_prod_not_a_key_at_all").await.status, 401);

    let mine = call(
        &h,
        &c,
        Method::GET,
        &format!("/v1/requests?key_id={id}"),
        "/v1/requests",
        None,
    )
    .await;
    let mine = mine.json();
    let items = mine["items"].as_array().unwrap();
    assert_eq!(mine["capacity"], 10_000);
    assert_eq!(items.len(), 2, "{mine}");
    assert_eq!(items[0]["status"], 403);
    assert_eq!(items[0]["method"], "DELETE");
    assert_eq!(items[0]["reason"], "permission");
    assert_eq!(items[0]["route"], "customers");
    assert_eq!(items[1]["status"], 200);
    assert_eq!(items[1]["reason"], Value::Null);
    assert_eq!(items[1]["path"], "/v1/customers/c1", "no query string");
    assert!(items[1]["upstream_ms"].is_number());
    assert_eq!(items[1]["environment"], "production");
    assert_eq!(items[1]["client"], "127.0.0.1");

    let refused = admin(&h, Method::GET, "/v1/requests?status=4xx", None, None)
        .await
        .json();
    let statuses: Vec<&Value> = refused["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["status"])
        .collect();
    assert_eq!(statuses, [&json!(401), &json!(403)]);
    assert_eq!(refused["items"][0]["reason"], "malformed");
    let one = admin(&h, Method::GET, "/v1/requests?limit=1", None, None)
        .await
        .json();
    assert_eq!(one["items"].as_array().unwrap().len(), 1);
    let others = admin(
        &h,
        Method::GET,
        &format!("/v1/requests?key_id={other}&status=200"),
        None,
        None,
    )
    .await;
    assert_eq!(others.json()["items"].as_array().unwrap().len(), 1);
    // Nothing the log must not hold: no secret, no query string.
    let all = admin(&h, Method::GET, "/v1/requests", None, None).await.text();
    assert!(!all.contains(&secret) && !all.contains("hidden"), "{all}");

    for bad in [
        "status=abc",
        "status=6xx",
        "limit=0",
        "limit=1001",
        "limit=x",
        "cursor=x",
        "cursor=-1",
    ] {
        let answer = call(
            &h,
            &c,
            Method::GET,
            &format!("/v1/requests?{bad}"),
            "/v1/requests",
            None,
        )
        .await;
        assert_eq!(answer.status, 400, "{bad}");
    }
}

#[tokio::test]
async fn recent_requests_page_back_by_cursor_newest_first() {
    let h = Harness::start().await;
    let c = Contract::new();
    let (id, secret) = h.key(&[]).await;
    let (_, other) = h.key(&[]).await;
    for n in 0..5 {
        assert_eq!(h.get(&format!("/v1/status/{n}"), &secret).await.status, 200);
        assert_eq!(h.get("/v1/status/other", &other).await.status, 200);
    }
    let mut path = format!("/v1/requests?key_id={id}&limit=2");
    let mut pages = Vec::new();
    loop {
        let answer = call(&h, &c, Method::GET, &path, "/v1/requests", None).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        let paths: Vec<String> = answer.json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["path"].as_str().unwrap().to_owned())
            .collect();
        pages.push(paths);
        let Some(next) = answer.headers.get("x-next-cursor") else {
            assert!(answer.headers.get("link").is_none());
            break;
        };
        let next = next.to_str().unwrap();
        let link = answer.headers["link"].to_str().unwrap();
        assert_eq!(
            link,
            format!("</v1/requests?key_id={id}&limit=2&cursor={next}>; rel=\"next\"")
        );
        path = format!("/v1/requests?key_id={id}&limit=2&cursor={next}");
    }
    assert_eq!(
        pages,
        [
            vec!["/v1/status/4", "/v1/status/3"],
            vec!["/v1/status/2", "/v1/status/1"],
            vec!["/v1/status/0"],
        ]
    );
    // Newer records do not move a page already asked for.
    let second = format!("/v1/requests?key_id={id}&limit=2&cursor=");
    let first = admin(
        &h,
        Method::GET,
        &format!("/v1/requests?key_id={id}&limit=2"),
        None,
        None,
    )
    .await;
    let cursor = first.headers["x-next-cursor"].to_str().unwrap().to_owned();
    assert_eq!(h.get("/v1/status/5", &secret).await.status, 200);
    let again = admin(&h, Method::GET, &format!("{second}{cursor}"), None, None).await;
    assert_eq!(again.json()["items"][0]["path"], "/v1/status/2");
}

#[tokio::test]
async fn usage_says_when_this_replica_last_wrote_its_counts() {
    // No flush but the ones the test asks for.
    let template = support::STANDARD.set("store", "usage_flush_interval = \"1h\"");
    let h = Harness::with_config(&template, "").await;
    let c = Contract::new();
    let (id, secret) = h.key(&[]).await;
    let path = format!("/v1/keys/{id}/usage");
    let before = call(&h, &c, Method::GET, &path, "/v1/keys/{id}/usage", None).await;
    assert_eq!(before.json()["flushed_at"], Value::Null, "{}", before.text());

    assert_eq!(h.get("/v1/status", &secret).await.status, 200);
    let at: jiff::Timestamp = "2031-05-06T07:08:09Z".parse().unwrap();
    h.clock.set(at);
    h.gateway.flush_usage().await;
    let after = call(&h, &c, Method::GET, &path, "/v1/keys/{id}/usage", None).await;
    let after = after.json();
    assert_eq!(after["flushed_at"], "2031-05-06T07:08:09Z");
    assert_eq!(after["total_requests"], 1);

    // A flush with nothing to write still brings the counts up to its time.
    let later: jiff::Timestamp = "2031-05-06T07:09:00Z".parse().unwrap();
    h.clock.set(later);
    h.gateway.flush_usage().await;
    let again = admin(&h, Method::GET, &path, None, None).await.json();
    assert_eq!(again["flushed_at"], "2031-05-06T07:09:00Z");
}

#[tokio::test]
async fn recent_requests_can_be_switched_off() {
    let h = Harness::with_config(support::STANDARD, "[logs]\nrecent = 0\n").await;
    let (_, secret) = h.key(&[]).await;
    assert_eq!(h.get("/v1/status", &secret).await.status, 200);
    let recent = admin(&h, Method::GET, "/v1/requests", None, None).await.json();
    assert_eq!(recent, json!({ "items": [], "capacity": 0 }));
}

#[tokio::test]
async fn verify_is_throttled_per_token_and_address_once_its_failures_pass_the_allowance() {
    let template = support::STANDARD.edit("failed_per_ip = \"1000/m\"", "failed_per_ip = \"3/h\"");
    let h = Harness::with_config(&template, "").await;
    let c = Contract::new();
    let (_, secret) = h.create_key(support::spec(Environment::Production, &["*"])).await;
    let guess = json!({"key": "an-imported-guess-0001"}).to_string();
    let valid = json!({"key": secret}).to_string();
    for _ in 0..3 {
        let answer = admin(&h, Method::POST, "/v1/keys/verify", Some(&guess), None).await;
        assert_eq!(answer.json()["code"], "NOT_FOUND");
    }
    let refused = admin(&h, Method::POST, "/v1/keys/verify", Some(&guess), None).await;
    c.check(&Method::POST, "/v1/keys/verify", &refused);
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(
        refused.json(),
        json!({"error": "too many failed authentications"})
    );
    let retry_after: u64 = refused.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    // A valid key still gets its verdict from the throttled caller, as on the proxy.
    let answer = admin(&h, Method::POST, "/v1/keys/verify", Some(&valid), None).await;
    assert_eq!(
        (answer.status.as_u16(), answer.json()["code"].as_str()),
        (200, Some("VALID"))
    );
    // The read-only token has an allowance of its own.
    let answer = admin(
        &h,
        Method::POST,
        "/v1/keys/verify",
        Some(&guess),
        Some(READ_TOKEN),
    )
    .await;
    assert_eq!(
        (answer.status.as_u16(), answer.json()["code"].as_str()),
        (200, Some("NOT_FOUND"))
    );
}

#[tokio::test]
async fn answers_that_carry_a_secret_are_never_cached() {
    let h = Harness::start().await;
    let created = admin(
        &h,
        Method::POST,
        "/v1/keys",
        Some(r#"{"name": "cached?", "environment": "production"}"#),
        None,
    )
    .await;
    assert_eq!(created.status, 201);
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let regenerated = admin(&h, Method::POST, &format!("/v1/keys/{id}/regenerate"), None, None).await;
    let imported = admin(
        &h,
        Method::POST,
        "/v1/keys",
        Some(r#"{"name": "imported", "environment": "production", "key": "an-imported-secret-0001"}"#),
        None,
    )
    .await;
    assert_eq!(imported.status, 201, "{}", imported.text());
    let refused = admin(&h, Method::POST, "/v1/keys", Some("{"), None).await;
    let read_only = admin(&h, Method::POST, "/v1/keys", Some("{}"), Some(READ_TOKEN)).await;
    for (what, answer) in [
        ("create", &created),
        ("regenerate", &regenerated),
        ("import", &imported),
        ("a 400", &refused),
        ("a read-only 403", &read_only),
    ] {
        assert_eq!(
            answer.headers.get("cache-control").map(|v| v.to_str().unwrap()),
            Some("no-store"),
            "{what}"
        );
    }
}
