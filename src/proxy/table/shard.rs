//! One shard of the key table (data plane): packed records, the index that finds them by hash,
//! and the few things records point at.
//!
//! A record is a whole key in 52 bytes: the hash's first 16 bytes ([`ShortHash`], all of it
//! compared), the seq, the
//! expiry in 32 bits (Unix seconds up to 2106; another expiry is kept beside, in the shard), the
//! id's 20 characters after `key_` in 6 bits each, and two `u32` slots: the permission set
//! (interned, with the flags beside it), and what only some keys have, the customer id and the
//! extras ([`Side`], one slot for both).
//! A key with a previous secret in its grace period has a second record, found by that secret's
//! hash, in the shard of that hash. The index is a `HashTable<u32>` of record slots keyed by
//! the first word of the hash: 4 bytes and a control byte a bucket.

use std::sync::Arc;

use hashbrown::HashTable;
use rustc_hash::FxHashMap;

use super::key::{AuthKey, Extras, Presented, Role, ShortHash, NEVER};
use super::text::{CustomerId, KeyId};
use crate::core::environment::Environment;
use crate::core::permission::PermissionSet;

/// Records are allocated this many at a time, 32 KiB less a few bytes: a shard grows without
/// copying its records, and wastes at most one chunk. 32 KiB is one of jemalloc's size
/// classes (the binary's allocator): 256 records of 76 bytes took its 20 KiB class, 5% more
/// than they used. 630 records of 52 bytes leave 8 bytes of it unused.
const CHUNK: usize = 32 * 1024 / std::mem::size_of::<Record>();
/// A shard's records are numbered in 26 bits (the location beside its 6-bit shard number).
pub(super) const MAX_RECORDS: usize = 1 << 26;
/// Interned permission sets a shard can hold: 24 bits, beside the flags.
const MAX_SETS: usize = 1 << 24;

const SET_MASK: u32 = (1 << 24) - 1;
const ENV_SHIFT: u32 = 24;
const REVOKED: u32 = 1 << 26;
const PREVIOUS: u32 = 1 << 27;
const CONTESTED: u32 = 1 << 28;
const ODD_ID: u32 = 1 << 29;
const ODD_EXPIRY: u32 = 1 << 30;

/// [`Record::expires_at`] of a key that never expires.
const NEVER_WORD: u32 = u32::MAX;

/// One key, found by one of its hashes. 52 bytes, aligned to 4 (checked by a test).
#[derive(Clone, Copy)]
pub(super) struct Record {
    /// The key's current hash (a [`Role::Previous`] record is found by the previous one, kept
    /// in the extras).
    hash: ShortHash,
    /// The seq as a pair of words: a 64-bit field would align the record to 8.
    seq: [u32; 2],
    /// Unix seconds, [`NEVER_WORD`] for a key that never expires; for an expiry before 1970 or
    /// from 2106 ([`ODD_EXPIRY`]), its slot in [`Data::odd_expiries`].
    expires_at: u32,
    /// The id's 20 characters after `key_`, 6 bits each ([`pack_id`]); for an id of another
    /// shape ([`ODD_ID`]), its slot in [`Data::odd_ids`] in the first four bytes.
    id: [u8; 16],
    /// The permission set's slot (24 bits) and the flags.
    meta: u32,
    /// 0: neither a customer nor extras; else the slot in [`Data::sides`] plus one.
    side: u32,
}

/// What a key has beside its record, in one slot: most keys have neither (no slot), some a
/// customer, few the extras. 24 bytes (checked by a test), as the customer id alone.
enum Side {
    Customer(CustomerId),
    Extras(Arc<Extras>),
    Both(Box<(CustomerId, Arc<Extras>)>),
}

impl Side {
    fn of(key: &AuthKey) -> Option<Side> {
        match (key.customer_id.clone(), key.extras.clone()) {
            (None, None) => None,
            (Some(customer), None) => Some(Side::Customer(customer)),
            (None, Some(extras)) => Some(Side::Extras(extras)),
            (Some(customer), Some(extras)) => Some(Side::Both(Box::new((customer, extras)))),
        }
    }

    fn customer(&self) -> Option<&CustomerId> {
        match self {
            Side::Customer(customer) => Some(customer),
            Side::Both(both) => Some(&both.0),
            Side::Extras(_) => None,
        }
    }

    fn extras(&self) -> Option<&Arc<Extras>> {
        match self {
            Side::Extras(extras) => Some(extras),
            Side::Both(both) => Some(&both.1),
            Side::Customer(_) => None,
        }
    }
}

