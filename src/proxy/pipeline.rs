//! The request path: one function of named steps, in the order of SPEC section 1 (data plane).
//!
//! ```text
//!  first, and only with [leaks] endpoints: a path the control plane answers (super::intercept)
//!  admit: in place, nothing awaited                                        refused with
//!   request ─▶ 0 head ───────────────────────────────────────────────────  400, 414, 431
//!           ─▶ 1 route ──────────────────────────────────────────────────  404
//!           ─▶ key table fresh ──────────────────────────────────────────  503
//!           ─▶ 2 credential ─▶ 3 lookup ─▶ 4 environment ────────────────  401 (429)
//!           ─▶ 5 client IP ─▶ 6 permission ─▶ 7 customer ────────────────  403
//!           ─▶ 8 rate limit and quota, when local ───────────────────────  429
//!           ─▶ upstream target ─▶ declared body size ────────────────────  400, 413
//!  the exchange, boxed: admitted requests only (super::exchange)
//!           ─▶ 8 rate limit and quota, when shared ──────────────────────  429
//!           ─▶ 9 forward ───────────────────────────────────  502, 503, 504; 400, 408, 413
//!  every exit
//!           ─▶ final phase: response headers, metrics, access record, span (super::final_phase)
//! ```
//!
//! - 0: the head must have one reading before anything reads it ([`super::head`]): one framing
//!   of the body, one host, at most `server.max_headers` headers (hyper counts them for HTTP/1
//!   only) and, for HTTP/2, a header list of at most `server.max_header_bytes`. A 400 here
//!   also closes an HTTP/1 connection, since what follows on it cannot be trusted to start
//!   where the gateway thinks. Then the method and path are put in one form (or refused with
//!   400), so the path that is routed and checked is the one that is forwarded.
//! - 1 comes first because the route decides the environment, the permission and the upstream.
//! - The key table's freshness comes next: a table not loaded yet, or older than
//!   `store.max_staleness`, can vouch for no key, so every routed request gets 503 (fail
//!   closed) before its credential is read, while one that matches no route keeps its 404.
//! - 2 finds and parses the key; a malformed one (bad checksum) is refused before the lookup.
//! - 3 and 4 both answer with the one identical 401, so a caller cannot tell an unknown key from
//!   a revoked one or one of another environment.
//! - The failed-auth throttle applies only once 2 to 4 have failed: an IP over its allowance
//!   gets 429 instead of 401 for a key that fails, which has cost no more than a hash and a
//!   lookup, while a valid key from the same IP (another client behind the same NAT or load
//!   balancer) still passes.
//! - 5 to 7 are the key's restrictions, cheapest first; they answer 403.
//! - 8 comes last of the key's checks, so that a request refused by one of them does not spend
//!   the key's allowance. It asks the key's rate limit and its quota for the route's `cost` at
//!   once, and charges both or neither: a request the rate limit refuses spends no quota. A local limit is decided in place; a shared one (Redis) is the one
//!   check that awaits, so it runs in the admitted request's exchange.
//! - Two checks of the request as it will go upstream follow the local 8, as they always have:
//!   its target at the upstream (400 should the upstream's path prefix and the normal path not
//!   make a valid one) and a body declared longer than `server.max_request_body` (413). Before
//!   8 they would answer 400 or 413 where a request refused by both gets 429, and a too-large
//!   request would no longer spend its key's allowance; so they stay there, before a shared 8.
//! - 9 forwards; the final phase runs for every request, whatever step it stopped at, and for
//!   an admitted request also when its client leaves first (499).
//! - With `[tracing]` on, a request's span starts as it arrives (so the `traceparent` sent
//!   upstream names it) and ends in the final phase with the outcome; off, each of the three is
//!   one branch on an `Option`.
//! - A request body that breaks on its way upstream (framing hyper cannot read, a client gone
//!   mid-upload) is the client's fault: 400 (499 when it left), never the upstream's 502; so
//!   are one that stalls past `server.body_idle_timeout` (408) and one without a declared
//!   length that grows past `server.max_request_body` (413).

use std::borrow::Cow;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, CONTENT_LENGTH};
use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;
use jiff::Timestamp;

