//! The in-memory key table the hot path authenticates against (data plane state).
//!
//! Keys are packed records of 52 bytes ([`shard`]) in 64 shards chosen by the hash of the
//! secret that finds them, each shard behind its own read-write lock: a lookup takes one
//! shard's read lock, finds the record by the first 16 bytes of the BLAKE3 hash, the only
//! ones the table keeps ([`ShortHash`], which says why 128 bits are enough), compared without
//! an early exit, and copies the key out ([`AuthKey`], a value). A key being
//! regenerated with a grace period has a second record, found by the previous secret's hash.
//! The control plane's sync writes single keys in O(1) ([`KeyTable::upsert`],
//! [`KeyTable::remove`]), each record under one shard's short write lock; readers never wait on
//! more than that. A writer finds a key by its seq through `by_seq`, an index of record
//! locations the hot path never takes, in 64 parts chosen by the seq's hash.
//!
//! The shards are of unequal sizes on purpose ([`Spread`]): the last takes twice the first's
//! share of keys, the others in between by equal ratios. An index (a `hashbrown` table) doubles
//! when it is 7/8 full, so equal shards all double at the same key count and the table's
//! indexes are all between 44% and 88% full together, depending on where the key count falls
//! (44% at a million keys: 21 bytes a key for the two indexes). Spread over an octave, the
//! shards double one after another and the indexes stay about 63% full at any count (16 bytes
//! a key). The seq index's parts take the same spread, and a part's doubling rehashes a 64th
//! of the keys, not all: at ten million keys, one change never waits for a whole rehash.
//!
//! One hash, one key: the store refuses a secret that another key holds, but the table does
//! not count on it (a store written by an older keygate, by hand, or two rows met mid-sync). A
//! hash that two keys claim is *contested*: it finds neither until only one claims it again.
//! Failing closed for both is the one safe choice: the table cannot tell which key the
//! secret's holder was meant to be, and letting either win would admit a caller with another
//! key's permissions. The key's other secret (current or previous) keeps working.

mod key;
mod shard;
mod text;

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::hash_table::Entry;
use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;
use tokio::sync::watch;

use self::key::Role;
pub use self::key::{AuthKey, Extras, Presented, PreviousSecret, ShortHash, NEVER};
use self::shard::Shard;
pub use self::text::{CustomerId, KeyId, Text};
use crate::core::environment::Environment;
use crate::core::secret::KeyHash;

/// Shards: enough that two workers rarely meet on one lock and a shard's index grows in short
/// steps. A power of two: a location keeps the shard in its low 6 bits.
const SHARDS: usize = 64;
const SHARD_BITS: u32 = 6;
/// Entries of the [`Spread`]: a shard takes 11 to 22 of them.
const SPREAD: usize = 1024;

/// Which shard a hash word picks, by 10 of its bits: shard `s` takes a share of the words
/// proportional to `2^(s/64)` (see the module doc).
struct Spread([u8; SPREAD]);

impl std::fmt::Debug for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Spread")
    }
}

impl Spread {
    fn new() -> Self {
        let weight = |shard: usize| (shard as f64 / SHARDS as f64).exp2();
        let total: f64 = (0..SHARDS).map(weight).sum();
        let mut map = [0; SPREAD];
        let mut from = 0;
        let mut sum = 0.0;
        for shard in 0..SHARDS {
            sum += weight(shard);
            let to = ((sum / total * SPREAD as f64).round() as usize).min(SPREAD);
            map[from..to].fill(shard as u8);
            from = to;
        }
        Spread(map)
    }

    /// The shard of a word: bits a shard's own index does not use (it takes the low bits for
    /// the bucket and the top 7 for the control byte).
    fn of(&self, word: u64) -> usize {
        usize::from(self.0[(word >> 40) as usize % SPREAD])
    }

    /// How many of the entries pick `shard`.
    fn entries(&self, shard: usize) -> usize {
        self.0.iter().filter(|&&s| usize::from(s) == shard).count()
    }

    /// `shard`'s share of `keys`.
    fn share(&self, keys: usize, shard: usize) -> usize {
        keys / SPREAD * self.entries(shard) + keys % SPREAD * self.entries(shard) / SPREAD
    }
}

/// Where a record is: its slot in the shard (high 26 bits) and the shard (low 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc(u32);

impl Loc {
    fn new(shard: usize, slot: u32) -> Loc {
        Loc(slot << SHARD_BITS | shard as u32)
    }

    fn shard(self) -> usize {
        (self.0 & (SHARDS as u32 - 1)) as usize
    }

    fn slot(self) -> u32 {
        self.0 >> SHARD_BITS
    }
}