fn split(word: u64) -> [u32; 2] {
    [word as u32, (word >> 32) as u32]
}

fn join([low, high]: [u32; 2]) -> u64 {
    u64::from(low) | u64::from(high) << 32
}

/// An expiry in one word, or `None` for one kept beside ([`ODD_EXPIRY`]).
fn pack_expiry(expires_at: i64) -> Option<u32> {
    match expires_at {
        NEVER => Some(NEVER_WORD),
        _ => u32::try_from(expires_at).ok().filter(|&word| word != NEVER_WORD),
    }
}

/// The 62 characters of an id keygate makes, in the order of their 6-bit codes.
const ID_CHARS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn code(byte: u8) -> Option<u128> {
    let code = match byte {
        b'0'..=b'9' => byte - b'0',
        b'A'..=b'Z' => byte - b'A' + 10,
        b'a'..=b'z' => byte - b'a' + 36,
        _ => return None,
    };
    Some(u128::from(code))
}

/// The 20 characters after `key_` in 120 bits; `None` for an id of another shape.
fn pack_id(id: &str) -> Option<[u8; 16]> {
    let rest = id.strip_prefix("key_").filter(|rest| rest.len() == 20)?;
    let mut packed = 0u128;
    for (i, byte) in rest.bytes().enumerate() {
        packed |= code(byte)? << (6 * i);
    }
    Some(packed.to_le_bytes())
}

fn unpack_id(packed: [u8; 16]) -> KeyId {
    let packed = u128::from_le_bytes(packed);
    let mut bytes = [0; 30];
    bytes[..4].copy_from_slice(b"key_");
    for (i, byte) in bytes[4..24].iter_mut().enumerate() {
        *byte = ID_CHARS[((packed >> (6 * i)) & 63) as usize % ID_CHARS.len()];
    }
    KeyId::Inline { len: 24, bytes }
}

impl Record {
    pub fn seq(&self) -> u64 {
        join(self.seq)
    }

    fn role(&self) -> Role {
        match self.meta & PREVIOUS {
            0 => Role::Current,
            _ => Role::Previous,
        }
    }

    fn contested(&self) -> bool {
        self.meta & CONTESTED != 0
    }

    fn environment(&self) -> Environment {
        Environment::ALL
            .get(((self.meta >> ENV_SHIFT) & 3) as usize)
            .copied()
            .unwrap_or(Environment::Production)
    }
}

/// Values records point at, one slot each, reused once freed.
struct Slots<T> {
    values: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            values: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Slots<T> {
    /// The slot plus one (0 means none).
    fn put(&mut self, value: T) -> u32 {
        match self.free.pop() {
            Some(slot) => {
                self.values[slot as usize] = Some(value);
                slot + 1
            }
            None => {
                self.values.push(Some(value));
                self.values.len() as u32
            }
        }
    }

    fn get(&self, handle: u32) -> Option<&T> {
        self.values.get((handle as usize).checked_sub(1)?)?.as_ref()
    }

    fn take(&mut self, handle: u32) {
        if let Some(value) = handle
            .checked_sub(1)
            .and_then(|slot| self.values.get_mut(slot as usize))
        {
            if value.take().is_some() {
                self.free.push(handle - 1);
            }
        }
    }
}

/// Permission sets, each kept once per shard however many records hold it, by the identity of
/// the sync's interned `Arc` (a set equal to another but not interned is kept beside it).
#[derive(Default)]
struct Sets {
    slots: Slots<(Arc<PermissionSet>, u32)>,
    by_pointer: FxHashMap<usize, u32>,
}

impl Sets {
    fn acquire(&mut self, set: &Arc<PermissionSet>) -> Option<u32> {
        let pointer = Arc::as_ptr(set) as usize;
        if let Some(&handle) = self.by_pointer.get(&pointer) {
            if let Some((_, count)) = self
                .slots
                .values
                .get_mut(handle as usize - 1)
                .and_then(Option::as_mut)
            {
                *count += 1;
                return Some(handle);
            }
        }
        if self.slots.values.len() >= MAX_SETS - 1 && self.slots.free.is_empty() {
            return None;
        }
        let handle = self.slots.put((set.clone(), 1));
        self.by_pointer.insert(pointer, handle);
        Some(handle)
    }

    fn release(&mut self, handle: u32) {
        let Some((set, count)) = self
            .slots
            .values
            .get_mut((handle as usize).wrapping_sub(1))
            .and_then(Option::as_mut)
        else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            self.by_pointer.remove(&(Arc::as_ptr(set) as usize));
            self.slots.take(handle);
        }
    }

