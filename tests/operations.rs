//! Operating a running gateway (issues 12 and 15): the TLS certificate replaced at reload, the
//! certificate files checked as `check` and `serve` read them, reload outcomes as metrics, what
//! a reload says needs a restart, and the SIGTERM drain.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use support::{sample, Harness, STANDARD};
use tokio::net::TcpStream;

/// A self-signed certificate for `localhost` and `127.0.0.1`, valid until `until` (year,
/// month, day): (certificate PEM, key PEM, certificate DER).
fn certificate(until: (i32, u8, u8)) -> (String, String, Vec<u8>) {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
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
        let tls = format!("tls = {{ cert = {:?}, key = {:?} }}\n", self.cert(), self.key());
        STANDARD.replace("[server]\n", &format!("[server]\n{tls}"))
    }
}

/// The leaf certificate a new TLS connection to the gateway is served (trusting `trusted`).
async fn served_certificate(h: &Harness, trusted: &[&[u8]]) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for der in trusted {
        roots.add(CertificateDer::from(der.to_vec())).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(h.gateway.proxy_addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let stream = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .expect("the handshake ends in time")
        .expect("the handshake succeeds");
    let (_, connection) = stream.get_ref();
    connection.peer_certificates().unwrap()[0].to_vec()
}

async fn metric(h: &Harness, series: &str) -> Option<f64> {
    sample(&h.metrics().await, series)
}

const SUCCESSES: &str = r#"keygate_config_reloads_total{result="success"}"#;
const FAILURES: &str = r#"keygate_config_reloads_total{result="failure"}"#;
const EXPIRY: &str = "keygate_tls_certificate_expiry_timestamp_seconds";
const LAST_SUCCESS: &str = "keygate_config_last_reload_success_timestamp_seconds";

#[tokio::test]
async fn a_certificate_replaced_on_disk_is_served_after_a_reload_and_a_bad_pair_is_refused() {
    let files = Files::new();
    let (old_cert, old_key, old_der) = certificate(FAR);
    files.write(&old_cert, &old_key);
    let h = Harness::with_config(&files.config(), "").await;
    let trusted = [&old_der[..]];
    assert_eq!(served_certificate(&h, &trusted).await, old_der);
    assert_eq!(metric(&h, EXPIRY).await, Some(unix(FAR)));

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
    assert_eq!(metric(&h, EXPIRY).await, Some(unix(FARTHER)));
    assert_eq!(metric(&h, SUCCESSES).await, Some(1.0));

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
    std::fs::remove_file(files.cert()).unwrap();
    let refused = h.gateway.reload_file(&h.config_path).unwrap_err().to_string();
    assert!(
        refused.contains("server.tls.cert") && refused.contains("cannot read"),
        "{refused}"
    );
    assert_eq!(served_certificate(&h, &trusted).await, new_der);
    assert_eq!(metric(&h, EXPIRY).await, Some(unix(FARTHER)));
    assert_eq!(metric(&h, FAILURES).await, Some(4.0));
    assert_eq!(metric(&h, SUCCESSES).await, Some(1.0));
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
    let text = files.config().replace("{upstream}", "127.0.0.1:7001");
    std::fs::write(&config, &text).unwrap();
    // Line of `tls = ...` in the file.
    let line = text.lines().position(|l| l.starts_with("tls = ")).unwrap() + 1;
    let (cert, key, _) = certificate(FAR);
    let (_, other_key, _) = certificate(FAR);
    let (expired, expired_key, _) = certificate((2021, 1, 1));
    let cases = [
        (None, "server.tls.cert: cannot read"),
        (Some(("not pem", key.as_str())), "server.tls.cert: "),
        (Some((&cert, "not pem")), "server.tls.key: "),
        (Some((&cert, &other_key)), "server.tls.key: "),
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
            clock: keygate::core::clock::system_clock(),
        };
        let started = keygate::gateway::Gateway::start(parsed, options).await;
        let refused = started.err().expect("serve refuses it").to_string();
        assert!(refused.contains(says), "{says}: {refused}");
    }
    assert!(load_problems(&config).contains("expired at 2021-01-01T00:00:00Z"));
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
    std::fs::write(&config, files.config().replace("{upstream}", "127.0.0.1:7001")).unwrap();
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

#[tokio::test]
async fn reload_outcomes_are_counted_and_the_last_success_is_timed() {
    let h = Harness::start().await;
    let started = h.clock_now().as_millisecond() as f64 / 1000.0;
    assert_eq!(metric(&h, SUCCESSES).await, Some(0.0));
    assert_eq!(metric(&h, FAILURES).await, Some(0.0));
    assert_eq!(metric(&h, LAST_SUCCESS).await, Some(started), "the start counts");

    let good = std::fs::read_to_string(&h.config_path).unwrap();
    std::fs::write(
        &h.config_path,
        good.replace("timeout = \"1s\"", "timeout = \"soon\""),
    )
    .unwrap();
    h.clock.advance(Duration::from_secs(60));
    let refused = h.gateway.reload_file(&h.config_path).unwrap_err().to_string();
    assert!(refused.contains("timeout"), "{refused}");
    assert_eq!(metric(&h, FAILURES).await, Some(1.0));
    assert_eq!(metric(&h, LAST_SUCCESS).await, Some(started));

    std::fs::write(&h.config_path, &good).unwrap();
    h.clock.advance(Duration::from_secs(60));
    h.gateway.reload_file(&h.config_path).unwrap();
    assert_eq!(metric(&h, SUCCESSES).await, Some(1.0));
    assert_eq!(metric(&h, FAILURES).await, Some(1.0));
    assert_eq!(metric(&h, LAST_SUCCESS).await, Some(started + 120.0));
}

/// Issue 15: change `listen`, reload, restore it, reload: the second reload used to warn
/// "listen addresses changed" because it compared with the first reload's config, not with
/// what the gateway had bound.
#[tokio::test]
async fn a_restored_setting_needs_no_restart_on_the_next_reload() {
    let h = Harness::start().await;
    let original = std::fs::read_to_string(&h.config_path).unwrap();
    let moved = original
        .replacen("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"", 1)
        .replace("sqlite://keygate.db", "sqlite://other.db");
    for (text, restart_needed) in [
        (&moved, vec!["server.listen", "store.url"]),
        (&original, vec![]),
        (&moved, vec!["server.listen", "store.url"]),
        (&moved, vec!["server.listen", "store.url"]),
        (&original, vec![]),
    ] {
        std::fs::write(&h.config_path, text).unwrap();
        let reloaded = h.gateway.reload_file(&h.config_path).unwrap();
        assert_eq!(reloaded.restart_needed, restart_needed);
    }
    // What the listener was built from is named too; what a reload applies is not.
    for (edit, restart_needed) in [
        (
            ("[server]\n", "[server]\nidle_timeout = \"5s\"\n"),
            vec!["server.idle_timeout"],
        ),
        (("[server]\n", "[server]\nmax_uri_bytes = 100\n"), vec![]),
        (("timeout = \"1s\"", "timeout = \"2s\""), vec![]),
    ] {
        std::fs::write(&h.config_path, original.replace(edit.0, edit.1)).unwrap();
        let reloaded = h.gateway.reload_file(&h.config_path).unwrap();
        assert_eq!(reloaded.restart_needed, restart_needed, "{edit:?}");
    }
}

/// The `keys` and `store` commands serve nothing: a certificate to renew does not stop them.
#[test]
fn the_store_commands_do_not_read_the_certificate() {
    let files = Files::new();
    let (expired, expired_key, _) = certificate((2021, 1, 1));
    files.write(&expired, &expired_key);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, files.config().replace("{upstream}", "127.0.0.1:7001")).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["store", "init", "--config", config.to_str().unwrap()])
        .env_remove("KEYGATE_CONFIG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
}

mod drain {
    //! SIGTERM: the drain lasts as long as the work, not as long as the clients' connections.

    use super::*;
    use bytes::Bytes;
    use http::Request;
    use http_body_util::Full;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use std::time::Instant;

    const GRACE: &str = "shutdown_grace = \"60s\"\n";

    /// An HTTP/2 connection (prior knowledge) that has answered one request and stays open.
    async fn idle_h2(h: &Harness, key: &str) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
        let stream = TcpStream::connect(h.gateway.proxy_addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let request = Request::get("http://a.test/v1/status")
            .header("authorization", support::basic(key))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        sender
    }

    /// An HTTP/2 connection that has had one answer and that the client then stops reading,
    /// as a client does whose connection pool reads only while a request runs (curl's): it
    /// never answers the PING that hyper's graceful shutdown sends with its first GOAWAY. The
    /// connection is returned so that it stays open.
    pub(super) async fn unread_h2(addr: std::net::SocketAddr, key: &str) -> impl Sized {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = h2::client::handshake(stream).await.unwrap();
        let mut conn = Box::pin(conn);
        let request = Request::get("http://a.test/v1/status")
            .header("authorization", support::basic(key))
            .body(())
            .unwrap();
        let (response, _) = sender.send_request(request, true).unwrap();
        let answered = async {
            let mut body = response.await.unwrap().into_body();
            while let Some(chunk) = body.data().await {
                chunk.unwrap();
            }
        };
        tokio::select! {
            () = answered => {}
            _ = &mut conn => panic!("the connection ended"),
        }
        (sender, conn)
    }

    async fn drain_time(h: Harness) -> Duration {
        let Harness { gateway, .. } = h;
        let started = Instant::now();
        gateway.shutdown().await;
        started.elapsed()
    }

    #[tokio::test]
    async fn an_http2_connection_whose_client_does_not_read_does_not_hold_the_drain() {
        let h =
            Harness::with_config(&STANDARD.replace("[server]\n", &format!("[server]\n{GRACE}")), "").await;
        let (_, key) = h.key(&["*"]).await;
        let _client = unread_h2(h.gateway.proxy_addr, &key).await;
        let took = drain_time(h).await;
        assert!(took < Duration::from_secs(20), "the drain took {took:?}");
    }

    #[tokio::test]
    async fn an_idle_http2_connection_does_not_hold_the_drain() {
        let h =
            Harness::with_config(&STANDARD.replace("[server]\n", &format!("[server]\n{GRACE}")), "").await;
        let (_, key) = h.key(&["*"]).await;
        let _client = idle_h2(&h, &key).await;
        let Harness { gateway, .. } = h;
        let started = Instant::now();
        gateway.shutdown().await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(20), "the drain took {took:?}");
    }

    #[tokio::test]
    async fn requests_in_flight_finish_during_the_drain() {
        let config = STANDARD
            .replace("[server]\n", &format!("[server]\n{GRACE}"))
            .replace("timeout = \"1s\"", "timeout = \"15s\"");
        let h = Harness::with_config(&config, "").await;
        let (_, key) = h.key(&["*"]).await;
        let mut h2 = idle_h2(&h, &key).await;
        let slow = || {
            Request::get("http://a.test/slow")
                .header("authorization", support::basic(&key))
                .body(Full::new(Bytes::new()))
                .unwrap()
        };
        let over_h2 = h2.send_request(slow());
        let addr = h.gateway.proxy_addr;
        let over_h1 = async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let request = format!(
                "GET /slow HTTP/1.1\r\nhost: a.test\r\nauthorization: {}\r\n\r\n",
                support::basic(&key)
            );
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await.unwrap();
            String::from_utf8_lossy(&answer).into_owned()
        };
        let Harness {
            gateway, upstream, ..
        } = h;
        let drain = async {
            // Both requests are at the upstream before the drain starts.
            let reached = support::eventually(Duration::from_secs(10), || {
                let reached = upstream.count() >= 3;
                async move { reached }
            });
            assert!(reached.await, "the slow requests reach the upstream");
            let started = Instant::now();
            gateway.shutdown().await;
            started.elapsed()
        };
        let (over_h2, over_h1, took) = tokio::join!(over_h2, over_h1, drain);
        assert_eq!(over_h2.unwrap().status(), 200);
        assert!(over_h1.starts_with("HTTP/1.1 200"), "{over_h1}");
        assert!(took < Duration::from_secs(20), "the drain took {took:?}");
    }

    /// hyper's own HTTP/2 keep-alive PING keeps a connection whose client answers it open for
    /// good; with no stream open for `idle_timeout`, the gateway closes it.
    #[tokio::test]
    async fn an_http2_connection_idle_past_idle_timeout_is_closed_though_it_answers_pings() {
        let config = STANDARD.replace("[server]\n", "[server]\nidle_timeout = \"1s\"\n");
        let h = Harness::with_config(&config, "").await;
        let (_, key) = h.key(&["*"]).await;
        let sender = idle_h2(&h, &key).await;
        let closed = support::eventually(Duration::from_secs(20), || {
            let closed = sender.is_closed();
            async move { closed }
        });
        assert!(closed.await, "the idle connection is still open");
    }

    /// `GET path` on the admin listener at `addr`: status and body.
    async fn admin_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, answer)
    }

    /// Issue 15: the admin listener used to close with the proxy's; a load balancer then saw a
    /// refused probe, not a replica leaving.
    #[tokio::test]
    async fn readyz_answers_503_while_the_gateway_drains() {
        let config = STANDARD
            .replace("[server]\n", &format!("[server]\n{GRACE}"))
            .replace("timeout = \"1s\"", "timeout = \"15s\"");
        let h = Harness::with_config(&config, "").await;
        let (_, key) = h.key(&["*"]).await;
        let (admin, proxy) = (h.gateway.admin_addr, h.gateway.proxy_addr);
        assert_eq!(admin_get(admin, "/readyz").await.0, 200);
        let sender = idle_h2(&h, &key).await;
        let Harness {
            gateway, upstream, ..
        } = h;
        let slow = Request::get("http://a.test/slow")
            .header("authorization", support::basic(&key))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let in_flight = tokio::spawn(sender.clone().send_request(slow));
        let reached = support::eventually(Duration::from_secs(10), || {
            let reached = upstream.count() >= 2;
            async move { reached }
        });
        assert!(reached.await, "the slow request reaches the upstream");
        let shutdown = tokio::spawn(gateway.shutdown());
        let draining = support::eventually(Duration::from_secs(10), || async {
            let (status, body) = admin_get(admin, "/readyz").await;
            status == 503 && body.contains("shutting down")
        });
        assert!(draining.await, "/readyz says the replica is leaving");
        assert_eq!(admin_get(admin, "/healthz").await.0, 200, "still alive");
        assert!(
            TcpStream::connect(proxy).await.is_err(),
            "the proxy no longer accepts"
        );
        assert_eq!(in_flight.await.unwrap().unwrap().status(), 200);
        shutdown.await.unwrap();
        assert!(
            TcpStream::connect(admin).await.is_err(),
            "closed once the gateway stopped"
        );
    }
}

