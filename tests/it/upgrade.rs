//! WebSocket (and other `Upgrade`) tunnelling, from the outside: a WebSocket echo upstream
//! behind the gateway, a client that upgrades through it, and what reaches the upstream when
//! the gateway refuses.

use crate::support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::HeaderMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::{basic, eventually, throughout, ConfigEdit, Harness, STANDARD};

const DEADLINE: Duration = Duration::from_secs(5);

/// A WebSocket upstream that echoes every message. It counts the connections it accepts and
/// keeps the head of the last upgrade; `/v1/status/refuse` is answered 404 without upgrading.
struct EchoUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    last_head: Arc<Mutex<Option<HeaderMap>>>,
}

impl EchoUpstream {
    async fn start() -> EchoUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let last_head: Arc<Mutex<Option<HeaderMap>>> = Arc::default();
        let (count, head) = (accepted.clone(), last_head.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(echo(stream, head.clone()));
            }
        });
        EchoUpstream {
            addr,
            accepted,
            last_head,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn last_head(&self) -> HeaderMap {
        self.last_head
            .lock()
            .unwrap()
            .clone()
            .expect("an upgrade reached the upstream")
    }
}

#[allow(clippy::result_large_err)] // tungstenite's callback type
async fn echo(stream: TcpStream, head: Arc<Mutex<Option<HeaderMap>>>) {
    let callback = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        *head.lock().unwrap() = Some(request.headers().clone());
        if request.uri().path() == "/v1/status/refuse" {
            let mut refusal = ErrorResponse::new(Some("no websocket here".into()));
            *refusal.status_mut() = http::StatusCode::NOT_FOUND;
            return Err(refusal);
        }
        Ok(response)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    while let Some(Ok(message)) = ws.next().await {
        if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
            return;
        }
    }
}

/// The standard gateway in front of `upstream`, with `server` settings added.
async fn gateway(upstream: &EchoUpstream, server: &str) -> Harness {
    gateway_with(upstream, server, "").await
}

/// [`gateway`], with `settings` added to the upstream's table too.
async fn gateway_with(upstream: &EchoUpstream, server: &str, settings: &str) -> Harness {
    let template = STANDARD
        .edit(
            "url = \"http://{upstream}\"",
            &format!("url = \"http://{}\"\n{settings}", upstream.addr),
        )
        .set("server", server);
    Harness::with_config(&template, "").await
}

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket through the gateway at `path`, with `key` as Basic password when given.
async fn connect(h: &Harness, path: &str, key: Option<&str>) -> Result<Client, WsError> {
    let mut request = format!("ws://{}{path}", h.gateway.proxy_addr)
        .into_client_request()
        .unwrap();
    if let Some(key) = key {
        request
            .headers_mut()
            .insert("authorization", basic(key).parse().unwrap());
    }
    let connected = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(request)).await;
    connected
        .expect("the gateway answers the upgrade")
        .map(|(ws, _)| ws)
}

async fn round_trip(ws: &mut Client, message: Message) -> Message {
    ws.send(message).await.unwrap();
    tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("an echo within the deadline")
        .expect("the tunnel is open")
        .unwrap()
}

/// The status of a refused upgrade.
fn refused_status(result: Result<Client, WsError>) -> u16 {
    match result {
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("not an HTTP refusal: {other}"),
        Ok(_) => panic!("the upgrade went through"),
    }
}

