//! The request body on its way upstream (data plane): the client's, its errors marked as the
//! client's ([`OutBody`]); how far it has gone; and the two clocks that run while it streams.
//!
//! - The client's: a body that brings no byte for `server.body_idle_timeout` while the upstream
//!   waits for it is cut off ([`BodyIdle`]): 408 when the upstream has not answered yet, and the
//!   upstream connection, holding half a request, closes.
//! - The upstream's: its `timeout` for the response head runs from the end of the request body
//!   ([`response_deadline`]), so an upload longer than `timeout` is not a 504. While the body
//!   streams, the same `timeout` bounds the time without progress when the gateway is not
//!   waiting on the client, that is when the upstream does not take what is sent.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::Limited;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::error::BodyFault;

/// The request body as sent upstream: the client's, streamed, cut off past
/// `server.max_request_body` (bodies without a Content-Length are only counted as they pass).
pub type OutBody = Limited<FromClient>;

/// The client's `body` as it goes upstream: cut off past `max` bytes (`server.max_request_body`).
pub fn out_body(body: Incoming, max: Option<u64>) -> OutBody {
    let limit = max.map_or(usize::MAX, |max| usize::try_from(max).unwrap_or(usize::MAX));
    Limited::new(FromClient::new(body), limit)
}

/// The client's request body, its errors marked as the client's ([`ClientBodyError`]): hyper's
/// client reports a body that failed as its own error, which would otherwise read as the
/// upstream's connection failing.
pub struct FromClient(Incoming);

impl FromClient {
    fn new(body: Incoming) -> Self {
        FromClient(body)
    }
}

impl http_body::Body for FromClient {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        Pin::new(&mut self.0).poll_frame(cx).map_err(ClientBodyError)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

/// The client's request body could not be read: its framing, or the client left.
#[derive(Debug)]
pub struct ClientBodyError(hyper::Error);

impl ClientBodyError {
    /// Malformed when hyper could not read the framing (its chunk decoder says `InvalidInput`
    /// or `InvalidData`); anything else from a client's body is the client going away: the
    /// connection closed before the body's end, or the stream reset.
    pub fn fault(&self) -> BodyFault {
        let mut cause = std::error::Error::source(&self.0);
        while let Some(error) = cause {
            if let Some(io) = error.downcast_ref::<std::io::Error>() {
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
                ) {
                    return BodyFault::Malformed;
                }
            }
            cause = error.source();
        }
        BodyFault::Gone
    }
}

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the client's request body: {}", self.0)
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// How far a request body has gone: known at once for requests without one, told by
/// [`SentBody`] for the others.
#[derive(Clone)]
pub(super) enum Sent {
    Empty,
    Streaming(Arc<Progress>),
}

/// What [`SentBody`] tells of a streaming body.
pub(super) struct Progress {
    start: Instant,
    /// Milliseconds from `start` to the last frame taken from the client (0: none yet).
    last_ms: AtomicU64,
    done: AtomicBool,
    /// The upstream's side is asking for more and the client has none yet.
    waiting_on_client: AtomicBool,
}

impl Progress {
    fn moved(&self) {
        let ms = self.start.elapsed().as_millis();
        self.last_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Release);
        self.waiting_on_client.store(false, Ordering::Release);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Acquire))
    }
}

impl Sent {
    pub(super) fn is_done(&self) -> bool {
        match self {
            Sent::Empty => true,
            Sent::Streaming(progress) => progress.done.load(Ordering::Acquire),
        }
    }
}

