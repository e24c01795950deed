//! Step 0 of the request path: a request head the gateway and its upstream cannot read two ways
//! (data plane).
//!
//! hyper already refuses, on its own, most of what lets two HTTP parsers disagree about a
//! message (an invalid or conflicting `Content-Length`, a final coding other than `chunked`,
//! obs-fold, control bytes in names and values, a space before the colon). What it lets
//! through, and what is refused here before any auth work and before anything reaches the
//! upstream:
//!
//! - `Transfer-Encoding` that is not exactly one `chunked` (`chunked, chunked`,
//!   `gzip, chunked`, two lines): hyper decodes the last coding and forwards the rest as its
//!   own, an upstream may not;
//! - `Content-Length` beside `Transfer-Encoding` (RFC 9112 6.3 says the message is to be
//!   treated as an error by a server that forwards it) and `Content-Length` twice, even with one
//!   value: hyper drops the length in the first case and keeps one in the second, so these are
//!   found in the bytes as the client sent them ([`super::wire`], [`on_the_wire`]), and also in
//!   the header map, where HTTP/2 leaves them;
//! - a missing, doubled or disagreeing `Host` (RFC 9112 3.2), or one that is not a valid
//!   host\[:port\] (`x, admin.example.com`, a space, a quote, a slash, empty): the host routes
//!   the request, so it must be one host, in one form ([`Host`]);
//! - with `server.underscore_headers = "refuse"`, a header name with `_`;
//! - a method with a lower-case letter ([`method_is_canonical`]): one method, in one form.
//!
//! For HTTP/2, h2 itself refuses connection-specific fields (`Transfer-Encoding`, `TE` other
//! than `trailers`), and no header value in either version can hold NUL, CR or LF (both hyper
//! and h2 build values with `HeaderValue`'s checks). A repeated `Content-Length` does reach
//! here in HTTP/2.
//!
//! For HTTP/2 also a header list past `server.max_header_bytes`, measured as RFC 9113 measures
//! it ([`header_list_size`]).
//!
//! Each check is a scan over a few values of the header map: nothing is allocated.

use std::net::Ipv6Addr;

use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{Method, Request, Version};

use super::error::BadRequest;
use super::wire::Fold;

/// The framing of the head: how its body is delimited must have one reading.
pub fn framing(headers: &HeaderMap) -> Result<(), BadRequest> {
    let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
    let (length, another_length) = (lengths.next(), lengths.next());
    let mut codings = headers.get_all(TRANSFER_ENCODING).iter();
    match (codings.next(), codings.next()) {
        (None, _) => {}
        (Some(coding), None) if coding.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") => {
            if length.is_some() {
                return Err(BadRequest::LengthAndEncoding);
            }
        }
        (Some(_), _) => return Err(BadRequest::TransferEncoding),
    }
    match (length, another_length) {
        (None, _) => Ok(()),
        (Some(length), None) if is_decimal(length.as_bytes()) => Ok(()),
        (Some(_), _) => Err(BadRequest::ContentLength),
    }
}

/// What hyper folded in the head as the client sent it (see [`super::wire`]): `Content-Length`
/// beside `Transfer-Encoding`, or `Content-Length` repeated, which the header map no longer
/// shows.
pub fn on_the_wire<B>(request: &Request<B>) -> Result<(), BadRequest> {
    match request.extensions().get::<Fold>() {
        None => Ok(()),
        Some(Fold::LengthAndEncoding) => Err(BadRequest::LengthAndEncoding),
        Some(Fold::RepeatedLength) => Err(BadRequest::ContentLength),
    }
}

fn is_decimal(text: &[u8]) -> bool {
    !text.is_empty() && text.iter().all(u8::is_ascii_digit)
}

/// The host a request addressed, in the one form that routes it and that the upstream is told
/// (RFC 3986 host, RFC 9110 7.2): a name of letters, digits, `-`, `_` and dots, an IPv4
/// address or a bracketed IPv6 one, and an optional port. One trailing dot is dropped, as nginx
/// drops it: `api.example.com.` is `api.example.com` to DNS, and must reach the routes bound to
/// that name, not the host-less ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host<'a> {
    /// The name or address without a port or a trailing dot: `api.example.com`, `[::1]`.
    pub name: &'a str,
    /// The port's digits, when there is one.
    pub port: Option<&'a str>,
    /// The value as the client wrote it, when it is the `Host` header's; absent when it came
    /// from the target's authority.
    header: Option<&'a HeaderValue>,
    /// The text as the client wrote it, when that is this form already (no trailing dot
    /// dropped).
    as_written: Option<&'a str>,
}

