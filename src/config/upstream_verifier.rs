//! How an `https` upstream with a `ca` file is verified: webpki's verifier, with one exception.
//!
//! A self-signed certificate made the usual way (`openssl req -x509 ...`, which marks it
//! CA:TRUE) and given as the upstream's own `ca` is accepted by curl, nginx and Envoy; webpki
//! refuses it at every handshake as `CaUsedAsEndEntity`. When that is webpki's objection and
//! the certificate the upstream presents is byte for byte one of the `ca` file's, it is
//! accepted: pinned by its bytes, with its name (SANs, as webpki matches them), its dates and
//! its extended key usage checked here. The handshake's signature is verified as always, so
//! the upstream still proves it holds the certificate's key.
//!
//! Built at validation (config plane); runs in every upstream handshake.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, RootCertStore, SignatureScheme,
};
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::Decode;
use x509_cert::ext::pkix::ExtendedKeyUsage;

/// `id-kp-serverAuth` (RFC 5280, 4.2.1.12).
const SERVER_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");

/// webpki's verifier over the `ca` file's certificates, which also takes one of those
/// certificates presented as the upstream's own (see the module doc).
#[derive(Debug)]
pub(super) struct UpstreamVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    /// The `ca` file's certificates, as written.
    pinned: Vec<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
}

impl UpstreamVerifier {
    /// The verifier trusting `certificates` (the `ca` file's; at least one).
    pub(super) fn new(
        certificates: Vec<CertificateDer<'static>>,
        provider: Arc<CryptoProvider>,
    ) -> Result<UpstreamVerifier, String> {
        let mut roots = RootCertStore::empty();
        for cert in &certificates {
            roots
                .add(cert.clone())
                .map_err(|e| format!("holds a certificate that cannot be a root: {e}"))?;
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| format!("cannot verify upstream certificates with it: {e}"))?;
        Ok(UpstreamVerifier {
            webpki,
            pinned: certificates,
            provider,
        })
    }

    fn is_pinned(&self, end_entity: &CertificateDer<'_>) -> bool {
        self.pinned
            .iter()
            .any(|cert| cert.as_ref() == end_entity.as_ref())
    }
}

impl ServerCertVerifier for UpstreamVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let refused =
            match self
                .webpki
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            {
                Ok(verified) => return Ok(verified),
                Err(refused) => refused,
            };
        if !is_ca_used_as_end_entity(&refused) || !self.is_pinned(end_entity) {
            return Err(refused);
        }
        check_pinned(end_entity, server_name, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.webpki.root_hint_subjects()
    }
}

/// webpki's "a CA certificate was presented as the server's own" (rustls passes it on as
/// an `Other` certificate error). webpki checks the dates before it, but not the extended key
/// usage, which comes after.
fn is_ca_used_as_end_entity(error: &Error) -> bool {
    let Error::InvalidCertificate(CertificateError::Other(other)) = error else {
        return false;
    };
    matches!(
        other.0.downcast_ref::<webpki::Error>(),
        Some(webpki::Error::CaUsedAsEndEntity)
    )
}

/// What webpki would have checked of a certificate it trusts as it stands: its name, its
/// dates, and that it may serve (no extended key usage, or one with serverAuth).
fn check_pinned(
    end_entity: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Result<(), Error> {
    let parsed = webpki::EndEntityCert::try_from(end_entity).map_err(|_| CertificateError::BadEncoding)?;
    parsed
        .verify_is_valid_for_subject_name(server_name)
        .map_err(|_| CertificateError::NotValidForName)?;
    let cert = x509_cert::Certificate::from_der(end_entity).map_err(|_| CertificateError::BadEncoding)?;
    let validity = &cert.tbs_certificate.validity;
    let now = now.as_secs();
    if now < validity.not_before.to_unix_duration().as_secs() {
        return Err(CertificateError::NotValidYet.into());
    }
    if now > validity.not_after.to_unix_duration().as_secs() {
        return Err(CertificateError::Expired.into());
    }
    match cert.tbs_certificate.get::<ExtendedKeyUsage>() {
        Ok(None) => Ok(()),
        Ok(Some((_, usage))) if usage.0.contains(&SERVER_AUTH) => Ok(()),
        Ok(Some(_)) => Err(CertificateError::InvalidPurpose.into()),
        Err(_) => Err(CertificateError::BadEncoding.into()),
    }
}
