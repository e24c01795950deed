//! The store conformance suite's customer cases: customers created, read, listed in pages,
//! changed and deleted (a tombstone, refused while a key names it), audited, and read back by
//! the change reader beside the keys, in the store's one revision order.

use keygate::control::store::{
    Actor, Audit, CustomerSpec, KeyStore, NewCustomer, StoreError, StoredCustomer,
};
use keygate::core::environment::Environment;
use keygate::core::quota::{Period, QuotaSpec};

use super::{audit, new_key, t, AUDIT};

fn new_customer(id: &str, seconds: i64) -> NewCustomer {
    NewCustomer {
        id: id.into(),
        spec: CustomerSpec {
            name: format!("Customer {id}"),
            rate_limit: None,
            quota: Some(QuotaSpec {
                limit: 1_000,
                period: Period::Month,
                anchor: t(0),
            }),
            metadata: serde_json::Map::from_iter([("plan".to_owned(), "gold".into())]),
        },
        now: t(seconds),
    }
}

fn rename(store: &dyn KeyStore, id: &str, name: &str) -> Result<StoredCustomer, StoreError> {
    let modified = store.modify_customer(id, audit("updated"), &mut |customer| {
        customer.spec.name = name.into();
        customer.updated_at = t(50);
        Ok(())
    })?;
    Ok(modified.customer)
}

fn customers_are_created_read_changed_and_listed(store: &dyn KeyStore) {
    let acme = store.insert_customer(&new_customer("acme", 1), AUDIT).unwrap();
    assert_eq!(acme.spec, new_customer("acme", 1).spec);
    assert_eq!((acme.created_at, acme.deleted), (t(1), false));
    assert!(matches!(
        store.insert_customer(&new_customer("acme", 2), AUDIT),
        Err(StoreError::Conflict(_))
    ));
    for id in ["b", "c"] {
        store.insert_customer(&new_customer(id, 3), AUDIT).unwrap();
    }
    assert_eq!(store.customer("acme").unwrap(), Some(acme.clone()));
    assert_eq!(store.customer("nope").unwrap(), None);
    let first = store.customers(0, 2).unwrap();
    let ids: Vec<&str> = first.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["acme", "b"]);
    let rest = store.customers(first[1].seq, 10).unwrap();
    assert_eq!(rest.len(), 1);

    let renamed = rename(store, "acme", "Acme Inc").unwrap();
    assert!(renamed.revision > acme.revision);
    assert_eq!(store.customer("acme").unwrap().unwrap().spec.name, "Acme Inc");
    // The same change again writes nothing.
    let again = store
        .modify_customer("acme", audit("updated"), &mut |customer| {
            customer.spec.name = "Acme Inc".into();
            Ok(())
        })
        .unwrap();
    assert!(!again.changed);
    assert_eq!(store.revision().unwrap(), renamed.revision);
    assert!(matches!(rename(store, "nope", "x"), Err(StoreError::NotFound)));
}

fn a_customer_named_by_a_key_is_not_deleted_and_a_deleted_one_is_a_tombstone(store: &dyn KeyStore) {
    store.insert_customer(&new_customer("acme", 1), AUDIT).unwrap();
    // new_key(0) names customer "acme".
    let key = store
        .insert(&new_key(0, Environment::Production, t(2)), AUDIT)
        .unwrap();
    assert_eq!(key.spec.customer_id.as_deref(), Some("acme"));
    let before = store.revision().unwrap();
    assert!(matches!(
        store.delete_customer("acme", audit("deleted"), t(3)),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store.revision().unwrap(),
        before,
        "a refused delete writes nothing"
    );
    store
        .modify(&key.id, audit("deleted"), None, &mut |key| {
            key.status = keygate::core::key::StoredStatus::Deleted;
            Ok(())
        })
        .unwrap();
    store.delete_customer("acme", audit("deleted"), t(4)).unwrap();
    assert_eq!(store.customer("acme").unwrap(), None);
    assert!(store.customers(0, 10).unwrap().is_empty());
    assert!(matches!(
        store.delete_customer("acme", audit("deleted"), t(5)),
        Err(StoreError::NotFound)
    ));
    assert!(matches!(rename(store, "acme", "x"), Err(StoreError::NotFound)));
    // Its id may be taken again; the trail goes on.
    let again = store.insert_customer(&new_customer("acme", 6), AUDIT).unwrap();
    assert_eq!(again.created_at, t(6));
    let events = store.customer_events("acme", 0, 100).unwrap();
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["created", "deleted", "created"]);
}