impl Host<'_> {
    /// The host for the upstream (`X-Forwarded-Host`, `Host` under `preserve_host`): the
    /// client's own `Host` value when it was already in normal form, else the normal form.
    pub fn to_header_value(&self) -> Option<HeaderValue> {
        match (self.header, self.as_written) {
            (Some(header), Some(_)) => Some(header.clone()),
            (None, Some(text)) => HeaderValue::from_str(text).ok(),
            (_, None) => {
                let text = match self.port {
                    Some(port) => format!("{}:{port}", self.name),
                    None => self.name.to_owned(),
                };
                HeaderValue::from_str(&text).ok()
            }
        }
    }

    fn same(&self, other: &Host<'_>) -> bool {
        self.name.eq_ignore_ascii_case(other.name) && self.port == other.port
    }
}

/// The host the client addressed, when it named one: the target's authority (absolute form,
/// HTTP/2 `:authority`), else the one `Host` header. Refused when HTTP/1.1 names none, when
/// `Host` is repeated or not a valid host\[:port\] (a list, a space, a quote, a slash, empty),
/// or when it disagrees with the authority.
pub fn host<B>(request: &Request<B>) -> Result<Option<Host<'_>>, BadRequest> {
    let mut hosts = request.headers().get_all(HOST).iter();
    let header = match (hosts.next(), hosts.next()) {
        (None, _) => None,
        (Some(value), None) => {
            // Not `to_str`, which checks every byte again: any byte a host cannot hold is
            // refused by `parse_host`, and UTF-8 is checked a word at a time.
            let text = std::str::from_utf8(value.as_bytes()).map_err(|_| BadRequest::Host)?;
            let mut host = parse_host(text)?;
            host.header = Some(value);
            Some(host)
        }
        (Some(_), Some(_)) => return Err(BadRequest::Host),
    };
    let authority = request
        .uri()
        .authority()
        .map(|a| parse_host(a.as_str()))
        .transpose()?;
    match (authority, header) {
        (Some(authority), Some(header)) if !authority.same(&header) => Err(BadRequest::Host),
        // The header is what the client wrote for the host; the upstream is told that one.
        (Some(_), Some(header)) => Ok(Some(header)),
        (Some(authority), None) if request.version() != Version::HTTP_11 => Ok(Some(authority)),
        (None, Some(header)) => Ok(Some(header)),
        // RFC 9112 3.2: an HTTP/1.1 request without Host is refused, absolute form or not.
        (_, None) if request.version() == Version::HTTP_11 => Err(BadRequest::Host),
        (authority, _) => Ok(authority),
    }
}

/// A host\[:port\] in its parts, or refused.
fn parse_host(text: &str) -> Result<Host<'_>, BadRequest> {
    let (name, port) = match text.starts_with('[') {
        true => split_literal(text)?,
        false => split_name(text)?,
    };
    if let Some(port) = port {
        check_port(port)?;
    }
    Ok(Host {
        name,
        port,
        header: None,
        as_written: (name.len() + port.map_or(0, |port| port.len() + 1) == text.len()).then_some(text),
    })
}

/// A name (letters, digits, `-`, `_`, dots between them, one trailing dot dropped) and what
/// follows its first `:`. One pass over the bytes checks them and finds the colon: the host of
/// nearly every request is a name or an IPv4 address.
fn split_name(text: &str) -> Result<(&str, Option<&str>), BadRequest> {
    let bytes = text.as_bytes();
    // As if a dot came before the name: one may not start it.
    let mut previous = b'.';
    let mut end = bytes.len();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b':' => {
                end = i;
                break;
            }
            b'.' if previous == b'.' => return Err(BadRequest::Host),
            b'-' | b'_' | b'.' => {}
            _ if b.is_ascii_alphanumeric() => {}
            _ => return Err(BadRequest::Host),
        }
        previous = b;
    }
    let name = &text[..end];
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err(BadRequest::Host);
    }
    Ok((name, text.get(end + 1..)))
}

/// A bracketed IPv6 literal and the port after it, if any.
fn split_literal(text: &str) -> Result<(&str, Option<&str>), BadRequest> {
    let close = text.find(']').ok_or(BadRequest::Host)?;
    let (name, rest) = text.split_at(close + 1);
    name[1..close].parse::<Ipv6Addr>().map_err(|_| BadRequest::Host)?;
    match rest {
        "" => Ok((name, None)),
        rest => Ok((name, Some(rest.strip_prefix(':').ok_or(BadRequest::Host)?))),
    }
}

