use std::sync::Arc;

use super::*;
use crate::core::environment::Environment;
use crate::core::secret::Hasher;

fn key(seq: u64, secret: &str, previous: Option<&str>) -> AuthKey {
    let hasher = Hasher::unkeyed();
    AuthKey {
        seq,
        id: format!("key_{seq}").into(),
        hash: hasher.hash(secret.as_bytes()).into(),
        environment: Environment::Production,
        revoked: false,
        expires_at: NEVER,
        permissions: Arc::default(),
        customer_id: None,
        extras: Extras {
            previous: previous.map(|p| PreviousSecret {
                hash: hasher.hash(p.as_bytes()).into(),
                until: 100,
            }),
            ..Extras::default()
        }
        .shared(),
    }
}

fn find(table: &KeyTable, secret: &str) -> Option<(u64, Presented)> {
    table
        .lookup(&Hasher::unkeyed().hash(secret.as_bytes()))
        .map(|(key, which)| (key.seq, which))
}

#[test]
fn a_plain_key_has_no_extras() {
    assert!(key(1, "secret-one-0123456", None).extras.is_none());
}

#[test]
fn a_key_is_found_by_its_secret_only() {
    let table = KeyTable::default();
    table.upsert(key(1, "secret-one-0123456", None));
    assert_eq!(find(&table, "secret-one-0123456"), Some((1, Presented::Current)));
    assert_eq!(find(&table, "secret-two-0123456"), None);
}

#[test]
fn regeneration_with_grace_indexes_both_secrets_and_replacing_drops_the_old() {
    let table = KeyTable::default();
    table.upsert(key(1, "old-secret-0123456", None));
    table.upsert(key(1, "new-secret-0123456", Some("old-secret-0123456")));
    assert_eq!(find(&table, "new-secret-0123456"), Some((1, Presented::Current)));
    assert_eq!(
        find(&table, "old-secret-0123456"),
        Some((1, Presented::Previous { until: 100 }))
    );
    table.upsert(key(1, "new-secret-0123456", None));
    assert_eq!(find(&table, "old-secret-0123456"), None);
    assert_eq!(table.len(), 1);
}

#[test]
fn a_hash_two_keys_claim_admits_neither_until_one_lets_go() {
    let table = KeyTable::default();
    table.upsert(key(1, "a-new-secret-01234", Some("a-old-secret-01234")));
    let upserted = table.upsert(key(2, "a-old-secret-01234", None));
    assert_eq!(upserted.contested, 1);
    assert_eq!(find(&table, "a-old-secret-01234"), None, "neither key");
    assert_eq!(find(&table, "a-new-secret-01234"), Some((1, Presented::Current)));
    // A change to either that keeps the hash keeps it contested.
    assert_eq!(table.upsert(key(2, "a-old-secret-01234", None)).contested, 1);
    assert_eq!(find(&table, "a-old-secret-01234"), None);
    // Key 1's grace ends: the hash is key 2's alone.
    assert_eq!(table.upsert(key(1, "a-new-secret-01234", None)).contested, 0);
    assert_eq!(find(&table, "a-old-secret-01234"), Some((2, Presented::Current)));
    assert_eq!(find(&table, "a-new-secret-01234"), Some((1, Presented::Current)));
}

#[test]
fn a_contested_hash_goes_to_the_key_left_when_the_other_is_removed() {
    let table = KeyTable::default();
    table.upsert(key(1, "shared-secret-0123", None));
    table.upsert(key(2, "shared-secret-0123", None));
    table.upsert(key(3, "shared-secret-0123", None));
    assert_eq!(find(&table, "shared-secret-0123"), None);
    table.remove(1);
    assert_eq!(find(&table, "shared-secret-0123"), None, "still two claim it");
    table.remove(3);
    assert_eq!(find(&table, "shared-secret-0123"), Some((2, Presented::Current)));
    table.remove(2);
    assert_eq!(find(&table, "shared-secret-0123"), None);
    assert!(!table.any_contested());
}

#[test]
fn watchers_are_told_of_each_sync_and_each_removal() {
    let table = KeyTable::default();
    table.upsert(key(1, "secret-one-0123456", None));
    let mut changes = table.changes();
    assert!(!changes.has_changed().unwrap());
    table.set_revision(1);
    assert!(
        changes.has_changed().unwrap(),
        "a sync's batch, or its quiet tick"
    );
    changes.mark_unchanged();
    table.remove(2);
    assert!(!changes.has_changed().unwrap(), "nothing was removed");
    table.remove(1);
    assert!(changes.has_changed().unwrap());
}

#[test]
fn removal_forgets_every_secret_of_the_key() {
    let table = KeyTable::default();
    table.upsert(key(1, "new-secret-0123456", Some("old-secret-0123456")));
    table.upsert(key(2, "other-secret-01234", None));
    table.remove(1);
    assert_eq!(find(&table, "new-secret-0123456"), None);
    assert_eq!(find(&table, "old-secret-0123456"), None);
    assert_eq!(find(&table, "other-secret-01234"), Some((2, Presented::Current)));
}

