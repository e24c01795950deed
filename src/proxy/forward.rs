//! Step 9 of the request path: forwarding to the upstream (data plane).
//!
//! The request goes out as it came, less hop-by-hop headers and the credential, with identity
//! headers the gateway sets after removing any a client sent. Bodies stream both ways. A pooled
//! hyper client per upstream; requests that are not idempotent go through a client that never
//! retries.

use std::net::IpAddr;
use std::time::Duration;

use http::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONNECTION, HOST, TE, TRAILER, TRANSFER_ENCODING,
    UPGRADE,
};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, Version};
use http_body_util::{LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::error::UpstreamFailure;
use crate::config;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_KEYGATE_KEY_ID: HeaderName = HeaderName::from_static("x-keygate-key-id");
pub const X_KEYGATE_ENVIRONMENT: HeaderName = HeaderName::from_static("x-keygate-environment");
pub const X_KEYGATE_CUSTOMER: HeaderName = HeaderName::from_static("x-keygate-customer");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The request body as sent upstream: the client's, streamed, cut off past
/// `server.max_request_body` (bodies without a Content-Length are only counted as they pass).
pub type OutBody = Limited<Incoming>;

type HttpClient = Client<HttpConnector, OutBody>;

/// Why a request sent upstream got no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendFailure {
    Upstream(UpstreamFailure),
    /// The client's body grew past `server.max_request_body` while streaming.
    BodyTooLarge,
}

/// One upstream's connection pools.
pub struct UpstreamClient {
    pub name: String,
    /// `scheme://authority`, and the path prefix without a trailing slash.
    scheme_authority: (http::uri::Scheme, http::uri::Authority),
    prefix: String,
    timeout: Duration,
    idempotent: HttpClient,
    other: HttpClient,
}

impl UpstreamClient {
    pub fn new(upstream: &config::Upstream) -> Self {
        let build = |retry: bool| {
            let mut connector = HttpConnector::new();
            connector.set_connect_timeout(Some(upstream.connect_timeout));
            connector.set_nodelay(true);
            Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(upstream.pool_idle_timeout)
                .pool_max_idle_per_host(upstream.pool_max_idle)
                .retry_canceled_requests(retry)
                .build(connector)
        };
        let parts = upstream.url.clone().into_parts();
        UpstreamClient {
            name: upstream.name.clone(),
            scheme_authority: (
                parts.scheme.unwrap_or(http::uri::Scheme::HTTP),
                parts
                    .authority
                    .expect("validated upstream URLs have an authority"),
            ),
            prefix: parts
                .path_and_query
                .map(|pq| pq.path().trim_end_matches('/').to_owned())
                .unwrap_or_default(),
            timeout: upstream.timeout,
            idempotent: build(true),
            other: build(false),
        }
    }

    /// The upstream URI for a normalized path and the original query.
    pub fn uri(&self, path: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let mut target =
            String::with_capacity(self.prefix.len() + path.len() + query.map_or(0, |q| q.len() + 1));
        target.push_str(&self.prefix);
        target.push_str(path);
        if let Some(query) = query {
            target.push('?');
            target.push_str(query);
        }
        Uri::builder()
            .scheme(self.scheme_authority.0.clone())
            .authority(self.scheme_authority.1.clone())
            .path_and_query(PathAndQuery::try_from(target)?)
            .build()
    }

    /// Sends the request; the response head must come within the upstream's timeout.
    pub async fn send(&self, request: Request<OutBody>) -> Result<Response<Incoming>, SendFailure> {
        let client = if request.method().is_idempotent() {
            &self.idempotent
        } else {
            &self.other
        };
        match tokio::time::timeout(self.timeout, client.request(request)).await {
            Err(_) => Err(SendFailure::Upstream(UpstreamFailure::Timeout)),
            Ok(Err(error)) if error.is_connect() => Err(SendFailure::Upstream(UpstreamFailure::Connect)),
            Ok(Err(error)) if caused_by_length_limit(&error) => Err(SendFailure::BodyTooLarge),
            Ok(Err(_)) => Err(SendFailure::Upstream(UpstreamFailure::Reset)),
            Ok(Ok(response)) => Ok(response),
        }
    }
}

fn caused_by_length_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.is::<LengthLimitError>() {
            return true;
        }
        cause = error.source();
    }
    false
}

/// Removes the hop-by-hop headers of RFC 9110 section 7.6.1, and those `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        TE,
        TRAILER,
        TRANSFER_ENCODING,
        UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// Removes every header whose name starts with `x-keygate-`: only the gateway sets those.
fn strip_identity(headers: &mut HeaderMap) {
    let forged: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("x-keygate-"))
        .cloned()
        .collect();
    for name in forged {
        headers.remove(name);
    }
}

