//! One conformance suite for every store backend, written once as plain functions of the seam
//! (the way `object_store`'s integration suite is): each runs against SQLite always, and against
//! PostgreSQL when `KEYGATE_TEST_POSTGRES_URL` is set, each test in a fresh schema. A backend is
//! done when it passes the same suite, so the two cannot drift.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

use keygate::control::store::{
    Actor, Audit, KeyFilter, KeyStore, Modified, NewKey, Origin, PgStore, Reported, Scanner, SqliteStore,
    StoreError, TokenKind, UsageDelta,
};
use keygate::core::environment::Environment;
use keygate::core::key::{KeySpec, KeyStatus, StoredStatus};
use keygate::core::quota::{Period, QuotaSpec};
use keygate::core::secret::KeyHash;

use crate::support::postgres::{postgres_url, FreshSchema};

mod analytics;
mod customers;
mod import;
mod quota_counters;
mod replicas;

const AUDIT: Audit = Audit {
    actor: Actor::Cli,
    event: "created",
    report: None,
};

fn new_key(n: u8, environment: Environment, now: Timestamp) -> NewKey {
    NewKey {
        id: format!("key_conformance{n:05}"),
        spec: KeySpec {
            name: format!("key {n}"),
            environment,
            permissions: vec!["customer:read".parse().unwrap()],
            rate_limit: None,
            customer_id: n.is_multiple_of(2).then(|| "acme".to_owned()),
            allowed_ips: Vec::new(),
            expires_at: None,
            metadata: serde_json::Map::new(),
            // Some keys carry a quota, so that every store keeps and reads it back.
            quota: n.is_multiple_of(3).then(|| QuotaSpec {
                limit: 100_000,
                period: Period::Month,
                anchor: "2026-01-31T10:00:00Z".parse().unwrap(),
            }),
        },
        hash: KeyHash([n; 32]),
        prefix: format!("kg_prod_{n:04}"),
        now,
    }
}

fn t(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap()
}

fn audit(event: &'static str) -> Audit<'static> {
    Audit {
        actor: Actor::AdminApi(Some(Origin {
            token: TokenKind::Write,
            client: "192.0.2.9".parse().unwrap(),
        })),
        event,
        report: None,
    }
}

fn revoke(store: &dyn KeyStore, id: &str, at: Timestamp) -> Result<Modified, StoreError> {
    store.modify(id, audit("revoked"), None, &mut |key| {
        key.status = StoredStatus::Revoked;
        key.updated_at = at;
        Ok(())
    })
}

// --- the suite ---------------------------------------------------------------------------

fn keys_are_created_read_and_listed_in_pages(store: &dyn KeyStore) {
    for n in 1..=5 {
        let env = if n == 5 {
            Environment::Staging
        } else {
            Environment::Production
        };
        store.insert(&new_key(n, env, t(n.into())), AUDIT).unwrap();
    }
    let one = store.get("key_conformance00001").unwrap().unwrap();
    assert_eq!(
        (one.spec.name.as_str(), one.hash, one.status),
        ("key 1", KeyHash([1; 32]), StoredStatus::Active)
    );
    assert_eq!(one.created_at, t(1));
    assert!(store.get("key_missing").unwrap().is_none());

    let all = KeyFilter::default();
    let first = store.list(&all, t(10), 0, 3).unwrap();
    let rest = store.list(&all, t(10), first.last().unwrap().seq, 3).unwrap();
    let ids: Vec<_> = first.iter().chain(&rest).map(|k| k.id.clone()).collect();
    assert_eq!(ids.len(), 5);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "creation order: {ids:?}");

    let staging = KeyFilter {
        environment: Some(Environment::Staging),
        ..KeyFilter::default()
    };
    assert_eq!(store.list(&staging, t(10), 0, 10).unwrap().len(), 1);
    let acme = KeyFilter {
        customer_id: Some("acme".into()),
        ..KeyFilter::default()
    };
    assert_eq!(store.list(&acme, t(10), 0, 10).unwrap().len(), 2);
    revoke(store, "key_conformance00002", t(11)).unwrap();
    let revoked = KeyFilter {
        status: Some(KeyStatus::Revoked),
        ..KeyFilter::default()
    };
    let listed = store.list(&revoked, t(12), 0, 10).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, "key_conformance00002");
}

