//! The batching writer behind the access log: each thread that logs fills a buffer of its own
//! (a [`Slot`]); a full buffer is handed to the writer thread, which writes it with one call.
//! Every [`FLUSH_EVERY`] the writer also takes what the slots hold, so a quiet gateway's
//! records appear within a second, and it takes everything once more when it stops.
//!
//! A request never waits on the sink: it takes its own slot's lock (uncontended but for the
//! moment the writer swaps the buffer out) and, once per batch, the queue's lock for a push.
//! When the writer has fallen [`Settings::max_queued`] batches behind, a full batch is dropped
//! instead of queued, and its records are counted in [`Writer::dropped`].
//!
//! Lock order: a slot's, then the queue's. The writer thread never holds the queue's lock while
//! it takes a slot's, nor any lock while it writes.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::format::TimeCache;

/// The longest a record waits in a slot before it is written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Bytes past which a slot's buffer is handed to the writer.
    pub batch_bytes: usize,
    /// Full batches waiting for the writer past which new ones are dropped.
    pub max_queued: usize,
    /// How often the writer takes what the slots hold.
    pub flush_every: Duration,
}

impl Default for Settings {
    /// 64 KiB batches (about 250 records), at most 16 MiB waiting.
    fn default() -> Self {
        Settings {
            batch_bytes: 64 * 1024,
            max_queued: 256,
            flush_every: FLUSH_EVERY,
        }
    }
}

/// Records of one thread, not yet handed over.
#[derive(Default)]
pub struct Local {
    pub bytes: Vec<u8>,
    lines: u64,
    /// The thread's formatted second, for the `time` field.
    pub time: TimeCache,
}

/// One thread's buffer.
pub struct Slot {
    local: Mutex<Local>,
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    slots: Mutex<Vec<Arc<Slot>>>,
    dropped: AtomicU64,
    settings: Settings,
}

#[derive(Default)]
struct Queue {
    full: VecDeque<Batch>,
    /// Written buffers, kept for reuse so a steady load allocates none.
    spare: Vec<Vec<u8>>,
    stop: bool,
}

struct Batch {
    bytes: Vec<u8>,
    lines: u64,
}

/// Spare buffers kept at most; more are freed.
const SPARE: usize = 8;

/// The writer thread and its slots. [`Writer::stop`] writes what is left and ends the thread.
pub struct Writer {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves its data whole: a panic elsewhere changes nothing.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Writer {
    /// Starts the writer thread, which writes each batch to `sink` with one `write_all`.
    pub fn start(sink: impl Write + Send + 'static, settings: Settings) -> std::io::Result<Writer> {
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            wake: Condvar::new(),
            slots: Mutex::default(),
            dropped: AtomicU64::new(0),
            settings,
        });
        let thread = std::thread::Builder::new().name("keygate-access".into()).spawn({
            let shared = shared.clone();
            move || shared.run(sink)
        })?;
        Ok(Writer {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// A new buffer for one thread to log into.
    pub fn slot(&self) -> Arc<Slot> {
        let slot = Arc::new(Slot {
            local: Mutex::new(Local {
                bytes: Vec::with_capacity(self.shared.settings.batch_bytes + 1024),
                ..Local::default()
            }),
            shared: self.shared.clone(),
        });
        lock(&self.shared.slots).push(slot.clone());
        slot
    }

    /// Records dropped so far because the writer was behind (or the sink failed).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Writes everything logged so far and ends the writer thread. Records logged afterwards
    /// are not written.
    pub fn stop(&self) {
        lock(&self.shared.queue).stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Slot {
    /// Appends one record, written by `format` (which must end it with a newline).
    pub fn push(&self, format: impl FnOnce(&mut Local)) {
        let mut local = lock(&self.local);
        format(&mut local);
        local.lines += 1;
        if local.bytes.len() >= self.shared.settings.batch_bytes {
            self.shared.hand_over(&mut local);
        }
    }
}

impl Shared {
    /// Queues a full buffer for the writer and gives the slot an empty one; drops its records
    /// when the writer is too far behind.
    fn hand_over(&self, local: &mut Local) {
        let lines = std::mem::take(&mut local.lines);
        let mut queue = lock(&self.queue);
        if queue.full.len() >= self.settings.max_queued || queue.stop {
            drop(queue);
            self.dropped.fetch_add(lines, Ordering::Relaxed);
            local.bytes.clear();
            return;
        }
        let empty = queue
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.settings.batch_bytes + 1024));
        let bytes = std::mem::replace(&mut local.bytes, empty);
        queue.full.push_back(Batch { bytes, lines });
        drop(queue);
        self.wake.notify_one();
    }

    /// The writer thread.
    fn run(&self, mut sink: impl Write) {
        let mut next_sweep = Instant::now() + self.settings.flush_every;
        loop {
            let (batches, stop) = self.wait(next_sweep);
            for batch in batches {
                self.write(&mut sink, batch);
            }
            if stop || Instant::now() >= next_sweep {
                self.sweep(&mut sink);
                next_sweep = Instant::now() + self.settings.flush_every;
            }
            if stop {
                // Batches handed over while the slots were swept.
                let (batches, _) = self.wait(Instant::now());
                for batch in batches {
                    self.write(&mut sink, batch);
                }
                let _ = sink.flush();
                return;
            }
        }
    }

    /// Waits until a batch is queued, the sweep is due or the writer is stopped.
    fn wait(&self, until: Instant) -> (VecDeque<Batch>, bool) {
        let mut queue = lock(&self.queue);
        while queue.full.is_empty() && !queue.stop {
            let now = Instant::now();
            if now >= until {
                break;
            }
            queue = self
                .wake
                .wait_timeout(queue, until - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        (std::mem::take(&mut queue.full), queue.stop)
    }

    /// Takes and writes what each slot holds; forgets the slots of threads that have ended.
    fn sweep(&self, sink: &mut impl Write) {
        let slots: Vec<Arc<Slot>> = lock(&self.slots).clone();
        for slot in &slots {
            let spare = lock(&self.queue)
                .spare
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(self.settings.batch_bytes + 1024));
            let batch = {
                let mut local = lock(&slot.local);
                if local.bytes.is_empty() {
                    lock(&self.queue).spare.push(spare);
                    continue;
                }
                Batch {
                    bytes: std::mem::replace(&mut local.bytes, spare),
                    lines: std::mem::take(&mut local.lines),
                }
            };
            self.write(sink, batch);
        }
        drop(slots);
        // Held by the list alone: its thread has ended, and its last records were just written.
        lock(&self.slots).retain(|slot| Arc::strong_count(slot) > 1 || !lock(&slot.local).bytes.is_empty());
    }

    /// One `write_all` for the whole batch; the buffer goes back to the spares.
    fn write(&self, sink: &mut impl Write, mut batch: Batch) {
        if sink.write_all(&batch.bytes).and_then(|()| sink.flush()).is_err() {
            self.dropped.fetch_add(batch.lines, Ordering::Relaxed);
        }
        batch.bytes.clear();
        let mut queue = lock(&self.queue);
        if queue.spare.len() < SPARE {
            queue.spare.push(batch.bytes);
        }
    }
}

#[cfg(test)]
mod tests;
