//! The in-memory key table the hot path authenticates against (data plane state).
//!
//! Indexed by the first 16 bytes of the key's BLAKE3 hash; the full hash is compared after, in
//! constant time. A key being regenerated with a grace period is indexed under both hashes.
//! The control plane's sync writes single keys in O(1) ([`KeyTable::upsert`],
//! [`KeyTable::remove`]); readers never wait on more than one shard's short write.
//!
//! One hash, one key: the store refuses a secret that another key holds, but the table does
//! not count on it (a store written by an older keygate, by hand, or two rows met mid-sync). A
//! hash that two keys claim is *contested*: it is indexed for neither until only one claims it
//! again. Failing closed for both is the one safe choice: the table cannot tell which key the
//! secret's holder was meant to be, and letting either win would admit a caller with another
//! key's permissions. The key's other secret (current or previous) keeps working.

use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use ipnet::IpNet;
use rustc_hash::{FxBuildHasher, FxHashMap};
use tokio::sync::watch;

use super::error::AuthFailure;
use crate::core::environment::Environment;
use crate::core::key::RateLimitSpec;
use crate::core::permission::PermissionSet;
use crate::core::quota::QuotaSpec;
use crate::core::secret::KeyHash;

/// What the hot path knows of a key: only what it needs to admit or refuse a request.
///
/// A million of these live in memory, so the layout is kept small (120 bytes with the `Arc`'s
/// counts): what few keys have sits behind one pointer, and "never expires" is a sentinel
/// rather than an `Option`. The customer stays inline: deployments that scope keys to
/// customers tend to scope all of them.
#[derive(Debug)]
pub struct AuthKey {
    pub seq: u64,
    pub id: Box<str>,
    pub hash: KeyHash,
    pub environment: Environment,
    /// Revoked keys stay in the table so their refusals are told apart from unknown keys.
    pub revoked: bool,
    /// Unix seconds; [`NEVER`] for a key without an expiry.
    pub expires_at: i64,
    /// Shared between keys with the same set.
    pub permissions: Arc<PermissionSet>,
    pub customer_id: Option<Box<str>>,
    /// `None` for a key with none of them (most keys).
    pub extras: Option<Box<Extras>>,
}

/// [`AuthKey::expires_at`] of a key that does not expire.
pub const NEVER: i64 = i64::MAX;

/// The settings few keys have, boxed together so a plain key pays 8 bytes for them all.
#[derive(Debug, Default)]
pub struct Extras {
    /// `None`: the configured default.
    pub rate_limit: Option<RateLimitSpec>,
    pub allowed_ips: Box<[IpNet]>,
    /// The secret a regeneration replaced, while its grace period runs.
    pub previous: Option<PreviousSecret>,
    /// The key's quota (SPEC 11).
    pub quota: Option<QuotaSpec>,
}

impl Extras {
    /// Boxed, or `None` when there is nothing in them.
    pub fn boxed(self) -> Option<Box<Extras>> {
        let empty = self.rate_limit.is_none()
            && self.allowed_ips.is_empty()
            && self.previous.is_none()
            && self.quota.is_none();
        (!empty).then(|| Box::new(self))
    }
}

impl AuthKey {
    pub fn expired(&self, now: i64) -> bool {
        self.expires_at <= now
    }

    pub fn rate_limit(&self) -> Option<&RateLimitSpec> {
        self.extras.as_ref()?.rate_limit.as_ref()
    }

    pub fn allowed_ips(&self) -> &[IpNet] {
        self.extras.as_ref().map_or(&[], |extras| &extras.allowed_ips)
    }

    pub fn previous(&self) -> Option<&PreviousSecret> {
        self.extras.as_ref()?.previous.as_ref()
    }

    pub fn quota(&self) -> Option<&QuotaSpec> {
        self.extras.as_ref()?.quota.as_ref()
    }

    /// Whether the key, found by the secret `presented`, may be used at `now`: not revoked, not
    /// expired, and, for a replaced secret, still in its grace period (past it, the secret is
    /// unknown). The request path, its open tunnels and the admin API's `verify` all ask this.
    pub fn usable(&self, presented: Presented, now: i64) -> Result<(), AuthFailure> {
        if self.revoked {
            return Err(AuthFailure::Revoked);
        }
        if self.expired(now) {
            return Err(AuthFailure::Expired);
        }
        match presented {
            Presented::Previous { until } if until <= now => Err(AuthFailure::Unknown),
            Presented::Current | Presented::Previous { .. } => Ok(()),
        }
    }
}