fn every_change_bumps_the_revision_and_is_read_back_once(store: &dyn KeyStore) {
    let start = store.revision().unwrap();
    store
        .insert(&new_key(1, Environment::Production, t(0)), AUDIT)
        .unwrap();
    store
        .insert(&new_key(2, Environment::Production, t(0)), AUDIT)
        .unwrap();
    revoke(store, "key_conformance00001", t(5)).unwrap();
    assert_eq!(store.revision().unwrap(), start + 3);

    let changes = store.changes_since(start, 10).unwrap();
    assert!(!changes.more);
    assert_eq!(changes.revision, start + 3);
    let ids: Vec<_> = changes.keys.iter().map(|k| (k.id.as_str(), k.status)).collect();
    assert_eq!(
        ids,
        [
            ("key_conformance00002", StoredStatus::Active),
            ("key_conformance00001", StoredStatus::Revoked)
        ]
    );
    let paged = store.changes_since(start, 1).unwrap();
    assert!(paged.more);
    assert_eq!(paged.revision, start + 2);
    assert!(store.changes_since(start + 3, 10).unwrap().keys.is_empty());
}

/// The sync's pulls: every changed row once, whatever the batch, and the last batch at the
/// store's revision; a batch before it records no revision past the rows already handed out.
fn a_stream_of_changes_hands_out_every_row_once_and_ends_at_the_store_revision(store: &dyn KeyStore) {
    let start = store.revision().unwrap();
    for n in 1..=5 {
        store
            .insert(&new_key(n, Environment::Production, t(0)), AUDIT)
            .unwrap();
    }
    revoke(store, "key_conformance00003", t(5)).unwrap();
    let end = store.revision().unwrap();
    let mut batches = Vec::new();
    store
        .stream_changes(start, 2, &mut |changes| batches.push(changes))
        .unwrap();
    let (last, before) = batches.split_last().unwrap();
    assert!(
        !last.more && last.revision == end,
        "{:?}",
        (last.more, last.revision)
    );
    assert!(before
        .iter()
        .all(|b| b.more && b.revision <= end && b.keys.len() <= 2));
    let mut ids: Vec<_> = batches
        .iter()
        .flat_map(|b| &b.keys)
        .map(|k| (k.id.clone(), k.status))
        .collect();
    ids.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert_eq!(ids[2], ("key_conformance00003".into(), StoredStatus::Revoked));
    let mut none = Vec::new();
    store
        .stream_changes(end, 2, &mut |changes| none.push(changes))
        .unwrap();
    assert!(none.iter().all(|b| b.keys.is_empty()));
    assert_eq!(none.last().map(|b| (b.more, b.revision)), Some((false, end)));
}

fn a_change_is_audited_without_its_secret(store: &dyn KeyStore) {
    store
        .insert(&new_key(1, Environment::Production, t(0)), AUDIT)
        .unwrap();
    store
        .modify("key_conformance00001", audit("regenerated"), None, &mut |key| {
            key.hash = KeyHash([99; 32]);
            key.spec.name = "renamed".into();
            Ok(())
        })
        .unwrap();
    let events = store.events("key_conformance00001", 0, 10).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(
        (events[0].event.as_str(), events[0].actor.as_str()),
        ("created", "cli")
    );
    assert_eq!(
        (events[0].token.as_deref(), events[0].client.as_deref()),
        (None, None)
    );
    assert_eq!(events[1].event, "regenerated");
    assert_eq!(events[1].actor, "admin_api");
    assert_eq!(
        (events[1].token.as_deref(), events[1].client.as_deref()),
        (Some("write"), Some("192.0.2.9"))
    );
    assert_eq!(events[1].changes["secret"], "replaced");
    assert_eq!(events[1].changes["name"], "renamed");
    let after_first = store.events("key_conformance00001", events[0].id, 10).unwrap();
    assert_eq!(after_first.len(), 1);
    assert!(matches!(
        store.events("key_missing", 0, 10),
        Err(StoreError::NotFound)
    ));
}

