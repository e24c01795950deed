//! `gateway.toml`, in two stages: [`raw`] mirrors the file (serde, unknown fields refused,
//! defaults filled), and [`validate`] turns it, purely, into the typed [`Config`]. `keygate
//! check` and `keygate serve` share both.

pub mod raw;
mod routes;
mod types;
mod upstream_tls;
pub mod validate;

pub use types::*;
pub use validate::{load, parse, ConfigError, Problem};