/// Every hash a key authenticates with: its current secret's, and the previous one's.
fn hashes(key: &AuthKey) -> impl Iterator<Item = KeyHash> {
    std::iter::once(key.hash).chain(key.previous().map(|p| p.hash))
}

#[derive(Debug, Clone, Copy)]
pub struct PreviousSecret {
    pub hash: KeyHash,
    /// Unix seconds at which the old secret stops.
    pub until: i64,
}

/// Which of a key's secrets a request presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented {
    Current,
    /// The regenerated-away secret; valid only until `PreviousSecret::until`.
    Previous {
        until: i64,
    },
}

/// Shards: enough that two writers rarely meet and a shard's rehash stays short.
const SHARDS: usize = 64;

/// The hash index's key: 16 bytes of a BLAKE3 hash. Already uniform, so the map uses it as its
/// own hash instead of hashing it again (an attacker cannot place entries: only stored keys'
/// hashes are inserted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Index([u64; 2]);

impl Hash for Index {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0[0]);
    }
}

impl From<&KeyHash> for Index {
    fn from(hash: &KeyHash) -> Self {
        Index(hash.short())
    }
}

/// Passes an [`Index`]'s first word through as the hash.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is expected; anything else still hashes, if slowly.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = word;
    }
}

#[derive(Debug)]
pub struct KeyTable {
    by_hash: DashMap<Index, Arc<AuthKey>, BuildHasherDefault<PassThrough>>,
    /// Sequence numbers are ours, not a client's: a fast hash needs no defence against floods.
    by_seq: DashMap<u64, Arc<AuthKey>, FxBuildHasher>,
    /// Hashes that more than one key claims, with the keys that claim them; indexed for none.
    /// Empty but for a faulty store. Held for the whole of a write, so writers take turns (the
    /// hot path never takes it).
    contested: Mutex<FxHashMap<Index, Vec<u64>>>,
    revision: AtomicU64,
    /// Told of every applied batch of changes (each sync, changes or not) and every removal,
    /// for the open tunnels to check their keys ([`super::tunnel::KeyHolder`]).
    changed: watch::Sender<()>,
}

/// What an upsert could not index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Upserted {
    /// Hashes of the key that another key holds too: indexed for neither.
    pub contested: usize,
}

impl Default for KeyTable {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl KeyTable {
    pub fn with_capacity(keys: usize) -> Self {
        KeyTable {
            by_hash: DashMap::with_capacity_and_hasher_and_shard_amount(keys, Default::default(), SHARDS),
            by_seq: DashMap::with_capacity_and_hasher_and_shard_amount(keys, FxBuildHasher, SHARDS),
            contested: Mutex::default(),
            revision: AtomicU64::new(0),
            changed: watch::Sender::new(()),
        }
    }

    /// The key whose secret hashes to `hash`, and which of its secrets it is.
    pub fn lookup(&self, hash: &KeyHash) -> Option<(Arc<AuthKey>, Presented)> {
        let key = self.by_hash.get(&Index::from(hash))?.value().clone();
        if key.hash.ct_eq(hash) {
            return Some((key, Presented::Current));
        }
        let until = key.previous().filter(|previous| previous.hash.ct_eq(hash))?.until;
        Some((key, Presented::Previous { until }))
    }

    /// Inserts or replaces one key, dropping whatever hashes its older version was indexed by.
    /// A hash another key holds is not indexed for either (see the module doc).
    pub fn upsert(&self, key: AuthKey) -> Upserted {
        let mut contested = self.contested();
        let key = Arc::new(key);
        let old = self.by_seq.insert(key.seq, key.clone());
        let mut upserted = Upserted::default();
        // The new hashes first, so a hash both versions hold is never free in between.
        for hash in hashes(&key) {
            if !self.index(&mut contested, hash, &key) {
                upserted.contested += 1;
            }
        }
        if let Some(old) = old {
            for hash in hashes(&old).filter(|h| !hashes(&key).any(|new| new == *h)) {
                self.unindex(&mut contested, hash, &old);
            }
        }
        upserted
    }

    pub fn remove(&self, seq: u64) {
        let mut contested = self.contested();
        if let Some((_, old)) = self.by_seq.remove(&seq) {
            for hash in hashes(&old) {
                self.unindex(&mut contested, hash, &old);
            }
            drop(contested);
            self.changed.send_replace(());
        }
    }

