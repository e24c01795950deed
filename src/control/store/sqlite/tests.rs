//! The SQLite store's own guarantees, beyond what the key service checks first.

use std::time::Duration;

use jiff::Timestamp;
use rusqlite::{params, Connection};

use super::schema::MIGRATIONS;
use super::SqliteStore;
use crate::control::store::{Actor, Audit, KeyStore, NewKey, StoreError, StoredKey};
use crate::core::environment::Environment;
use crate::core::key::KeySpec;
use crate::core::secret::{Hasher, KeyHash};

const AUDIT: Audit = Audit {
    actor: Actor::Cli,
    event: "imported",
    report: None,
};

fn secret(text: &str) -> KeyHash {
    Hasher::unkeyed().hash(text.as_bytes())
}

fn new_key(id: &str, hash: KeyHash) -> NewKey {
    NewKey {
        id: id.into(),
        spec: KeySpec::new(id, Environment::Production),
        hash,
        prefix: "pfx_".into(),
        now: Timestamp::now(),
    }
}

/// Gives `id` the secret `new`, keeping its current one as the previous (a regeneration
/// with grace).
fn regenerate_with_grace(store: &SqliteStore, id: &str, new: KeyHash) -> Result<StoredKey, StoreError> {
    let modified = store.modify(id, AUDIT, None, &mut |key| {
        key.previous_hash = Some(std::mem::replace(&mut key.hash, new));
        key.grace_until = Some(Timestamp::now() + Duration::from_secs(600));
        Ok(())
    });
    modified.map(|modified| modified.key)
}

fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::create(&dir.path().join("k.db")).unwrap();
    (dir, store)
}

#[test]
fn a_secret_in_its_grace_period_cannot_be_given_to_another_key() {
    let (_dir, store) = store();
    store.insert(&new_key("key_a", secret("a-old")), AUDIT).unwrap();
    regenerate_with_grace(&store, "key_a", secret("a-new")).unwrap();
    let taken = store.insert(&new_key("key_b", secret("a-old")), AUDIT);
    assert!(matches!(taken, Err(StoreError::SecretInUse)), "{taken:?}");
    let current = store.insert(&new_key("key_b", secret("a-new")), AUDIT);
    assert!(matches!(current, Err(StoreError::SecretInUse)), "{current:?}");
    let batch = [new_key("key_c", secret("c")), new_key("key_d", secret("a-old"))];
    let many = store.insert_many(&batch, AUDIT);
    assert!(matches!(many, Err(StoreError::SecretInUse)), "{many:?}");
    assert!(store.get("key_c").unwrap().is_none(), "all or none");
}

#[test]
fn a_regeneration_cannot_take_a_secret_another_key_holds_in_either_role() {
    let (_dir, store) = store();
    store.insert(&new_key("key_a", secret("a")), AUDIT).unwrap();
    store.insert(&new_key("key_b", secret("b")), AUDIT).unwrap();
    regenerate_with_grace(&store, "key_b", secret("b-new")).unwrap();
    for taken in ["a", "b", "b-new"] {
        let clash = regenerate_with_grace(&store, "key_a", secret(taken));
        assert!(
            matches!(clash, Err(StoreError::SecretInUse)),
            "{taken}: {clash:?}"
        );
    }
    // Its grace over, a previous secret is free again.
    store
        .modify("key_b", AUDIT, None, &mut |key| {
            key.previous_hash = None;
            key.grace_until = None;
            Ok(())
        })
        .unwrap();
    store.insert(&new_key("key_c", secret("b")), AUDIT).unwrap();
}

