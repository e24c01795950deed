//! Leaked keys (SPEC 12), the parts that stand alone: `keygate scan` finds keys in files by
//! format and checksum, names those of the store by prefix only, and reports them as leaked.

mod endpoints;

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

use keygate::core::environment::Environment;
use keygate::core::secret::Secret;

const CONFIG: &str = r#"
[store]
url = "sqlite://keys.db"

[[upstream]]
name = "api"
url = "http://127.0.0.1:7001"

[[route]]
name = "api"
path = "/"
upstream = "api"
"#;

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    /// Every secret written anywhere: none may ever be printed whole.
    secrets: Vec<String>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, CONFIG).unwrap();
    Setup {
        dir,
        config,
        secrets: Vec::new(),
    }
}

fn keygate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(args)
        .env_remove("KEYGATE_CONFIG")
        .output()
        .unwrap()
}

fn json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// `secret` with its last character changed: its checksum no longer holds.
fn broken(secret: &str) -> String {
    let (head, last) = secret.split_at(secret.len() - 1);
    format!("{head}{}", if last == "A" { "B" } else { "A" })
}

impl Setup {
    fn config(&self) -> &str {
        self.config.to_str().unwrap()
    }

    /// Runs `keygate keys ...` on this store with `--json`.
    fn keys(&mut self, args: &[&str]) -> Value {
        let mut all = vec!["keys", "--config", self.config()];
        all.extend_from_slice(args);
        all.push("--json");
        let answer = json(&keygate(&all));
        if let Some(secret) = answer["key"].as_str() {
            self.secrets.push(secret.to_owned());
        }
        answer
    }

    /// A new key of `env`: its id and secret.
    fn create(&mut self, name: &str, env: &str) -> (String, String) {
        let key = self.keys(&["create", "--name", name, "--env", env]);
        (
            key["id"].as_str().unwrap().to_owned(),
            key["key"].as_str().unwrap().to_owned(),
        )
    }

