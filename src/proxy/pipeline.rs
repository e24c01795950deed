//! The request path: one function of named steps, in the order of SPEC section 1 (data plane).
//!
//! ```text
//!  request ─▶ 0 sanity ─▶ 1 route ─▶ 2 credential ─▶ 3 lookup ─▶ 4 environment
//!          ─▶ 5 client IP ─▶ 6 permission ─▶ 7 customer ─▶ 8 rate limit ─▶ 9 forward
//!                                         (every exit) ─▶ log + metrics
//! ```
//!
//! - 0: the head must have one reading before anything reads it ([`super::head`]): one framing
//!   of the body, one host, at most `server.max_headers` headers (hyper counts them for HTTP/1
//!   only) and, for HTTP/2, a header list of at most `server.max_header_bytes`. A 400 here
//!   also closes an HTTP/1 connection, since what follows on it cannot be trusted to start
//!   where the gateway thinks. Then the method and path are put in one form (or refused with
//!   400), so the path that is routed and checked is the one that is forwarded.
//! - 1 comes first because the route decides the environment, the permission and the upstream.
//! - 2 finds and parses the key; a malformed one (bad checksum) is refused before the lookup.
//! - 3 and 4 both answer with the one identical 401, so a caller cannot tell an unknown key from
//!   a revoked one or one of another environment.
//! - The failed-auth throttle applies only once 2 to 4 have failed: an IP over its allowance
//!   gets 429 instead of 401 for a key that fails, which has cost no more than a hash and a
//!   lookup, while a valid key from the same IP (another client behind the same NAT or load
//!   balancer) still passes.
//! - 5 to 7 are the key's restrictions, cheapest first; they answer 403.
//! - 8 comes last of the checks so that a request refused for another reason does not spend the
//!   key's allowance. A local limit is decided in place; a shared one (Redis) is the one check
//!   that awaits, so it runs at the start of the admitted request's exchange.
//! - 9 forwards; the final phase (access log, metrics) runs for every request, whatever step it
//!   stopped at. An admitted request keeps it in a guard ([`Final`]) that runs on drop too: a
//!   client that leaves (or resets its stream) while the upstream works drops the exchange,
//!   and the record, the metric and the recent entry say 499, as nginx logs it.
//! - With `[tracing]` on, a request's span starts as it arrives (so the `traceparent` sent
//!   upstream names it) and ends in the final phase with the outcome; off, each of the three is
//!   one branch on an `Option`.
//! - A request body that breaks on its way upstream (framing hyper cannot read, a client gone
//!   mid-upload) is the client's fault: 400 (499 when it left), never the upstream's 502.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, UPGRADE};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Limited};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use super::client_ip::{client_ip, is_trusted};
use super::connection::Peer;
use super::credentials::{self, CredentialError, Source};
use super::error::{self, AuthFailure, BadRequest, Denial, Refusal, UpstreamFailure};
use super::forward::{self, Credentials, Identity, Passing};
use super::head::{self, method_is_canonical};
use super::limits::{Decision, LimitState};
use super::overrides;
use super::path::{decode_segment, normalize};
use super::request_id::{self, X_REQUEST_ID};
use super::state::{RouteState, Shared, Snapshot};
use super::table::{AuthKey, Presented};
use super::tunnel;
use super::sent::{FromClient, OutBody};
use super::upstream::{SendFailure, UpstreamBody, UpstreamClient};
use super::Body;
use crate::config::UnderscoreHeaders;
use crate::core::key::RateLimitSpec;
use crate::core::secret::{check_format, Format};
use crate::telemetry::access;
use crate::telemetry::traces::{Outcome, RequestSpan};

/// What one request carries through the steps, for the final phase.
struct Context {
    start: Instant,
    request_id: HeaderValue,
    client: IpAddr,
    route: Option<usize>,
    key: Option<Arc<AuthKey>>,
    limit: Option<LimitState>,
    /// When the request went upstream, for the time spent there by one abandoned meanwhile.
    sent: Option<Instant>,
    upstream_time: Option<Duration>,
    /// The cause of a refusal, for the log.
    reason: Option<&'static str>,
    /// The request's target as it came, for the access record's `path` (when records are kept). A clone
    /// shares the request's bytes: nothing is copied.
    target: Option<http::Uri>,
    /// Its span, from its arrival, when `[tracing]` exports spans.
    span: Option<RequestSpan>,
}

