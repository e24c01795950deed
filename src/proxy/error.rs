//! The one place a refused or failed request becomes a response (data plane).
//!
//! [`Refusal`] is closed and mapped by an exhaustive `match`: a new variant forces a decision
//! about its status, body and headers. Bodies are fixed strings that say nothing a caller could
//! learn from; the cause is kept for the log and the metric label.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};

use super::limits::LimitState;
use super::Body;
use crate::core::permission::Permission;

/// Why an authentication failed; the `reason` label of `keygate_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Malformed,
    Unknown,
    Revoked,
    Expired,
    WrongEnvironment,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 6] = [
        AuthFailure::Missing,
        AuthFailure::Malformed,
        AuthFailure::Unknown,
        AuthFailure::Revoked,
        AuthFailure::Expired,
        AuthFailure::WrongEnvironment,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::Unknown => "unknown",
            AuthFailure::Revoked => "revoked",
            AuthFailure::Expired => "expired",
            AuthFailure::WrongEnvironment => "wrong_environment",
        }
    }
}

/// Why an authenticated request was refused; the `reason` label of `keygate_denied_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    Ip,
    Customer,
}

impl Denial {
    pub const ALL: [Denial; 2] = [Denial::Ip, Denial::Customer];

    pub fn as_str(self) -> &'static str {
        match self {
            Denial::Ip => "ip",
            Denial::Customer => "customer",
        }
    }
}

/// What made a request unanswerable as such: the path, a method or the credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRequest {
    AmbiguousPath,
    AmbiguousCredentials,
    Method,
}

impl BadRequest {
    pub fn as_str(self) -> &'static str {
        match self {
            BadRequest::AmbiguousPath => "ambiguous_path",
            BadRequest::AmbiguousCredentials => "ambiguous_credentials",
            BadRequest::Method => "method",
        }
    }
}

/// How an exchange with the upstream failed; the `kind` label of `keygate_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    Connect,
    Timeout,
    Reset,
}

impl UpstreamFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamFailure::Connect => "connect",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::Reset => "reset",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    BadRequest(BadRequest),
    NoRoute,
    Unauthenticated(AuthFailure),
    IpThrottled {
        retry_after: u64,
    },
    Denied(Denial),
    MissingPermission(Option<Permission>),
    RateLimited {
        state: LimitState,
        retry_after: u64,
    },
    TooLarge,
    /// The request URI is longer than `server.max_uri_bytes`.
    UriTooLong,
    /// The key table is older than `store.max_staleness` (or not loaded yet): fail closed.
    /// `retry_after`: whole seconds, at least 1 (a sync interval).
    Stale {
        retry_after: u64,
    },
    Upstream(UpstreamFailure),
}

const NO_ROUTE: &str = r#"{"error":"no route"}"#;
const AUTH_FAILED: &str = r#"{"error":"authentication failed"}"#;
const DENIED: &str = r#"{"error":"permission denied"}"#;
const RATE_LIMITED: &str = r#"{"error":"rate limit exceeded"}"#;
const BAD_REQUEST: &str = r#"{"error":"bad request"}"#;
const TOO_LARGE: &str = r#"{"error":"request body too large"}"#;
const URI_TOO_LONG: &str = r#"{"error":"uri too long"}"#;
const UNAVAILABLE: &str = r#"{"error":"service unavailable"}"#;
const BAD_GATEWAY: &str = r#"{"error":"bad gateway"}"#;
const GATEWAY_TIMEOUT: &str = r#"{"error":"gateway timeout"}"#;

pub const JSON: HeaderValue = HeaderValue::from_static("application/json; charset=utf-8");

/// A JSON response with a fixed body.
pub fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Either::Right(Full::new(body.into())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, JSON);
    response
}

impl Refusal {
    /// Stale, to be tried again after one sync interval: whole seconds, rounded up, at least 1.
    pub fn stale(sync_interval: std::time::Duration) -> Refusal {
        let seconds = sync_interval.as_millis().div_ceil(1000).max(1);
        Refusal::Stale {
            retry_after: u64::try_from(seconds).unwrap_or(u64::MAX),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::NoRoute => StatusCode::NOT_FOUND,
            Refusal::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Refusal::IpThrottled { .. } | Refusal::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refusal::Denied(_) | Refusal::MissingPermission(_) => StatusCode::FORBIDDEN,
            Refusal::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::UriTooLong => StatusCode::URI_TOO_LONG,
            Refusal::Stale { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Upstream(UpstreamFailure::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            Refusal::Upstream(UpstreamFailure::Connect | UpstreamFailure::Reset) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The response; `www_authenticate` is the configured realm's challenge.
    pub fn into_response(self, www_authenticate: &HeaderValue) -> Response<Body> {
        let status = self.status();
        let body: Bytes = match &self {
            Refusal::BadRequest(_) => BAD_REQUEST.into(),
            Refusal::NoRoute => NO_ROUTE.into(),
            Refusal::Unauthenticated(_) => AUTH_FAILED.into(),
            Refusal::IpThrottled { .. } | Refusal::RateLimited { .. } => RATE_LIMITED.into(),
            Refusal::Denied(_) | Refusal::MissingPermission(None) => DENIED.into(),
            Refusal::MissingPermission(Some(permission)) => serde_json::json!({
                "error": "permission denied",
                "required_permission": permission.as_str(),
            })
            .to_string()
            .into(),
            Refusal::TooLarge => TOO_LARGE.into(),
            Refusal::UriTooLong => URI_TOO_LONG.into(),
            Refusal::Stale { .. } => UNAVAILABLE.into(),
            Refusal::Upstream(UpstreamFailure::Timeout) => GATEWAY_TIMEOUT.into(),
            Refusal::Upstream(UpstreamFailure::Connect | UpstreamFailure::Reset) => BAD_GATEWAY.into(),
        };
        let mut response = json_response(status, body);
        let headers = response.headers_mut();
        match self {
            Refusal::Unauthenticated(_) => {
                headers.insert(WWW_AUTHENTICATE, www_authenticate.clone());
            }
            Refusal::IpThrottled { retry_after }
            | Refusal::RateLimited { retry_after, .. }
            | Refusal::Stale { retry_after } => {
                headers.insert(RETRY_AFTER, super::limits::number(retry_after));
            }
            Refusal::BadRequest(_)
            | Refusal::NoRoute
            | Refusal::Denied(_)
            | Refusal::MissingPermission(_)
            | Refusal::TooLarge
            | Refusal::UriTooLong
            | Refusal::Upstream(_) => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_stale_table_is_retried_after_a_sync_interval_in_whole_seconds_at_least_one() {
        for (interval_ms, seconds) in [
            (0, "1"),
            (100, "1"),
            (1000, "1"),
            (1500, "2"),
            (3_600_000, "3600"),
        ] {
            let response = Refusal::stale(Duration::from_millis(interval_ms))
                .into_response(&HeaderValue::from_static("Basic realm=\"k\""));
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(response.headers()[RETRY_AFTER], seconds, "{interval_ms} ms");
        }
    }
}
