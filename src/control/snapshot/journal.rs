//! The snapshot's journal (control plane): what the key sync applied since the snapshot was
//! last written whole, so the saved table is never older than the one the gateway enforces.
//!
//! Beside `store.snapshot` lies `<snapshot>.journal`, appended to by the key sync, off the
//! request path. Each change set is one JSON line (the keys it puts, the seqs it removes, the
//! revision it reaches, the time of the sync), written and synced to disk *before* the table
//! takes it: a gateway that stops at any moment leaves a snapshot plus journal at least as new
//! as what it admitted. A line cut off by a crash was never applied, and is ignored (and cut
//! away before anything is appended after it).
//!
//! A successful sync that changed nothing appends a short line with its time (not synced: a lost
//! one only makes the table look older, and a start then fails closed), so a snapshot's age
//! counts from the last sync it reflects, not from its last change.
//!
//! # Writing the snapshot whole while syncs go on
//!
//! Writing a million keys takes a second or two; the sync must not wait for it, or no
//! revocation reaches this replica meanwhile. So the whole write *rotates* the journal first,
//! under the sync's turn ([`Journal::rotate`]: `J` is renamed `J.prev` and a new `J` begins,
//! two renames' worth of work), then writes the table to a temporary file without the turn,
//! renames it over the snapshot ([`Journal::install`]), syncs the folder, and removes `J.prev`
//! ([`Journal::retire`]). A start replays the snapshot, then `J.prev` if present, then `J`.
//!
//! Why that is right at every point a crash can fall. Let `S0` be the snapshot before, `T0` the
//! table at the rotation, `S1` the new snapshot. Every change the table took before `T0` is in
//! `S0 + J.prev`; every one after is journaled in `J` before the table takes it. Each line holds
//! whole key states (or a removal) by seq, so after replaying a sequence of lines a key is as
//! its *last* line says, or as the snapshot says if no line names it.
//! - Crash before the rename: `S0 + J.prev + J` replays every change in order: the table.
//! - After the rename: `S1 + J.prev + J` (or `S1 + J` once `J.prev` is gone). `S1` took each key
//!   at some moment after `T0`, whatever the sync did meanwhile. A key changed after it was
//!   taken has its newest state as its last line in `J`. A key not changed after it was taken
//!   is in `S1` as it is now, and any line that names it ends with that same state (the last
//!   change before it was taken). A key removed is removed by its line; a key added after the
//!   capture is put by its line. So any of these replays gives the table, and replaying
//!   `J.prev` over `S1` (a removal of `J.prev` lost to a crash) is harmless.
//! - A change that cannot be journaled removes the snapshot and both journals; a whole write
//!   that began before is then not installed ([`Journal::install`] sees the loss), since its
//!   table may miss that change. The next rotation starts journaling again, and its whole
//!   write needs no older file: `S1 + J` is right by the same argument.
//! - A whole write that fails leaves `J.prev`: the next rotation appends `J` to it (a crash
//!   half-way repeats lines that `J` still holds, which replaying in order makes harmless).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::customers::{CustomerEntry, Customers};
use super::Entry;
use crate::core::permission::{Permission, PermissionSet};
use crate::proxy::customers::CustomerLimits;
use crate::proxy::table::AuthKey;

/// Lines of sync times alone past which the journal is rewritten as its last one.
const MARKS_KEPT: usize = 1_000;

/// One line of the journal.
#[derive(Debug, Serialize, Deserialize)]
struct Line {
    /// Unix milliseconds of the sync this line reflects.
    synced_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revision: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    put: Vec<Entry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    del: Vec<u64>,
    /// Customers whose limits changed: each one's limits now, none for one removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    customers: Vec<CustomerEntry>,
}

