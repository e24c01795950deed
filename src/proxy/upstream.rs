//! Step 9's connections (data plane): one upstream's pool of HTTP/1.1 keep-alive connections,
//! on hyper's connection-level client, over TLS (rustls, the client the config built) for an
//! `https` upstream.
//!
//! A request takes the most recently used idle connection (LIFO keeps few connections warm) or
//! opens one; the pool that keeps them is [`super::pool`]. The connection goes back to the pool
//! when the response body has been read to its end, by the body wrapper [`UpstreamBody`], so no
//! task is spawned per request to watch for it. It goes back only if the request body has been
//! sent whole as well: an upstream may answer early (a 401, a 413) while a slow client is still
//! uploading, and that connection is busy until the upload ends. Such a connection, and one
//! whose response was abandoned half-read, is closed after its exchange instead.
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

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::HeaderValue;
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode};
use http_body_util::LengthLimitError;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::error::{BodyFault, UpstreamFailure};
use super::pool::{Free, Pool, PoolSettings, Sender, Turn, UpstreamBody};
use super::sent::{response_deadline, BodyIdle, ClientBodyError, OutBody, Sent, SentBody};
use super::tunnel::Counted;
use crate::config;

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
        let pool = Pool::keep_or_new(previous.map(|previous| &previous.pool), settings);
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

    /// Logs a failed exchange, at most once per [`super::pool::FAILURE_WARNING_EVERY`] for each
    /// kind: while an upstream is down every request would log one.
    fn warn(&self, failure: UpstreamFailure) {
        if failure == UpstreamFailure::Tls {
            // Logged where it happens, with the handshake's error ([`Self::warn_tls`]).
            return;
        }
        let throttle = self.pool.failure_warnings(failure);
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
                    return Ok(response.map(|body| UpstreamBody::switched(body, turn)))
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

    /// The request's turn to use a connection (see [`Pool::turn`]); 503 past `queue_timeout`.
    async fn turn(&self) -> Result<Turn, SendFailure> {
        self.pool
            .turn(self.queue_timeout)
            .await
            .ok_or(SendFailure::Upstream(UpstreamFailure::Saturated))
    }

    /// How many requests wait for their turn past the cap now.
    pub fn queued(&self) -> usize {
        self.pool.queued()
    }

    /// A connection ready for a request: a pooled one, starting with `taken`, or a new one
    /// while the upstream is under its cap; at the cap, the first to come free. All within
    /// `connect_timeout`.
    async fn connection(&self, taken: Option<Sender>) -> Result<(Sender, bool), SendFailure> {
        let mut at_cap = false;
        let waited = tokio::time::timeout(self.connect_timeout, self.free_or_new(taken, &mut at_cap));
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

    /// A pooled connection (`true`: reused) or a new one (`false`).
    async fn free_or_new(
        &self,
        taken: Option<Sender>,
        at_cap: &mut bool,
    ) -> Result<(Sender, bool), SendFailure> {
        match self.pool.free(taken, at_cap).await {
            Free::Pooled(sender) => Ok((sender, true)),
            Free::Slot(slot) => Ok((self.connect(slot).await?, false)),
        }
    }

    /// Opens a connection, which holds `slot` for as long as it (or a tunnel it became) is open.
    async fn connect(&self, slot: OwnedSemaphorePermit) -> Result<Sender, SendFailure> {
        let stream = TcpStream::connect(self.pool.address()).await.map_err(|error| {
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
    /// at most once per [`super::pool::FAILURE_WARNING_EVERY`].
    fn warn_tls(&self, error: &std::io::Error) {
        let throttle = self.pool.failure_warnings(UpstreamFailure::Tls);
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
