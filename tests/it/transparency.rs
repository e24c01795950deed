//! Transparency as a table (STYLE 11): each request below is sent as raw bytes twice, straight
//! to the recording upstream and through the gateway, and the upstream's two views are compared
//! field by field: method, path and query, every header in order with its value, body bytes.
//! They must be equal but for the documented edits (SPEC section 1, "What the upstream
//! receives", and the README's list beside it), which [`expected`] applies to the direct view
//! and [`gateway_set`] checks on the forwarded one. Every row runs and every difference is
//! reported, not just the first.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{basic, Harness, Recorded};

/// The `Host` every row sends.
const HOST: &str = "api.test";

struct Row {
    name: &'static str,
    /// The head without its blank line; `{basic}` is the key as a Basic credential, `{key}` the
    /// bare key.
    head: &'static str,
    body: Vec<u8>,
}

fn row(name: &'static str, head: &'static str, body: &[u8]) -> Row {
    Row {
        name,
        head,
        body: body.to_vec(),
    }
}

fn rows() -> Vec<Row> {
    let chunked = b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";
    let large: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let large_head = "PUT /v1/status/large HTTP/1.1\r\nHost: api.test\r\nAuthorization: {basic}\r\n\
                      Content-Type: application/octet-stream\r\nContent-Length: 1048576";
    vec![
        row(
            "GET",
            "GET /v1/status HTTP/1.1\r\nHost: api.test\r\nAuthorization: {basic}",
            b"",
        ),
        row(
            "HEAD",
            "HEAD /v1/status HTTP/1.1\r\nHost: api.test\r\nAuthorization: {basic}",
            b"",
        ),
        row(
            "OPTIONS with CORS preflight headers",
            "OPTIONS /v1/status/cors HTTP/1.1\r\nHost: api.test\r\nAuthorization: {basic}\r\n\
             Origin: https://app.example\r\nAccess-Control-Request-Method: PATCH\r\n\
             Access-Control-Request-Headers: content-type, x-custom",
            b"",
        ),
        row(
            "PATCH with a JSON body",
            "PATCH /v1/customers/acme HTTP/1.1\r\nHost: api.test\r\nAuthorization: {basic}\r\n\
             Content-Type: application/json\r\nContent-Length: 17",
            br#"{"name":"Acme"}  "#,
        ),
        row(
            "DELETE",
            "DELETE /v1/customers/acme/notes/7 HTTP/1.1\r\nHost: api.test\r\nAuthorization: {basic}",
            b"",
        ),
        row(
            "POST, empty body with Content-Length: 0",
            "POST /v1/status/empty HTTP/1.1\r\nHost: api.test\r\nAuthorization: {basic}\r\nContent-Length: 0",
            b"",
        ),
        row(
            "POST, chunked body",
            "POST /v1/status/chunked HTTP/1.1\r\nHost: api.test\r\nAuthorization: {basic}\r\n\
             Content-Type: text/plain\r\nTransfer-Encoding: chunked",
            chunked,
        ),
        Row {
            name: "PUT, a large body with Content-Length",
            head: large_head,
            body: large,
        },
        row(
            "POST with Expect: 100-continue",
            "POST /v1/status/expect HTTP/1.1\r\nHost: api.test\r\nAuthorization: {basic}\r\n\
             Expect: 100-continue\r\nContent-Length: 11",
            b"hello there",
        ),
        row(
            "query: repeated, empty and bare parameters",
            "GET /v1/status?a=1&a=2&b=&c&d=x%20y+z HTTP/1.1\r\nHost: api.test\r\nAuthorization: {basic}",
            b"",
        ),
        row(
            "query: slashes and a question mark inside",
            "GET /v1/status?next=/a/b?c=d&e=f HTTP/1.1\r\nHost: api.test\r\nAuthorization: {basic}",
            b"",
        ),
        row(
            "query: unicode, percent-encoded",
            "GET /v1/status?q=%E2%9C%93&name=Jos%C3%A9 HTTP/1.1\r\nHost: api.test\r\nAuthorization: {basic}",
            b"",
        ),
        row(
            "query: unicode, raw UTF-8",
            "GET /v1/status?q=\u{2713}&name=Jos\u{e9} HTTP/1.1\r\nHost: api.test\r\nAuthorization: {basic}",
            b"",
        ),
        row(
            "path: sub-delimiters, colon and at-sign",
            "GET /v1/status/a;b=c/it's(1)*+,=:@!$& HTTP/1.1\r\nHost: api.test\r\nAuthorization: {basic}",
            b"",
        ),
        row(
            "path: escapes of unreserved and non-ASCII characters, a space",
            "GET /v1/status/%7Euser/caf%C3%A9/a%20b HTTP/1.1\r\nHost: api.test\r\nAuthorization: {basic}",
            b"",
        ),
        row(
            "path: escapes in lower case",
            "GET /v1/status/caf%c3%a9/%7e HTTP/1.1\r\nHost: api.test\r\nAuthorization: {basic}",
            b"",
        ),
        row(
            "path: a trailing slash",
            "GET /v1/status/ HTTP/1.1\r\nHost: api.test\r\nAuthorization: {basic}",
            b"",
        ),
        row(
            "repeated headers, interleaved",
            "GET /v1/status HTTP/1.1\r\nHost: api.test\r\nAccept: text/html\r\nX-Multi: 1\r\n\
             Authorization: {basic}\r\nX-Other: o\r\nAccept: application/json;q=0.9\r\nX-Multi: 2",
            b"",
        ),
        row(
            "header names in odd case",
            "GET /v1/status HTTP/1.1\r\nhOsT: api.test\r\nauthorization: {basic}\r\n\
             X-MiXeD-CaSe: Value With Case\r\nCONTENT-LANGUAGE: en",
            b"",
        ),
        row(
            "header values: empty, padded, quoted, UTF-8, long",
            "GET /v1/status HTTP/1.1\r\nHost: api.test\r\nAuthorization: {basic}\r\nX-Empty:\r\n\
             X-Padded:    padded value   \r\nX-Quoted: \"a, b\"; q=\"c\"\r\nX-Utf8: caf\u{e9} \u{2713}\r\n\
             User-Agent: transparency/1.0 (+https://example.test)\r\nAccept-Encoding: gzip, br",
            b"",
        ),
        row(
            "cookies",
            "GET /v1/status HTTP/1.1\r\nHost: api.test\r\nAuthorization: {basic}\r\n\
             Cookie: session=abc; theme=dark\r\nCookie: other=1",
            b"",
        ),
        row(
            "a client request id",
            "GET /v1/status HTTP/1.1\r\nHost: api.test\r\nAuthorization: {basic}\r\nX-Request-Id: trace-7",
            b"",
        ),
        row(
            "the key as Bearer",
            "GET /v1/status HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {key}",
            b"",
        ),
        row(
            "the key in X-API-Key, the upstream's own Authorization beside it",
            "GET /v1/status HTTP/1.1\r\nHost: api.test\r\nX-API-Key: {key}\r\n\
             Authorization: Digest username=\"upstream-own\"",
            b"",
        ),
        row(
            "hop-by-hop headers and what Connection names",
            "GET /v1/status HTTP/1.1\r\nHost: api.test\r\nAuthorization: {basic}\r\n\
             Connection: X-Hop, keep-alive\r\nX-Hop: dropped\r\nKeep-Alive: timeout=5\r\n\
             TE: trailers\r\nProxy-Connection: keep-alive\r\nX-After: kept",
            b"",
        ),
        row(
            "headers the gateway drops or sets itself, sent by the client",
            "GET /v1/status HTTP/1.1\r\nHost: api.test\r\nAuthorization: {basic}\r\n\
             X-Keygate-Key-Id: forged\r\nX-Keygate-Environment: forged\r\nX-Forwarded-For: 6.6.6.6\r\n\
             X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.test\r\nX-Real-IP: 6.6.6.6\r\n\
             Forwarded: for=6.6.6.6\r\nX_Underscore: 1\r\nProxy-Authorization: Basic c2VjcmV0\r\n\
             X-HTTP-Method-Override: DELETE\r\nX-Original-URL: /admin\r\nX-Kept: yes",
            b"",
        ),
    ]
}

