//! Step 9 of the request path: forwarding to the upstream (data plane).
//!
//! The request goes out as it came, less hop-by-hop headers and the credential, with identity
//! headers the gateway sets after removing any a client sent. Also removed, in the same one
//! pass over the names: names with `_` (which CGI-style upstreams read as `-`, so they could
//! pass for identity headers), `Proxy-Authorization`, the method-override headers unless the
//! route allows them ([`super::overrides`]), headers that would tell the upstream another
//! path or hop ([`REWRITES`]), and from a peer that is not a trusted proxy the headers that
//! name a client address ([`CLIENT_ADDRESSES`], `Forwarded`, to which the gateway adds its own
//! element, RFC 7239). `X-Forwarded-For` is the peer's address alone from such a peer, and the
//! trusted chain with the peer appended from a trusted proxy; `X-Forwarded-Proto` and `-Host`
//! are always the gateway's. Bodies stream both ways; the connections are
//! [`super::upstream`]'s.

use std::net::IpAddr;

use http::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONNECTION, FORWARDED, HOST, PROXY_AUTHORIZATION,
};
use http::uri::Uri;
use http::{Request, Version};

use super::identity_values;
use super::request_id::X_REQUEST_ID;

pub const X_KEYGATE_KEY_ID: HeaderName = HeaderName::from_static("x-keygate-key-id");
pub const X_KEYGATE_ENVIRONMENT: HeaderName = HeaderName::from_static("x-keygate-environment");
pub const X_KEYGATE_CUSTOMER: HeaderName = HeaderName::from_static("x-keygate-customer");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that would tell an upstream another path than the one routed and checked (IIS's and
/// Symfony's `X-Original-URL` and `X-Rewrite-URL`, Spring's `X-Forwarded-Prefix`), or another
/// hop than the one the gateway describes with its own `X-Forwarded-Proto` and `-Host`: always
/// removed, whoever sent them.
const REWRITES: [HeaderName; 5] = [
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-server"),
];

/// Headers that name the client's address to an upstream (nginx's, Akamai's and Cloudflare's,
/// and others'); a trusted proxy may vouch for them, anyone else may not. `Forwarded` too.
const CLIENT_ADDRESSES: [HeaderName; 4] = [
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("client-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("x-client-ip"),
];

/// Removes the hop-by-hop headers of RFC 9110 section 7.6.1, and those `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip(headers, |_| false);
}

/// Removes, besides the hop-by-hop headers, every header `also` picks. One pass over the names
/// finds them; most heads have none, and then nothing is hashed or removed, and most of the
/// rest have one (the credential, or `Connection: keep-alive`), removed without a list.
fn strip(headers: &mut HeaderMap, also: impl Fn(&HeaderName) -> bool) {
    let mut found = headers.keys().filter(|name| is_hop_by_hop(name) || also(name));
    let Some(first) = found.next().cloned() else {
        return;
    };
    let more: Vec<HeaderName> = found.cloned().collect();
    // `Connection` is among those found when there is one: without it, no lookup of its options.
    let has_connection = first == CONNECTION || more.contains(&CONNECTION);
    let (listed, lists_close) = match has_connection {
        true => connection_options(headers),
        false => (Vec::new(), false),
    };
    for name in std::iter::once(first).chain(more).chain(listed) {
        headers.remove(name);
    }
    // RFC 9110 7.6.1: a field named like any option `Connection` lists goes, `close` included.
    if lists_close {
        headers.remove("close");
    }
}

/// The header names `Connection` lists, less its usual `close` and `keep-alive` options (the
/// `Keep-Alive` field is hop-by-hop anyway), and whether it lists `close`. Read as bytes, so
/// that an option past a non-ASCII one is not missed.
fn connection_options(headers: &HeaderMap) -> (Vec<HeaderName>, bool) {
    let mut lists_close = false;
    let mut listed = Vec::new();
    for value in headers.get_all(CONNECTION) {
        for option in value.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if option.eq_ignore_ascii_case(b"close") {
                lists_close = true;
            } else if !option.eq_ignore_ascii_case(b"keep-alive") {
                listed.extend(HeaderName::from_bytes(option).ok());
            }
        }
    }
    (listed, lists_close)
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    crate::core::headers::is_hop_by_hop(name.as_str())
}

