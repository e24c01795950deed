//! API key secrets: generation in the `kg_<env>_<random><checksum>` format, the format check that
//! runs before any lookup, and hashing.
//!
//! The secret itself lives only in [`Secret`], whose `Debug` never prints it; what is stored and
//! looked up is its [`KeyHash`].

use std::fmt;

use rand::distr::{Alphanumeric, SampleString};

use super::environment::Environment;

const RANDOM_LEN: usize = 32;
const CHECKSUM_LEN: usize = 6;
/// What follows `kg_<env>_` in a generated key: the random part and its checksum, base62.
pub const GENERATED_BODY_LEN: usize = RANDOM_LEN + CHECKSUM_LEN;
const PREFIX_RANDOM_CHARS: usize = 4;
/// Imported secrets: any printable ASCII string of this many characters.
pub const IMPORTED_LEN: std::ops::RangeInclusive<usize> = 16..=256;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A secret as a client sends it. `Debug` and `Display` are redacted by construction.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A new random key for `env`.
    pub fn generate(env: Environment) -> Secret {
        let mut text = format!("kg_{}_", env.key_tag());
        text.push_str(&Alphanumeric.sample_string(&mut rand::rng(), RANDOM_LEN));
        let checksum = checksum(&text);
        text.push_str(&checksum);
        Secret(text)
    }

    /// An existing secret to import. Anything printable of 16 to 256 characters goes, except a
    /// `kg_` string that is not a well-formed keygate key (it would be refused at the door).
    pub fn import(text: String) -> Result<Secret, String> {
        match check_format(text.as_bytes()) {
            Format::Generated(_) | Format::Imported => Ok(Secret(text)),
            Format::Malformed => Err(format!(
                "an imported key must be {} to {} printable ASCII characters without spaces, and a key starting with kg_ must be a well-formed keygate key",
                IMPORTED_LEN.start(),
                IMPORTED_LEN.end()
            )),
        }
    }

    /// The secret, for the single moment it is shown to its owner.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A short public prefix that names the key without revealing it: `kg_prod_Ab3d`, or the
    /// first four characters of an imported key.
    pub fn display_prefix(&self) -> String {
        match check_format(self.0.as_bytes()) {
            Format::Generated(env) => {
                let head = 4 + env.key_tag().len();
                self.0[..head + PREFIX_RANDOM_CHARS].to_owned()
            }
            _ => self.0.chars().take(4).collect(),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What a presented credential looks like, decided without any lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A generated `kg_` key whose checksum is right.
    Generated(Environment),
    /// Not a `kg_` key, but a plausible imported one.
    Imported,
    /// Neither: rejected without a lookup.
    Malformed,
}

/// Classifies a presented credential. Cheap enough to run before every lookup: a CRC32 over
/// at most 46 bytes.
pub fn check_format(bytes: &[u8]) -> Format {
    if let Some(rest) = bytes.strip_prefix(b"kg_") {
        return check_generated(rest);
    }
    let printable = bytes.iter().all(|b| b.is_ascii_graphic());
    if printable && IMPORTED_LEN.contains(&bytes.len()) {
        Format::Imported
    } else {
        Format::Malformed
    }
}

fn check_generated(rest: &[u8]) -> Format {
    let Some(tag_end) = rest.iter().position(|&b| b == b'_') else {
        return Format::Malformed;
    };
    let env = std::str::from_utf8(&rest[..tag_end])
        .ok()
        .and_then(Environment::from_key_tag);
    let body = &rest[tag_end + 1..];
    match env {
        Some(env) if body.len() == GENERATED_BODY_LEN && body.iter().all(u8::is_ascii_alphanumeric) => {
            let signed_len = 3 + tag_end + 1 + RANDOM_LEN;
            let mut full = [0u8; 3 + 4 + 1 + RANDOM_LEN];
            let signed = &mut full[..signed_len];
            signed[..3].copy_from_slice(b"kg_");
            signed[3..].copy_from_slice(&rest[..tag_end + 1 + RANDOM_LEN]);
            if checksum_bytes(signed) == body[RANDOM_LEN..] {
                Format::Generated(env)
            } else {
                Format::Malformed
            }
        }
        _ => Format::Malformed,
    }
}

fn checksum_bytes(signed: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut value = crc32fast::hash(signed);
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
    out
}

fn checksum(signed: &str) -> String {
    let bytes = checksum_bytes(signed.as_bytes());
    String::from_utf8(bytes.to_vec()).expect("base62 is ASCII")
}

/// The BLAKE3 hash of a secret: what the store keeps and the key table is indexed by.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    /// The first 16 bytes, used as the key table's index (the full hash is compared after).
    /// Two words rather than a `u128`, whose 16-byte alignment would pad every table entry.
    pub fn short(&self) -> [u64; 2] {
        let word = |at: usize| u64::from_le_bytes(self.0[at..at + 8].try_into().expect("8 of 32 bytes"));
        [word(0), word(8)]
    }

    /// Constant-time comparison, so a lookup's timing says nothing about how close a guess was.
    pub fn ct_eq(&self, other: &KeyHash) -> bool {
        blake3::Hash::from(self.0) == blake3::Hash::from(other.0)
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({:02x}{:02x}..)", self.0[0], self.0[1])
    }
}

