//! One client connection's life after the handshake (data plane): where it comes from
//! ([`Peer`]), served until the client or hyper ends it, closed when it has had no exchange
//! open for `idle_timeout`, and at shutdown closed as soon as its work is done.
//!
//! hyper alone cannot end an HTTP/2 connection that way. Its graceful shutdown sends GOAWAY
//! with a PING and waits for the client's answer before the final GOAWAY and the close (h2
//! waits a round trip so that a request the client sent meanwhile is not lost); a client that
//! does not read an idle connection (curl's pool reads only while a transfer runs) never
//! answers, so the connection stayed open, and the drain lasted the whole `shutdown_grace`.
//! hyper's HTTP/2 keep-alive PING does not help either: a client that answers it keeps an idle
//! connection open for good. So each connection counts its open exchanges (a request until its
//! response body has been sent or dropped), and:
//!
//! - with no exchange open for `idle_timeout`, it starts hyper's graceful shutdown;
//! - once that shutdown has started (idle, or the gateway draining), the connection is dropped
//!   when it has had no exchange open for [`AFTER_GOAWAY`], answered PING or not.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::HttpService;
use hyper_util::server::conn::auto;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a connection told to go away may stay with nothing open before it is dropped,
/// when its client has not let hyper close it by then. Long enough for a request the client
/// sent before it read the GOAWAY to arrive, and for the last stream window of a response (up
/// to 64 KiB, which h2 may still hold after the body has ended) to reach a slow reader; short
/// beside `shutdown_grace`. Envoy's `drain_timeout` (between its first GOAWAY and the last)
/// defaults to the same.
pub const AFTER_GOAWAY: Duration = Duration::from_secs(5);

/// Where a connection comes from.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: SocketAddr,
    pub tls: bool,
}

/// A connection's open exchanges and when the last one ended, shared by its requests. Kept
/// with two atomics and read by a timer, so a request wakes nothing.
#[derive(Clone)]
pub struct Activity(Arc<Counters>);

struct Counters {
    open: AtomicUsize,
    /// When the last exchange ended, in milliseconds since `since`.
    last_end_ms: AtomicU64,
    since: Instant,
}

impl Counters {
    fn last_end(&self) -> Instant {
        self.since + Duration::from_millis(self.last_end_ms.load(Ordering::Acquire))
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    pub fn new() -> Activity {
        Activity(Arc::new(Counters {
            open: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(0),
            since: Instant::now(),
        }))
    }

    /// Counts an exchange open until the returned guard is dropped.
    pub fn open(&self) -> OpenExchange {
        self.0.open.fetch_add(1, Ordering::AcqRel);
        OpenExchange(self.0.clone())
    }

    /// Resolves once no exchange has been open for `period`.
    pub async fn quiet_for(&self, period: Duration) {
        loop {
            let now = Instant::now();
            let next = if self.0.open.load(Ordering::Acquire) == 0 {
                let quiet_from = self.0.last_end();
                if now >= quiet_from + period {
                    return;
                }
                quiet_from + period
            } else {
                now + period
            };
            tokio::time::sleep_until(next).await;
        }
    }
}

/// An open exchange; dropped when its response body is done.
pub struct OpenExchange(Arc<Counters>);

impl Drop for OpenExchange {
    fn drop(&mut self) {
        let counters = &self.0;
        let ms = counters.since.elapsed().as_millis();
        counters
            .last_end_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Release);
        counters.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its exchange open until it has been sent (or dropped).
pub struct Tracked<B> {
    body: B,
    _exchange: OpenExchange,
}

impl<B> Tracked<B> {
    pub fn new(body: B, exchange: OpenExchange) -> Self {
        Tracked {
            body,
            _exchange: exchange,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A served connection that can be told to shut down gracefully (hyper-util's auto
/// connection, HTTP/1 or HTTP/2).
pub trait Graceful: Future {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

/// Both kinds of hyper-util's auto connection (with and without upgrades), with the bounds
/// under which hyper-util offers `graceful_shutdown`.
macro_rules! graceful {
    ($connection:ident) => {
        impl<I, S, E, B> Graceful for auto::$connection<'_, I, S, E>
        where
            Self: Future,
            S: HttpService<Incoming, ResBody = B>,
            S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
            I: hyper::rt::Read + hyper::rt::Write + Unpin,
            B: Body + 'static,
            B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
            E: auto::HttpServerConnExec<S::Future, B>,
        {
            fn graceful_shutdown(self: Pin<&mut Self>) {
                auto::$connection::graceful_shutdown(self);
            }
        }
    };
}

graceful!(Connection);
graceful!(UpgradeableConnection);

/// Serves `conn` until it ends, it idles past `idle_timeout`, or `stop` turns true; in the
/// last two cases it is shut down gracefully, then dropped once nothing has been open on it
/// for [`AFTER_GOAWAY`]. `None` when the gateway dropped it.
pub async fn drive<C: Graceful>(
    conn: C,
    activity: Activity,
    mut stop: watch::Receiver<bool>,
    idle_timeout: Duration,
) -> Option<C::Output> {
    let mut conn = std::pin::pin!(conn);
    let told = tokio::select! {
        ended = conn.as_mut() => return Some(ended),
        _ = stop.wait_for(|stop| *stop) => "the gateway is stopping",
        () = activity.quiet_for(idle_timeout) => "idle",
    };
    tracing::debug!(why = told, "closing the connection gracefully");
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        ended = conn.as_mut() => Some(ended),
        () = activity.quiet_for(AFTER_GOAWAY) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn quiet_means_nothing_open_for_the_whole_period() {
        let activity = Activity::new();
        let started = Instant::now();
        let period = Duration::from_secs(10);
        let exchange = activity.open();
        let quiet = tokio::spawn({
            let activity = activity.clone();
            async move {
                activity.quiet_for(period).await;
                Instant::now()
            }
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(exchange);
        tokio::time::sleep(Duration::from_secs(5)).await;
        // Opened and closed again before the period ended: the period starts over.
        drop(activity.open());
        let quiet_at = quiet.await.unwrap();
        assert_eq!(quiet_at - started, Duration::from_secs(45));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_never_had_an_exchange_is_quiet_from_its_start() {
        let activity = Activity::new();
        let started = Instant::now();
        activity.quiet_for(Duration::from_secs(3)).await;
        assert_eq!(Instant::now() - started, Duration::from_secs(3));
    }
}
