//! The snapshot's unit tests: a table written and read back, cut-off and foreign files, the
//! journal replayed over the snapshot, and whole writes interleaved with syncs.

use std::sync::Arc;

use super::journal::Change;
use super::*;
use crate::proxy::table::NEVER;

fn key(seq: u64, extras: Option<Extras>) -> AuthKey {
    AuthKey {
        seq,
        id: format!("key_{seq}").into(),
        hash: ShortHash([seq as u8; 16]),
        environment: Environment::Production,
        revoked: seq.is_multiple_of(2),
        expires_at: NEVER,
        permissions: Arc::new(PermissionSet::new(vec!["customer:read".parse().unwrap()])),
        customer_id: Some("acme".into()),
        extras: extras.and_then(Extras::shared),
    }
}

#[test]
fn a_table_written_and_read_back_is_the_same_table() {
    let table = KeyTable::default();
    table.upsert(key(1, None));
    table.upsert(key(
        2,
        Some(Extras {
            rate_limit: Some(RateLimitSpec::from_rate("6/m".parse().unwrap(), None)),
            allowed_ips: vec!["10.0.0.0/8".parse().unwrap()].into_boxed_slice(),
            previous: Some(PreviousSecret {
                hash: ShortHash([9; 16]),
                until: 1_900_000_000,
            }),
            quota: Some(QuotaSpec {
                limit: 1000,
                period: crate::core::quota::Period::Month,
                anchor: "2026-01-31T00:00:00Z".parse().unwrap(),
            }),
        }),
    ));
    table.set_revision(42);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table.snap");
    write(&table, &CustomerMap::default(), &path, 1_234, 1_000).unwrap();
    let loaded = read(&path, |p| Arc::new(PermissionSet::new(p.to_vec()))).unwrap();
    assert_eq!(
        (
            loaded.revision,
            loaded.written_ms,
            loaded.synced_ms,
            loaded.keys.len()
        ),
        (42, 1_234, 1_000, 2)
    );
    let mut keys = loaded.keys;
    keys.sort_by_key(|k| k.seq);
    let (plain, rich) = (&keys[0], &keys[1]);
    assert_eq!(
        (plain.seq, &*plain.id, plain.hash, plain.revoked),
        (1, "key_1", ShortHash([1; 16]), false)
    );
    assert_eq!(plain.customer_id.as_deref(), Some("acme"));
    assert!(plain.extras.is_none());
    assert_eq!(rich.rate_limit().map(|r| r.requests.get()), Some(6));
    assert_eq!(rich.allowed_ips().len(), 1);
    let previous = rich.extras.as_ref().and_then(|e| e.previous.as_ref()).unwrap();
    assert_eq!(
        (previous.hash, previous.until),
        (ShortHash([9; 16]), 1_900_000_000)
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}

#[test]
fn a_key_removed_between_the_capture_and_the_write_is_left_out_and_counted_out() {
    let table = KeyTable::default();
    for seq in 1..=3 {
        table.upsert(key(seq, None));
    }
    let capture = Capture::of(&table, &CustomerMap::default());
    table.remove(2);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table.snap");
    let temporary = write_temporary(&capture, &path, 0, 0).unwrap();
    std::fs::rename(&temporary, &path).unwrap();
    let loaded = read(&path, |p| Arc::new(PermissionSet::new(p.to_vec()))).unwrap();
    let mut seqs: Vec<u64> = loaded.keys.iter().map(|k| k.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, [1, 3]);
}

#[test]
fn a_cut_off_or_foreign_file_is_refused_not_half_loaded() {
    let table = KeyTable::default();
    for seq in 1..=3 {
        table.upsert(key(seq, None));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table.snap");
    write(&table, &CustomerMap::default(), &path, 0, 0).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let cut: Vec<&str> = text.lines().take(3).collect();
    std::fs::write(&path, cut.join("\n")).unwrap();
    let intern = |p: &[Permission]| Arc::new(PermissionSet::new(p.to_vec()));
    assert!(read(&path, intern).err().unwrap().contains("cut-off"));
    std::fs::write(&path, "{\"not\":\"a snapshot\"}\n").unwrap();
    assert!(read(&path, intern).is_err());
    std::fs::write(&path, "").unwrap();
    assert!(read(&path, intern).is_err());
}

#[test]
fn the_journal_replays_over_the_snapshot_and_a_cut_off_last_line_was_never_applied() {
    let table = KeyTable::default();
    for seq in [1, 3] {
        table.upsert(key(seq, None));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table.snap");
    write(&table, &CustomerMap::default(), &path, 10, 10).unwrap();
    let mut journal = journal::Journal::new(&path);
    let revoked = AuthKey {
        revoked: true,
        ..key(3, None)
    };
    journal.record(
        &Change {
            put: &[&revoked],
            del: &[1],
            ..Change::default()
        },
        7,
        20,
    );
    journal.mark(30, 5);
    let intern = |p: &[Permission]| Arc::new(PermissionSet::new(p.to_vec()));
    let loaded = read(&path, intern).unwrap();
    assert_eq!(
        (loaded.revision, loaded.synced_ms, loaded.written_ms),
        (7, 30, 10)
    );
    assert_eq!(loaded.keys.len(), 1, "key 1 removed");
    assert!(loaded.keys[0].revoked, "key 3 revoked");

    let journal_path = journal::path_of(&path);
    let mut text = std::fs::read(&journal_path).unwrap();
    text.extend_from_slice(b"{\"synced_ms\":40,\"revision\":8,\"del\":[3");
    std::fs::write(&journal_path, &text).unwrap();
    let loaded = read(&path, intern).unwrap();
    assert_eq!((loaded.revision, loaded.synced_ms, loaded.keys.len()), (7, 30, 1));

    text.extend_from_slice(b"\n{\"synced_ms\":50}\n");
    std::fs::write(&journal_path, &text).unwrap();
    assert!(
        read(&path, intern).is_err(),
        "a bad line before the last refuses the whole"
    );
}

/// One step of a whole write that runs beside the sync.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Capture the table and write it to the temporary file.
    Write,
    Install,
    Retire,
}

/// Every order in which `changes` changes and the write's three steps can interleave.
fn interleavings(changes: usize) -> Vec<Vec<Option<Step>>> {
    let steps = [Step::Write, Step::Install, Step::Retire];
    let total = changes + steps.len();
    let mut orders = Vec::new();
    for mask in 0u32..1 << total {
        if mask.count_ones() as usize != steps.len() {
            continue;
        }
        let mut next = steps.iter();
        let order = (0..total)
            .map(|i| (mask & 1 << i != 0).then(|| *next.next().unwrap()))
            .collect();
        orders.push(order);
    }
    orders
}

/// The keys as a comparable set: (seq, revoked, current hash).
fn state<'a>(keys: impl Iterator<Item = &'a AuthKey>) -> Vec<(u64, bool, ShortHash)> {
    let mut state: Vec<_> = keys.map(|k| (k.seq, k.revoked, k.hash)).collect();
    state.sort_by_key(|s| s.0);
    state
}

fn table_state(table: &KeyTable) -> Vec<(u64, bool, ShortHash)> {
    let mut keys = Vec::new();
    table.for_each(|k| keys.push((k.seq, k.revoked, k.hash)));
    keys.sort_by_key(|s| s.0);
    keys
}

/// A change as the sync makes it: journaled, then applied.
fn change(journal: &mut journal::Journal, table: &KeyTable, n: usize) {
    let (seq, revoked, removed) = [
        (2, true, false),
        (3, false, true),
        (5, false, false),
        (2, false, false),
    ][n];
    let revision = 10 + n as u64;
    if removed {
        journal.record(
            &Change {
                del: &[seq],
                ..Change::default()
            },
            revision,
            0,
        );
        table.remove(seq);
    } else {
        let changed = |seq| AuthKey {
            revoked,
            ..key(seq, None)
        };
        journal.record(
            &Change {
                put: &[&changed(seq)],
                ..Change::default()
            },
            revision,
            0,
        );
        table.upsert(changed(seq));
    }
    table.set_revision(revision);
}

#[test]
fn a_whole_write_beside_the_sync_replays_to_the_table_whatever_it_captured_and_wherever_it_stops() {
    let intern = |p: &[Permission]| Arc::new(PermissionSet::new(p.to_vec()));
    let orders = interleavings(4);
    assert_eq!(orders.len(), 35);
    for earlier_write_failed in [false, true] {
        for order in &orders {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("table.snap");
            let table = KeyTable::default();
            for seq in 1..=4 {
                table.upsert(AuthKey {
                    revoked: false,
                    ..key(seq, None)
                });
            }
            write(&table, &CustomerMap::default(), &path, 0, 0).unwrap();
            let mut journal = journal::Journal::new(&path);
            // A change journaled before the rotation: it goes to J.prev.
            let before = AuthKey {
                revoked: true,
                ..key(1, None)
            };
            journal.record(
                &Change {
                    put: &[&before],
                    ..Change::default()
                },
                5,
                0,
            );
            table.upsert(AuthKey {
                revoked: true,
                ..key(1, None)
            });
            if earlier_write_failed {
                // A rotation whose write never installed, then a change: the next
                // rotation appends that J to the J.prev left.
                journal.rotate().unwrap();
                let again = AuthKey {
                    revoked: false,
                    ..key(4, None)
                };
                journal.record(
                    &Change {
                        put: &[&again],
                        ..Change::default()
                    },
                    6,
                    0,
                );
                table.upsert(AuthKey {
                    revoked: false,
                    ..key(4, None)
                });
            }
            let rotation = journal.rotate().unwrap();
            let crash_here = |table: &KeyTable, at: &str| {
                let loaded = read(&path, intern).unwrap_or_else(|e| panic!("{order:?} {at}: {e}"));
                assert_eq!(
                    state(loaded.keys.iter()),
                    table_state(table),
                    "{order:?}, earlier write failed: {earlier_write_failed}, crash {at}"
                );
            };
            crash_here(&table, "after the rotation");
            let (mut changes, mut temporary) = (0, None);
            for step in order {
                match step {
                    None => {
                        change(&mut journal, &table, changes);
                        changes += 1;
                    }
                    Some(Step::Write) => {
                        let capture = Capture::of(&table, &CustomerMap::default());
                        temporary = Some(write_temporary(&capture, &path, 1, 1).unwrap());
                    }
                    Some(Step::Install) => {
                        assert!(journal.install(&rotation, temporary.as_ref().unwrap()).unwrap());
                        sync_folder(&path).unwrap();
                    }
                    Some(Step::Retire) => journal.retire(&rotation).unwrap(),
                }
                crash_here(&table, &format!("after {step:?}"));
            }
            assert!(!journal::previous_of(&path).exists(), "{order:?}: J.prev retired");
        }
    }
}

fn limits(requests: u32) -> CustomerLimits {
    CustomerLimits {
        rate: Some(RateLimitSpec::from_rate(
            format!("{requests}/h").parse().unwrap(),
            None,
        )),
        quota: None,
    }
}

#[test]
fn customers_are_written_after_the_keys_and_their_journaled_changes_replay_over_them() {
    let table = KeyTable::default();
    table.upsert(key(1, None));
    let customers = CustomerMap::default();
    customers.set("acme", limits(2));
    customers.set("globex", limits(5));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table.snap");
    write(&table, &customers, &path, 10, 10).unwrap();
    let intern = |p: &[Permission]| Arc::new(PermissionSet::new(p.to_vec()));
    let loaded = read(&path, intern).unwrap();
    assert_eq!(loaded.keys.len(), 1);
    assert_eq!(loaded.customers.len(), 2);
    assert_eq!(loaded.customers["acme"], limits(2));

    // Acme's limit changes and Globex loses its object: journaled, replayed.
    let mut journal = journal::Journal::new(&path);
    let change = [
        ("acme", limits(3)),
        (
            "globex",
            CustomerLimits {
                rate: None,
                quota: None,
            },
        ),
    ];
    journal.record(
        &Change {
            customers: &change,
            ..Change::default()
        },
        2,
        20,
    );
    let loaded = read(&path, intern).unwrap();
    assert_eq!(loaded.customers.len(), 1);
    assert_eq!(loaded.customers["acme"], limits(3));
}

#[test]
fn a_version_1_snapshot_without_customers_still_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table.snap");
    let line = r#"{"seq":1,"id":"key_1","hash":"0101010101010101010101010101010101010101010101010101010101010101","environment":"production","revoked":false,"expires_at":9223372036854775807,"permissions":["customer:read"],"customer_id":"acme"}"#;
    let header = r#"{"format":"keygate-key-table","version":1,"revision":4,"written_ms":7,"keys":1}"#;
    std::fs::write(&path, format!("{header}\n{line}\n")).unwrap();
    let loaded = read(&path, |p| Arc::new(PermissionSet::new(p.to_vec()))).unwrap();
    assert_eq!((loaded.revision, loaded.synced_ms, loaded.keys.len()), (4, 7, 1));
    assert!(loaded.customers.is_empty());
    // The whole hash of versions 1 and 2: its first 16 bytes are what the table keeps.
    assert_eq!(loaded.keys[0].hash, ShortHash([1; 16]));
    // A version this binary does not know is refused.
    let future = header.replace("\"version\":1", "\"version\":4");
    std::fs::write(&path, format!("{future}\n{line}\n")).unwrap();
    assert!(read(&path, |p| Arc::new(PermissionSet::new(p.to_vec()))).is_err());
}

