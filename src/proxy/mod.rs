//! The data plane: everything a proxied request touches. It reads the key table, the config
//! snapshot and the metrics; it never imports the store or the admin code.

pub mod analytics;
pub mod bare;
pub mod client_ip;
pub mod connection;
mod context;
pub mod credentials;
pub mod customers;
pub mod error;
mod exchange;
mod final_phase;
pub mod forward;
pub mod head;
mod identity_values;
pub mod intercept;
pub mod limits;
pub mod overrides;
pub mod path;
pub mod pipeline;
pub mod pool;
pub mod request_id;
pub mod router;
mod sent;
pub mod server;
pub mod shared_limits;
pub mod state;
pub mod table;
pub mod tls;
pub mod tunnel;
pub mod upstream;
pub mod usage;
pub mod wire;

use bytes::Bytes;
use http_body_util::{Either, Full};

/// Response bodies: the upstream's, streamed, or the gateway's own small JSON.
pub type Body = Either<pool::UpstreamBody, Full<Bytes>>;