fn a_change_that_changes_nothing_writes_nothing(store: &dyn KeyStore) {
    store
        .insert(&new_key(1, Environment::Production, t(0)), AUDIT)
        .unwrap();
    assert!(revoke(store, "key_conformance00001", t(5)).unwrap().changed);
    let (revision, events) = (
        store.revision().unwrap(),
        store.events("key_conformance00001", 0, 10).unwrap().len(),
    );
    let again = revoke(store, "key_conformance00001", t(9)).unwrap();
    assert!(!again.changed, "the store says nothing changed");
    assert_eq!(again.key.updated_at, t(5), "the key as it was");
    assert_eq!(store.revision().unwrap(), revision, "no revision spent");
    assert_eq!(
        store.events("key_conformance00001", 0, 10).unwrap().len(),
        events,
        "no second, empty event"
    );
}

fn a_deleted_key_is_a_tombstone_that_cannot_change(store: &dyn KeyStore) {
    store
        .insert(&new_key(1, Environment::Production, t(0)), AUDIT)
        .unwrap();
    store
        .modify("key_conformance00001", audit("deleted"), None, &mut |key| {
            key.status = StoredStatus::Deleted;
            Ok(())
        })
        .unwrap();
    assert!(matches!(
        revoke(store, "key_conformance00001", t(1)),
        Err(StoreError::NotFound)
    ));
    let tombstone = store.get("key_conformance00001").unwrap().unwrap();
    assert_eq!(tombstone.status, StoredStatus::Deleted);
    assert!(store.list(&KeyFilter::default(), t(2), 0, 10).unwrap().is_empty());
}

fn the_live_keys_counted_before_a_load_leave_out_the_tombstones(store: &dyn KeyStore) {
    assert_eq!(store.live_keys().unwrap(), 0);
    for n in 1..=3 {
        store
            .insert(&new_key(n, Environment::Production, t(0)), AUDIT)
            .unwrap();
    }
    revoke(store, "key_conformance00002", t(1)).unwrap();
    store
        .modify("key_conformance00001", audit("deleted"), None, &mut |key| {
            key.status = StoredStatus::Deleted;
            Ok(())
        })
        .unwrap();
    assert_eq!(store.live_keys().unwrap(), 2);
}

fn a_secret_belongs_to_one_key_current_or_in_grace(store: &dyn KeyStore) {
    store
        .insert(&new_key(1, Environment::Production, t(0)), AUDIT)
        .unwrap();
    let mut twin = new_key(2, Environment::Production, t(0));
    twin.hash = KeyHash([1; 32]);
    assert!(matches!(store.insert(&twin, AUDIT), Err(StoreError::SecretInUse)));

    // Regenerated with a grace period: the old secret still answers for key 1 ...
    store
        .modify("key_conformance00001", audit("regenerated"), None, &mut |key| {
            key.previous_hash = Some(key.hash);
            key.hash = KeyHash([101; 32]);
            key.grace_until = Some(t(600));
            Ok(())
        })
        .unwrap();
    // ... so no other key may take it, by import or by its own change.
    assert!(matches!(store.insert(&twin, AUDIT), Err(StoreError::SecretInUse)));
    store
        .insert(&new_key(3, Environment::Production, t(0)), AUDIT)
        .unwrap();
    let taken = store.modify("key_conformance00003", audit("regenerated"), None, &mut |key| {
        key.hash = KeyHash([1; 32]);
        Ok(())
    });
    assert!(matches!(taken, Err(StoreError::SecretInUse)), "{taken:?}");
    let grace_taken = store.modify("key_conformance00003", audit("regenerated"), None, &mut |key| {
        key.previous_hash = Some(KeyHash([101; 32]));
        Ok(())
    });
    assert!(
        matches!(grace_taken, Err(StoreError::SecretInUse)),
        "{grace_taken:?}"
    );
    assert_eq!(
        store.get("key_conformance00003").unwrap().unwrap().hash,
        KeyHash([3; 32]),
        "a refused change leaves the key as it was"
    );
}

