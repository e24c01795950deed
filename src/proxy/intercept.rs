//! Paths the proxy listener answers for the control plane, before routing (data plane seam):
//! the endpoints that must be reachable where the proxied API is, such as the leak reports of
//! GitHub's secret scanning and GitLab's token revocation API (SPEC 12). The proxy holds them
//! as a trait object that `gateway.rs` hands it, so it never imports the control plane; a
//! gateway without any costs the request path one branch on an `Option`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

/// The answer to an intercepted request, whole.
pub type Answer = Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;

pub trait Intercept: Send + Sync {
    /// Whether a request for `path` is answered here rather than routed: an exact match.
    fn claims(&self, path: &str) -> bool;

    /// Answers a claimed request. Its body is the intercept's to bound.
    fn answer(self: Arc<Self>, request: Request<Incoming>) -> Answer;
}