/// Hashes secrets, keyed with the pepper when the deployment has one.
#[derive(Clone)]
pub struct Hasher {
    pepper: Option<[u8; 32]>,
}

impl Hasher {
    pub fn unkeyed() -> Self {
        Hasher { pepper: None }
    }

    /// The pepper is stretched to a BLAKE3 key with its key derivation mode, so any length works.
    pub fn with_pepper(pepper: &[u8]) -> Self {
        Hasher {
            pepper: Some(blake3::derive_key("keygate 2026 store pepper v1", pepper)),
        }
    }

    pub fn hash(&self, secret: &[u8]) -> KeyHash {
        let hash = match &self.pepper {
            Some(key) => blake3::keyed_hash(key, secret),
            None => blake3::hash(secret),
        };
        KeyHash(*hash.as_bytes())
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hasher")
            .field("peppered", &self.pepper.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_documented_shape() {
        for env in Environment::ALL {
            let secret = Secret::generate(env);
            let text = secret.expose();
            let prefix = format!("kg_{}_", env.key_tag());
            assert!(text.starts_with(&prefix), "{text}");
            assert_eq!(text.len(), prefix.len() + 38);
            assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
            assert_eq!(check_format(text.as_bytes()), Format::Generated(env));
            assert_eq!(secret.display_prefix(), text[..prefix.len() + 4]);
        }
    }

    #[test]
    fn a_changed_character_breaks_the_checksum() {
        let text = Secret::generate(Environment::Production).expose().to_owned();
        for position in 8..text.len() {
            let mut bytes = text.clone().into_bytes();
            bytes[position] = if bytes[position] == b'A' { b'B' } else { b'A' };
            assert_eq!(check_format(&bytes), Format::Malformed, "position {position}");
        }
    }

    #[test]
    fn credentials_are_classified_before_lookup() {
        let long = "x".repeat(257);
        for (text, format) in [
            ("kg_prod_short", Format::Malformed),
            (
                "kg_qa_0123456789012345678901234567890123456789",
                Format::Malformed,
            ),
            ("kg_", Format::Malformed),
            ("legacy-key-0123456789", Format::Imported),
            ("short", Format::Malformed),
            ("with space 0123456789", Format::Malformed),
            (long.as_str(), Format::Malformed),
        ] {
            assert_eq!(check_format(text.as_bytes()), format, "{text}");
        }
    }

    #[test]
    fn import_takes_printable_strings_and_refuses_broken_kg_keys() {
        assert!(Secret::import("sk_live_0123456789abcdef".into()).is_ok());
        assert!(Secret::import("kg_prod_notavalidkeyatall0000000000000000".into()).is_err());
        assert!(Secret::import("tiny".into()).is_err());
        let generated = Secret::generate(Environment::Staging).expose().to_owned();
        assert!(Secret::import(generated).is_ok());
    }

    #[test]
    fn secrets_never_print() {
        let secret = Secret::generate(Environment::Production);
        assert!(!format!("{secret:?} {secret}").contains(secret.expose()));
    }

    #[test]
    fn the_pepper_changes_the_hash() {
        let plain = Hasher::unkeyed().hash(b"legacy-key-0123456789");
        let peppered = Hasher::with_pepper(b"pepper").hash(b"legacy-key-0123456789");
        assert!(!plain.ct_eq(&peppered));
        assert!(plain.ct_eq(&Hasher::unkeyed().hash(b"legacy-key-0123456789")));
    }
}