fn a_key_is_found_by_its_current_or_grace_period_secret(store: &dyn KeyStore) {
    for n in [1, 2] {
        store
            .insert(&new_key(n, Environment::Production, t(0)), AUDIT)
            .unwrap();
    }
    let holder = |hash: u8, at: i64| {
        let found = store.key_by_hash(&KeyHash([hash; 32]), t(at)).unwrap();
        found.map(|key| key.id)
    };
    assert_eq!(holder(1, 1).as_deref(), Some("key_conformance00001"));
    assert_eq!(holder(9, 1), None);
    store
        .modify("key_conformance00001", audit("regenerated"), None, &mut |key| {
            key.previous_hash = Some(key.hash);
            key.hash = KeyHash([101; 32]);
            key.grace_until = Some(t(600));
            Ok(())
        })
        .unwrap();
    assert_eq!(holder(101, 10).as_deref(), Some("key_conformance00001"));
    assert_eq!(
        holder(1, 10).as_deref(),
        Some("key_conformance00001"),
        "in its grace"
    );
    assert_eq!(holder(1, 600), None, "its grace is over");
    let batch: Vec<KeyHash> = [101, 9, 1, 2].map(|n| KeyHash([n; 32])).to_vec();
    let found = store.keys_by_hash(&batch, t(10)).unwrap();
    let ids: Vec<Option<&str>> = found
        .iter()
        .map(|key| key.as_ref().map(|k| k.id.as_str()))
        .collect();
    assert_eq!(
        ids,
        [
            Some("key_conformance00001"),
            None,
            Some("key_conformance00001"),
            Some("key_conformance00002")
        ]
    );
    let after_grace = store.keys_by_hash(&batch[2..3], t(600)).unwrap();
    assert_eq!(after_grace[0], None);
    store
        .modify("key_conformance00002", audit("deleted"), None, &mut |key| {
            key.status = StoredStatus::Deleted;
            Ok(())
        })
        .unwrap();
    assert_eq!(holder(2, 10), None, "a deleted key holds no secret");
}

fn a_leak_report_is_audited_even_when_it_changes_nothing(store: &dyn KeyStore) {
    store
        .insert(&new_key(1, Environment::Production, t(0)), AUDIT)
        .unwrap();
    let report = Audit {
        actor: Actor::Scanner(Scanner::Github),
        event: "leaked",
        report: Some(Reported {
            url: Some("https://github.com/o/r/blob/abc/f.env"),
            secret: "current",
        }),
    };
    let quarantine = |key: &mut keygate::control::store::StoredKey| {
        key.quarantined = true;
        key.updated_at = t(5);
        Ok(())
    };
    let first = store
        .modify("key_conformance00001", report, None, &mut quarantine.clone())
        .unwrap();
    assert!(first.changed && first.key.quarantined);
    let again = store
        .modify("key_conformance00001", report, None, &mut quarantine.clone())
        .unwrap();
    assert!(!again.changed);
    assert_eq!(store.revision().unwrap(), first.key.revision, "no revision spent");
    let events = store.events("key_conformance00001", 0, 10).unwrap();
    let reports: Vec<_> = events.iter().filter(|e| e.event == "leaked").collect();
    assert_eq!(reports.len(), 2, "{events:?}");
    for event in &reports {
        assert_eq!(event.actor, "github");
        assert_eq!(event.changes["url"], "https://github.com/o/r/blob/abc/f.env");
        assert_eq!(event.changes["leaked_secret"], "current");
    }
    assert_eq!(reports[0].changes["quarantined"], true);

    // The flag stays through other changes.
    store
        .modify("key_conformance00001", audit("updated"), None, &mut |key| {
            key.spec.name = "renamed".into();
            Ok(())
        })
        .unwrap();
    assert!(store.get("key_conformance00001").unwrap().unwrap().quarantined);
}

