//! The TLS certificate of the proxy listener (issue 12): replaced on disk and reloaded
//! (SIGHUP) without a restart, a pair that would not serve refused (at reload, by `check` and
//! by `serve`), and its expiry as a metric.

use std::path::{Path, PathBuf};

use crate::support::{clients, ConfigEdit, Harness, RELOAD_FAILURES, RELOAD_SUCCESSES, STANDARD};
use rustls::pki_types::CertificateDer;

/// A self-signed certificate for `localhost` and `127.0.0.1`, valid until `until` (year,
/// month, day): (certificate PEM, key PEM, certificate DER).
fn certificate(until: (i32, u8, u8)) -> (String, String, Vec<u8>) {
    certificate_between((2020, 1, 1), until)
}

/// [`certificate`], valid from `from`.
fn certificate_between(from: (i32, u8, u8), until: (i32, u8, u8)) -> (String, String, Vec<u8>) {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
    params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

/// The Unix time of midnight UTC at the start of `day`.
fn unix(day: (i32, u8, u8)) -> f64 {
    let text = format!("{:04}-{:02}-{:02}T00:00:00Z", day.0, day.1, day.2);
    text.parse::<jiff::Timestamp>().unwrap().as_second() as f64
}

const FAR: (i32, u8, u8) = (2090, 1, 1);
const FARTHER: (i32, u8, u8) = (2095, 6, 1);

/// The certificate and key files of a gateway, outside its config folder.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    /// Replaces both files, the way a certificate renewal does.
    fn write(&self, cert: &str, key: &str) {
        std::fs::write(self.cert(), cert).unwrap();
        std::fs::write(self.key(), key).unwrap();
    }

    /// The standard config serving TLS from these files.
    fn config(&self) -> String {
        let tls = format!("tls = {{ cert = {:?}, key = {:?} }}", self.cert(), self.key());
        STANDARD.set("server", &tls)
    }
}

/// The leaf certificate a new TLS connection to the gateway is served (trusting `trusted`).
async fn served_certificate(h: &Harness, trusted: &[&[u8]]) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for der in trusted {
        roots.add(CertificateDer::from(der.to_vec())).unwrap();
    }
    let stream = clients::tls(h.gateway.proxy_addr, roots).await;
    let (_, connection) = stream.get_ref();
    connection.peer_certificates().unwrap()[0].to_vec()
}

const EXPIRY: &str = "keygate_tls_certificate_expiry_timestamp_seconds";

#[tokio::test]
async fn a_certificate_replaced_on_disk_is_served_after_a_reload_and_a_bad_pair_is_refused() {
    let files = Files::new();
    let (old_cert, old_key, old_der) = certificate(FAR);
    files.write(&old_cert, &old_key);
    let h = Harness::with_config(&files.config(), "").await;
    let trusted = [&old_der[..]];
    assert_eq!(served_certificate(&h, &trusted).await, old_der);
    assert_eq!(h.metric(EXPIRY).await, Some(unix(FAR)));

    let (new_cert, new_key, new_der) = certificate(FARTHER);
    files.write(&new_cert, &new_key);
    let trusted = [&old_der[..], &new_der[..]];
    assert_eq!(
        served_certificate(&h, &trusted).await,
        old_der,
        "nothing changes before the reload"
    );
    h.gateway.reload_file(&h.config_path).unwrap();
    assert_eq!(served_certificate(&h, &trusted).await, new_der);
    assert_eq!(h.metric(EXPIRY).await, Some(unix(FARTHER)));
    assert_eq!(h.metric(RELOAD_SUCCESSES).await, Some(1.0));

    // A renewal half done: the new certificate beside the old key. Refused, the last good
    // pair kept, and counted.
    let (other_cert, _, _) = certificate(FAR);
    files.write(&other_cert, &new_key);
    let refused = h.gateway.reload_file(&h.config_path).unwrap_err().to_string();
    assert!(refused.contains("server.tls.key"), "{refused}");
    for (cert, key) in [("not a certificate", new_key.as_str()), (&new_cert, "not a key")] {
        files.write(cert, key);
        assert!(h.gateway.reload_file(&h.config_path).is_err());
    }
    let (early, early_key, _) = certificate_between(FAR, FARTHER);
    files.write(&early, &early_key);
    let refused = h.gateway.reload_file(&h.config_path).unwrap_err().to_string();
    assert!(refused.contains("is not valid before 2090-01-01"), "{refused}");
    std::fs::remove_file(files.cert()).unwrap();
    let refused = h.gateway.reload_file(&h.config_path).unwrap_err().to_string();
    assert!(
        refused.contains("server.tls.cert") && refused.contains("cannot read"),
        "{refused}"
    );
    assert_eq!(served_certificate(&h, &trusted).await, new_der);
    assert_eq!(h.metric(EXPIRY).await, Some(unix(FARTHER)));
    assert_eq!(h.metric(RELOAD_FAILURES).await, Some(5.0));
    assert_eq!(h.metric(RELOAD_SUCCESSES).await, Some(1.0));
}

