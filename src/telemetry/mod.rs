//! Metrics and logs, shared by both planes; the access log is the data plane's.

pub mod access;
pub mod logs;
pub mod metrics;
pub mod recent;
pub mod throttle;

pub use metrics::Metrics;