    fn contested(&self) -> MutexGuard<'_, FxHashMap<Index, Vec<u64>>> {
        // The map is consistent between statements; a panic cannot leave it half-written.
        self.contested
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Indexes `hash` for `key`; false when another key claims it (now or before).
    fn index(&self, contested: &mut FxHashMap<Index, Vec<u64>>, hash: KeyHash, key: &Arc<AuthKey>) -> bool {
        let index = Index::from(&hash);
        if let Some(claims) = contested.get_mut(&index) {
            if !claims.contains(&key.seq) {
                claims.push(key.seq);
            }
            return false;
        }
        match self.by_hash.entry(index) {
            Entry::Occupied(held) if held.get().seq != key.seq => {
                let (_, holder) = held.remove_entry();
                contested.insert(index, vec![holder.seq, key.seq]);
                false
            }
            Entry::Occupied(mut held) => {
                held.insert(key.clone());
                true
            }
            Entry::Vacant(free) => {
                free.insert(key.clone());
                true
            }
        }
    }

    /// Drops `old`'s claim on `hash`: its entry, if it still points at `old` (another key may
    /// have taken the hash over since). A contested hash goes to the one key left claiming it,
    /// if that key still holds it.
    fn unindex(&self, contested: &mut FxHashMap<Index, Vec<u64>>, hash: KeyHash, old: &Arc<AuthKey>) {
        let index = Index::from(&hash);
        let Some(claims) = contested.get_mut(&index) else {
            self.by_hash
                .remove_if(&index, |_, current| Arc::ptr_eq(current, old));
            return;
        };
        claims.retain(|seq| *seq != old.seq);
        match claims[..] {
            [] => {
                contested.remove(&index);
            }
            [last] => {
                contested.remove(&index);
                let holder = self.by_seq.get(&last).map(|entry| entry.value().clone());
                if let Some(holder) = holder.filter(|key| hashes(key).any(|h| h == hash)) {
                    self.by_hash.insert(index, holder);
                }
            }
            _ => {}
        }
    }

    /// The key with sequence number `seq`.
    pub fn get(&self, seq: u64) -> Option<Arc<AuthKey>> {
        self.by_seq.get(&seq).map(|entry| entry.value().clone())
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.by_seq.contains_key(&seq)
    }

    pub fn len(&self) -> usize {
        self.by_seq.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_seq.is_empty()
    }

    /// Calls `visit` for every key (for gauges; holds one shard's read lock at a time).
    pub fn for_each(&self, mut visit: impl FnMut(&AuthKey)) {
        for entry in self.by_seq.iter() {
            visit(entry.value());
        }
    }

    /// The store revision the table reflects.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    /// Records the store revision the table now reflects, after a sync's batch of changes
    /// (none, on a quiet tick), and tells whoever watches the table ([`KeyTable::changes`]).
    pub fn set_revision(&self, revision: u64) {
        self.revision.store(revision, Ordering::Release);
        self.changed.send_replace(());
    }

    /// Told after each batch of changes, each sync tick and each removal: a time to look
    /// again at a key held since (a tunnel's), including its expiry.
    pub fn changes(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::secret::Hasher;

    fn key(seq: u64, secret: &str, previous: Option<&str>) -> AuthKey {
        let hasher = Hasher::unkeyed();
        AuthKey {
            seq,
            id: format!("key_{seq}").into(),
            hash: hasher.hash(secret.as_bytes()),
            environment: Environment::Production,
            revoked: false,
            expires_at: NEVER,
            permissions: Arc::default(),
            customer_id: None,
            extras: Extras {
                previous: previous.map(|p| PreviousSecret {
                    hash: hasher.hash(p.as_bytes()),
                    until: 100,
                }),
                ..Extras::default()
            }
            .boxed(),
        }
    }

    fn find(table: &KeyTable, secret: &str) -> Option<(u64, Presented)> {
        table
            .lookup(&Hasher::unkeyed().hash(secret.as_bytes()))
            .map(|(key, which)| (key.seq, which))
    }

    #[test]
    fn a_plain_key_stays_small() {
        // The 1M-key memory budget counts on this; grow it only on purpose.
        assert!(
            std::mem::size_of::<AuthKey>() <= 104,
            "{}",
            std::mem::size_of::<AuthKey>()
        );
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
        assert!(table.contested().is_empty());
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
}
