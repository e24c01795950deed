//! One upstream's connection pool (data plane): its idle connections, the most recently used
//! taken first; the cap of `pool_max_connections` on connections open and on connections in use,
//! and the queue of requests past it; and the response body that gives its connection back when
//! it ends ([`UpstreamBody`]). Opening a connection is the upstream client's
//! ([`super::upstream`]), which the module doc there tells the whole of.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::error::UpstreamFailure;
use super::sent::{Sent, SentBody};
use crate::telemetry::throttle::Throttle;

/// A connection's sending half, as hyper's connection-level client hands it out.
pub(super) type Sender = http1::SendRequest<SentBody>;

/// The least time between two warnings of requests refused at the connection cap.
const CAP_WARNING_EVERY: Duration = Duration::from_secs(10);

/// The least time between two warnings of one upstream's failures of one kind.
pub(super) const FAILURE_WARNING_EVERY: Duration = Duration::from_secs(10);

/// One upstream's connections: the idle ones, most recently used last, and a slot for each
/// open one.
pub(super) struct Pool {
    settings: PoolSettings,
    idle: Mutex<VecDeque<Pooled>>,
    /// `pool_max_connections` permits; each open connection's socket holds one until it closes.
    slots: Arc<Semaphore>,
    /// `pool_max_connections` permits; each request holds one (its [`Turn`]) while it uses a
    /// connection, and requests past the cap queue here.
    busy: Arc<Semaphore>,
    /// Requests waiting in `busy`'s queue.
    queued: AtomicUsize,
    /// Told when a connection is given back, for requests waiting at the cap.
    returned: Notify,
    /// When a request last gave up waiting at the cap was logged.
    cap_warned: Mutex<Option<Instant>>,
    /// Warnings of failed exchanges, by [`UpstreamFailure`] kind.
    failure_warnings: [Throttle; UpstreamFailure::ALL.len()],
    reaper: std::sync::Once,
}

/// What a pool's connections are: equal settings, interchangeable connections.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct PoolSettings {
    /// `host:port` to connect to, the host without IPv6 brackets.
    pub address: (String, u16),
    /// For `https`: the digest of the TLS settings' files and name.
    pub tls: Option<[u8; 32]>,
    pub max_connections: usize,
    pub max_idle: usize,
    pub idle_timeout: Duration,
}

/// What a request waiting for a connection gets.
pub(super) enum Free {
    /// A pooled connection, ready.
    Pooled(Sender),
    /// A slot under the cap, to open a connection with.
    Slot(OwnedSemaphorePermit),
}

/// A connection waiting in the pool for its next request, and since when.
struct Pooled {
    sender: Sender,
    since: Instant,
}

impl Pool {
    /// `previous`'s pool when it has the same settings (its open connections carry on), a new
    /// one otherwise.
    pub fn keep_or_new(previous: Option<&Arc<Pool>>, settings: PoolSettings) -> Arc<Pool> {
        match previous {
            Some(previous) if previous.settings == settings => previous.clone(),
            _ => Arc::new(Pool::new(settings)),
        }
    }

    fn new(settings: PoolSettings) -> Self {
        Pool {
            idle: Mutex::new(VecDeque::with_capacity(settings.max_idle.min(1024))),
            slots: Arc::new(Semaphore::new(
                settings.max_connections.min(Semaphore::MAX_PERMITS),
            )),
            busy: Arc::new(Semaphore::new(
                settings.max_connections.min(Semaphore::MAX_PERMITS),
            )),
            queued: AtomicUsize::new(0),
            settings,
            returned: Notify::new(),
            cap_warned: Mutex::new(None),
            failure_warnings: UpstreamFailure::ALL.map(|_| Throttle::new(FAILURE_WARNING_EVERY)),
            reaper: std::sync::Once::new(),
        }
    }

    /// `host:port` to connect to.
    pub fn address(&self) -> (&str, u16) {
        (self.settings.address.0.as_str(), self.settings.address.1)
    }

    /// The warnings of failed exchanges of one kind.
    pub fn failure_warnings(&self, failure: UpstreamFailure) -> &Throttle {
        &self.failure_warnings[failure as usize]
    }

