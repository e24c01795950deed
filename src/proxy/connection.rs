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
//!
//! The same count bounds an HTTP/1 connection's wait for a request head: with no exchange open
//! (before its first request, or since its last response) for `header_read_timeout` (or
//! `idle_timeout`, when smaller), the head has not come whole in time, and the connection is
//! dropped, as hyper's own header timer did. That timer was armed and torn down once a
//! request (a boxed sleep, a timer-wheel entry, an extra read poll: about 1,000 instructions);
//! this one is one sleep per connection, reset only when it fires.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
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

/// How long a connection may have no exchange open.
#[derive(Debug, Clone, Copy)]
pub struct Quiet {
    /// HTTP/1: the wait for a whole request head, the idle time between requests included.
    pub head: Duration,
    /// HTTP/2: with no stream open.
    pub idle: Duration,
}

impl Quiet {
    /// From the settings: an idle HTTP/1 connection waits for a head, so the smaller bound wins.
    pub fn new(header_read_timeout: Duration, idle_timeout: Duration) -> Quiet {
        Quiet {
            head: header_read_timeout.min(idle_timeout),
            idle: idle_timeout,
        }
    }
}

/// Why a connection was let go before it ended.
enum Letting {
    /// HTTP/1 with no whole head in time: dropped at once, as hyper's header timer did.
    NoHead,
    /// Closed gracefully first.
    Told(&'static str),
}

/// Serves `conn` until it ends, it idles past its [`Quiet`] bound, or `stop` turns true; an
/// HTTP/1 connection past `quiet.head` is dropped, otherwise it is shut down gracefully, then
/// dropped once nothing has been open on it for [`AFTER_GOAWAY`]. `None` when the gateway
/// dropped it. `http2` tells whether the connection speaks HTTP/2.
pub async fn drive<C: Graceful>(
    conn: C,
    activity: Activity,
    mut stop: watch::Receiver<bool>,
    quiet: Quiet,
    http2: impl Fn() -> bool,
) -> Option<C::Output> {
    let mut conn = std::pin::pin!(conn);
    let watch = std::pin::pin!(letting_go(&activity, &mut stop, quiet, http2));
    let letting = tokio::select! {
        biased;
        ended = conn.as_mut() => return Some(ended),
        letting = when_woken(watch) => letting,
    };
    let Letting::Told(why) = letting else {
        tracing::debug!("connection closed: no whole request head within header_read_timeout");
        return None;
    };
    tracing::debug!(why, "closing the connection gracefully");
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        ended = conn.as_mut() => Some(ended),
        () = activity.quiet_for(AFTER_GOAWAY) => None,
    }
}

/// Why the connection is to be let go: the gateway stopping, or the connection quiet too long.
async fn letting_go(
    activity: &Activity,
    stop: &mut watch::Receiver<bool>,
    quiet: Quiet,
    http2: impl Fn() -> bool,
) -> Letting {
    tokio::select! {
        _ = stop.wait_for(|stop| *stop) => Letting::Told("the gateway is stopping"),
        letting = idle(activity, quiet, http2) => letting,
    }
}

/// `future`, polled only when its own waker has fired (and once at first). The connection's
/// task is woken for every read and write of its requests; the shutdown signal and the idle
/// timer beside hyper's connection were polled each time (a watch channel's check and a
/// timer's, about 350 instructions a request), where now a wake of theirs is noted by a flag.
async fn when_woken<F: Future>(mut future: Pin<&mut F>) -> F::Output {
    let signal = Arc::new(Signal {
        woken: AtomicBool::new(true),
        task: Mutex::new(None),
    });
    let waker = Waker::from(signal.clone());
    std::future::poll_fn(|cx| {
        signal.wake_with(cx.waker());
        if !signal.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        future.as_mut().poll(&mut Context::from_waker(&waker))
    })
    .await
}

/// The waker [`when_woken`] polls its future with: it notes the wake, then wakes the task.
struct Signal {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Signal {
    /// The task to wake from now on (set before the flag is read: a wake in between is kept).
    fn wake_with(&self, task: &Waker) {
        let mut kept = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        match &mut *kept {
            Some(kept) if kept.will_wake(task) => {}
            kept => *kept = Some(task.clone()),
        }
    }
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(task) = task {
            task.wake();
        }
    }
}

/// Resolves when the connection has been quiet past its bound: `quiet.head` for HTTP/1,
/// `quiet.idle` for HTTP/2.
async fn idle(activity: &Activity, quiet: Quiet, http2: impl Fn() -> bool) -> Letting {
    activity.quiet_for(quiet.head).await;
    if !http2() {
        return Letting::NoHead;
    }
    activity.quiet_for(quiet.idle).await;
    Letting::Told("idle")
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

    /// A connection that never ends by itself; it notes being told to shut down.
    struct Endless(Arc<std::sync::atomic::AtomicBool>);

    impl Future for Endless {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            Poll::Pending
        }
    }

    impl Graceful for Endless {
        fn graceful_shutdown(self: Pin<&mut Self>) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    /// When `drive` lets an endless connection go, and whether it told it to shut down first.
    async fn let_go(activity: Activity, http2: bool) -> (Duration, bool) {
        let told = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (_stop, stopping) = watch::channel(false);
        let quiet = Quiet::new(Duration::from_secs(10), Duration::from_secs(60));
        let started = Instant::now();
        drive(Endless(told.clone()), activity, stopping, quiet, || http2).await;
        (Instant::now() - started, told.load(Ordering::Relaxed))
    }

    #[tokio::test(start_paused = true)]
    async fn an_http1_connection_without_a_head_in_time_is_dropped_at_once() {
        let (after, told) = let_go(Activity::new(), false).await;
        assert_eq!((after, told), (Duration::from_secs(10), false));
        // A response in progress is no wait for a head: the bound starts when it ends.
        let activity = Activity::new();
        let exchange = activity.open();
        let ends = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(exchange);
        });
        let (after, _) = let_go(activity, false).await;
        ends.await.unwrap();
        assert_eq!(after, Duration::from_secs(40));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_http2_connection_is_told_to_go_away_after_the_idle_timeout() {
        // Quiet since long before: told, then dropped at once.
        let (after, told) = let_go(Activity::new(), true).await;
        assert_eq!((after, told), (Duration::from_secs(60), true));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_never_had_an_exchange_is_quiet_from_its_start() {
        let activity = Activity::new();
        let started = Instant::now();
        activity.quiet_for(Duration::from_secs(3)).await;
        assert_eq!(Instant::now() - started, Duration::from_secs(3));
    }
}
