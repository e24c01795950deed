//! The upstream connection pool, from the outside: a purpose-built upstream counts the
//! connections it accepts and holds open, and keeps them alive, closes each after one response,
//! or closes one that sat idle. What the pool does shows in those counts and in the answers.

use crate::support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION};
use http::{Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Barrier};

use crate::support::{basic, eventually, ConfigEdit, Harness, STANDARD};

/// How long a test waits for the pool or the upstream to close a connection.
const DEADLINE: Duration = Duration::from_secs(3);

/// The chunks of `/v1/status/chunked`, each sent as a chunk of its own.
const CHUNKS: [&str; 4] = ["first,", "second,", "third,", "last"];

/// `/v1/status/large`: 1 MiB in 64 chunks, one every 20 ms, so that a client can walk away
/// from it half-read.
const LARGE_CHUNK: usize = 16 * 1024;
const LARGE_CHUNKS: usize = 64;
const LARGE_PACE: Duration = Duration::from_millis(20);

/// How long `/v1/status/slow` takes to answer.
const SLOW: Duration = Duration::from_millis(100);

/// How the test upstream treats its connections.
#[derive(Debug, Clone, Copy)]
enum Connections {
    KeepAlive,
    /// Every response says `Connection: close`, and the connection ends with it.
    CloseEach,
    /// A connection that waits this long for its next request is closed.
    CloseIdle(Duration),
}

/// What the upstream's connections share: how to treat them, and what they saw.
struct Shared {
    connections: Connections,
    /// Where `gather` requests wait for one another.
    gather: Barrier,
    counts: Counts,
}

/// What the upstream saw.
#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    open: AtomicUsize,
    most_open: AtomicUsize,
    /// Every request but `early`'s as `METHOD path body`, in the order they came, with the
    /// number of the connection it came on (0 for the first accepted).
    requests: Mutex<Vec<(usize, String)>>,
}

/// An upstream on a port of its own. By path under `/v1/status`: `echo` answers the request
/// body, `chunked` the [`CHUNKS`], `large` a slow 1 MiB, `gather` only once as many requests
/// wait there as it was started with, `early` before it has read the request body, `slow`
/// after [`SLOW`], `hang` never; anything else `ok`.
struct Upstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Upstream {
    async fn start(connections: Connections) -> Upstream {
        Self::serve(connections, 1).await
    }

    /// A keep-alive upstream whose `gather` answers once `n` requests are in at once.
    async fn gathering(n: usize) -> Upstream {
        Self::serve(Connections::KeepAlive, n).await
    }

    async fn serve(connections: Connections, gather: usize) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            connections,
            gather: Barrier::new(gather),
            counts: Counts::default(),
        });
        let accepting = shared.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(Self::connection(stream, accepting.clone()));
            }
        });
        Upstream { addr, shared }
    }

    async fn connection(stream: TcpStream, shared: Arc<Shared>) {
        let counts = &shared.counts;
        let number = counts.accepted.fetch_add(1, Ordering::SeqCst);
        let open = counts.open.fetch_add(1, Ordering::SeqCst) + 1;
        counts.most_open.fetch_max(open, Ordering::SeqCst);
        let service = service_fn(|request| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(answer(request, &shared, number).await) }
        });
        let mut builder = http1::Builder::new();
        if let Connections::CloseIdle(idle) = shared.connections {
            builder.timer(TokioTimer::new()).header_read_timeout(idle);
        }
        let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        // The stream is dropped, and so closed, with the connection's future.
        counts.open.fetch_sub(1, Ordering::SeqCst);
    }

    fn accepted(&self) -> usize {
        self.shared.counts.accepted.load(Ordering::SeqCst)
    }

    fn open(&self) -> usize {
        self.shared.counts.open.load(Ordering::SeqCst)
    }

    fn most_open(&self) -> usize {
        self.shared.counts.most_open.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<String> {
        let requests = self.shared.counts.requests.lock().unwrap();
        requests.iter().map(|(_, request)| request.clone()).collect()
    }

    /// The connection of each request, in the order they came.
    fn connections_used(&self) -> Vec<usize> {
        let requests = self.shared.counts.requests.lock().unwrap();
        requests.iter().map(|(connection, _)| *connection).collect()
    }

    /// Whether the upstream's open connections come down to `n` within the deadline.
    async fn open_drops_to(&self, n: usize) -> bool {
        eventually(DEADLINE, || async { self.open() == n }).await
    }
}

