//! The key table's local snapshot (`store.snapshot`), so a gateway that starts while its store
//! is down can serve (control plane).
//!
//! The table is written whole after the first load (before the gateway is ready), then at most
//! every few sync intervals when it changed, in the background while syncs go on (the journal
//! is rotated first, see [`journal`]): one JSON line of header, then one line per key with what
//! the hot path needs of it (the 16 bytes of each hash the table keeps, never secrets), then one
//! per customer with limits ([`customers`], from format version 2; a version 1 file, without
//! them, still loads). Versions 1 and 2 held whole 32-byte hashes: read, their first 16 bytes
//! are kept (version 3 writes only those). It is written to a temporary file beside
//! the target, synced and renamed over it, so a crash leaves the old snapshot or the new one,
//! never half of one; the file is readable by its owner only. In between, every change
//! set is journaled before it is applied ([`journal`]), so the snapshot and its journal are
//! never older than the table the gateway enforces, and they record the time of the last sync
//! they reflect: a start counts the table's age (`store.max_staleness`) from there. At start,
//! when the store cannot be read, the table is loaded from both; the first sync that can reach
//! the store replaces it whole.

use std::collections::HashMap;
use std::io::{BufRead, BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::core::environment::Environment;
use crate::core::key::RateLimitSpec;
use crate::core::permission::{Permission, PermissionSet};
use crate::core::quota::QuotaSpec;
use crate::proxy::customers::{CustomerLimits, CustomerMap};
use crate::proxy::table::{AuthKey, Extras, KeyTable, PreviousSecret, ShortHash};

const FORMAT: &str = "keygate-key-table";
/// The version written: 2 adds the customers' lines after the keys'; 3 writes the hashes'
/// first 16 bytes ([`ShortHash`]) where 1 and 2 wrote all 32.
const VERSION: u32 = 3;
/// The versions read.
const READABLE: [u32; 3] = [1, 2, VERSION];

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    /// The store revision the table reflects.
    revision: u64,
    /// Unix milliseconds when it was written.
    written_ms: i64,
    /// Unix milliseconds of the last successful sync the table reflects (absent in files of
    /// earlier versions: then `written_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    synced_ms: Option<i64>,
    keys: usize,
    /// Lines of customers after the keys' (absent in version 1: none).
    #[serde(default)]
    customers: usize,
}

/// One key as the hot path needs it.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    seq: u64,
    id: String,
    #[serde(with = "hex")]
    hash: [u8; 16],
    environment: Environment,
    revoked: bool,
    expires_at: i64,
    permissions: Vec<Permission>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    customer_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rate_limit: Option<RateLimitSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    allowed_ips: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex_opt")]
    previous_hash: Option<[u8; 16]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous_until: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    quota: Option<QuotaSpec>,
}

pub mod customers;
pub mod journal;

use customers::{CustomerEntry, Customers};

/// A snapshot read back with its journal: the keys, the revision they reflect, when the
/// snapshot was written and the last successful sync they reflect.
pub struct Loaded {
    pub keys: Vec<AuthKey>,
    /// The customers' limits, by id (none from a version 1 snapshot without a journal).
    pub customers: Customers,
    pub revision: u64,
    pub written_ms: i64,
    pub synced_ms: i64,
}

/// The table's keys as one whole write takes them: the revision read before them, and their
/// seqs.
///
/// Not one instant of the whole table: each key is copied out as it is when the write reaches
/// it, while the key sync goes on applying changes (the journal makes up the difference, see
/// [`journal`]); a key removed since is left out (its removal is journaled). The capture
/// holds 8 bytes a key, and the write one key at a time, each taken under the table's writer
/// lock for a lookup's time.
pub struct Capture<'a> {
    table: &'a KeyTable,
    revision: u64,
    seqs: Vec<u64>,
    /// The customers with limits, copied whole (they are few beside the keys).
    customers: Vec<(Box<str>, CustomerLimits)>,
}

