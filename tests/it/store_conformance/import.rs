//! The store conformance suite's bulk import cases: a key whose id another key of the import
//! has fails the import whole, on every store, also once the store has set its indexes aside
//! (the import as large as the store); and on PostgreSQL, what a large import sets aside (the
//! keys' unique constraints, indexes, the secrets' foreign key and trigger) is all back after
//! it, whether it went in or not.

use std::sync::Arc;

use keygate::control::store::{KeyStore, NewKey, PgStore, SqliteStore, StoreError};
use keygate::core::environment::Environment;

use super::{new_key, t, AUDIT};
use crate::support::postgres::{postgres_url, FreshSchema};

fn keys(numbers: std::ops::RangeInclusive<u8>) -> Vec<NewKey> {
    numbers
        .map(|n| new_key(n, Environment::Production, t(0)))
        .collect()
}

/// Three batches into an empty store go in; then an import whose second batch (past the point
/// where a large import sets its indexes aside) repeats an id of the first is refused whole.
fn a_key_id_given_twice_fails_the_import_whole(store: &dyn KeyStore) {
    let mut source = [keys(1..=2), keys(3..=4), keys(5..=6)].into_iter();
    assert_eq!(store.insert_batches(&mut || Ok(source.next()), AUDIT).unwrap(), 6);
    let start = store.revision().unwrap();

    let mut repeated = keys(20..=20);
    repeated[0].id = "key_conformance00010".into();
    let mut source = [keys(10..=15), keys(16..=19), repeated].into_iter();
    let refused = store.insert_batches(&mut || Ok(source.next()), AUDIT);
    assert!(matches!(refused, Err(StoreError::Conflict(_))), "{refused:?}");
    assert!(store.get("key_conformance00011").unwrap().is_none());
    assert_eq!(store.revision().unwrap(), start);

    // The store is whole after: the same keys without the repeat go in, and the secrets are
    // guarded as before.
    let mut source = [keys(10..=15), keys(16..=20)].into_iter();
    assert_eq!(
        store.insert_batches(&mut || Ok(source.next()), AUDIT).unwrap(),
        11
    );
    let mut clash = keys(21..=21);
    clash[0].hash = keygate::core::secret::KeyHash([12; 32]);
    assert!(matches!(
        store.insert(&clash[0], AUDIT),
        Err(StoreError::SecretInUse)
    ));
}

#[test]
fn sqlite_refuses_an_import_that_repeats_an_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::create(&dir.path().join("keys.db")).unwrap();
    a_key_id_given_twice_fails_the_import_whole(&store);
}

#[test]
fn postgres_refuses_an_import_that_repeats_an_id_and_puts_back_what_it_set_aside() {
    let Some(url) = postgres_url() else { return };
    let schema = FreshSchema::new(&url);
    let store: Arc<dyn KeyStore> = Arc::new(PgStore::open(&schema.url).unwrap());
    let before = objects(&schema.url);
    assert!(before.iter().any(|o| o.contains("keys_hash_key")), "{before:?}");
    a_key_id_given_twice_fails_the_import_whole(&*store);
    assert_eq!(objects(&schema.url), before);
    // Called off by its source after the indexes went: they are back.
    let mut source = [keys(30..=90), keys(91..=99)].into_iter();
    let mut next = || {
        source
            .next()
            .map(Some)
            .ok_or(StoreError::Conflict("called off".into()))
    };
    assert!(store.insert_batches(&mut next, AUDIT).is_err());
    assert_eq!(objects(&schema.url), before);
}

/// The schema's indexes, constraints and triggers (with whether each is enabled), sorted.
fn objects(url: &str) -> Vec<String> {
    let sql = "SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = current_schema() \
        UNION ALL SELECT 'constraint ' || conrelid::regclass::text || ' ' || conname || ' ' \
            || pg_get_constraintdef(oid) FROM pg_constraint \
            WHERE connamespace = current_schema()::regnamespace \
        UNION ALL SELECT 'trigger ' || tgname || ' ' || tgenabled::text FROM pg_trigger \
            JOIN pg_class c ON c.oid = tgrelid \
            WHERE NOT tgisinternal AND c.relnamespace = current_schema()::regnamespace";
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut found: Vec<String> = runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let rows = client.query(sql, &[]).await.unwrap();
        rows.iter().map(|row| row.get(0)).collect()
    });
    found.sort();
    found
}