use super::connection::Peer;
use super::context::Context;
use super::credentials::{self, CredentialError, DecodeBuf, Source};
use super::error::{AuthFailure, BadRequest, Denial, Refusal};
use super::exchange::{Admission, Exchange};
use super::final_phase::{finish, refuse};
use super::head::{self, method_is_canonical, Host};
use super::limits::KeyAsk;
use super::overrides;
use super::path::{decode_segment, normalize};
use super::router::Matched;
use super::state::{RouteState, Shared, Snapshot};
use super::table::{AuthKey, Presented};
use super::Body;
use crate::config::UnderscoreHeaders;
use crate::core::secret::{check_format, Format};

/// The rest of a request's way that has to wait for something: an admitted request's exchange
/// or an intercepted path's answer.
pub type Later = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

/// How far a request got without waiting for anything.
pub enum Handled {
    /// Refused, and the final phase done.
    Now(Response<Body>),
    /// Admitted (or intercepted): the rest of its way, boxed.
    Later(Later),
}

/// Answers one request, as far as it can without waiting. Never fails: every refusal is a
/// response.
///
/// Steps 0 to 8 run synchronously, before anything is awaited: a refused request is answered
/// here, and no future is built for it (the request would be moved into one, and it out again,
/// for nothing). Only an admitted request awaits anything: the upstream's answer. That
/// exchange is boxed; it owns a reference count of `shared`, so that it outlives this call.
pub fn handle(shared: &Arc<Shared>, peer: Peer, request: Request<Incoming>) -> Handled {
    // Before step 0: a path the control plane answers on this listener ([leaks]) is not the
    // proxied API's, and carries no key.
    if let Some(intercept) = shared.intercepting(request.uri().path()) {
        let answer = intercept.clone().answer(request);
        return Handled::Later(Box::pin(async move { answer.await.map(Either::Right) }));
    }
    begin(shared, peer, request)
}

/// Steps 0 to 8, then the exchange of an admitted request or the final phase of a refused one.
fn begin(shared: &Arc<Shared>, peer: Peer, request: Request<Incoming>) -> Handled {
    // A guard, not a reference count: a refusal touches no line other workers write; only an
    // admitted request, whose exchange awaits, takes a count of its own.
    let snapshot = shared.snapshot.load();
    let mut ctx = Context::arrived(shared, &snapshot, peer, &request);
    match admit(shared, &snapshot, &mut ctx, &request) {
        Ok(admission) => {
            let snapshot = arc_swap::Guard::into_inner(snapshot);
            let exchange = Exchange::new(snapshot, ctx, peer, admission, request);
            Handled::Later(Box::pin(exchange.run(shared.clone())))
        }
        Err(refusal) => {
            let response = refuse(shared, &snapshot, &mut ctx, refusal, request.version());
            Handled::Now(finish(&snapshot, &mut ctx, request.method(), response))
        }
    }
}

/// Steps 0 to 8 and the checks that follow them (the upstream target, the declared body
/// size) alone, without forwarding, logging or metrics: the gateway's verdict on a request. For
/// benchmarks and checks of the decision itself; a shared (Redis) limit is not checked here.
pub fn decide<B>(shared: &Shared, peer: Peer, request: &Request<B>) -> Result<(), Refusal> {
    let snapshot = shared.snapshot.load();
    let mut ctx = Context::new(&snapshot, peer, request.headers(), HeaderValue::from_static("-"));
    admit(shared, &snapshot, &mut ctx, request).map(drop)
}