/// Resolves when the upstream is late: `timeout` after the end of the request body (after the
/// start, without one), or `timeout` without progress while the body streams and the gateway is
/// not waiting on the client. A client that stalls is [`SentBody`]'s to cut off.
pub(super) async fn response_deadline(sent: &Sent, started: Instant, timeout: Duration) {
    let Sent::Streaming(progress) = sent else {
        return Spare::until(started + timeout).await;
    };
    loop {
        let due = progress.last() + timeout;
        Spare::until(due).await;
        if progress.waiting_on_client.load(Ordering::Acquire) && !progress.done.load(Ordering::Acquire) {
            // The client's idle clock runs; look again a timeout later.
            Spare::until(Instant::now() + timeout).await;
            continue;
        }
        if progress.last() + timeout <= Instant::now() {
            return;
        }
    }
}

/// How many spare timers each thread keeps: about the requests it has waiting upstream at once.
const SPARES: usize = 64;

thread_local! {
    static SPARE: RefCell<Vec<Pin<Box<Sleep>>>> = const { RefCell::new(Vec::new()) };
}

/// A timer taken from this thread's spares (a new one when there is none), back among them when
/// dropped. Every request without a body waits for its response under one: a new `Sleep` is
/// put in tokio's timer wheel at its first poll and taken out again when dropped (a lock and a
/// list update each way, about 900 instructions a request), where a spare one, still in the
/// wheel, is moved to a later deadline by one compare-and-swap; the wheel finds the new deadline
/// when the old one comes, once a `timeout` at most.
///
/// Only a timer still in a wheel is kept or reused: one that has fired would go back in by the
/// slow way anyway, and a runtime that shuts down fires all of its own, so a spare left by a
/// runtime gone (one test's, before the next runs on the same thread) is never polled again.
struct Spare {
    sleep: Option<Pin<Box<Sleep>>>,
    polled: bool,
}

impl Spare {
    fn until(deadline: Instant) -> Spare {
        let spare = SPARE.with_borrow_mut(|spares| {
            // One that fired while it waited here (or whose runtime is gone) is dropped.
            let mut spare = std::iter::from_fn(|| spares.pop()).find(|spare| !spare.is_elapsed())?;
            spare.as_mut().reset(deadline);
            Some(spare)
        });
        Spare {
            sleep: Some(spare.unwrap_or_else(|| Box::pin(tokio::time::sleep_until(deadline)))),
            polled: false,
        }
    }
}

impl Future for Spare {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.polled = true;
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        let Some(sleep) = self.sleep.take() else {
            return;
        };
        if !self.polled || sleep.is_elapsed() {
            return;
        }
        // It keeps the waker of its last poll until it is used again (or fires, which then
        // wakes that task once for nothing): a poll to clear it would panic in a runtime
        // shutting down.
        let _ = SPARE.try_with(|spares| {
            let mut spares = spares.borrow_mut();
            if spares.len() < SPARES {
                spares.push(sleep);
            }
        });
    }
}

/// The client sent no byte of its body for `server.body_idle_timeout`.
#[derive(Debug, Clone, Copy)]
pub struct BodyIdle;

impl std::fmt::Display for BodyIdle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body stalled past body_idle_timeout")
    }
}

impl std::error::Error for BodyIdle {}

/// The request body on its way upstream, telling [`Sent`] how far it has gone, and cut off
/// once the client has sent nothing for `idle`.
pub(super) struct SentBody {
    body: OutBody,
    progress: Option<Arc<Progress>>,
    idle: Duration,
    /// Armed at the first wait for the client, pushed on by every frame.
    timer: Option<Pin<Box<Sleep>>>,
}

impl SentBody {
    pub(super) fn track(request: Request<OutBody>, idle: Duration) -> (Request<SentBody>, Sent) {
        let (parts, body) = request.into_parts();
        let (progress, sent) = if body.is_end_stream() {
            (None, Sent::Empty)
        } else {
            let progress = Arc::new(Progress {
                start: Instant::now(),
                last_ms: AtomicU64::new(0),
                done: AtomicBool::new(false),
                waiting_on_client: AtomicBool::new(false),
            });
            (Some(progress.clone()), Sent::Streaming(progress))
        };
        let body = SentBody {
            body,
            progress,
            idle,
            timer: None,
        };
        (Request::from_parts(parts, body), sent)
    }