/// A port: one to five digits, at most 65535.
fn check_port(port: &str) -> Result<(), BadRequest> {
    let digits = port.as_bytes();
    if digits.is_empty() || digits.len() > 5 {
        return Err(BadRequest::Host);
    }
    let mut value = 0u32;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return Err(BadRequest::Host);
        }
        value = value * 10 + u32::from(digit - b'0');
    }
    match value <= u32::from(u16::MAX) {
        true => Ok(()),
        false => Err(BadRequest::Host),
    }
}

/// The size of an HTTP/2 request's header list as RFC 9113 (6.5.2, `SETTINGS_MAX_HEADER_LIST_SIZE`)
/// counts it, and h2 with it: each field's name and value and 32 bytes, the pseudo-header fields
/// included. hyper's HTTP/2 server answers a list past its own limit by itself, with a bare
/// 431 and no body; that limit is set above `server.max_header_bytes` ([`super::server`]), so
/// that a list past `max_header_bytes` is refused here, with the gateway's 431.
pub fn header_list_size<B>(request: &Request<B>) -> usize {
    const FIELD: usize = 32;
    let uri = request.uri();
    let pseudo = [
        Some((":method", request.method().as_str())),
        uri.scheme_str().map(|scheme| (":scheme", scheme)),
        uri.authority()
            .map(|authority| (":authority", authority.as_str())),
        uri.path_and_query().map(|path| (":path", path.as_str())),
    ];
    let pseudo: usize = pseudo
        .iter()
        .flatten()
        .map(|(name, value)| name.len() + value.len() + FIELD)
        .sum();
    let fields: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + FIELD)
        .sum();
    pseudo + fields
}

/// Under `server.underscore_headers = "refuse"`: a header name with `_` other than `allowed`
/// (the configured key header, which the gateway reads itself and never forwards).
pub fn underscores(headers: &HeaderMap, allowed: &HeaderName) -> Result<(), BadRequest> {
    let refused = headers.keys().any(|name| has_underscore(name) && name != allowed);
    if refused {
        Err(BadRequest::UnderscoreHeader)
    } else {
        Ok(())
    }
}

/// Whether a method is one the gateway will forward: upper-case tokens only, so that no
/// upstream can read `get` as `GET` when the gateway checked it as something else.
pub fn method_is_canonical(method: &Method) -> bool {
    !method.as_str().bytes().any(|b| b.is_ascii_lowercase())
}

