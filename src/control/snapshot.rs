//! The key table's local snapshot (`store.snapshot`), so a gateway that starts while its store
//! is down can serve (control plane).
//!
//! The table is written whole after the first load (before the gateway is ready), then at most
//! every few sync intervals when it changed, in the background while syncs go on (the journal
//! is rotated first, see [`journal`]): one JSON line of header, then one line per key with what
//! the hot path needs of it (hashes, never secrets). It is written to a temporary file beside
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
use crate::core::secret::KeyHash;
use crate::proxy::table::{AuthKey, Extras, KeyTable, PreviousSecret};

const FORMAT: &str = "keygate-key-table";
const VERSION: u32 = 1;

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
}

/// One key as the hot path needs it.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    seq: u64,
    id: String,
    #[serde(with = "hex")]
    hash: [u8; 32],
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
    previous_hash: Option<[u8; 32]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous_until: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    quota: Option<QuotaSpec>,
}

pub mod journal;

/// A snapshot read back with its journal: the keys, the revision they reflect, when the
/// snapshot was written and the last successful sync they reflect.
pub struct Loaded {
    pub keys: Vec<AuthKey>,
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
}

impl Capture<'_> {
    pub fn of(table: &KeyTable) -> Capture<'_> {
        let revision = table.revision();
        let mut seqs = Vec::with_capacity(table.len());
        table.for_each(|key| seqs.push(key.seq));
        Capture {
            table,
            revision,
            seqs,
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

/// Writes `table` to `path`, atomically and durably, as of the sync at `synced_ms`.
pub fn write(table: &KeyTable, path: &Path, now_ms: i64, synced_ms: i64) -> std::io::Result<()> {
    let temporary = write_temporary(&Capture::of(table), path, now_ms, synced_ms)?;
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
    let header = |keys| Header {
        format: FORMAT.into(),
        version: VERSION,
        revision: capture.revision,
        written_ms: now_ms,
        synced_ms: Some(synced_ms),
        keys,
    };
    out.write_all(&header_line(&header(0))?)?;
    let mut keys = 0;
    for key in capture.seqs.iter().filter_map(|seq| capture.table.get(*seq)) {
        serde_json::to_writer(&mut out, &entry(&key))?;
        out.write_all(b"\n")?;
        keys += 1;
    }
    let mut file = out.into_inner().map_err(|e| e.into_error())?;
    file.seek(std::io::SeekFrom::Start(0))?;
    file.write_all(&header_line(&header(keys))?)?;
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
    if header.format != FORMAT || header.version != VERSION {
        return Err(format!(
            "{}: a snapshot of format {} version {}, not {FORMAT} version {VERSION}",
            path.display(),
            header.format,
            header.version
        ));
    }
    let mut keys = Vec::with_capacity(header.keys);
    for (n, line) in lines.enumerate() {
        let line = line.map_err(|e| e.to_string())?;
        let entry: Entry =
            serde_json::from_str(&line).map_err(|e| format!("{}: line {}: {e}", path.display(), n + 2))?;
        keys.push(auth_key(entry, &mut intern));
    }
    if keys.len() != header.keys {
        return Err(format!(
            "{}: {} keys where the header says {} (a cut-off file)",
            path.display(),
            keys.len(),
            header.keys
        ));
    }
    let mut keys: HashMap<u64, AuthKey> = keys.into_iter().map(|key| (key.seq, key)).collect();
    let replayed = journal::replay(path, &mut keys, &mut intern)?;
    let synced_ms = header.synced_ms.unwrap_or(header.written_ms);
    Ok(Loaded {
        keys: keys.into_values().collect(),
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
            hash: KeyHash(hash),
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
        hash: KeyHash(entry.hash),
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

mod hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<[u8; 32], D::Error> {
        let text = <&str>::deserialize(deserializer)?;
        decode(text).ok_or_else(|| serde::de::Error::custom("not 64 hex digits"))
    }

    pub fn encode(bytes: &[u8; 32]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn decode(text: &str) -> Option<[u8; 32]> {
        if text.len() != 64 {
            return None;
        }
        let mut out = [0; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(out)
    }
}

mod hex_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<[u8; 32]>, serializer: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => serializer.serialize_str(&super::hex::encode(bytes)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<[u8; 32]>, D::Error> {
        match Option::<&str>::deserialize(deserializer)? {
            Some(text) => super::hex::decode(text)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom("not 64 hex digits")),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::proxy::table::NEVER;

    fn key(seq: u64, extras: Option<Extras>) -> AuthKey {
        AuthKey {
            seq,
            id: format!("key_{seq}").into(),
            hash: KeyHash([seq as u8; 32]),
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
                    hash: KeyHash([9; 32]),
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
        write(&table, &path, 1_234, 1_000).unwrap();
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
            (1, "key_1", KeyHash([1; 32]), false)
        );
        assert_eq!(plain.customer_id.as_deref(), Some("acme"));
        assert!(plain.extras.is_none());
        assert_eq!(rich.rate_limit().map(|r| r.requests.get()), Some(6));
        assert_eq!(rich.allowed_ips().len(), 1);
        let previous = rich.extras.as_ref().and_then(|e| e.previous.as_ref()).unwrap();
        assert_eq!((previous.hash, previous.until), (KeyHash([9; 32]), 1_900_000_000));
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
        let capture = Capture::of(&table);
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
        write(&table, &path, 0, 0).unwrap();
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
        write(&table, &path, 10, 10).unwrap();
        let mut journal = journal::Journal::new(&path);
        let revoked = AuthKey {
            revoked: true,
            ..key(3, None)
        };
        journal.record(&[&revoked], &[1], 7, 20);
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
    fn state<'a>(keys: impl Iterator<Item = &'a AuthKey>) -> Vec<(u64, bool, KeyHash)> {
        let mut state: Vec<_> = keys.map(|k| (k.seq, k.revoked, k.hash)).collect();
        state.sort_by_key(|s| s.0);
        state
    }

    fn table_state(table: &KeyTable) -> Vec<(u64, bool, KeyHash)> {
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
            journal.record(&[], &[seq], revision, 0);
            table.remove(seq);
        } else {
            let changed = |seq| AuthKey {
                revoked,
                ..key(seq, None)
            };
            journal.record(&[&changed(seq)], &[], revision, 0);
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
                write(&table, &path, 0, 0).unwrap();
                let mut journal = journal::Journal::new(&path);
                // A change journaled before the rotation: it goes to J.prev.
                let before = AuthKey {
                    revoked: true,
                    ..key(1, None)
                };
                journal.record(&[&before], &[], 5, 0);
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
                    journal.record(&[&again], &[], 6, 0);
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
                            let capture = Capture::of(&table);
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
}