type UpstreamBody = Either<Full<Bytes>, Fed>;

/// The answer to one request that came on connection number `connection`.
async fn answer(request: Request<Incoming>, shared: &Shared, connection: usize) -> Response<UpstreamBody> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    if path == "/v1/status/early" {
        // The body is read on after the answer, so the connection stays open for the rest.
        tokio::spawn(body.collect());
        return Response::new(Either::Left(Full::new(Bytes::from_static(b"early"))));
    }
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let request = format!("{} {path} {}", parts.method, String::from_utf8_lossy(&body));
    shared.counts.requests.lock().unwrap().push((connection, request));
    let body = match path {
        "/v1/status/echo" => Either::Left(Full::new(body)),
        "/v1/status/chunked" => Either::Right(Fed::spawn(
            CHUNKS.iter().map(|chunk| Bytes::from_static(chunk.as_bytes())),
            None,
            Duration::ZERO,
        )),
        "/v1/status/large" => Either::Right(Fed::spawn(
            large_body()
                .chunks(LARGE_CHUNK)
                .map(Bytes::copy_from_slice)
                .collect::<Vec<_>>(),
            Some((LARGE_CHUNK * LARGE_CHUNKS) as u64),
            LARGE_PACE,
        )),
        "/v1/status/gather" => {
            shared.gather.wait().await;
            Either::Left(Full::new(Bytes::from_static(b"ok")))
        }
        "/v1/status/hang" => std::future::pending().await,
        "/v1/status/slow" => {
            tokio::time::sleep(SLOW).await;
            Either::Left(Full::new(Bytes::from_static(b"ok")))
        }
        _ => Either::Left(Full::new(Bytes::from_static(b"ok"))),
    };
    let mut response = Response::new(body);
    if let Connections::CloseEach = shared.connections {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn large_body() -> Vec<u8> {
    (0..LARGE_CHUNK * LARGE_CHUNKS).map(|i| (i % 251) as u8).collect()
}

/// A response body fed chunk by chunk from a task of its own; chunked on the wire unless it
/// declares its length.
struct Fed {
    chunks: mpsc::Receiver<Bytes>,
    length: Option<u64>,
}

impl Fed {
    /// The task waits `pace` before each chunk after the first, and stops once the body is
    /// dropped.
    fn spawn(
        chunks: impl IntoIterator<Item = Bytes> + Send + 'static,
        length: Option<u64>,
        pace: Duration,
    ) -> Fed {
        let (tx, rx) = mpsc::channel(1);
        let chunks: Vec<Bytes> = chunks.into_iter().collect();
        tokio::spawn(async move {
            for (i, chunk) in chunks.into_iter().enumerate() {
                if i > 0 && !pace.is_zero() {
                    tokio::time::sleep(pace).await;
                }
                if tx.send(chunk).await.is_err() {
                    return;
                }
            }
        });
        Fed { chunks: rx, length }
    }
}

impl http_body::Body for Fed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.chunks
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }

    fn size_hint(&self) -> SizeHint {
        self.length.map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// A gateway in front of `upstream`, its `[[upstream]]` table holding `settings` (e.g. the
/// pool's) in place of the standard `timeout` line.
async fn gateway(upstream: &Upstream, settings: &str) -> Harness {
    let template = STANDARD
        .edit("http://{upstream}", &format!("http://{}", upstream.addr))
        .edit("timeout = \"1s\"\n", &format!("{settings}\n"));
    Harness::with_config(&template, "").await
}

const DEFAULTS: &str = "timeout = \"2s\"";

/// `n` GETs of `path` at once, each on a connection of its own to the gateway; their statuses.
async fn all_at_once(h: &Harness, key: &str, path: &str, n: usize) -> Vec<StatusCode> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..n {
        let request = Request::get(h.url(path))
            .header("authorization", basic(key))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let client = client.clone();
        calls.spawn(async move { support::read(client.request(request).await.unwrap()).await.status });
    }
    calls.join_all().await
}