    /// The request's turn to use a connection: at once under the cap, else in the order of
    /// arrival (tokio's semaphore is fair, and no newcomer takes a permit ahead of those
    /// queued), within `queue_timeout`; `None` past it.
    pub async fn turn(&self, queue_timeout: Duration) -> Option<Turn> {
        if let Ok(permit) = self.busy.try_acquire() {
            return Some(Turn::taking(&self.busy, permit));
        }
        // Boxed: only past the cap, and its timer and queue entry would otherwise enlarge
        // every request's future, which is moved by value.
        Box::pin(self.queue_for_turn(queue_timeout)).await
    }

    /// Past the cap: in the queue for a turn, within `queue_timeout`.
    async fn queue_for_turn(&self, queue_timeout: Duration) -> Option<Turn> {
        let queued = self.busy.acquire();
        let in_queue = InQueue::enter(&self.queued);
        let waited = tokio::time::timeout(queue_timeout, queued).await;
        drop(in_queue);
        let permit = waited.ok()?;
        Some(Turn::taking(
            &self.busy,
            permit.expect("the pool never closes its semaphore"),
        ))
    }

    /// How many requests wait for their turn past the cap now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// A pooled connection ready for a request, starting with `taken`, or a slot to open one
    /// while the upstream is under its cap; at the cap, whichever comes free first. `at_cap` is
    /// set once the request has had to wait for one.
    pub async fn free(&self, mut taken: Option<Sender>, at_cap: &mut bool) -> Free {
        loop {
            while let Some(mut sender) = taken.take().or_else(|| self.take()) {
                // Back in the pool at the end of a body, before hyper's connection task took
                // up its next turn; closed ones answer at once.
                if sender.ready().await.is_ok() {
                    return Free::Pooled(sender);
                }
            }
            // Listening only while there is nothing else to wait for, so that a connection
            // given back goes to a request that is waiting, not to one busy connecting.
            let returned = self.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            // Looked for again now that a give-back cannot be missed.
            if let Some(sender) = self.take() {
                taken = Some(sender);
                continue;
            }
            match self.slots.clone().try_acquire_owned() {
                Ok(slot) => return Free::Slot(slot),
                Err(_) => {
                    *at_cap = true;
                    tokio::select! {
                        _ = returned => continue,
                        slot = self.slots.clone().acquire_owned() => {
                            return Free::Slot(slot.expect("the pool never closes its semaphore"));
                        }
                    }
                }
            }
        }
    }

    /// Logs a request that found no connection free at the cap, at most once per
    /// [`CAP_WARNING_EVERY`]: under overload there would be one per request.
    pub fn warn_at_cap(&self, upstream: &str) {
        let mut warned = self
            .cap_warned
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if warned.is_some_and(|at| at.elapsed() < CAP_WARNING_EVERY) {
            return;
        }
        *warned = Some(Instant::now());
        tracing::warn!(
            upstream,
            pool_max_connections = self.settings.max_connections,
            logged_at_most_every_s = CAP_WARNING_EVERY.as_secs(),
            "a request waited connect_timeout for a connection at the cap and got 502 \
             (keygate_upstream_errors_total{{kind=\"connect\"}} counts each)"
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Pooled>> {
        // The lock guards plain pushes and pops, which cannot leave the list half-changed.
        self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The most recently used connection that has not been idle too long.
    pub fn take(&self) -> Option<Sender> {
        let mut idle = self.lock();
        let newest = idle.pop_back()?;
        if newest.since.elapsed() >= self.settings.idle_timeout {
            // The rest are older still.
            idle.clear();
            return None;
        }
        Some(newest.sender)
    }

    /// Keeps a connection whose exchange is over; when full, the least recently used goes.
    fn give_back(&self, sender: Sender, sent: &Sent) {
        if sender.is_closed() || !sent.is_done() || self.settings.max_idle == 0 {
            return;
        }
        let mut idle = self.lock();
        if idle.len() == self.settings.max_idle {
            idle.pop_front();
        }
        idle.push_back(Pooled {
            sender,
            since: Instant::now(),
        });
        drop(idle);
        self.returned.notify_one();
    }

    /// Wraps the response body so that the connection comes back when the body is done.
    pub fn lend(
        self: &Arc<Self>,
        sender: Sender,
        sent: Sent,
        response: Response<Incoming>,
        turn: Turn,
    ) -> Response<UpstreamBody> {
        let held = if response.body().is_end_stream() {
            self.give_back(sender, &sent);
            Held::Nothing
        } else {
            Held::Loan(Loan {
                sender,
                sent,
                pool: Arc::downgrade(self),
                _turn: turn,
            })
        };
        response.map(|body| UpstreamBody { body, held })
    }

    /// Closes connections idle past `idle_timeout`, from a task that ends with the pool.
    pub fn start_reaper(self: &Arc<Self>) {
        self.reaper.call_once(|| {
            let pool = Arc::downgrade(self);
            let period = (self.settings.idle_timeout / 2).max(Duration::from_millis(100));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(pool) = pool.upgrade() else { break };
                    let timeout = pool.settings.idle_timeout;
                    pool.lock()
                        .retain(|idle| idle.since.elapsed() < timeout && !idle.sender.is_closed());
                }
            });
        });
    }
}

