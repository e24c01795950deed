//! The one place a refused or failed request becomes a response (data plane).
//!
//! [`Refusal`] is closed and mapped by an exhaustive `match`: a new variant forces a decision
//! about its status, body and headers. Bodies are fixed strings that say nothing a caller could
//! learn from; the cause is kept for the log and the metric label. Every refusal is
//! `Cache-Control: no-store`: it answers one request at one moment (a key revoked a second ago,
//! a limit that refills), and no cache between the client and the gateway may replay it.

use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderName, HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, RETRY_AFTER,
    WWW_AUTHENTICATE,
};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};

use jiff::Timestamp;

use super::limits::LimitState;
use super::request_id::X_REQUEST_ID;
use super::Body;
use crate::core::permission::Permission;

/// Whose limit refused a request, the key's or its customer's: the `scope` label of
/// `keygate_quota_exceeded_total`, and the access record's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaScope {
    Key,
    Customer,
}

impl QuotaScope {
    pub const ALL: [QuotaScope; 2] = [QuotaScope::Key, QuotaScope::Customer];

    pub fn as_str(self) -> &'static str {
        match self {
            QuotaScope::Key => "key",
            QuotaScope::Customer => "customer",
        }
    }

    /// The access record's reason.
    pub fn reason(self) -> &'static str {
        match self {
            QuotaScope::Key => "quota",
            QuotaScope::Customer => "customer_quota",
        }
    }
}

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

/// What made a request unanswerable as such: its framing, its host, the path, a method, a
/// header name or the credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRequest {
    /// `Transfer-Encoding` other than exactly one final `chunked`.
    TransferEncoding,
    /// `Content-Length` together with `Transfer-Encoding`: the request smuggling classic.
    LengthAndEncoding,
    /// `Content-Length` repeated, or not a plain decimal number.
    ContentLength,
    /// No `Host` in HTTP/1.1, two of them, or one that disagrees with the target's authority.
    Host,
    /// A header name with `_` while `server.underscore_headers = "refuse"`.
    UnderscoreHeader,
    AmbiguousPath,
    AmbiguousCredentials,
    Method,
}

impl BadRequest {
    pub fn as_str(self) -> &'static str {
        match self {
            BadRequest::TransferEncoding => "transfer_encoding",
            BadRequest::LengthAndEncoding => "length_and_encoding",
            BadRequest::ContentLength => "content_length",
            BadRequest::Host => "host",
            BadRequest::UnderscoreHeader => "underscore_header",
            BadRequest::AmbiguousPath => "ambiguous_path",
            BadRequest::AmbiguousCredentials => "ambiguous_credentials",
            BadRequest::Method => "method",
        }
    }
}

/// How an exchange with the upstream failed; the `kind` label of `keygate_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// No connection within `connect_timeout`: refused, unreachable, or none free at the cap.
    Connect,
    /// The TLS handshake with an `https` upstream failed: a certificate not trusted or for
    /// another name, a client certificate refused, no common protocol.
    Tls,
    Timeout,
    Reset,
    /// Every connection the upstream may have (`pool_max_connections`) stayed busy for the
    /// request's `queue_timeout`: 503, to be tried again shortly.
    Saturated,
}

impl UpstreamFailure {
    /// Every kind, in the order of their `as usize`.
    pub const ALL: [UpstreamFailure; 5] = [
        UpstreamFailure::Connect,
        UpstreamFailure::Tls,
        UpstreamFailure::Timeout,
        UpstreamFailure::Reset,
        UpstreamFailure::Saturated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamFailure::Connect => "connect",
            UpstreamFailure::Tls => "tls",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::Reset => "reset",
            UpstreamFailure::Saturated => "saturated",
        }
    }
}

