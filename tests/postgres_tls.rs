//! The PostgreSQL store over TLS: `sslmode` and `sslrootcert` honoured against a server whose
//! certificate the test makes. The server is the machine's PostgreSQL behind a relay that
//! speaks PostgreSQL's TLS opening (an `SSLRequest`, answered `S`, then a TLS handshake) and
//! forwards the decrypted stream, so what is tested is keygate's side: the handshake, the chain
//! and the name. Needs `KEYGATE_TEST_POSTGRES_URL`.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use keygate::control::store::{KeyFilter, PgStore, Store};
use support::postgres::{postgres_url, FreshSchema};
use support::relay::service_addr;

/// PostgreSQL's `SSLRequest`: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// A certificate authority of the test's own, and a server certificate it signed for `names`.
struct Pki {
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
}

impl Pki {
    fn new(names: &[&str]) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let server_cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
        Pki {
            ca_pem: ca_cert.pem(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
        }
    }
}

/// PostgreSQL with TLS in front: answers `SSLRequest` with `S`, completes the handshake with
/// `pki`'s server certificate and relays the rest to `target` in plain text. A client that
/// does not ask for TLS is closed on, as a `hostssl`-only server would.
struct TlsPostgres {
    addr: SocketAddr,
    handshakes: Arc<AtomicUsize>,
}

impl TlsPostgres {
    async fn start(pki: &Pki, target: SocketAddr) -> TlsPostgres {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let certs = vec![CertificateDer::from_pem_slice(pki.server_cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(pki.server_key_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let done = handshakes.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (acceptor, done) = (acceptor.clone(), done.clone());
                tokio::spawn(async move {
                    let _ = relay(client, acceptor, target, done).await;
                });
            }
        });
        TlsPostgres { addr, handshakes }
    }

    fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

async fn relay(
    mut client: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    target: SocketAddr,
    handshakes: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let mut opening = [0u8; 8];
    client.read_exact(&mut opening).await?;
    if opening != SSL_REQUEST {
        return Ok(());
    }
    client.write_all(b"S").await?;
    let mut tls = acceptor.accept(client).await?;
    handshakes.fetch_add(1, Ordering::SeqCst);
    let mut server = TcpStream::connect(target).await?;
    tokio::io::copy_bidirectional(&mut tls, &mut server).await?;
    Ok(())
}

/// The fresh schema's URL, through `server` under the name `host`, with `tls` appended.
fn url_through(schema: &FreshSchema, postgres: &str, server: &TlsPostgres, host: &str, tls: &str) -> String {
    let through = schema.url.replacen(
        &service_addr(postgres).to_string(),
        &format!("{host}:{}", server.addr.port()),
        1,
    );
    // FreshSchema's URL may already ask for sslmode=disable; the test's mode replaces it.
    let through = through
        .replace("sslmode=disable&", "")
        .replace("&sslmode=disable", "");
    format!("{through}&{tls}")
}

fn write_ca(dir: &Path, pki: &Pki) -> String {
    let path = dir.join("ca.pem");
    std::fs::write(&path, &pki.ca_pem).unwrap();
    path.display().to_string()
}

/// Opens the store at `url` (the store blocks; this runs it off the test's runtime).
async fn open(url: String) -> Result<PgStore, String> {
    tokio::task::spawn_blocking(move || PgStore::open(&url).map_err(|e| e.to_string()))
        .await
        .unwrap()
}

fn usable(store: PgStore) {
    let store: &Store = &store;
    assert!(store
        .list(&KeyFilter::default(), jiff::Timestamp::now(), 0, 10)
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_the_servers_ca_connects_over_tls() {
    let Some(postgres) = postgres_url() else {
        return;
    };
    let schema = FreshSchema::new(&postgres);
    let pki = Pki::new(&["localhost"]);
    let server = TlsPostgres::start(&pki, service_addr(&postgres)).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = write_ca(dir.path(), &pki);

    let url = url_through(
        &schema,
        &postgres,
        &server,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let store = open(url).await.unwrap_or_else(|e| panic!("{e}"));
    tokio::task::spawn_blocking(move || usable(store)).await.unwrap();
    assert!(server.handshakes() >= 1, "the connection went through TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_no_trusted_root_vouches_for_is_refused() {
    let Some(postgres) = postgres_url() else {
        return;
    };
    let schema = FreshSchema::new(&postgres);
    let pki = Pki::new(&["localhost"]);
    let server = TlsPostgres::start(&pki, service_addr(&postgres)).await;
    let dir = tempfile::tempdir().unwrap();
    let other_ca = write_ca(dir.path(), &Pki::new(&["localhost"]));

    for tls in [
        // The system's and Mozilla's roots do not know the test's CA.
        "sslmode=require".to_owned(),
        "sslmode=verify-full".to_owned(),
        format!("sslmode=verify-ca&sslrootcert={other_ca}"),
    ] {
        let url = url_through(&schema, &postgres, &server, "localhost", &tls);
        let error = open(url)
            .await
            .err()
            .unwrap_or_else(|| panic!("{tls}: connected"));
        assert!(
            error.contains("certificate") || error.contains("Certificate"),
            "{tls}: {error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ca_accepts_a_name_the_certificate_is_not_for_and_verify_full_does_not() {
    let Some(postgres) = postgres_url() else {
        return;
    };
    let schema = FreshSchema::new(&postgres);
    let pki = Pki::new(&["db.example.internal"]);
    let server = TlsPostgres::start(&pki, service_addr(&postgres)).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = write_ca(dir.path(), &pki);

    let full = url_through(
        &schema,
        &postgres,
        &server,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let Err(error) = open(full).await else {
        panic!("verify-full checks the name");
    };
    assert!(error.contains("certificate"), "{error}");

    let ca_only = url_through(
        &schema,
        &postgres,
        &server,
        "localhost",
        &format!("sslmode=verify-ca&sslrootcert={ca}"),
    );
    let store = open(ca_only).await.unwrap_or_else(|e| panic!("{e}"));
    tokio::task::spawn_blocking(move || usable(store)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tls_a_tls_only_server_is_not_reached() {
    let Some(postgres) = postgres_url() else {
        return;
    };
    let schema = FreshSchema::new(&postgres);
    let pki = Pki::new(&["localhost"]);
    let server = TlsPostgres::start(&pki, service_addr(&postgres)).await;
    let url = url_through(&schema, &postgres, &server, "localhost", "sslmode=disable");
    assert!(open(url).await.is_err());
    assert_eq!(server.handshakes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_error_says_why_the_certificate_was_refused() {
    let Some(postgres) = postgres_url() else {
        return;
    };
    let schema = FreshSchema::new(&postgres);
    let server = TlsPostgres::start(&Pki::new(&["localhost"]), service_addr(&postgres)).await;
    let url = url_through(&schema, &postgres, &server, "localhost", "sslmode=verify-full");
    let Err(error) = open(url).await else {
        panic!("an unknown issuer is refused");
    };
    assert!(
        error.contains("TLS handshake") && error.contains("UnknownIssuer"),
        "{error}"
    );
}
