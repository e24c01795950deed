//! Bulk import (control plane): keys checked one at a time as a file is read, and written in
//! batches in one transaction, so a million keys never sit in memory at once.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

use jiff::Timestamp;

use super::{check_import, new_key, validate_spec, KeyError, KeyService, KeySpec};
use crate::control::store::{KeyBatches, NewKey};
use crate::core::secret::Secret;

/// A bulk import under way: checks each key as it is read, and remembers every secret seen so
/// one given twice is refused.
pub struct BulkImport<'s> {
    service: &'s KeyService,
    now: Timestamp,
    /// The first 16 bytes of each secret's hash: 16 bytes a key rather than 32; the odds that
    /// two of a million different secrets share them are 2^-89.
    seen: HashSet<u128, BuildHasherDefault<Uniform>>,
}

impl KeyService {
    /// Starts checking the keys of a bulk import; [`KeyService::import_batches`] writes them.
    pub fn bulk_import(&self) -> BulkImport<'_> {
        BulkImport {
            service: self,
            now: self.now(),
            seen: HashSet::default(),
        }
    }

    /// Writes the keys `next` hands out (each checked by [`BulkImport::check`]) in one
    /// transaction, all or none. How many went in.
    pub fn import_batches(&self, next: &mut KeyBatches<'_>) -> Result<u64, KeyError> {
        let count = self
            .store
            .insert_batches(next, self.audit("imported"))
            .map_err(|e| KeyError::from_store(e, ""))?;
        tracing::info!(keys = count, actor = self.actor.as_str(), "keys imported");
        Ok(count)
    }
}

impl BulkImport<'_> {
    /// The key to write for an existing secret, or why it cannot be imported: what a single
    /// import checks, and that no earlier key of the import has the same secret.
    pub fn check(&mut self, spec: KeySpec, secret: &Secret) -> Result<NewKey, KeyError> {
        check_import(&spec, secret)?;
        validate_spec(&spec, self.now)?;
        let hash = self.service.hasher.hash(secret.expose().as_bytes());
        let mut first = [0; 16];
        first.copy_from_slice(&hash.0[..16]);
        if !self.seen.insert(u128::from_le_bytes(first)) {
            return Err(KeyError::invalid("key", "the same secret appears twice"));
        }
        Ok(new_key(spec, secret, hash, self.now))
    }
}

/// Hashes a value that is uniform already (part of a BLAKE3 hash) by taking its low 64 bits:
/// SipHash over it would add nothing but time.
#[derive(Default)]
struct Uniform(u64);

impl Hasher for Uniform {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64;
    }
}