/// How a client's request body broke on its way upstream: the client's fault, never the
/// upstream's, so neither `keygate_upstream_errors_total` nor a warning about the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    /// The body's framing could not be read (an invalid chunk size, a bare LF in a chunk line):
    /// 400.
    Malformed,
    /// The client went away mid-body (closed before its Content-Length or its last chunk, or
    /// reset its stream): 499, which only the access record and the metric see.
    Gone,
}

impl BodyFault {
    pub fn as_str(self) -> &'static str {
        match self {
            BodyFault::Malformed => "bad_body",
            BodyFault::Gone => CLIENT_CLOSED_REASON,
        }
    }
}

/// The access record's reason of a request its client abandoned (status 499).
pub const CLIENT_CLOSED_REASON: &str = "client_closed";

/// 499, "client closed request", as nginx logs a request whose client left before the answer.
/// Never seen by the client; it is the access record's and the metric's status.
pub fn client_closed() -> StatusCode {
    StatusCode::from_u16(499).expect("499 is a three-digit status")
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
        /// Whose rate limit refused: the key's own, or its customer's.
        scope: QuotaScope,
    },
    /// A quota is spent for this period. `retry_after` and `resets_at`: when it renews; `None`
    /// for credits that only an operator tops up (period `none`).
    QuotaExceeded {
        scope: QuotaScope,
        retry_after: Option<u64>,
        resets_at: Option<Timestamp>,
    },
    TooLarge,
    /// The request body paused past `server.body_idle_timeout` before the upstream answered.
    BodyTimeout,
    /// More request headers than `server.max_headers` (hyper counts them for HTTP/1 only).
    TooManyHeaders,
    /// The request URI is longer than `server.max_uri_bytes`.
    UriTooLong,
    /// The key table is older than `store.max_staleness` (or not loaded yet): fail closed.
    /// `retry_after`: whole seconds, at least 1 (a sync interval).
    Stale {
        retry_after: u64,
    },
    Upstream(UpstreamFailure),
    /// The client's request body broke while it streamed upstream.
    ClientBody(BodyFault),
}

const NO_ROUTE: &str = r#"{"error":"no route"}"#;
const AUTH_FAILED: &str = r#"{"error":"authentication failed"}"#;
const DENIED: &str = r#"{"error":"permission denied"}"#;
const RATE_LIMITED: &str = r#"{"error":"rate limit exceeded"}"#;
/// Not the key's limit: this address failed authentication too often, whatever key it sends.
const AUTH_THROTTLED: &str = r#"{"error":"too many failed authentications"}"#;
pub(super) const BAD_REQUEST: &str = r#"{"error":"bad request"}"#;
const TOO_LARGE: &str = r#"{"error":"request body too large"}"#;
const REQUEST_TIMEOUT: &str = r#"{"error":"request timeout"}"#;
pub(super) const HEADERS_TOO_LARGE: &str = r#"{"error":"request header fields too large"}"#;
pub(super) const URI_TOO_LONG: &str = r#"{"error":"uri too long"}"#;
const UNAVAILABLE: &str = r#"{"error":"service unavailable"}"#;
const BAD_GATEWAY: &str = r#"{"error":"bad gateway"}"#;
const GATEWAY_TIMEOUT: &str = r#"{"error":"gateway timeout"}"#;
const CLIENT_CLOSED: &str = r#"{"error":"client closed request"}"#;

/// `{"error":"quota exceeded","resets_at":...}`: when the quota renews, `null` for credits that
/// never do. Only refused requests of spent quotas pay for the formatting.
fn quota_exceeded(resets_at: Option<Timestamp>) -> Bytes {
    serde_json::json!({
        "error": "quota exceeded",
        "resets_at": resets_at.map(|at| at.to_string()),
    })
    .to_string()
    .into()
}

const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

pub const JSON: HeaderValue = HeaderValue::from_static("application/json; charset=utf-8");

/// Room for every header a refusal can carry: its own (content type, `Cache-Control`, the
/// challenge or `Retry-After`), and those the final phase adds (`X-Request-Id`, the five
/// `RateLimit` ones, `Connection`). Sized once, so no insert makes the map grow: growing is a
/// reallocation and a rehash on every refused request.
const REFUSAL_HEADERS: usize = 12;