impl Capture<'_> {
    pub fn of<'a>(table: &'a KeyTable, customers: &CustomerMap) -> Capture<'a> {
        let revision = table.revision();
        let mut seqs = Vec::with_capacity(table.len());
        table.for_each(|key| seqs.push(key.seq));
        Capture {
            table,
            revision,
            seqs,
            customers: customers.entries(),
        }
    }
}

/// The header line's width: written first with a count of none, then again over itself with
/// the count of keys written, padded with spaces (which JSON allows after the object).
const HEADER_WIDTH: usize = 256;

fn header_line(header: &Header) -> std::io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(header)?;
    if line.len() >= HEADER_WIDTH {
        return Err(std::io::Error::other("snapshot header longer than its place"));
    }
    line.resize(HEADER_WIDTH - 1, b' ');
    line.push(b'\n');
    Ok(line)
}

/// Writes `table` and `customers` to `path`, atomically and durably, as of the sync at
/// `synced_ms`.
pub fn write(
    table: &KeyTable,
    customers: &CustomerMap,
    path: &Path,
    now_ms: i64,
    synced_ms: i64,
) -> std::io::Result<()> {
    let temporary = write_temporary(&Capture::of(table, customers), path, now_ms, synced_ms)?;
    std::fs::rename(&temporary, path)?;
    sync_folder(path)
}

/// `<snapshot>.tmp`, where a whole write goes before it is renamed over the snapshot.
pub fn temporary_of(path: &Path) -> PathBuf {
    path.with_extension("tmp")
}

/// Writes `capture` to [`temporary_of`] `path`, synced to disk; the caller renames it over
/// `path` and then syncs the folder ([`sync_folder`]).
pub fn write_temporary(
    capture: &Capture,
    path: &Path,
    now_ms: i64,
    synced_ms: i64,
) -> std::io::Result<PathBuf> {
    let temporary = temporary_of(path);
    let file = create_private(&temporary)?;
    let mut out = BufWriter::new(file);
    let header = |keys, customers| Header {
        format: FORMAT.into(),
        version: VERSION,
        revision: capture.revision,
        written_ms: now_ms,
        synced_ms: Some(synced_ms),
        keys,
        customers,
    };
    out.write_all(&header_line(&header(0, 0))?)?;
    let mut keys = 0;
    for key in capture.seqs.iter().filter_map(|seq| capture.table.get(*seq)) {
        serde_json::to_writer(&mut out, &entry(&key))?;
        out.write_all(b"\n")?;
        keys += 1;
    }
    for (id, limits) in &capture.customers {
        serde_json::to_writer(&mut out, &CustomerEntry::of(id, limits))?;
        out.write_all(b"\n")?;
    }
    let mut file = out.into_inner().map_err(|e| e.into_error())?;
    file.seek(std::io::SeekFrom::Start(0))?;
    file.write_all(&header_line(&header(keys, capture.customers.len()))?)?;
    file.sync_all()?;
    Ok(temporary)
}

/// Makes a rename or a new file in `path`'s folder durable.
pub fn sync_folder(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => std::fs::File::open(".")?.sync_all(),
    }
}

