//! GitHub's secret scanning partner program (control plane): the alerts GitHub POSTs, their
//! signature, GitHub's public keys, and the feedback list that answers them.
//!
//! GitHub POSTs a JSON array `[{"token","type","url","source"}]`, signed: the header
//! `Github-Public-Key-Identifier` names one of GitHub's keys and `Github-Public-Key-Signature`
//! is the base64 of a DER ECDSA P-256 SHA-256 signature over the raw body. GitHub's keys are
//! the document `{"public_keys":[{"key_identifier","key","is_current"}]}` (PEM keys) at
//! `leaks.github.keys_url` ([`KEYS_URL`]), or the same document in `leaks.github.keys_file`.
//! They are cached by identifier. An identifier not in the cache has the source read again, at
//! most once a minute: GitHub's next key is picked up without a restart, and a flood of
//! made-up identifiers costs one fetch a minute (GitHub allows 60 unauthenticated an hour).
//! The answer is GitHub's feedback list `[{"token_hash","token_type","label"}]`, the hash the
//! SHA-256 hex of the token, the label `true_positive` for a secret of this store.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::prelude::{Engine, BASE64_STANDARD};
use bytes::Bytes;
use http::header::{ACCEPT, USER_AGENT};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use jiff::Timestamp;
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::SubjectPublicKeyInfoDer;
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::Decode;
use x509_cert::spki::SubjectPublicKeyInfoRef;

use super::{Outcome, Report};
use crate::control::webhook::AGENT;
use crate::core::clock::Clock;
use crate::core::outbound::{self, OutboundClient};

/// The header naming the key that signed a request.
pub const IDENTIFIER_HEADER: &str = "github-public-key-identifier";
/// The header holding the signature, base64 of DER.
pub const SIGNATURE_HEADER: &str = "github-public-key-signature";
/// GitHub's published keys for secret scanning.
pub const KEYS_URL: &str = crate::config::GITHUB_KEYS_URL;
/// Largest alert body read: a batch of 1,000 matches of 400 bytes each fits twice over.
pub const MAX_BODY: usize = 1024 * 1024;
/// Largest keys document read (GitHub's is about 1 KiB).
const MAX_KEYS_DOCUMENT: usize = 64 * 1024;
/// Least time between two reads of the key source on unknown identifiers.
const REFRESH_EVERY: Duration = Duration::from_secs(60);
/// Longest a fetch of the keys may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// `id-ecPublicKey` and the P-256 curve (`prime256v1`), as an SPKI names them.
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

/// One match GitHub reports. `Debug` never prints the token.
#[derive(serde::Deserialize)]
pub struct Alert {
    pub token: String,
    #[serde(rename = "type")]
    pub token_type: String,
    /// Where it was found; may be empty.
    #[serde(default)]
    pub url: String,
    /// `content`, `commit`, `issue_comment`, ...
    #[serde(default)]
    pub source: String,
}

impl fmt::Debug for Alert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Alert")
            .field("token", &"<redacted>")
            .field("token_type", &self.token_type)
            .field("url", &self.url)
            .field("source", &self.source)
            .finish()
    }
}

impl Alert {
    /// The alert as a report to decide.
    pub fn report(&self) -> Report {
        let url = (!self.url.is_empty()).then(|| self.url.clone());
        Report::new(self.token.clone(), url)
    }
}

/// The alerts of a request body (which must be bounded by [`MAX_BODY`] before it is read).
pub fn parse_alerts(body: &[u8]) -> Result<Vec<Alert>, serde_json::Error> {
    serde_json::from_slice(body)
}

/// One entry of the answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Feedback {
    pub token_hash: String,
    pub token_type: String,
    pub label: Label,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    TruePositive,
    FalsePositive,
}

/// The answer to a batch: each alert with its outcome, in order.
pub fn feedback(alerts: &[Alert], outcomes: &[Outcome]) -> Vec<Feedback> {
    alerts
        .iter()
        .zip(outcomes)
        .map(|(alert, outcome)| Feedback {
            token_hash: sha256_hex(alert.token.as_bytes()),
            token_type: alert.token_type.clone(),
            label: match outcome.is_ours() {
                true => Label::TruePositive,
                false => Label::FalsePositive,
            },
        })
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a request's signature does not hold. Each is a 401 that changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no signature or no key identifier")]
    Missing,
    #[error("signed with a key GitHub does not list")]
    UnknownKey,
    #[error("the signature is not base64")]
    Malformed,
    #[error("the signature does not match the body")]
    Invalid,
}

/// Why GitHub's keys could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("the keys document is not GitHub's public_keys list: {0}")]
    Document(#[from] serde_json::Error),
    #[error("cannot read {0}: {1}")]
    File(PathBuf, std::io::Error),
    #[error("the keys document is larger than {MAX_KEYS_DOCUMENT} bytes")]
    TooLarge,
    #[error("cannot fetch the keys: {0}")]
    Fetch(String),
    #[error("cannot set up TLS to fetch the keys: {0}")]
    Tls(#[from] rustls::Error),
}

/// GitHub's public keys, by identifier: each the P-256 point its PEM holds.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: HashMap<String, Vec<u8>>,
}

#[derive(serde::Deserialize)]
struct Document {
    public_keys: Vec<PublicKey>,
}

#[derive(serde::Deserialize)]
struct PublicKey {
    key_identifier: String,
    key: String,
}