fn full_key(seq: u64, secret: &str) -> AuthKey {
    AuthKey {
        id: format!("key_{seq:020}").into(),
        customer_id: Some(CustomerId::new(&format!("cust_{seq}"))),
        permissions: Arc::new(crate::core::permission::PermissionSet::new(vec!["customer:read"
            .parse()
            .unwrap()])),
        environment: Environment::Staging,
        revoked: seq.is_multiple_of(2),
        expires_at: 1_000 + seq as i64,
        ..key(seq, secret, None)
    }
}

#[test]
fn a_key_comes_out_as_it_went_in() {
    let table = KeyTable::default();
    let long_customer = CustomerId::new("a-customer-id-longer-than-inline");
    table.upsert(AuthKey {
        customer_id: Some(long_customer.clone()),
        ..full_key(7, "secret-seven-01234")
    });
    table.upsert(key(8, "secret-eight-01234", Some("secret-old-8-01234")));
    let (found, _) = table
        .lookup(&Hasher::unkeyed().hash(b"secret-seven-01234"))
        .unwrap();
    assert_eq!(&*found.id, "key_00000000000000000007");
    assert_eq!(found.customer_id, Some(long_customer));
    assert_eq!(found.environment, Environment::Staging);
    assert_eq!((found.revoked, found.expires_at), (false, 1_007));
    assert!(found.permissions.grants(&"customer:read".parse().unwrap()));
    let (old, which) = table
        .lookup(&Hasher::unkeyed().hash(b"secret-old-8-01234"))
        .unwrap();
    assert_eq!(which, Presented::Previous { until: 100 });
    assert_eq!(
        old.hash,
        Hasher::unkeyed().hash(b"secret-eight-01234").into(),
        "the current hash"
    );
    assert_eq!(&*old.id, "key_8", "an id of another shape");
    assert_eq!(table.get(8).map(|k| k.seq), Some(8));
    assert_eq!(table.get(9).map(|k| k.seq), None);
}

#[test]
fn many_changes_leave_every_key_found_by_its_secrets_only() {
    let table = KeyTable::default();
    let secret = |seq: u64, round: u64| format!("secret-{seq}-{round}-0123456789");
    for seq in 0..3_000 {
        table.upsert(full_key(seq, &secret(seq, 0)));
    }
    // Every third key regenerated with a grace period, every third removed.
    for seq in (0..3_000).step_by(3) {
        table.upsert(key(seq, &secret(seq, 1), Some(&secret(seq, 0))));
        table.remove(seq + 1);
    }
    for seq in (0..3_000).step_by(3) {
        table.upsert(full_key(seq + 1, &secret(seq + 1, 2)));
    }
    assert_eq!(table.len(), 3_000);
    let mut seen = 0;
    table.for_each(|_| seen += 1);
    assert_eq!(seen, 3_000);
    let mut revoked = 0;
    table.for_each_state(|_, r, _| revoked += usize::from(r));
    // The keys left as `full_key` made them: seqs 2, 5, ... (one in three) and seqs 1, 4, ...
    // (made again); the even ones among them are revoked.
    let expected = (0..3_000u64)
        .filter(|s| s % 3 != 0 && s.is_multiple_of(2))
        .count();
    assert_eq!(revoked, expected);
    for seq in 0..3_000u64 {
        let found = |round| find(&table, &secret(seq, round));
        match seq % 3 {
            0 => {
                assert_eq!(found(1), Some((seq, Presented::Current)));
                assert_eq!(found(0), Some((seq, Presented::Previous { until: 100 })));
            }
            1 => {
                assert_eq!((found(0), found(2)), (None, Some((seq, Presented::Current))));
            }
            _ => assert_eq!(found(0), Some((seq, Presented::Current))),
        }
        assert!(table.contains(seq));
    }
    assert!(!table.any_contested());
}

#[test]
fn every_expiry_comes_back_as_it_went_in_whether_it_fits_a_word_or_not() {
    let table = KeyTable::default();
    let expiries = [
        NEVER,
        0,
        1_900_000_000,
        -1,
        i64::MIN,
        1 << 40,
        i64::from(u32::MAX),
    ];
    for (seq, &expires_at) in (1..).zip(&expiries) {
        table.upsert(AuthKey {
            expires_at,
            ..key(seq, &format!("secret-expiry-{seq:04}"), None)
        });
    }
    for (seq, &expires_at) in (1..).zip(&expiries) {
        assert_eq!(table.get(seq).unwrap().expires_at, expires_at, "key {seq}");
    }
    let mut states = Vec::new();
    table.for_each_state(|_, _, expires_at| states.push(expires_at));
    states.sort_unstable();
    let mut want = expiries.to_vec();
    want.sort_unstable();
    assert_eq!(states, want);
    // Replaced by an expiry that fits, then back: the slot beside is given back and taken again.
    table.upsert(AuthKey {
        expires_at: 5,
        ..key(6, "secret-expiry-0006", None)
    });
    assert_eq!(table.get(6).unwrap().expires_at, 5);
    table.upsert(AuthKey {
        expires_at: 1 << 41,
        ..key(6, "secret-expiry-0006", None)
    });
    assert_eq!(table.get(6).unwrap().expires_at, 1 << 41);
    assert_eq!(find(&table, "secret-expiry-0006"), Some((6, Presented::Current)));
}