/// Whether a name has `_`: CGI-style upstreams read `X_Keygate_Key_Id` as `X-Keygate-Key-Id`,
/// so such a name could pass for one the gateway sets or strips.
pub fn has_underscore(name: &HeaderName) -> bool {
    name.as_str().as_bytes().contains(&b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// A head as (name, value) pairs.
    type Fields = &'static [(&'static str, &'static [u8])];

    fn head(fields: Fields) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            headers.append(*name, HeaderValue::from_bytes(value).unwrap());
        }
        headers
    }

    #[test]
    fn framing_has_one_reading_or_is_refused() {
        use BadRequest::*;
        const TE: &str = "transfer-encoding";
        const CL: &str = "content-length";
        let cases: &[(&str, Fields, Result<(), BadRequest>)] = &[
            ("no body", &[], Ok(())),
            ("a length", &[(CL, b"5")], Ok(())),
            ("a zero length", &[(CL, b"0")], Ok(())),
            ("chunked", &[(TE, b"chunked")], Ok(())),
            ("chunked in any case", &[(TE, b"Chunked")], Ok(())),
            (
                "chunked twice in one line",
                &[(TE, b"chunked, chunked")],
                Err(TransferEncoding),
            ),
            (
                "another coding first",
                &[(TE, b"gzip, chunked")],
                Err(TransferEncoding),
            ),
            (
                "two lines",
                &[(TE, b"chunked"), (TE, b"chunked")],
                Err(TransferEncoding),
            ),
            ("not chunked", &[(TE, b"xchunked")], Err(TransferEncoding)),
            ("empty coding", &[(TE, b"")], Err(TransferEncoding)),
            (
                "length and chunked",
                &[(CL, b"5"), (TE, b"chunked")],
                Err(LengthAndEncoding),
            ),
            (
                "length twice, same",
                &[(CL, b"5"), (CL, b"5")],
                Err(ContentLength),
            ),
            (
                "length twice, differing",
                &[(CL, b"5"), (CL, b"6")],
                Err(ContentLength),
            ),
            ("length as a list", &[(CL, b"5, 5")], Err(ContentLength)),
            ("length with a sign", &[(CL, b"+5")], Err(ContentLength)),
            ("length not a number", &[(CL, b"five")], Err(ContentLength)),
            ("empty length", &[(CL, b"")], Err(ContentLength)),
        ];
        for (name, fields, expected) in cases {
            assert_eq!(framing(&head(fields)), *expected, "{name}");
        }
    }

    fn request(version: Version, target: &str, hosts: &[&'static str]) -> Request<()> {
        let mut request = Request::builder().version(version).uri(target).body(()).unwrap();
        for host in hosts {
            request.headers_mut().append(HOST, HeaderValue::from_static(host));
        }
        request
    }

    /// The host a request routes by, as `name` or `name:port`.
    fn routed(request: &Request<()>) -> Result<Option<String>, BadRequest> {
        host(request).map(|host| {
            host.map(|h| match h.port {
                Some(port) => format!("{}:{port}", h.name),
                None => h.name.to_owned(),
            })
        })
    }

    #[test]
    fn one_host_routes_the_request_or_it_is_refused() {
        use Version as V;
        type Case = (
            &'static str,
            V,
            &'static str,
            &'static [&'static str],
            Result<Option<&'static str>, BadRequest>,
        );
        let cases: &[Case] = &[
            ("origin form", V::HTTP_11, "/v1", &["a.test"], Ok(Some("a.test"))),
            (
                "with port",
                V::HTTP_11,
                "/v1",
                &["a.test:8080"],
                Ok(Some("a.test:8080")),
            ),
            ("no host in 1.1", V::HTTP_11, "/v1", &[], Err(BadRequest::Host)),
            (
                "two hosts",
                V::HTTP_11,
                "/v1",
                &["a.test", "b.test"],
                Err(BadRequest::Host),
            ),
            (
                "the same host twice",
                V::HTTP_11,
                "/v1",
                &["a.test", "a.test"],
                Err(BadRequest::Host),
            ),
            ("1.0 without host", V::HTTP_10, "/v1", &[], Ok(None)),
            (
                "absolute form agreeing",
                V::HTTP_11,
                "http://a.test/v1",
                &["A.test"],
                Ok(Some("A.test")),
            ),
            (
                "absolute form agreeing but for a trailing dot",
                V::HTTP_11,
                "http://a.test./v1",
                &["a.test"],
                Ok(Some("a.test")),
            ),
            (
                "absolute form disagreeing",
                V::HTTP_11,
                "http://a.test/v1",
                &["b.test"],
                Err(BadRequest::Host),
            ),
            (
                "absolute form disagreeing on the port",
                V::HTTP_11,
                "http://a.test:8080/v1",
                &["a.test"],
                Err(BadRequest::Host),
            ),
            (
                "absolute form, no host in 1.1",
                V::HTTP_11,
                "http://a.test/v1",
                &[],
                Err(BadRequest::Host),
            ),
            (
                "absolute form, 1.0 without host",
                V::HTTP_10,
                "http://a.test/v1",
                &[],
                Ok(Some("a.test")),
            ),
            (
                "absolute form with a list for a host",
                V::HTTP_10,
                "http://x,a.test/v1",
                &[],
                Err(BadRequest::Host),
            ),
            (
                "absolute form with user info",
                V::HTTP_11,
                "http://u@a.test/v1",
                &["a.test"],
                Err(BadRequest::Host),
            ),
            (
                "h2 authority",
                V::HTTP_2,
                "http://a.test/v1",
                &[],
                Ok(Some("a.test")),
            ),
            (
                "h2 authority with a trailing dot",
                V::HTTP_2,
                "http://a.test.:443/v1",
                &[],
                Ok(Some("a.test:443")),
            ),
            (
                "h2 host agreeing",
                V::HTTP_2,
                "http://a.test/v1",
                &["a.test"],
                Ok(Some("a.test")),
            ),
            (
                "h2 host disagreeing",
                V::HTTP_2,
                "http://a.test/v1",
                &["b.test"],
                Err(BadRequest::Host),
            ),
        ];
        for (name, version, target, hosts, expected) in cases {
            let expected = expected.map(|host| host.map(str::to_owned));
            assert_eq!(routed(&request(*version, target, hosts)), expected, "{name}");
        }
    }

    #[test]
    fn a_host_is_one_name_or_address_with_an_optional_port() {
        for (value, expected) in [
            ("api.example.com", Some(("api.example.com", None))),
            ("API.Example.com", Some(("API.Example.com", None))),
            ("api.example.com.", Some(("api.example.com", None))),
            ("api.example.com.:80", Some(("api.example.com", Some("80")))),
            ("api.example.com:8080", Some(("api.example.com", Some("8080")))),
            ("my_host-1", Some(("my_host-1", None))),
            ("127.0.0.1:7300", Some(("127.0.0.1", Some("7300")))),
            ("[::1]", Some(("[::1]", None))),
            ("[::1]:8080", Some(("[::1]", Some("8080")))),
            ("[2001:db8::7]:443", Some(("[2001:db8::7]", Some("443")))),
            ("", None),
            (".", None),
            (":80", None),
            ("x, admin.example.com", None),
            ("x,admin.example.com", None),
            ("admin.example.com x", None),
            (" admin.example.com", None),
            ("\"admin.example.com\"", None),
            ("admin.example.com/x", None),
            ("admin.example.com\\x", None),
            ("user@admin.example.com", None),
            ("admin.example.com..", None),
            ("admin..example.com", None),
            (".admin.example.com", None),
            ("admin.example.com:", None),
            ("admin.example.com:80x", None),
            ("admin.example.com:+80", None),
            ("admin.example.com:65536", None),
            ("admin.example.com:123456", None),
            ("admin.example.com:80:80", None),
            ("a%2eexample.com", None),
            ("::1", None),
            ("[::1", None),
            ("[::1]x", None),
            ("[::1]:", None),
            ("[not-an-address]", None),
            ("[::1%25eth0]", None),
        ] {
            let got = parse_host(value).ok().map(|h| (h.name, h.port));
            assert_eq!(got, expected, "{value:?}");
        }
    }

    #[test]
    fn the_upstream_is_told_the_normal_form() {
        for (value, told) in [
            ("a.test", "a.test"),
            ("A.Test:8080", "A.Test:8080"),
            ("a.test.", "a.test"),
            ("a.test.:80", "a.test:80"),
            ("[::1]:8080", "[::1]:8080"),
        ] {
            let request = request(Version::HTTP_11, "/v1", &[]);
            let mut request = request;
            request
                .headers_mut()
                .insert(HOST, HeaderValue::from_str(value).unwrap());
            let host = host(&request).unwrap().unwrap();
            assert_eq!(host.to_header_value().unwrap(), told, "{value}");
        }
        let h2 = request(Version::HTTP_2, "http://a.test.:443/v1", &[]);
        let host = host(&h2).unwrap().unwrap();
        assert_eq!(host.to_header_value().unwrap(), "a.test:443");
    }

    #[test]
    fn an_http2_header_list_is_measured_as_rfc_9113_measures_it() {
        let mut request = request(Version::HTTP_2, "https://a.test/v1?q=1", &[]);
        request
            .headers_mut()
            .insert("x-h", HeaderValue::from_static("value"));
        // :method GET, :scheme https, :authority a.test, :path /v1?q=1, x-h value.
        let expected = (7 + 3 + 32) + (7 + 5 + 32) + (10 + 6 + 32) + (5 + 7 + 32) + (3 + 5 + 32);
        assert_eq!(header_list_size(&request), expected);
    }

    #[test]
    fn a_host_that_is_not_text_is_refused() {
        let mut request = request(Version::HTTP_11, "/v1", &[]);
        request
            .headers_mut()
            .insert(HOST, HeaderValue::from_bytes(b"a\xe9.test").unwrap());
        assert_eq!(host(&request), Err(BadRequest::Host));
    }

    #[test]
    fn underscores_are_refused_except_in_the_key_header() {
        let key = HeaderName::from_static("x_api_key");
        let cases: &[(Fields, _)] = &[
            (&[("x-custom", b"1")], Ok(())),
            (
                &[("x_keygate_key_id", b"forged")],
                Err(BadRequest::UnderscoreHeader),
            ),
            (
                &[("x-a", b"1"), ("x_forwarded_for", b"6.6.6.6")],
                Err(BadRequest::UnderscoreHeader),
            ),
            (&[("x_api_key", b"secret")], Ok(())),
        ];
        for (fields, expected) in cases {
            assert_eq!(underscores(&head(fields), &key), *expected, "{fields:?}");
        }
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