mod process {
    //! The real binary under SIGHUP and SIGTERM.

    use super::*;
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "60s"

[admin]
listen = "127.0.0.1:0"

[store]
url = "sqlite://keys.db"

[[upstream]]
name = "api"
url = "http://{upstream}"

[[route]]
name = "api"
path = "/v1"
upstream = "api"
"#;

    /// The gateway process, killed if the test ends before it exits.
    struct Serving {
        child: Child,
        log: PathBuf,
    }

    impl Drop for Serving {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Serving {
        fn start(config: &Path) -> Serving {
            let log = config.with_file_name("stdout.log");
            let child = Command::new(env!("CARGO_BIN_EXE_keygate"))
                .args([
                    "serve",
                    "--config",
                    config.to_str().unwrap(),
                    "--log-format",
                    "json",
                ])
                .env_remove("KEYGATE_CONFIG")
                .env_remove("RUST_LOG")
                .stdout(std::fs::File::create(&log).unwrap())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            Serving { child, log }
        }

        fn signal(&self, name: &str) {
            let pid = self.child.id().to_string();
            let sent = Command::new("kill").args([name, &pid]).status().unwrap();
            assert!(sent.success());
        }

        fn lines(&self, containing: &str) -> Vec<serde_json::Value> {
            std::fs::read_to_string(&self.log)
                .unwrap_or_default()
                .lines()
                .filter(|line| line.contains(containing))
                .filter_map(|line| serde_json::from_str(line).ok())
                .collect()
        }