#[tokio::test]
async fn sequential_requests_reuse_one_upstream_connection() {
    let upstream = Upstream::start(Connections::KeepAlive).await;
    let h = gateway(&upstream, DEFAULTS).await;
    let (_, key) = h.key(&["*"]).await;
    for _ in 0..20 {
        let answer = h.get("/v1/status", &key).await;
        assert_eq!((answer.status.as_u16(), answer.text()), (200, "ok".to_owned()));
    }
    assert_eq!(upstream.requests().len(), 20);
    assert_eq!(upstream.accepted(), 1);
}

#[tokio::test]
async fn concurrent_requests_open_no_more_connections_than_are_in_flight() {
    const AT_ONCE: usize = 32;
    let upstream = Upstream::gathering(AT_ONCE).await;
    let h = gateway(&upstream, DEFAULTS).await;
    let (_, key) = h.key(&["*"]).await;
    for round in 1..=3 {
        let statuses = all_at_once(&h, &key, "/v1/status/gather", AT_ONCE).await;
        assert!(statuses.iter().all(|s| *s == 200), "round {round}: {statuses:?}");
        // The upstream answers only once all are in, so each round needs every connection;
        // later rounds find them in the pool.
        assert_eq!(upstream.accepted(), AT_ONCE, "round {round}");
    }
    assert_eq!(upstream.most_open(), AT_ONCE);
    assert_eq!(upstream.requests().len(), 3 * AT_ONCE);
}

#[tokio::test]
async fn after_a_burst_requests_keep_to_the_most_recently_used_connection() {
    let upstream = Upstream::gathering(4).await;
    let h = gateway(&upstream, DEFAULTS).await;
    let (_, key) = h.key(&["*"]).await;
    let statuses = all_at_once(&h, &key, "/v1/status/gather", 4).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    for _ in 0..8 {
        assert_eq!(h.get("/v1/status", &key).await.status, 200);
    }
    // Last in, first out: the other three stay idle, to be closed once they time out.
    let used = upstream.connections_used().split_off(4);
    assert!(used.iter().all(|c| *c == used[0]), "{used:?}");
}

#[tokio::test]
async fn the_pool_keeps_no_more_idle_connections_than_pool_max_idle() {
    let upstream = Upstream::gathering(4).await;
    let h = gateway(&upstream, "timeout = \"2s\"\npool_max_idle = 2").await;
    let (_, key) = h.key(&["*"]).await;
    let statuses = all_at_once(&h, &key, "/v1/status/gather", 4).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(upstream.accepted(), 4);
    assert!(upstream.open_drops_to(2).await, "open: {}", upstream.open());
    let statuses = all_at_once(&h, &key, "/v1/status/gather", 4).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(upstream.accepted(), 6, "two from the pool, two new");
}