#[derive(Debug)]
pub struct KeyTable {
    shards: Box<[RwLock<Shard>]>,
    spread: Spread,
    /// Each key's current record, by seq, in 64 parts: the locations, compared through the
    /// records. Held through a whole write, so writers take turns; the hot path never takes it.
    by_seq: Mutex<BySeq>,
    keys: AtomicUsize,
    revision: AtomicU64,
    /// Told of every applied batch of changes (each sync, changes or not) and every removal,
    /// for the open tunnels to check their keys ([`super::tunnel::KeyHolder`]).
    changed: watch::Sender<()>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shard")
    }
}

/// What an upsert could not index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Upserted {
    /// Hashes of the key that another key holds too: indexed for neither.
    pub contested: usize,
    /// The table holds as many keys as it can number (about four billion, or 16 million
    /// permission sets in a shard): the key was not taken, and its older version, if any,
    /// stays.
    pub full: bool,
}

type BySeq = Box<[HashTable<Loc>]>;

impl Default for KeyTable {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl KeyTable {
    /// A table with room for `keys` keys in its indexes, each shard and part its share.
    pub fn with_capacity(keys: usize) -> Self {
        let spread = Spread::new();
        let share = |shard: usize| spread.share(keys, shard);
        KeyTable {
            shards: (0..SHARDS)
                .map(|shard| RwLock::new(Shard::with_capacity(share(shard))))
                .collect(),
            by_seq: Mutex::new(
                (0..SHARDS)
                    .map(|part| HashTable::with_capacity(share(part)))
                    .collect(),
            ),
            spread,
            keys: AtomicUsize::new(0),
            revision: AtomicU64::new(0),
            changed: watch::Sender::new(()),
        }
    }

