//! The access log (data plane): one record per request, on stdout, beside `tracing`'s events
//! but not through them. A record is formatted straight into the logging thread's own buffer
//! ([`format`]), and full buffers are written by a thread of their own in batches, one write
//! each ([`writer`]): a request pays for the formatting and never waits on stdout.
//!
//! The writer is process-wide, like stdout and `tracing`'s subscriber: [`install`] starts it
//! (the `serve` command does), and until then [`log`] does nothing. Whole batches and
//! `tracing`'s whole lines go through the one `std::io::Stdout` lock, so they never interleave
//! mid-line.

pub mod format;
pub mod writer;

use std::cell::OnceCell;
use std::sync::{Arc, OnceLock};

pub use format::Record;
use writer::{Settings, Slot, Writer};

use super::LogFormat;

struct AccessLog {
    writer: Writer,
    format: LogFormat,
}

static ACCESS_LOG: OnceLock<AccessLog> = OnceLock::new();

thread_local! {
    static SLOT: OnceCell<Arc<Slot>> = const { OnceCell::new() };
}

/// Ends the writer, after writing what is buffered, when dropped.
pub struct Guard(());

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(log) = ACCESS_LOG.get() {
            log.writer.stop();
        }
    }
}

/// Starts the access log's writer on stdout. A second call changes nothing.
pub fn install(format: LogFormat) -> std::io::Result<Guard> {
    if ACCESS_LOG.get().is_none() {
        let writer = Writer::start(std::io::stdout(), Settings::default())?;
        let _ = ACCESS_LOG.set(AccessLog { writer, format });
    }
    Ok(Guard(()))
}

/// Whether records are written at all: off until [`install`].
pub fn installed() -> bool {
    ACCESS_LOG.get().is_some()
}

/// Records dropped so far because stdout could not keep up.
pub fn dropped() -> u64 {
    ACCESS_LOG.get().map_or(0, |log| log.writer.dropped())
}

/// Writes one record, in this thread's buffer.
pub fn log(record: &Record) {
    let Some(log) = ACCESS_LOG.get() else {
        return;
    };
    // Fails only while the thread is ending: that record is not written.
    let _ = SLOT.try_with(|slot| {
        slot.get_or_init(|| log.writer.slot())
            .push(|local| match log.format {
                LogFormat::Json => format::json(record, &mut local.time, &mut local.bytes),
                LogFormat::Text => format::text(record, &mut local.time, &mut local.bytes),
            });
    });
}
