//! The real binary: `keygate serve` as a child process whose JSON log goes to a file the test
//! reads, and `keygate keys create` to give it a key. For what only the process shows: signals,
//! exit codes, the log on stdout.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::eventually;

/// A config for a process gateway: one route, `/v1`, to the upstream at `{upstream}`; the store
/// `keys.db` beside the file. Tests add their settings with [`super::ConfigEdit`].
pub const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"

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
"#;

/// `keygate serve --config ... --log-format json`, its stdout in `stdout.log` beside the
/// config; killed if the test ends before it exits.
pub struct Serving {
    child: Child,
    pub log: PathBuf,
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serving {
    /// Starts the gateway of `config`, with no `KEYGATE_CONFIG`, `RUST_LOG` or `NO_COLOR` of
    /// the test's environment.
    pub fn start(config: &Path) -> Serving {
        let log = config.with_file_name("stdout.log");
        let child = Command::new(env!("CARGO_BIN_EXE_keygate"))
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
            .unwrap();
        Serving { child, log }
    }

    /// The proxy's and the admin listener's addresses, from the `keygate serving` line.
    pub async fn addresses(&self) -> (SocketAddr, SocketAddr) {
        let serving = &self.await_records("keygate serving", 1).await[0];
        let addr = |field: &str| serving[field].as_str().unwrap().parse().unwrap();
        (addr("proxy_addr"), addr("admin_addr"))
    }

    /// Sends the signal `name` (e.g. `-HUP`) with kill(1).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args([name, &pid]).status().unwrap();
        assert!(sent.success());
    }

    /// The log's lines containing `containing`, as written.
    pub fn lines(&self, containing: &str) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains(containing))
            .map(str::to_owned)
            .collect()
    }

    /// [`Serving::lines`] as JSON records.
    pub fn records(&self, containing: &str) -> Vec<Value> {
        let lines = self.lines(containing);
        lines
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Waits (with a deadline) until `count` lines contain `containing`; returns them all.
    pub async fn await_lines(&self, containing: &str, count: usize) -> Vec<String> {
        let found = eventually(Duration::from_secs(30), || {
            let enough = self.lines(containing).len() >= count;
            async move { enough }
        });
        assert!(
            found.await,
            "{count} x {containing:?} in {:?}",
            std::fs::read_to_string(&self.log)
        );
        self.lines(containing)
    }

    /// [`Serving::await_lines`] as JSON records.
    pub async fn await_records(&self, containing: &str, count: usize) -> Vec<Value> {
        self.await_lines(containing, count).await;
        self.records(containing)
    }

    /// Waits up to `deadline` for the exit: its status and when it came.
    pub fn exit(&mut self, deadline: Duration) -> (Option<i32>, Duration) {
        let started = Instant::now();
        while started.elapsed() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("still running after {deadline:?}");
    }
}

/// `keygate keys create --config config --env env --json`: (id, secret).
pub fn create_key(config: &Path, env: &str) -> (String, String) {
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
    let field = |name: &str| key[name].as_str().unwrap().to_owned();
    (field("id"), field("key"))
}