    fn read(&self, shard: usize) -> RwLockReadGuard<'_, Shard> {
        // A shard is consistent between statements; a panic cannot leave it half-written.
        self.shards[shard].read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self, shard: usize) -> RwLockWriteGuard<'_, Shard> {
        self.shards[shard].write().unwrap_or_else(PoisonError::into_inner)
    }

    fn writer(&self) -> MutexGuard<'_, BySeq> {
        self.by_seq.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The key whose secret hashes to `hash`, and which of its secrets it is.
    pub fn lookup(&self, hash: &KeyHash) -> Option<(AuthKey, Presented)> {
        self.lookup_short(ShortHash::from(hash))
    }

    /// [`KeyTable::lookup`] by the 16 bytes of a hash the table keeps (an open tunnel's
    /// check of its key holds those).
    pub fn lookup_short(&self, hash: ShortHash) -> Option<(AuthKey, Presented)> {
        self.read(self.shard_of(&hash)).lookup(hash)
    }

    /// The shard of the records found by `hash`.
    fn shard_of(&self, hash: &ShortHash) -> usize {
        self.spread.of(hash.words()[0])
    }

    /// The part of `by_seq` that holds `seq`.
    fn part_of(&self, seq: u64) -> usize {
        self.spread.of(Self::seq_hash(seq))
    }

    fn seq_at(&self, loc: Loc) -> Option<u64> {
        self.read(loc.shard()).seq(loc.slot())
    }

    fn seq_hash(seq: u64) -> u64 {
        FxBuildHasher.hash_one(seq)
    }

    /// Where `seq`'s current record is. Takes each candidate's shard read lock in turn: call it
    /// holding no shard lock.
    fn find(&self, by_seq: &BySeq, seq: u64) -> Option<Loc> {
        by_seq[self.part_of(seq)]
            .find(Self::seq_hash(seq), |&loc| self.seq_at(loc) == Some(seq))
            .copied()
    }

    /// Inserts or replaces one key, dropping whatever hashes its older version was found by.
    /// A hash another key holds finds neither (see the module doc).
    ///
    /// One probe of the seq index finds the key's current record or, for a new key (each key
    /// of a first load), the place of its entry: a new key is not looked for and then placed.
    pub fn upsert(&self, key: AuthKey) -> Upserted {
        let mut by_seq = self.writer();
        let part = self.part_of(key.seq);
        let entry = by_seq[part].entry(
            Self::seq_hash(key.seq),
            |&loc| self.seq_at(loc) == Some(key.seq),
            |&loc| Self::seq_hash(self.seq_at(loc).unwrap_or_default()),
        );
        let old = match &entry {
            Entry::Occupied(found) => {
                let loc = *found.get();
                self.read(loc.shard()).view(loc.slot())
            }
            Entry::Vacant(_) => None,
        };
        let claims: Vec<(ShortHash, Role)> = key.claims().collect();
        if !claims
            .iter()
            .all(|(hash, _)| self.read(self.shard_of(hash)).has_room(claims.len()))
        {
            return Upserted {
                full: true,
                ..Upserted::default()
            };
        }
        let (upserted, current) = self.put_claims(&key, &claims);
        let Some(current) = current else {
            // Not taken: the older version stays as it was.
            return upserted;
        };
        for (hash, _) in old
            .iter()
            .flat_map(AuthKey::claims)
            .filter(|(h, _)| !claims.iter().any(|(new, _)| new == h))
        {
            self.write(self.shard_of(&hash)).drop_claim(key.seq, hash);
        }
        match entry {
            Entry::Occupied(mut found) => *found.get_mut() = current,
            Entry::Vacant(place) => {
                place.insert(current);
                self.keys.fetch_add(1, Ordering::Relaxed);
            }
        }
        upserted
    }

    /// Writes `key`'s records, one a claim: what could not be indexed, and where its current
    /// record is if it was taken. The new hashes first, so a hash both versions hold never
    /// finds nothing in between.
    fn put_claims(&self, key: &AuthKey, claims: &[(ShortHash, Role)]) -> (Upserted, Option<Loc>) {
        let mut upserted = Upserted::default();
        let mut current = None;
        for &(hash, role) in claims {
            let shard = self.shard_of(&hash);
            let put = self.write(shard).put(key, hash, role);
            match put {
                Ok((slot, contested)) => {
                    upserted.contested += usize::from(contested);
                    if role == Role::Current {
                        current = Some(Loc::new(shard, slot));
                    }
                }
                Err(shard::Full) => upserted.full = true,
            }
        }
        (upserted, current)
    }

    /// Makes room in the indexes for `keys` more keys, each shard and part its share, so a
    /// first load sized from the store's count does not double them step by step: each
    /// doubling re-reads every record the index points at and leaves the old array to the
    /// allocator. A hint: room it cannot get is left for the keys to grow into.
    pub fn reserve(&self, keys: usize) {
        let mut by_seq = self.writer();
        for (part, index) in by_seq.iter_mut().enumerate() {
            let _ = index.try_reserve(self.spread.share(keys, part), |&loc| {
                Self::seq_hash(self.seq_at(loc).unwrap_or_default())
            });
        }
        for shard in 0..SHARDS {
            self.write(shard).reserve(self.spread.share(keys, shard));
        }
    }

    /// Drops `seq`'s entry in `by_seq`, which points at `old`.
    fn unplace(&self, by_seq: &mut BySeq, seq: u64, old: Loc) {
        let by_seq = &mut by_seq[self.part_of(seq)];
        if let Ok(entry) = by_seq.find_entry(Self::seq_hash(seq), |&loc| loc == old) {
            entry.remove();
            self.keys.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub fn remove(&self, seq: u64) {
        let mut by_seq = self.writer();
        let Some(loc) = self.find(&by_seq, seq) else {
            return;
        };
        let old = self.read(loc.shard()).view(loc.slot());
        for (hash, _) in old.iter().flat_map(AuthKey::claims) {
            self.write(self.shard_of(&hash)).drop_claim(seq, hash);
        }
        self.unplace(&mut by_seq, seq, loc);
        drop(by_seq);
        self.changed.send_replace(());
    }

    /// The key with sequence number `seq`.
    pub fn get(&self, seq: u64) -> Option<AuthKey> {
        let by_seq = self.writer();
        let loc = self.find(&by_seq, seq)?;
        self.read(loc.shard()).view(loc.slot())
    }

    pub fn contains(&self, seq: u64) -> bool {
        let by_seq = self.writer();
        self.find(&by_seq, seq).is_some()
    }

    pub fn len(&self) -> usize {
        self.keys.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `visit` for every key (for gauges; holds one shard's read lock at a time).
    pub fn for_each(&self, mut visit: impl FnMut(&AuthKey)) {
        for shard in 0..SHARDS {
            self.read(shard).for_each(&mut visit);
        }
    }

    /// Calls `visit` with every key's environment, whether it is revoked, and its expiry: the
    /// key gauge's count, without copying each key out.
    pub fn for_each_state(&self, mut visit: impl FnMut(Environment, bool, i64)) {
        for shard in 0..SHARDS {
            self.read(shard).for_each_state(&mut visit);
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

    /// Whether any hash is contested (for tests).
    #[cfg(test)]
    fn any_contested(&self) -> bool {
        (0..SHARDS).any(|shard| self.read(shard).is_contested())
    }
}

#[cfg(test)]
mod tests;
