//! An admitted request on its way upstream (data plane): the one value it is from its admission
//! to its answer ([`Exchange`]). Built in place, it holds the request in the form the upstream
//! gets (SPEC section 1, "What the upstream receives"), with an upgrade's client side set aside
//! for a tunnel; then, awaited:
//!
//! 1. step 8, when the limit is shared (Redis): the one check that awaits, so the one that runs
//!    here rather than among the others;
//! 2. step 9: the upstream's answer, or a tunnel when it switches protocols;
//! 3. the final phase ([`Final`]), which runs on drop too.

use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderValue, UPGRADE};
use http::{Request, Response, StatusCode};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use super::client_ip::is_trusted;
use super::connection::Peer;
use super::context::Context;
use super::credentials::Source;
use super::error::{Refusal, UpstreamFailure};
use super::final_phase::{refuse, Final};
use super::forward::{self, Credentials, Identity, Passing};
use super::limits::KeyAsk;
use super::pool::UpstreamBody;
use super::request_id::X_REQUEST_ID;
use super::sent::{self, OutBody};
use super::state::{RouteState, Shared, Snapshot, UpstreamState};
use super::table::{AuthKey, Presented};
use super::tunnel;
use super::upstream::{SendFailure, UpstreamClient};
use super::Body;

/// What steps 0 to 8 decided that an admitted request's way upstream needs.
pub(super) struct Admission {
    /// The key it authenticated with (the context's too, for the final phase).
    pub key: AuthKey,
    pub route: usize,
    /// Which of the key's secrets the request presented.
    pub presented: Presented,
    /// Where the credential was, so that it is the one stripped.
    pub source: Source,
    /// The upstream's target: its path prefix, the normal path, the query.
    pub uri: http::Uri,
    /// The host the client addressed, in normal form, for the upstream.
    pub host: Option<HeaderValue>,
    /// Step 8 still to do, in the shared limiter: what it asks of the key.
    pub shared_limit: Option<KeyAsk>,
}

/// An admitted request, from its admission to its answer: the request as the upstream gets it,
/// where it goes, what is left to check, and its final phase.
pub(super) struct Exchange {
    last: Final,
    version: http::Version,
    upstream: usize,
    shared_limit: Option<KeyAsk>,
    request: Request<OutBody>,
    upgrade: Option<Upgrade>,
}

impl Exchange {
    /// The exchange of `request`, admitted as `admission`: step 9's first half, the request put
    /// in the form the upstream gets, happens here, before anything is awaited.
    pub fn new(
        snapshot: Arc<Snapshot>,
        ctx: Context,
        peer: Peer,
        mut admission: Admission,
        mut request: Request<Incoming>,
    ) -> Self {
        let method = request.method().clone();
        let version = request.version();
        let upgrade = Upgrade::take(&mut request, admission.presented);
        let upstream = snapshot.routes[admission.route].upstream;
        let shared_limit = admission.shared_limit.take();
        let request = outgoing(&snapshot, &ctx, peer, admission, request, upgrade.as_ref());
        Exchange {
            last: Final::new(snapshot, ctx, method),
            version,
            upstream,
            shared_limit,
            request,
            upgrade,
        }
    }

    /// A shared step 8, step 9, then the final phase.
    pub async fn run(mut self, shared: Arc<Shared>) -> Response<Body> {
        let shared = &*shared;
        // Fields used where they are, not moved out into locals first: each move of the
        // request or the final phase's context is a copy of a few hundred bytes.
        let Final { snapshot, ctx, .. } = &mut self.last;
        let limited = match self.shared_limit.take() {
            // Boxed: a Redis call's future is most of this one's size otherwise, and this one
            // is moved by value (into its box, among others) on every admitted request,
            // limits shared or not.
            Some(ask) => Box::pin(limit_shared(shared, ctx, &ask)).await,
            None => Ok(()),
        };
        let forwarded = match limited {
            Ok(()) => {
                send(
                    shared,
                    snapshot,
                    ctx,
                    &snapshot.upstreams[self.upstream],
                    self.request,
                    self.upgrade,
                )
                .await
            }
            Err(refusal) => Err(refusal),
        };
        let response = match forwarded {
            Ok(mut response) => {
                let headers = response.headers_mut();
                // Room for the id and the final phase's `RateLimit-*` headers: one growth.
                headers.reserve(4);
                headers.insert(X_REQUEST_ID, ctx.request_id.clone());
                response
            }
            Err(refusal) => refuse(shared, snapshot, ctx, refusal, self.version),
        };
        self.last.finish(response)
    }
}

/// What an upgrade request needs from its client for a tunnel: the protocol it asked for and
/// its side of the switch; and which of its key's secrets it was let in with, for the tunnel to
/// close once that secret no longer lets anyone in.
struct Upgrade {
    protocol: HeaderValue,
    client: OnUpgrade,
    presented: Presented,
}

impl Upgrade {
    /// The upgrade `request` asks for, when it is one the gateway tunnels. The client's side of
    /// the switch comes out of the request, so it does not go upstream.
    fn take(request: &mut Request<Incoming>, presented: Presented) -> Option<Upgrade> {
        let protocol = tunnel::requested(request.version(), request.headers())?;
        Some(Upgrade {
            protocol,
            client: hyper::upgrade::on(request),
            presented,
        })
    }
}