#[tokio::test]
async fn an_upstream_that_closes_every_connection_still_answers_every_request() {
    let upstream = Upstream::start(Connections::CloseEach).await;
    let h = gateway(&upstream, DEFAULTS).await;
    let (_, key) = h.key(&["*"]).await;
    let mut expected = Vec::new();
    for i in 0..10 {
        // Non-idempotent requests too: none may land on a connection the upstream closed.
        let (method, body) = if i % 2 == 0 {
            ("GET", String::new())
        } else {
            ("POST", format!("note {i}"))
        };
        let request = Request::builder()
            .method(method)
            .uri(h.url("/v1/status/echo"))
            .header("authorization", basic(&key))
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        let answer = h.send(request).await;
        assert_eq!(
            (answer.status.as_u16(), answer.text()),
            (200, body.clone()),
            "request {i}"
        );
        expected.push(format!("{method} /v1/status/echo {body}"));
    }
    assert_eq!(
        upstream.requests(),
        expected,
        "each request reached the upstream once"
    );
    assert_eq!(upstream.accepted(), 10);
    assert!(upstream.open_drops_to(0).await);
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_not_used() {
    let upstream = Upstream::start(Connections::CloseIdle(Duration::from_millis(200))).await;
    let h = gateway(&upstream, DEFAULTS).await;
    let (_, key) = h.key(&["*"]).await;
    assert_eq!(h.get("/v1/status", &key).await.status, 200);
    // The upstream's idle close is what is under test here.
    assert!(
        upstream.open_drops_to(0).await,
        "the upstream closes its idle connection"
    );
    let answer = h.get("/v1/status", &key).await;
    assert_eq!((answer.status.as_u16(), answer.text()), (200, "ok".to_owned()));
    assert_eq!(upstream.accepted(), 2);
}

#[tokio::test]
async fn the_gateway_closes_connections_idle_past_pool_idle_timeout() {
    // The upstream would keep them for ever.
    let upstream = Upstream::start(Connections::KeepAlive).await;
    let h = gateway(&upstream, "timeout = \"2s\"\npool_idle_timeout = \"300ms\"").await;
    let (_, key) = h.key(&["*"]).await;
    assert_eq!(h.get("/v1/status", &key).await.status, 200);
    assert_eq!(upstream.open(), 1);
    assert!(
        upstream.open_drops_to(0).await,
        "the gateway closes its idle connection"
    );
    assert_eq!(h.get("/v1/status", &key).await.status, 200);
    assert_eq!(upstream.accepted(), 2);
}

#[tokio::test]
async fn a_chunked_response_is_relayed_whole_and_its_connection_reused() {
    let upstream = Upstream::start(Connections::KeepAlive).await;
    let h = gateway(&upstream, DEFAULTS).await;
    let (_, key) = h.key(&["*"]).await;
    let answer = h.get("/v1/status/chunked", &key).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), CHUNKS.concat());
    assert!(
        answer.headers.get("content-length").is_none(),
        "{:?}",
        answer.headers
    );
    assert_eq!(h.get("/v1/status", &key).await.text(), "ok");
    assert_eq!(upstream.accepted(), 1);
}

#[tokio::test]
async fn answers_without_a_body_give_their_connection_back_at_once() {
    let upstream = Upstream::start(Connections::KeepAlive).await;
    let h = gateway(&upstream, DEFAULTS).await;
    let (_, key) = h.key(&["*"]).await;
    let empty = h.get("/v1/status/echo", &key).await;
    assert_eq!((empty.status.as_u16(), empty.text()), (200, String::new()));
    let head = h.call("HEAD", "/v1/status", Some(&key), &[]).await;
    assert_eq!((head.status.as_u16(), head.text()), (200, String::new()));
    assert_eq!(h.get("/v1/status", &key).await.text(), "ok");
    assert_eq!(upstream.accepted(), 1);
}

#[tokio::test]
async fn a_long_response_read_to_its_end_gives_its_connection_back() {
    let upstream = Upstream::start(Connections::KeepAlive).await;
    let h = gateway(&upstream, DEFAULTS).await;
    let (_, key) = h.key(&["*"]).await;
    let answer = h.get("/v1/status/large", &key).await;
    assert_eq!(answer.status, 200);
    assert!(answer.body == large_body(), "the 1 MiB body arrives unchanged");
    assert_eq!(h.get("/v1/status", &key).await.text(), "ok");
    assert_eq!(upstream.accepted(), 1);
}

