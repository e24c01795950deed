//! `https://` upstreams, from the outside: a TLS upstream served by tokio-rustls with
//! certificates the test makes (rcgen), the gateway in front of it with a configured CA and,
//! where the upstream asks for one, a client certificate.

use crate::support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::support::{ConfigEdit, Harness, STANDARD};

/// A certificate authority of the test's own.
struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Authority {
    fn new() -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "keygate test CA");
        Authority {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// A certificate for `names` and its key, both PEM.
    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }
}

/// What the TLS upstream saw.
#[derive(Default)]
struct Seen {
    handshakes: AtomicUsize,
    failed_handshakes: AtomicUsize,
    requests: AtomicUsize,
    /// The SNI of the last handshake, and whether it came with a client certificate.
    last: Mutex<Option<(Option<String>, bool)>>,
}

/// An HTTPS upstream for `localhost` and 127.0.0.1, signed by `ca`; it asks for a client
/// certificate signed by `clients` when given one. It answers `tls ok`.
async fn tls_upstream(ca: &Authority, clients: Option<&Authority>) -> (SocketAddr, Arc<Seen>) {
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    serve_tls(&cert, &key, clients).await
}

/// An HTTPS upstream serving `cert` (PEM) with `key`, as [`tls_upstream`] does.
async fn serve_tls(cert: &str, key: &str, clients: Option<&Authority>) -> (SocketAddr, Arc<Seen>) {
    let chain = vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(clients) => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(clients.pem().as_bytes()).unwrap())
                .unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let counts = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, seen) = (acceptor.clone(), counts.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    seen.failed_handshakes.fetch_add(1, Ordering::SeqCst);
                    return;
                };
                seen.handshakes.fetch_add(1, Ordering::SeqCst);
                let connection = stream.get_ref().1;
                let sni = connection.server_name().map(str::to_owned);
                let client_cert = connection.peer_certificates().is_some_and(|c| !c.is_empty());
                *seen.last.lock().unwrap() = Some((sni, client_cert));
                let service = service_fn(|_: Request<Incoming>| {
                    seen.requests.fetch_add(1, Ordering::SeqCst);
                    async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"tls ok")))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// Writes `files` (name, contents) to `dir` and returns their absolute paths.
