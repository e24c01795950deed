//! SIGTERM: the drain lasts as long as the work, not as long as the clients' connections
//! (issue 12); `/readyz` says the replica is leaving until the process exits (issue 15); and
//! HTTP/2 connections idle past `idle_timeout` are closed. Last, the real binary under SIGHUP
//! and SIGTERM.

use crate::support;

use std::time::Duration;

use crate::support::{ConfigEdit, Harness, STANDARD};
use tokio::net::TcpStream;

mod in_process {
    //! A gateway in the test's process, stopped with [`Gateway::shutdown`], what SIGTERM runs.
    //!
    //! [`Gateway::shutdown`]: keygate::gateway::Gateway::shutdown

    use super::*;
    use bytes::Bytes;
    use http::Request;
    use http_body_util::Full;
    use std::time::Instant;

    use crate::support::clients::raw_get;

    const GRACE: &str = "shutdown_grace = \"60s\"\n";

    /// An HTTP/2 connection (prior knowledge) that has answered one request and stays open.
    async fn idle_h2(h: &Harness, key: &str) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
        let mut sender = support::clients::h2(h.gateway.proxy_addr).await;
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
        let h = Harness::with_config(&STANDARD.set("server", GRACE), "").await;
        let (_, key) = h.key(&["*"]).await;
        let _client = unread_h2(h.gateway.proxy_addr, &key).await;
        let took = drain_time(h).await;
        assert!(took < Duration::from_secs(20), "the drain took {took:?}");
    }

    #[tokio::test]
    async fn an_idle_http2_connection_does_not_hold_the_drain() {
        let h = Harness::with_config(&STANDARD.set("server", GRACE), "").await;
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
            .set("server", GRACE)
            .edit("timeout = \"1s\"", "timeout = \"15s\"");
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
        let config = STANDARD.set("server", "idle_timeout = \"1s\"");
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
    /// Issue 15: the admin listener used to close with the proxy's; a load balancer then saw a
    /// refused probe, not a replica leaving.
    #[tokio::test]
    async fn readyz_answers_503_while_the_gateway_drains() {
        let config = STANDARD
            .set("server", GRACE)
            .edit("timeout = \"1s\"", "timeout = \"15s\"");
        let h = Harness::with_config(&config, "").await;
        let (_, key) = h.key(&["*"]).await;
        let (admin, proxy) = (h.gateway.admin_addr, h.gateway.proxy_addr);
        assert_eq!(raw_get(admin, "/readyz", None).await.0, 200);
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
            let (status, body) = raw_get(admin, "/readyz", None).await;
            status == 503 && body.contains("shutting down")
        });
        assert!(draining.await, "/readyz says the replica is leaving");
        assert_eq!(raw_get(admin, "/healthz", None).await.0, 200, "still alive");
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
    use crate::support::process::{create_key, Serving, CONFIG};

    /// Issue 15's reproduction: change `listen`, SIGHUP, restore it, SIGHUP: one warning, for
    /// the first reload only. Then SIGTERM with an idle HTTP/2 client connection open: the
    /// process exits well before `shutdown_grace` (60 s).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sighup_warns_only_while_listen_differs_and_sigterm_exits_when_the_work_is_done() {
        let upstream = support::Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gateway.toml");
        let text = CONFIG.edit("{upstream}", &upstream.addr.to_string());
        let moved = text.edit(
            "[server]\nlisten = \"127.0.0.1:0\"",
            "[server]\nlisten = \"127.0.0.1:1\"",
        );
        let [text, moved] = [text, moved].map(|t| t.set("server", "shutdown_grace = \"60s\""));
        std::fs::write(&config, &text).unwrap();
        let (_, key) = create_key(&config, "production");
        let mut gateway = Serving::start(&config);
        let (proxy, _) = gateway.addresses().await;

        std::fs::write(&config, &moved).unwrap();
        gateway.signal("-HUP");
        gateway.await_lines("config reloaded", 1).await;
        std::fs::write(&config, &text).unwrap();
        gateway.signal("-HUP");
        gateway.await_lines("config reloaded", 2).await;
        let warnings = gateway.records("takes effect at the next restart");
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