/// Counts a request in the queue for as long as it is there, whether it gets its turn, times
/// out, or is dropped with its client.
struct InQueue<'a>(&'a AtomicUsize);

impl<'a> InQueue<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        InQueue(count)
    }
}

impl Drop for InQueue<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request's place among those using an upstream's connections (at most
/// `pool_max_connections`): held until its response body ends, or by the tunnel its
/// connection became. The semaphore's permit without its count (which every response body
/// would carry): one permit, given back on drop.
pub struct Turn(Arc<Semaphore>);

impl Turn {
    fn taking(busy: &Arc<Semaphore>, permit: tokio::sync::SemaphorePermit<'_>) -> Turn {
        permit.forget();
        Turn(Arc::clone(busy))
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.0.add_permits(1);
    }
}

/// A connection out on loan to one response body.
struct Loan {
    sender: Sender,
    sent: Sent,
    pool: Weak<Pool>,
    /// Given up with the loan, after the connection has gone back to the pool.
    _turn: Turn,
}

/// An upstream response body, streamed; its connection goes back to the pool at the end.
pub struct UpstreamBody {
    body: Incoming,
    held: Held,
}

/// What a response body holds of the upstream's.
enum Held {
    Nothing,
    /// The connection, until the body ends.
    Loan(Loan),
    /// A 101's turn, for the tunnel its connection becomes.
    Switched(Turn),
}

impl UpstreamBody {
    /// The body of a 101, whose connection (and turn) becomes a tunnel's, not the pool's.
    pub fn switched(body: Incoming, turn: Turn) -> Self {
        UpstreamBody {
            body,
            held: Held::Switched(turn),
        }
    }

    /// The turn a switched (101) connection holds, for its tunnel to keep.
    pub fn take_turn(&mut self) -> Option<Turn> {
        match std::mem::replace(&mut self.held, Held::Nothing) {
            Held::Switched(turn) => Some(turn),
            held => {
                self.held = held;
                None
            }
        }
    }

    fn give_back(&mut self) {
        if !matches!(self.held, Held::Loan(_)) {
            return;
        }
        if let Held::Loan(loan) = std::mem::replace(&mut self.held, Held::Nothing) {
            if let Some(pool) = loan.pool.upgrade() {
                pool.give_back(loan.sender, &loan.sent);
            }
        }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        match &frame {
            None => self.give_back(),
            Some(Ok(_)) if self.body.is_end_stream() => self.give_back(),
            // A failed body leaves the connection in an unknown state: it goes with the loan.
            Some(Err(_)) => self.held = Held::Nothing,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A server that saw the end from the length alone may drop the body without polling
        // it to `None`; one dropped half-read closes its connection.
        if self.body.is_end_stream() {
            self.give_back();
        }
    }
}
