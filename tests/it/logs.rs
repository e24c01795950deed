//! The log on stdout of the real binary, written to a file: no colour, one well-formed access
//! record per request with the fields of SPEC section 7 in order, the key named on a refusal,
//! and no secret. And one record for a request its client abandoned while the upstream worked
//! (499), seen in the recent requests and the metric of the in-process gateway.

use crate::support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::clients::raw_get;
use crate::support::process::{self, create_key, Serving};
use crate::support::{basic, eventually, ConfigEdit, Harness, Upstream};

const FIELDS: [&str; 12] = [
    "time",
    "request_id",
    "route",
    "key_id",
    "environment",
    "client",
    "method",
    "path",
    "status",
    "duration_ms",
    "upstream_ms",
    "reason",
];

fn config(dir: &Path, upstream: std::net::SocketAddr) -> std::path::PathBuf {
    let path = dir.join("gateway.toml");
    let text = process::CONFIG
        .set("server", "worker_threads = 1")
        .edit("{upstream}", &upstream.to_string());
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_written_to_a_file_has_no_colour_and_well_formed_access_records() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), upstream.addr);
    let (production_id, production_key) = create_key(&config, "production");
    let (staging_id, staging_key) = create_key(&config, "staging");
    let gateway = Serving::start(&config);
    let (proxy, admin) = gateway.addresses().await;
    // Serving comes before the key table has loaded (503 until then): wait for /readyz.
    let ready = eventually(Duration::from_secs(30), || async {
        raw_get(admin, "/readyz", None).await.0 == 200
    })
    .await;
    assert!(ready, "the gateway never got ready");

    assert_eq!(
        raw_get(
            proxy,
            "/v1/customers/acme?token=not-logged",
            Some(&production_key)
        )
        .await
        .0,
        200
    );
    assert_eq!(
        raw_get(proxy, "/v1/customers/acme", Some(&staging_key)).await.0,
        401
    );

    let admitted = gateway.await_lines(r#""status":200"#, 1).await.remove(0);
    let refused = gateway.await_lines(r#""status":401"#, 1).await.remove(0);
    for line in [&admitted, &refused] {
        let mut at = 0;
        for field in FIELDS {
            let found = line[at..]
                .find(&format!("\"{field}\":"))
                .unwrap_or_else(|| panic!("{field} missing or out of order: {line}"));
            at += found;
        }
        let record: Value = serde_json::from_str(line).unwrap();
        assert_eq!(record.as_object().unwrap().len(), FIELDS.len(), "{line}");
        assert_eq!(record["client"], "127.0.0.1");
        assert_eq!(record["method"], "GET");
        assert_eq!(record["path"], "/v1/customers/acme", "without the query");
        assert_eq!(record["route"], "api");
        assert!(record["duration_ms"].is_f64(), "{line}");
        let time = record["time"].as_str().unwrap();
        assert!(
            time.parse::<jiff::Timestamp>().is_ok() && time.len() == 27,
            "{time}"
        );
    }
    let admitted: Value = serde_json::from_str(&admitted).unwrap();
    assert_eq!(admitted["key_id"], production_id.as_str());
    assert_eq!(admitted["environment"], "production");
    assert!(admitted["upstream_ms"].is_f64());
    assert_eq!(admitted["reason"], Value::Null);
    let refused: Value = serde_json::from_str(&refused).unwrap();
    assert_eq!(
        refused["key_id"],
        staging_id.as_str(),
        "a wrong-environment 401 names the key"
    );
    assert_eq!(refused["environment"], "staging");
    assert_eq!(refused["upstream_ms"], Value::Null);
    assert_eq!(refused["reason"], "wrong_environment");

    let bytes = std::fs::read(&gateway.log).unwrap();
    assert!(
        !bytes.contains(&0x1b),
        "an ANSI escape in a log written to a file"
    );
    let text = String::from_utf8(bytes).unwrap();
    for line in text.lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("not one JSON line ({e}): {line}"));
    }
    for secret in [&production_key, &staging_key] {
        assert!(!text.contains(secret.as_str()), "a secret in the log");
    }
    assert!(!text.contains("not-logged"), "the query string in the log");
}

