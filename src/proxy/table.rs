//! The in-memory key table the hot path authenticates against (data plane state).
//!
//! Indexed by the first 16 bytes of the key's BLAKE3 hash; the full hash is compared after, in
//! constant time. A key being regenerated with a grace period is indexed under both hashes.
//! The control plane's sync writes single keys in O(1) ([`KeyTable::upsert`],
//! [`KeyTable::remove`]); readers never wait on more than one shard's short write.

use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use ipnet::IpNet;
use rustc_hash::FxBuildHasher;

use crate::core::environment::Environment;
use crate::core::key::RateLimitSpec;
use crate::core::permission::PermissionSet;
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
}

impl Extras {
    /// Boxed, or `None` when there is nothing in them.
    pub fn boxed(self) -> Option<Box<Extras>> {
        let empty = self.rate_limit.is_none() && self.allowed_ips.is_empty() && self.previous.is_none();
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
}

#[derive(Debug, Clone, Copy)]
pub struct PreviousSecret {
    pub hash: KeyHash,
    /// Unix seconds at which the old secret stops.
    pub until: i64,
}

/// Which of a key's secrets a request presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secret {
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
    revision: AtomicU64,
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
            revision: AtomicU64::new(0),
        }
    }

    /// The key whose secret hashes to `hash`, and which of its secrets it is.
    pub fn lookup(&self, hash: &KeyHash) -> Option<(Arc<AuthKey>, Secret)> {
        let key = self.by_hash.get(&Index::from(hash))?.value().clone();
        if key.hash.ct_eq(hash) {
            return Some((key, Secret::Current));
        }
        let until = key.previous().filter(|previous| previous.hash.ct_eq(hash))?.until;
        Some((key, Secret::Previous { until }))
    }

    /// Inserts or replaces one key, dropping whatever hashes its older version was indexed by.
    pub fn upsert(&self, key: AuthKey) {
        let key = Arc::new(key);
        if let Some(old) = self.by_seq.insert(key.seq, key.clone()) {
            self.unindex(&old);
        }
        self.by_hash.insert(Index::from(&key.hash), key.clone());
        if let Some(previous) = key.previous() {
            self.by_hash.insert(Index::from(&previous.hash), key.clone());
        }
    }

    pub fn remove(&self, seq: u64) {
        if let Some((_, old)) = self.by_seq.remove(&seq) {
            self.unindex(&old);
        }
    }

    /// Removes the hash entries that still point at `old` (and only those: another key may
    /// have taken a hash over since).
    fn unindex(&self, old: &Arc<AuthKey>) {
        let hashes = std::iter::once(old.hash).chain(old.previous().map(|p| p.hash));
        for hash in hashes {
            self.by_hash
                .remove_if(&Index::from(&hash), |_, current| Arc::ptr_eq(current, old));
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

    pub fn set_revision(&self, revision: u64) {
        self.revision.store(revision, Ordering::Release);
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

    fn find(table: &KeyTable, secret: &str) -> Option<(u64, Secret)> {
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
        assert_eq!(find(&table, "secret-one-0123456"), Some((1, Secret::Current)));
        assert_eq!(find(&table, "secret-two-0123456"), None);
    }

    #[test]
    fn regeneration_with_grace_indexes_both_secrets_and_replacing_drops_the_old() {
        let table = KeyTable::default();
        table.upsert(key(1, "old-secret-0123456", None));
        table.upsert(key(1, "new-secret-0123456", Some("old-secret-0123456")));
        assert_eq!(find(&table, "new-secret-0123456"), Some((1, Secret::Current)));
        assert_eq!(
            find(&table, "old-secret-0123456"),
            Some((1, Secret::Previous { until: 100 }))
        );
        table.upsert(key(1, "new-secret-0123456", None));
        assert_eq!(find(&table, "old-secret-0123456"), None);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn removal_forgets_every_secret_of_the_key() {
        let table = KeyTable::default();
        table.upsert(key(1, "new-secret-0123456", Some("old-secret-0123456")));
        table.upsert(key(2, "other-secret-01234", None));
        table.remove(1);
        assert_eq!(find(&table, "new-secret-0123456"), None);
        assert_eq!(find(&table, "old-secret-0123456"), None);
        assert_eq!(find(&table, "other-secret-01234"), Some((2, Secret::Current)));
    }
}