/// What the upstream sees of a request. Headers are grouped by name, each name's values in the
/// order received: HTTP gives the order of different names no meaning (RFC 9110 section 5.3),
/// only the order of one name's values. Values are their bytes, escaped where not printable.
#[derive(PartialEq)]
struct View {
    method: String,
    target: String,
    headers: BTreeMap<String, Vec<String>>,
    body: Vec<u8>,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} {}", self.method, self.target)?;
        for (name, values) in &self.headers {
            writeln!(f, "  {name}: {values:?}")?;
        }
        let shown = &self.body[..self.body.len().min(64)];
        write!(f, "  body: {} bytes: {}", self.body.len(), printable(shown))
    }
}

impl View {
    fn of(recorded: &Recorded) -> View {
        let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in &recorded.headers {
            let value = printable(value.as_bytes());
            headers.entry(name.as_str().to_owned()).or_default().push(value);
        }
        let target = recorded.uri.path_and_query().map(|pq| pq.as_str().to_owned());
        View {
            method: recorded.method.to_string(),
            target: target.unwrap_or_default(),
            headers,
            body: recorded.body.to_vec(),
        }
    }

    /// The one value of `name`, if there is one.
    fn header(&self, name: &str) -> Option<&str> {
        let values = self.headers.get(name)?;
        assert_eq!(values.len(), 1, "one {name}: {values:?}");
        Some(&values[0])
    }