impl Context {
    /// A request's context as it arrives: nothing decided yet.
    fn new(snapshot: &Snapshot, peer: Peer, headers: &http::HeaderMap, request_id: HeaderValue) -> Self {
        Context {
            start: Instant::now(),
            request_id,
            client: client_ip(peer.addr.ip(), headers, &snapshot.config.server.trusted_proxies),
            route: None,
            key: None,
            limit: None,
            sent: None,
            upstream_time: None,
            reason: None,
            target: None,
            span: None,
        }
    }
}

/// A request that passed every check.
struct Admitted {
    route: usize,
    key: Arc<AuthKey>,
    /// Which of the key's secrets the request presented.
    secret: Presented,
    uri: http::Uri,
    source: Source,
    /// The host the client addressed, in normal form, for the upstream.
    host: Option<HeaderValue>,
    /// Step 8 still to do, in the shared limiter: the key's limit.
    shared_limit: Option<RateLimitSpec>,
}

/// Answers one request. Never fails: every refusal is a response.
///
/// Steps 0 to 8 run synchronously, and only an admitted request awaits anything: the upstream's
/// answer. That exchange is boxed. Its future is most of this one's size, and hyper moves this
/// one by value several times, so unboxed every request, refused ones too, would pay for
/// copying it.
pub async fn handle(shared: &Shared, peer: Peer, request: Request<Incoming>) -> Response<Body> {
    match begin(shared, peer, request) {
        Begun::Answered(response) => response,
        Begun::Admitted(exchange) => exchange.await,
    }
}

/// How far a request got without waiting for anything.
enum Begun<F> {
    /// Refused, and the final phase done.
    Answered(Response<Body>),
    /// Admitted: the rest of its way, boxed.
    Admitted(Pin<Box<F>>),
}

/// An admitted request, on its way upstream.
struct Exchange {
    last: Final,
    version: http::Version,
    shared_limit: Option<RateLimitSpec>,
    upstream: usize,
    outgoing: Request<OutBody>,
    upgrade: Option<Upgrade>,
}

/// What an upgrade request needs from its client for a tunnel: the protocol it asked for and
/// its side of the switch; and which of its key's secrets it was let in with, for the tunnel to
/// close once that secret no longer lets anyone in.
struct Upgrade {
    protocol: HeaderValue,
    client: OnUpgrade,
    secret: Presented,
}

/// An admitted request's final phase, run exactly once: by [`Final::finish`] with the answer,
/// or, when the exchange is dropped before it has one (the client closed its connection or
/// reset its stream), by the drop, as 499. It holds what the exchange held anyway: no
/// allocation of its own.
struct Final {
    snapshot: Arc<Snapshot>,
    ctx: Context,
    method: http::Method,
    done: bool,
}

impl Final {
    fn finish(mut self, response: Response<Body>) -> Response<Body> {
        self.done = true;
        finish(&self.snapshot, &mut self.ctx, &self.method, response)
    }
}

impl Drop for Final {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let ctx = &mut self.ctx;
        ctx.reason = Some(error::CLIENT_CLOSED_REASON);
        if ctx.upstream_time.is_none() {
            ctx.upstream_time = ctx.sent.map(|sent| sent.elapsed());
        }
        account(&self.snapshot, ctx, &self.method, error::client_closed());
    }
}

/// Steps 0 to 8 and the rewrite of the admitted request; the final phase for a refused one.
fn begin(
    shared: &Shared,
    peer: Peer,
    request: Request<Incoming>,
) -> Begun<impl Future<Output = Response<Body>> + Send + '_> {
    let snapshot = shared.snapshot.load_full();
    let mut ctx = Context::new(&snapshot, peer, request.headers(), request_id::of(&request));
    let method = request.method().clone();
    let version = request.version();
    ctx.target = keeps_records(&snapshot).then(|| request.uri().clone());
    ctx.span = shared
        .traces
        .as_ref()
        .map(|traces| traces.begin(request.headers()));
    let outgoing = admit(shared, &snapshot, &mut ctx, &request).and_then(|admitted| {
        let shared_limit = admitted.shared_limit;
        outgoing(&snapshot, &ctx, peer, admitted, request).map(|out| (shared_limit, out))
    });
    match outgoing {
        Ok((shared_limit, (upstream, outgoing, upgrade))) => {
            let exchange = Exchange {
                last: Final {
                    snapshot,
                    ctx,
                    method,
                    done: false,
                },
                version,
                shared_limit,
                upstream,
                outgoing,
                upgrade,
            };
            Begun::Admitted(Box::pin(exchange.run(shared)))
        }
        Err(refusal) => {
            let response = refuse(shared, &snapshot, &mut ctx, refusal, version);
            Begun::Answered(finish(&snapshot, &mut ctx, &method, response))
        }
    }
}

