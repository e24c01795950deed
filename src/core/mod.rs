//! Types both planes share: environments, permissions, secrets and their hashes, the key object,
//! units, and the wall clock. Pure: nothing here does I/O.

pub mod clock;
pub mod environment;
pub mod key;
pub mod permission;
pub mod secret;
pub mod units;
