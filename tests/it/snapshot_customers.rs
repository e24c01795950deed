//! A gateway started from its saved table (`store.snapshot`) while the store is down holds its
//! keys to their customers' limits as they were saved: the customer's object is in the
//! snapshot written whole, its later change in the journal.

use serde_json::json;

use crate::store_faults::{restart_with_the_store_locked, with_store, written_whole_with};
use crate::support::{admin_call, spec, Harness};
use keygate::core::environment::Environment;

#[tokio::test]
async fn a_start_from_the_saved_table_enforces_the_customers_limits() {
    let h = Harness::with_config(&with_store("100ms", "snapshot = \"table.snap\""), "").await;
    let body = json!({"id": "acme", "rate_limit": {"requests": 100, "per": "1h"}});
    let created = admin_call(&h.gateway, "POST", "/v1/customers", &body.to_string()).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let mut key_spec = spec(Environment::Production, &["*"]);
    key_spec.customer_id = Some("acme".into());
    let (id, key) = h.create_key(key_spec).await;
    written_whole_with(&h, &id).await;
    let text = std::fs::read_to_string(h.dir.path().join("table.snap")).unwrap();
    assert!(
        text.contains(r#""customer":"acme""#),
        "the customer is saved: {text}"
    );

    // Tightened after the whole write: the journal has it before the gateway enforces it.
    let tighter = json!({"rate_limit": {"requests": 2, "per": "1h"}}).to_string();
    let patched = admin_call(&h.gateway, "PATCH", "/v1/customers/acme", &tighter).await;
    assert_eq!(patched.status, 200, "{}", patched.text());
    h.sync().await;
    let replica = restart_with_the_store_locked(h).await;

    let ready = replica.readyz().await;
    assert_eq!(ready.json()["table_source"], "snapshot", "{}", ready.text());
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(replica.status(&key).await);
    }
    assert_eq!(
        seen,
        [200, 200, 429],
        "the customer's limit holds with the store down"
    );
    replica.gateway.shutdown().await;
}