impl Exchange {
    /// A shared step 8, step 9, then the final phase.
    async fn run(self, shared: &Shared) -> Response<Body> {
        let Exchange {
            mut last,
            version,
            shared_limit,
            upstream,
            outgoing,
            upgrade,
        } = self;
        let Final { snapshot, ctx, .. } = &mut last;
        let limited = match (shared_limit, &ctx.key) {
            (Some(spec), Some(key)) => {
                let decision = shared.limit(key, &spec).await;
                apply_limit(ctx, decision)
            }
            _ => Ok(()),
        };
        let forwarded = match limited {
            Ok(()) => forward(shared, snapshot, ctx, (upstream, outgoing, upgrade)).await,
            Err(refusal) => Err(refusal),
        };
        let response = match forwarded {
            Ok(response) => response,
            Err(refusal) => refuse(shared, snapshot, ctx, refusal, version),
        };
        last.finish(response)
    }
}

/// Steps 0 to 8 alone, without forwarding, logging or metrics: the gateway's verdict on a
/// request. For benchmarks and checks of the decision itself; a shared (Redis) limit is not
/// checked here.
pub fn decide<B>(shared: &Shared, peer: Peer, request: &Request<B>) -> Result<(), Refusal> {
    let snapshot = shared.snapshot.load();
    let mut ctx = Context::new(&snapshot, peer, request.headers(), HeaderValue::from_static("-"));
    admit(shared, &snapshot, &mut ctx, request).map(drop)
}

/// Steps 0 to 8.
fn admit<B>(
    shared: &Shared,
    snapshot: &Snapshot,
    ctx: &mut Context,
    request: &Request<B>,
) -> Result<Admitted, Refusal> {
    // 0: a head with one reading, a bounded URI, and one form for the method and the path.
    let server = &snapshot.config.server;
    let http2 = request.version() == http::Version::HTTP_2;
    if request.headers().len() > server.max_headers
        || (http2 && head::header_list_size(request) > server.max_header_bytes)
    {
        return Err(Refusal::TooManyHeaders);
    }
    head::on_the_wire(request).map_err(Refusal::BadRequest)?;
    head::framing(request.headers()).map_err(Refusal::BadRequest)?;
    if server.underscore_headers == UnderscoreHeaders::Refuse {
        head::underscores(request.headers(), &snapshot.key_header).map_err(Refusal::BadRequest)?;
    }
    let host = head::host(request).map_err(Refusal::BadRequest)?;
    let uri_len = request.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > server.max_uri_bytes {
        return Err(Refusal::UriTooLong);
    }
    if !method_is_canonical(request.method()) {
        return Err(Refusal::BadRequest(BadRequest::Method));
    }
    let path = normalize(request.uri().path()).map_err(|_| Refusal::BadRequest(BadRequest::AmbiguousPath))?;

    // 1: the route.
    let matched = snapshot
        .router
        .route(host.map(|h| h.name), &path)
        .ok_or(Refusal::NoRoute)?;
    ctx.route = Some(matched.route);
    let route = &snapshot.routes[matched.route];
    check_freshness(shared, snapshot)?;

    // 2 to 4: the key, from an IP over its failed-auth allowance only if it is valid.
    let now = shared.clock.now().as_second();
    let (key, which, source) = authenticate(shared, snapshot, route, request, now, &mut ctx.key)
        .map_err(|refusal| throttle(snapshot, ctx.client, refusal))?;
    let previous = matches!(which, Presented::Previous { .. });
    shared.record_use(&key, previous, now, snapshot.config.metrics.per_key);

    // 5: the client IP.
    let allowed_ips = key.allowed_ips();
    if !allowed_ips.is_empty() && !allowed_ips.iter().any(|net| net.contains(&ctx.client)) {
        return Err(Refusal::Denied(Denial::Ip));
    }

    // 6: the permission the route requires for this method, or for the one the method overrides
    // (headers, `_method` in the query) name where the route lets them through to the upstream.
    let query = request.uri().query();
    let overridden = if route.allow_method_override {
        overrides::method_override(request.headers(), query)
            .map_err(|_| Refusal::BadRequest(BadRequest::Method))?
    } else if overrides::in_query(query) {
        // The headers are stripped; a `_method` parameter cannot be, so it is refused.
        return Err(Refusal::BadRequest(BadRequest::Method));
    } else {
        None
    };
    check_permission(route, &key, overridden.as_ref().unwrap_or(request.method()))?;

    // 7: a customer-scoped key reaches only its own customer.
    if let (Some(own), true) = (key.customer_id.as_deref(), route.has_customer_param) {
        let asked = matched.customer.map(decode_segment);
        if asked.as_deref() != Some(own) {
            return Err(Refusal::Denied(Denial::Customer));
        }
    }

    // 8: the key's rate limit, here when it is local; a shared one is awaited by the exchange.
    let spec = key.rate_limit().copied().unwrap_or(snapshot.default_limit);
    let shared_limit = match shared.shared_limits {
        Some(_) => Some(spec),
        None => {
            apply_limit(ctx, shared.key_limits.check(key.seq, &spec))?;
            None
        }
    };

    let upstream = &snapshot.upstreams[route.upstream].client;
    let uri = upstream
        .uri(&path, request.uri().query())
        .map_err(|_| Refusal::BadRequest(BadRequest::AmbiguousPath))?;
    Ok(Admitted {
        route: matched.route,
        key,
        secret: which,
        uri,
        source,
        host: host.and_then(|h| h.to_header_value()),
        shared_limit,
    })
}