#[test]
fn version_3_writes_16_bytes_of_each_hash_and_a_version_2_file_still_loads() {
    let table = KeyTable::default();
    table.upsert(key(
        3,
        Some(Extras {
            previous: Some(PreviousSecret {
                hash: ShortHash([7; 16]),
                until: 1_900_000_000,
            }),
            ..Extras::default()
        }),
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table.snap");
    write(&table, &CustomerMap::default(), &path, 1, 1).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with(r#"{"format":"keygate-key-table","version":3,"#),
        "{text}"
    );
    let line = text.lines().nth(1).unwrap();
    assert!(
        line.contains(&format!(r#""hash":"{}""#, "03".repeat(16))),
        "{line}"
    );
    assert!(
        line.contains(&format!(r#""previous_hash":"{}""#, "07".repeat(16))),
        "{line}"
    );

    let header =
        r#"{"format":"keygate-key-table","version":2,"revision":4,"written_ms":7,"keys":1,"customers":0}"#;
    let old = format!(
        r#"{{"seq":5,"id":"key_5","hash":"{}","environment":"production","revoked":false,"expires_at":9223372036854775807,"permissions":[],"previous_hash":"{}","previous_until":1900000000}}"#,
        "05".repeat(16) + &"ff".repeat(16),
        "06".repeat(32)
    );
    std::fs::write(&path, format!("{header}\n{old}\n")).unwrap();
    let loaded = read(&path, |p| Arc::new(PermissionSet::new(p.to_vec()))).unwrap();
    assert_eq!(loaded.keys[0].hash, ShortHash([5; 16]));
    assert_eq!(
        loaded.keys[0].previous().map(|p| p.hash),
        Some(ShortHash([6; 16]))
    );
    // Neither 32 nor 64 hex digits: refused, not cut.
    let odd = old.replace(&"05".repeat(16), "05");
    std::fs::write(&path, format!("{header}\n{odd}\n")).unwrap();
    assert!(read(&path, |p| Arc::new(PermissionSet::new(p.to_vec()))).is_err());
}