#[tokio::test]
async fn a_response_abandoned_half_read_takes_its_connection_and_spoils_nothing() {
    let upstream = Upstream::start(Connections::KeepAlive).await;
    let h = gateway(&upstream, DEFAULTS).await;
    let (_, key) = h.key(&["*"]).await;
    let mut client = TcpStream::connect(h.gateway.proxy_addr).await.unwrap();
    let request = format!(
        "GET /v1/status/large HTTP/1.1\r\nhost: x\r\nauthorization: {}\r\n\r\n",
        basic(&key)
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let mut read = vec![0; 4 * LARGE_CHUNK];
    client.read_exact(&mut read).await.unwrap();
    assert!(
        read.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&read[..100])
    );
    drop(client);
    // The rest of that body is still on its way: the connection cannot serve anyone else.
    assert!(
        upstream.open_drops_to(0).await,
        "the gateway closes the abandoned connection"
    );
    let answer = h.get("/v1/status/echo", &key).await;
    assert_eq!((answer.status.as_u16(), answer.text()), (200, String::new()));
    assert_eq!(upstream.accepted(), 2);
}

#[tokio::test]
async fn posts_over_a_reused_connection_reach_the_upstream_once_each() {
    let upstream = Upstream::start(Connections::KeepAlive).await;
    let h = gateway(&upstream, DEFAULTS).await;
    let (_, key) = h.key(&["*"]).await;
    let mut expected = Vec::new();
    for i in 0..10 {
        let body = format!("note {i}");
        let request = Request::post(h.url("/v1/status/echo"))
            .header("authorization", basic(&key))
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        let answer = h.send(request).await;
        assert_eq!((answer.status.as_u16(), answer.text()), (200, body.clone()));
        expected.push(format!("POST /v1/status/echo {body}"));
    }
    assert_eq!(upstream.requests(), expected);
    assert_eq!(upstream.accepted(), 1);
}

#[tokio::test]
async fn a_timed_out_request_is_504_and_its_connection_closed_not_reused() {
    let upstream = Upstream::start(Connections::KeepAlive).await;
    let h = gateway(&upstream, "timeout = \"300ms\"").await;
    let (_, key) = h.key(&["*"]).await;
    assert_eq!(h.get("/v1/status/hang", &key).await.status, 504);
    // The hung exchange still holds its connection; the next request needs another.
    let answer = h.get("/v1/status", &key).await;
    assert_eq!((answer.status.as_u16(), answer.text()), (200, "ok".to_owned()));
    assert_eq!(upstream.accepted(), 2);
    assert!(
        upstream.open_drops_to(1).await,
        "the gateway closes the hung connection"
    );
}

#[tokio::test]
async fn a_connection_still_sending_an_earlier_request_body_does_not_hold_up_the_next_request() {
    let upstream = Upstream::start(Connections::KeepAlive).await;
    let h = gateway(&upstream, "timeout = \"1s\"\nconnect_timeout = \"3s\"").await;
    let (_, key) = h.key(&["*"]).await;
    // A client that sends a tenth of its body and then nothing more; the upstream answers at
    // once, and the gateway's connection waits for the rest of the body to send it on.
    let mut uploader = TcpStream::connect(h.gateway.proxy_addr).await.unwrap();
    let auth = basic(&key);
    let head = format!(
        "POST /v1/status/early HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ncontent-length: 100\r\n\r\n"
    );
    uploader.write_all(head.as_bytes()).await.unwrap();
    uploader.write_all(&[b'x'; 10]).await.unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"early") {
        let mut buf = [0; 1024];
        let n = uploader.read(&mut buf).await.unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = h.get("/v1/status", &key).await;
    assert_eq!((answer.status.as_u16(), answer.text()), (200, "ok".to_owned()));
    // Connected to the end, so that its body stays unfinished.
    drop(uploader);
}

#[tokio::test]
async fn at_pool_max_connections_requests_wait_for_a_connection_instead_of_opening_more() {
    let upstream = Upstream::start(Connections::KeepAlive).await;
    let h = gateway(
        &upstream,
        "timeout = \"5s\"\nconnect_timeout = \"5s\"\nqueue_timeout = \"4s\"\npool_max_connections = 2",
    )
    .await;
    let (_, key) = h.key(&["*"]).await;
    let statuses = all_at_once(&h, &key, "/v1/status/slow", 8).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(upstream.requests().len(), 8);
    assert_eq!(upstream.most_open(), 2);
    assert_eq!(upstream.accepted(), 2);
}

