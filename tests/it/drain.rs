//! SIGTERM: the drain lasts as long as the work, not as long as the clients' connections
//! (issue 12); `/readyz` says the replica is leaving until the process exits (issue 15); and
//! HTTP/2 connections idle past `idle_timeout` are closed. Last, the real binary under SIGHUP
//! and SIGTERM.

use crate::support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{Harness, STANDARD};
use tokio::net::TcpStream;

mod in_process {
    //! A gateway in the test's process, stopped with [`Gateway::shutdown`], what SIGTERM runs.
    //!
    //! [`Gateway::shutdown`]: keygate::gateway::Gateway::shutdown

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
        let refused = support::eventually(Duration::from_secs(10), || async {
            TcpStream::connect(proxy).await.is_err()
        });
        assert!(refused.await, "the proxy no longer accepts");
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

        let _client = super::in_process::unread_h2(proxy, &key).await;
        gateway.signal("-TERM");
        let (code, took) = gateway.exit(Duration::from_secs(65));
        assert_eq!(code, Some(0));
        assert!(took < Duration::from_secs(20), "exited after {took:?}");
        println!("exit after SIGTERM with an unread HTTP/2 connection open: {took:?}");
    }
}
