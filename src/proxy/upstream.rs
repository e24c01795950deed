//! Step 9's connections (data plane): one upstream's pool of HTTP/1.1 keep-alive connections,
//! on hyper's connection-level client, over TLS (rustls, the client the config built) for an
//! `https` upstream.
//!
//! A request takes the most recently used idle connection (LIFO keeps few connections warm) or
//! opens one. The connection goes back to the pool when the response body has been read to its
//! end, by the body wrapper [`UpstreamBody`], so no task is spawned per request to watch for it.
//! It goes back only if the request body has been sent whole as well: an upstream may answer
//! early (a 401, a 413) while a slow client is still uploading, and that connection is busy
//! until the upload ends. Such a connection, and one whose response was abandoned half-read,
//! is closed after its exchange instead.
//!
//! At most `pool_max_connections` are in use at once: past that a request queues, first come
//! first served, for at most `queue_timeout`, and is then refused with 503 (`saturated`): a
//! stalled upstream gets no more work than it holds, and the excess gets a fast answer rather
//! than a slow 502. A request whose turn comes takes an idle connection or opens one; at most
//! `pool_max_connections` are open, busy or idle, and in the rare case that a slot is still
//! held by a connection finishing an earlier upload, it waits for one within `connect_timeout`.
//!
//! Nothing is retried once hyper may have written any of it: a request comes back from a pooled
//! connection that turned out to be closed only when hyper never began to send it, and only an
//! idempotent one is then sent again, on another connection.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderValue;
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::LengthLimitError;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::error::{BodyFault, UpstreamFailure};
use super::sent::{response_deadline, BodyIdle, ClientBodyError, OutBody, Sent, SentBody};
use super::tunnel::Counted;
use crate::config;
use crate::telemetry::throttle::Throttle;

type Sender = http1::SendRequest<SentBody>;

/// Why a request sent upstream got no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendFailure {
    Upstream(UpstreamFailure),
    /// The client's body grew past `server.max_request_body` while streaming.
    BodyTooLarge,
    /// The client's body brought no byte for `server.body_idle_timeout`.
    BodyIdle,
    /// The client's body broke: unreadable framing, or the client gone.
    ClientBody(BodyFault),
}

/// One upstream: where it is, its timeouts, and its connection pool.
pub struct UpstreamClient {
    pub name: String,
    /// The `Host` the upstream gets unless a route preserves the client's.
    pub host: HeaderValue,
    /// The path prefix, without a trailing slash.
    prefix: String,
    connect_timeout: Duration,
    timeout: Duration,
    /// How long a request waits for its turn past the connection cap.
    queue_timeout: Duration,
    /// For an `https` upstream: the handshake's client and the name to verify.
    tls: Option<TlsClient>,
    pool: Arc<Pool>,
}

/// What an `https` upstream's connections are opened with.
struct TlsClient {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl UpstreamClient {
    /// The client for `upstream`. It takes over `previous`'s pool, open connections and all,
    /// when that pool connects to the same address with the same settings: a config reload
    /// then costs the upstream no new connections.
    pub fn new(upstream: &config::Upstream, previous: Option<&UpstreamClient>) -> Self {
        let authority = upstream
            .url
            .authority()
            .cloned()
            .expect("validated upstream URLs have an authority");
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        let https = upstream.tls.is_some();
        let settings = PoolSettings {
            address: (
                host.to_owned(),
                authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            ),
            tls: upstream.tls.as_ref().map(|tls| tls.digest),
            max_connections: upstream.pool_max_connections,
            max_idle: upstream.pool_max_idle,
            idle_timeout: upstream.pool_idle_timeout,
        };
        let pool = match previous {
            Some(previous) if previous.pool.settings == settings => previous.pool.clone(),
            _ => Arc::new(Pool::new(settings)),
        };
        UpstreamClient {
            name: upstream.name.clone(),
            host: HeaderValue::from_str(authority.as_str()).expect("an authority is a valid header value"),
            prefix: upstream.url.path().trim_end_matches('/').to_owned(),
            connect_timeout: upstream.connect_timeout,
            timeout: upstream.timeout,
            queue_timeout: upstream.queue_timeout,
            tls: upstream.tls.as_ref().map(|tls| TlsClient {
                connector: TlsConnector::from(tls.client.clone()),
                server_name: tls.server_name.clone(),
            }),
            pool,
        }
    }

    /// The origin-form target for a normalized path and the original query.
    pub fn uri(&self, path: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let mut target =
            String::with_capacity(self.prefix.len() + path.len() + query.map_or(0, |q| q.len() + 1));
        target.push_str(&self.prefix);
        target.push_str(path);
        if let Some(query) = query {
            target.push('?');
            target.push_str(query);
        }
        Ok(Uri::from(PathAndQuery::try_from(target)?))
    }