    /// Writes `text` to `path` under the searched folder.
    fn write(&self, path: &str, text: &str) {
        let path = self.repo().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    /// Runs `keygate scan` on the folder; no secret may appear in what it prints.
    fn scan(&self, extra: &[&str]) -> Output {
        let repo = self.repo();
        let mut args = vec!["scan", repo.to_str().unwrap()];
        args.extend_from_slice(extra);
        let output = keygate(&args);
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        for secret in &self.secrets {
            assert!(
                !printed.contains(secret.as_str()),
                "a whole secret printed:\n{printed}"
            );
            assert!(
                !printed.contains(&secret[..secret.len() - 4]),
                "most of a secret printed:\n{printed}"
            );
        }
        output
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The display prefix of a generated secret: `kg_prod_` and four characters.
fn prefix(secret: &str) -> &str {
    let tag_end = secret[3..].find('_').unwrap() + 4;
    &secret[..tag_end + 4]
}

fn events(s: &mut Setup, id: &str) -> Vec<(String, String)> {
    let events = s.keys(&["events", id]);
    let events = events.as_array().unwrap().iter();
    events
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_owned(),
                e["actor"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn scan_names_the_stores_keys_by_prefix_and_reports_them_as_leaked() {
    let mut s = setup();
    let (live, live_secret) = s.create("website", "prod");
    let (dev, dev_secret) = s.create("laptop", "dev");
    let (rotated, old_secret) = s.create("billing", "stg");
    s.keys(&["regenerate", &rotated, "--grace", "1h"]);
    let stranger = Secret::generate(Environment::Production).expose().to_owned();
    let decoy = broken(&live_secret);
    s.secrets.extend([stranger.clone(), decoy.clone()]);
    s.write("app.env", &format!("# settings\nAPI_KEY={live_secret}\n"));
    s.write(
        "docs/notes.md",
        &format!("old: {old_secret}\ntypo: {decoy}\nsame again: \"{live_secret}\"\n{dev_secret}"),
    );
    s.write("docs/deep/other.json", &format!(r#"{{"token":"{stranger}"}}"#));
    s.write("docs/empty.txt", "");

    let found = s.scan(&["--config", s.config()]);
    assert!(
        found.status.success(),
        "{}",
        String::from_utf8_lossy(&found.stderr)
    );
    let text = stdout(&found);
    let repo = s.repo();
    let line = |path: &str, number: u32| format!("{}:{number}: ", repo.join(path).display());
    // Folders are searched in name order: docs/deep/ before docs/notes.md.
    let expected = [
        format!("{}{}  {live} active", line("app.env", 2), prefix(&live_secret)),
        format!(
            "{}{}  not a key of this store",
            line("docs/deep/other.json", 1),
            prefix(&stranger)
        ),
        format!(
            "{}{}  {rotated} active (its grace-period secret)",
            line("docs/notes.md", 1),
            prefix(&old_secret)
        ),
        format!(
            "{}{}  {live} active",
            line("docs/notes.md", 3),
            prefix(&live_secret)
        ),
        format!(
            "{}{}  {dev} active",
            line("docs/notes.md", 4),
            prefix(&dev_secret)
        ),
        "5 key(s) found in 4 file(s), 4 active in this store".to_owned(),
    ];
    assert_eq!(text.lines().collect::<Vec<_>>(), expected, "{text}");

    // Reported: each key of the store once, however often it was found.
    let reported = s.scan(&["--config", s.config(), "--report", "--json"]);
    let document = json(&reported);
    let results: Vec<(&str, &str)> = document["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["prefix"].as_str().unwrap(), k["result"].as_str().unwrap()))
        .collect();
    assert_eq!(
        results,
        [
            (prefix(&live_secret), "revoked"),
            (prefix(&stranger), "unknown"),
            (prefix(&old_secret), "grace_ended"),
            (prefix(&live_secret), "revoked"),
            (prefix(&dev_secret), "revoked"),
        ]
    );
    assert_eq!(document["files"], 4);
    // A grace-period secret ends the grace; the key's new secret works on.
    assert_eq!(s.keys(&["show", &rotated])["status"], "active");
    assert_eq!(s.keys(&["show", &rotated])["grace_until"], Value::Null);
    for id in [&live, &dev, &rotated] {
        let expected = if id == &rotated { "active" } else { "revoked" };
        assert_eq!(s.keys(&["show", id])["status"], expected, "{id}");
        let last = events(&mut s, id).pop().unwrap();
        assert_eq!(last, ("leaked".to_owned(), "cli".to_owned()), "{id}");
    }

    // Reported again: nothing changes, and the output says so.
    let again = s.scan(&["--config", s.config(), "--report"]);
    let text = stdout(&again);
    assert!(
        text.contains(&format!("{live} revoked, reported (revoked already)")),
        "{text}"
    );
    assert!(
        text.ends_with("5 key(s) found in 4 file(s), 0 active in this store, 0 revoked now\n"),
        "{text}"
    );
}

#[test]
fn without_a_config_scan_finds_keys_by_format_alone() {
    let mut s = setup();
    let key = Secret::generate(Environment::Staging).expose().to_owned();
    s.secrets.push(key.clone());
    s.write("a.txt", &format!("{key}\n{}", broken(&key)));
    let output = s.scan(&[]);
    assert!(output.status.success());
    let a = s.repo().join("a.txt");
    assert_eq!(
        stdout(&output),
        format!(
            "{}:1: {}\n1 key(s) found in 1 file(s)\n",
            a.display(),
            prefix(&key)
        )
    );
}

#[test]
fn scan_refuses_report_without_a_store_and_says_which_paths_it_could_not_read() {
    let mut s = setup();
    let key = Secret::generate(Environment::Development).expose().to_owned();
    s.secrets.push(key.clone());
    s.write("a.txt", &key);
    let output = s.scan(&["--report"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--report needs --config"));

    let missing = s.dir.path().join("missing");
    let output = keygate(&[
        "scan",
        s.repo().to_str().unwrap(),
        missing.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let document: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(document["keys"][0]["prefix"], prefix(&key));
    assert_eq!(document["unreadable"][0]["path"], missing.to_str().unwrap());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot read {}", missing.display())),
        "{stderr}"
    );
    assert!(!stdout(&output).contains(&key));
}

/// `keygate args...` with `input` on stdin.
fn keygate_with_stdin(args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(args)
        .env_remove("KEYGATE_CONFIG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn report_leak_takes_the_secret_on_stdin_and_records_every_report() {
    let mut s = setup();
    let (id, secret) = s.create("website", "prod");
    let report = |s: &Setup, secret: &str| {
        let args = [
            "keys",
            "report-leak",
            "--config",
            s.config(),
            "--source",
            "trufflehog",
            "--url",
            "https://ci.example.com/job/7",
            "--json",
        ];
        json(&keygate_with_stdin(&args, &format!("{secret}\n")))
    };
    let first = report(&s, &secret);
    assert_eq!(first, serde_json::json!({"result": "revoked", "key_id": id}));
    assert_eq!(s.keys(&["show", &id])["status"], "revoked");
    let again = report(&s, &secret);
    assert_eq!(again["result"], "already_revoked");
    let stranger = Secret::generate(Environment::Production).expose().to_owned();
    assert_eq!(
        report(&s, &stranger),
        serde_json::json!({"result": "unknown", "key_id": null})
    );
    let leaked: Vec<(String, String)> = events(&mut s, &id)
        .into_iter()
        .filter(|(event, _)| event == "leaked")
        .collect();
    assert_eq!(leaked.len(), 2, "each report is recorded");
    let recorded = s.keys(&["events", &id]);
    assert_eq!(recorded[1]["changes"]["url"], "https://ci.example.com/job/7");

    let empty = keygate_with_stdin(&["keys", "report-leak", "--config", s.config()], "");
    assert_eq!(empty.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&empty.stderr).contains("stdin was empty"));
}

#[test]
fn scan_report_follows_the_configured_action() {
    let mut s = setup();
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, format!("[leaks]\naction = \"quarantine\"\n{text}")).unwrap();
    let (id, secret) = s.create("website", "prod");
    s.write("app.env", &format!("API_KEY={secret}\n"));
    let reported = json(&s.scan(&["--config", s.config(), "--report", "--json"]));
    assert_eq!(reported["keys"][0]["result"], "quarantined");
    let key = s.keys(&["show", &id]);
    assert_eq!(
        (&key["status"], &key["quarantined"]),
        (&Value::from("active"), &Value::from(true))
    );
}