/// Whether a header is one only the gateway sets.
fn is_identity(name: &HeaderName) -> bool {
    name.as_str().starts_with("x-keygate-")
}

/// What the gateway tells the upstream about an admitted request.
pub struct Identity<'a> {
    /// The key's sequence number: where the thread keeps its id's header value
    /// ([`super::identity_values`]).
    pub seq: u64,
    /// The key's id and its customer's, as bytes (`Text::as_bytes`): they become header values
    /// without a UTF-8 check.
    pub key_id: &'a [u8],
    pub environment: &'static str,
    pub customer: Option<&'a [u8]>,
    pub request_id: &'a HeaderValue,
    pub client: IpAddr,
    pub tls: bool,
    /// The host the client asked for, for `X-Forwarded-Host` and `preserve_host`.
    pub host: Option<&'a HeaderValue>,
}

/// What a route and the peer let through of the client's own headers.
pub struct Passing<'a> {
    /// The credentials to strip; `None` when the route forwards them.
    pub credentials: Option<Credentials<'a>>,
    /// The client's `Host` goes on instead of the upstream's.
    pub preserve_host: bool,
    /// The method-override headers go on.
    pub method_override: bool,
    /// The peer is a trusted proxy: the client addresses it names go on (`X-Real-IP`,
    /// `Forwarded`, ...), and its `X-Forwarded-For` is extended, not replaced.
    pub trusted_peer: bool,
}

/// Which credentials leave the gateway.
pub struct Credentials<'a> {
    /// Strip `Authorization` (it carried the key).
    pub authorization: bool,
    /// The key header name, stripped when present.
    pub header: &'a HeaderName,
}

/// Rewrites the request head for the upstream: `upstream_host` is its `Host` unless the route
/// preserves the client's.
pub fn prepare<B>(
    request: &mut Request<B>,
    uri: Uri,
    identity: &Identity<'_>,
    passing: &Passing<'_>,
    upstream_host: &HeaderValue,
) {
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    let headers = request.headers_mut();
    // Room for the headers set below, so the map grows once, not once per insert.
    headers.reserve(9);
    strip(headers, |name| is_refused(name, passing));
    set_identity(headers, identity, passing.trusted_peer);
    let host = match (passing.preserve_host, identity.host) {
        (true, Some(host)) => host,
        _ => upstream_host,
    };
    headers.insert(HOST, host.clone());
}

/// Whether a client header is kept from the upstream (besides the hop-by-hop ones).
fn is_refused(name: &HeaderName, passing: &Passing<'_>) -> bool {
    let credential = passing.credentials.as_ref().is_some_and(|credentials| {
        (credentials.authorization && name == AUTHORIZATION) || name == credentials.header
    });
    is_identity(name)
        || credential
        || super::head::has_underscore(name)
        || name == PROXY_AUTHORIZATION
        || (!passing.method_override && super::overrides::is_header(name))
        || REWRITES.contains(name)
        || (!passing.trusted_peer && (name == FORWARDED || CLIENT_ADDRESSES.contains(name)))
}