    fn get(&self, handle: u32) -> Arc<PermissionSet> {
        // A record always holds its set; an empty one (granting nothing) if it did not.
        self.slots
            .get(handle)
            .map(|(set, _)| set.clone())
            .unwrap_or_default()
    }
}

/// A shard: its records, and the index over them.
#[derive(Default)]
pub(super) struct Shard {
    /// Every record, by the first word of the hash it is found by. Contested records too: the
    /// flag on each says the hash is another key's as well.
    index: HashTable<u32>,
    data: Data,
}

#[derive(Default)]
struct Data {
    chunks: Vec<Vec<Record>>,
    free: Vec<u32>,
    sets: Sets,
    sides: Slots<Side>,
    odd_ids: Slots<KeyId>,
    odd_expiries: Slots<i64>,
}

/// A change a shard could not make: it holds as many records or sets as it can number.
#[derive(Debug)]
pub(super) struct Full;

impl Data {
    fn record(&self, slot: u32) -> Option<&Record> {
        self.chunks.get(slot as usize / CHUNK)?.get(slot as usize % CHUNK)
    }

    /// The hash `record` is found by.
    fn claim(&self, record: &Record) -> ShortHash {
        match record.role() {
            Role::Current => record.hash,
            Role::Previous => self
                .extras(record)
                .and_then(|extras| extras.previous)
                .map_or(record.hash, |previous| previous.hash),
        }
    }

    fn word(&self, slot: u32) -> u64 {
        self.record(slot)
            .map_or(0, |record| self.claim(record).words()[0])
    }

    fn claims(&self, slot: u32, short: [u64; 2]) -> bool {
        self.record(slot)
            .is_some_and(|record| ShortHash::ct_eq_words(self.claim(record).words(), short))
    }

    fn extras(&self, record: &Record) -> Option<&Arc<Extras>> {
        self.sides.get(record.side).and_then(Side::extras)
    }

    fn expires_at(&self, record: &Record) -> i64 {
        match (record.meta & ODD_EXPIRY, record.expires_at) {
            (0, NEVER_WORD) => NEVER,
            (0, word) => i64::from(word),
            // A record always holds its slot; expired if it did not (fails closed).
            (_, slot) => self.odd_expiries.get(slot).copied().unwrap_or(i64::MIN),
        }
    }

    fn view(&self, record: &Record) -> AuthKey {
        AuthKey {
            seq: record.seq(),
            id: self.id(record),
            hash: record.hash,
            environment: record.environment(),
            revoked: record.meta & REVOKED != 0,
            expires_at: self.expires_at(record),
            permissions: self.sets.get(record.meta & SET_MASK),
            customer_id: self.sides.get(record.side).and_then(Side::customer).cloned(),
            extras: self.extras(record).cloned(),
        }
    }

    fn id(&self, record: &Record) -> KeyId {
        if record.meta & ODD_ID != 0 {
            let slot = u32::from_le_bytes([record.id[0], record.id[1], record.id[2], record.id[3]]);
            return self.odd_ids.get(slot).cloned().unwrap_or_else(|| KeyId::new(""));
        }
        unpack_id(record.id)
    }

    /// `key`'s record found by its `role` hash, with the shard's slots it needs taken.
    fn pack(&mut self, key: &AuthKey, role: Role, contested: bool) -> Result<Record, Full> {
        let set = self.sets.acquire(&key.permissions).ok_or(Full)?;
        let mut meta = set | (key.environment as u32) << ENV_SHIFT;
        meta |= if key.revoked { REVOKED } else { 0 };
        meta |= if role == Role::Previous { PREVIOUS } else { 0 };
        meta |= if contested { CONTESTED } else { 0 };
        let id = pack_id(&key.id).unwrap_or_else(|| {
            meta |= ODD_ID;
            let mut id = [0; 16];
            id[..4].copy_from_slice(&self.odd_ids.put(key.id.clone()).to_le_bytes());
            id
        });
        let expires_at = pack_expiry(key.expires_at).unwrap_or_else(|| {
            meta |= ODD_EXPIRY;
            self.odd_expiries.put(key.expires_at)
        });
        Ok(Record {
            hash: key.hash,
            seq: split(key.seq),
            expires_at,
            id,
            meta,
            side: Side::of(key).map_or(0, |side| self.sides.put(side)),
        })
    }

