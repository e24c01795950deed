//! Key changes reaching a running gateway: revoke, activate, regenerate (with and without
//! grace), delete, update, expiry; usage written back to the store.

use crate::support;

use std::time::Duration;

use crate::support::{spec, Harness};
use keygate::control::keys::KeyPatch;
use keygate::core::environment::Environment;

const PATH: &str = "/v1/customers/acme";

#[tokio::test]
async fn revoke_and_activate_reach_the_gateway() {
    let h = Harness::start().await;
    let (id, key) = h.key(&["*"]).await;
    assert_eq!(h.get(PATH, &key).await.status, 200);
    h.keys.revoke(&id).unwrap();
    h.sync().await;
    assert_eq!(h.get(PATH, &key).await.status, 401);
    h.keys.activate(&id).unwrap();
    h.sync().await;
    assert_eq!(h.get(PATH, &key).await.status, 200);
}

#[tokio::test]
async fn changes_arrive_by_themselves_within_the_sync_interval() {
    let h = Harness::start().await;
    let created = h.keys.create(spec(Environment::Production, &["*"])).unwrap();
    let seen = support::eventually(Duration::from_secs(5), || async {
        h.get(PATH, &created.key).await.status == 200
    })
    .await;
    assert!(
        seen,
        "a new key was not synced within 5s (sync_interval is 100ms)"
    );
}

#[tokio::test]
async fn regeneration_without_grace_stops_the_old_secret_at_once() {
    let h = Harness::start().await;
    let (id, old) = h.key(&["*"]).await;
    let regenerated = h.keys.regenerate(&id, None).unwrap();
    h.sync().await;
    assert_eq!(regenerated.view.id, id);
    assert_eq!(h.get(PATH, &old).await.status, 401);
    assert_eq!(h.get(PATH, &regenerated.key).await.status, 200);
}

#[tokio::test]
async fn regeneration_with_grace_keeps_both_secrets_until_it_ends() {
    let h = Harness::start().await;
    let (id, old) = h.key(&["*"]).await;
    let regenerated = h.keys.regenerate(&id, Some(Duration::from_secs(600))).unwrap();
    h.sync().await;
    assert!(regenerated.view.grace_until.is_some());
    assert_eq!(h.get(PATH, &old).await.status, 200);
    assert_eq!(h.get(PATH, &regenerated.key).await.status, 200);
    h.gateway.flush_usage().await;
    assert!(h.keys.get(&id).unwrap().previous_last_used_at.is_some());
    h.clock.advance(Duration::from_secs(601));
    assert_eq!(h.get(PATH, &old).await.status, 401);
    assert_eq!(h.get(PATH, &regenerated.key).await.status, 200);
}

#[tokio::test]
async fn a_deleted_key_stops_for_good_and_keeps_its_usage() {
    let h = Harness::start().await;
    let (id, key) = h.key(&["*"]).await;
    assert_eq!(h.get(PATH, &key).await.status, 200);
    h.gateway.flush_usage().await;
    h.keys.delete(&id).unwrap();
    h.sync().await;
    assert_eq!(h.get(PATH, &key).await.status, 401);
    assert!(h.keys.get(&id).is_err());
    assert!(h.keys.activate(&id).is_err());
    assert_eq!(h.keys.usage(&id).unwrap().total_requests, 1);
}

#[tokio::test]
async fn updated_permissions_apply_on_the_next_sync() {
    let h = Harness::start().await;
    let (id, key) = h.key(&["customer:read"]).await;
    assert_eq!(h.call("POST", PATH, Some(&key), &[]).await.status, 403);
    let patch = KeyPatch {
        permissions: Some(vec!["customer:write".parse().unwrap()]),
        ..KeyPatch::default()
    };
    h.keys.update(&id, patch).unwrap();
    h.sync().await;
    assert_eq!(h.call("POST", PATH, Some(&key), &[]).await.status, 200);
}

#[tokio::test]
async fn usage_is_counted_by_day_and_sets_last_used() {
    let h = Harness::start().await;
    let (id, key) = h.key(&["*"]).await;
    assert!(h.keys.get(&id).unwrap().last_used_at.is_none());
    for _ in 0..3 {
        h.get(PATH, &key).await;
    }
    h.gateway.flush_usage().await;
    let usage = h.keys.usage(&id).unwrap();
    assert_eq!(usage.total_requests, 3);
    assert_eq!(usage.days.len(), 1);
    assert!(h.keys.get(&id).unwrap().last_used_at.is_some());
}

#[tokio::test]
async fn readyz_is_200_once_the_table_is_loaded() {
    let h = Harness::start().await;
    let ready = h.admin_get("/readyz").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["ready"], true);
    assert_eq!(h.admin_get("/healthz").await.status, 200);
}
