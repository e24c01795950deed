//! The PostgreSQL store over TLS: `sslmode` and `sslrootcert` honoured against a server whose
//! certificate the test makes. The server is the machine's PostgreSQL behind a relay that
//! speaks PostgreSQL's TLS opening (an `SSLRequest`, answered `S`, then a TLS handshake) and
//! forwards the decrypted stream, so what is tested is keygate's side: the handshake, the chain
//! and the name. Needs `KEYGATE_TEST_POSTGRES_URL`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::postgres::{postgres_url, FreshSchema};
use crate::support::relay::service_addr;
use crate::support::ConfigEdit;
use keygate::control::store::{KeyFilter, KeyStore, PgStore};

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

/// A fresh schema behind a TLS PostgreSQL whose certificate is for `names`, and its CA in a
/// file.
struct Setup {
    postgres: String,
    schema: FreshSchema,
    server: TlsPostgres,
    _dir: tempfile::TempDir,
    ca: String,
}

impl Setup {
    /// `None` (the test skips) without `KEYGATE_TEST_POSTGRES_URL`.
    async fn new(names: &[&str]) -> Option<Setup> {
        let postgres = postgres_url()?;
        let schema = FreshSchema::new(&postgres);
        let pki = Pki::new(names);
        let server = TlsPostgres::start(&pki, service_addr(&postgres)).await;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, &pki.ca_pem).unwrap();
        Some(Setup {
            postgres,
            schema,
            server,
            ca: ca.display().to_string(),
            _dir: dir,
        })
    }

    /// The schema's URL, through the TLS server as `localhost`, with `tls` (`{ca}`: the CA file).
    fn url(&self, tls: &str) -> String {
        let through = self.schema.url.edit(
            &service_addr(&self.postgres).to_string(),
            &format!("localhost:{}", self.server.addr.port()),
        );
        format!("{through}&{}", tls.replace("{ca}", &self.ca))
    }
}

/// Opens the store at `url` (the store blocks; this runs it off the test's runtime).
async fn open(url: String) -> Result<PgStore, String> {
    tokio::task::spawn_blocking(move || PgStore::open(&url).map_err(|e| e.to_string()))
        .await
        .unwrap()
}

/// Opens the store at `url` and lists its keys: none.
async fn usable(url: String) {
    let store = open(url).await.unwrap_or_else(|e| panic!("{e}"));
    tokio::task::spawn_blocking(move || {
        let store: &dyn KeyStore = &store;
        let keys = store.list(&KeyFilter::default(), jiff::Timestamp::now(), 0, 10);
        assert!(keys.unwrap().is_empty());
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_the_servers_ca_connects_over_tls() {
    let Some(setup) = Setup::new(&["localhost"]).await else {
        return;
    };
    usable(setup.url("sslmode=verify-full&sslrootcert={ca}")).await;
    assert!(setup.server.handshakes() >= 1, "the connection went through TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_no_trusted_root_vouches_for_is_refused() {
    let Some(setup) = Setup::new(&["localhost"]).await else {
        return;
    };
    let other = tempfile::tempdir().unwrap();
    let other_ca = other.path().join("other-ca.pem");
    std::fs::write(&other_ca, Pki::new(&["localhost"]).ca_pem).unwrap();
    for tls in [
        // The system's and Mozilla's roots do not know the test's CA.
        "sslmode=require".to_owned(),
        "sslmode=verify-full".to_owned(),
        format!("sslmode=verify-ca&sslrootcert={}", other_ca.display()),
    ] {
        let Err(error) = open(setup.url(&tls)).await else {
            panic!("{tls}: connected");
        };
        assert!(error.contains("invalid peer certificate"), "{tls}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ca_accepts_a_name_the_certificate_is_not_for_and_verify_full_does_not() {
    let Some(setup) = Setup::new(&["db.example.internal"]).await else {
        return;
    };
    let Err(error) = open(setup.url("sslmode=verify-full&sslrootcert={ca}")).await else {
        panic!("verify-full checks the name");
    };
    assert!(error.contains("not valid for name"), "{error}");
    usable(setup.url("sslmode=verify-ca&sslrootcert={ca}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tls_a_tls_only_server_is_not_reached() {
    let Some(setup) = Setup::new(&["localhost"]).await else {
        return;
    };
    assert!(open(setup.url("sslmode=disable")).await.is_err());
    assert_eq!(setup.server.handshakes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_error_says_why_the_certificate_was_refused() {
    let Some(setup) = Setup::new(&["localhost"]).await else {
        return;
    };
    let Err(error) = open(setup.url("sslmode=verify-full")).await else {
        panic!("an unknown issuer is refused");
    };
    assert!(
        error.contains("TLS handshake") && error.contains("UnknownIssuer"),
        "{error}"
    );
}