#[tokio::test]
async fn past_the_cap_a_request_waits_queue_timeout_then_gets_a_fast_503() {
    let upstream = Upstream::start(Connections::KeepAlive).await;
    let settings = "timeout = \"5s\"\npool_max_connections = 1";
    let h = Arc::new(gateway(&upstream, settings).await);
    let (_, key) = h.key(&["*"]).await;
    // A stalled upstream: the one connection hangs.
    let hung = {
        let (h, key) = (h.clone(), key.clone());
        tokio::spawn(async move { h.get("/v1/status/hang", &key).await.status })
    };
    assert!(eventually(DEADLINE, || async { upstream.open() == 1 }).await);
    let started = std::time::Instant::now();
    let answer = h.get("/v1/status", &key).await;
    let waited = started.elapsed();
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert_eq!(answer.json()["error"], "service unavailable");
    assert_eq!(answer.headers["retry-after"], "1");
    assert_eq!(answer.headers["cache-control"], "no-store");
    // The default queue_timeout is 100 ms; the bound is loose for a busy machine, and far
    // below the 5 s the hung exchange will take.
    assert!(waited < Duration::from_millis(2500), "waited {waited:?}");
    let metrics = h.metrics().await;
    let series = r#"keygate_upstream_errors_total{kind="saturated",upstream="api"}"#;
    assert_eq!(support::sample(&metrics, series), Some(1.0), "{metrics}");
    assert_eq!(upstream.accepted(), 1, "no connection past the cap");
    assert_eq!(
        upstream.requests().len(),
        1,
        "the refused request never reached the upstream"
    );
    // The hung exchange times out and its connection closes: its turn serves the next request.
    assert_eq!(hung.await.unwrap(), 504);
    let answer = h.get("/v1/status", &key).await;
    assert_eq!((answer.status.as_u16(), answer.text()), (200, "ok".to_owned()));
}

#[tokio::test]
async fn requests_queued_past_the_cap_are_served_in_the_order_they_came() {
    let upstream = Upstream::start(Connections::KeepAlive).await;
    let settings =
        "timeout = \"10s\"\nconnect_timeout = \"5s\"\nqueue_timeout = \"8s\"\npool_max_connections = 1";
    let h = Arc::new(gateway(&upstream, settings).await);
    let (_, key) = h.key(&["*"]).await;
    let queued = || h.gateway.shared.snapshot.load().upstreams[0].client.queued();
    // The one connection is held by a response its client does not read.
    let mut holder = TcpStream::connect(h.gateway.proxy_addr).await.unwrap();
    let request = format!(
        "GET /v1/status/large HTTP/1.1\r\nhost: x\r\nauthorization: {}\r\n\r\n",
        basic(&key)
    );
    holder.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0; 12];
    holder.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // Each waiter joins the queue before the next is sent.
    let mut waiters = Vec::new();
    for n in 1..=4 {
        let (h2, key) = (h.clone(), key.clone());
        waiters.push(tokio::spawn(async move {
            h2.get(&format!("/v1/status/{n}"), &key).await.status
        }));
        assert!(
            eventually(DEADLINE, || async { queued() == n }).await,
            "waiter {n} queued"
        );
    }
    drop(holder);
    for waiter in waiters {
        assert_eq!(waiter.await.unwrap(), 200);
    }
    let order: Vec<String> = upstream.requests().into_iter().skip(1).collect();
    assert_eq!(
        order,
        [
            "GET /v1/status/1 ",
            "GET /v1/status/2 ",
            "GET /v1/status/3 ",
            "GET /v1/status/4 "
        ]
    );
    assert_eq!(queued(), 0);
}