#[tokio::test]
async fn a_websocket_echoes_through_the_gateway_with_the_gateway_s_headers() {
    let upstream = EchoUpstream::start().await;
    let h = gateway(&upstream, "").await;
    let (id, key) = h.key(&["*"]).await;
    let mut ws = connect(&h, "/v1/status/ws", Some(&key)).await.unwrap();
    assert_eq!(h.gateway.shared.tunnels.open(), 1);
    for message in [
        Message::text("hello"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::text("x".repeat(100_000)),
    ] {
        assert_eq!(round_trip(&mut ws, message.clone()).await, message);
    }
    let head = upstream.last_head();
    assert_eq!(head["x-keygate-key-id"], id.as_str());
    assert!(head.get("authorization").is_none(), "{head:?}");
    assert_eq!(
        head["upgrade"].to_str().unwrap().to_ascii_lowercase(),
        "websocket"
    );
    ws.close(None).await.unwrap();
    // The closing handshake, to the end of the stream.
    while let Ok(Some(Ok(_))) = tokio::time::timeout(DEADLINE, ws.next()).await {}
    drop(ws);
    assert!(
        eventually(DEADLINE, || async { h.gateway.shared.tunnels.open() == 0 }).await,
        "the tunnel ends with the WebSocket"
    );
    // A tunnel is counted once, as requests are.
    let metrics = h.metrics().await;
    let counted = metrics.lines().find(|line| {
        line.starts_with("keygate_requests_total{")
            && line.contains(r#"route="status""#)
            && line.contains(r#"status="101""#)
    });
    assert!(counted.is_some_and(|line| line.ends_with(" 1")), "{metrics}");
}

#[tokio::test]
async fn a_refused_upgrade_never_reaches_the_upstream() {
    let upstream = EchoUpstream::start().await;
    let h = gateway(&upstream, "").await;
    let (_, reader) = h.key(&["customer:read"]).await;
    assert_eq!(refused_status(connect(&h, "/v1/status/ws", None).await), 401);
    let wrong = "kg_live_00000000000000000000000000000000";
    assert_eq!(
        refused_status(connect(&h, "/v1/status/ws", Some(wrong)).await),
        401
    );
    // The customers route needs customer:write for anything but GET and HEAD; a WebSocket is a
    // GET, so the customer scope is what refuses here: another customer than the key's.
    let scoped = h
        .create_key(keygate::control::keys::KeySpec {
            customer_id: Some("acme".into()),
            ..support::spec(keygate::core::environment::Environment::Production, &["*"])
        })
        .await
        .1;
    assert_eq!(
        refused_status(connect(&h, "/v1/customers/globex/ws", Some(&scoped)).await),
        403
    );
    let (_, nothing) = h.key(&[]).await;
    assert_eq!(
        refused_status(connect(&h, "/v1/customers/acme/ws", Some(&nothing)).await),
        403
    );
    assert_eq!(upstream.accepted(), 0, "nothing reached the upstream");
    // The same keys where they are allowed do reach it.
    let mut ws = connect(&h, "/v1/customers/acme/ws", Some(&reader)).await.unwrap();
    assert_eq!(
        round_trip(&mut ws, Message::text("in")).await,
        Message::text("in")
    );
    assert_eq!(upstream.accepted(), 1);
}

#[tokio::test]
async fn an_upstream_that_does_not_switch_is_answered_as_it_answered() {
    let upstream = EchoUpstream::start().await;
    let h = gateway(&upstream, "").await;
    let (_, key) = h.key(&["*"]).await;
    assert_eq!(
        refused_status(connect(&h, "/v1/status/refuse", Some(&key)).await),
        404
    );
    assert_eq!(h.gateway.shared.tunnels.open(), 0);
    // The gateway still serves upgrades after one that was not.
    let mut ws = connect(&h, "/v1/status/ws", Some(&key)).await.unwrap();
    assert_eq!(
        round_trip(&mut ws, Message::text("on")).await,
        Message::text("on")
    );
}

#[tokio::test]
async fn a_tunnel_holds_its_connection_slot_while_it_lives() {
    let upstream = EchoUpstream::start().await;
    let h = gateway(&upstream, "max_connections = 1").await;
    let (_, key) = h.key(&["*"]).await;
    let mut ws = connect(&h, "/v1/status/ws", Some(&key)).await.unwrap();
    assert_eq!(round_trip(&mut ws, Message::text("a")).await, Message::text("a"));
    // The one slot is the tunnel's: a second connection waits in the backlog.
    let second = {
        let url = format!("ws://{}/v1/status/ws", h.gateway.proxy_addr);
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("authorization", basic(&key).parse().unwrap());
        tokio::spawn(tokio_tungstenite::connect_async(request))
    };
    // That nothing happens takes a window to see: watched throughout, failing at once.
    let waits = throughout(Duration::from_millis(300), || async {
        !second.is_finished() && upstream.accepted() == 1
    });
    assert!(waits.await, "a second connection was served past the cap");
    ws.close(None).await.unwrap();
    drop(ws);
    let (mut ws, _) = tokio::time::timeout(DEADLINE, second)
        .await
        .expect("served once the tunnel ends")
        .unwrap()
        .unwrap();
    assert_eq!(round_trip(&mut ws, Message::text("b")).await, Message::text("b"));
}

#[tokio::test]
async fn a_tunnel_has_the_shutdown_grace_then_is_closed() {
    let upstream = EchoUpstream::start().await;
    let h = gateway(&upstream, "shutdown_grace = \"500ms\"").await;
    let (_, key) = h.key(&["*"]).await;
    let mut ws = connect(&h, "/v1/status/ws", Some(&key)).await.unwrap();
    assert_eq!(round_trip(&mut ws, Message::text("a")).await, Message::text("a"));
    let shared = h.gateway.shared.clone();
    let stopping = tokio::spawn(h.gateway.shutdown());
    // Within the grace the tunnel still carries messages.
    assert_eq!(round_trip(&mut ws, Message::text("b")).await, Message::text("b"));
    tokio::time::timeout(DEADLINE, stopping)
        .await
        .expect("the shutdown ends after the grace")
        .unwrap();
    let ended = tokio::time::timeout(DEADLINE, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    assert!(ended.is_ok(), "the tunnel is closed after the grace");
    assert!(eventually(DEADLINE, || async { shared.tunnels.open() == 0 }).await);
}

#[tokio::test]
async fn a_tunnel_idle_past_server_idle_timeout_is_closed() {
    let upstream = EchoUpstream::start().await;
    let h = gateway(&upstream, "idle_timeout = \"300ms\"").await;
    let (_, key) = h.key(&["*"]).await;
    let mut ws = connect(&h, "/v1/status/ws", Some(&key)).await.unwrap();
    assert_eq!(round_trip(&mut ws, Message::text("a")).await, Message::text("a"));
    let ended = tokio::time::timeout(DEADLINE, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    assert!(ended.is_ok(), "the idle tunnel is closed");
    assert!(eventually(DEADLINE, || async { h.gateway.shared.tunnels.open() == 0 }).await);
}

#[tokio::test]
async fn a_tunnel_holds_its_upstream_connection_s_turn() {
    let upstream = EchoUpstream::start().await;
    let h = gateway_with(&upstream, "", "pool_max_connections = 1").await;
    let (_, key) = h.key(&["*"]).await;
    let mut ws = connect(&h, "/v1/status/ws", Some(&key)).await.unwrap();
    assert_eq!(round_trip(&mut ws, Message::text("a")).await, Message::text("a"));
    // The upstream's one connection is the tunnel: the next request gets its fast 503.
    let answer = h.get("/v1/status", &key).await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert_eq!(upstream.accepted(), 1);
    ws.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(DEADLINE, ws.next()).await {}
    drop(ws);
    assert!(eventually(DEADLINE, || async { h.gateway.shared.tunnels.open() == 0 }).await);
    let mut ws = connect(&h, "/v1/status/ws", Some(&key)).await.unwrap();
    assert_eq!(round_trip(&mut ws, Message::text("b")).await, Message::text("b"));
}

#[tokio::test]
async fn an_upgrade_abandoned_before_the_upstream_answers_leaves_one_499_record() {
    // An upstream that takes the upgrade and never answers it.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let (got, mut received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = silent.accept().await {
            let got = got.clone();
            tokio::spawn(async move {
                let mut buf = [0; 4096];
                while let Ok(1..) = stream.read(&mut buf).await {
                    let _ = got.send(());
                }
            });
        }
    });
    let template = STANDARD.edit(
        "url = \"http://{upstream}\"",
        &format!("url = \"http://{silent_addr}\""),
    );
    let h = Harness::with_config(&template, "").await;
    let (id, key) = h.key(&["*"]).await;
    let mut client = TcpStream::connect(h.gateway.proxy_addr).await.unwrap();
    let request = format!(
        "GET /v1/status/ws HTTP/1.1\r\nHost: api.test\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: {}\r\n\
         X-Request-Id: gone-ws\r\n\r\n",
        basic(&key)
    );
    client.write_all(request.as_bytes()).await.unwrap();
    tokio::time::timeout(DEADLINE, received.recv())
        .await
        .expect("the upgrade reaches the upstream");
    drop(client);
    let records = h.recorded("gone-ws").await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["status"], 499, "{records:?}");
    assert_eq!(records[0]["key_id"], id.as_str());
    assert_eq!(records[0]["route"], "status");
    assert_eq!(h.gateway.shared.tunnels.open(), 0);
}

#[tokio::test]
async fn an_upgrade_the_upstream_refuses_leaves_one_record_of_its_answer() {
    let upstream = EchoUpstream::start().await;
    let h = gateway(&upstream, "").await;
    let (id, key) = h.key(&["*"]).await;
    let mut request = format!("ws://{}/v1/status/refuse", h.gateway.proxy_addr)
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    headers.insert("authorization", basic(&key).parse().unwrap());
    headers.insert("x-request-id", "refused-ws".parse().unwrap());
    let connected = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(request))
        .await
        .expect("the gateway answers the upgrade")
        .map(|(ws, _)| ws);
    assert_eq!(refused_status(connected), 404);
    let records = h.recorded("refused-ws").await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["status"], 404, "{records:?}");
    assert_eq!(records[0]["key_id"], id.as_str());
}