/// Everything up to the exchange, in the order of the module doc.
fn admit<B>(
    shared: &Shared,
    snapshot: &Snapshot,
    ctx: &mut Context,
    request: &Request<B>,
) -> Result<Admission, Refusal> {
    let head = read_head(snapshot, request)?;
    let matched = find_route(snapshot, ctx, &head)?;
    check_freshness(shared, snapshot)?;
    let route = &snapshot.routes[matched.route];
    // The clock, read once: a key's expiry (step 3) and its quotas' periods (step 8).
    let now = shared.clock.now();
    let (key, presented, source) = authenticate(shared, snapshot, route, request, ctx, now)
        .map_err(|refusal| throttle(snapshot, ctx.client, refusal))?;
    check_client_ip(&key, ctx.client)?;
    check_permission(route, &key, request)?;
    check_customer(route, &key, matched.customer)?;
    let shared_limit = rate_limit(shared, snapshot, route, ctx, &key, now)?;
    let uri = upstream_target(snapshot, route, &head.path, request)?;
    check_declared_length(snapshot, request)?;
    Ok(Admission {
        key,
        route: matched.route,
        presented,
        source,
        uri,
        host: head.host.and_then(|h| h.to_header_value()),
        shared_limit,
    })
}

/// The head as step 0 reads it: the host the client addressed and the path in normal form.
struct Head<'r> {
    host: Option<Host<'r>>,
    path: Cow<'r, str>,
}

/// Step 0: a head with one reading, a bounded URI, and one form for the method and the path.
fn read_head<'r, B>(snapshot: &Snapshot, request: &'r Request<B>) -> Result<Head<'r>, Refusal> {
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
    Ok(Head { host, path })
}

/// Step 1: the route for the host and the normal path.
fn find_route<'h>(
    snapshot: &Snapshot,
    ctx: &mut Context,
    head: &'h Head<'_>,
) -> Result<Matched<'h>, Refusal> {
    let matched = snapshot
        .router
        .route(head.host.map(|h| h.name), &head.path)
        .ok_or(Refusal::NoRoute)?;
    ctx.route = Some(matched.route);
    Ok(matched)
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

/// Steps 2 to 4: the credential, the key it names, and whether that key may be used on this
/// route now. A key that may counts the request as its use.
fn authenticate<B>(
    shared: &Shared,
    snapshot: &Snapshot,
    route: &RouteState,
    request: &Request<B>,
    ctx: &mut Context,
    now: Timestamp,
) -> Result<(AuthKey, Presented, Source), Refusal> {
    let now = now.as_second();
    let mut buf = [0; 1024];
    let (secret, source) = find_credential(snapshot, request, &mut buf)?;
    let (key, presented) = find_key(shared, ctx, secret, now)?;
    if key.environment != route.environment {
        return Err(Refusal::Unauthenticated(AuthFailure::WrongEnvironment));
    }
    count_use(shared, snapshot, &key, presented, now);
    Ok((key, presented, source))
}

/// Step 2: the credential; a malformed key (bad checksum) is refused before the lookup.
fn find_credential<'b, B>(
    snapshot: &Snapshot,
    request: &'b Request<B>,
    buf: &'b mut DecodeBuf,
) -> Result<(&'b [u8], Source), Refusal> {
    let (secret, source) =
        credentials::extract(request.headers(), &snapshot.schemes, buf).map_err(|e| match e {
            CredentialError::Missing => Refusal::Unauthenticated(AuthFailure::Missing),
            CredentialError::Malformed => Refusal::Unauthenticated(AuthFailure::Malformed),
            CredentialError::Ambiguous => Refusal::BadRequest(BadRequest::AmbiguousCredentials),
        })?;
    if check_format(secret) == Format::Malformed {
        return Err(Refusal::Unauthenticated(AuthFailure::Malformed));
    }
    Ok((secret, source))
}