#[tokio::test]
async fn a_config_reload_keeps_the_connections_of_an_upstream_whose_pool_settings_are_unchanged() {
    let upstream = Upstream::start(Connections::KeepAlive).await;
    let h = gateway(&upstream, DEFAULTS).await;
    let (_, key) = h.key(&["*"]).await;
    let reload = |text: &str| {
        let config = keygate::config::parse(text, h.dir.path()).unwrap_or_else(|e| panic!("{e}"));
        h.gateway.reload(config).unwrap();
    };
    assert_eq!(h.get("/v1/status", &key).await.status, 200);
    // Reloaded with the upstream as it was (as when only a route changed): the same pool.
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    reload(&text);
    assert_eq!(h.get("/v1/status", &key).await.status, 200);
    assert_eq!(upstream.accepted(), 1);
    // The response timeout is the client's, not the pool's.
    reload(&text.edit(DEFAULTS, "timeout = \"3s\""));
    assert_eq!(h.get("/v1/status", &key).await.status, 200);
    assert_eq!(upstream.accepted(), 1);
    // New pool settings, a new pool: the old one's idle connection closes with it.
    reload(&text.edit(DEFAULTS, "timeout = \"3s\"\npool_max_idle = 7"));
    assert_eq!(h.get("/v1/status", &key).await.status, 200);
    assert_eq!(upstream.accepted(), 2);
    assert!(
        upstream.open_drops_to(1).await,
        "the replaced pool's connection closes"
    );
}

/// Writes `head` and then `body` a byte at a time, `pace` apart, on a new connection to the
/// gateway, and reads the answer to its end.
async fn paced_upload(h: &Harness, head: &str, body: &[u8], pace: Duration) -> String {
    let mut client = TcpStream::connect(h.gateway.proxy_addr).await.unwrap();
    client.write_all(head.as_bytes()).await.unwrap();
    for byte in body {
        tokio::time::sleep(pace).await;
        client.write_all(&[*byte]).await.unwrap();
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, client.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn an_upload_longer_than_timeout_succeeds_the_timeout_runs_from_its_end() {
    let upstream = Upstream::start(Connections::KeepAlive).await;
    let h = gateway(&upstream, "timeout = \"400ms\"").await;
    let (_, key) = h.key(&["*"]).await;
    let body = b"slowbody";
    let head = format!(
        "POST /v1/status/echo HTTP/1.1\r\nhost: x\r\nauthorization: {}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        basic(&key),
        body.len()
    );
    // Eight bytes 150 ms apart: 1.2 s, three times the timeout, never idle for as long.
    let answer = paced_upload(&h, &head, body, Duration::from_millis(150)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("slowbody"), "{answer}");
    assert_eq!(upstream.requests(), ["POST /v1/status/echo slowbody"]);
}

#[tokio::test]
async fn a_body_that_stalls_past_body_idle_timeout_is_408_and_its_upstream_connection_closes() {
    let upstream = Upstream::start(Connections::KeepAlive).await;
    let template = STANDARD
        .edit("http://{upstream}", &format!("http://{}", upstream.addr))
        .set("server", "body_idle_timeout = \"300ms\"")
        .edit("timeout = \"1s\"\n", "timeout = \"5s\"\n");
    let h = Harness::with_config(&template, "").await;
    let (_, key) = h.key(&["*"]).await;
    let mut client = TcpStream::connect(h.gateway.proxy_addr).await.unwrap();
    let head = format!(
        "POST /v1/status/echo HTTP/1.1\r\nhost: x\r\nauthorization: {}\r\ncontent-length: 100\r\n\r\n",
        basic(&key)
    );
    client.write_all(head.as_bytes()).await.unwrap();
    client.write_all(&[b'x'; 10]).await.unwrap();
    assert!(eventually(DEADLINE, || async { upstream.open() == 1 }).await);
    // ...and nothing more: the gateway answers and closes.
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, client.read_to_end(&mut answer))
        .await
        .expect("the gateway closes the connection")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 408"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(answer.ends_with(r#"{"error":"request timeout"}"#), "{answer}");
    assert!(
        upstream.open_drops_to(0).await,
        "the upstream connection holding half a request is closed"
    );
    let answer = h.get("/v1/status", &key).await;
    assert_eq!((answer.status.as_u16(), answer.text()), (200, "ok".to_owned()));
}
