//! The listener (data plane): accepts connections, with TLS when configured, serves HTTP/1.1
//! and HTTP/2 through the request pipeline, and drains in-flight requests on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::connection::{self, Activity, OpenExchange, Peer, Quiet, Tracked};
use super::pipeline::{self, Handled};
use super::state::Shared;
use super::tls::Tls;
use super::tunnel::Counted;
use super::wire::{Folded, Watched};
use crate::config::Server;

const HTTP2_STREAM_WINDOW: u32 = 65_535;
const HTTP2_CONNECTION_WINDOW: u32 = 1 << 20;

fn builder(settings: &Server) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No hyper header timer (it costs a timer per request): a connection waits for a head
    // under the connection's own bound, `connection::Quiet::head`.
    builder
        .http1()
        .header_read_timeout(None)
        .max_buf_size(settings.max_header_bytes.max(8192))
        .max_headers(settings.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.http2_max_concurrent_streams)
        // Flow control caps what one client may make the gateway hold for a stream it does
        // not read: 64 KiB a stream (the RFC 9113 default), 1 MiB for the whole connection.
        .initial_stream_window_size(HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
        // Twice the limit the pipeline holds a header list to (step 0), so that a list past
        // `max_header_bytes` gets the gateway's JSON 431 rather than h2's own bare one, which
        // only a list past twice the limit still gets.
        .max_header_list_size(u32::try_from(settings.max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(settings.idle_timeout))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// Serves `listener` until `shutdown` resolves, then waits up to `server.shutdown_grace` for
/// the connections to finish their work (see [`super::connection`]).
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<Tls>,
    shutdown: impl Future<Output = ()>,
) {
    let settings = shared.snapshot.load().config.server.clone();
    let (stop, stopping) = watch::channel(false);
    let connections = Arc::new(Connections {
        builder: builder(&settings),
        shared,
        tls,
        stopping,
        settings: settings.clone(),
    });
    let cap = u32::try_from(settings.max_connections).unwrap_or(u32::MAX);
    let slots = Arc::new(Semaphore::new(cap as usize));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // Past the connection cap, new connections wait in the kernel's backlog.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_error(error).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let connections = connections.clone();
        tokio::spawn(async move {
            // The slot goes with the socket: into a tunnel, when the connection becomes one.
            connections.connection(Counted::new(stream, slot), addr).await;
        });
    }
    drop(listener);
    let _ = stop.send(true);
    tracing::info!("stopped accepting; draining in-flight requests");
    // Every connection holds a slot until it ends, and an upgrade tunnel takes its
    // connection's slot over: all slots back means no request and no tunnel is left.
    if tokio::time::timeout(settings.shutdown_grace, slots.acquire_many(cap))
        .await
        .is_err()
    {
        tracing::warn!(
            grace_s = settings.shutdown_grace.as_secs_f64(),
            tunnels = connections.shared.tunnels.open(),
            "requests or tunnels still running after the shutdown grace; closing the tunnels"
        );
    }
    connections.shared.tunnels.close();
}

/// What every connection of the listener shares.
struct Connections {
    builder: auto::Builder<TokioExecutor>,
    shared: Arc<Shared>,
    tls: Option<Tls>,
    /// True once the listener has stopped accepting: connections finish their work and close.
    stopping: watch::Receiver<bool>,
    settings: Server,
}

impl Connections {
    async fn connection(&self, stream: Counted<TcpStream>, addr: SocketAddr) {
        // The head timer (`connection::Quiet`) starts once the connection is served, after
        // any handshake, and rustls has none: a connection that stays silent would hold its
        // slot of the cap for good.
        let first = first_byte(stream.get_ref(), self.settings.first_byte_timeout);
        if self.unless_stopping(first).await != Some(true) {
            tracing::debug!(%addr, "connection closed: no first byte in time");
            return;
        }
        let Some(tls) = &self.tls else {
            return self.serve(stream, Peer { addr, tls: false }).await;
        };
        let handshake =
            tokio::time::timeout(self.settings.tls_handshake_timeout, tls.acceptor().accept(stream));
        match self.unless_stopping(handshake).await {
            Some(Ok(Ok(stream))) => self.serve(stream, Peer { addr, tls: true }).await,
            Some(Ok(Err(error))) => tracing::debug!(%addr, %error, "TLS handshake failed"),
            Some(Err(_)) => tracing::debug!(%addr, "TLS handshake timed out"),
            None => tracing::debug!(%addr, "connection closed during its handshake: stopping"),
        }
    }