        /// Waits (with a deadline) until `count` lines contain `containing`.
        async fn await_lines(&self, containing: &str, count: usize) -> Vec<serde_json::Value> {
            let found = support::eventually(Duration::from_secs(30), || {
                let enough = self.lines(containing).len() >= count;
                async move { enough }
            });
            assert!(
                found.await,
                "{count} x {containing:?} in {:?}",
                std::fs::read_to_string(&self.log)
            );
            self.lines(containing)
        }

        /// Waits up to `deadline` for the exit: its status and when it came.
        fn exit(&mut self, deadline: Duration) -> (Option<i32>, Duration) {
            let started = Instant::now();
            while started.elapsed() < deadline {
                if let Some(status) = self.child.try_wait().unwrap() {
                    return (status.code(), started.elapsed());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            panic!("still running after {deadline:?}");
        }
    }

    fn create_key(config: &Path) -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args([
                "keys",
                "--config",
                config.to_str().unwrap(),
                "create",
                "--name",
                "k",
            ])
            .args(["--env", "production", "--json"])
            .env_remove("KEYGATE_CONFIG")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let key: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        key["key"].as_str().unwrap().to_owned()
    }

    /// Issue 15's reproduction: change `listen`, SIGHUP, restore it, SIGHUP: one warning, for
    /// the first reload only. Then SIGTERM with an idle HTTP/2 client connection open: the
    /// process exits well before `shutdown_grace` (60 s).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sighup_warns_only_while_listen_differs_and_sigterm_exits_when_the_work_is_done() {
        let upstream = support::Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gateway.toml");
        let text = CONFIG.replace("{upstream}", &upstream.addr.to_string());
        std::fs::write(&config, &text).unwrap();
        let key = create_key(&config);
        let mut gateway = Serving::start(&config);
        let serving = gateway.await_lines("keygate serving", 1).await;
        let proxy: std::net::SocketAddr = serving[0]["proxy_addr"].as_str().unwrap().parse().unwrap();

        std::fs::write(&config, text.replacen("127.0.0.1:0", "127.0.0.1:1", 1)).unwrap();
        gateway.signal("-HUP");
        gateway.await_lines("config reloaded", 1).await;
        std::fs::write(&config, &text).unwrap();
        gateway.signal("-HUP");
        gateway.await_lines("config reloaded", 2).await;
        let warnings = gateway.lines("takes effect at the next restart");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0]["setting"], "server.listen");

        let _client = super::drain::unread_h2(proxy, &key).await;
        gateway.signal("-TERM");
        let (code, took) = gateway.exit(Duration::from_secs(65));
        assert_eq!(code, Some(0));
        assert!(took < Duration::from_secs(20), "exited after {took:?}");
        println!("exit after SIGTERM with an unread HTTP/2 connection open: {took:?}");
    }
}