fn usage_is_added_up_by_day_and_moves_last_use_forward(store: &dyn KeyStore) {
    let key = store
        .insert(&new_key(1, Environment::Production, t(0)), AUDIT)
        .unwrap();
    let day = 86_400;
    let delta = |requests, at, previous| UsageDelta {
        seq: key.seq,
        previous,
        requests,
        last_used_at: t(at),
    };
    store
        .record_usage(&[delta(3, 100, false), delta(2, 50, false), delta(1, 70, true)])
        .unwrap();
    store.record_usage(&[delta(4, day + 10, false)]).unwrap();
    store
        .record_usage(&[UsageDelta {
            seq: 987_654,
            ..delta(1, 10, false)
        }])
        .unwrap();
    let usage = store.usage("key_conformance00001").unwrap();
    assert_eq!(usage.total_requests, 10);
    assert_eq!(usage.days.iter().map(|d| d.requests).collect::<Vec<_>>(), [6, 4]);
    assert_eq!(usage.last_used_at, Some(t(day + 10)));
    let stored = store.get("key_conformance00001").unwrap().unwrap();
    assert_eq!(stored.previous_last_used_at, Some(t(70)));
    assert!(matches!(store.usage("key_missing"), Err(StoreError::NotFound)));
}

fn idle_keys_are_found_and_each_warning_is_recorded_once(store: &dyn KeyStore) {
    let old = store
        .insert(&new_key(1, Environment::Production, t(0)), AUDIT)
        .unwrap();
    store
        .insert(&new_key(2, Environment::Production, t(1000)), AUDIT)
        .unwrap();
    let idle = store.idle_keys(t(500), t(2000), 0, 10).unwrap();
    assert_eq!(
        idle.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
        ["key_conformance00001"]
    );
    assert_eq!(idle[0].idle_since, t(0));

    assert!(store
        .record_warning(old.seq, t(9000), 86_400, t(2000), Some("{\"w\":1}"))
        .unwrap());
    assert!(!store
        .record_warning(old.seq, t(9000), 86_400, t(2100), Some("{\"w\":1}"))
        .unwrap());
    assert_eq!(store.first_warning_at(old.seq, t(9000)).unwrap(), Some(t(2000)));
    assert_eq!(
        store.due_webhooks(t(3000), 10).unwrap().len(),
        1,
        "queued with the warning, once"
    );
}

fn a_webhook_is_claimed_by_one_deliverer_at_a_time(store: &dyn KeyStore) {
    store.enqueue_webhook("{\"n\":1}", t(0)).unwrap();
    store.enqueue_webhook("{\"n\":2}", t(0)).unwrap();
    let first = store.claim_webhook(t(1), t(61)).unwrap().unwrap();
    let second = store.claim_webhook(t(1), t(61)).unwrap().unwrap();
    assert_eq!(
        (first.payload.as_str(), second.payload.as_str()),
        ("{\"n\":1}", "{\"n\":2}")
    );
    assert!(
        store.claim_webhook(t(2), t(62)).unwrap().is_none(),
        "both are taken"
    );
    store.webhook_retry_at(first.id, 1, t(100)).unwrap();
    store.webhook_done(second.id).unwrap();
    assert!(store.claim_webhook(t(99), t(200)).unwrap().is_none());
    let again = store.claim_webhook(t(100), t(200)).unwrap().unwrap();
    assert_eq!((again.id, again.attempts), (first.id, 1));
}

fn a_lease_has_one_holder_until_it_runs_out(store: &dyn KeyStore) {
    let ttl = Duration::from_secs(60);
    assert!(store.try_lease("sweep", "a", t(0), ttl).unwrap());
    assert!(!store.try_lease("sweep", "b", t(30), ttl).unwrap());
    assert!(
        store.try_lease("sweep", "a", t(30), ttl).unwrap(),
        "renewed by its holder"
    );
    assert!(!store.try_lease("sweep", "b", t(89), ttl).unwrap());
    assert!(
        store.try_lease("sweep", "b", t(91), ttl).unwrap(),
        "taken once it ran out"
    );
}

