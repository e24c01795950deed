//! The snapshot's journal (control plane): what the key sync applied since the snapshot was
//! last written whole, so the saved table is never older than the one the gateway enforces.
//!
//! Beside `store.snapshot` lies `<snapshot>.journal`, appended to by the key sync, off the
//! request path. Each change set is one JSON line (the keys it puts, the seqs it removes, the
//! revision it reaches, the time of the sync), written and synced to disk *before* the table
//! takes it: a gateway that stops at any moment leaves a snapshot plus journal at least as new
//! as what it admitted. A line cut off by a crash was never applied, and is ignored. Replaying a
//! line the snapshot already reflects changes nothing (each line holds whole keys), so writing
//! the snapshot whole and then emptying the journal is safe at every step.
//!
//! A successful sync that changed nothing appends a short line with its time (not synced: a lost
//! one only makes the table look older, and a start then fails closed), so a snapshot's age
//! counts from the last sync it reflects, not from its last change.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Entry;
use crate::core::permission::{Permission, PermissionSet};
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
}

/// The journal beside the snapshot at `snapshot`, as the key sync writes it.
#[derive(Debug)]
pub struct Journal {
    snapshot: PathBuf,
    path: PathBuf,
    file: Option<File>,
    /// Change lines since the snapshot was written whole.
    changes: usize,
    /// Lines of any kind in the file.
    lines: usize,
    /// The sync time of the last line written.
    marked_ms: i64,
    /// A line could not be written: the files were removed, and only a whole write brings
    /// them back.
    broken: bool,
}

/// `<snapshot>.journal`.
pub fn path_of(snapshot: &Path) -> PathBuf {
    let mut name = snapshot.as_os_str().to_owned();
    name.push(".journal");
    PathBuf::from(name)
}

impl Journal {
    pub fn new(snapshot: &Path) -> Journal {
        let path = path_of(snapshot);
        // A journal left by an earlier run: the next whole write takes it in.
        let left = std::fs::metadata(&path).is_ok_and(|meta| meta.len() > 0);
        Journal {
            snapshot: snapshot.to_owned(),
            path,
            file: None,
            changes: usize::from(left),
            lines: 0,
            marked_ms: i64::MIN,
            broken: false,
        }
    }

    /// Appends a change set and syncs it to disk; call before the table applies it. On failure
    /// the saved table is removed (it would be older than the one enforced) until the next
    /// whole write.
    pub fn record(&mut self, put: &[&AuthKey], del: &[u64], revision: u64, synced_ms: i64) {
        if self.broken {
            return;
        }
        let line = Line {
            synced_ms,
            revision: Some(revision),
            put: put.iter().map(|key| super::entry(key)).collect(),
            del: del.to_vec(),
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

    /// Whether the snapshot should be written whole: the journal holds changes, or lost one.
    pub fn needs_rewrite(&self) -> bool {
        self.changes > 0 || self.broken
    }

    /// Empties the journal after the snapshot was written whole (and made durable).
    pub fn written_whole(&mut self, synced_ms: i64) -> std::io::Result<()> {
        self.emptied()?;
        self.broken = false;
        self.marked_ms = synced_ms;
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

    fn open(&mut self) -> std::io::Result<&mut File> {
        if self.file.is_none() {
            let mut options = std::fs::OpenOptions::new();
            options.append(true).create(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            self.file = Some(options.open(&self.path)?);
        }
        Ok(self.file.as_mut().expect("opened just above"))
    }

    /// Removes the snapshot and its journal: a start must not serve from a table older than
    /// the one this gateway enforces.
    fn invalidate(&mut self, error: &std::io::Error) {
        tracing::error!(
            %error,
            journal = %self.path.display(),
            "cannot journal a key change beside the snapshot; removing the snapshot until it is written whole again"
        );
        self.broken = true;
        self.file = None;
        for path in [&self.snapshot, &self.path] {
            if let Err(error) = std::fs::remove_file(path) {
                if error.kind() != std::io::ErrorKind::NotFound {
                    tracing::error!(%error, file = %path.display(), "cannot remove a stale key table snapshot");
                }
            }
        }
    }
}

/// What replaying a journal leaves: the revision reached and the newest sync time.
pub struct Replayed {
    pub revision: Option<u64>,
    pub synced_ms: Option<i64>,
}

/// Applies the journal beside `snapshot` to `keys` (by seq), in order. A last line cut off is
/// ignored (it was never applied); a bad line before the last refuses the whole.
pub fn replay(
    snapshot: &Path,
    keys: &mut HashMap<u64, AuthKey>,
    intern: &mut impl FnMut(&[Permission]) -> std::sync::Arc<PermissionSet>,
) -> Result<Replayed, String> {
    let path = path_of(snapshot);
    let mut replayed = Replayed {
        revision: None,
        synced_ms: None,
    };
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(replayed),
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
        replayed.revision = line.revision.or(replayed.revision);
        replayed.synced_ms = Some(
            replayed
                .synced_ms
                .map_or(line.synced_ms, |at| at.max(line.synced_ms)),
        );
    }
    Ok(replayed)
}
