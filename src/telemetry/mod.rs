//! Metrics and logs, shared by both planes.

pub mod logs;
pub mod metrics;

pub use metrics::Metrics;
