//! The edge, as raw bytes on a socket (the way HAProxy's regression tests are written): each
//! row is a request as a client could send it, the status the gateway must answer, and whether
//! anything may reach the upstream. Issue 12: framing, host, header forgery, method override,
//! forwarding headers, refusals, paths, the failed-auth throttle, silent connections.

use crate::support;

use std::time::Duration;

use crate::support::{ConfigEdit, Harness, STANDARD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One request on a fresh connection. `{auth}` is replaced by a valid `Authorization` value of
/// a key with every permission.
struct Row {
    name: &'static str,
    request: &'static str,
    status: u16,
    reaches_upstream: bool,
}

const fn row(name: &'static str, request: &'static str, status: u16, reaches_upstream: bool) -> Row {
    Row {
        name,
        request,
        status,
        reaches_upstream,
    }
}

/// A row hyper's parser refuses before the gateway sees a request (the gateway still gives the
/// refusal its JSON body on the way out); kept so that a change of parser cannot let it through.
const fn hyper_refuses(name: &'static str, request: &'static str) -> Row {
    row(name, request, 400, false)
}

/// A response as read off the socket: its status, its head in lower case, and whether the
/// gateway closed the connection after it.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    closed: bool,
}

const DEADLINE: Duration = Duration::from_secs(5);

/// Sends `bytes` on a new connection and reads one response: the head, then as much body as
/// it declares, then whether the connection ends (within the deadline).
async fn exchange(h: &Harness, bytes: &[u8]) -> Raw {
    exchange_from(h, "127.0.0.1", bytes).await
}

/// [`exchange`] from another loopback address, e.g. a trusted proxy's.
async fn exchange_from(h: &Harness, local: &str, bytes: &[u8]) -> Raw {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(h.gateway.proxy_addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0; 4096];
    let head_end = loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        match tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => {
                return Raw {
                    status: 0,
                    head: String::from_utf8_lossy(&got).into_owned(),
                    closed: true,
                }
            }
        }
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = got.len() - head_end;
    while body < length {
        match tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => body += n,
            _ => break,
        }
    }
    // Whatever a smuggled second request would have produced, or the end of the connection.
    let closed = matches!(
        tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    );
    Raw { status, head, closed }
}