fn a_batch_goes_in_whole_or_not_at_all(store: &dyn KeyStore) {
    let start = store.revision().unwrap();
    let batch: Vec<_> = (1..=3)
        .map(|n| new_key(n, Environment::Production, t(0)))
        .collect();
    store.insert_many(&batch, AUDIT).unwrap();
    assert_eq!(store.revision().unwrap(), start + 3);
    assert_eq!(store.changes_since(start, 10).unwrap().keys.len(), 3);

    let mut clashing: Vec<_> = (4..=5)
        .map(|n| new_key(n, Environment::Production, t(0)))
        .collect();
    clashing.push(new_key(1, Environment::Production, t(0)));
    assert!(matches!(
        store.insert_many(&clashing, AUDIT),
        Err(StoreError::Conflict(_) | StoreError::SecretInUse)
    ));
    assert!(store.get("key_conformance00004").unwrap().is_none());
    assert_eq!(store.revision().unwrap(), start + 3);
}

fn a_bulk_import_goes_in_batch_by_batch_and_a_called_off_one_leaves_nothing(store: &dyn KeyStore) {
    store
        .insert(&new_key(1, Environment::Production, t(0)), AUDIT)
        .unwrap();
    store
        .modify("key_conformance00001", audit("regenerated"), None, &mut |key| {
            key.previous_hash = Some(key.hash);
            key.hash = KeyHash([101; 32]);
            key.grace_until = Some(t(600));
            Ok(())
        })
        .unwrap();
    let start = store.revision().unwrap();
    let batches = |numbers: &[&[u8]]| -> Vec<Vec<NewKey>> {
        let batch = |ns: &&[u8]| {
            ns.iter()
                .map(|&n| new_key(n, Environment::Production, t(0)))
                .collect()
        };
        numbers.iter().map(batch).collect()
    };

    // Called off after a batch went in: nothing of it stays.
    let mut source = batches(&[&[2, 3]]).into_iter();
    let mut next = || match source.next() {
        Some(batch) => Ok(Some(batch)),
        None => Err(StoreError::Conflict("called off".into())),
    };
    let called_off = store.insert_batches(&mut next, AUDIT);
    assert!(
        matches!(called_off, Err(StoreError::Conflict(_))),
        "{called_off:?}"
    );
    assert!(store.get("key_conformance00002").unwrap().is_none());
    assert_eq!(store.revision().unwrap(), start);

    // A key whose secret is another's previous one, in grace: refused, all of the import.
    let mut source = batches(&[&[2], &[1]]).into_iter();
    let mut clash = batches(&[&[4]]).remove(0);
    clash[0].hash = KeyHash([1; 32]);
    let mut clashing = source.next().into_iter().chain([clash]);
    let refused = store.insert_batches(&mut || Ok(clashing.next()), AUDIT);
    assert!(matches!(refused, Err(StoreError::SecretInUse)), "{refused:?}");
    assert!(store.get("key_conformance00002").unwrap().is_none());

    // Two batches: each key at its own revision; the secrets are guarded after as before.
    let mut source = batches(&[&[2, 3], &[4]]).into_iter();
    assert_eq!(store.insert_batches(&mut || Ok(source.next()), AUDIT).unwrap(), 3);
    assert_eq!(store.revision().unwrap(), start + 3);
    assert_eq!(store.changes_since(start, 10).unwrap().keys.len(), 3);
    let taken = store.modify("key_conformance00001", audit("regenerated"), None, &mut |key| {
        key.hash = KeyHash([4; 32]);
        Ok(())
    });
    assert!(matches!(taken, Err(StoreError::SecretInUse)), "{taken:?}");
    let grace_taken = store.modify("key_conformance00003", audit("regenerated"), None, &mut |key| {
        key.previous_hash = Some(KeyHash([1; 32]));
        Ok(())
    });
    assert!(
        matches!(grace_taken, Err(StoreError::SecretInUse)),
        "{grace_taken:?}"
    );
}

