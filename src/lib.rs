//! keygate: an API-key authentication gateway.
//!
//! The crate is split by plane:
//! - [`proxy`] is the data plane, the hot path of every request: listener, request steps,
//!   credentials, key lookup, limits, forwarding. It reads shared state and never touches the
//!   store or the admin code.
//! - [`control`] is the control plane: the store, key sync into the table, key lifecycle
//!   operations, the admin listener.
//! - [`config`] turns `gateway.toml` into a validated [`config::Config`].
//! - [`core`] holds the types both planes share.
//! - [`cli`] is the command line; `main.rs` only hands it the arguments.

pub mod cli;
pub mod config;
pub mod control;
pub mod core;
pub mod gateway;
pub mod proxy;
pub mod telemetry;