    /// Sends the request; the response head must come within the upstream's timeout of the
    /// end of the request body, and the body may stall at most `body_idle` at a time.
    pub async fn send(
        &self,
        request: Request<OutBody>,
        body_idle: Duration,
    ) -> Result<Response<UpstreamBody>, SendFailure> {
        let started = tokio::time::Instant::now();
        let (request, sent) = SentBody::track(request, body_idle);
        let result = tokio::select! {
            result = self.exchange(request, sent.clone()) => result,
            () = response_deadline(&sent, started, self.timeout) => {
                Err(SendFailure::Upstream(UpstreamFailure::Timeout))
            }
        };
        if let Err(SendFailure::Upstream(failure)) = result {
            self.warn(failure);
        }
        result
    }

    /// Logs a failed exchange, at most once per [`FAILURE_WARNING_EVERY`] for each kind: while
    /// an upstream is down every request would log one.
    fn warn(&self, failure: UpstreamFailure) {
        if failure == UpstreamFailure::Tls {
            // Logged where it happens, with the handshake's error ([`Self::warn_tls`]).
            return;
        }
        let throttle = &self.pool.failure_warnings[failure as usize];
        let Some(suppressed) = throttle.due(Instant::now()) else {
            return;
        };
        let what = match failure {
            UpstreamFailure::Connect => "cannot connect to the upstream: 502",
            UpstreamFailure::Tls => "the TLS handshake with the upstream failed: 502",
            UpstreamFailure::Timeout => "the upstream did not answer within its timeout: 504",
            UpstreamFailure::Reset => "the upstream closed the connection without an answer: 502",
            UpstreamFailure::Saturated => {
                "every connection to the upstream stayed busy for queue_timeout: 503 \
                 (pool_max_connections reached)"
            }
        };
        tracing::warn!(
            upstream = %self.name,
            kind = failure.as_str(),
            suppressed,
            logged_at_most_every_s = throttle.every().as_secs(),
            "{what} (suppressed: like failures since the last warning; \
             keygate_upstream_errors_total counts each)"
        );
    }

    async fn exchange(
        &self,
        mut request: Request<SentBody>,
        sent: Sent,
    ) -> Result<Response<UpstreamBody>, SendFailure> {
        let turn = self.turn().await?;
        let resend = request.method().is_idempotent();
        loop {
            let (mut sender, reused) = match self.pool.take() {
                Some(sender) if sender.is_ready() => (sender, true),
                // Boxed: rare, and its future would otherwise enlarge every request's future,
                // which is moved by value several times.
                taken => Box::pin(self.connection(taken)).await?,
            };
            match sender.try_send_request(request).await {
                // A connection switched to another protocol is the tunnel's, not the pool's.
                Ok(response) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                    return Ok(response.map(|body| UpstreamBody {
                        body,
                        held: Held::Switched(turn),
                    }))
                }
                Ok(response) => return Ok(self.pool.lend(sender, sent, response, turn)),
                Err(mut error) => match error.take_message() {
                    // A pooled connection closed before hyper began to send: nothing reached
                    // the upstream.
                    Some(unsent) if reused && resend => request = unsent,
                    _ => return Err(failure(error.error())),
                },
            }
        }
    }

    /// The request's turn to use a connection: at once under the cap, else in the order of
    /// arrival (tokio's semaphore is fair, and no newcomer takes a permit ahead of those
    /// queued), within `queue_timeout`.
    async fn turn(&self) -> Result<Turn, SendFailure> {
        if let Ok(permit) = self.pool.busy.try_acquire() {
            return Ok(Turn::taking(&self.pool.busy, permit));
        }
        let queued = self.pool.busy.acquire();
        let in_queue = InQueue::enter(&self.pool.queued);
        let waited = tokio::time::timeout(self.queue_timeout, queued).await;
        drop(in_queue);
        match waited {
            Ok(permit) => Ok(Turn::taking(
                &self.pool.busy,
                permit.expect("the pool never closes its semaphore"),
            )),
            Err(_) => Err(SendFailure::Upstream(UpstreamFailure::Saturated)),
        }
    }

    /// How many requests wait for their turn past the cap now.
    pub fn queued(&self) -> usize {
        self.pool.queued.load(Ordering::Relaxed)
    }

    /// A connection ready for a request: a pooled one, starting with `taken`, or a new one
    /// while the upstream is under its cap; at the cap, the first to come free. All within
    /// `connect_timeout`.
    async fn connection(&self, taken: Option<Sender>) -> Result<(Sender, bool), SendFailure> {
        let mut at_cap = false;
        let waited = tokio::time::timeout(self.connect_timeout, self.wait_for_connection(taken, &mut at_cap));
        match waited.await {
            Ok(result) => result,
            Err(_) => {
                if at_cap {
                    self.pool.warn_at_cap(&self.name);
                }
                Err(SendFailure::Upstream(UpstreamFailure::Connect))
            }
        }
    }