/// The journal beside the snapshot at `snapshot`, as the key sync writes it.
#[derive(Debug)]
pub struct Journal {
    snapshot: PathBuf,
    path: PathBuf,
    /// `<snapshot>.journal.prev`: the journal a whole write under way (or one that failed) took
    /// over from.
    previous: PathBuf,
    file: Option<File>,
    /// Change lines since the journal was last rotated or emptied.
    changes: usize,
    /// `J.prev` holds changes that no snapshot written whole took in for sure.
    previous_pending: bool,
    /// Lines of any kind in the file.
    lines: usize,
    /// The sync time of the last line written.
    marked_ms: i64,
    /// A line could not be written: the files were removed, and no line is written until a
    /// rotation (or a whole write with the turn held) starts a new journal.
    broken: bool,
    /// The snapshot was removed for a lost line: a whole write is due until one is installed,
    /// even when the journal restarted since holds nothing.
    missing: bool,
    /// How many times a line could not be written: a whole write that began before the last
    /// time may miss that change, and is not installed.
    lost: u64,
}

/// One change set, as the key sync applies it: keys put and removed (by seq), and customers'
/// limits (empty ones: removed).
#[derive(Debug, Default)]
pub struct Change<'a> {
    pub put: &'a [&'a AuthKey],
    pub del: &'a [u64],
    pub customers: &'a [(&'a str, CustomerLimits)],
}

/// A rotation of the journal, which the whole write it began then installs and retires.
#[derive(Debug)]
pub struct Rotation {
    lost: u64,
}

/// `<snapshot>.journal`.
pub fn path_of(snapshot: &Path) -> PathBuf {
    let mut name = snapshot.as_os_str().to_owned();
    name.push(".journal");
    PathBuf::from(name)
}

/// `<snapshot>.journal.prev`.
pub fn previous_of(snapshot: &Path) -> PathBuf {
    let mut name = path_of(snapshot).into_os_string();
    name.push(".prev");
    PathBuf::from(name)
}

impl Journal {
    pub fn new(snapshot: &Path) -> Journal {
        let path = path_of(snapshot);
        let previous = previous_of(snapshot);
        // A journal left by an earlier run: the next whole write takes it in.
        let left = std::fs::metadata(&path).is_ok_and(|meta| meta.len() > 0);
        Journal {
            snapshot: snapshot.to_owned(),
            previous_pending: previous.exists(),
            path,
            previous,
            file: None,
            changes: usize::from(left),
            lines: 0,
            marked_ms: i64::MIN,
            broken: false,
            missing: false,
            lost: 0,
        }
    }

    /// Appends a change set and syncs it to disk; call before the table applies it. On failure
    /// the saved table is removed (it would be older than the one enforced) until the next
    /// whole write.
    pub fn record(&mut self, change: &Change<'_>, revision: u64, synced_ms: i64) {
        if self.broken {
            return;
        }
        let line = Line {
            synced_ms,
            revision: Some(revision),
            put: change.put.iter().map(|key| super::entry(key)).collect(),
            del: change.del.to_vec(),
            customers: change
                .customers
                .iter()
                .map(|(id, limits)| CustomerEntry::of(id, limits))
                .collect(),
        };
        match self.append(&line, true) {
            Ok(()) => self.changes += 1,
            Err(error) => self.invalidate(&error),
        }
    }

    /// Records a successful sync at `synced_ms`, at most every `every_ms`.
    pub fn mark(&mut self, synced_ms: i64, every_ms: i64) {
        if self.broken || synced_ms.saturating_sub(self.marked_ms) < every_ms {
            return;
        }
        let line = Line {
            synced_ms,
            revision: None,
            put: Vec::new(),
            del: Vec::new(),
            customers: Vec::new(),
        };
        if let Err(error) = self.append(&line, false) {
            tracing::warn!(%error, journal = %self.path.display(), "cannot record the sync in the snapshot's journal");
        }
        if self.changes == 0 && self.lines > MARKS_KEPT {
            // Nothing but sync times: the last one says all of them.
            if let Err(error) = self.emptied().and_then(|()| self.append(&line, false)) {
                tracing::warn!(%error, journal = %self.path.display(), "cannot shorten the snapshot's journal");
            }
        }
    }