/// Stands for the request's id in a template, until the final phase puts the id in its place.
const NO_ID_YET: HeaderValue = HeaderValue::from_static("-");

/// The header maps refusals start from, built once per config (the challenge names its realm)
/// and cloned for each refusal: a clone is two copies, where building a map is a hash and a
/// probe per header. Each holds its headers in the order they go on the wire, `X-Request-Id`
/// last: [`Refusal::answer`] replaces its value in place, which needs no room.
pub struct RefusalHeaders {
    plain: HeaderMap,
    /// Ends an HTTP/1 connection whose next request cannot be trusted to start where it seems.
    closing: HeaderMap,
    /// A 401's: the realm's challenge.
    challenge: HeaderMap,
    /// Its `Retry-After` value is replaced by the refusal's own.
    retry: HeaderMap,
}

impl RefusalHeaders {
    pub fn new(www_authenticate: HeaderValue) -> Self {
        RefusalHeaders {
            plain: template(None),
            closing: template(Some((CONNECTION, HeaderValue::from_static("close")))),
            challenge: template(Some((WWW_AUTHENTICATE, www_authenticate))),
            retry: template(Some((RETRY_AFTER, HeaderValue::from_static("1")))),
        }
    }
}

/// A refusal's headers, `extra` between its own two and the id. Every refusal is `no-store`:
/// it is about this request and this moment, and no cache may keep it.
fn template(extra: Option<(HeaderName, HeaderValue)>) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(REFUSAL_HEADERS);
    headers.insert(CONTENT_TYPE, JSON);
    headers.insert(CACHE_CONTROL, NO_STORE);
    if let Some((name, value)) = extra {
        headers.insert(name, value);
    }
    headers.insert(X_REQUEST_ID, NO_ID_YET);
    headers
}