fn write(dir: &Path, files: &[(&str, &str)]) -> Vec<PathBuf> {
    files
        .iter()
        .map(|(name, text)| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect()
}

/// The standard gateway with its upstream at `https://localhost:PORT` and `settings` added to
/// the upstream table.
async fn gateway(upstream: SocketAddr, settings: &str) -> Harness {
    let template = STANDARD.edit(
        "url = \"http://{upstream}\"",
        &format!("url = \"https://localhost:{}\"\n{settings}", upstream.port()),
    );
    Harness::with_config(&template, "").await
}

fn tls_errors(metrics: &str) -> Option<f64> {
    support::sample(
        metrics,
        r#"keygate_upstream_errors_total{kind="tls",upstream="api"}"#,
    )
}

#[tokio::test]
async fn an_https_upstream_signed_by_the_configured_ca_is_reached_by_its_name() {
    let ca = Authority::new();
    let (addr, seen) = tls_upstream(&ca, None).await;
    let files = tempfile::tempdir().unwrap();
    let paths = write(files.path(), &[("ca.pem", &ca.pem())]);
    let h = gateway(addr, &format!("ca = {:?}", paths[0])).await;
    let (_, key) = h.key(&["*"]).await;
    for _ in 0..3 {
        let answer = h.get("/v1/status", &key).await;
        assert_eq!(
            (answer.status.as_u16(), answer.text()),
            (200, "tls ok".to_owned())
        );
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 3);
    assert_eq!(
        seen.handshakes.load(Ordering::SeqCst),
        1,
        "the connection is pooled"
    );
    let (sni, client_cert) = seen.last.lock().unwrap().clone().unwrap();
    assert_eq!(sni.as_deref(), Some("localhost"), "SNI from the upstream's host");
    assert!(!client_cert);
}

#[tokio::test]
async fn an_upstream_certificate_from_another_ca_is_502_counted_as_tls() {
    let (ca, other) = (Authority::new(), Authority::new());
    let (addr, seen) = tls_upstream(&ca, None).await;
    let files = tempfile::tempdir().unwrap();
    let paths = write(files.path(), &[("other.pem", &other.pem())]);
    let h = gateway(addr, &format!("ca = {:?}", paths[0])).await;
    let (_, key) = h.key(&["*"]).await;
    let answer = h.get("/v1/status", &key).await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert_eq!(answer.json()["error"], "bad gateway");
    assert_eq!(tls_errors(&h.metrics().await), Some(1.0));
    assert_eq!(
        seen.requests.load(Ordering::SeqCst),
        0,
        "nothing sent in the clear or at all"
    );
    // Without `ca`, the web's roots: the test's CA is not among them either.
    let h = gateway(addr, "").await;
    let (_, key) = h.key(&["*"]).await;
    assert_eq!(h.get("/v1/status", &key).await.status, 502);
    assert_eq!(tls_errors(&h.metrics().await), Some(1.0));
}

#[tokio::test]
async fn an_upstream_that_requires_a_client_certificate_gets_the_configured_one() {
    let (ca, clients) = (Authority::new(), Authority::new());
    let (addr, seen) = tls_upstream(&ca, Some(&clients)).await;
    let (cert, key_pem) = clients.issue(&["keygate.test"], ExtendedKeyUsagePurpose::ClientAuth);
    let files = tempfile::tempdir().unwrap();
    let paths = write(
        files.path(),
        &[
            ("ca.pem", &ca.pem()),
            ("client.pem", &cert),
            ("client.key", &key_pem),
        ],
    );
    let with_cert = format!(
        "ca = {:?}\nclient_cert = {:?}\nclient_key = {:?}",
        paths[0], paths[1], paths[2]
    );
    let h = gateway(addr, &with_cert).await;
    let (_, key) = h.key(&["*"]).await;
    let answer = h.get("/v1/status", &key).await;
    assert_eq!(
        (answer.status.as_u16(), answer.text()),
        (200, "tls ok".to_owned())
    );
    let (_, client_cert) = seen.last.lock().unwrap().clone().unwrap();
    assert!(client_cert, "the upstream saw the client certificate");

    // Without one, the upstream refuses the handshake: 502, and nothing reaches it.
    let h = gateway(addr, &format!("ca = {:?}", paths[0])).await;
    let (_, key) = h.key(&["*"]).await;
    assert_eq!(h.get("/v1/status", &key).await.status, 502);
    assert_eq!(seen.requests.load(Ordering::SeqCst), 1);
    assert!(seen.failed_handshakes.load(Ordering::SeqCst) >= 1);
}

/// `keygate check` reads the files an https upstream names, as `serve` would: a missing CA
/// file, a non-PEM one and a certificate with another certificate's key are each reported with
/// their field, and the command fails.
#[test]
fn check_reports_tls_files_that_serve_could_not_use() {
    let ca = Authority::new();
    let (cert, _) = ca.issue(&["keygate.test"], ExtendedKeyUsagePurpose::ClientAuth);
    let (_, other_key) = ca.issue(&["keygate.test"], ExtendedKeyUsagePurpose::ClientAuth);
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            ("client.pem", &cert),
            ("other.key", &other_key),
            ("notes.txt", "not a certificate"),
        ],
    );
    let check = |settings: &str| {
        let config = dir.path().join("gateway.toml");
        let text = format!(
            "[[upstream]]\nname = \"api\"\nurl = \"https://api.internal\"\n{settings}\n\n\
             [[route]]\nname = \"api\"\npath = \"/\"\nupstream = \"api\"\n"
        );
        std::fs::write(&config, text).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(["check", "--config", config.to_str().unwrap()])
            .output()
            .unwrap()
    };
    assert!(check("").status.success(), "the web's roots need no file");
    for (settings, expected) in [
        ("ca = \"missing.pem\"", "upstream \"api\".ca: cannot read"),
        ("ca = \"notes.txt\"", "holds no PEM certificate"),
        (
            "client_cert = \"client.pem\"\nclient_key = \"other.key\"",
            "do not make a certificate and its key",
        ),
    ] {
        let output = check(settings);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{settings}: {stderr}");
        assert!(stderr.contains(expected), "{settings}: {stderr}");
    }
}

