//! Types both planes share: environments, permissions, quotas and their periods, secrets and
//! their hashes, the key object, reserved header names, units, percent-decoding, the wall clock,
//! and the client the gateway's own outgoing calls share. Pure: nothing here does I/O (the client is built, not connected).

pub mod clock;
pub mod environment;
pub mod headers;
pub mod key;
pub mod outbound;
pub mod percent;
pub mod permission;
pub mod quota;
pub mod secret;
pub mod units;