    /// Whether the snapshot should be written whole: a journal holds changes, or lost one.
    pub fn needs_rewrite(&self) -> bool {
        self.changes > 0 || self.previous_pending || self.broken || self.missing
    }

    /// Empties the journal after the snapshot was written whole (and made durable) with the
    /// sync's turn held throughout, as the first load does.
    pub fn written_whole(&mut self, synced_ms: i64) -> std::io::Result<()> {
        self.emptied()?;
        remove_if_present(&self.previous)?;
        self.previous_pending = false;
        self.broken = false;
        self.missing = false;
        self.marked_ms = synced_ms;
        Ok(())
    }

    /// Begins a whole write that runs without the sync's turn: call with the turn held, then
    /// capture and write the table after releasing it (see the module doc). `J` becomes
    /// `J.prev` (appended to it when an earlier whole write left one) and a new `J` begins.
    pub fn rotate(&mut self) -> std::io::Result<Rotation> {
        self.file = None;
        if self.previous.exists() {
            append_to(&self.path, &self.previous)?;
            if self.path.exists() {
                let journal = std::fs::OpenOptions::new().write(true).open(&self.path)?;
                journal.set_len(0)?;
                journal.sync_all()?;
            }
        } else if self.path.exists() {
            std::fs::rename(&self.path, &self.previous)?;
        }
        self.previous_pending = self.previous.exists();
        self.changes = 0;
        self.lines = 0;
        // The new journal's name made durable (and the rename with it) before a line counts on
        // it.
        self.open()?;
        self.broken = false;
        Ok(Rotation { lost: self.lost })
    }

    /// Renames the whole write at `temporary` over the snapshot, unless a change could not be
    /// journaled since `rotation` (then it is removed: it may be older than the table); whether
    /// it was. The caller then syncs the folder and calls [`Journal::retire`].
    pub fn install(&mut self, rotation: &Rotation, temporary: &Path) -> std::io::Result<bool> {
        if self.lost != rotation.lost {
            remove_if_present(temporary)?;
            return Ok(false);
        }
        std::fs::rename(temporary, &self.snapshot)?;
        Ok(true)
    }

    /// Removes `J.prev` once the snapshot that took it in is durable.
    pub fn retire(&mut self, rotation: &Rotation) -> std::io::Result<()> {
        if self.lost == rotation.lost {
            remove_if_present(&self.previous)?;
            self.previous_pending = false;
            self.missing = false;
        }
        Ok(())
    }

    fn emptied(&mut self) -> std::io::Result<()> {
        let file = self.open()?;
        file.set_len(0)?;
        file.sync_all()?;
        self.changes = 0;
        self.lines = 0;
        Ok(())
    }

    fn append(&mut self, line: &Line, durable: bool) -> std::io::Result<()> {
        let mut text = serde_json::to_vec(line).map_err(std::io::Error::from)?;
        text.push(b'\n');
        let file = self.open()?;
        file.write_all(&text)?;
        if durable {
            file.sync_data()?;
        }
        self.lines += 1;
        self.marked_ms = line.synced_ms;
        Ok(())
    }

    /// The journal, opened to append: a line cut off by a crash is cut away first, and a new
    /// file's name is made durable before anything counts on it.
    fn open(&mut self) -> std::io::Result<&mut File> {
        if self.file.is_none() {
            let existed = self.path.exists();
            let file = open_append(&self.path)?;
            if existed {
                cut_partial_line(&self.path, &file)?;
            } else {
                super::sync_folder(&self.path)?;
            }
            self.file = Some(file);
        }
        Ok(self.file.as_mut().expect("opened just above"))
    }