fn a_customers_changes_are_audited_with_who_and_what(store: &dyn KeyStore) {
    store.insert_customer(&new_customer("acme", 1), AUDIT).unwrap();
    rename(store, "acme", "Acme Inc").unwrap();
    let topped = serde_json::Map::from_iter([("add".to_owned(), 5.into())]);
    let cli = Audit::of(Actor::Cli, "quota_topped_up");
    store.record_customer_event("acme", cli, t(60), &topped).unwrap();
    let events = store.customer_events("acme", 0, 100).unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(events[0].changes["name"], "Customer acme");
    assert_eq!(events[0].changes["metadata"], serde_json::json!({"plan": "gold"}));
    assert!(
        !events[0].changes.contains_key("rate_limit"),
        "no nulls on creation"
    );
    assert_eq!(
        events[1].changes,
        serde_json::Map::from_iter([("name".to_owned(), "Acme Inc".into())])
    );
    assert_eq!(
        (
            events[1].actor.as_str(),
            events[1].token.as_deref(),
            events[1].client.as_deref()
        ),
        ("admin_api", Some("write"), Some("192.0.2.9"))
    );
    assert_eq!(
        (events[2].event.as_str(), events[2].at),
        ("quota_topped_up", t(60))
    );
    let later = store.customer_events("acme", events[0].id, 1).unwrap();
    assert_eq!(later[0].id, events[1].id);
    assert!(matches!(
        store.customer_events("nope", 0, 10),
        Err(StoreError::NotFound)
    ));
}

fn the_change_reader_brings_customers_beside_keys_in_revision_order(store: &dyn KeyStore) {
    store.insert_customer(&new_customer("a", 1), AUDIT).unwrap();
    store
        .insert(&new_key(1, Environment::Production, t(1)), AUDIT)
        .unwrap();
    store.insert_customer(&new_customer("b", 2), AUDIT).unwrap();
    store
        .insert(&new_key(3, Environment::Production, t(2)), AUDIT)
        .unwrap();
    let all = store.changes_since(0, 100).unwrap();
    assert_eq!((all.keys.len(), all.customers.len(), all.more), (2, 2, false));
    assert_eq!(all.revision, store.revision().unwrap());

    // Two rows a batch: the reader never skips a customer nor outruns the keys.
    let (mut revision, mut keys, mut customers) = (0, Vec::new(), Vec::new());
    for _ in 0..10 {
        let batch = store.changes_since(revision, 1).unwrap();
        keys.extend(batch.keys.iter().map(|k| k.id.clone()));
        customers.extend(batch.customers.iter().map(|c| c.id.clone()));
        revision = batch.revision;
        if !batch.more {
            break;
        }
    }
    keys.dedup();
    customers.dedup();
    assert_eq!(customers, ["a", "b"]);
    assert_eq!(keys.len(), 2);

    // A change and a deletion come back as the row's latest state, the tombstone flagged.
    let since = store.revision().unwrap();
    rename(store, "a", "A").unwrap();
    store.delete_customer("b", audit("deleted"), t(9)).unwrap();
    let changed = store.changes_since(since, 100).unwrap();
    assert!(changed.keys.is_empty());
    let seen: Vec<(&str, bool)> = changed
        .customers
        .iter()
        .map(|c| (c.id.as_str(), c.deleted))
        .collect();
    assert_eq!(seen, [("a", false), ("b", true)]);
}

pub type Case = fn(&dyn KeyStore);

pub const SUITE: &[(&str, Case)] = &[
    (
        "customers_are_created_read_changed_and_listed",
        customers_are_created_read_changed_and_listed,
    ),
    (
        "a_customer_named_by_a_key_is_not_deleted_and_a_deleted_one_is_a_tombstone",
        a_customer_named_by_a_key_is_not_deleted_and_a_deleted_one_is_a_tombstone,
    ),
    (
        "a_customers_changes_are_audited_with_who_and_what",
        a_customers_changes_are_audited_with_who_and_what,
    ),
    (
        "the_change_reader_brings_customers_beside_keys_in_revision_order",
        the_change_reader_brings_customers_beside_keys_in_revision_order,
    ),
];