/// A reload rereads the TLS files: unchanged, the pool and its connection stay; a CA file
/// whose contents changed makes a new pool, which connects anew.
#[tokio::test]
async fn a_reload_keeps_the_pool_only_while_the_tls_files_are_unchanged() {
    let ca = Authority::new();
    let (addr, seen) = tls_upstream(&ca, None).await;
    let files = tempfile::tempdir().unwrap();
    let paths = write(files.path(), &[("ca.pem", &ca.pem())]);
    let h = gateway(addr, &format!("ca = {:?}", paths[0])).await;
    let (_, key) = h.key(&["*"]).await;
    let reload = || {
        let text = std::fs::read_to_string(&h.config_path).unwrap();
        h.gateway
            .reload(keygate::config::parse(&text, h.dir.path()).unwrap_or_else(|e| panic!("{e}")))
            .unwrap();
    };
    assert_eq!(h.get("/v1/status", &key).await.status, 200);
    reload();
    assert_eq!(h.get("/v1/status", &key).await.status, 200);
    assert_eq!(
        seen.handshakes.load(Ordering::SeqCst),
        1,
        "the same files, the same pool"
    );
    // The same CA and another beside it: new contents, a new pool.
    let both = format!("{}{}", ca.pem(), Authority::new().pem());
    std::fs::write(&paths[0], both).unwrap();
    reload();
    assert_eq!(h.get("/v1/status", &key).await.status, 200);
    assert_eq!(seen.handshakes.load(Ordering::SeqCst), 2);
}

/// A self-signed certificate made as `openssl req -x509` makes one (CA:TRUE), for `names`,
/// valid from `from` to `until` (year, month, day), with `usage` when given: (cert, key) PEM.
fn self_signed_ca(
    names: &[&str],
    (from, until): ((i32, u8, u8), (i32, u8, u8)),
    usage: Option<ExtendedKeyUsagePurpose>,
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
    params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
    params.extended_key_usages = usage.into_iter().collect();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

const VALID: ((i32, u8, u8), (i32, u8, u8)) = ((2020, 1, 1), (2090, 1, 1));

/// Issue 19, item 8: the upstream's own self-signed certificate as its `ca`, the way curl,
/// nginx and Envoy take it, used to be refused at every request (`CaUsedAsEndEntity`).
#[tokio::test]
async fn an_upstreams_self_signed_ca_certificate_given_as_its_ca_is_trusted() {
    for usage in [None, Some(ExtendedKeyUsagePurpose::ServerAuth)] {
        let (cert, key_pem) = self_signed_ca(&["localhost", "127.0.0.1"], VALID, usage.clone());
        let (addr, seen) = serve_tls(&cert, &key_pem, None).await;
        let files = tempfile::tempdir().unwrap();
        let paths = write(files.path(), &[("upstream.pem", &cert)]);
        let h = gateway(addr, &format!("ca = {:?}", paths[0])).await;
        let (_, key) = h.key(&["*"]).await;
        let answer = h.get("/v1/status", &key).await;
        assert_eq!(
            (answer.status.as_u16(), answer.text()),
            (200, "tls ok".to_owned()),
            "{usage:?}"
        );
        assert_eq!(seen.requests.load(Ordering::SeqCst), 1);
        assert_eq!(tls_errors(&h.metrics().await).unwrap_or(0.0), 0.0);
    }
}

/// Pinned by its bytes, the certificate is still checked as webpki would: for the upstream's
/// name, within its dates, for serving; and only the very certificate in `ca` is pinned.
#[tokio::test]
async fn a_pinned_upstream_certificate_with_a_wrong_name_dates_or_purpose_is_502() {
    let client_only = Some(ExtendedKeyUsagePurpose::ClientAuth);
    let (stranger, _) = self_signed_ca(&["localhost"], VALID, None);
    let cases = [
        ("another name", self_signed_ca(&["other.test"], VALID, None), None),
        (
            "expired",
            self_signed_ca(&["localhost"], ((2020, 1, 1), (2021, 1, 1)), None),
            None,
        ),
        (
            "not valid yet",
            self_signed_ca(&["localhost"], ((2089, 1, 1), (2090, 1, 1)), None),
            None,
        ),
        (
            "for clients only",
            self_signed_ca(&["localhost"], VALID, client_only),
            None,
        ),
        (
            "not the one in ca",
            self_signed_ca(&["localhost"], VALID, None),
            Some(stranger),
        ),
    ];
    for (case, (cert, key_pem), ca) in cases {
        let (addr, seen) = serve_tls(&cert, &key_pem, None).await;
        let files = tempfile::tempdir().unwrap();
        let paths = write(files.path(), &[("upstream.pem", ca.as_deref().unwrap_or(&cert))]);
        let h = gateway(addr, &format!("ca = {:?}", paths[0])).await;
        let (_, key) = h.key(&["*"]).await;
        let answer = h.get("/v1/status", &key).await;
        assert_eq!(answer.status, 502, "{case}: {}", answer.text());
        assert_eq!(tls_errors(&h.metrics().await), Some(1.0), "{case}");
        assert_eq!(seen.requests.load(Ordering::SeqCst), 0, "{case}");
    }
}