    /// `step` unless the listener stops first: a connection not served yet has no work to
    /// finish.
    async fn unless_stopping<F: Future>(&self, step: F) -> Option<F::Output> {
        let mut stopping = self.stopping.clone();
        tokio::select! {
            output = step => Some(output),
            _ = stopping.wait_for(|stop| *stop) => None,
        }
    }

    async fn serve<S>(&self, stream: S, peer: Peer)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Activity::new();
        let folded = Arc::new(Folded::default());
        let http2 = folded.clone();
        let requests = self.shared.metrics.requests.clone();
        let io = TokioIo::new(Watched::new(stream, folded.clone(), requests));
        let service = service(self.shared.clone(), peer, activity.clone(), folded);
        let conn = self.builder.serve_connection_with_upgrades(io, service);
        let quiet = Quiet::new(self.settings.header_read_timeout, self.settings.idle_timeout);
        let http2 = || http2.http2();
        match connection::drive(conn, activity, self.stopping.clone(), quiet, http2).await {
            Some(ended) => log_conn_error(ended),
            None => tracing::debug!(addr = %peer.addr, "connection dropped by the gateway"),
        }
    }
}

/// Whether the client sends a first byte within `timeout` (it stays in the socket for the TLS
/// acceptor or hyper to read). One `peek` per connection, none per request.
async fn first_byte(stream: &TcpStream, timeout: Duration) -> bool {
    let mut byte = [0; 1];
    matches!(
        tokio::time::timeout(timeout, stream.peek(&mut byte)).await,
        Ok(Ok(1..))
    )
}

/// The request pipeline as a hyper service; each exchange counts as open on its connection
/// until its response body is done. A request whose head hyper folded carries the
/// [`Fold`](super::wire::Fold), for the pipeline to refuse.
fn service(
    shared: Arc<Shared>,
    peer: Peer,
    activity: Activity,
    folded: Arc<Folded>,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<Tracked<super::Body>>,
    Error = Infallible,
    Future = Answering,
> + Clone {
    let requests = Arc::new(AtomicUsize::new(0));
    service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
        let exchange = activity.open();
        if let Some(fold) = folded.at(requests.fetch_add(1, Ordering::Relaxed)) {
            request.extensions_mut().insert(fold);
        }
        let answer = match pipeline::handle(&shared, peer, request) {
            Handled::Now(response) => Answer::Ready(Some(response)),
            Handled::Later(later) => Answer::Later(later),
        };
        Answering {
            answer,
            exchange: Some(exchange),
        }
    })
}

/// The service's answer to one request: a refusal's, ready as it is made, or the rest of an
/// admitted (or intercepted) request's way, boxed. Its exchange stays open until the response
/// body has been sent.
struct Answering {
    answer: Answer,
    exchange: Option<OpenExchange>,
}

enum Answer {
    Ready(Option<http::Response<super::Body>>),
    Later(pipeline::Later),
}

impl Future for Answering {
    type Output = Result<http::Response<Tracked<super::Body>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let response = match &mut this.answer {
            Answer::Ready(response) => response.take(),
            Answer::Later(later) => Some(std::task::ready!(later.as_mut().poll(cx))),
        };
        // Both are taken once, by the one poll that answers; hyper polls no further.
        match (response, this.exchange.take()) {
            (Some(response), Some(exchange)) => {
                Poll::Ready(Ok(response.map(|body| Tracked::new(body, exchange))))
            }
            _ => Poll::Pending,
        }
    }
}

fn log_conn_error(result: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(error) = result {
        tracing::debug!(%error, "connection ended with an error");
    }
}

/// Accept errors (out of file descriptors, mostly) are logged and waited out; the loop never
/// ends because of one.
async fn accept_error(error: io::Error) {
    tracing::error!(%error, "accept failed; retrying in 100ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}