/// A JSON response with a fixed body and the given headers.
fn json_response(status: StatusCode, body: Bytes, headers: HeaderMap) -> Response<Body> {
    let mut response = Response::new(Either::Right(Full::new(body)));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
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
            Refusal::BadRequest(_) | Refusal::ClientBody(BodyFault::Malformed) => StatusCode::BAD_REQUEST,
            Refusal::ClientBody(BodyFault::Gone) => client_closed(),
            Refusal::NoRoute => StatusCode::NOT_FOUND,
            Refusal::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Refusal::IpThrottled { .. } | Refusal::RateLimited { .. } | Refusal::QuotaExceeded { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Refusal::Denied(_) | Refusal::MissingPermission(_) => StatusCode::FORBIDDEN,
            Refusal::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Refusal::TooManyHeaders => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Refusal::UriTooLong => StatusCode::URI_TOO_LONG,
            Refusal::Stale { .. } | Refusal::Upstream(UpstreamFailure::Saturated) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Refusal::Upstream(UpstreamFailure::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            Refusal::Upstream(UpstreamFailure::Connect | UpstreamFailure::Tls | UpstreamFailure::Reset) => {
                StatusCode::BAD_GATEWAY
            }
        }
    }

    /// Whether the connection must close after this answer: after a request whose framing or
    /// head could be read two ways, nothing more on that connection can be trusted to start
    /// where the gateway thinks it does.
    pub fn closes_connection(&self) -> bool {
        match self {
            // The rest of a stalled body may still come, and would be read as a request.
            // A body that broke leaves its rest unread, or the client gone.
            Refusal::BadRequest(_)
            | Refusal::TooManyHeaders
            | Refusal::BodyTimeout
            | Refusal::ClientBody(_) => true,
            Refusal::NoRoute
            | Refusal::Unauthenticated(_)
            | Refusal::IpThrottled { .. }
            | Refusal::Denied(_)
            | Refusal::MissingPermission(_)
            | Refusal::RateLimited { .. }
            | Refusal::QuotaExceeded { .. }
            | Refusal::TooLarge
            | Refusal::UriTooLong
            | Refusal::Stale { .. }
            | Refusal::Upstream(_) => false,
        }
    }

    /// The response, its headers cloned from `templates`; `http1`: whether it may close its
    /// connection with `Connection: close` (HTTP/2 has no such header, and its streams are
    /// framed apart anyway).
    pub fn into_response(self, templates: &RefusalHeaders, http1: bool) -> Response<Body> {
        self.answer(templates, http1, &NO_ID_YET)
    }

    /// The same, with the request's id in its `X-Request-Id`: written in the template's own
    /// entry, found by a walk over its four or five headers rather than by a hash and a probe.
    pub fn answer(self, templates: &RefusalHeaders, http1: bool, request_id: &HeaderValue) -> Response<Body> {
        let mut headers = self.headers(templates, http1);
        match headers.iter_mut().find(|(name, _)| *name == X_REQUEST_ID) {
            Some((_, id)) => *id = request_id.clone(),
            None => drop(headers.insert(X_REQUEST_ID, request_id.clone())),
        }
        json_response(self.status(), self.body(), headers)
    }

    /// A fixed string that says nothing a caller could learn from.
    fn body(&self) -> Bytes {
        match self {
            Refusal::BadRequest(_) | Refusal::ClientBody(BodyFault::Malformed) => BAD_REQUEST.into(),
            Refusal::ClientBody(BodyFault::Gone) => CLIENT_CLOSED.into(),
            Refusal::NoRoute => NO_ROUTE.into(),
            Refusal::Unauthenticated(_) => AUTH_FAILED.into(),
            Refusal::IpThrottled { .. } => AUTH_THROTTLED.into(),
            Refusal::RateLimited { .. } => RATE_LIMITED.into(),
            Refusal::QuotaExceeded { resets_at, .. } => quota_exceeded(*resets_at),
            Refusal::Denied(_) | Refusal::MissingPermission(None) => DENIED.into(),
            Refusal::MissingPermission(Some(permission)) => serde_json::json!({
                "error": "permission denied",
                "required_permission": permission.as_str(),
            })
            .to_string()
            .into(),
            Refusal::TooLarge => TOO_LARGE.into(),
            Refusal::BodyTimeout => REQUEST_TIMEOUT.into(),
            Refusal::TooManyHeaders => HEADERS_TOO_LARGE.into(),
            Refusal::UriTooLong => URI_TOO_LONG.into(),
            Refusal::Stale { .. } | Refusal::Upstream(UpstreamFailure::Saturated) => UNAVAILABLE.into(),
            Refusal::Upstream(UpstreamFailure::Timeout) => GATEWAY_TIMEOUT.into(),
            Refusal::Upstream(UpstreamFailure::Connect | UpstreamFailure::Tls | UpstreamFailure::Reset) => {
                BAD_GATEWAY.into()
            }
        }
    }

    fn headers(&self, templates: &RefusalHeaders, http1: bool) -> HeaderMap {
        let closes = http1 && self.closes_connection();
        match *self {
            Refusal::Unauthenticated(_) => templates.challenge.clone(),
            Refusal::IpThrottled { retry_after }
            | Refusal::RateLimited { retry_after, .. }
            | Refusal::QuotaExceeded {
                retry_after: Some(retry_after),
                ..
            }
            | Refusal::Stale { retry_after } => {
                let mut headers = templates.retry.clone();
                headers.insert(RETRY_AFTER, super::limits::number(retry_after));
                headers
            }
            // A turn at the upstream comes within moments, or the upstream is stalled; either
            // way a second is the shortest wait the header can say: the template's.
            Refusal::Upstream(UpstreamFailure::Saturated) => templates.retry.clone(),
            Refusal::BadRequest(_)
            | Refusal::ClientBody(_)
            | Refusal::NoRoute
            | Refusal::Denied(_)
            | Refusal::MissingPermission(_)
            | Refusal::TooLarge
            | Refusal::BodyTimeout
            | Refusal::TooManyHeaders
            | Refusal::UriTooLong
            // Credits that never renew: no wait would help.
            | Refusal::QuotaExceeded {
                retry_after: None, ..
            }
            | Refusal::Upstream(
                UpstreamFailure::Connect
                | UpstreamFailure::Tls
                | UpstreamFailure::Timeout
                | UpstreamFailure::Reset,
            ) => {
                if closes {
                    templates.closing.clone()
                } else {
                    templates.plain.clone()
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_refusal() -> Vec<Refusal> {
        let state = LimitState {
            limit: 1,
            remaining: 0,
            reset: 1,
            window: 1,
        };
        vec![
            Refusal::BadRequest(BadRequest::TransferEncoding),
            Refusal::NoRoute,
            Refusal::Unauthenticated(AuthFailure::Unknown),
            Refusal::IpThrottled { retry_after: 3 },
            Refusal::Denied(Denial::Ip),
            Refusal::MissingPermission(None),
            Refusal::MissingPermission(Some("customer:write".parse().unwrap())),
            Refusal::RateLimited {
                state,
                retry_after: 1,
                scope: QuotaScope::Key,
            },
            Refusal::QuotaExceeded {
                scope: QuotaScope::Key,
                retry_after: Some(30),
                resets_at: Some("2026-12-08T00:00:00Z".parse().unwrap()),
            },
            Refusal::QuotaExceeded {
                scope: QuotaScope::Customer,
                retry_after: None,
                resets_at: None,
            },
            Refusal::TooLarge,
            Refusal::BodyTimeout,
            Refusal::TooManyHeaders,
            Refusal::UriTooLong,
            Refusal::stale(std::time::Duration::from_secs(1)),
            Refusal::Upstream(UpstreamFailure::Connect),
            Refusal::Upstream(UpstreamFailure::Tls),
            Refusal::Upstream(UpstreamFailure::Timeout),
            Refusal::Upstream(UpstreamFailure::Reset),
            Refusal::Upstream(UpstreamFailure::Saturated),
            Refusal::ClientBody(BodyFault::Malformed),
            Refusal::ClientBody(BodyFault::Gone),
        ]
    }

    #[test]
    fn no_refusal_may_be_cached() {
        let templates = RefusalHeaders::new(HeaderValue::from_static("Basic realm=\"keygate\""));
        for refusal in every_refusal() {
            let response = refusal.clone().into_response(&templates, true);
            assert_eq!(response.headers()[CACHE_CONTROL], "no-store", "{refusal:?}");
            assert_eq!(response.headers()[CONTENT_TYPE], JSON, "{refusal:?}");
        }
    }

    #[test]
    fn a_refusal_s_headers_are_in_wire_order_with_the_id_last() {
        let templates = RefusalHeaders::new(HeaderValue::from_static("Basic realm=\"k\""));
        let names = |refusal: Refusal, http1| {
            let response = refusal.into_response(&templates, http1);
            let names: Vec<_> = response
                .headers()
                .keys()
                .map(|name| name.as_str().to_owned())
                .collect();
            names.join(" ")
        };
        let own = "content-type cache-control";
        for (refusal, http1, extra) in [
            (
                Refusal::Unauthenticated(AuthFailure::Unknown),
                true,
                " www-authenticate",
            ),
            (Refusal::IpThrottled { retry_after: 3 }, true, " retry-after"),
            (Refusal::BadRequest(BadRequest::Host), true, " connection"),
            (Refusal::BadRequest(BadRequest::Host), false, ""),
            (Refusal::NoRoute, true, ""),
        ] {
            assert_eq!(
                names(refusal.clone(), http1),
                format!("{own}{extra} x-request-id"),
                "{refusal:?}"
            );
        }
    }

    #[test]
    fn the_request_id_takes_the_place_of_the_template_s_own_last_entry() {
        let templates = RefusalHeaders::new(HeaderValue::from_static("Basic realm=\"k\""));
        let id = HeaderValue::from_static("0123abcd");
        for refusal in every_refusal() {
            let plain = refusal.clone().into_response(&templates, true);
            let answered = refusal.clone().answer(&templates, true, &id);
            assert_eq!(answered.headers().len(), plain.headers().len(), "{refusal:?}");
            let last = answered
                .headers()
                .iter()
                .last()
                .map(|(name, value)| (name.clone(), value.clone()));
            assert_eq!(last, Some((X_REQUEST_ID, id.clone())), "{refusal:?}");
        }
    }

    #[test]
    fn a_spent_quota_says_when_it_renews_and_credits_that_never_do_give_no_retry() {
        let templates = RefusalHeaders::new(HeaderValue::from_static("Basic realm=\"k\""));
        let renews = Refusal::QuotaExceeded {
            scope: QuotaScope::Key,
            retry_after: Some(30),
            resets_at: Some("2026-12-08T00:00:00Z".parse().unwrap()),
        }
        .into_response(&templates, true);
        assert_eq!(renews.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(renews.headers()[RETRY_AFTER], "30");
        let body = full_body(renews);
        assert_eq!(
            body,
            r#"{"error":"quota exceeded","resets_at":"2026-12-08T00:00:00Z"}"#.as_bytes()
        );
        let credits = Refusal::QuotaExceeded {
            scope: QuotaScope::Customer,
            retry_after: None,
            resets_at: None,
        }
        .into_response(&templates, true);
        assert!(credits.headers().get(RETRY_AFTER).is_none());
        assert_eq!(
            full_body(credits),
            r#"{"error":"quota exceeded","resets_at":null}"#.as_bytes()
        );
    }

    fn full_body(response: Response<Body>) -> Bytes {
        match response.into_body() {
            Either::Right(full) => futures_body(full),
            Either::Left(_) => panic!("the gateway's own body"),
        }
    }

    #[test]
    fn too_many_headers_is_431_with_a_json_body() {
        let response =
            Refusal::TooManyHeaders.into_response(&RefusalHeaders::new(HeaderValue::from_static("x")), true);
        assert_eq!(response.status(), 431);
        let body = match response.into_body() {
            Either::Right(full) => full,
            Either::Left(_) => panic!("the gateway's own body"),
        };
        let bytes = futures_body(body);
        assert_eq!(bytes, HEADERS_TOO_LARGE.as_bytes());
    }

    /// The bytes of a full body, without a runtime: `Full` is ready at once.
    fn futures_body(body: Full<Bytes>) -> Bytes {
        use http_body::Body as _;
        let mut body = std::pin::pin!(body);
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match body.as_mut().poll_frame(&mut cx) {
            std::task::Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
            _ => Bytes::new(),
        }
    }

    #[test]
    fn only_refusals_of_an_unreadable_head_close_the_connection() {
        for refusal in every_refusal() {
            let closes = matches!(
                refusal,
                Refusal::BadRequest(_)
                    | Refusal::TooManyHeaders
                    | Refusal::BodyTimeout
                    | Refusal::ClientBody(_)
            );
            assert_eq!(refusal.closes_connection(), closes, "{refusal:?}");
        }
    }

    #[test]
    fn a_stale_table_is_retried_after_a_sync_interval_in_whole_seconds_at_least_one() {
        for (interval_ms, seconds) in [
            (0, "1"),
            (100, "1"),
            (1000, "1"),
            (1500, "2"),
            (3_600_000, "3600"),
        ] {
            let response = Refusal::stale(std::time::Duration::from_millis(interval_ms)).into_response(
                &RefusalHeaders::new(HeaderValue::from_static("Basic realm=\"k\"")),
                true,
            );
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(response.headers()[RETRY_AFTER], seconds, "{interval_ms} ms");
        }
    }
}
