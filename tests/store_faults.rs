//! The gateway when its store lets it down: a stale key table, a store file replaced or
//! deleted under it, a store locked at start.

mod support;

use std::time::Duration;

use support::{Harness, STANDARD};

/// The standard config with `sync_interval` and `extra` store settings.
fn with_store(sync_interval: &str, extra: &str) -> String {
    STANDARD.replace(
        "sync_interval = \"100ms\"",
        &format!("sync_interval = \"{sync_interval}\"\n{extra}"),
    )
}

#[tokio::test]
async fn past_max_staleness_readyz_says_so_and_the_proxy_says_when_to_retry() {
    // No periodic sync within the test: the table ages only as the manual clock moves.
    let h = Harness::with_config(&with_store("1h", "max_staleness = \"5s\""), "").await;
    let (_, key) = h.key(&["*"]).await;
    assert_eq!(h.admin_get("/readyz").await.status, 200);
    assert_eq!(h.get("/v1/status", &key).await.status, 200);

    h.clock.advance(Duration::from_secs(65));
    let ready = h.admin_get("/readyz").await;
    assert_eq!(ready.status, 503);
    let detail = ready.json();
    assert_eq!(detail["ready"], false);
    assert_eq!(detail["last_sync_age_seconds"], 65.0);
    assert_eq!(detail["max_staleness_seconds"], 5.0);
    assert!(
        detail["reason"].as_str().unwrap().contains("65.0s old"),
        "{detail}"
    );
    let refused = h.get("/v1/status", &key).await;
    assert_eq!(refused.status, 503);
    assert_eq!(
        refused.json(),
        serde_json::json!({ "error": "service unavailable" })
    );
    assert_eq!(refused.headers["retry-after"], "3600", "one sync interval");

    h.sync().await;
    assert_eq!(h.admin_get("/readyz").await.status, 200);
    assert_eq!(h.get("/v1/status", &key).await.status, 200);
}
