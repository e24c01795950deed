//! Metrics, logs and traces, shared by both planes; the access log and the request spans are
//! the data plane's.

pub mod access;
pub mod logs;
pub mod metrics;
pub mod recent;
pub mod throttle;
pub mod traces;

pub use metrics::Metrics;

/// How log lines are written on stdout, events and access records alike (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}
