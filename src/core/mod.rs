//! Types both planes share: environments, permissions, secrets and their hashes, the key object,
//! reserved header names, units, percent-decoding, and the wall clock. Pure: nothing here does
//! I/O.

pub mod clock;
pub mod environment;
pub mod headers;
pub mod key;
pub mod percent;
pub mod permission;
pub mod secret;
pub mod units;
