//! Unit tests of GitHub's format: key pairs made here sign bodies the way GitHub does, and
//! their public keys are served as GitHub's document, from a file or over HTTP on loopback.

use std::sync::Arc;

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

use super::*;
use crate::core::clock::ManualClock;

const BODY: &[u8] =
    br#"[{"source":"commit","token":"some_token","type":"some_type","url":"https://example.com/base-repo-url/"}]"#;

/// A P-256 key pair as GitHub holds one: signs, and shows its public key as PEM.
struct Signer {
    pair: EcdsaKeyPair,
    pem: String,
}

impl Signer {
    fn new() -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let pem = rcgen::KeyPair::try_from(pkcs8.as_ref()).unwrap().public_key_pem();
        Signer { pair, pem }
    }

    /// The `Github-Public-Key-Signature` of `body`.
    fn sign(&self, body: &[u8]) -> String {
        let signature = self.pair.sign(&SystemRandom::new(), body).unwrap();
        BASE64_STANDARD.encode(signature.as_ref())
    }
}

/// GitHub's keys document listing `keys` by identifier.
fn document(keys: &[(&str, &str)]) -> String {
    let keys: Vec<serde_json::Value> = keys
        .iter()
        .map(|(id, pem)| serde_json::json!({"key_identifier": id, "key": pem, "is_current": true}))
        .collect();
    serde_json::json!({ "public_keys": keys }).to_string()
}

struct Fixture {
    _dir: tempfile::TempDir,
    file: PathBuf,
    clock: ManualClock,
    verifier: Verifier,
}

/// A verifier reading GitHub's document from a file that lists `keys`.
async fn from_file(keys: &[(&str, &str)]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("github-keys.json");
    std::fs::write(&file, document(keys)).unwrap();
    let clock = ManualClock::new(Timestamp::UNIX_EPOCH);
    let verifier = Verifier::new(KeySource::File(file.clone()), Arc::new(clock.clone())).unwrap();
    assert_eq!(verifier.load().await.unwrap(), keys.len());
    Fixture {
        _dir: dir,
        file,
        clock,
        verifier,
    }
}

#[tokio::test]
async fn a_body_signed_by_a_listed_key_verifies_and_anything_else_does_not() {
    let github = Signer::new();
    let f = from_file(&[("k1", &github.pem)]).await;
    let signature = github.sign(BODY);
    let verify = |body: &'static [u8], id: Option<&'static str>, signature: Option<String>| {
        let verifier = &f.verifier;
        async move { verifier.verify(body, id, signature.as_deref()).await }
    };

    assert_eq!(verify(BODY, Some("k1"), Some(signature.clone())).await, Ok(()));
    let changed = br#"[{"source":"commit","token":"other_token","type":"some_type","url":""}]"#;
    for (body, id, signature, expected) in [
        (
            changed as &[u8],
            Some("k1"),
            Some(signature.clone()),
            SignatureError::Invalid,
        ),
        (
            BODY,
            Some("k1"),
            Some(Signer::new().sign(BODY)),
            SignatureError::Invalid,
        ),
        (BODY, Some("k1"), None, SignatureError::Missing),
        (BODY, None, Some(signature.clone()), SignatureError::Missing),
        (
            BODY,
            Some("k2"),
            Some(signature.clone()),
            SignatureError::UnknownKey,
        ),
        (
            BODY,
            Some("k1"),
            Some("not base64!".into()),
            SignatureError::Malformed,
        ),
        (
            BODY,
            Some("k1"),
            Some(BASE64_STANDARD.encode(b"not DER")),
            SignatureError::Invalid,
        ),
        (BODY, Some("k1"), Some(String::new()), SignatureError::Invalid),
    ] {
        assert_eq!(verify(body, id, signature).await, Err(expected), "{expected:?}");
    }
}

#[tokio::test]
async fn an_unknown_identifier_reads_the_keys_again_at_most_once_a_minute() {
    let (first, second, third) = (Signer::new(), Signer::new(), Signer::new());
    let f = from_file(&[("k1", &first.pem)]).await;

    // GitHub rotates: the document lists its next key, which signs.
    std::fs::write(&f.file, document(&[("k1", &first.pem), ("k2", &second.pem)])).unwrap();
    let signed = second.sign(BODY);
    assert_eq!(f.verifier.verify(BODY, Some("k2"), Some(&signed)).await, Ok(()));

    // Another new key within the minute is not looked for; after it, it is.
    std::fs::write(&f.file, document(&[("k3", &third.pem)])).unwrap();
    let signed = third.sign(BODY);
    let unknown = Err(SignatureError::UnknownKey);
    assert_eq!(f.verifier.verify(BODY, Some("k3"), Some(&signed)).await, unknown);
    f.clock.advance(REFRESH_EVERY);
    assert_eq!(f.verifier.verify(BODY, Some("k3"), Some(&signed)).await, Ok(()));
}