/// What the gateway tells the upstream about an admitted request.
pub struct Identity<'a> {
    pub key_id: &'a str,
    pub environment: &'static str,
    pub customer: Option<&'a str>,
    pub request_id: &'a HeaderValue,
    pub client: IpAddr,
    pub tls: bool,
    /// The host the client asked for, for `X-Forwarded-Host` and `preserve_host`.
    pub host: Option<&'a HeaderValue>,
}

/// Which credentials leave the gateway.
pub struct Credentials<'a> {
    /// Strip `Authorization` (it carried the key).
    pub authorization: bool,
    /// The key header name, stripped when present.
    pub header: Option<&'a HeaderName>,
}

/// Rewrites the request head for the upstream.
pub fn prepare(
    request: &mut Request<Incoming>,
    uri: Uri,
    identity: &Identity<'_>,
    credentials: Option<Credentials<'_>>,
    preserve_host: bool,
) {
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    let headers = request.headers_mut();
    strip_hop_by_hop(headers);
    strip_identity(headers);
    if let Some(credentials) = credentials {
        if credentials.authorization {
            headers.remove(AUTHORIZATION);
        }
        if let Some(name) = credentials.header {
            headers.remove(name);
        }
    }
    set_identity(headers, identity);
    match (preserve_host, identity.host) {
        (true, Some(host)) => {
            headers.insert(HOST, host.clone());
        }
        // The client sets `Host` from the upstream URI when none is present.
        _ => {
            headers.remove(HOST);
        }
    }
}

fn set_identity(headers: &mut HeaderMap, identity: &Identity<'_>) {
    if let Ok(value) = HeaderValue::from_str(identity.key_id) {
        headers.insert(X_KEYGATE_KEY_ID, value);
    }
    headers.insert(
        X_KEYGATE_ENVIRONMENT,
        HeaderValue::from_static(identity.environment),
    );
    if let Some(value) = identity.customer.and_then(|c| HeaderValue::from_str(c).ok()) {
        headers.insert(X_KEYGATE_CUSTOMER, value);
    }
    headers.insert(X_REQUEST_ID, identity.request_id.clone());
    append_forwarded_for(headers, identity.client);
    let proto = if identity.tls { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(host) = identity.host {
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
}

/// Appends the client to `X-Forwarded-For`, folding any earlier values into one line.
fn append_forwarded_for(headers: &mut HeaderMap, client: IpAddr) {
    let mut line = String::new();
    for value in headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        line.push_str(value);
        line.push_str(", ");
    }
    line.push_str(&client.to_string());
    if let Ok(value) = HeaderValue::from_str(&line) {
        headers.insert(X_FORWARDED_FOR, value);
    }
}

/// Whether a method is one the gateway will forward: upper-case tokens only, so that no
/// upstream can read `get` as `GET` when the gateway checked it as something else.
pub fn method_is_canonical(method: &Method) -> bool {
    !method.as_str().bytes().any(|b| b.is_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-secret-hop", "1"),
            ("x-end-to-end", "kept"),
        ] {
            headers.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        strip_hop_by_hop(&mut headers);
        let left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-end-to-end"]);
    }

    #[test]
    fn client_identity_headers_are_dropped_before_the_gateway_sets_its_own() {
        let mut headers = HeaderMap::new();
        headers.insert("x-keygate-key-id", HeaderValue::from_static("forged"));
        headers.insert("x-keygate-anything", HeaderValue::from_static("forged"));
        headers.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.7"));
        strip_identity(&mut headers);
        let request_id = HeaderValue::from_static("req-1");
        set_identity(
            &mut headers,
            &Identity {
                key_id: "key_1",
                environment: "production",
                customer: Some("acme"),
                request_id: &request_id,
                client: "203.0.113.5".parse().unwrap(),
                tls: false,
                host: None,
            },
        );
        assert_eq!(headers["x-keygate-key-id"], "key_1");
        assert_eq!(headers["x-keygate-environment"], "production");
        assert_eq!(headers["x-keygate-customer"], "acme");
        assert!(headers.get("x-keygate-anything").is_none());
        assert_eq!(headers["x-forwarded-for"], "198.51.100.7, 203.0.113.5");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-request-id"], "req-1");
    }

    #[test]
    fn only_upper_case_methods_are_canonical() {
        for (method, ok) in [("GET", true), ("PURGE", true), ("get", false), ("gEt", false)] {
            assert_eq!(
                method_is_canonical(&Method::from_bytes(method.as_bytes()).unwrap()),
                ok,
                "{method}"
            );
        }
    }
}