impl KeySet {
    /// The keys of a document. A key that is not a P-256 public key is skipped with a warning,
    /// so one odd entry cannot stop the others from verifying.
    pub fn parse(document: &[u8]) -> Result<KeySet, KeysError> {
        let document: Document = serde_json::from_slice(document)?;
        let mut keys = HashMap::new();
        for key in document.public_keys {
            match p256_point(&key.key) {
                Some(point) => {
                    keys.insert(key.key_identifier, point);
                }
                None => {
                    tracing::warn!(key_identifier = %key.key_identifier, "GitHub's key list holds a key that is not a P-256 public key in PEM; skipped")
                }
            }
        }
        Ok(KeySet { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn contains(&self, identifier: &str) -> bool {
        self.keys.contains_key(identifier)
    }

    /// Whether `signature` (base64 DER) is the key `identifier`'s over `body`.
    pub fn verify(&self, body: &[u8], identifier: &str, signature: &str) -> Result<(), SignatureError> {
        let point = self.keys.get(identifier).ok_or(SignatureError::UnknownKey)?;
        let signature = BASE64_STANDARD
            .decode(signature.trim())
            .map_err(|_| SignatureError::Malformed)?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point)
            .verify(body, &signature)
            .map_err(|_| SignatureError::Invalid)
    }
}

/// The uncompressed point of a PEM `PUBLIC KEY` (SPKI) on P-256, as ring takes it.
fn p256_point(pem: &str) -> Option<Vec<u8>> {
    let der = SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes()).ok()?;
    let spki = SubjectPublicKeyInfoRef::from_der(der.as_ref()).ok()?;
    spki.algorithm.assert_oids(EC_PUBLIC_KEY, P256).ok()?;
    spki.subject_public_key.as_bytes().map(<[u8]>::to_vec)
}

/// Where GitHub's keys are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `leaks.github.keys_file`: a copy of GitHub's document (offline deployments, tests).
    File(PathBuf),
    /// `leaks.github.keys_url`: GitHub's published list.
    Url(Uri),
}

/// Checks requests' signatures against GitHub's keys, cached.
pub struct Verifier {
    source: KeySource,
    keys: ArcSwap<KeySet>,
    /// When the source was last read for an unknown identifier; held while it is read.
    refreshed: tokio::sync::Mutex<Option<Timestamp>>,
    clock: Clock,
    client: OutboundClient<Empty<Bytes>>,
}

impl Verifier {
    /// A verifier with no keys yet: [`Verifier::load`] reads them, and an unknown identifier does.
    pub fn new(source: KeySource, clock: Clock) -> Result<Verifier, KeysError> {
        Ok(Verifier {
            source,
            keys: ArcSwap::from_pointee(KeySet::default()),
            refreshed: tokio::sync::Mutex::new(None),
            clock,
            client: outbound::client()?,
        })
    }

    /// Reads the source now and replaces the cached keys; how many there are. On failure the
    /// cached keys stay.
    pub async fn load(&self) -> Result<usize, KeysError> {
        let document = match &self.source {
            KeySource::File(path) => read_file(path).await?,
            KeySource::Url(url) => self.fetch(url).await?,
        };
        let keys = KeySet::parse(&document)?;
        let count = keys.len();
        self.keys.store(keys.into());
        Ok(count)
    }

    /// Whether the request's headers sign its raw body.
    pub async fn verify(
        &self,
        body: &[u8],
        identifier: Option<&str>,
        signature: Option<&str>,
    ) -> Result<(), SignatureError> {
        let (Some(identifier), Some(signature)) = (identifier, signature) else {
            return Err(SignatureError::Missing);
        };
        match self.keys.load().verify(body, identifier, signature) {
            Err(SignatureError::UnknownKey) => {
                self.refresh_for(identifier).await;
                self.keys.load().verify(body, identifier, signature)
            }
            checked => checked,
        }
    }

    /// Reads the source again for an identifier not cached, unless it was read within
    /// [`REFRESH_EVERY`]; concurrent callers wait for one read.
    async fn refresh_for(&self, identifier: &str) {
        let mut refreshed = self.refreshed.lock().await;
        if self.keys.load().contains(identifier) {
            return;
        }
        let now = self.clock.now();
        if refreshed.is_some_and(|at| at.checked_add(REFRESH_EVERY).is_ok_and(|next| now < next)) {
            return;
        }
        *refreshed = Some(now);
        match self.load().await {
            Ok(count) => tracing::info!(
                keys = count,
                "GitHub's secret scanning keys read again for an unknown identifier"
            ),
            Err(error) => {
                tracing::warn!(%error, "cannot read GitHub's secret scanning keys; the cached ones stay")
            }
        }
    }

    async fn fetch(&self, url: &Uri) -> Result<Bytes, KeysError> {
        let request = Request::get(url.clone())
            .header(USER_AGENT, AGENT)
            .header(ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| KeysError::Fetch(e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| KeysError::Fetch(e.to_string()))?;
            if response.status() != StatusCode::OK {
                return Err(KeysError::Fetch(format!("{url} answered {}", response.status())));
            }
            let body = Limited::new(response.into_body(), MAX_KEYS_DOCUMENT)
                .collect()
                .await;
            body.map(|body| body.to_bytes())
                .map_err(|error| match error.is::<LengthLimitError>() {
                    true => KeysError::TooLarge,
                    false => KeysError::Fetch(error.to_string()),
                })
        };
        tokio::time::timeout(FETCH_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(KeysError::Fetch(format!(
                    "no answer from {url} within {FETCH_TIMEOUT:?}"
                )))
            })
    }
}

async fn read_file(path: &std::path::Path) -> Result<Bytes, KeysError> {
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| KeysError::File(path.to_owned(), e))?;
    if bytes.len() > MAX_KEYS_DOCUMENT {
        return Err(KeysError::TooLarge);
    }
    Ok(bytes.into())
}

#[cfg(test)]
mod tests;