/// Whether the tunnel `ws` has been closed by the gateway (within the deadline).
async fn closed(ws: &mut Client) -> bool {
    tokio::time::timeout(DEADLINE, async { while let Some(Ok(_)) = ws.next().await {} })
        .await
        .is_ok()
}

#[tokio::test]
async fn a_tunnel_is_closed_once_its_key_no_longer_lets_anyone_in() {
    let upstream = EchoUpstream::start().await;
    let h = gateway(&upstream, "").await;
    type Change = fn(&Harness, &str);
    let changes: [(&str, Change); 4] = [
        ("revoked", |h, id| {
            h.keys.revoke(id).unwrap();
        }),
        ("deleted", |h, id| h.keys.delete(id).unwrap()),
        ("regenerated without grace", |h, id| {
            h.keys.regenerate(id, None).unwrap();
        }),
        ("expired", |h, id| {
            let soon = h.clock_now() + Duration::from_secs(60);
            let patch = keygate::control::keys::KeyPatch {
                expires_at: Some(Some(soon)),
                ..Default::default()
            };
            h.keys.update(id, patch).unwrap();
        }),
    ];
    for (what, change) in changes {
        let (id, key) = h.key(&["*"]).await;
        let mut ws = connect(&h, "/v1/status/ws", Some(&key)).await.unwrap();
        assert_eq!(round_trip(&mut ws, Message::text("a")).await, Message::text("a"));
        change(&h, &id);
        h.sync().await;
        if what == "expired" {
            // Still valid for a minute: the tunnel carries on.
            assert_eq!(
                round_trip(&mut ws, Message::text("b")).await,
                Message::text("b"),
                "{what}"
            );
            // Expiry comes by time; the sync's next tick (every sync_interval) notices it.
            h.clock.advance(Duration::from_secs(61));
        }
        assert!(closed(&mut ws).await, "the tunnel outlived its key: {what}");
    }
    assert!(eventually(DEADLINE, || async { h.gateway.shared.tunnels.open() == 0 }).await);
}

#[tokio::test]
async fn a_tunnel_outlives_changes_that_keep_its_key_valid() {
    let upstream = EchoUpstream::start().await;
    let h = gateway(&upstream, "").await;
    let (id, key) = h.key(&["*"]).await;
    let mut ws = connect(&h, "/v1/status/ws", Some(&key)).await.unwrap();
    // Another key revoked, this one renamed, this one regenerated with a grace period.
    let (other, _) = h.key(&["*"]).await;
    h.keys.revoke(&other).unwrap();
    let renamed = keygate::control::keys::KeyPatch {
        name: Some("renamed".into()),
        ..Default::default()
    };
    h.keys.update(&id, renamed).unwrap();
    h.keys.regenerate(&id, Some(Duration::from_secs(600))).unwrap();
    h.sync().await;
    assert_eq!(round_trip(&mut ws, Message::text("a")).await, Message::text("a"));
    assert_eq!(h.gateway.shared.tunnels.open(), 1);
    // The grace period ends: the old secret lets nobody in, and its tunnel closes.
    h.clock.advance(Duration::from_secs(601));
    assert!(closed(&mut ws).await, "the tunnel outlived its secret's grace");
}