/// Step 8's outcome: the numbers for the `RateLimit-*` headers either way.
fn apply_limit(ctx: &mut Context, decision: Decision) -> Result<(), Refusal> {
    match decision {
        Decision::Allowed(state) => {
            ctx.limit = Some(state);
            Ok(())
        }
        Decision::Limited { state, retry_after } => {
            ctx.limit = Some(state);
            Err(Refusal::RateLimited { state, retry_after })
        }
    }
}

/// Steps 2 to 4: the credential, the key it names, and whether that key may be used on this
/// route now. The key, once found, goes into `found` whatever follows, so a refusal's access
/// record names the key that was used (revoked, expired, of another environment).
fn authenticate<B>(
    shared: &Shared,
    snapshot: &Snapshot,
    route: &RouteState,
    request: &Request<B>,
    now: i64,
    found: &mut Option<Arc<AuthKey>>,
) -> Result<(Arc<AuthKey>, Presented, Source), Refusal> {
    // 2: the credential; a malformed key (bad checksum) is refused before the lookup.
    let mut buf = [0; 1024];
    let (secret, source) =
        credentials::extract(request.headers(), &snapshot.schemes, &mut buf).map_err(|e| match e {
            CredentialError::Missing => Refusal::Unauthenticated(AuthFailure::Missing),
            CredentialError::Malformed => Refusal::Unauthenticated(AuthFailure::Malformed),
            CredentialError::Ambiguous => Refusal::BadRequest(BadRequest::AmbiguousCredentials),
        })?;
    if check_format(secret) == Format::Malformed {
        return Err(Refusal::Unauthenticated(AuthFailure::Malformed));
    }

    // 3: the key, and whether it may be used now.
    let hash = shared.hasher().hash(secret);
    let (key, which) = shared
        .keys
        .lookup(&hash)
        .ok_or(Refusal::Unauthenticated(AuthFailure::Unknown))?;
    *found = Some(key.clone());
    key.usable(which, now).map_err(Refusal::Unauthenticated)?;

    // 4: the key's environment is the route's.
    if key.environment != route.environment {
        return Err(Refusal::Unauthenticated(AuthFailure::WrongEnvironment));
    }
    Ok((key, which, source))
}