/// Reads the snapshot at `path` and replays its journal; `intern` shares permission sets as the
/// sync does.
pub fn read(
    path: &Path,
    mut intern: impl FnMut(&[Permission]) -> std::sync::Arc<PermissionSet>,
) -> Result<Loaded, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut lines = std::io::BufReader::new(file).lines();
    let header: Header = match lines.next() {
        Some(line) => {
            let line = line.map_err(|e| e.to_string())?;
            serde_json::from_str(&line)
                .map_err(|e| format!("{}: not a key-table snapshot: {e}", path.display()))?
        }
        None => return Err(format!("{} is empty", path.display())),
    };
    if header.format != FORMAT || !READABLE.contains(&header.version) {
        return Err(format!(
            "{}: a snapshot of format {} version {}, not {FORMAT} version {VERSION}",
            path.display(),
            header.format,
            header.version
        ));
    }
    let mut keys = Vec::with_capacity(header.keys);
    let mut customers = Customers::new();
    let mut customer_lines = 0;
    for (n, line) in lines.enumerate() {
        let line = line.map_err(|e| e.to_string())?;
        let bad = |e: serde_json::Error| format!("{}: line {}: {e}", path.display(), n + 2);
        if n < header.keys {
            keys.push(auth_key(serde_json::from_str(&line).map_err(bad)?, &mut intern));
        } else {
            serde_json::from_str::<CustomerEntry>(&line)
                .map_err(bad)?
                .apply_to(&mut customers);
            customer_lines += 1;
        }
    }
    if keys.len() != header.keys || customer_lines != header.customers {
        return Err(format!(
            "{}: {} keys and {customer_lines} customers where the header says {} and {} (a \
             cut-off file)",
            path.display(),
            keys.len(),
            header.keys,
            header.customers
        ));
    }
    let mut keys: HashMap<u64, AuthKey> = keys.into_iter().map(|key| (key.seq, key)).collect();
    let replayed = journal::replay(path, &mut keys, &mut customers, &mut intern)?;
    let synced_ms = header.synced_ms.unwrap_or(header.written_ms);
    Ok(Loaded {
        keys: keys.into_values().collect(),
        customers,
        revision: replayed.revision.unwrap_or(header.revision),
        written_ms: header.written_ms,
        synced_ms: replayed.synced_ms.map_or(synced_ms, |at| at.max(synced_ms)),
    })
}

fn entry(key: &AuthKey) -> Entry {
    let previous = key.extras.as_ref().and_then(|e| e.previous.as_ref());
    Entry {
        seq: key.seq,
        id: key.id.to_string(),
        hash: key.hash.0,
        environment: key.environment,
        revoked: key.revoked,
        expires_at: key.expires_at,
        permissions: key.permissions.to_vec(),
        customer_id: key.customer_id.as_deref().map(str::to_owned),
        rate_limit: key.rate_limit().copied(),
        allowed_ips: key.allowed_ips().to_vec(),
        previous_hash: previous.map(|p| p.hash.0),
        previous_until: previous.map(|p| p.until),
        quota: key.quota().copied(),
    }
}

fn auth_key(
    entry: Entry,
    intern: &mut impl FnMut(&[Permission]) -> std::sync::Arc<PermissionSet>,
) -> AuthKey {
    let previous = match (entry.previous_hash, entry.previous_until) {
        (Some(hash), Some(until)) => Some(PreviousSecret {
            hash: ShortHash(hash),
            until,
        }),
        _ => None,
    };
    let extras = Extras {
        rate_limit: entry.rate_limit,
        allowed_ips: entry.allowed_ips.into_boxed_slice(),
        previous,
        quota: entry.quota,
    };
    AuthKey {
        seq: entry.seq,
        id: entry.id.into(),
        hash: ShortHash(entry.hash),
        environment: entry.environment,
        revoked: entry.revoked,
        expires_at: entry.expires_at,
        permissions: intern(&entry.permissions),
        customer_id: entry.customer_id.map(Into::into),
        extras: extras.shared(),
    }
}

/// A new file readable and writable by its owner only: it holds every key's hash.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// A hash as hex: 16 bytes written (32 digits); 32 digits or 64 (a version 1 or 2 file's whole
/// hash) read, the first 16 bytes kept.
mod hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 16], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<[u8; 16], D::Error> {
        let text = <&str>::deserialize(deserializer)?;
        decode(text).ok_or_else(|| serde::de::Error::custom("not 32 or 64 hex digits"))
    }

    pub fn encode(bytes: &[u8; 16]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn decode(text: &str) -> Option<[u8; 16]> {
        if text.len() != 32 && text.len() != 64 {
            return None;
        }
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut out = [0; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(out)
    }
}

mod hex_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<[u8; 16]>, serializer: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => serializer.serialize_str(&super::hex::encode(bytes)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<[u8; 16]>, D::Error> {
        match Option::<&str>::deserialize(deserializer)? {
            Some(text) => super::hex::decode(text)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom("not 32 or 64 hex digits")),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests;
