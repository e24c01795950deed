//! A request's context (data plane): the one value it carries through the steps of the request
//! path ([`super::pipeline`]) and its exchange with the upstream ([`super::exchange`]), which
//! the final phase ([`super::final_phase`]) reads whatever step the request stopped at.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{HeaderMap, HeaderValue};
use http::Request;

use super::client_ip::client_ip;
use super::connection::Peer;
use super::error::{AuthFailure, QuotaScope, Refusal};
use super::final_phase;
use super::limits::{LimitKind, LimitState, Policy, Refused, Verdict};
use super::request_id;
use super::state::{Shared, Snapshot};
use super::table::AuthKey;
use crate::telemetry::traces::RequestSpan;

/// What one request carries through the steps, for the final phase.
pub(super) struct Context {
    pub start: Instant,
    pub request_id: HeaderValue,
    pub client: IpAddr,
    /// The route of step 1.
    pub route: Option<usize>,
    /// The key the credential named, from step 3 on whatever follows, so that a refusal's access
    /// record names the key that was used (revoked, expired, of another environment).
    pub key: Option<Arc<AuthKey>>,
    /// When the key was looked up, in Unix seconds: the hour its analytics count is in.
    pub key_at: i64,
    /// Step 8's numbers, for the `RateLimit-*` headers.
    pub limit: Option<LimitState>,
    /// The key's quota after step 8, for the draft `RateLimit-*` headers.
    pub quota: Option<Policy>,
    /// When the request went upstream, for the time spent there by one abandoned meanwhile.
    pub sent: Option<Instant>,
    pub upstream_time: Option<Duration>,
    /// The cause of a refusal, for the log.
    pub reason: Option<&'static str>,
    /// The request's target as it came, for the access record's `path` (when records are kept).
    /// A clone shares the request's bytes: nothing is copied.
    pub target: Option<http::Uri>,
    /// Its span, from its arrival, when `[tracing]` exports spans.
    pub span: Option<RequestSpan>,
}

impl Context {
    /// A request's context as it arrives: nothing decided yet.
    pub fn new(snapshot: &Snapshot, peer: Peer, headers: &HeaderMap, request_id: HeaderValue) -> Self {
        Context {
            start: Instant::now(),
            request_id,
            client: client_ip(peer.addr.ip(), headers, &snapshot.config.server.trusted_proxies),
            route: None,
            key: None,
            key_at: 0,
            limit: None,
            quota: None,
            sent: None,
            upstream_time: None,
            reason: None,
            target: None,
            span: None,
        }
    }

    /// The context of a request the gateway answers: with its id, its target when records are
    /// kept, and its span when spans are exported.
    pub fn arrived<B>(shared: &Shared, snapshot: &Snapshot, peer: Peer, request: &Request<B>) -> Self {
        let mut ctx = Context::new(snapshot, peer, request.headers(), request_id::of(request));
        ctx.target = final_phase::keeps_records(snapshot).then(|| request.uri().clone());
        ctx.span = shared
            .traces
            .as_ref()
            .map(|traces| traces.begin(request.headers()));
        ctx
    }

    /// The key an admitted request authenticated with. Every admitted request has one; one
    /// without would be refused as unknown (fail closed), never forwarded.
    pub fn authenticated(&self) -> Result<&Arc<AuthKey>, Refusal> {
        self.key
            .as_ref()
            .ok_or(Refusal::Unauthenticated(AuthFailure::Unknown))
    }

    /// Step 8's outcome: the numbers for the `RateLimit-*` headers either way, and the refusal
    /// of the limit that lifts last.
    pub fn apply_limit(&mut self, verdict: &Verdict) -> Result<(), Refusal> {
        let state = verdict.key_decision().state();
        self.limit = Some(state);
        self.quota = verdict.policy(LimitKind::KeyQuota).copied();
        let Some(refused) = verdict.refused else {
            return Ok(());
        };
        Err(match refused.by {
            LimitKind::KeyQuota => quota_refusal(QuotaScope::Key, refused),
            LimitKind::CustomerQuota => quota_refusal(QuotaScope::Customer, refused),
            LimitKind::KeyRate => Refusal::RateLimited {
                state,
                retry_after: refused.retry_after.unwrap_or(1),
                scope: QuotaScope::Key,
            },
            // The refusal's headers show the bucket that refused: the customer's.
            LimitKind::CustomerRate => {
                let state = verdict.policy(LimitKind::CustomerRate).map_or(state, rate_state);
                self.limit = Some(state);
                Refusal::RateLimited {
                    state,
                    retry_after: refused.retry_after.unwrap_or(1),
                    scope: QuotaScope::Customer,
                }
            }
        })
    }
}

/// A rate limit's policy as the numbers of the classic `RateLimit-*` headers.
fn rate_state(policy: &Policy) -> LimitState {
    let narrow = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    LimitState {
        limit: narrow(policy.limit),
        remaining: narrow(policy.remaining),
        reset: policy.reset.unwrap_or(0),
        window: policy.window.unwrap_or(1),
    }
}

fn quota_refusal(scope: QuotaScope, refused: Refused) -> Refusal {
    Refusal::QuotaExceeded {
        scope,
        retry_after: refused.retry_after,
        resets_at: refused.resets_at,
    }
}
