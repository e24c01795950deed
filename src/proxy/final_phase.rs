//! The request path's final phase (data plane): what every request leaves behind, whatever step
//! it stopped at. The response gets its `RateLimit-*` headers (its `X-Request-Id` it has from
//! [`refuse`] or the exchange); the request
//! counts in `keygate_requests_total` and the duration histogram; its access record goes to the
//! log and among the recent ones; its span ends with its outcome. A refused request also counts
//! under its cause ([`refuse`]).
//!
//! An admitted request keeps its final phase in a guard ([`Final`]) that runs on drop too: a
//! client that leaves (or resets its stream) while the upstream works drops the exchange, and
//! the record, the metric and the recent entry say 499, as nginx logs it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Response, StatusCode};

use super::context::Context;
use super::error::{self, AuthFailure, QuotaScope, Refusal};
use super::state::{Shared, Snapshot};
use super::Body;
use crate::telemetry::access;
use crate::telemetry::traces::{Outcome, RequestSpan};

/// An admitted request's final phase, run exactly once: by [`Final::finish`] with the answer,
/// or, when the exchange is dropped before it has one (the client closed its connection or
/// reset its stream), by the drop, as 499. It holds what the exchange holds anyway: no
/// allocation of its own.
pub(super) struct Final {
    pub snapshot: Arc<Snapshot>,
    pub ctx: Context,
    method: http::Method,
    done: bool,
}

impl Final {
    pub fn new(snapshot: Arc<Snapshot>, ctx: Context, method: http::Method) -> Self {
        Final {
            snapshot,
            ctx,
            method,
            done: false,
        }
    }

    pub fn finish(mut self, response: Response<Body>) -> Response<Body> {
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

/// The response for a refusal, its cause counted and kept for the record; `Connection: close`
/// after one that leaves an HTTP/1 connection unusable (HTTP/2 has no `Connection` header, and
/// its streams are framed apart anyway).
pub(super) fn refuse(
    shared: &Shared,
    snapshot: &Snapshot,
    ctx: &mut Context,
    refusal: Refusal,
    version: http::Version,
) -> Response<Body> {
    ctx.reason = Some(count_cause(shared, snapshot, ctx, &refusal));
    let http1 = version < http::Version::HTTP_2;
    refusal.answer(&snapshot.refusal_headers, http1, &ctx.request_id)
}

/// A refusal's cause, for the log, counted in the metric of its kind; a failed authentication
/// also counts against the client's IP.
fn count_cause(shared: &Shared, snapshot: &Snapshot, ctx: &Context, refusal: &Refusal) -> &'static str {
    match refusal {
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
        Refusal::RateLimited { scope, .. } => {
            if let Some(route) = ctx.route {
                snapshot.routes[route].rate_limited.inc();
            }
            match scope {
                QuotaScope::Key => "rate_limited",
                QuotaScope::Customer => "customer_rate_limited",
            }
        }
        Refusal::QuotaExceeded { scope, .. } => {
            if let Some(route) = ctx.route {
                snapshot.routes[route].quota_exceeded[*scope as usize].inc();
            }
            scope.reason()
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
    }
}

/// The final phase, for every request: the `RateLimit-*` headers, metrics, the access log. The
/// response has its `X-Request-Id` already: a refusal's from [`refuse`], the upstream's answer
/// from the exchange.
pub(super) fn finish(
    snapshot: &Snapshot,
    ctx: &mut Context,
    method: &http::Method,
    mut response: Response<Body>,
) -> Response<Body> {
    if let Some(limit) = ctx.limit {
        limit.write_headers(response.headers_mut(), ctx.policies.as_deref());
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
    super::analytics::count(snapshot, ctx, status);
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
    let key = ctx.key.as_ref();
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
pub(super) fn keeps_records(snapshot: &Snapshot) -> bool {
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
