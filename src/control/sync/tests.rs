use jiff::Timestamp;

use super::*;
use crate::control::store::{Actor, Audit, NewKey, SqliteStore};
use crate::core::clock::system_clock;
use crate::core::environment::Environment;
use crate::core::key::KeySpec;
use crate::core::secret::Hasher;

const AUDIT: Audit = Audit {
    actor: Actor::Cli,
    event: "imported",
    report: None,
};

fn keys(from: usize, n: usize) -> Vec<NewKey> {
    (from..from + n)
        .map(|i| NewKey {
            spec: KeySpec::new(format!("key {i}"), Environment::Production),
            id: format!("key_{i}"),
            hash: Hasher::unkeyed().hash(format!("secret-number-{i:08}").as_bytes()),
            prefix: "kg_prod_x".into(),
            now: Timestamp::now(),
        })
        .collect()
}

#[test]
fn a_load_larger_than_a_batch_arrives_whole_and_at_the_store_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::create(&dir.path().join("k.db")).unwrap());
    store.insert_many(&keys(0, BATCH * 2 + 3), AUDIT).unwrap();
    let table = Arc::new(KeyTable::default());
    let sync = KeySync::new(
        store.clone(),
        table.clone(),
        Arc::default(),
        Metrics::new(),
        system_clock(),
    );
    assert_eq!(sync.sync_once().unwrap(), BATCH * 2 + 3);
    assert_eq!(table.len(), BATCH * 2 + 3);
    assert_eq!(table.revision(), store.revision().unwrap());
    store.insert_many(&keys(BATCH * 2 + 3, 2), AUDIT).unwrap();
    assert_eq!(sync.sync_once().unwrap(), 2, "only what changed since");
    assert_eq!(table.revision(), store.revision().unwrap());
}

#[test]
fn rows_that_share_a_secret_past_the_store_guard_admit_neither_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.db");
    let store = Arc::new(SqliteStore::create(&path).unwrap());
    store.insert_many(&keys(0, 2), AUDIT).unwrap();
    // Rows written straight into the file by something that removed the guard first.
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch(
        "DROP TRIGGER keys_secrets_update; \
         UPDATE meta SET value = value + 1 WHERE name = 'revision'; \
         UPDATE keys SET previous_hash = (SELECT hash FROM keys WHERE id = 'key_0'), \
         grace_until = 4000000000, revision = (SELECT value FROM meta WHERE name = 'revision') \
         WHERE id = 'key_1';",
    )
    .unwrap();
    let table = Arc::new(KeyTable::default());
    let metrics = Metrics::new();
    let sync = KeySync::new(
        store,
        table.clone(),
        Arc::default(),
        metrics.clone(),
        system_clock(),
    );
    sync.sync_once().unwrap();
    let shared = Hasher::unkeyed().hash(b"secret-number-00000000");
    assert!(table.lookup(&shared).is_none(), "neither key_0 nor key_1");
    let own = Hasher::unkeyed().hash(b"secret-number-00000001");
    assert!(table.lookup(&own).is_some(), "key_1's own secret still works");
    assert_eq!(metrics.key_hash_conflicts.get(), 1);
}

#[test]
fn batches_end_at_their_last_row_until_the_last_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::create(&dir.path().join("k.db")).unwrap();
    store.insert_many(&keys(0, 5), AUDIT).unwrap();
    let first = store.changes_since(0, 2).unwrap();
    assert_eq!((first.keys.len(), first.more, first.revision), (2, true, 2));
    let last = store.changes_since(4, 2).unwrap();
    assert_eq!((last.keys.len(), last.more, last.revision), (1, false, 5));
    let none = store.changes_since(5, 2).unwrap();
    assert_eq!((none.keys.len(), none.more, none.revision), (0, false, 5));
}

/// Waits for `done` up to a generous deadline (a stall, not a speed, is what it catches).
fn within_deadline(done: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    done()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_goes_on_while_the_snapshot_is_written_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::create(&dir.path().join("k.db")).unwrap());
    store.insert_many(&keys(0, 3), AUDIT).unwrap();
    let table = Arc::new(KeyTable::default());
    let snapshot = dir.path().join("table.snap");
    let sync = Arc::new(
        KeySync::new(
            store.clone(),
            table.clone(),
            Arc::default(),
            Metrics::new(),
            system_clock(),
        )
        .with_snapshot(Some(snapshot.clone()), Duration::ZERO),
    );
    sync.sync_once().unwrap();
    store.insert_many(&keys(3, 1), AUDIT).unwrap();
    sync.sync_once().unwrap();
    // The whole write's temporary file is a FIFO: the write stops there until it is read.
    let temporary = super::super::snapshot::temporary_of(&snapshot);
    let made = std::process::Command::new("mkfifo")
        .arg(&temporary)
        .status()
        .unwrap();
    assert!(made.success());
    let saving = sync.clone();
    tokio::spawn(async move { saving.save_snapshot().await });
    let previous = super::super::snapshot::journal::previous_of(&snapshot);
    // Not asserted: without rotation there is nothing to wait for, and the sync below
    // then shows what the write holds.
    let _ = tokio::task::spawn_blocking(move || within_deadline(|| previous.exists())).await;

    store.insert_many(&keys(4, 1), AUDIT).unwrap();
    let (synced, result) = std::sync::mpsc::channel();
    let syncing = sync.clone();
    std::thread::spawn(move || {
        let _ = synced.send(syncing.sync_once().map_err(|e| e.to_string()));
    });
    let outcome = tokio::task::spawn_blocking(move || result.recv_timeout(Duration::from_secs(20)))
        .await
        .unwrap();
    // Let the write go on (it fails at syncing a FIFO), whatever the outcome.
    let mut reader = std::fs::File::open(&temporary).unwrap();
    std::io::Read::read_to_end(&mut reader, &mut Vec::new()).unwrap();
    assert_eq!(
        outcome.expect("the sync waited for the snapshot's whole write"),
        Ok(1)
    );
    assert_eq!(table.len(), 5);
}