/// Waits for the one record of `request_id` and checks it is the 499 of a request abandoned at
/// the `slow` route by the key `key_id`, counted once in `keygate_requests_total`.
async fn assert_one_499(h: &Harness, request_id: &str, key_id: &str) {
    let records = h.recorded(request_id).await;
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0];
    assert_eq!(record["status"], 499, "{record}");
    assert_eq!(record["reason"], "client_closed", "{record}");
    assert_eq!(record["route"], "slow", "{record}");
    assert_eq!(record["key_id"], key_id, "{record}");
    assert_eq!(record["path"], "/slow", "{record}");
    assert!(record["duration_ms"].as_f64().is_some(), "{record}");
    assert!(
        record["upstream_ms"].as_f64().is_some(),
        "the time spent at the upstream: {record}"
    );
    let counted = h
        .metric(r#"keygate_requests_total{environment="production",route="slow",status="499"}"#)
        .await;
    assert_eq!(counted, Some(1.0));
}

#[tokio::test]
async fn an_http1_client_that_disconnects_while_the_upstream_works_leaves_one_499_record() {
    let h = Harness::start().await;
    let (id, key) = h.key(&[]).await;
    let mut stream = TcpStream::connect(h.gateway.proxy_addr).await.unwrap();
    let request = format!(
        "GET /slow HTTP/1.1\r\nHost: api.test\r\nAuthorization: {}\r\nX-Request-Id: gone-h1\r\n\r\n",
        basic(&key)
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // The upstream has the request (it answers after 3 s, the gateway gives up after 1 s).
    assert!(eventually(Duration::from_secs(10), || async { h.upstream.count() == 1 }).await);
    drop(stream);
    assert_one_499(&h, "gone-h1", &id).await;
}

#[tokio::test]
async fn an_http2_stream_reset_while_the_upstream_works_leaves_one_499_record() {
    let h = Harness::start().await;
    let (id, key) = h.key(&[]).await;
    let tcp = TcpStream::connect(h.gateway.proxy_addr).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::get(format!("http://{}/slow", h.gateway.proxy_addr))
        .header("authorization", basic(&key))
        .header("x-request-id", "gone-h2")
        .body(())
        .unwrap();
    let (_response, mut stream) = client.send_request(request, true).unwrap();
    assert!(eventually(Duration::from_secs(10), || async { h.upstream.count() == 1 }).await);
    stream.send_reset(h2::Reason::CANCEL);
    assert_one_499(&h, "gone-h2", &id).await;
    // The connection itself stays: only the stream was abandoned.
    assert!(!connection.is_finished());
}

#[tokio::test]
async fn a_client_that_leaves_while_the_body_streams_is_recorded_with_the_status_it_got() {
    // An upstream that sends its head and the start of a long body, then nothing more.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = upstream.accept().await {
            tokio::spawn(async move {
                let mut buf = [0; 4096];
                let _ = stream.read(&mut buf).await;
                let head = "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nstart";
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.read(&mut buf).await;
            });
        }
    });
    let template = support::STANDARD.edit(
        "url = \"http://{upstream}\"",
        &format!("url = \"http://{upstream_addr}\""),
    );
    let h = Harness::with_config(&template, "").await;
    let (id, key) = h.key(&[]).await;
    let mut stream = TcpStream::connect(h.gateway.proxy_addr).await.unwrap();
    let request = format!(
        "GET /v1/status HTTP/1.1\r\nHost: api.test\r\nAuthorization: {}\r\nX-Request-Id: cut-body\r\n\r\n",
        basic(&key)
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.windows(5).any(|w| w == b"start") {
        let mut buf = [0; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("the head and the start of the body")
            .unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&head));
        head.extend_from_slice(&buf[..n]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"));
    drop(stream);
    // One record, of the status sent: the final phase ran with the head, not again at the cut.
    let records = h.recorded("cut-body").await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["status"], 200);
    assert_eq!(records[0]["key_id"], id.as_str());
}