/// Step 9, its first half: the request as the upstream gets it, with the upgrade headers put
/// back when it goes for a tunnel.
fn outgoing(
    snapshot: &Snapshot,
    ctx: &Context,
    peer: Peer,
    admission: Admission,
    mut request: Request<Incoming>,
    upgrade: Option<&Upgrade>,
) -> Request<OutBody> {
    let key = &admission.key;
    let route = &snapshot.routes[admission.route];
    let identity = Identity {
        seq: key.seq,
        key_id: key.id.as_bytes(),
        environment: key.environment.as_str(),
        customer: key.customer_id.as_ref().map(|id| id.as_bytes()),
        request_id: &ctx.request_id,
        client: peer.addr.ip(),
        tls: peer.tls,
        host: admission.host.as_ref(),
    };
    let passing = passing(snapshot, route, admission.source, peer);
    let upstream = &snapshot.upstreams[route.upstream].client;
    forward::prepare(&mut request, admission.uri, &identity, &passing, &upstream.host);
    if let Some(span) = &ctx.span {
        span.propagate(request.headers_mut());
    }
    if let Some(upgrade) = upgrade {
        tunnel::restore(request.headers_mut(), upgrade.protocol.clone());
    }
    let max = snapshot.config.server.max_request_body;
    request.map(|body| sent::out_body(body, max))
}

/// What the route and the peer let through of the client's own headers.
fn passing<'s>(snapshot: &'s Snapshot, route: &RouteState, source: Source, peer: Peer) -> Passing<'s> {
    Passing {
        credentials: (!route.forward_credentials).then(|| Credentials {
            authorization: source == Source::Authorization,
            header: &snapshot.key_header,
        }),
        preserve_host: route.preserve_host,
        method_override: route.allow_method_override,
        trusted_peer: is_trusted(peer.addr.ip(), &snapshot.config.server.trusted_proxies),
    }
}

/// Step 8 in the shared limiter (which falls back to the local one when it does not answer in
/// time).
async fn limit_shared(shared: &Shared, ctx: &mut Context, ask: &KeyAsk) -> Result<(), Refusal> {
    let verdict = shared.limit(ctx.authenticated()?, ask).await;
    ctx.apply_limit(&verdict)
}

/// Step 9, its second half: the upstream's answer, timed.
async fn send(
    shared: &Shared,
    snapshot: &Snapshot,
    ctx: &mut Context,
    upstream: &UpstreamState,
    outgoing: Request<OutBody>,
    upgrade: Option<Upgrade>,
) -> Result<Response<Body>, Refusal> {
    let sent = Instant::now();
    ctx.sent = Some(sent);
    let result = upstream
        .client
        .send(outgoing, snapshot.config.server.body_idle_timeout)
        .await;
    let elapsed = sent.elapsed();
    ctx.upstream_time = Some(elapsed);
    upstream.duration.observe(elapsed.as_secs_f64());
    match result {
        Ok(response) if response.status() == StatusCode::SWITCHING_PROTOCOLS => switch(
            shared,
            snapshot,
            &upstream.client,
            ctx.key.as_ref(),
            upgrade,
            response,
        ),
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            forward::strip_hop_by_hop(&mut parts.headers);
            Ok(Response::from_parts(parts, Either::Left(body)))
        }
        Err(failure) => Err(unanswered(shared, &upstream.client, failure)),
    }
}

/// Why a request got no answer: the client's body (too large, idle, broken: the client's
/// fault, never the upstream's 502) or the upstream.
fn unanswered(shared: &Shared, upstream: &UpstreamClient, failure: SendFailure) -> Refusal {
    match failure {
        SendFailure::BodyTooLarge => Refusal::TooLarge,
        SendFailure::BodyIdle => Refusal::BodyTimeout,
        SendFailure::ClientBody(fault) => {
            tracing::debug!(
                upstream = %upstream.name,
                reason = fault.as_str(),
                "the client's request body broke on its way upstream: the client's fault, not \
                 the upstream's"
            );
            Refusal::ClientBody(fault)
        }
        SendFailure::Upstream(failure) => upstream_failed(shared, upstream, failure),
    }
}

/// The upstream's failure, counted in `keygate_upstream_errors_total`.
fn upstream_failed(shared: &Shared, upstream: &UpstreamClient, failure: UpstreamFailure) -> Refusal {
    shared
        .metrics
        .upstream_errors
        .with_label_values(&[&upstream.name, failure.as_str()])
        .inc();
    Refusal::Upstream(failure)
}

/// The upstream switched protocols: the 101 goes back to the client with its upgrade headers,
/// and a tunnel joins the two once both sides have switched. A 101 to a request that asked
/// for no upgrade (or for one the gateway does not tunnel) is the upstream's error: 502.
fn switch(
    shared: &Shared,
    snapshot: &Snapshot,
    upstream: &UpstreamClient,
    key: Option<&AuthKey>,
    upgrade: Option<Upgrade>,
    mut response: Response<UpstreamBody>,
) -> Result<Response<Body>, Refusal> {
    let (Some(key), Some(upgrade)) = (key, upgrade) else {
        return Err(upstream_failed(shared, upstream, UpstreamFailure::Reset));
    };
    let Upgrade {
        protocol,
        client,
        presented,
    } = upgrade;
    let upstream_side = hyper::upgrade::on(&mut response);
    // The tunnel keeps the connection's turn: it is one of the upstream's connections in use.
    let turn = response.body_mut().take_turn();
    let (mut parts, body) = response.into_parts();
    let chosen = parts.headers.get(UPGRADE).cloned().unwrap_or(protocol);
    forward::strip_hop_by_hop(&mut parts.headers);
    tunnel::restore(&mut parts.headers, chosen);
    let idle = snapshot.config.server.idle_timeout;
    let holder = tunnel::KeyHolder::new(&shared.keys, key.clone(), presented, shared.clock.clone());
    shared.tunnels.spawn(client, upstream_side, idle, holder, turn);
    Ok(Response::from_parts(parts, Either::Left(body)))
}