/// Step 3: the key the secret names, and whether it may be used now. The key, once found, is
/// the context's whatever follows.
fn find_key(
    shared: &Shared,
    ctx: &mut Context,
    secret: &[u8],
    now: i64,
) -> Result<(AuthKey, Presented), Refusal> {
    let hash = shared.hasher().hash(secret);
    let (key, presented) = shared
        .keys
        .lookup(&hash)
        .ok_or(Refusal::Unauthenticated(AuthFailure::Unknown))?;
    ctx.key = Some(key.clone());
    ctx.key_at = now;
    key.usable(presented, now).map_err(Refusal::Unauthenticated)?;
    Ok((key, presented))
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

/// An authenticated request counts as its key's use (and its secret's, for a regenerated key).
fn count_use(shared: &Shared, snapshot: &Snapshot, key: &AuthKey, presented: Presented, now: i64) {
    let previous = matches!(presented, Presented::Previous { .. });
    shared.record_use(key, previous, now, snapshot.config.metrics.per_key);
}

/// Step 5: the client IP inside the key's allowed CIDRs, when it has any.
fn check_client_ip(key: &AuthKey, client: IpAddr) -> Result<(), Refusal> {
    let allowed = key.allowed_ips();
    if allowed.is_empty() || allowed.iter().any(|net| net.contains(&client)) {
        Ok(())
    } else {
        Err(Refusal::Denied(Denial::Ip))
    }
}

/// Step 6: the permission the route requires for this method, or for the one the method
/// overrides (headers, `_method` in the query) name where the route lets them through to the
/// upstream.
fn check_permission<B>(route: &RouteState, key: &AuthKey, request: &Request<B>) -> Result<(), Refusal> {
    let overridden = overridden_method(route, request)?;
    let Some(permissions) = &route.permissions else {
        return Ok(());
    };
    match permissions.required(overridden.as_ref().unwrap_or(request.method())) {
        Some(required) if key.permissions.grants(required) => Ok(()),
        required => Err(Refusal::MissingPermission(required.cloned())),
    }
}

/// The method the request's overrides name, where the route lets them through. Elsewhere the
/// headers are stripped; a `_method` parameter cannot be, so it is refused.
fn overridden_method<B>(route: &RouteState, request: &Request<B>) -> Result<Option<http::Method>, Refusal> {
    let query = request.uri().query();
    if route.allow_method_override {
        overrides::method_override(request.headers(), query)
            .map_err(|_| Refusal::BadRequest(BadRequest::Method))
    } else if overrides::in_query(query) {
        Err(Refusal::BadRequest(BadRequest::Method))
    } else {
        Ok(None)
    }
}

/// Step 7: a customer-scoped key reaches only its own customer (`asked`, the route's customer
/// segment).
fn check_customer(route: &RouteState, key: &AuthKey, asked: Option<&str>) -> Result<(), Refusal> {
    // The route first: a customer id is read (a UTF-8 check) only where a route names one.
    if !route.has_customer_param {
        return Ok(());
    }
    let Some(own) = key.customer_id.as_deref() else {
        return Ok(());
    };
    if asked.map(decode_segment).as_deref() == Some(own) {
        Ok(())
    } else {
        Err(Refusal::Denied(Denial::Customer))
    }
}

/// Step 8, when it is local: the key's rate limit and quota asked for the route's cost, and
/// decided here. A shared one is the exchange's to check: what it asks is returned.
fn rate_limit(
    shared: &Shared,
    snapshot: &Snapshot,
    route: &RouteState,
    ctx: &mut Context,
    key: &AuthKey,
    now: Timestamp,
) -> Result<Option<KeyAsk>, Refusal> {
    let ask = shared.ask(snapshot, key, route.cost);
    if shared.shared_limits.is_some() {
        return Ok(Some(ask));
    }
    match shared.limit_locally(key, &ask, now) {
        Some(verdict) => ctx.apply_limit(&verdict).map(|()| None),
        // A quota lease is pending: the exchange waits for it.
        None => Ok(Some(ask)),
    }
}

/// A body declared longer than `server.max_request_body` is refused before any of it is read;
/// one without a declared length is counted as it streams.
fn check_declared_length<B>(snapshot: &Snapshot, request: &Request<B>) -> Result<(), Refusal> {
    let Some(max) = snapshot.config.server.max_request_body else {
        return Ok(());
    };
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    match declared {
        Some(len) if len > max => Err(Refusal::TooLarge),
        _ => Ok(()),
    }
}

/// The request's target at the upstream: the upstream's path prefix, the normal path, the
/// query as it came.
fn upstream_target<B>(
    snapshot: &Snapshot,
    route: &RouteState,
    path: &str,
    request: &Request<B>,
) -> Result<http::Uri, Refusal> {
    snapshot.upstreams[route.upstream]
        .client
        .uri(path, request.uri().query())
        .map_err(|_| Refusal::BadRequest(BadRequest::AmbiguousPath))
}