    /// Removes the snapshot and its journals: a start must not serve from a table older than
    /// the one this gateway enforces.
    fn invalidate(&mut self, error: &std::io::Error) {
        tracing::error!(
            %error,
            journal = %self.path.display(),
            "cannot journal a key change beside the snapshot; removing the snapshot until it is written whole again"
        );
        self.broken = true;
        self.missing = true;
        self.lost += 1;
        self.file = None;
        self.previous_pending = false;
        for path in [&self.snapshot, &self.path, &self.previous] {
            if let Err(error) = remove_if_present(path) {
                tracing::error!(%error, file = %path.display(), "cannot remove a stale key table snapshot");
            }
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Appends the whole lines of `from` (if it exists) to `to`, synced.
fn append_to(from: &Path, to: &Path) -> std::io::Result<()> {
    let mut target = open_append(to)?;
    cut_partial_line(to, &target)?;
    match File::open(from) {
        Ok(mut source) => {
            std::io::copy(&mut source, &mut target)?;
            // A cut-off last line of `from` now ends `to`, where replay ignores it too.
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    target.sync_all()
}

/// Truncates `file` (open at `path`) after its last newline: a line cut off by a crash was
/// never applied, and a line appended after it would make it a bad line in the middle.
fn cut_partial_line(path: &Path, file: &File) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    const CHUNK: u64 = 64 * 1024;
    let len = file.metadata()?.len();
    let mut reader = File::open(path)?;
    let mut end = len;
    let mut buffer = vec![0; CHUNK as usize];
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let chunk = &mut buffer[..(end - start) as usize];
        reader.seek(SeekFrom::Start(start))?;
        reader.read_exact(chunk)?;
        if let Some(at) = chunk.iter().rposition(|byte| *byte == b'\n') {
            end = start + at as u64 + 1;
            break;
        }
        end = start;
    }
    if end < len {
        tracing::warn!(journal = %path.display(), "cutting away the journal's last line, cut off by a crash");
        file.set_len(end)?;
        file.sync_all()?;
    }
    Ok(())
}

/// What replaying a journal leaves: the revision reached and the newest sync time.
pub struct Replayed {
    pub revision: Option<u64>,
    pub synced_ms: Option<i64>,
}

/// Applies the journals beside `snapshot` to `keys` (by seq) and `customers` (by id): `J.prev`
/// if present, then `J`,
/// each in order. A last line cut off is ignored (it was never applied); a bad line before the
/// last refuses the whole.
pub fn replay(
    snapshot: &Path,
    keys: &mut HashMap<u64, AuthKey>,
    customers: &mut Customers,
    intern: &mut impl FnMut(&[Permission]) -> std::sync::Arc<PermissionSet>,
) -> Result<Replayed, String> {
    let mut replayed = Replayed {
        revision: None,
        synced_ms: None,
    };
    for path in [previous_of(snapshot), path_of(snapshot)] {
        replay_file(&path, keys, customers, intern, &mut replayed)?;
    }
    Ok(replayed)
}

fn replay_file(
    path: &Path,
    keys: &mut HashMap<u64, AuthKey>,
    customers: &mut Customers,
    intern: &mut impl FnMut(&[Permission]) -> std::sync::Arc<PermissionSet>,
    replayed: &mut Replayed,
) -> Result<(), String> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
    };
    let mut lines = std::io::BufReader::new(file).lines().enumerate().peekable();
    while let Some((n, line)) = lines.next() {
        let text = line.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let line: Line = match serde_json::from_str(&text) {
            Ok(line) => line,
            Err(_) if lines.peek().is_none() => {
                tracing::warn!(journal = %path.display(), "ignoring the journal's last line, cut off");
                break;
            }
            Err(error) => return Err(format!("{}: line {}: {error}", path.display(), n + 1)),
        };
        for entry in line.put {
            keys.insert(entry.seq, super::auth_key(entry, intern));
        }
        for seq in line.del {
            keys.remove(&seq);
        }
        for customer in line.customers {
            customer.apply_to(customers);
        }
        replayed.revision = line.revision.or(replayed.revision);
        replayed.synced_ms = Some(
            replayed
                .synced_ms
                .map_or(line.synced_ms, |at| at.max(line.synced_ms)),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::core::environment::Environment;
    use crate::proxy::table::{KeyTable, NEVER};

    fn key(seq: u64, revoked: bool) -> AuthKey {
        AuthKey {
            seq,
            id: format!("key_{seq}").into(),
            hash: crate::proxy::table::ShortHash([seq as u8; 16]),
            environment: Environment::Production,
            revoked,
            expires_at: NEVER,
            permissions: Arc::new(PermissionSet::new(Vec::new())),
            customer_id: None,
            extras: None,
        }
    }

    fn revoked_in(path: &Path, seq: u64) -> Option<bool> {
        let intern = |p: &[Permission]| Arc::new(PermissionSet::new(p.to_vec()));
        let loaded = super::super::read(path, intern).ok()?;
        loaded.keys.iter().find(|k| k.seq == seq).map(|k| k.revoked)
    }

    #[test]
    fn a_whole_write_under_way_when_a_line_is_lost_is_not_installed_and_the_next_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("table.snap");
        let table = KeyTable::default();
        table.upsert(key(1, false));
        super::super::write(
            &table,
            &crate::proxy::customers::CustomerMap::default(),
            &path,
            0,
            0,
        )
        .unwrap();
        let mut journal = Journal::new(&path);
        journal.record(
            &Change {
                put: &[&key(1, true)],
                ..Change::default()
            },
            2,
            0,
        );
        table.upsert(key(1, true));
        let rotation = journal.rotate().unwrap();
        let capture = super::super::Capture::of(&table, &crate::proxy::customers::CustomerMap::default());

        // The journal cannot be written: the change is applied all the same, unsaved.
        journal.file = None;
        std::fs::remove_file(path_of(&path)).unwrap();
        std::fs::create_dir(path_of(&path)).unwrap();
        journal.record(
            &Change {
                put: &[&key(1, false)],
                ..Change::default()
            },
            3,
            0,
        );
        table.upsert(key(1, false));
        assert!(!path.exists(), "the snapshot is removed");
        assert!(!previous_of(&path).exists());

        let temporary = super::super::write_temporary(&capture, &path, 0, 0).unwrap();
        assert!(
            !journal.install(&rotation, &temporary).unwrap(),
            "older than the table"
        );
        assert!(!path.exists() && !temporary.exists());
        assert!(journal.needs_rewrite());

        std::fs::remove_dir(path_of(&path)).unwrap();
        let rotation = journal.rotate().unwrap();
        let capture = super::super::Capture::of(&table, &crate::proxy::customers::CustomerMap::default());
        let temporary = super::super::write_temporary(&capture, &path, 0, 0).unwrap();
        assert!(journal.install(&rotation, &temporary).unwrap());
        journal.retire(&rotation).unwrap();
        assert_eq!(revoked_in(&path, 1), Some(false), "the table as it is");
        assert!(!journal.needs_rewrite());
    }

    #[test]
    fn a_line_cut_off_by_a_crash_is_cut_away_before_the_next_is_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("table.snap");
        let table = KeyTable::default();
        table.upsert(key(1, false));
        super::super::write(
            &table,
            &crate::proxy::customers::CustomerMap::default(),
            &path,
            0,
            0,
        )
        .unwrap();
        let mut journal = Journal::new(&path);
        journal.record(
            &Change {
                put: &[&key(1, true)],
                ..Change::default()
            },
            2,
            0,
        );
        drop(journal);
        let mut text = std::fs::read(path_of(&path)).unwrap();
        text.extend_from_slice(b"{\"synced_ms\":5,\"put\":[{\"seq\"");
        std::fs::write(path_of(&path), &text).unwrap();

        let mut journal = Journal::new(&path);
        journal.record(
            &Change {
                put: &[&key(2, false)],
                ..Change::default()
            },
            3,
            0,
        );
        assert_eq!(revoked_in(&path, 1), Some(true));
        assert_eq!(
            revoked_in(&path, 2),
            Some(false),
            "the line after the cut one is read"
        );
    }
}
