//! Upgrade tunnels (data plane): an HTTP/1.1 request with `Upgrade` (a WebSocket, mostly) that
//! passed every step of the request path goes upstream with its `Connection: upgrade` and
//! `Upgrade` restored; when the upstream answers 101, both connections are handed over by
//! hyper and bytes are copied both ways until either side closes.
//!
//! A tunnel keeps its connection counted: the slot of `server.max_connections` (and of the
//! upstream's `pool_max_connections`) belongs to the socket itself, through [`Counted`], and
//! hyper hands the socket to the tunnel. On shutdown a tunnel has the grace to end by itself,
//! then it is closed ([`Tunnels`]).
//!
//! A tunnel lasts only as long as the secret it was opened with lets anyone in: at every change
//! of the key table (a sync applies changes, and ticks every `store.sync_interval` even without
//! any), a tunnel whose key was revoked, deleted, expired, regenerated past that secret's grace,
//! or moved to another environment is closed ([`KeyHolder`]). The check runs on the sync's
//! path, never on a request's.
//!
//! `Upgrade: h2c` is never tunnelled: the HTTP/2 requests that would follow on the tunnel would
//! reach the upstream without passing the gateway's checks (the "h2c smuggling" of proxies that
//! tunnel it). Such a request goes on as a plain one, its upgrade headers stripped. HTTP/2
//! extended CONNECT (RFC 8441) is not supported: a WebSocket comes over HTTP/1.1.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HeaderMap, HeaderValue, CONNECTION, UPGRADE};
use http::Version;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, OwnedSemaphorePermit};

use super::table::{AuthKey, KeyTable, Presented, ShortHash};
use crate::core::clock::Clock;

/// The protocol an HTTP/1.1 request asks to upgrade to, when it asks in the way RFC 9110
/// 7.8 says (an `Upgrade` field and `upgrade` among the `Connection` options) and the protocol
/// is one the gateway tunnels.
pub fn requested(version: Version, headers: &HeaderMap) -> Option<HeaderValue> {
    if version != Version::HTTP_11 {
        return None;
    }
    let mut upgrades = headers.get_all(UPGRADE).iter();
    let protocol = upgrades.next()?;
    if upgrades.next().is_some() || protocol.is_empty() || !lists_upgrade(headers) {
        return None;
    }
    let h2c = protocol
        .as_bytes()
        .split(|&b| b == b',')
        .any(|p| p.trim_ascii().eq_ignore_ascii_case(b"h2c"));
    (!h2c).then(|| protocol.clone())
}

fn lists_upgrade(headers: &HeaderMap) -> bool {
    headers.get_all(CONNECTION).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|option| option.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    })
}

/// Puts back the two hop-by-hop headers an upgrade needs, on a request going upstream or on
/// the 101 going back.
pub fn restore(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, protocol);
}

/// The open tunnels of one gateway: each holds a receiver, so their number is the sender's
/// receiver count, and the drain waits for none to be left.
pub struct Tunnels {
    close: watch::Sender<bool>,
}

impl Default for Tunnels {
    fn default() -> Self {
        Tunnels {
            close: watch::Sender::new(false),
        }
    }
}

impl Tunnels {
    /// How many tunnels are open.
    pub fn open(&self) -> usize {
        self.close.receiver_count()
    }

    /// Resolves once no tunnel is open.
    pub async fn drained(&self) {
        self.close.closed().await;
    }

    /// Closes every open tunnel, and any opened from now on (the gateway is stopping).
    pub fn close(&self) {
        self.close.send_replace(true);
    }

    /// Copies between the client and the upstream once both are upgraded, until either side
    /// closes, `idle` passes without a byte either way, the key stops letting its holder in,
    /// or the gateway closes its tunnels. `hold` (the upstream connection's turn) is kept as
    /// long.
    pub fn spawn(
        &self,
        client: OnUpgrade,
        upstream: OnUpgrade,
        idle: Duration,
        key: KeyHolder,
        hold: impl Send + 'static,
    ) {
        let mut closing = self.close.subscribe();
        tokio::spawn(async move {
            let _hold = hold;
            if *closing.borrow_and_update() {
                return;
            }
            // Subscribed before the switch completes, so a change meanwhile is seen.
            let mut changes = key.table.changes();
            let (client, upstream) = match tokio::try_join!(client, upstream) {
                Ok(both) => both,
                Err(error) => {
                    tracing::debug!(%error, "upgrade failed; no tunnel");
                    return;
                }
            };
            let mut client = Idle::new(TokioIo::new(client), idle);
            let mut upstream = TokioIo::new(upstream);
            tokio::select! {
                copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                    if let Err(error) = copied {
                        tracing::debug!(%error, "tunnel ended with an error");
                    }
                }
                _ = closing.wait_for(|closing| *closing) => {
                    tracing::debug!("tunnel closed: the gateway is stopping");
                }
                () = key.lets_in_until_it_does_not(&mut changes) => {
                    tracing::info!(
                        key_id = %key.key.id,
                        "tunnel closed: its key was revoked, deleted, expired or replaced"
                    );
                }
            }
        });
    }
}