/// The config file at `path` with a TLS pair; what `check` and `serve` say of it.
fn load_problems(path: &Path) -> String {
    match keygate::config::load_to_serve(path) {
        Ok(_) => String::new(),
        Err(error) => error.to_string(),
    }
}

#[tokio::test]
async fn check_and_serve_refuse_certificate_files_that_would_not_serve() {
    let files = Files::new();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    let text = files.config().edit("{upstream}", "127.0.0.1:7001");
    std::fs::write(&config, &text).unwrap();
    // Line of `tls = ...` in the file.
    let line = text.lines().position(|l| l.starts_with("tls = ")).unwrap() + 1;
    let (cert, key, _) = certificate(FAR);
    let (_, other_key, _) = certificate(FAR);
    let (expired, expired_key, _) = certificate((2021, 1, 1));
    let (early, early_key, _) = certificate_between(FAR, FARTHER);
    let cases = [
        (None, "server.tls.cert: cannot read"),
        (Some(("not pem", key.as_str())), "server.tls.cert: "),
        (Some((&cert, "not pem")), "server.tls.key: "),
        (Some((&cert, &other_key)), "server.tls.key: "),
        // Issue 19, item 8: accepted, and then every client refused it.
        (Some((&early, &early_key)), "server.tls.cert: the certificate in"),
        (
            Some((&expired, &expired_key)),
            "server.tls.cert: the certificate in",
        ),
    ];
    for (pair, says) in cases {
        let _ = std::fs::remove_file(files.cert());
        if let Some((cert, key)) = pair {
            files.write(cert, key);
        }
        let problems = load_problems(&config);
        assert!(
            problems.starts_with(&format!("line {line}: {says}")),
            "{says}: {problems}"
        );
        let parsed = keygate::config::parse(&text, dir.path()).unwrap();
        let options = keygate::gateway::Options {
            hasher: keygate::core::secret::Hasher::unkeyed(),
            admin_token: None,
            admin_read_token: None,
            clock: keygate::core::clock::system_clock(),
        };
        let started = keygate::gateway::Gateway::start(parsed, options).await;
        let refused = started.err().expect("serve refuses it").to_string();
        assert!(refused.contains(says), "{says}: {refused}");
    }
    assert!(load_problems(&config).contains("expired at 2021-01-01T00:00:00Z"));
    files.write(&early, &early_key);
    let problems = load_problems(&config);
    assert!(
        problems.contains("is not valid before 2090-01-01T00:00:00Z"),
        "{problems}"
    );
    files.write(&cert, &key);
    assert_eq!(load_problems(&config), "");
}

#[test]
fn keygate_check_names_the_line_of_an_expired_certificate() {
    let files = Files::new();
    let (expired, expired_key, _) = certificate((2021, 1, 1));
    files.write(&expired, &expired_key);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, files.config().edit("{upstream}", "127.0.0.1:7001")).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["check", "--config", config.to_str().unwrap()])
        .env_remove("KEYGATE_CONFIG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("line 3: server.tls.cert: the certificate in")
            && stderr.contains("expired at 2021-01-01T00:00:00Z"),
        "{stderr}"
    );
}
/// The `keys` and `store` commands serve nothing: a certificate to renew does not stop them.
#[test]
fn the_store_commands_do_not_read_the_certificate() {
    let files = Files::new();
    let (expired, expired_key, _) = certificate((2021, 1, 1));
    files.write(&expired, &expired_key);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, files.config().edit("{upstream}", "127.0.0.1:7001")).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["store", "init", "--config", config.to_str().unwrap()])
        .env_remove("KEYGATE_CONFIG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
}
