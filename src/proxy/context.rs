//! A request's context (data plane): the one value it carries through the steps of the request
//! path ([`super::pipeline`]) and its exchange with the upstream ([`super::exchange`]), which
//! the final phase ([`super::final_phase`]) reads whatever step the request stopped at.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use http::header::{HeaderMap, HeaderValue};
use http::Request;

use super::client_ip::client_ip;
use super::connection::Peer;
use super::error::{AuthFailure, QuotaScope, Refusal};
use super::final_phase;
use super::limits::{DraftPolicies, LimitKind, LimitState, Refused, Verdict};
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
    pub key: Option<AuthKey>,
    /// When the key was looked up, in Unix seconds: the hour its analytics count is in.
    pub key_at: i64,
    /// Step 8's numbers, for the `RateLimit-*` headers.
    pub limit: Option<LimitState>,
    /// Whether the draft `RateLimit-*` headers are on (`rate_limit.draft_headers`).
    pub draft: bool,
    /// Every limit step 8 met, for the draft headers; kept only when they are on.
    pub policies: Option<Box<DraftPolicies>>,
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
            draft: snapshot.config.rate_limit.draft_headers,
            policies: None,
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
    pub fn authenticated(&self) -> Result<&AuthKey, Refusal> {
        self.key
            .as_ref()
            .ok_or(Refusal::Unauthenticated(AuthFailure::Unknown))
    }

    /// Step 8's outcome: the numbers for the `RateLimit-*` headers either way, and the refusal
    /// of the limit that lifts last.
    pub fn apply_limit(&mut self, verdict: &Verdict) -> Result<(), Refusal> {
        let state = verdict.classic();
        self.limit = Some(state);
        if self.draft {
            self.policies = Some(Box::new(DraftPolicies::of(verdict)));
        }
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
            // The classic headers show the bucket that refused: here the customer's.
            LimitKind::CustomerRate => Refusal::RateLimited {
                state,
                retry_after: refused.retry_after.unwrap_or(1),
                scope: QuotaScope::Customer,
            },
        })
    }
}

fn quota_refusal(scope: QuotaScope, refused: Refused) -> Refusal {
    Refusal::QuotaExceeded {
        scope,
        retry_after: refused.retry_after,
        resets_at: refused.resets_at,
    }
}