/// A failed authentication from an IP past its allowance of failures: 429 instead of 401. A
/// request without any credential is not a guess, and stays a 401.
fn throttle(snapshot: &Snapshot, client: IpAddr, refusal: Refusal) -> Refusal {
    match refusal {
        Refusal::Unauthenticated(failure) if failure != AuthFailure::Missing => snapshot
            .ip_throttle
            .throttled(client)
            .map_or(refusal, |retry_after| Refusal::IpThrottled { retry_after }),
        refusal => refusal,
    }
}

fn check_permission(route: &RouteState, key: &AuthKey, method: &http::Method) -> Result<(), Refusal> {
    let Some(permissions) = &route.permissions else {
        return Ok(());
    };
    match permissions.required(method) {
        Some(required) if key.permissions.grants(required) => Ok(()),
        required => Err(Refusal::MissingPermission(required.cloned())),
    }
}

/// Fails closed until the key table is loaded (try again in a second), and once it is older
/// than `store.max_staleness` (try again after a sync interval).
pub(crate) fn check_freshness(shared: &Shared, snapshot: &Snapshot) -> Result<(), Refusal> {
    if !shared.sync.is_loaded() {
        return Err(Refusal::stale(Duration::ZERO));
    }
    match shared.staleness(&snapshot.config) {
        None => Ok(()),
        Some(_) => Err(Refusal::stale(snapshot.config.store.sync_interval)),
    }
}

/// The request as the upstream gets it, which upstream, and the client's side of an upgrade.
type Outgoing = (usize, Request<OutBody>, Option<Upgrade>);

/// Step 9, its first half: the request as the upstream gets it, and which upstream.
fn outgoing(
    snapshot: &Snapshot,
    ctx: &Context,
    peer: Peer,
    admitted: Admitted,
    mut request: Request<Incoming>,
) -> Result<Outgoing, Refusal> {
    let server = &snapshot.config.server;
    if let Some(max) = server.max_request_body {
        let declared = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > max) {
            return Err(Refusal::TooLarge);
        }
    }
    let route = &snapshot.routes[admitted.route];
    let key = &admitted.key;
    let identity = Identity {
        key_id: &key.id,
        environment: key.environment.as_str(),
        customer: key.customer_id.as_deref(),
        request_id: &ctx.request_id,
        client: peer.addr.ip(),
        tls: peer.tls,
        host: admitted.host.as_ref(),
    };
    let passing = Passing {
        credentials: (!route.forward_credentials).then(|| Credentials {
            authorization: admitted.source == Source::Authorization,
            header: &snapshot.key_header,
        }),
        preserve_host: route.preserve_host,
        method_override: route.allow_method_override,
        trusted_peer: is_trusted(peer.addr.ip(), &server.trusted_proxies),
    };
    let upstream = &snapshot.upstreams[route.upstream].client;
    let protocol = tunnel::requested(request.version(), request.headers());
    forward::prepare(&mut request, admitted.uri, &identity, &passing, &upstream.host);
    if let Some(span) = &ctx.span {
        span.propagate(request.headers_mut());
    }
    let upgrade = protocol.map(|protocol| {
        tunnel::restore(request.headers_mut(), protocol.clone());
        // The client's side of the switch comes out of the request, so it does not go upstream.
        let client = hyper::upgrade::on(&mut request);
        Upgrade {
            protocol,
            client,
            secret: admitted.secret,
        }
    });
    let limit = server
        .max_request_body
        .map_or(usize::MAX, |max| usize::try_from(max).unwrap_or(usize::MAX));
    Ok((
        route.upstream,
        request.map(|body| Limited::new(FromClient::new(body), limit)),
        upgrade,
    ))
}