#[tokio::test]
async fn a_source_that_cannot_be_read_keeps_the_cached_keys() {
    let github = Signer::new();
    let f = from_file(&[("k1", &github.pem)]).await;
    std::fs::write(&f.file, "not json").unwrap();
    assert!(matches!(f.verifier.load().await, Err(KeysError::Document(_))));
    std::fs::remove_file(&f.file).unwrap();
    assert!(matches!(f.verifier.load().await, Err(KeysError::File(..))));
    std::fs::write(&f.file, vec![b' '; MAX_KEYS_DOCUMENT + 1]).unwrap();
    assert!(matches!(f.verifier.load().await, Err(KeysError::TooLarge)));
    let signed = github.sign(BODY);
    assert_eq!(f.verifier.verify(BODY, Some("k1"), Some(&signed)).await, Ok(()));
}

#[test]
fn keys_that_are_not_p256_public_keys_are_skipped() {
    let p256 = Signer::new().pem;
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)
        .unwrap()
        .public_key_pem();
    let ed25519 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
        .unwrap()
        .public_key_pem();
    let keys = [
        ("p256", p256.as_str()),
        ("p384", &p384),
        ("ed", &ed25519),
        ("junk", "junk"),
    ];
    let set = KeySet::parse(document(&keys).as_bytes()).unwrap();
    assert_eq!(set.len(), 1);
    assert!(set.contains("p256"));
    assert!(matches!(KeySet::parse(b"{}"), Err(KeysError::Document(_))));
}

#[test]
fn githubs_example_alert_parses_and_its_feedback_hashes_the_token() {
    let alerts = parse_alerts(BODY).unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        (alerts[0].token_type.as_str(), alerts[0].source.as_str()),
        ("some_type", "commit")
    );
    assert!(!format!("{alerts:?}").contains("some_token"));
    let ours = Outcome::Revoked {
        key_id: "key_1".into(),
    };
    let twice: Vec<Alert> = [BODY, BODY]
        .iter()
        .flat_map(|body| parse_alerts(body).unwrap())
        .collect();
    let answer = feedback(&twice, &[ours, Outcome::Unknown]);
    let answer = serde_json::to_value(answer).unwrap();
    let hash = "9a45520a1213f15016d2d768b5fb3d904492a44ee274b44d4de8803e00fb536a";
    assert_eq!(
        answer,
        serde_json::json!([
            {"token_hash": hash, "token_type": "some_type", "label": "true_positive"},
            {"token_hash": hash, "token_type": "some_type", "label": "false_positive"},
        ])
    );
}

#[test]
fn alerts_without_a_url_or_source_parse_and_other_bodies_do_not() {
    let alerts = parse_alerts(br#"[{"token":"t","type":"keygate_api_key"}]"#).unwrap();
    assert_eq!((alerts[0].url.as_str(), alerts[0].source.as_str()), ("", ""));
    assert!(format!("{:?}", alerts[0].report()).contains("url: None"));
    for body in [&b"{}"[..], b"[{\"type\":\"x\"}]", b"", b"[1]"] {
        assert!(parse_alerts(body).is_err(), "{body:?}");
    }
}

/// Serves `document` at any path on loopback, as GitHub's API would; its base URL.
async fn serve(document: String) -> Uri {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let document = document.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_request| {
                    let body = http_body_util::Full::new(Bytes::from(document.clone()));
                    async move { Ok::<_, std::convert::Infallible>(http::Response::new(body)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}/meta/public_keys/secret_scanning")
        .parse()
        .unwrap()
}

#[tokio::test]
async fn the_keys_are_fetched_from_a_url() {
    let github = Signer::new();
    let url = serve(document(&[("k1", &github.pem)])).await;
    let clock: Clock = Arc::new(ManualClock::new(Timestamp::UNIX_EPOCH));
    let verifier = Verifier::new(KeySource::Url(url), clock).unwrap();
    let signed = github.sign(BODY);
    // Nothing loaded yet: the unknown identifier has the keys fetched.
    assert_eq!(verifier.verify(BODY, Some("k1"), Some(&signed)).await, Ok(()));
    assert_eq!(verifier.load().await.unwrap(), 1);

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/keys", closed.local_addr().unwrap());
    drop(closed);
    let clock: Clock = Arc::new(ManualClock::new(Timestamp::UNIX_EPOCH));
    let verifier = Verifier::new(KeySource::Url(url.parse().unwrap()), clock).unwrap();
    assert!(matches!(verifier.load().await, Err(KeysError::Fetch(_))));
}
