//! `gateway.toml`, in two stages: [`raw`] mirrors the file (serde, unknown fields refused,
//! defaults filled), and [`validate`] turns it, purely, into the typed [`Config`]. `keygate
//! check` and `keygate serve` share both.

mod digest;
pub mod effective;
mod leaks;
mod problem;
mod quotas;
pub mod raw;
mod restart;
mod routes;
pub mod tls_files;
pub mod traces;
mod types;
mod upstream_tls;
mod upstream_verifier;
pub mod urls;
pub mod validate;

pub use digest::config_digest;
pub use leaks::{GithubKeys, GithubLeaks, GitlabLeaks, LeakAction, Leaks, GITHUB_KEYS_URL};
pub use problem::{position, ConfigError, Problem};
pub use quotas::{Quotas, RawQuotas};
pub use restart::RestartOnly;
pub use routes::serving_problems;
pub use types::*;
pub use validate::{check_files, load, load_to_serve, parse, tls_pair};