    /// Gives back the slots `record` took.
    fn unpack(&mut self, record: &Record) {
        self.sets.release(record.meta & SET_MASK);
        self.sides.take(record.side);
        if record.meta & ODD_ID != 0 {
            self.odd_ids.take(u32::from_le_bytes([
                record.id[0],
                record.id[1],
                record.id[2],
                record.id[3],
            ]));
        }
        if record.meta & ODD_EXPIRY != 0 {
            self.odd_expiries.take(record.expires_at);
        }
    }

    fn allocate(&mut self, record: Record) -> Result<u32, Full> {
        if let Some(slot) = self.free.pop() {
            if let Some(place) = self
                .chunks
                .get_mut(slot as usize / CHUNK)
                .and_then(|c| c.get_mut(slot as usize % CHUNK))
            {
                *place = record;
                return Ok(slot);
            }
        }
        let used = self.chunks.len() * CHUNK;
        let last = match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => last,
            _ if used >= MAX_RECORDS => return Err(Full),
            _ => {
                self.chunks.push(Vec::with_capacity(CHUNK));
                self.chunks.last_mut().expect("a chunk was just pushed")
            }
        };
        last.push(record);
        let offset = last.len() - 1;
        Ok(((self.chunks.len() - 1) * CHUNK + offset) as u32)
    }

    fn set(&mut self, slot: u32, record: Record) {
        if let Some(place) = self
            .chunks
            .get_mut(slot as usize / CHUNK)
            .and_then(|c| c.get_mut(slot as usize % CHUNK))
        {
            *place = record;
        }
    }
}

impl Shard {
    pub fn with_capacity(records: usize) -> Self {
        Shard {
            index: HashTable::with_capacity(records),
            data: Data::default(),
        }
    }

    /// Makes room in the index for `records` more, if it can (a hint: without it the index
    /// grows as records come).
    pub fn reserve(&mut self, records: usize) {
        let Shard { index, data } = self;
        let _ = index.try_reserve(records, |&slot| data.word(slot));
    }

    /// The key found by `hash`, unless another key claims the hash too.
    pub fn lookup(&self, hash: ShortHash) -> Option<(AuthKey, Presented)> {
        let short = hash.words();
        let slot = *self.index.find(short[0], |&slot| self.data.claims(slot, short))?;
        let record = self.data.record(slot)?;
        if record.contested() {
            return None;
        }
        let key = self.data.view(record);
        let presented = match record.role() {
            Role::Current => Presented::Current,
            Role::Previous => Presented::Previous {
                until: key.previous()?.until,
            },
        };
        Some((key, presented))
    }

    /// The record at `slot`, as the key it holds, and its seq.
    pub fn view(&self, slot: u32) -> Option<AuthKey> {
        self.data.record(slot).map(|record| self.data.view(record))
    }

    pub fn seq(&self, slot: u32) -> Option<u64> {
        self.data.record(slot).map(Record::seq)
    }

    /// Whether another key's record than `seq`'s is found by a hash of `short`.
    fn others(&self, seq: u64, short: [u64; 2]) -> Vec<u32> {
        self.index
            .iter_hash(short[0])
            .copied()
            .filter(|&slot| {
                self.data
                    .record(slot)
                    .is_some_and(|r| r.seq() != seq && self.data.claim(r).words() == short)
            })
            .collect()
    }

    fn mine(&self, seq: u64, short: [u64; 2]) -> Option<u32> {
        self.index
            .find(short[0], |&slot| {
                self.data
                    .record(slot)
                    .is_some_and(|r| r.seq() == seq && self.data.claim(r).words() == short)
            })
            .copied()
    }

    /// Writes `key`'s record found by `hash` (its `role` one), over the one the key had for the
    /// hash if any; the slot, and whether another key claims the hash too (then every record of
    /// the hash is flagged, and the hash finds no key).
    pub fn put(&mut self, key: &AuthKey, hash: ShortHash, role: Role) -> Result<(u32, bool), Full> {
        let short = hash.words();
        let others = self.others(key.seq, short);
        let contested = !others.is_empty();
        let record = self.data.pack(key, role, contested)?;
        let slot = match self.mine(key.seq, short) {
            Some(slot) => {
                if let Some(old) = self.data.record(slot).copied() {
                    self.data.unpack(&old);
                }
                self.data.set(slot, record);
                slot
            }
            None => {
                let slot = self
                    .data
                    .allocate(record)
                    .inspect_err(|_| self.data.unpack(&record))?;
                let Shard { index, data } = self;
                index.insert_unique(short[0], slot, |&slot| data.word(slot));
                slot
            }
        };
        for other in others {
            self.flag(other, true);
        }
        Ok((slot, contested))
    }