/// One conformance test: its name and the function that runs it against a store.
type Conformance = (&'static str, fn(&dyn KeyStore));

const SUITE: &[Conformance] = &[
    (
        "a_bulk_import_goes_in_batch_by_batch_and_a_called_off_one_leaves_nothing",
        a_bulk_import_goes_in_batch_by_batch_and_a_called_off_one_leaves_nothing,
    ),
    (
        "keys_are_created_read_and_listed_in_pages",
        keys_are_created_read_and_listed_in_pages,
    ),
    (
        "every_change_bumps_the_revision_and_is_read_back_once",
        every_change_bumps_the_revision_and_is_read_back_once,
    ),
    (
        "a_change_is_audited_without_its_secret",
        a_change_is_audited_without_its_secret,
    ),
    (
        "a_change_that_changes_nothing_writes_nothing",
        a_change_that_changes_nothing_writes_nothing,
    ),
    (
        "a_deleted_key_is_a_tombstone_that_cannot_change",
        a_deleted_key_is_a_tombstone_that_cannot_change,
    ),
    (
        "a_secret_belongs_to_one_key_current_or_in_grace",
        a_secret_belongs_to_one_key_current_or_in_grace,
    ),
    (
        "usage_is_added_up_by_day_and_moves_last_use_forward",
        usage_is_added_up_by_day_and_moves_last_use_forward,
    ),
    (
        "idle_keys_are_found_and_each_warning_is_recorded_once",
        idle_keys_are_found_and_each_warning_is_recorded_once,
    ),
    (
        "a_webhook_is_claimed_by_one_deliverer_at_a_time",
        a_webhook_is_claimed_by_one_deliverer_at_a_time,
    ),
    (
        "a_lease_has_one_holder_until_it_runs_out",
        a_lease_has_one_holder_until_it_runs_out,
    ),
    (
        "a_batch_goes_in_whole_or_not_at_all",
        a_batch_goes_in_whole_or_not_at_all,
    ),
    (
        "a_key_is_found_by_its_current_or_grace_period_secret",
        a_key_is_found_by_its_current_or_grace_period_secret,
    ),
    (
        "a_leak_report_is_audited_even_when_it_changes_nothing",
        a_leak_report_is_audited_even_when_it_changes_nothing,
    ),
    (
        "a_stream_of_changes_hands_out_every_row_once_and_ends_at_the_store_revision",
        a_stream_of_changes_hands_out_every_row_once_and_ends_at_the_store_revision,
    ),
    (
        "the_live_keys_counted_before_a_load_leave_out_the_tombstones",
        the_live_keys_counted_before_a_load_leave_out_the_tombstones,
    ),
];

// --- the backends ------------------------------------------------------------------------

#[test]
fn sqlite_passes_the_suite() {
    for (name, test) in SUITE {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn KeyStore> = Arc::new(SqliteStore::create(&dir.path().join("keys.db")).unwrap());
        eprintln!("sqlite: {name}");
        test(&*store);
    }
}

#[test]
fn postgres_passes_the_suite() {
    let Some(url) = postgres_url() else { return };
    for (name, test) in SUITE {
        let schema = FreshSchema::new(&url);
        let store: Arc<dyn KeyStore> = Arc::new(PgStore::open(&schema.url).unwrap());
        eprintln!("postgres: {name}");
        test(&*store);
    }
}

#[test]
fn sqlite_passes_the_analytics_suite() {
    for (name, test) in analytics::SUITE {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let a = SqliteStore::create(&path).unwrap();
        let b = SqliteStore::open(&path).unwrap();
        eprintln!("sqlite: {name}");
        test(&a, &b);
    }
}

#[test]
fn postgres_passes_the_analytics_suite() {
    let Some(url) = postgres_url() else { return };
    for (name, test) in analytics::SUITE {
        let schema = FreshSchema::new(&url);
        let (a, b) = (
            PgStore::open(&schema.url).unwrap(),
            PgStore::open(&schema.url).unwrap(),
        );
        eprintln!("postgres: {name}");
        test(&a, &b);
    }
}

#[test]
fn sqlite_passes_the_customers_suite() {
    for (name, test) in customers::SUITE {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::create(&dir.path().join("keys.db")).unwrap();
        eprintln!("sqlite: {name}");
        test(&store);
    }
}

#[test]
fn sqlite_passes_the_replicas_suite() {
    for (name, test) in replicas::SUITE {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let a = SqliteStore::create(&path).unwrap();
        let b = SqliteStore::open(&path).unwrap();
        eprintln!("sqlite: {name}");
        test(&a, &b);
    }
}

#[test]
fn sqlite_passes_the_quota_counter_suite() {
    for (name, test) in quota_counters::SUITE {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let a = SqliteStore::create(&path).unwrap();
        let b = SqliteStore::open(&path).unwrap();
        eprintln!("sqlite: {name}");
        test(&a, &b);
    }
}

#[test]
fn postgres_passes_the_customers_suite() {
    let Some(url) = postgres_url() else { return };
    for (name, test) in customers::SUITE {
        let schema = FreshSchema::new(&url);
        let store = PgStore::open(&schema.url).unwrap();
        eprintln!("postgres: {name}");
        test(&store);
    }
}

#[test]
fn postgres_passes_the_replicas_suite() {
    let Some(url) = postgres_url() else { return };
    for (name, test) in replicas::SUITE {
        let schema = FreshSchema::new(&url);
        let (a, b) = (
            PgStore::open(&schema.url).unwrap(),
            PgStore::open(&schema.url).unwrap(),
        );
        eprintln!("postgres: {name}");
        test(&a, &b);
    }
}

#[test]
fn postgres_passes_the_quota_counter_suite() {
    let Some(url) = postgres_url() else { return };
    for (name, test) in quota_counters::SUITE {
        let schema = FreshSchema::new(&url);
        let (a, b) = (
            PgStore::open(&schema.url).unwrap(),
            PgStore::open(&schema.url).unwrap(),
        );
        eprintln!("postgres: {name}");
        test(&a, &b);
    }
}

/// What this test binary logs from now on, `log` records (tokio-postgres's) included.
fn capture_logs() -> Arc<std::sync::Mutex<Vec<u8>>> {
    #[derive(Clone, Default)]
    struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let writer = lines.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .try_init()
        .expect("the only subscriber of this test binary");
    lines.0
}

#[test]
fn postgres_migrations_run_once_when_replicas_start_together() {
    let Some(url) = postgres_url() else { return };
    let logs = capture_logs();
    let schema = FreshSchema::new(&url);
    let stores: Vec<_> = std::thread::scope(|s| {
        let opening: Vec<_> = (0..4).map(|_| s.spawn(|| PgStore::open(&schema.url))).collect();
        opening.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
    });
    stores[0]
        .insert(&new_key(1, Environment::Production, t(0)), AUDIT)
        .unwrap();
    assert!(stores[3].get("key_conformance00001").unwrap().is_some());
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        !logged.contains("already exists"),
        "PostgreSQL's notices of the migration's existing tables stay out of the log: {logged}"
    );
    schema.sql("UPDATE keygate_schema SET version = version + 1");
    let refused = PgStore::open(&schema.url).unwrap_err().to_string();
    assert!(refused.contains("newer than this keygate knows"), "{refused}");
}

#[test]
fn postgres_announces_each_change_to_every_store_on_it() {
    let Some(url) = postgres_url() else { return };
    let schema = FreshSchema::new(&url);
    let writer = PgStore::open(&schema.url).unwrap();
    let reader = PgStore::open(&schema.url).unwrap();
    let mut feed = reader.change_feed();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The listener announces itself once it listens; from then on no change is missed.
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), feed.changed())
            .await
            .unwrap()
            .unwrap();
    });
    writer
        .insert(&new_key(1, Environment::Production, t(0)), AUDIT)
        .unwrap();
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), feed.changed())
            .await
            .expect("the change is announced")
            .unwrap();
    });
}