/// Step 9, its second half: the upstream's answer.
async fn forward(
    shared: &Shared,
    snapshot: &Snapshot,
    ctx: &mut Context,
    (upstream, outgoing, upgrade): Outgoing,
) -> Result<Response<Body>, Refusal> {
    let upstream = &snapshot.upstreams[upstream];
    let (histogram, upstream) = (&upstream.duration, &upstream.client);
    let sent = Instant::now();
    ctx.sent = Some(sent);
    let result = upstream
        .send(outgoing, snapshot.config.server.body_idle_timeout)
        .await;
    let elapsed = sent.elapsed();
    ctx.upstream_time = Some(elapsed);
    histogram.observe(elapsed.as_secs_f64());
    match result {
        Ok(response) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
            switch(shared, snapshot, upstream, ctx.key.as_ref(), upgrade, response)
        }
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            forward::strip_hop_by_hop(&mut parts.headers);
            Ok(Response::from_parts(parts, Either::Left(body)))
        }
        Err(SendFailure::BodyTooLarge) => Err(Refusal::TooLarge),
        Err(SendFailure::BodyIdle) => Err(Refusal::BodyTimeout),
        Err(SendFailure::ClientBody(fault)) => {
            tracing::debug!(
                upstream = %upstream.name,
                reason = fault.as_str(),
                "the client's request body broke on its way upstream: the client's fault, not \
                 the upstream's"
            );
            Err(Refusal::ClientBody(fault))
        }
        Err(SendFailure::Upstream(failure)) => {
            shared
                .metrics
                .upstream_errors
                .with_label_values(&[&upstream.name, failure.as_str()])
                .inc();
            Err(Refusal::Upstream(failure))
        }
    }
}

/// The upstream switched protocols: the 101 goes back to the client with its upgrade headers,
/// and a tunnel joins the two once both sides have switched. A 101 to a request that asked
/// for no upgrade (or for one the gateway does not tunnel) is the upstream's error: 502.
fn switch(
    shared: &Shared,
    snapshot: &Snapshot,
    upstream: &UpstreamClient,
    key: Option<&Arc<AuthKey>>,
    upgrade: Option<Upgrade>,
    mut response: Response<UpstreamBody>,
) -> Result<Response<Body>, Refusal> {
    let (Some(key), Some(upgrade)) = (key, upgrade) else {
        let failure = UpstreamFailure::Reset;
        shared
            .metrics
            .upstream_errors
            .with_label_values(&[&upstream.name, failure.as_str()])
            .inc();
        return Err(Refusal::Upstream(failure));
    };
    let Upgrade {
        protocol,
        client,
        secret,
    } = upgrade;
    let upstream_side = hyper::upgrade::on(&mut response);
    // The tunnel keeps the connection's turn: it is one of the upstream's connections in use.
    let turn = response.body_mut().take_turn();
    let (mut parts, body) = response.into_parts();
    let chosen = parts.headers.get(UPGRADE).cloned().unwrap_or(protocol);
    forward::strip_hop_by_hop(&mut parts.headers);
    tunnel::restore(&mut parts.headers, chosen);
    let idle = snapshot.config.server.idle_timeout;
    let holder = tunnel::KeyHolder::new(&shared.keys, key.clone(), secret, shared.clock.clone());
    shared.tunnels.spawn(client, upstream_side, idle, holder, turn);
    Ok(Response::from_parts(parts, Either::Left(body)))
}

