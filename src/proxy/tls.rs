//! The TLS side of the proxy listener (data plane): one rustls acceptor for the life of the
//! listener, whose certificate can be swapped at reload. New handshakes take the certificate
//! current at that moment; connections already up keep the one they were served.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::tls_files::CertificatePair;

/// The certificate the listener serves, swapped whole.
#[derive(Debug)]
struct Current(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The acceptor of the proxy listener and the handle to change its certificate.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    current: Arc<Current>,
}

impl Tls {
    /// HTTP/2 and HTTP/1.1 by ALPN, serving `pair` until [`Tls::replace`].
    pub fn new(pair: &CertificatePair) -> anyhow::Result<Tls> {
        let current = Arc::new(Current(ArcSwap::new(pair.key.clone())));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            current,
        })
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Serves `pair` to every handshake from now on.
    pub fn replace(&self, pair: &CertificatePair) {
        self.current.0.store(pair.key.clone());
    }
}