    /// This view without the headers `drop` picks by name and value.
    fn without(mut self, drop: impl Fn(&str, &str) -> bool) -> View {
        for (name, values) in &mut self.headers {
            values.retain(|value| !drop(name, value));
        }
        self.headers.retain(|_, values| !values.is_empty());
        self
    }
}

/// `bytes` as text, with `\xNN` for each byte that is not printable ASCII.
fn printable(bytes: &[u8]) -> String {
    let char_of = |b: &u8| match b {
        0x20..=0x7e => char::from(*b).to_string(),
        _ => format!("\\x{b:02x}"),
    };
    bytes.iter().map(char_of).collect()
}

/// Hop-by-hop headers (RFC 9110 section 7.6.1) and the names `Connection` lists.
fn hop_by_hop(view: &View) -> Vec<String> {
    let fixed = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];
    let listed = view.headers.get("connection").into_iter().flatten();
    let listed = listed.flat_map(|value| value.split(',').map(|n| n.trim().to_ascii_lowercase()));
    fixed.map(String::from).into_iter().chain(listed).collect()
}

/// Headers the gateway drops whoever sends them, or from a peer that is no trusted proxy
/// (README, "What the upstream receives"); `Forwarded` it then sets itself.
const DROPPED: [&str; 14] = [
    "proxy-authorization",
    "x-http-method-override",
    "x-method-override",
    "x-http-method",
    "x-original-url",
    "x-rewrite-url",
    "x-forwarded-prefix",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-real-ip",
    "client-ip",
    "true-client-ip",
    "x-client-ip",
    "forwarded",
];

/// Headers the gateway sets, whatever the client sent; [`gateway_set`] checks their values.
const SET: [&str; 8] = [
    "host",
    "x-keygate-key-id",
    "x-keygate-environment",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

/// The direct view with the documented edits applied: the path in its normal form (SPEC 1:
/// normalized the same way for routing and forwarding), less hop-by-hop headers, the
/// credential, client `X-Keygate-*`, names with `_` and [`DROPPED`], and less the headers the
/// gateway sets ([`SET`]).
fn expected(direct: View, key: &str) -> View {
    let hop = hop_by_hop(&direct);
    let credential = [basic(key), format!("Bearer {key}")];
    let mut expected = direct.without(|name, value| {
        hop.iter().any(|h| h == name)
            || (name == "authorization" && credential.iter().any(|c| c == value))
            || name == "x-api-key"
            || name.starts_with("x-keygate-")
            || name.contains('_')
            || DROPPED.contains(&name)
            || SET.contains(&name)
    });
    expected.target = normal_target(&expected.target);
    expected
}

/// `target` with its path's escapes of unreserved characters decoded and the others in upper
/// case (RFC 3986 sections 6.2.2.1 and 6.2.2.2); the query as it is.
fn normal_target(target: &str) -> String {
    let (path, query) = target
        .split_once('?')
        .map_or((target, None), |(p, q)| (p, Some(q)));
    let mut normal = String::new();
    let mut rest = path;
    while let Some(at) = rest.find('%') {
        normal.push_str(&rest[..at]);
        let hex = &rest[at + 1..at + 3];
        let byte = u8::from_str_radix(hex, 16).unwrap();
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            normal.push(char::from(byte));
        } else {
            normal.push('%');
            normal.push_str(&hex.to_ascii_uppercase());
        }
        rest = &rest[at + 3..];
    }
    normal.push_str(rest);
    match query {
        Some(query) => format!("{normal}?{query}"),
        None => normal,
    }
}