    fn took(&mut self, end: bool) {
        if let Some(progress) = &self.progress {
            progress.moved();
            if end {
                progress.done.store(true, Ordering::Release);
            }
        }
        if let Some(timer) = &mut self.timer {
            timer.as_mut().reset(Instant::now() + self.idle);
        }
    }

    /// Whether the client has let `idle` pass without a byte; arms the timer at the first wait.
    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(progress) = &self.progress {
            progress.waiting_on_client.store(true, Ordering::Release);
        }
        let idle = self.idle;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        timer.as_mut().poll(cx).is_ready()
    }
}

impl http_body::Body for SentBody {
    type Data = Bytes;
    type Error = <OutBody as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                let end = match &frame {
                    None => true,
                    Some(Ok(_)) => self.body.is_end_stream(),
                    Some(Err(_)) => false,
                };
                self.took(end);
                Poll::Ready(frame)
            }
            Poll::Pending if self.stalled(cx) => Poll::Ready(Some(Err(Box::new(BodyIdle)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn without_a_body_the_deadline_runs_from_the_start() {
        let started = Instant::now();
        response_deadline(&Sent::Empty, started, Duration::from_secs(5)).await;
        assert_eq!(Instant::now() - started, Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_spare_timer_fires_at_its_new_deadline_later_or_earlier() {
        for (first, then) in [(5, 20), (20, 5)] {
            // Polled, so in the wheel, then left among the spares before it fires.
            let waited = tokio::time::timeout(
                Duration::from_secs(1),
                Spare::until(Instant::now() + Duration::from_secs(first)),
            );
            assert!(waited.await.is_err());
            let reused = Instant::now();
            Spare::until(reused + Duration::from_secs(then)).await;
            assert_eq!(
                Instant::now() - reused,
                Duration::from_secs(then),
                "{first} then {then}"
            );
        }
    }

    #[test]
    fn a_spare_left_by_a_runtime_gone_is_not_used_by_the_next() {
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap()
        };
        runtime().block_on(async {
            let waited = tokio::time::timeout(
                Duration::from_secs(1),
                Spare::until(Instant::now() + Duration::from_secs(60)),
            );
            assert!(waited.await.is_err());
        });
        // The first runtime is dropped; its spare, left on this thread, fired at its shutdown.
        runtime().block_on(async {
            let started = Instant::now();
            Spare::until(started + Duration::from_secs(2)).await;
            assert_eq!(Instant::now() - started, Duration::from_secs(2));
        });
    }

    fn streaming() -> Arc<Progress> {
        Arc::new(Progress {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            done: AtomicBool::new(false),
            waiting_on_client: AtomicBool::new(false),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn with_a_body_the_deadline_runs_from_its_last_byte() {
        let progress = streaming();
        let sent = Sent::Streaming(progress.clone());
        let started = Instant::now();
        let feeder = {
            let progress = progress.clone();
            tokio::spawn(async move {
                // A byte every 4 s for 20 s: longer than the 5 s timeout, never idle that long.
                for _ in 0..5 {
                    tokio::time::sleep(Duration::from_secs(4)).await;
                    progress.moved();
                }
                progress.done.store(true, Ordering::Release);
            })
        };
        response_deadline(&sent, started, Duration::from_secs(5)).await;
        assert_eq!(Instant::now() - started, Duration::from_secs(25));
        feeder.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_client_is_not_the_upstream_s_timeout() {
        let progress = streaming();
        progress.waiting_on_client.store(true, Ordering::Release);
        let sent = Sent::Streaming(progress.clone());
        let started = Instant::now();
        let deadline = response_deadline(&sent, started, Duration::from_secs(5));
        let outcome = tokio::time::timeout(Duration::from_secs(60), deadline).await;
        assert!(outcome.is_err(), "no 504 while the client is what is awaited");
    }
}