    /// `at_cap` is set once the request has had to wait for a connection to come free.
    async fn wait_for_connection(
        &self,
        mut taken: Option<Sender>,
        at_cap: &mut bool,
    ) -> Result<(Sender, bool), SendFailure> {
        loop {
            while let Some(mut sender) = taken.take().or_else(|| self.pool.take()) {
                // Back in the pool at the end of a body, before hyper's connection task took
                // up its next turn; closed ones answer at once.
                if sender.ready().await.is_ok() {
                    return Ok((sender, true));
                }
            }
            // Listening only while there is nothing else to wait for, so that a connection
            // given back goes to a request that is waiting, not to one busy connecting.
            let slot = {
                let returned = self.pool.returned.notified();
                tokio::pin!(returned);
                returned.as_mut().enable();
                // Looked for again now that a give-back cannot be missed.
                if let Some(sender) = self.pool.take() {
                    taken = Some(sender);
                    continue;
                }
                match self.pool.slots.clone().try_acquire_owned() {
                    Ok(slot) => slot,
                    Err(_) => {
                        *at_cap = true;
                        tokio::select! {
                            _ = returned => continue,
                            slot = self.pool.slots.clone().acquire_owned() => {
                                slot.expect("the pool never closes its semaphore")
                            }
                        }
                    }
                }
            };
            return Ok((self.connect(slot).await?, false));
        }
    }

    /// Opens a connection, which holds `slot` for as long as it (or a tunnel it became) is open.
    async fn connect(&self, slot: OwnedSemaphorePermit) -> Result<Sender, SendFailure> {
        let (host, port) = (
            self.pool.settings.address.0.as_str(),
            self.pool.settings.address.1,
        );
        let stream = TcpStream::connect((host, port)).await.map_err(|error| {
            tracing::debug!(upstream = %self.name, %error, "upstream connect failed");
            SendFailure::Upstream(UpstreamFailure::Connect)
        })?;
        let _ = stream.set_nodelay(true);
        // The slot goes with the socket, so a connection that becomes a tunnel keeps it.
        let stream = Counted::new(stream, slot);
        let Some(tls) = &self.tls else {
            return self.start(stream).await;
        };
        match tls.connector.connect(tls.server_name.clone(), stream).await {
            Ok(stream) => self.start(stream).await,
            Err(error) => {
                self.warn_tls(&error);
                Err(SendFailure::Upstream(UpstreamFailure::Tls))
            }
        }
    }

    /// A failed TLS handshake, with its cause (an untrusted or misnamed certificate, mostly),
    /// at most once per [`FAILURE_WARNING_EVERY`].
    fn warn_tls(&self, error: &std::io::Error) {
        let throttle = &self.pool.failure_warnings[UpstreamFailure::Tls as usize];
        let Some(suppressed) = throttle.due(Instant::now()) else {
            tracing::debug!(upstream = %self.name, %error, "TLS handshake with the upstream failed");
            return;
        };
        tracing::warn!(
            upstream = %self.name,
            kind = UpstreamFailure::Tls.as_str(),
            %error,
            suppressed,
            logged_at_most_every_s = throttle.every().as_secs(),
            "TLS handshake with the upstream failed: 502 (suppressed: like failures since the \
             last warning; keygate_upstream_errors_total counts each)"
        );
    }

    /// HTTP/1.1 on an open connection, driven by a task of its own.
    async fn start<T>(&self, io: T) -> Result<Sender, SendFailure>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(|_| SendFailure::Upstream(UpstreamFailure::Connect))?;
        let name = self.name.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(upstream = %name, %error, "upstream connection ended with an error");
            }
        });
        self.pool.start_reaper();
        Ok(sender)
    }
}

fn failure(error: &hyper::Error) -> SendFailure {
    if let Some(client) = find::<ClientBodyError>(error) {
        SendFailure::ClientBody(client.fault())
    } else if caused_by::<LengthLimitError>(error) {
        SendFailure::BodyTooLarge
    } else if caused_by::<BodyIdle>(error) {
        SendFailure::BodyIdle
    } else {
        SendFailure::Upstream(UpstreamFailure::Reset)
    }
}

fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    find::<E>(error).is_some()
}

/// The first error of type `E` in `error`'s chain of causes.
fn find<'a, E: std::error::Error + 'static>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a E> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(found) = error.downcast_ref::<E>() {
            return Some(found);
        }
        cause = error.source();
    }
    None
}

/// The least time between two warnings of requests refused at the connection cap.
const CAP_WARNING_EVERY: Duration = Duration::from_secs(10);

/// The least time between two warnings of one upstream's failures of one kind.
const FAILURE_WARNING_EVERY: Duration = Duration::from_secs(10);

/// One upstream's connections: the idle ones, most recently used last, and a slot for each
/// open one.
struct Pool {
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
struct PoolSettings {
    /// `host:port` to connect to, the host without IPv6 brackets.
    address: (String, u16),
    /// For `https`: the digest of the TLS settings' files and name.
    tls: Option<[u8; 32]>,
    max_connections: usize,
    max_idle: usize,
    idle_timeout: Duration,
}

/// A connection waiting in the pool for its next request, and since when.
struct Pooled {
    sender: Sender,
    since: Instant,
}

impl Pool {
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

    /// Logs a request that found no connection free at the cap, at most once per
    /// [`CAP_WARNING_EVERY`]: under overload there would be one per request.
    fn warn_at_cap(&self, upstream: &str) {
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
    fn take(&self) -> Option<Sender> {
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
    fn lend(
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
    fn start_reaper(self: &Arc<Self>) {
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
