//! The protective limits of SPEC section 8: URI length, head size and header count, body size,
//! slow request heads and idle keep-alive connections.

use crate::support;

use std::time::{Duration, Instant};

use crate::support::{ConfigEdit, Harness, STANDARD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn limited() -> Harness {
    let template = STANDARD.set(
        "server",
        "max_uri_bytes = 200\nmax_headers = 20\nmax_header_bytes = 4096\n\
         max_request_body = 1000\nheader_read_timeout = \"2s\"\nidle_timeout = \"1s\"",
    );
    Harness::with_config(&template, "").await
}

#[tokio::test]
async fn a_uri_past_the_limit_is_414() {
    let h = limited().await;
    let (_, key) = h.key(&["*"]).await;
    let long = format!("/v1/status?q={}", "a".repeat(300));
    assert_eq!(h.get(&long, &key).await.status, 414);
    assert_eq!(h.get("/v1/status?q=short", &key).await.status, 200);
    assert_eq!(h.upstream.count(), 1);
}

#[tokio::test]
async fn too_many_or_too_large_headers_are_431() {
    let h = limited().await;
    let many: String = (0..30).map(|i| format!("x-h{i}: v\r\n")).collect();
    let answer = h
        .raw(format!("GET /v1/status HTTP/1.1\r\nhost: x\r\n{many}connection: close\r\n\r\n").as_bytes())
        .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let big = "v".repeat(8192);
    let answer = h
        .raw(
            format!("GET /v1/status HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(h.upstream.count(), 0);
}

#[tokio::test]
async fn a_declared_body_past_the_limit_is_413_and_never_forwarded() {
    let h = limited().await;
    let (_, key) = h.key(&["*"]).await;
    let auth = support::basic(&key);
    let body = "b".repeat(2000);
    let answer = h
        .raw(
            format!(
                "POST /v1/status HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ncontent-length: 2000\r\nconnection: close\r\n\r\n{body}"
            )
            .as_bytes(),
        )
        .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.ends_with(r#"{"error":"request body too large"}"#),
        "{answer}"
    );
    assert_eq!(h.upstream.count(), 0);
}

#[tokio::test]
async fn a_chunked_body_growing_past_the_limit_is_cut_off_with_413() {
    let h = limited().await;
    let (_, key) = h.key(&["*"]).await;
    let auth = support::basic(&key);
    let chunk = "c".repeat(600);
    let request = format!(
        "POST /v1/status HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
         258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let answer = h.raw(request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // Within the limit, a chunked body goes through whole.
    let small = format!(
        "POST /v1/status HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
         258\r\n{chunk}\r\n0\r\n\r\n"
    );
    assert!(h.raw(small.as_bytes()).await.starts_with("HTTP/1.1 200"));
    assert_eq!(h.upstream.last().body.len(), 600);
}

/// Reads until the peer closes the connection; returns what was read, or None past `deadline`.
async fn closed_within(stream: &mut tokio::net::TcpStream, deadline: Duration) -> Option<String> {
    let mut out = Vec::new();
    match tokio::time::timeout(deadline, stream.read_to_end(&mut out)).await {
        Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()),
        Err(_) => None,
    }
}

#[tokio::test]
async fn a_slow_request_head_is_cut_off() {
    let h = limited().await;
    let mut stream = tokio::net::TcpStream::connect(h.gateway.proxy_addr)
        .await
        .unwrap();
    stream
        .write_all(b"GET /v1/status HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut stream, Duration::from_secs(10))
        .await
        .is_some());
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let h = limited().await;
    let (_, key) = h.key(&["*"]).await;
    let auth = support::basic(&key);
    let mut stream = tokio::net::TcpStream::connect(h.gateway.proxy_addr)
        .await
        .unwrap();
    let request = format!("GET /v1/status HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let answer = closed_within(&mut stream, Duration::from_secs(10)).await;
    let answer = answer.expect("the idle connection is closed");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