/// The key a tunnel was opened with, and what tells whether it still lets its holder in.
pub struct KeyHolder {
    table: Arc<KeyTable>,
    key: AuthKey,
    /// The hash of the secret presented (the table's 16 bytes of it).
    hash: ShortHash,
    clock: Clock,
}

impl KeyHolder {
    /// `presented`: which of `key`'s secrets the upgrade request presented.
    pub fn new(table: &Arc<KeyTable>, key: AuthKey, presented: Presented, clock: Clock) -> Self {
        let hash = match presented {
            Presented::Previous { .. } => key.previous().map_or(key.hash, |previous| previous.hash),
            Presented::Current => key.hash,
        };
        KeyHolder {
            table: table.clone(),
            key,
            hash,
            clock,
        }
    }

    /// Whether the secret still finds the same key, in the same environment, usable now: as
    /// steps 3 and 4 of the request path would decide for a new request with it.
    fn lets_in(&self) -> bool {
        let Some((found, which)) = self.table.lookup_short(self.hash) else {
            return false;
        };
        let now = self.clock.now().as_second();
        found.seq == self.key.seq
            && found.environment == self.key.environment
            && found.usable(which, now).is_ok()
    }

    /// Resolves once a change of the table (or its tick) finds the key no longer letting its
    /// holder in; never while the table lives and it does.
    async fn lets_in_until_it_does_not(&self, changes: &mut watch::Receiver<()>) {
        loop {
            changes.mark_unchanged();
            if !self.lets_in() {
                return;
            }
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

/// A socket that holds a slot of a connection cap for as long as it lives, in a pool, in a
/// connection, or in a tunnel that took it over.
pub struct Counted<T> {
    io: T,
    _slot: OwnedSemaphorePermit,
}

impl<T> Counted<T> {
    pub fn new(io: T, slot: OwnedSemaphorePermit) -> Self {
        Counted { io, _slot: slot }
    }

    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The client's side of a tunnel, which fails with `TimedOut` once `idle` passes with no byte
/// read or written: a tunnel nobody uses would hold its slots for good. Both directions go
/// through this side, so it sees all traffic.
struct Idle<T> {
    io: T,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<T> Idle<T> {
    fn new(io: T, idle: Duration) -> Self {
        Idle {
            io,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    /// Pushes the deadline on after traffic; fails once it has passed.
    fn check<R>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if let Poll::Ready(Ok(_)) = &polled {
            let next = tokio::time::Instant::now() + self.idle;
            self.deadline.as_mut().reset(next);
            return polled;
        }
        if polled.is_pending() && self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "tunnel idle")));
        }
        polled
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Idle<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        this.check(cx, polled)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Idle<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.check(cx, polled)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn an_upgrade_is_asked_by_upgrade_and_connection_together_over_http_1_1() {
        let websocket = [("connection", "Upgrade"), ("upgrade", "websocket")];
        for (version, fields, expected) in [
            (Version::HTTP_11, &websocket[..], Some("websocket")),
            (
                Version::HTTP_11,
                &[("connection", "keep-alive, upgrade"), ("upgrade", "websocket")][..],
                Some("websocket"),
            ),
            (Version::HTTP_11, &[("upgrade", "websocket")][..], None),
            (Version::HTTP_11, &[("connection", "upgrade")][..], None),
            (
                Version::HTTP_11,
                &[("connection", "upgrade"), ("upgrade", "")][..],
                None,
            ),
            (
                Version::HTTP_11,
                &[("connection", "upgrade"), ("upgrade", "a"), ("upgrade", "b")][..],
                None,
            ),
            (Version::HTTP_10, &websocket[..], None),
            (Version::HTTP_2, &websocket[..], None),
            (
                Version::HTTP_11,
                &[("connection", "upgrade"), ("upgrade", "h2c")][..],
                None,
            ),
            (
                Version::HTTP_11,
                &[("connection", "upgrade"), ("upgrade", "websocket, H2C")][..],
                None,
            ),
        ] {
            let asked = requested(version, &headers(fields));
            assert_eq!(
                asked.as_ref().map(|v| v.to_str().unwrap()),
                expected,
                "{version:?} {fields:?}"
            );
        }
    }

    #[tokio::test]
    async fn the_tunnel_count_follows_the_receivers_and_closing_reaches_them() {
        let tunnels = Tunnels::default();
        assert_eq!(tunnels.open(), 0);
        tunnels.drained().await;
        let mut one = tunnels.close.subscribe();
        assert_eq!(tunnels.open(), 1);
        tunnels.close();
        assert!(*one.borrow_and_update());
        drop(one);
        tunnels.drained().await;
    }
}
