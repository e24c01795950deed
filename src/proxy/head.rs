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
//! - a missing, doubled or disagreeing `Host` (RFC 9112 3.2): the host routes the request,
//!   so it must be one host;
//! - with `server.underscore_headers = "refuse"`, a header name with `_`.
//!
//! For HTTP/2, h2 itself refuses connection-specific fields (`Transfer-Encoding`, `TE` other
//! than `trailers`), and no header value in either version can hold NUL, CR or LF (both hyper
//! and h2 build values with `HeaderValue`'s checks). A repeated `Content-Length` does reach
//! here in HTTP/2.
//!
//! Each check is a scan over a few values of the header map: nothing is allocated.

use http::header::{HeaderMap, HeaderName, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{Request, Version};

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

/// The host the client addressed, port included, when it named one: the target's authority
/// (absolute form, HTTP/2 `:authority`), else the one `Host` header. Refused when HTTP/1.1
/// names none, when `Host` is repeated or not text, or when it disagrees with the authority.
pub fn host<B>(request: &Request<B>) -> Result<Option<&str>, BadRequest> {
    let mut hosts = request.headers().get_all(HOST).iter();
    let header = match (hosts.next(), hosts.next()) {
        (None, _) => None,
        (Some(value), None) => Some(value.to_str().map_err(|_| BadRequest::Host)?),
        (Some(_), Some(_)) => return Err(BadRequest::Host),
    };
    let authority = request.uri().authority().map(|a| a.as_str());
    match (authority, header) {
        (Some(authority), Some(header)) if !authority.eq_ignore_ascii_case(header) => Err(BadRequest::Host),
        (Some(authority), _) if request.version() != Version::HTTP_11 || header.is_some() => {
            Ok(Some(authority))
        }
        (None, Some(header)) => Ok(Some(header)),
        // RFC 9112 3.2: an HTTP/1.1 request without Host is refused, absolute form or not.
        (_, None) if request.version() == Version::HTTP_11 => Err(BadRequest::Host),
        (authority, _) => Ok(authority),
    }
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
                "h2 authority",
                V::HTTP_2,
                "http://a.test/v1",
                &[],
                Ok(Some("a.test")),
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
            assert_eq!(host(&request(*version, target, hosts)), *expected, "{name}");
        }
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
}
