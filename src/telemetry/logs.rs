//! Log set-up: events through `tracing` to stdout, as JSON or text, level from `RUST_LOG`
//! (default `info`), and the access log ([`super::access`]) beside them.
//!
//! Event lines go to stdout from a thread of their own through a bounded queue: a request never
//! waits on a slow or blocked stdout (a full pipe, a stalled log shipper). Past the queue's
//! bound, lines are dropped rather than the proxy stalled; so are access records (see
//! [`super::access`]). Both are counted in `keygate_log_lines_dropped_total`.
//!
//! Colour only when stdout is a terminal and `NO_COLOR` is not set (<https://no-color.org>): a
//! log written to a file or a pipe holds no escape sequences.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use super::access;
use super::LogFormat;

/// Lines the queue holds before it drops new ones.
const QUEUED_LINES: usize = 128 * 1024;

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Lines dropped so far because stdout could not keep up: events and access records.
pub fn dropped_lines() -> u64 {
    let events = DROPPED.get().map_or(0, |counter| counter.dropped_lines() as u64);
    events + access::dropped()
}

/// Keeps the log writers until exit; dropped, it writes what is still queued.
pub struct Guard {
    // The access log first: its writer ends before the events' does.
    _access: Option<access::Guard>,
    _events: WorkerGuard,
}

/// Installs the global subscriber and, unless `RUST_LOG` turns the target `keygate::access`
/// below `info`, the access log. Calling it twice (tests) is harmless.
pub fn init(format: LogFormat) -> Guard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(QUEUED_LINES)
        .lossy(true)
        .thread_name("keygate-log")
        .finish(std::io::stdout());
    let _ = DROPPED.set(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(
            std::io::stdout().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ))
        .with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    let access = tracing::enabled!(target: "keygate::access", tracing::Level::INFO)
        .then(|| access::install(format))
        .and_then(|installed| {
            installed
                .inspect_err(|error| tracing::error!(%error, "cannot start the access log's writer thread"))
                .ok()
        });
    Guard {
        _access: access,
        _events: guard,
    }
}

/// Whether to colour: on a terminal, unless `NO_COLOR` holds anything.
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|value| value.is_empty())
}

/// A duration for an event field: milliseconds to the microsecond, a number (`236.942`).
pub fn millis(duration: Duration) -> f64 {
    duration.as_micros() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{colour, millis};

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        for (terminal, no_color, coloured) in [
            (true, None, true),
            (true, Some(""), true),
            (true, Some("1"), false),
            (false, None, false),
            (false, Some("1"), false),
        ] {
            assert_eq!(
                colour(terminal, no_color.map(Into::into)),
                coloured,
                "{terminal} {no_color:?}"
            );
        }
    }

    #[test]
    fn event_durations_are_milliseconds_to_the_microsecond() {
        assert_eq!(millis(Duration::from_nanos(18_834_999)).to_string(), "18.834");
        assert_eq!(millis(Duration::from_micros(236_942)).to_string(), "236.942");
        assert_eq!(millis(Duration::from_micros(19)).to_string(), "0.019");
    }
}
