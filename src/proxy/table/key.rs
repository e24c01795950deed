//! What the hot path knows of a key (data plane): the value a lookup hands out, and what the
//! key sync hands in.

use std::sync::Arc;

use ipnet::IpNet;

use super::text::{CustomerId, KeyId};
use crate::core::environment::Environment;
use crate::core::key::RateLimitSpec;
use crate::core::permission::PermissionSet;
use crate::core::quota::QuotaSpec;
use crate::core::secret::KeyHash;
use crate::proxy::error::AuthFailure;

/// A key as the hot path sees it: only what it needs to admit or refuse a request.
///
/// A value, not a pointer into the table: the table keeps keys packed ([`super::shard`]) and a
/// lookup copies one out (the id and a short customer id inline, the permission set and the
/// extras as shared pointers), so a request holds its key without a heap allocation and
/// without holding the table.
#[derive(Debug, Clone)]
pub struct AuthKey {
    pub seq: u64,
    pub id: KeyId,
    /// The current secret's hash, its first 16 bytes (also when the request presented the
    /// previous secret).
    pub hash: ShortHash,
    pub environment: Environment,
    /// Revoked keys stay in the table so their refusals are told apart from unknown keys.
    pub revoked: bool,
    /// Unix seconds; [`NEVER`] for a key without an expiry.
    pub expires_at: i64,
    /// Shared between keys with the same set.
    pub permissions: Arc<PermissionSet>,
    pub customer_id: Option<CustomerId>,
    /// `None` for a key with none of them (most keys).
    pub extras: Option<Arc<Extras>>,
}

/// What the table keeps of a secret's BLAKE3 hash: its first 16 bytes (the store keeps all 32).
///
/// 128 bits are what a lookup compares, and enough: finding a secret whose hash begins with a
/// given key's 16 bytes is a second preimage of 128-bit BLAKE3, about 2^128 hashes (and
/// 2^128 / n to hit any of n keys: 2^108 for a million), far past any attacker; a collision
/// between two keys' own secrets is about n^2 / 2^129, 10^-25 for ten million keys, and the
/// table refuses such a hash for both keys anyway (it is *contested*). Neither bound depends on
/// the pepper, which only decides who can compute hashes at all. A low-entropy imported secret
/// is as guessable as it ever was: a guess is checked by hashing it, and 16 bytes or 32 make
/// the same answer for the right guess.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ShortHash(pub [u8; 16]);

impl ShortHash {
    /// The two words: the first is the index's hash, both are compared.
    pub(super) fn words(&self) -> [u64; 2] {
        let word = |at: usize| {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(&self.0[at..at + 8]);
            u64::from_le_bytes(bytes)
        };
        [word(0), word(8)]
    }

    /// Compared without an early exit, so a lookup's timing says nothing about how much of a
    /// guess's hash matched.
    pub(super) fn ct_eq_words(a: [u64; 2], b: [u64; 2]) -> bool {
        std::hint::black_box((a[0] ^ b[0]) | (a[1] ^ b[1])) == 0
    }
}

impl From<&KeyHash> for ShortHash {
    fn from(hash: &KeyHash) -> Self {
        let mut short = [0; 16];
        short.copy_from_slice(&hash.0[..16]);
        ShortHash(short)
    }
}

impl From<KeyHash> for ShortHash {
    fn from(hash: KeyHash) -> Self {
        ShortHash::from(&hash)
    }
}

impl std::fmt::Debug for ShortHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShortHash({:02x}{:02x}..)", self.0[0], self.0[1])
    }
}

/// [`AuthKey::expires_at`] of a key that does not expire.
pub const NEVER: i64 = i64::MAX;

/// The settings few keys have, kept together so a plain key pays 4 bytes for them all.
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
    /// Shared, or `None` when there is nothing in them.
    pub fn shared(self) -> Option<Arc<Extras>> {
        let empty = self.rate_limit.is_none()
            && self.allowed_ips.is_empty()
            && self.previous.is_none()
            && self.quota.is_none();
        (!empty).then(|| Arc::new(self))
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

    /// The hash of each secret the key authenticates with, and which it is: the current one's,
    /// and the previous one's unless it is the same.
    pub(super) fn claims(&self) -> impl Iterator<Item = (ShortHash, Role)> + '_ {
        let previous = self.previous().filter(|previous| previous.hash != self.hash);
        std::iter::once((self.hash, Role::Current)).chain(previous.map(|p| (p.hash, Role::Previous)))
    }
}

/// Which of its key's secrets a record of the table is found by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Current,
    Previous,
}

#[derive(Debug, Clone, Copy)]
pub struct PreviousSecret {
    pub hash: ShortHash,
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