/// Sets the identity and forwarding headers. The `X-Keygate-` ones are appended, which costs
/// less than replacing: [`strip`] has removed every one a client sent. `trusted_peer`: the
/// client's `X-Forwarded-For` is a chain to extend, else it is replaced by the address alone,
/// which is a slice of the `Forwarded` line's bytes (one allocation for both).
fn set_identity(headers: &mut HeaderMap, identity: &Identity<'_>, trusted_peer: bool) {
    debug_assert!(!headers.keys().any(is_identity), "strip() runs first");
    if let Some(value) = identity_values::key_id(identity.seq, identity.key_id) {
        headers.append(X_KEYGATE_KEY_ID, value);
    }
    headers.append(
        X_KEYGATE_ENVIRONMENT,
        HeaderValue::from_static(identity.environment),
    );
    if let Some(value) = identity
        .customer
        .and_then(|c| identity_values::customer(identity.seq, c))
    {
        headers.append(X_KEYGATE_CUSTOMER, value);
    }
    headers.insert(X_REQUEST_ID, identity.request_id.clone());
    let (forwarded, address) = forwarded(identity);
    if trusted_peer {
        append_forwarded_for(headers, identity.client);
    } else {
        headers.insert(X_FORWARDED_FOR, address);
    }
    let proto = if identity.tls { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    match identity.host {
        Some(host) => headers.insert(X_FORWARDED_HOST, host.clone()),
        None => headers.remove(X_FORWARDED_HOST),
    };
    headers.append(FORWARDED, forwarded);
}

/// The gateway's own `Forwarded` element (RFC 7239): `for=<client>;proto=<http|https>` and
/// `;host=<host>` when the host can be written as a quoted string. Appended as a line of its
/// own, which reads as the last element of the list. Second, the client's address alone, a
/// slice of the same bytes.
fn forwarded(identity: &Identity<'_>) -> (HeaderValue, HeaderValue) {
    let mut text = [0; 39];
    let ip = ip_text(identity.client, &mut text);
    let host = identity.host.map(HeaderValue::as_bytes).filter(|host| {
        !host.is_empty()
            && host
                .iter()
                .all(|&b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    });
    let mut line = Vec::with_capacity(64 + host.map_or(0, <[u8]>::len));
    line.extend_from_slice(b"for=");
    if identity.client.is_ipv6() {
        line.extend_from_slice(b"\"[");
    }
    let at = line.len()..line.len() + ip.len();
    line.extend_from_slice(ip);
    if identity.client.is_ipv6() {
        line.extend_from_slice(b"]\"");
    }
    line.extend_from_slice(if identity.tls {
        b";proto=https"
    } else {
        b";proto=http"
    });
    if let Some(host) = host {
        line.extend_from_slice(b";host=\"");
        line.extend_from_slice(host);
        line.push(b'"');
    }
    let line = bytes::Bytes::from(line);
    let address = HeaderValue::from_maybe_shared(line.slice(at)).expect("an address is ASCII");
    let forwarded =
        HeaderValue::from_maybe_shared(line).unwrap_or_else(|_| HeaderValue::from_static("for=unknown"));
    (forwarded, address)
}

/// Appends the client to `X-Forwarded-For`, folding any earlier values into one line. The line
/// is one allocation of exactly its length, which the header value then owns as it is.
fn append_forwarded_for(headers: &mut HeaderMap, client: IpAddr) {
    let mut text = [0; 39];
    let ip = ip_text(client, &mut text);
    let all = headers.get_all(X_FORWARDED_FOR);
    // As bytes: a value that is not UTF-8 is passed on as it came, not dropped. Blank ones go.
    let earlier = || {
        all.iter()
            .map(|value| value.as_bytes().trim_ascii())
            .filter(|value| !value.is_empty())
    };
    let mut line = Vec::with_capacity(earlier().map(|value| value.len() + 2).sum::<usize>() + ip.len());
    for value in earlier() {
        line.extend_from_slice(value);
        line.extend_from_slice(b", ");
    }
    line.extend_from_slice(ip);
    // The earlier values were valid header bytes and the rest is ASCII, so this holds; were it
    // ever not to, the client's own values must not go on without the address appended.
    let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(line))
        .unwrap_or_else(|_| HeaderValue::from_bytes(ip).expect("an address is ASCII"));
    headers.insert(X_FORWARDED_FOR, value);
}

/// An address as `Display` writes it (39 bytes at most); IPv4, the usual case, without the
/// formatting machinery.
fn ip_text(ip: IpAddr, text: &mut [u8; 39]) -> &[u8] {
    let mut len = 0;
    match ip {
        IpAddr::V4(v4) => {
            let mut push = |byte| {
                text[len] = byte;
                len += 1;
            };
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    push(b'.');
                }
                if octet >= 100 {
                    push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    push(b'0' + octet / 10 % 10);
                }
                push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let mut rest = &mut text[..];
            write!(rest, "{v6}").expect("an IPv6 address is at most 39 characters");
            len = 39 - rest.len();
        }
    }
    &text[..len]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names `strip_hop_by_hop` leaves of a head.
    fn kept_by_strip(head: impl IntoIterator<Item = (&'static str, &'static str)>) -> Vec<String> {
        let mut headers = HeaderMap::new();
        for (name, value) in head {
            headers.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        strip_hop_by_hop(&mut headers);
        headers.keys().map(|k| k.as_str().to_owned()).collect()
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let head = [
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-secret-hop", "1"),
            ("x-end-to-end", "kept"),
        ];
        assert_eq!(kept_by_strip(head), ["x-end-to-end"]);
    }

    #[test]
    fn every_name_connection_lists_goes_whatever_its_case_and_spacing() {
        let head = [
            ("connection", "Close, X-Hop-One"),
            ("connection", "KEEP-ALIVE ,x-hop-two"),
            ("connection", "\tx-hop-three\t"),
            ("x-hop-one", "1"),
            ("x-hop-two", "2"),
            ("x-hop-three", "3"),
            ("close", "named like the option, so it goes too"),
            ("x-end-to-end", "kept"),
        ];
        assert_eq!(kept_by_strip(head), ["x-end-to-end"]);
    }

    #[test]
    fn an_option_beside_a_non_ascii_one_is_still_honoured() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_bytes(b"\xff\xfe, x-hop").unwrap());
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert("x-end-to-end", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut headers);
        let left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-end-to-end"]);
    }

    #[test]
    fn client_identity_headers_are_dropped_before_the_gateway_sets_its_own() {
        for (trusted_peer, forwarded_for) in [(true, "198.51.100.7, 203.0.113.5"), (false, "203.0.113.5")] {
            let mut headers = HeaderMap::new();
            headers.insert("x-keygate-key-id", HeaderValue::from_static("forged"));
            headers.insert("x-keygate-anything", HeaderValue::from_static("forged"));
            headers.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.7"));
            headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
            headers.insert("x-forwarded-host", HeaderValue::from_static("forged.test"));
            strip(&mut headers, is_identity);
            let request_id = HeaderValue::from_static("req-1");
            set_identity(
                &mut headers,
                &Identity {
                    seq: 1,
                    key_id: b"key_1",
                    environment: "production",
                    customer: Some(b"acme"),
                    request_id: &request_id,
                    client: "203.0.113.5".parse().unwrap(),
                    tls: false,
                    host: None,
                },
                trusted_peer,
            );
            assert_eq!(headers["x-keygate-key-id"], "key_1");
            assert_eq!(headers["x-keygate-environment"], "production");
            assert_eq!(headers["x-keygate-customer"], "acme");
            assert!(headers.get("x-keygate-anything").is_none());
            let all: Vec<_> = headers.get_all("x-forwarded-for").iter().collect();
            assert_eq!(all, [forwarded_for], "trusted: {trusted_peer}");
            assert_eq!(headers["x-forwarded-proto"], "http");
            assert!(headers.get("x-forwarded-host").is_none(), "no host: none forged");
            assert_eq!(headers["x-request-id"], "req-1");
        }
    }

    #[test]
    fn earlier_forwarded_for_values_pass_on_as_bytes_and_blank_ones_are_dropped() {
        let mut headers = HeaderMap::new();
        for value in [&b"198.51.100.7"[..], b"  ", b"unknown, \xe9t\xe9 ", b""] {
            headers.append(X_FORWARDED_FOR, HeaderValue::from_bytes(value).unwrap());
        }
        append_forwarded_for(&mut headers, "203.0.113.5".parse().unwrap());
        let all: Vec<_> = headers.get_all(X_FORWARDED_FOR).iter().collect();
        assert_eq!(all.len(), 1);
        assert_eq!(
            all[0].as_bytes(),
            b"198.51.100.7, unknown, \xe9t\xe9, 203.0.113.5"
        );
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "127.0.0.1",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
        ] {
            let mut text = [0; 39];
            assert_eq!(ip_text(ip.parse().unwrap(), &mut text), ip.as_bytes());
        }
    }

    fn passing(method_override: bool, trusted_peer: bool) -> Passing<'static> {
        static KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");
        Passing {
            credentials: Some(Credentials {
                authorization: true,
                header: &KEY_HEADER,
            }),
            preserve_host: false,
            method_override,
            trusted_peer,
        }
    }

    #[test]
    fn client_headers_that_could_forge_or_leak_are_refused() {
        let (plain, overrides, trusted) = (passing(false, false), passing(true, false), passing(false, true));
        for (name, refused_plain, refused_with_overrides, refused_from_trusted) in [
            ("x-custom", false, false, false),
            ("authorization", true, true, true),
            ("x-api-key", true, true, true),
            ("x-keygate-key-id", true, true, true),
            ("x_keygate_key_id", true, true, true),
            ("x_forwarded_for", true, true, true),
            ("my_header", true, true, true),
            ("proxy-authorization", true, true, true),
            ("x-http-method-override", true, false, true),
            ("x-method-override", true, false, true),
            ("x-http-method", true, false, true),
            ("x-real-ip", true, true, false),
            ("forwarded", true, true, false),
            ("client-ip", true, true, false),
            ("true-client-ip", true, true, false),
            ("x-client-ip", true, true, false),
            ("x-original-url", true, true, true),
            ("x-rewrite-url", true, true, true),
            ("x-forwarded-prefix", true, true, true),
            ("x-forwarded-port", true, true, true),
            ("x-forwarded-server", true, true, true),
        ] {
            let name = HeaderName::from_static(name);
            assert_eq!(is_refused(&name, &plain), refused_plain, "{name}");
            assert_eq!(
                is_refused(&name, &overrides),
                refused_with_overrides,
                "{name} (overrides)"
            );
            assert_eq!(
                is_refused(&name, &trusted),
                refused_from_trusted,
                "{name} (trusted)"
            );
        }
    }

    #[test]
    fn the_forwarded_element_names_client_proto_and_host() {
        let request_id = HeaderValue::from_static("r");
        for (client, tls, host, expected) in [
            (
                "203.0.113.5",
                false,
                Some("api.test"),
                r#"for=203.0.113.5;proto=http;host="api.test""#,
            ),
            (
                "203.0.113.5",
                true,
                Some("api.test:8443"),
                r#"for=203.0.113.5;proto=https;host="api.test:8443""#,
            ),
            ("::1", false, None, r#"for="[::1]";proto=http"#),
            (
                "2001:db8::7",
                true,
                Some("a\"b"),
                r#"for="[2001:db8::7]";proto=https"#,
            ),
        ] {
            let host = host.map(|h| HeaderValue::from_str(h).unwrap());
            let identity = Identity {
                seq: 1,
                key_id: b"k",
                environment: "production",
                customer: None,
                request_id: &request_id,
                client: client.parse().unwrap(),
                tls,
                host: host.as_ref(),
            };
            let (line, address) = forwarded(&identity);
            assert_eq!(line, expected, "{client} {host:?}");
            assert_eq!(address, client, "the address alone, for X-Forwarded-For");
        }
    }
}