#[test]
fn a_key_with_a_customer_and_extras_keeps_both_in_its_one_side_slot() {
    let table = KeyTable::default();
    let with_both = |seq, customer: Option<&str>, previous| AuthKey {
        customer_id: customer.map(CustomerId::new),
        ..key(seq, "secret-both-0123456", previous)
    };
    let check = |customer: Option<&str>, previous: bool| {
        let (found, _) = table
            .lookup(&Hasher::unkeyed().hash(b"secret-both-0123456"))
            .unwrap();
        assert_eq!(found.customer_id.as_deref(), customer);
        assert_eq!(found.previous().is_some(), previous);
        let old = find(&table, "secret-old-both-012");
        assert_eq!(old.is_some(), previous);
    };
    table.upsert(with_both(3, Some("cust_both"), Some("secret-old-both-012")));
    check(Some("cust_both"), true);
    table.upsert(with_both(3, None, Some("secret-old-both-012")));
    check(None, true);
    table.upsert(with_both(3, Some("cust_only"), None));
    check(Some("cust_only"), false);
    table.upsert(with_both(3, None, None));
    check(None, false);
    assert_eq!(table.len(), 1);
}

#[test]
fn the_spread_gives_every_shard_a_share_growing_to_twice_the_first() {
    let spread = Spread::new();
    let shares: Vec<usize> = (0..SHARDS).map(|shard| spread.entries(shard)).collect();
    assert_eq!(shares.iter().sum::<usize>(), SPREAD);
    assert!(shares.windows(2).all(|pair| pair[0] <= pair[1] + 1), "{shares:?}");
    let (first, last) = (shares[0] as f64, shares[SHARDS - 1] as f64);
    assert!((1.7..=2.3).contains(&(last / first)), "{shares:?}");
    // Each shard is picked by words whose bits 40 to 49 fall in its range.
    for shard in [0, 31, 63] {
        let entry = spread.0.iter().position(|&s| usize::from(s) == shard).unwrap();
        assert_eq!(spread.of((entry as u64) << 40 | 0xff), shard);
    }
}

#[test]
fn a_lookup_compares_all_16_bytes_the_table_keeps() {
    let table = KeyTable::default();
    let kept = ShortHash([1; 16]);
    table.upsert(AuthKey {
        hash: kept,
        ..key(1, "secret-one-0123456", None)
    });
    let mut second_word = kept;
    second_word.0[15] ^= 1;
    let mut first_word = kept;
    first_word.0[0] ^= 1;
    assert_eq!(table.lookup_short(kept).map(|(key, _)| key.seq), Some(1));
    assert!(table.lookup_short(second_word).is_none());
    assert!(table.lookup_short(first_word).is_none());
    // A full hash is looked up by its first 16 bytes.
    let mut full = crate::core::secret::KeyHash([1; 32]);
    full.0[31] = 9;
    assert_eq!(table.lookup(&full).map(|(key, _)| key.seq), Some(1));
}

#[test]
fn a_table_reserved_for_its_keys_takes_them_without_growing_its_indexes() {
    let table = KeyTable::default();
    table.upsert(key(1, "secret-0-0123456789", None));
    // Room for twice the keys: a shard's keys by hash vary around its share.
    table.reserve(4_000);
    let capacities = |table: &KeyTable| -> Vec<usize> {
        let by_seq = table.writer();
        let parts = by_seq.iter().map(HashTable::capacity);
        let shards = (0..SHARDS).map(|shard| table.read(shard).index_capacity());
        parts.chain(shards).collect()
    };
    let reserved = capacities(&table);
    for seq in 2..=2_000 {
        table.upsert(key(seq, &format!("secret-{seq}-0123456789"), None));
    }
    assert_eq!(capacities(&table), reserved);
    assert_eq!(table.len(), 2_000);
    for seq in [1, 2, 1_000, 2_000] {
        let secret = format!("secret-{}-0123456789", if seq == 1 { 0 } else { seq });
        assert_eq!(find(&table, &secret), Some((seq, Presented::Current)));
        assert_eq!(table.get(seq).map(|key| key.seq), Some(seq));
    }
}