#[test]
fn rows_written_past_keygate_cannot_share_a_secret_either() {
    let (_dir, store) = store();
    store.insert(&new_key("key_a", secret("a")), AUDIT).unwrap();
    store.insert(&new_key("key_b", secret("b")), AUDIT).unwrap();
    let conn = store.conn().unwrap();
    let raw = conn.execute(
        "UPDATE keys SET previous_hash = ?1 WHERE id = 'key_b'",
        [&secret("a").0[..]],
    );
    assert!(
        raw.is_err(),
        "a raw update giving key_b key_a's secret is refused"
    );
    let previous: Option<Vec<u8>> = conn
        .query_row("SELECT previous_hash FROM keys WHERE id = 'key_b'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(previous, None);
}

#[test]
fn the_migration_ends_a_grace_period_whose_secret_another_key_holds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.db");
    {
        // A store as keygate left it before secrets were unique across keys.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.execute_batch(MIGRATIONS[1]).unwrap();
        conn.pragma_update(None, "user_version", 2).unwrap();
        let row = "INSERT INTO keys (id, name, environment, hash, prefix, permissions, allowed_ips, \
                   status, created_at, updated_at, metadata, revision, previous_hash, grace_until) \
                   VALUES (?1, 'k', 'production', ?2, 'p', '[]', '[]', 'active', 1, 1, '{}', ?3, ?4, ?5)";
        let old = &secret("a-old").0[..];
        conn.execute(
            row,
            params!["key_a", &secret("a-new").0[..], 1, old, i64::MAX / 2],
        )
        .unwrap();
        conn.execute(row, params!["key_b", old, 2, None::<Vec<u8>>, None::<i64>])
            .unwrap();
        conn.execute("UPDATE meta SET value = 2 WHERE name = 'revision'", [])
            .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let a = store.get("key_a").unwrap().unwrap();
    assert_eq!((a.previous_hash, a.grace_until), (None, None));
    assert_eq!(a.revision, 3, "running gateways see the change");
    assert_eq!(store.revision().unwrap(), 3);
    assert_eq!(store.get("key_b").unwrap().unwrap().hash, secret("a-old"));
    let taken = regenerate_with_grace(&store, "key_a", secret("a-old"));
    assert!(matches!(taken, Err(StoreError::SecretInUse)), "{taken:?}");
}

#[test]
fn a_file_renamed_over_the_path_is_opened_in_place_of_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.db");
    let store = SqliteStore::create(&path).unwrap();
    store.insert(&new_key("key_old", secret("old")), AUDIT).unwrap();
    assert!(!store.reopen_if_replaced().unwrap(), "nothing changed");
    let restored = dir.path().join("restored.db");
    SqliteStore::create(&restored)
        .unwrap()
        .insert(&new_key("key_new", secret("new")), AUDIT)
        .unwrap();
    std::fs::rename(&restored, &path).unwrap();
    assert_eq!(store.generation(), 0);
    assert!(store.reopen_if_replaced().unwrap());
    assert_eq!(store.generation(), 1);
    assert!(store.get("key_new").unwrap().is_some());
    assert!(store.get("key_old").unwrap().is_none());
    assert!(!store.reopen_if_replaced().unwrap(), "once");

    std::fs::remove_file(&path).unwrap();
    assert!(matches!(store.reopen_if_replaced(), Err(StoreError::Missing(_))));
    assert!(!path.exists(), "no new empty store");
    let read = store.get("key_new");
    assert!(
        matches!(read, Err(StoreError::Missing(_))),
        "no operation on a file that is gone: {read:?}"
    );
}

#[test]
fn a_second_store_opened_on_the_same_file_in_one_process_leaves_the_first_working() {
    // POSIX locks belong to the process and the file: a descriptor opened and closed on the
    // store file outside SQLite (to look at its first bytes) releases the locks SQLite holds
    // through the first store's connection.
    let (dir, first) = store();
    let path = dir.path().join("k.db");
    first.insert(&new_key("key_a", secret("a")), AUDIT).unwrap();
    let second = SqliteStore::open(&path).unwrap();
    for (i, writer) in [&first, &second, &first, &second].into_iter().enumerate() {
        let id = format!("key_{i}");
        writer.insert(&new_key(&id, secret(&id)), AUDIT).unwrap();
    }
    for reader in [&first, &second] {
        assert_eq!(reader.changes_since(0, 100).unwrap().keys.len(), 5);
    }
    assert!(SqliteStore::open(&path).is_ok());
    first.insert(&new_key("key_last", secret("last")), AUDIT).unwrap();
}

/// The schema's objects and how they are made, to compare before and after an import.
fn schema(dir: &tempfile::TempDir) -> Vec<(String, String)> {
    let conn = Connection::open(dir.path().join("k.db")).unwrap();
    let mut stmt = conn
        .prepare("SELECT name, coalesce(sql, '') FROM sqlite_schema ORDER BY name")
        .unwrap();
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    rows.map(Result::unwrap).collect()
}

#[test]
fn a_bulk_import_puts_back_what_it_set_aside_whether_it_succeeds_or_not() {
    let (dir, store) = store();
    let before = schema(&dir);
    let keys = |from: usize, count: usize| -> Vec<NewKey> {
        (from..from + count)
            .map(|n| new_key(&format!("key_{n}"), secret(&n.to_string())))
            .collect()
    };
    // Into an empty store, in three batches: the random-order indexes go and come back.
    let mut batches = [keys(0, 3), keys(3, 3), keys(6, 3)].into_iter();
    assert_eq!(
        store.insert_batches(&mut || Ok(batches.next()), AUDIT).unwrap(),
        9
    );
    assert_eq!(schema(&dir), before);
    // Called off after the indexes went: they are back, and nothing of the import stays.
    let mut batches = [keys(10, 9), keys(19, 9)].into_iter();
    let mut next = || {
        batches
            .next()
            .map(Some)
            .ok_or(StoreError::Conflict("called off".into()))
    };
    assert!(store.insert_batches(&mut next, AUDIT).is_err());
    assert_eq!(schema(&dir), before);
    assert!(store.get("key_10").unwrap().is_none());
    // A small import into a larger store (its secrets sorted from its own rows), one
    // clashing with a stored secret: refused whole; the same without the clash goes in.
    let mut clash = keys(30, 2);
    clash[1].hash = secret("4");
    let mut clash = Some(clash);
    let refused = store.insert_batches(&mut || Ok(clash.take()), AUDIT);
    assert!(matches!(refused, Err(StoreError::SecretInUse)), "{refused:?}");
    assert_eq!(schema(&dir), before);
    let mut small = Some(keys(30, 2));
    assert_eq!(store.insert_batches(&mut || Ok(small.take()), AUDIT).unwrap(), 2);
    assert_eq!(
        store
            .key_by_hash(&secret("31"), Timestamp::now())
            .unwrap()
            .unwrap()
            .id,
        "key_31"
    );
    assert_eq!(schema(&dir), before);
}