/// Runs every row against one gateway and reports every row that failed, not just the first.
async fn run(h: &Harness, auth: &str, rows: &[Row]) {
    let mut failures = Vec::new();
    for row in rows {
        let before = h.upstream.count();
        let request = row.request.replace("{auth}", auth);
        let answer = exchange(h, request.as_bytes()).await;
        let reached = h.upstream.count() > before;
        if answer.status != row.status || reached != row.reaches_upstream {
            failures.push(format!(
                "{}: got {} (upstream reached: {reached}), want {} (upstream reached: {})\n{}",
                row.name, answer.status, row.status, row.reaches_upstream, answer.head
            ));
            continue;
        }
        if answer.status >= 400 && !answer.head.contains("cache-control: no-store") {
            failures.push(format!(
                "{}: a refusal without no-store\n{}",
                row.name, answer.head
            ));
        }
        if answer.status == 400 && !(answer.closed && answer.head.contains("connection: close")) {
            failures.push(format!(
                "{}: a 400 that leaves the connection open\n{}",
                row.name, answer.head
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

async fn standard() -> (Harness, String) {
    let h = Harness::start().await;
    let (_, key) = h.key(&["*"]).await;
    let auth = support::basic(&key);
    (h, auth)
}

/// Request framing that two parsers could read two ways; refused before any auth work.
const FRAMING: &[Row] = &[
    row(
        "a plain chunked body passes",
        "POST /v1/status HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        200,
        true,
    ),
    row(
        "a plain length passes",
        "POST /v1/status HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ncontent-length: 3\r\n\r\nabc",
        200,
        true,
    ),
    row(
        "chunked, chunked",
        "POST /v1/status HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ntransfer-encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        400,
        false,
    ),
    row(
        "gzip, chunked",
        "POST /v1/status HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        400,
        false,
    ),
    row(
        "two Transfer-Encoding lines",
        "POST /v1/status HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        false,
    ),
    // hyper drops a Content-Length beside Transfer-Encoding and keeps one of two equal ones:
    // the gateway finds them in the bytes as sent (src/proxy/wire.rs).
    row(
        "CL.TE: Content-Length, then chunked",
        "POST /v1/status HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ncontent-length: 6\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nG",
        400,
        false,
    ),
    row(
        "TE.CL: chunked, then Content-Length",
        "POST /v1/status HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\nGET /v1/status HTTP/1.1\r\nhost: x\r\n\r\n",
        400,
        false,
    ),
    row(
        "Content-Length twice, same value",
        "POST /v1/status HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\nabc",
        400,
        false,
    ),
    hyper_refuses(
        "Content-Length twice, differing",
        "POST /v1/status HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
    ),
    hyper_refuses(
        "Content-Length not a number",
        "POST /v1/status HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ncontent-length: +3\r\n\r\nabc",
    ),
    hyper_refuses(
        "Transfer-Encoding : chunked, space before the colon",
        "POST /v1/status HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ntransfer-encoding : chunked\r\n\r\n0\r\n\r\n",
    ),
    hyper_refuses(
        "Transfer-Encoding: xchunked",
        "POST /v1/status HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ntransfer-encoding: xchunked\r\n\r\n0\r\n\r\n",
    ),
    hyper_refuses(
        "Transfer-Encoding in HTTP/1.0",
        "POST /v1/status HTTP/1.0\r\nhost: x\r\nauthorization: {auth}\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    hyper_refuses(
        "chunked not the final coding",
        "POST /v1/status HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ntransfer-encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    ),
    hyper_refuses(
        "obs-fold",
        "GET /v1/status HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\nx-folded: a\r\n b\r\n\r\n",
    ),
    hyper_refuses(
        "NUL in a value",
        "GET /v1/status HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\nx-nul: a\0b\r\n\r\n",
    ),
    hyper_refuses(
        "bare CR in a value",
        "GET /v1/status HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\nx-cr: a\rb\r\n\r\n",
    ),
];

#[tokio::test]
async fn framing_with_two_readings_is_refused_before_auth_and_closes_the_connection() {
    let (h, auth) = standard().await;
    run(&h, &auth, FRAMING).await;
    // Refused before any auth work: without a key, the same 400, not 401.
    let answer = exchange(
        &h,
        b"POST /v1/status HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(answer.status, 400, "{answer:?}");
}

const HOSTS: &[Row] = &[
    row(
        "HTTP/1.1 without Host",
        "GET /v1/status HTTP/1.1\r\nauthorization: {auth}\r\n\r\n",
        400,
        false,
    ),
    row(
        "two Host lines",
        "GET /v1/status HTTP/1.1\r\nhost: a.test\r\nhost: b.test\r\nauthorization: {auth}\r\n\r\n",
        400,
        false,
    ),
    row(
        "absolute form with a Host that disagrees",
        "GET http://a.test/v1/status HTTP/1.1\r\nhost: b.test\r\nauthorization: {auth}\r\n\r\n",
        400,
        false,
    ),
    row(
        "absolute form with a Host that agrees",
        "GET http://a.test/v1/status HTTP/1.1\r\nhost: a.test\r\nauthorization: {auth}\r\n\r\n",
        200,
        true,
    ),
    row(
        "HTTP/1.0 without Host",
        "GET /v1/status HTTP/1.0\r\nauthorization: {auth}\r\n\r\n",
        200,
        true,
    ),
];

/// A folded head is found at its place among a connection's requests: the requests before it
/// on the same connection are served.
#[tokio::test]
async fn a_folded_head_after_a_served_request_is_refused_on_the_same_connection() {
    let (h, auth) = standard().await;
    let request = format!(
        "POST /v1/status HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ncontent-length: 29\r\n\r\n\
         content-length: 1\r\ntransfer-e\
         POST /v1/status HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ncontent-length: 6\r\n\
         transfer-encoding: chunked\r\n\r\n0\r\n\r\nG"
    );
    let mut stream = TcpStream::connect(h.gateway.proxy_addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answers = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answers)).await;
    let answers = String::from_utf8_lossy(&answers);
    let statuses: Vec<_> = answers
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| &answers[at + 9..at + 12])
        .collect();
    assert_eq!(statuses, ["200", "400"], "{answers}");
    assert_eq!(h.upstream.count(), 1);
    assert_eq!(h.upstream.last().body, "content-length: 1\r\ntransfer-e");
}

#[tokio::test]
async fn a_request_names_one_host_or_is_refused() {
    let (h, auth) = standard().await;
    run(&h, &auth, HOSTS).await;
}

/// A route bound to a host: the absolute form's authority is what routes, not `Host`.
#[tokio::test]
async fn the_absolute_form_routes_by_its_authority() {
    let extra = "[[route]]\nname = \"bound\"\nhost = \"bound.test\"\npath = \"/bound\"\nupstream = \"api\"\n";
    let h = Harness::with_config(STANDARD, extra).await;
    let (_, key) = h.key(&["*"]).await;
    let auth = support::basic(&key);
    let rows = [
        row(
            "authority and Host both the bound host",
            "GET http://bound.test/bound HTTP/1.1\r\nhost: bound.test\r\nauthorization: {auth}\r\n\r\n",
            200,
            true,
        ),
        row(
            "authority elsewhere, Host the bound host",
            "GET http://other.test/bound HTTP/1.1\r\nhost: bound.test\r\nauthorization: {auth}\r\n\r\n",
            400,
            false,
        ),
    ];
    run(&h, &auth, &rows).await;
}

/// A route bound to `admin.example.com` beside a host-less one on the same path, with other
/// permissions: the host-less route is open to any key, the bound one wants `admin:all`, and
/// tells the upstream the client's host (`preserve_host`).
const ADMIN_ROUTE: &str =
    "[[route]]\nname = \"admin\"\nhost = \"admin.example.com\"\npath = \"/v1/status\"\n\
     upstream = \"api\"\npreserve_host = true\npermissions = { \"*\" = \"admin:all\" }\n";

/// Issue 19, item 3: another spelling of a bound route's host (a trailing dot, a list, a port
/// after the dot) must reach that route or be refused, never fall through to a host-less route
/// with other permissions.
#[tokio::test]
async fn a_host_bound_route_is_not_skipped_by_another_spelling_of_its_host() {
    let h = Harness::with_config(STANDARD, ADMIN_ROUTE).await;
    let (_, key) = h.key(&["customer:read"]).await;
    let auth = support::basic(&key);
    macro_rules! get {
        ($host:literal) => {
            concat!(
                "GET /v1/status HTTP/1.1\r\nhost: ",
                $host,
                "\r\nauthorization: {auth}\r\n\r\n"
            )
        };
    }
    let rows = [
        row("the bound host", get!("admin.example.com"), 403, false),
        row(
            "the bound host in upper case",
            get!("ADMIN.example.com"),
            403,
            false,
        ),
        row("a trailing dot", get!("admin.example.com."), 403, false),
        row(
            "a trailing dot and a port",
            get!("admin.example.com.:80"),
            403,
            false,
        ),
        row("a list", get!("x, admin.example.com"), 400, false),
        row("a list without a space", get!("x,admin.example.com"), 400, false),
        row("a space", get!("admin.example.com x"), 400, false),
        row("a quote", get!("\"admin.example.com\""), 400, false),
        row("a slash", get!("admin.example.com/x"), 400, false),
        row("user info", get!("u@admin.example.com"), 400, false),
        row("two trailing dots", get!("admin.example.com.."), 400, false),
        row(
            "a port that is no number",
            get!("admin.example.com:x"),
            400,
            false,
        ),
        row(
            "empty",
            "GET /v1/status HTTP/1.1\r\nhost:\r\nauthorization: {auth}\r\n\r\n",
            400,
            false,
        ),
        row(
            "absolute form with a trailing dot",
            "GET http://admin.example.com./v1/status HTTP/1.1\r\nhost: admin.example.com\r\n\
             authorization: {auth}\r\n\r\n",
            403,
            false,
        ),
        row("another host", get!("other.example.com"), 200, true),
        row("an IPv6 literal with a port", get!("[::1]:8080"), 200, true),
    ];
    run(&h, &auth, &rows).await;

    // A key that may: the upstream is told the host in its normal form.
    let (_, admin) = h.key(&["admin:all"]).await;
    let admin = support::basic(&admin);
    for (host, told) in [
        ("admin.example.com.", "admin.example.com"),
        ("admin.example.com.:80", "admin.example.com:80"),
        ("Admin.Example.com", "Admin.Example.com"),
    ] {
        let request = format!("GET /v1/status HTTP/1.1\r\nhost: {host}\r\nauthorization: {admin}\r\n\r\n");
        assert_eq!(exchange(&h, request.as_bytes()).await.status, 200, "{host}");
        let got = h.upstream.last().headers;
        assert_eq!(got["host"], told, "{host}");
        assert_eq!(got["x-forwarded-host"], told, "{host}");
        let forwarded = got["forwarded"].to_str().unwrap();
        assert!(forwarded.ends_with(&format!(";host=\"{told}\"")), "{forwarded}");
    }
}

/// Every refusal the gateway answers itself is `Cache-Control: no-store` (checked by [`run`] for
/// each row; the statuses not reachable here are pinned by error.rs's unit tests).
#[tokio::test]
async fn refusals_are_not_cacheable() {
    let template = STANDARD.set("server", "max_request_body = 4");
    let h = Harness::with_config(&template, "").await;
    let (_, key) = h.key(&["customer:read"]).await;
    let auth = support::basic(&key);
    let rows = [
        row("401", "GET /v1/status HTTP/1.1\r\nhost: x\r\n\r\n", 401, false),
        row(
            "404",
            "GET /nowhere HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\n\r\n",
            404,
            false,
        ),
        row(
            "403",
            "DELETE /v1/customers/acme HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\n\r\n",
            403,
            false,
        ),
        row(
            "413",
            "POST /v1/status HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ncontent-length: 5\r\n\r\nabcde",
            413,
            false,
        ),
    ];
    run(&h, &auth, &rows).await;
}

/// Header names with `_`, which CGI-style upstreams read with `-`: dropped before forwarding by
/// default, the request refused with `underscore_headers = "refuse"`.
#[tokio::test]
async fn underscore_headers_are_dropped_or_refused() {
    let forged =
        "GET /v1/status HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\nx_keygate_key_id: forged\r\n\
                  x_forwarded_for: 6.6.6.6\r\nx-custom: kept\r\n\r\n";
    let (h, auth) = standard().await;
    run(
        &h,
        &auth,
        &[row("an underscore header, dropped", forged, 200, true)],
    )
    .await;
    let got = h.upstream.last().headers;
    assert!(
        got.get("x_keygate_key_id").is_none() && got.get("x_forwarded_for").is_none(),
        "{got:?}"
    );
    assert_eq!(got["x-custom"], "kept");

    let refusing = STANDARD.set("server", "underscore_headers = \"refuse\"");
    let h = Harness::with_config(&refusing, "").await;
    let (_, key) = h.key(&["*"]).await;
    let auth = support::basic(&key);
    let rows = [
        row("an underscore header, refused", forged, 400, false),
        row(
            "no underscore, served",
            "GET /v1/status HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\nx-custom: kept\r\n\r\n",
            200,
            true,
        ),
    ];
    run(&h, &auth, &rows).await;
}

/// A route that lets the method-override headers through to its upstream.
const OVERRIDE_ROUTE: &str = "[[route]]\nname = \"override\"\npath = \"/override\"\nupstream = \"api\"\n\
     allow_method_override = true\npermissions = { GET = \"customer:read\", \"*\" = \"customer:write\" }\n";

/// A read-only key cannot delete by sending `GET` with `X-HTTP-Method-Override: DELETE`.
#[tokio::test]
async fn method_overrides_are_stripped_or_checked_as_the_method_they_name() {
    let h = Harness::with_config(STANDARD, OVERRIDE_ROUTE).await;
    let (_, key) = h.key(&["customer:read"]).await;
    let auth = support::basic(&key);
    let rows = [
        row(
            "an override on a route that does not allow it goes nowhere",
            "GET /v1/customers/acme HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\nx-http-method-override: DELETE\r\n\
             x-method-override: DELETE\r\nx-http-method: DELETE\r\n\r\n",
            200,
            true,
        ),
        row(
            "GET overridden to DELETE needs the DELETE permission",
            "GET /override HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\nx-http-method-override: DELETE\r\n\r\n",
            403,
            false,
        ),
        row(
            "X-HTTP-Method too",
            "GET /override HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\nx-http-method: DELETE\r\n\r\n",
            403,
            false,
        ),
        row(
            "overrides that disagree",
            "GET /override HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\nx-http-method: GET\r\nx-method-override: DELETE\r\n\r\n",
            400,
            false,
        ),
        row(
            "an override to a permitted method passes",
            "POST /override HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\nx-http-method-override: GET\r\ncontent-length: 0\r\n\r\n",
            200,
            true,
        ),
    ];
    run(&h, &auth, &rows[..1]).await;
    let got = h.upstream.last().headers;
    for name in ["x-http-method-override", "x-method-override", "x-http-method"] {
        assert!(got.get(name).is_none(), "{name} reached the upstream: {got:?}");
    }
    run(&h, &auth, &rows[1..]).await;
    assert_eq!(h.upstream.last().headers["x-http-method-override"], "GET");
}

/// A route whose `DELETE` wants more than its `POST`, without method overrides.
const ITEMS_ROUTE: &str = "[[route]]\nname = \"items\"\npath = \"/v1/items\"\nupstream = \"api\"\n\
     permissions = { GET = \"item:read\", POST = \"item:write\", DELETE = \"item:delete\" }\n";

/// Issue 19, item 5: `_method` in the query is an override like the headers. Where the route
/// does not allow overrides it is refused (it cannot be stripped without rewriting the
/// target), under every spelling a framework reads as `_method`; where the route allows them,
/// the permission checked is that of the method it names.
#[tokio::test]
async fn a_method_parameter_in_the_query_is_refused_or_checked_like_the_override_headers() {
    let h = Harness::with_config(STANDARD, &format!("{ITEMS_ROUTE}{OVERRIDE_ROUTE}")).await;
    let (_, writer) = h.key(&["item:write", "customer:read"]).await;
    let auth = support::basic(&writer);
    let rows = [
        row(
            "DELETE itself",
            "DELETE /v1/items/1 HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\n\r\n",
            403,
            false,
        ),
        row(
            "a plain POST",
            "POST /v1/items/1?a=1 HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ncontent-length: 0\r\n\r\n",
            200,
            true,
        ),
        row(
            "POST ?_method=DELETE",
            "POST /v1/items/1?_method=DELETE HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ncontent-length: 0\r\n\r\n",
            400,
            false,
        ),
        row(
            "POST ?_METHOD=DELETE",
            "POST /v1/items/1?a=1&_METHOD=DELETE HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ncontent-length: 0\r\n\r\n",
            400,
            false,
        ),
        row(
            "POST ?%5Fmethod=DELETE",
            "POST /v1/items/1?%5Fmethod=DELETE HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ncontent-length: 0\r\n\r\n",
            400,
            false,
        ),
        row(
            "POST ?.method=DELETE, which PHP reads as _method",
            "POST /v1/items/1?.method=DELETE HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ncontent-length: 0\r\n\r\n",
            400,
            false,
        ),
        row(
            "a parameter that only ends in _method",
            "POST /v1/items/1?x_method=DELETE HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ncontent-length: 0\r\n\r\n",
            200,
            true,
        ),
        // On a route that allows overrides (GET needs customer:read, the rest customer:write).
        row(
            "GET ?_method=DELETE where overrides are allowed",
            "GET /override?_method=DELETE HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\n\r\n",
            403,
            false,
        ),
        row(
            "a parameter and a header that disagree",
            "GET /override?_method=GET HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\nx-http-method-override: DELETE\r\n\r\n",
            400,
            false,
        ),
        row(
            "POST ?_method=GET where overrides are allowed",
            "POST /override?_method=GET HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ncontent-length: 0\r\n\r\n",
            200,
            true,
        ),
    ];
    run(&h, &auth, &rows).await;
    assert_eq!(h.upstream.last().uri.query(), Some("_method=GET"));
}

/// Issue 19, item 5: headers an upstream reads as another path or another hop never pass;
/// headers that name a client address pass only from a trusted proxy; `X-Forwarded-For`,
/// `-Proto` and `-Host` are the gateway's (the chain extended only from a trusted proxy).
#[tokio::test]
async fn path_and_client_address_headers_a_client_could_forge_do_not_reach_the_upstream() {
    let (h, auth) = standard().await;
    let request = format!(
        "GET /v1/status HTTP/1.1\r\nhost: api.test\r\nauthorization: {auth}\r\n\
         x-original-url: /admin\r\nx-rewrite-url: /admin\r\nx-forwarded-prefix: /admin\r\n\
         x-forwarded-port: 443\r\nx-forwarded-server: forged\r\nclient-ip: 6.6.6.6\r\n\
         true-client-ip: 6.6.6.6\r\nx-client-ip: 6.6.6.6\r\nx-real-ip: 6.6.6.6\r\n\
         x-forwarded-for: 6.6.6.6\r\nx-forwarded-proto: https\r\nx-forwarded-host: forged.test\r\n\r\n"
    );
    let rewrites = [
        "x-original-url",
        "x-rewrite-url",
        "x-forwarded-prefix",
        "x-forwarded-port",
        "x-forwarded-server",
    ];
    let addresses = ["client-ip", "true-client-ip", "x-client-ip", "x-real-ip"];

    assert_eq!(exchange(&h, request.as_bytes()).await.status, 200);
    let got = h.upstream.last().headers;
    for name in rewrites.iter().chain(&addresses) {
        assert!(got.get(*name).is_none(), "{name} from an untrusted peer: {got:?}");
    }
    assert_eq!(got["x-forwarded-for"], "127.0.0.1");
    assert_eq!(got["x-forwarded-proto"], "http");
    assert_eq!(got["x-forwarded-host"], "api.test");

    // From the trusted proxy (127.0.0.2 in the standard config).
    assert_eq!(
        exchange_from(&h, "127.0.0.2", request.as_bytes()).await.status,
        200
    );
    let got = h.upstream.last().headers;
    for name in rewrites {
        assert!(got.get(name).is_none(), "{name} from a trusted proxy: {got:?}");
    }
    for name in addresses {
        assert_eq!(got[name], "6.6.6.6", "{name} from a trusted proxy");
    }
    assert_eq!(got["x-forwarded-for"], "6.6.6.6, 127.0.0.2");
    assert_eq!(got["x-forwarded-proto"], "http");
    assert_eq!(got["x-forwarded-host"], "api.test");
}

/// `X-Real-IP` and `Forwarded` are believed only from a trusted proxy; `Proxy-Authorization`
/// never goes on.
#[tokio::test]
async fn forwarding_headers_are_the_gateways_unless_a_trusted_proxy_sent_them() {
    let (h, auth) = standard().await;
    let request =
        "GET /v1/status HTTP/1.1\r\nhost: api.test\r\nauthorization: {auth}\r\nx-real-ip: 6.6.6.6\r\n\
                   forwarded: for=6.6.6.6\r\nproxy-authorization: Basic c2VjcmV0\r\n\r\n"
            .replace("{auth}", &auth);
    // From an untrusted peer: the gateway's own element only.
    assert_eq!(exchange(&h, request.as_bytes()).await.status, 200);
    let got = h.upstream.last().headers;
    assert!(got.get("x-real-ip").is_none(), "{got:?}");
    assert!(got.get("proxy-authorization").is_none(), "{got:?}");
    let forwarded: Vec<_> = got.get_all("forwarded").iter().collect();
    assert_eq!(forwarded, [r#"for=127.0.0.1;proto=http;host="api.test""#]);
    // From the trusted proxy (127.0.0.2 in the standard config): its values, then ours.
    assert_eq!(
        exchange_from(&h, "127.0.0.2", request.as_bytes()).await.status,
        200
    );
    let got = h.upstream.last().headers;
    assert_eq!(got["x-real-ip"], "6.6.6.6");
    assert!(got.get("proxy-authorization").is_none(), "{got:?}");
    let forwarded: Vec<_> = got.get_all("forwarded").iter().collect();
    assert_eq!(
        forwarded,
        ["for=6.6.6.6", r#"for=127.0.0.2;proto=http;host="api.test""#]
    );
}

/// Paths an upstream would read as another path than the one the gateway routed and checked.
const PATHS: &[Row] = &[
    row(
        "..; is .. to Tomcat and Spring",
        "GET /v1/status/..;/customers/other HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\n\r\n",
        400,
        false,
    ),
    row(
        "..;jsessionid=",
        "GET /v1/status/..;jsessionid=1/x HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\n\r\n",
        400,
        false,
    ),
    row(
        ".;",
        "GET /v1/status/.;/x HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\n\r\n",
        400,
        false,
    ),
    row(
        "%252e%252e, a dot segment to an upstream that decodes twice",
        "GET /v1/status/%252e%252e/x HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\n\r\n",
        400,
        false,
    ),
    row(
        "%252%65 (found by fuzzing): its normal form is %252e, a dot to an upstream that decodes twice",
        "GET /v1/status/%252%65%252%65/x HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\n\r\n",
        400,
        false,
    ),
    row(
        "%252F, a slash to an upstream that decodes twice",
        "GET /v1/status%252Fx HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\n\r\n",
        400,
        false,
    ),
    row(
        "%255c, a backslash to an upstream that decodes twice",
        "GET /v1/status%255cx HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\n\r\n",
        400,
        false,
    ),
    row(
        "a parameter on an ordinary segment is no dot segment (it routes nowhere here)",
        "GET /v1/status;v=1 HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\n\r\n",
        404,
        false,
    ),
    row(
        "an encoded percent sign passes",
        "GET /v1/status/100%25 HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\n\r\n",
        200,
        true,
    ),
];

#[tokio::test]
async fn paths_an_upstream_reads_as_dot_segments_or_slashes_are_refused() {
    let (h, auth) = standard().await;
    run(&h, &auth, PATHS).await;
}

/// The server's first SETTINGS frame, read as bytes after the client preface: HTTP/2 flow
/// control lets a stream make the gateway buffer at most 64 KiB.
#[tokio::test]
async fn http2_streams_get_a_64_kib_window() {
    let (h, _) = standard().await;
    let mut stream = TcpStream::connect(h.gateway.proxy_addr).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // an empty SETTINGS frame
    stream.write_all(&hello).await.unwrap();
    let mut header = [0; 9];
    tokio::time::timeout(DEADLINE, stream.read_exact(&mut header))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(header[3], 4, "the server speaks first with SETTINGS");
    let len = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    let mut payload = vec![0; len];
    stream.read_exact(&mut payload).await.unwrap();
    let window = payload
        .chunks(6)
        .find(|setting| setting[..2] == [0, 4]) // SETTINGS_INITIAL_WINDOW_SIZE
        .map(|setting| u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]));
    assert!(window.is_some_and(|w| w <= 65_535), "{window:?}");
}

mod silent {
    //! Connections that never send a byte, or stop inside the TLS handshake, must not hold the
    //! connection cap: past `first_byte_timeout` / `tls_handshake_timeout` they are closed and
    //! a legitimate client gets its turn.

    use super::*;
    use std::path::PathBuf;

    const CAP: usize = 4;

    fn capped(extra: &str) -> String {
        STANDARD.set(
            "server",
            &format!(
                "max_connections = {CAP}\nfirst_byte_timeout = \"200ms\"\n\
                 tls_handshake_timeout = \"200ms\"\n{extra}"
            ),
        )
    }

    /// Every socket ends (the gateway closed it) within the deadline.
    async fn all_closed(sockets: Vec<TcpStream>) {
        for mut socket in sockets {
            let mut buf = [0; 64];
            let end = tokio::time::timeout(DEADLINE, socket.read(&mut buf)).await;
            assert!(matches!(end, Ok(Ok(0) | Err(_))), "still open: {end:?}");
        }
    }

    #[tokio::test]
    async fn silent_sockets_are_closed_and_do_not_starve_the_cap() {
        let h = Harness::with_config(&capped(""), "").await;
        let (_, key) = h.key(&["*"]).await;
        let mut silent = Vec::new();
        for _ in 0..CAP {
            silent.push(TcpStream::connect(h.gateway.proxy_addr).await.unwrap());
        }
        let answer = tokio::time::timeout(DEADLINE, h.get("/v1/status", &key))
            .await
            .expect("a legitimate request is served while silent sockets held the cap");
        assert_eq!(answer.status, 200);
        all_closed(silent).await;
    }

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tls")
            .join(name)
    }

    /// A request over TLS, trusting the fixtures' CA; the raw response.
    async fn over_tls(h: &Harness, request: &str) -> String {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(fixture("ca.pem")).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut stream = support::clients::tls(h.gateway.proxy_addr, roots).await;
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn half_done_tls_handshakes_are_closed_and_do_not_starve_the_cap() {
        let tls = format!(
            "tls = {{ cert = {:?}, key = {:?} }}\n",
            fixture("cert.pem"),
            fixture("key.pem")
        );
        let h = Harness::with_config(&capped(&tls), "").await;
        let (_, key) = h.key(&["*"]).await;
        let mut stalled = Vec::new();
        for _ in 0..CAP {
            let mut socket = TcpStream::connect(h.gateway.proxy_addr).await.unwrap();
            // A TLS record header announcing a 255-byte handshake message, and nothing more.
            socket
                .write_all(&[0x16, 0x03, 0x01, 0x00, 0xff, 0x01])
                .await
                .unwrap();
            stalled.push(socket);
        }
        let request = format!(
            "GET /v1/status HTTP/1.1\r\nhost: localhost\r\nauthorization: {}\r\nconnection: close\r\n\r\n",
            support::basic(&key)
        );
        let answer = tokio::time::timeout(DEADLINE, over_tls(&h, &request))
            .await
            .expect("a legitimate TLS request is served while stalled handshakes held the cap");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        all_closed(stalled).await;
    }
}

mod h2 {
    //! HTTP/2 in prior-knowledge mode on the plain port (hyper-util's auto server).

    use super::*;
    use bytes::Bytes;
    use http::Request;
    use http_body_util::Full;

    async fn send(h: &Harness, request: Request<Full<Bytes>>) -> http::StatusCode {
        let mut sender = support::clients::h2(h.gateway.proxy_addr).await;
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(
            response.headers().get("cache-control").map(|v| v.as_bytes()),
            (response.status() != 200).then_some(&b"no-store"[..]),
        );
        response.status()
    }

    fn get(h: &Harness, authority: &str, auth: &str) -> http::request::Builder {
        let _ = h;
        Request::get(format!("http://{authority}/v1/status"))
            .version(http::Version::HTTP_2)
            .header("authorization", auth)
    }

    #[tokio::test]
    async fn the_authority_routes_and_a_disagreeing_host_is_refused() {
        let (h, auth) = standard().await;
        let body = || Full::new(Bytes::new());
        let plain = get(&h, "a.test", &auth).body(body()).unwrap();
        assert_eq!(send(&h, plain).await, 200);
        let agreeing = get(&h, "a.test", &auth)
            .header("host", "a.test")
            .body(body())
            .unwrap();
        assert_eq!(send(&h, agreeing).await, 200);
        let before = h.upstream.count();
        let disagreeing = get(&h, "a.test", &auth)
            .header("host", "b.test")
            .body(body())
            .unwrap();
        assert_eq!(send(&h, disagreeing).await, 400);
        assert_eq!(h.upstream.count(), before);
    }

    /// h2 checks that the body matches the first `Content-Length`; a second one would pass on.
    #[tokio::test]
    async fn a_repeated_content_length_is_refused() {
        let (h, auth) = standard().await;
        let request = Request::post("http://a.test/v1/status")
            .version(http::Version::HTTP_2)
            .header("authorization", &auth)
            .header("content-length", "3")
            .header("content-length", "3")
            .body(Full::new(Bytes::from_static(b"abc")))
            .unwrap();
        assert_eq!(send(&h, request).await, 400);
        assert_eq!(h.upstream.count(), 0);
    }

    /// Issue 19, item 9: a header list past `max_header_bytes` (measured as RFC 9113 measures
    /// it) is the gateway's 431, with its JSON body, `no-store` and a request id, not h2's
    /// bare one.
    #[tokio::test]
    async fn a_header_list_past_max_header_bytes_gets_the_gateways_431() {
        let template = STANDARD.set("server", "max_header_bytes = 4096");
        let h = Harness::with_config(&template, "").await;
        let (_, key) = h.key(&["*"]).await;
        let auth = support::basic(&key);
        for size in [4_200, 6_000, 7_500] {
            let big = get(&h, "a.test", &auth)
                .header("x-big", "a".repeat(size))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let mut sender = support::clients::h2(h.gateway.proxy_addr).await;
            let response = sender.send_request(big).await.unwrap();
            assert_eq!(response.status(), 431, "{size}");
            let headers = response.headers().clone();
            assert_eq!(headers["cache-control"], "no-store", "{size}");
            assert_eq!(headers["content-type"], "application/json; charset=utf-8");
            assert!(headers.contains_key("x-request-id"), "{size}: {headers:?}");
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap()
                .to_bytes();
            assert_eq!(body, r#"{"error":"request header fields too large"}"#, "{size}");
        }
        let small = get(&h, "a.test", &auth)
            .header("x-small", "a".repeat(3_000))
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(send(&h, small).await, 200);
        assert_eq!(h.upstream.count(), 1);
    }

    /// Issue 19, item 3 over HTTP/2: `:authority` routes in its normal form, and one that is no
    /// valid host is refused.
    #[tokio::test]
    async fn the_authority_routes_in_its_normal_form() {
        let h = Harness::with_config(STANDARD, ADMIN_ROUTE).await;
        let (_, key) = h.key(&["customer:read"]).await;
        let auth = support::basic(&key);
        let body = || Full::new(Bytes::new());
        for (authority, status) in [
            ("admin.example.com", 403),
            ("admin.example.com.", 403),
            ("admin.example.com.:443", 403),
            ("x,admin.example.com", 400),
            ("other.example.com", 200),
        ] {
            let request = get(&h, authority, &auth).body(body()).unwrap();
            assert_eq!(send(&h, request).await, status, "{authority}");
        }
        let (_, admin) = h.key(&["admin:all"]).await;
        let request = get(&h, "admin.example.com.:443", &support::basic(&admin))
            .body(body())
            .unwrap();
        assert_eq!(send(&h, request).await, 200);
        let got = h.upstream.last().headers;
        assert_eq!(got["host"], "admin.example.com:443");
        assert_eq!(got["x-forwarded-host"], "admin.example.com:443");
    }

    #[tokio::test]
    async fn max_headers_holds_for_http2_too() {
        let template = STANDARD.set("server", "max_headers = 20");
        let h = Harness::with_config(&template, "").await;
        let (_, key) = h.key(&["*"]).await;
        let auth = support::basic(&key);
        let mut many = get(&h, "a.test", &auth);
        for i in 0..30 {
            many = many.header(format!("x-h{i}"), "v");
        }
        assert_eq!(send(&h, many.body(Full::new(Bytes::new())).unwrap()).await, 431);
        let few = get(&h, "a.test", &auth).body(Full::new(Bytes::new())).unwrap();
        assert_eq!(send(&h, few).await, 200);
        assert_eq!(h.upstream.count(), 1);
    }
}

/// `Upgrade` requests: refused like any other before anything reaches the upstream; an
/// upstream that does not switch answers as it answered; `h2c` is never tunnelled (the HTTP/2
/// requests on such a tunnel would pass no check), so it goes on as a plain request.
#[tokio::test]
async fn upgrade_requests_pass_the_same_checks_and_h2c_is_not_tunnelled() {
    let (h, auth) = standard().await;
    let rows = [
        row(
            "a WebSocket upgrade without a key",
            "GET /v1/status HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
             sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            401,
            false,
        ),
        row(
            "a WebSocket upgrade the upstream does not take",
            "GET /v1/status HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\nconnection: upgrade\r\n\
             upgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            200,
            true,
        ),
    ];
    run(&h, &auth, &rows).await;
    assert_eq!(h.upstream.last().headers["upgrade"], "websocket");
    let h2c = "GET /v1/status HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\nconnection: upgrade, http2-settings\r\n\
               upgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\r\n";
    run(
        &h,
        &auth,
        &[row("an h2c upgrade, as a plain request", h2c, 200, true)],
    )
    .await;
    let got = h.upstream.last().headers;
    assert!(
        got.get("upgrade").is_none() && got.get("http2-settings").is_none(),
        "{got:?}"
    );
}

/// hyper answers a head its parser cannot take by itself, with an empty body; the gateway gives
/// those answers the JSON body of their kind, `no-store` and a request id, like every other
/// refusal (issue 12: "431 has an empty body and no Content-Type").
#[tokio::test]
async fn hypers_own_refusals_carry_the_gateways_json_body() {
    let (h, _) = standard().await;
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let huge = format!("X-Big: {}\r\n", "a".repeat(70_000));
    for (name, request, status, body) in [
        (
            "more headers than max_headers",
            format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n"),
            431,
            r#"{"error":"request header fields too large"}"#,
        ),
        (
            "a head past max_header_bytes",
            format!("GET / HTTP/1.1\r\nHost: x\r\n{huge}\r\n"),
            431,
            r#"{"error":"request header fields too large"}"#,
        ),
        (
            "a header line that does not parse",
            "GET / HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n".to_owned(),
            400,
            r#"{"error":"bad request"}"#,
        ),
    ] {
        let before = h.upstream.count();
        let mut stream = TcpStream::connect(h.gateway.proxy_addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "{name}: the connection is closed after the answer");
        let answer = String::from_utf8_lossy(&answer).to_lowercase();
        let (head, got) = answer
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("{name}: {answer}"));
        assert!(head.starts_with(&format!("http/1.1 {status} ")), "{name}: {head}");
        assert_eq!(got, body, "{name}");
        for header in [
            "content-type: application/json; charset=utf-8",
            "cache-control: no-store",
            "x-request-id: ",
            "connection: close",
        ] {
            assert!(head.contains(header), "{name}: {header} in {head}");
        }
        assert_eq!(h.upstream.count(), before, "{name}: nothing reaches the upstream");
    }
    // Counted as the requests that matched no route are.
    let metrics = h.metrics().await;
    let series =
        |status| format!("keygate_requests_total{{environment=\"none\",route=\"none\",status=\"{status}\"}}");
    assert_eq!(support::sample(&metrics, &series(431)), Some(2.0), "{metrics}");
    assert_eq!(support::sample(&metrics, &series(400)), Some(1.0));
}
