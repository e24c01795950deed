//! One client connection's life after the handshake (data plane): served until the client or
//! hyper ends it, closed when it has had no exchange open for `idle_timeout`, and at shutdown
//! closed as soon as its work is done.
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
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::HttpService;
use hyper_util::server::conn::auto;
use tokio::sync::watch;

/// How long a connection told to go away may stay with nothing open before it is dropped,
/// when its client has not let hyper close it by then. Long enough for a request the client
/// sent before it read the GOAWAY to arrive, and for the last stream window of a response (up
/// to 64 KiB, which h2 may still hold after the body has ended) to reach a slow reader; short
/// beside `shutdown_grace`. Envoy's `drain_timeout` (between its first GOAWAY and the last)
/// defaults to the same.
pub const AFTER_GOAWAY: Duration = Duration::from_secs(5);

/// The count of a connection's open exchanges, shared by its requests.
#[derive(Clone)]
pub struct Activity(Arc<watch::Sender<usize>>);

impl Activity {
    /// The counter, and the receiving end that [`drive`] watches.
    pub fn new() -> (Activity, watch::Receiver<usize>) {
        let (sender, receiver) = watch::channel(0);
        (Activity(Arc::new(sender)), receiver)
    }

    /// Counts an exchange open until the returned guard is dropped.
    pub fn open(&self) -> Exchange {
        self.0.send_modify(|open| *open += 1);
        Exchange(self.0.clone())
    }
}

/// An open exchange; dropped when its response body is done.
pub struct Exchange(Arc<watch::Sender<usize>>);

impl Drop for Exchange {
    fn drop(&mut self) {
        self.0.send_modify(|open| *open = open.saturating_sub(1));
    }
}

/// A response body that keeps its exchange open until it has been sent (or dropped).
pub struct Tracked<B> {
    body: B,
    _exchange: Exchange,
}

impl<B> Tracked<B> {
    pub fn new(body: B, exchange: Exchange) -> Self {
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
/// last two cases it is shut down gracefully, then dropped once nothing is open. `None` when
/// the gateway dropped it.
pub async fn drive<C: Graceful>(
    conn: C,
    mut open: watch::Receiver<usize>,
    mut stop: watch::Receiver<bool>,
    idle_timeout: Duration,
) -> Option<C::Output> {
    let mut conn = std::pin::pin!(conn);
    let told = tokio::select! {
        ended = conn.as_mut() => return Some(ended),
        _ = stop.wait_for(|stop| *stop) => "the gateway is stopping",
        () = quiet_for(&mut open, idle_timeout) => "idle",
    };
    tracing::debug!(why = told, "closing the connection gracefully");
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        ended = conn.as_mut() => Some(ended),
        () = quiet_for(&mut open, AFTER_GOAWAY) => None,
    }
}

/// Resolves once no exchange has been open for `period`.
async fn quiet_for(open: &mut watch::Receiver<usize>, period: Duration) {
    loop {
        if open.wait_for(|open| *open == 0).await.is_err() {
            // No request can open an exchange any more.
            return tokio::time::sleep(period).await;
        }
        tokio::select! {
            () = tokio::time::sleep(period) => return,
            changed = open.changed() => if changed.is_err() {
                return tokio::time::sleep(period).await;
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn quiet_means_nothing_open_for_the_whole_period() {
        let (activity, mut open) = Activity::new();
        let exchange = activity.open();
        let period = Duration::from_secs(10);
        let started = tokio::time::Instant::now();
        let quiet = tokio::spawn(async move {
            quiet_for(&mut open, period).await;
            tokio::time::Instant::now()
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(exchange);
        tokio::time::sleep(Duration::from_secs(5)).await;
        // Opened and closed again before the period ended: the period starts over.
        drop(activity.open());
        let quiet_at = quiet.await.unwrap();
        assert_eq!(quiet_at - started, Duration::from_secs(45));
    }
}