/// The response for a refusal, with its metric and log cause; `Connection: close` after one
/// that leaves an HTTP/1 connection unusable (HTTP/2 has no `Connection` header, and its
/// streams are framed apart anyway).
fn refuse(
    shared: &Shared,
    snapshot: &Snapshot,
    ctx: &mut Context,
    refusal: Refusal,
    version: http::Version,
) -> Response<Body> {
    let close = refusal.closes_connection() && version < http::Version::HTTP_2;
    let mut response = refusal_response(shared, snapshot, ctx, refusal);
    if close {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn refusal_response(
    shared: &Shared,
    snapshot: &Snapshot,
    ctx: &mut Context,
    refusal: Refusal,
) -> Response<Body> {
    ctx.reason = Some(match &refusal {
        Refusal::Unauthenticated(failure) => {
            shared.auth_failures.inc(failure.as_str());
            if *failure != AuthFailure::Missing {
                snapshot.ip_throttle.record_failure(ctx.client);
            }
            failure.as_str()
        }
        Refusal::IpThrottled { .. } => {
            shared.auth_failures.inc("ip_throttled");
            "ip_throttled"
        }
        Refusal::Denied(denial) => {
            shared.denied.inc(denial.as_str());
            denial.as_str()
        }
        Refusal::MissingPermission(_) => {
            shared.denied.inc("permission");
            "permission"
        }
        Refusal::RateLimited { .. } => {
            if let Some(route) = ctx.route {
                snapshot.routes[route].rate_limited.inc();
            }
            "rate_limited"
        }
        Refusal::BadRequest(why) => why.as_str(),
        Refusal::NoRoute => "no_route",
        Refusal::TooLarge => "body_too_large",
        Refusal::BodyTimeout => "body_timeout",
        Refusal::TooManyHeaders => "too_many_headers",
        Refusal::UriTooLong => "uri_too_long",
        Refusal::Stale { .. } => "stale_key_table",
        Refusal::Upstream(failure) => failure.as_str(),
        Refusal::ClientBody(fault) => fault.as_str(),
    });
    refusal.into_response(&snapshot.www_authenticate)
}

/// The final phase, for every request: response headers, metrics, the access log.
fn finish(
    snapshot: &Snapshot,
    ctx: &mut Context,
    method: &http::Method,
    mut response: Response<Body>,
) -> Response<Body> {
    let headers = response.headers_mut();
    headers.reserve(4);
    headers.insert(X_REQUEST_ID, ctx.request_id.clone());
    if let Some(limit) = ctx.limit {
        limit.write_headers(headers, snapshot.config.rate_limit.draft_headers);
    }
    account(snapshot, ctx, method, response.status());
    response
}

/// The request metric, the access record, the recent entry and the span, for a request answered
/// with `status` (499 for one its client abandoned).
fn account(snapshot: &Snapshot, ctx: &mut Context, method: &http::Method, status: StatusCode) {
    let route = ctx.route.map(|i| &snapshot.routes[i]);
    let elapsed = ctx.start.elapsed();
    match route {
        Some(route) => {
            route.requests.get(status).inc();
            route.duration.observe(elapsed.as_secs_f64());
        }
        None => snapshot.unrouted.get(status).inc(),
    }
    if ctx.target.is_some() {
        record(
            snapshot,
            ctx,
            method,
            route.map(|r| r.name.as_str()),
            status,
            elapsed,
        );
    }
    if let Some(span) = ctx.span.take() {
        end_span(span, ctx, method, route.map(|r| r.name.as_str()), status);
    }
}

/// The span's outcome: the request went upstream (`allowed`) or was refused, and why.
fn end_span(
    span: RequestSpan,
    ctx: &Context,
    method: &http::Method,
    route: Option<&str>,
    status: StatusCode,
) {
    let key = ctx.key.as_deref();
    span.end(&Outcome {
        method,
        route,
        key_id: key.map(|k| &*k.id),
        environment: key.map(|k| k.environment.as_str()),
        status,
        allowed: ctx.sent.is_some(),
        reason: ctx.reason,
        upstream_time: ctx.upstream_time,
    });
}

/// Whether this request's access record goes anywhere: to the access log or the recent ones.
fn keeps_records(snapshot: &Snapshot) -> bool {
    access_log_on(snapshot) || snapshot.recent.capacity() > 0
}

/// Whether this request gets an access record: `logs.access`, and the writer started (by
/// `serve`, unless `RUST_LOG` turns `keygate::access` off).
fn access_log_on(snapshot: &Snapshot) -> bool {
    snapshot.config.logs.access && access::installed()
}

/// The request's access record (SPEC section 7), into this thread's log buffer and among the
/// recent ones.
fn record(
    snapshot: &Snapshot,
    ctx: &Context,
    method: &http::Method,
    route: Option<&str>,
    status: StatusCode,
    elapsed: Duration,
) {
    let time_us = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_micros()).unwrap_or(u64::MAX));
    let record = access::Record {
        time_us,
        request_id: ctx.request_id.as_bytes(),
        route,
        key_id: ctx.key.as_ref().map(|k| &*k.id),
        environment: ctx.key.as_ref().map(|k| k.environment.as_str()),
        client: ctx.client,
        method: method.as_str(),
        path: ctx.target.as_ref().map(|t| t.path().as_bytes()),
        status: status.as_u16(),
        duration: elapsed,
        upstream: ctx.upstream_time,
        reason: ctx.reason,
    };
    if access_log_on(snapshot) {
        access::log(&record);
    }
    snapshot.recent.push(&record);
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_request_span_costs_a_request_without_one_one_pointer() {
        assert_eq!(
            std::mem::size_of::<Option<super::RequestSpan>>(),
            std::mem::size_of::<usize>()
        );
    }
}
