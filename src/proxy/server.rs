//! The listener (data plane): accepts connections, with TLS when configured, serves HTTP/1.1
//! and HTTP/2 through the request pipeline, and drains in-flight requests on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::pipeline::{self, Peer};
use super::state::Shared;
use super::tls::Tls;
use crate::config::Server;

const HTTP2_STREAM_WINDOW: u32 = 65_535;
const HTTP2_CONNECTION_WINDOW: u32 = 1 << 20;

fn builder(settings: &Server) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's HTTP/1 header timer also runs while a keep-alive connection waits for its next
    // request, so the idle bound and the head bound are one timer: the smaller one wins.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout.min(settings.idle_timeout))
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
        .max_header_list_size(settings.max_header_bytes as u32)
        .keep_alive_interval(Some(settings.idle_timeout))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// Serves `listener` until `shutdown` resolves, then waits up to `server.shutdown_grace` for
/// in-flight requests.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<Tls>,
    shutdown: impl Future<Output = ()>,
) {
    let settings = shared.snapshot.load().config.server.clone();
    let builder = Arc::new(builder(&settings));
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(settings.max_connections));
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
        let shared = shared.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let timeouts = (settings.first_byte_timeout, settings.tls_handshake_timeout);
        tokio::spawn(async move {
            let _slot = slot;
            // hyper's head timer starts at the first byte, and rustls has none: a connection
            // that stays silent would hold its slot of the cap for good.
            if !first_byte(&stream, timeouts.0).await {
                tracing::debug!(%addr, "connection closed: no first byte in time");
                return;
            }
            match tls {
                Some(tls) => match tokio::time::timeout(timeouts.1, tls.acceptor().accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let peer = Peer { addr, tls: true };
                        let conn = builder.serve_connection(TokioIo::new(stream), service(shared, peer));
                        log_conn_error(watcher.watch(conn.into_owned()).await);
                    }
                    Ok(Err(error)) => tracing::debug!(%addr, %error, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                },
                None => {
                    let peer = Peer { addr, tls: false };
                    let conn = builder.serve_connection(TokioIo::new(stream), service(shared, peer));
                    log_conn_error(watcher.watch(conn.into_owned()).await);
                }
            }
        });
    }
    drop(listener);
    tracing::info!("stopped accepting; draining in-flight requests");
    if tokio::time::timeout(settings.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_s = settings.shutdown_grace.as_secs_f64(),
            "requests still running after the shutdown grace"
        );
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

fn service(
    shared: Arc<Shared>,
    peer: Peer,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<super::Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<http::Response<super::Body>, Infallible>> + Send,
> + Clone {
    let shared = shared.clone();
    service_fn(move |request| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(pipeline::handle(&shared, peer, request).await) }
    })
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
