//! The HTTPS client of the gateway's own outgoing calls (the lifecycle webhook, span export,
//! and whatever else the gateway itself calls out to): public roots, HTTP/1. Building it
//! connects to nothing.

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A pooled client for `http://` and `https://` URLs, verifying servers against webpki's roots;
/// requests carry bodies of type `B`.
pub type OutboundClient<B = Full<Bytes>> = Client<HttpsConnector<HttpConnector>, B>;

/// A new [`OutboundClient`] on the ring provider the gateway uses everywhere.
pub fn client<B>() -> Result<OutboundClient<B>, rustls::Error>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(provider)?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}
