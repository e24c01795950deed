//! Saving the key table to `store.snapshot` and starting from it (control plane): the sync's
//! journal of each change set, the whole writes beside the running sync, and the start from
//! the saved table while the store cannot be read ([`crate::control::snapshot`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::KeySync;
use crate::control::snapshot::journal::Journal;

impl KeySync {
    /// Runs `f` on the snapshot's journal, if there is one. Call with the sync's turn held.
    pub(super) fn with_journal(&self, f: impl FnOnce(&mut Journal, Duration)) {
        if let Some((_, every)) = &self.snapshot {
            if let Some(journal) = self.journal.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                f(journal, *every);
            }
        }
    }

    /// Writes the table whole to the snapshot, as of the sync at `synced_ms`, and empties the
    /// journals, all with the sync's turn held: the first load, before the gateway is ready
    /// (later ones run beside the sync, [`KeySync::write_rotated`]). A failure removes nothing
    /// newer: the old snapshot and journals stay, and are as new as the table.
    pub(super) fn write_whole(&self, synced_ms: i64) {
        let Some((path, _)) = &self.snapshot else {
            return;
        };
        let now_ms = self.clock.now().as_millisecond();
        let started = std::time::Instant::now();
        let written = crate::control::snapshot::write(&self.table, &self.customers, path, now_ms, synced_ms);
        *self.saved.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
        let emptied = written.and_then(|()| {
            let mut journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
            journal
                .as_mut()
                .map_or(Ok(()), |journal| journal.written_whole(synced_ms))
        });
        match emptied {
            Ok(()) => tracing::debug!(
                revision = self.table.revision(),
                elapsed_ms = crate::telemetry::logs::millis(started.elapsed()),
                "key table snapshot written whole"
            ),
            Err(error) => tracing::warn!(%error, "cannot save the key table snapshot"),
        }
    }

    /// Writes the table whole when the journal holds changes and the last whole write is old
    /// enough, so the journal stays short; never a table that came from the snapshot itself.
    /// The write runs in the background, one at a time, and holds the sync's turn only to
    /// rotate the journal ([`KeySync::write_rotated`]): syncs go on while it writes.
    pub(super) async fn save_snapshot(self: &Arc<Self>) {
        let Some((_, every)) = self.snapshot.clone() else {
            return;
        };
        let due = match *self.saved.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(at) => at.elapsed() >= every,
            None => true,
        };
        if !due || self.status.from_snapshot() || !self.needs_rewrite() {
            return;
        }
        if self.writing.swap(true, Ordering::AcqRel) {
            return;
        }
        let sync = self.clone();
        let writing = Writing(self.writing.clone());
        tokio::task::spawn_blocking(move || {
            let _writing = writing;
            sync.write_rotated();
        });
    }

    pub(super) fn needs_rewrite(&self) -> bool {
        let journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        journal.as_ref().is_some_and(Journal::needs_rewrite)
    }

    /// Writes the table whole without holding the sync's turn, but to rotate the journal first:
    /// the snapshot plus `J.prev` plus `J` is the table whatever the write captured (the proof
    /// is in [`crate::control::snapshot::journal`]'s doc). Blocking.
    pub(super) fn write_rotated(&self) {
        let Some((path, _)) = &self.snapshot else {
            return;
        };
        let (rotation, synced_ms) = {
            let _turn = self.running.lock().unwrap_or_else(|p| p.into_inner());
            if self.status.from_snapshot() || !self.needs_rewrite() {
                return;
            }
            let mut journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
            let Some(journal) = journal.as_mut() else {
                return;
            };
            match journal.rotate() {
                Ok(rotation) => (rotation, self.status.last_success_ms()),
                Err(error) => {
                    tracing::warn!(%error, "cannot rotate the key table snapshot's journal");
                    return;
                }
            }
        };
        let started = std::time::Instant::now();
        let now_ms = self.clock.now().as_millisecond();
        let capture = crate::control::snapshot::Capture::of(&self.table, &self.customers);
        let written = crate::control::snapshot::write_temporary(&capture, path, now_ms, synced_ms);
        drop(capture);
        *self.saved.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
        // The journal's lock, not the turn: a sync waits at most for one rename or removal.
        let journal = || self.journal.lock().unwrap_or_else(|p| p.into_inner());
        let installed = written.and_then(|temporary| {
            let installed = journal()
                .as_mut()
                .map_or(Ok(false), |journal| journal.install(&rotation, &temporary))?;
            if installed {
                crate::control::snapshot::sync_folder(path)?;
                journal()
                    .as_mut()
                    .map_or(Ok(()), |journal| journal.retire(&rotation))?;
            }
            Ok(installed)
        });
        match installed {
            Ok(true) => tracing::debug!(
                keys = self.table.len(),
                elapsed_ms = crate::telemetry::logs::millis(started.elapsed()),
                "key table snapshot written whole"
            ),
            Ok(false) => tracing::warn!(
                "a key change could not be journaled during the snapshot's whole write; the write is dropped"
            ),
            Err(error) => tracing::warn!(%error, "cannot save the key table snapshot"),
        }
    }

    /// Loads the saved table, once, while the store cannot be read: the gateway serves the keys
    /// it had, and is ready, until the first sync that reaches the store replaces them whole.
    pub(super) async fn start_from_snapshot(self: &Arc<Self>, loaded: &watch::Sender<bool>) {
        let Some((path, _)) = self.snapshot.clone() else {
            return;
        };
        if *loaded.borrow() {
            return;
        }
        let sync = self.clone();
        let read = tokio::task::spawn_blocking(move || {
            crate::control::snapshot::read(&path, |permissions| sync.intern(permissions))
        })
        .await;
        match read {
            Ok(Ok(snapshot)) => {
                let (keys, customers) = (snapshot.keys.len(), snapshot.customers.len());
                for key in snapshot.keys {
                    self.table.upsert(key);
                }
                for (id, limits) in &snapshot.customers {
                    self.customers.set(id, *limits);
                }
                self.table.set_revision(snapshot.revision);
                // The next sync that reaches the store loads it whole: the snapshot may be of
                // another store, or older than its tombstones.
                self.reload_pending.store(true, Ordering::Release);
                self.status.record_snapshot(snapshot.synced_ms);
                let _ = loaded.send(true);
                tracing::warn!(
                    keys,
                    customers,
                    revision = snapshot.revision,
                    synced_ms = snapshot.synced_ms,
                    "store unreachable: serving the key table saved locally until it answers"
                );
            }
            Ok(Err(error)) => tracing::warn!(%error, "no key table snapshot to start from"),
            Err(panic) => tracing::error!(%panic, "key table snapshot task failed"),
        }
    }
}

/// Clears the "a whole write runs" flag when the write ends, panic included.
struct Writing(Arc<AtomicBool>);

impl Drop for Writing {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}
