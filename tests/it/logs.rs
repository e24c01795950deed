//! The log on stdout of the real binary, written to a file: no colour, one well-formed access
//! record per request with the fields of SPEC section 7 in order, the key named on a refusal,
//! and no secret. And one record for a request its client abandoned while the upstream worked
//! (499), seen in the recent requests and the metric of the in-process gateway.

use crate::support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{admin_call, basic, eventually, sample, Harness, Upstream};

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
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
worker_threads = 1

[admin]
listen = "127.0.0.1:0"

[store]
url = "sqlite://keys.db"

[[upstream]]
name = "api"
url = "http://{upstream}"

[[route]]
name = "api"
path = "/v1"
environment = "production"
upstream = "api"
"#
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `keygate keys create ... --json`: (id, secret).
fn create_key(config: &Path, env: &str) -> (String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args([
            "keys",
            "--config",
            config.to_str().unwrap(),
            "create",
            "--name",
            env,
        ])
        .args(["--env", env, "--json"])
        .env_remove("KEYGATE_CONFIG")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let key: Value = serde_json::from_slice(&output.stdout).unwrap();
    (
        key["id"].as_str().unwrap().to_owned(),
        key["key"].as_str().unwrap().to_owned(),
    )
}

/// The gateway, its stdout going to `log`.
struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Polls the log until a line satisfies `find`.
async fn wait_for_line(log: &Path, what: &str, find: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(line) = lines(log).into_iter().find(|line| find(line)) {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} in the log: {:?}",
            lines(log)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get(addr: &str, target: &str, key: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: api.test\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        basic(key)
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response[9..12].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_written_to_a_file_has_no_colour_and_well_formed_access_records() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), upstream.addr);
    let (production_id, production_key) = create_key(&config, "production");
    let (staging_id, staging_key) = create_key(&config, "staging");
    let log = dir.path().join("stdout.log");
    let _gateway = Gateway(
        Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args([
                "serve",
                "--config",
                config.to_str().unwrap(),
                "--log-format",
                "json",
            ])
            .env_remove("KEYGATE_CONFIG")
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let serving = wait_for_line(&log, "serving event", |line| line.contains("keygate serving")).await;
    let serving: Value = serde_json::from_str(&serving).unwrap();
    let proxy = serving["proxy_addr"].as_str().unwrap().to_owned();
    // Serving comes before the key table has loaded (503 until then): wait for /readyz.
    let admin = serving["admin_addr"].as_str().unwrap().to_owned();
    let ready = eventually(Duration::from_secs(30), || async {
        get(&admin, "/readyz", "not-a-key").await == 200
    })
    .await;
    assert!(ready, "the gateway never got ready");

    assert_eq!(
        get(&proxy, "/v1/customers/acme?token=not-logged", &production_key).await,
        200
    );
    assert_eq!(get(&proxy, "/v1/customers/acme", &staging_key).await, 401);

    let admitted = wait_for_line(&log, "record of the 200", |line| line.contains(r#""status":200"#)).await;
    let refused = wait_for_line(&log, "record of the 401", |line| line.contains(r#""status":401"#)).await;
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

    let bytes = std::fs::read(&log).unwrap();
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

/// The recent records of `request_id`, from `GET /v1/requests`.
async fn records_of(h: &Harness, request_id: &str) -> Vec<Value> {
    let answer = admin_call(&h.gateway, "GET", "/v1/requests?limit=1000", "").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let items = answer.json()["items"].as_array().cloned().unwrap_or_default();
    items
        .into_iter()
        .filter(|record| record["request_id"] == request_id)
        .collect()
}

/// Waits for the one record of `request_id` and checks it is the 499 of a request abandoned at
/// the `slow` route by the key `key_id`, counted once in `keygate_requests_total`.
async fn assert_one_499(h: &Harness, request_id: &str, key_id: &str) {
    let deadline = Duration::from_secs(10);
    let recorded = eventually(deadline, || async { !records_of(h, request_id).await.is_empty() }).await;
    assert!(recorded, "no record of the abandoned request");
    let records = records_of(h, request_id).await;
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
    let counted = sample(
        &h.metrics().await,
        r#"keygate_requests_total{environment="production",route="slow",status="499"}"#,
    );
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
    let template = support::STANDARD.replace(
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
    let deadline = Duration::from_secs(10);
    assert!(
        eventually(deadline, || async {
            !records_of(&h, "cut-body").await.is_empty()
        })
        .await
    );
    // One record, of the status sent: the final phase ran with the head, not again at the cut.
    let records = records_of(&h, "cut-body").await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["status"], 200);
    assert_eq!(records[0]["key_id"], id.as_str());
}