#[test]
fn a_store_made_before_the_keys_uniqueness_moved_to_indexes_keeps_its_rows_and_guarantees() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.db");
    {
        // A store as keygate left it with the keys' UNIQUE columns: two keys, one with a
        // rotated secret in its grace period, usage and an idle warning naming keys by seq.
        let conn = Connection::open(&path).unwrap();
        let before = MIGRATIONS.len() - 1;
        for sql in &MIGRATIONS[..before] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", before as i64).unwrap();
        let row = "INSERT INTO keys (seq, id, name, environment, hash, prefix, permissions, \
                   allowed_ips, status, created_at, updated_at, metadata, revision, previous_hash, \
                   grace_until) \
                   VALUES (?1, ?2, 'k', 'production', ?3, 'p', '[]', '[]', 'active', 1, 1, '{}', ?1, ?4, ?5)";
        conn.execute(
            row,
            params![1, "key_a", &secret("a").0[..], None::<Vec<u8>>, None::<i64>],
        )
        .unwrap();
        conn.execute(
            row,
            params![
                2,
                "key_b",
                &secret("b-new").0[..],
                &secret("b").0[..],
                4_000_000_000_i64
            ],
        )
        .unwrap();
        conn.execute_batch(
            "INSERT INTO key_usage (key_seq, day, requests) VALUES (2, '2026-12-01', 5);
             INSERT INTO idle_warnings (key_seq, deadline, threshold, sent_at) VALUES (1, 9, 1, 1);
             UPDATE meta SET value = 2 WHERE name = 'revision';",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let objects = schema(&dir);
    let keys_sql = &objects.iter().find(|(name, _)| name == "keys").unwrap().1;
    assert!(!keys_sql.contains("UNIQUE"), "{keys_sql}");
    for object in ["keys_id", "keys_revision", "keys_customer", "keys_secrets_insert"] {
        assert!(objects.iter().any(|(name, _)| name == object), "{object}");
    }
    let b = store.get("key_b").unwrap().unwrap();
    assert_eq!(
        (b.seq, b.hash, b.previous_hash),
        (2, secret("b-new"), Some(secret("b")))
    );
    assert_eq!(
        store
            .key_by_hash(&secret("b"), Timestamp::now())
            .unwrap()
            .unwrap()
            .id,
        "key_b",
        "the secret in its grace period still authenticates"
    );
    assert_eq!(store.revision().unwrap(), 2);
    let conn = store.conn().unwrap();
    let usage: i64 = conn
        .query_row("SELECT requests FROM key_usage WHERE key_seq = 2", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(usage, 5);
    // The guarantees hold as before: one id, one secret, and foreign keys are on again.
    let orphan = conn.execute(
        "INSERT INTO key_usage (key_seq, day, requests) VALUES (99, '2026-12-01', 1)",
        [],
    );
    assert!(orphan.is_err(), "usage of a key the store lacks is refused");
    drop(conn);
    let same_id = store.insert(&new_key("key_a", secret("c")), AUDIT);
    assert!(matches!(same_id, Err(StoreError::Conflict(_))), "{same_id:?}");
    for taken in ["a", "b", "b-new"] {
        let clash = store.insert(&new_key("key_c", secret(taken)), AUDIT);
        assert!(
            matches!(clash, Err(StoreError::SecretInUse)),
            "{taken}: {clash:?}"
        );
    }
}

#[test]
fn an_update_that_keeps_a_keys_secrets_leaves_their_rows_alone() {
    let (_dir, store) = store();
    store.insert(&new_key("key_a", secret("a")), AUDIT).unwrap();
    let conn = store.conn().unwrap();
    // Rows changed by the statement and its triggers: the trigger's delete and insert count.
    let changed_by = |sql: &str| {
        let total = "SELECT total_changes()";
        let before: i64 = conn.query_row(total, [], |r| r.get(0)).unwrap();
        conn.execute(sql, []).unwrap();
        let after: i64 = conn.query_row(total, [], |r| r.get(0)).unwrap();
        after - before
    };
    // As the store writes a revocation: every column set, the secrets to what they were.
    let kept = "UPDATE keys SET status = 'revoked', hash = hash, previous_hash = previous_hash \
                WHERE id = 'key_a'";
    assert_eq!(changed_by(kept), 1);
    let moved = "UPDATE keys SET previous_hash = hash, hash = X'01' WHERE id = 'key_a'";
    assert_eq!(changed_by(moved), 4, "the key, its old row out, two rows in");
}