    /// Drops `seq`'s record found by `hash`; the key left claiming the hash alone, if one,
    /// is found by it again.
    pub fn drop_claim(&mut self, seq: u64, hash: ShortHash) {
        let short = hash.words();
        let Some(slot) = self.mine(seq, short) else {
            return;
        };
        if let Ok(entry) = self.index.find_entry(short[0], |&s| s == slot) {
            entry.remove();
        }
        if let Some(old) = self.data.record(slot).copied() {
            self.data.unpack(&old);
        }
        self.data.free.push(slot);
        if let [last] = self.others(seq, short)[..] {
            self.flag(last, false);
        }
    }

    fn flag(&mut self, slot: u32, contested: bool) {
        if let Some(mut record) = self.data.record(slot).copied() {
            record.meta = (record.meta & !CONTESTED) | if contested { CONTESTED } else { 0 };
            self.data.set(slot, record);
        }
    }

    /// Whether `claims` more records fit.
    pub fn has_room(&self, claims: usize) -> bool {
        self.index.len() + claims + CHUNK <= MAX_RECORDS
    }

    /// Calls `visit` with every key's current record.
    pub fn for_each(&self, visit: &mut impl FnMut(&AuthKey)) {
        for &slot in self.index.iter() {
            if let Some(record) = self.data.record(slot).filter(|r| r.role() == Role::Current) {
                visit(&self.data.view(record));
            }
        }
    }

    /// Calls `visit` with every key's environment, revocation and expiry, without copying the
    /// key out.
    pub fn for_each_state(&self, visit: &mut impl FnMut(Environment, bool, i64)) {
        for &slot in self.index.iter() {
            if let Some(record) = self.data.record(slot).filter(|r| r.role() == Role::Current) {
                visit(
                    record.environment(),
                    record.meta & REVOKED != 0,
                    self.data.expires_at(record),
                );
            }
        }
    }

    /// How many records the index has room for (for tests).
    #[cfg(test)]
    pub fn index_capacity(&self) -> usize {
        self.index.capacity()
    }

    /// Whether any record is flagged contested (for tests).
    #[cfg(test)]
    pub fn is_contested(&self) -> bool {
        self.index
            .iter()
            .any(|&slot| self.data.record(slot).is_some_and(Record::contested))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_52_bytes_its_side_24_and_a_chunk_fills_32_kib() {
        // The 1M-key memory budget counts on this; grow it only on purpose.
        assert_eq!(std::mem::size_of::<Record>(), 52);
        assert_eq!(std::mem::size_of::<Option<Side>>(), 24);
        assert!(32 * 1024 - CHUNK * std::mem::size_of::<Record>() < 52);
    }

    #[test]
    fn expiries_in_a_word_are_the_seconds_of_1970_to_2106_and_never() {
        assert_eq!(pack_expiry(NEVER), Some(NEVER_WORD));
        assert_eq!(pack_expiry(0), Some(0));
        assert_eq!(pack_expiry(1_900_000_000), Some(1_900_000_000));
        assert_eq!(pack_expiry(i64::from(u32::MAX) - 1), Some(u32::MAX - 1));
        for odd in [
            -1,
            i64::from(u32::MAX),
            i64::from(u32::MAX) + 1,
            i64::MIN,
            NEVER - 1,
        ] {
            assert_eq!(pack_expiry(odd), None, "{odd}");
        }
    }

    #[test]
    fn an_id_keygate_makes_packs_into_120_bits_and_others_do_not() {
        for _ in 0..100 {
            let id = crate::core::key::new_key_id();
            assert_eq!(&*unpack_id(pack_id(&id).unwrap()), id);
        }
        let edge = "key_09AZaz09AZaz09AZaz09";
        assert_eq!(&*unpack_id(pack_id(edge).unwrap()), edge);
        for odd in [
            "key_0123456789abcdefghi",
            "key_0123456789abcdefghi-",
            "kex_0123456789abcdefghij",
            "key_0123456789abcdefghijk",
            "",
        ] {
            assert_eq!(pack_id(odd), None, "{odd}");
        }
    }

    #[test]
    fn seqs_keep_all_64_bits() {
        for word in [
            0,
            1,
            u64::MAX,
            i64::MAX as u64,
            i64::MIN as u64,
            0x1234_5678_9abc_def0,
        ] {
            assert_eq!(join(split(word)), word);
        }
    }
}
