//! The log on stdout of the real binary, written to a file: no colour, one well-formed access
//! record per request with the fields of SPEC section 7 in order, the key named on a refusal,
//! and no secret.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{basic, Upstream};

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