/// What differs in the values the gateway set on the forwarded view from the documented ones.
fn gateway_set(through: &View, direct: &View, h: &Harness, key_id: &str) -> Vec<String> {
    let forwarded = format!("for=127.0.0.1;proto=http;host=\"{HOST}\"");
    let request_id = direct.header("x-request-id");
    let wanted: [(&str, Option<&str>); 8] = [
        ("host", Some(&h.upstream.addr.to_string())),
        ("x-keygate-key-id", Some(key_id)),
        ("x-keygate-environment", Some("production")),
        ("x-keygate-customer", None),
        ("x-forwarded-for", Some("127.0.0.1")),
        ("x-forwarded-proto", Some("http")),
        ("x-forwarded-host", Some(HOST)),
        ("forwarded", Some(&forwarded)),
    ];
    let mut wrong: Vec<String> = wanted
        .into_iter()
        .filter(|(name, want)| through.header(name) != *want)
        .map(|(name, want)| format!("{name}: {:?}, not {want:?}", through.header(name)))
        .collect();
    match (through.header("x-request-id"), request_id) {
        (Some(got), Some(sent)) if got == sent => {}
        (Some(got), None) if got.len() == 32 => {}
        (got, sent) => wrong.push(format!("x-request-id: {got:?} for the client's {sent:?}")),
    }
    wrong
}

/// Sends `head` and `body` on a new connection to `addr` as HTTP/1.1 (`Connection: close`
/// added), waiting for `100 Continue` first when the head expects it; the raw answer.
async fn exchange(addr: SocketAddr, head: &str, body: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!("{head}\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    if head.to_ascii_lowercase().contains("expect: 100-continue") {
        let mut buf = [0u8; 1024];
        while !answer.ends_with(b"\r\n\r\n") {
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf));
            let n = read.await.expect("100 Continue in time").unwrap();
            assert!(n > 0, "closed before 100 Continue");
            answer.extend_from_slice(&buf[..n]);
        }
        assert!(answer.starts_with(b"HTTP/1.1 100 Continue"), "{answer:?}");
    }
    stream.write_all(body).await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer));
    read.await.expect("the answer in time").unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// Sends `row` to `addr`; the upstream's view of it.
async fn view(h: &Harness, addr: SocketAddr, row: &Row, key: &str) -> View {
    let head = row.head.replace("{basic}", &basic(key)).replace("{key}", key);
    let before = h.upstream.count();
    let answer = exchange(addr, &head, &row.body).await;
    let last_status = answer.rsplit("HTTP/1.1 ").next().unwrap_or_default();
    assert!(last_status.starts_with("200"), "{}: {answer}", row.name);
    assert_eq!(h.upstream.count(), before + 1, "{}", row.name);
    View::of(&h.upstream.last())
}

#[tokio::test]
async fn requests_reach_the_upstream_as_sent_but_for_the_documented_edits() {
    let h = Harness::start().await;
    let (id, key) = h.key(&["*"]).await;
    let mut failures = Vec::new();
    for row in rows() {
        let direct = view(&h, h.upstream.addr, &row, &key).await;
        let through = view(&h, h.gateway.proxy_addr, &row, &key).await;
        assert_eq!(direct.body, unframed(&row), "{}: the direct body", row.name);
        let mut wrong = gateway_set(&through, &direct, &h, &id);
        // Each hop frames the body its own way; the bytes are compared.
        let through = through.without(|name, _| SET.contains(&name) || name == "transfer-encoding");
        let expected = expected(direct, &key);
        if through != expected {
            wrong.push(format!("forwarded:\n{through:?}\nexpected:\n{expected:?}"));
        }
        if !wrong.is_empty() {
            failures.push(format!("{}:\n{}", row.name, wrong.join("\n")));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

/// The body bytes a row carries, without their chunked framing.
fn unframed(row: &Row) -> Vec<u8> {
    if !row
        .head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return row.body.clone();
    }
    let mut body = Vec::new();
    let mut rest = &row.body[..];
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = std::str::from_utf8(&rest[..line_end]).unwrap();
        let size = usize::from_str_radix(size, 16).unwrap();
        if size == 0 {
            return body;
        }
        let data = &rest[line_end + 2..];
        body.extend_from_slice(&data[..size]);
        rest = &data[size + 2..];
    }
}
