//! The `keygate` binary: `check` and every `keys` command, with `--json` and exit codes.

use crate::support;
use crate::support::ConfigEdit;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

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

fn keygate(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(args)
        .env_remove("KEYGATE_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

struct Setup {
    _dir: tempfile::TempDir,
    config: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, CONFIG).unwrap();
    Setup { _dir: dir, config }
}

impl Setup {
    fn keys(&self, args: &[&str]) -> Output {
        self.keys_with_stdin(args, None)
    }

    fn keys_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let config = self.config.to_str().unwrap();
        let mut all = vec!["keys", "--config", config];
        all.extend_from_slice(args);
        keygate(&all, stdin)
    }

    /// Runs a `keys` command with `--json`, expecting success and exactly one JSON document.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let output = self.keys(&all);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?} printed no single JSON document ({e}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }
}

fn code(output: &Output) -> i32 {
    output.status.code().unwrap()
}

fn one_line_stderr(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.trim().is_empty(), "no message on stderr");
    stderr
}

#[test]
fn check_accepts_the_example_and_names_the_line_of_a_mistake() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.toml.example");
    let output = keygate(&["check", "--config", example.to_str().unwrap()], None);
    assert_eq!(code(&output), 0, "{}", String::from_utf8_lossy(&output.stderr));

    let s = setup();
    let text = format!("{CONFIG}\n[server]\nlisten = \"127.0.0.1:8080\"\nlisen = 1\n");
    std::fs::write(&s.config, &text).unwrap();
    let line = text.lines().position(|l| l.starts_with("lisen")).unwrap() + 1;
    let output = keygate(&["check", "--config", s.config.to_str().unwrap()], None);
    assert_eq!(code(&output), 1);
    let stderr = one_line_stderr(&output);
    assert!(stderr.contains(&format!("line {line}")), "{stderr}");
    assert!(stderr.contains("lisen"), "{stderr}");
}

/// Issue 19, item 1: an empty file used to be "valid: 0 route(s)"; `serve` refuses it now, and
/// `check` says so, even with `--file-only`. The `keys` commands serve nothing and still take it.
#[test]
fn check_and_serve_refuse_a_file_that_would_serve_nothing() {
    let s = setup();
    let config = s.config.to_str().unwrap();
    let upstream_only = CONFIG.split("[[route]]").next().unwrap();
    for (text, routes_only) in [("", false), (upstream_only, true)] {
        std::fs::write(&s.config, text).unwrap();
        for extra in [&[][..], &["--file-only"]] {
            let output = check(&s.config, extra);
            assert_eq!(code(&output), 1, "{text:?} {extra:?}");
            let stderr = one_line_stderr(&output);
            assert!(stderr.contains("route: no [[route]]"), "{stderr}");
            assert_eq!(stderr.contains("no [[upstream]]"), !routes_only, "{stderr}");
        }
        let report = json_of(&check(&s.config, &["--json", "--file-only"]));
        assert_eq!(report["ok"], false, "{report}");
        let fields: Vec<&str> = report["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        let expected = if routes_only {
            vec!["route"]
        } else {
            vec!["upstream", "route"]
        };
        assert_eq!(fields, expected, "{report}");
        let served = keygate(&["serve", "--config", config], None);
        assert_eq!(code(&served), 1);
        assert!(one_line_stderr(&served).contains("no [[route]]"));
    }
    s.json(&["create", "--name", "k", "--env", "dev"]);
    assert_eq!(s.json(&["list"]).as_array().unwrap().len(), 1);
}

#[test]
fn create_prints_the_key_object_with_its_secret_once() {
    let s = setup();
    let created = s.json(&[
        "create",
        "--name",
        "Main Website",
        "--env",
        "production",
        "--perm",
        "customer:read",
        "--perm",
        "license:*",
        "--rate",
        "50/s",
        "--burst",
        "80",
        "--customer",
        "acme",
        "--allow-ip",
        "10.0.0.0/8",
        "--expires-in",
        "30d",
        "--metadata",
        r#"{"team":"web"}"#,
    ]);
    let secret = created["key"].as_str().unwrap();
    assert!(secret.starts_with("kg_prod_") && secret.len() == 46, "{secret}");
    assert_eq!(created["name"], "Main Website");
    assert_eq!(created["environment"], "production");
    assert_eq!(
        created["permissions"],
        serde_json::json!(["customer:read", "license:*"])
    );
    assert_eq!(
        created["rate_limit"],
        serde_json::json!({"requests": 50, "per": "1s", "burst": 80})
    );
    assert_eq!(created["customer_id"], "acme");
    assert_eq!(created["allowed_ips"], serde_json::json!(["10.0.0.0/8"]));
    assert_eq!(created["status"], "active");
    assert_eq!(created["prefix"], &secret[..12]);
    assert_eq!(created["metadata"]["team"], "web");
    assert!(created["last_used_at"].is_null());
    assert!(created["expires_at"].is_string() && created["created_at"].is_string());
    let id = created["id"].as_str().unwrap();
    assert!(id.starts_with("key_"));

    let shown = s.json(&["show", id]);
    assert!(shown.get("key").is_none(), "the secret is shown only once");
    assert!(!serde_json::to_string(&shown).unwrap().contains(secret));
}

#[test]
fn every_key_command_works_end_to_end() {
    let s = setup();
    let created = s.json(&["create", "--name", "k", "--env", "staging"]);
    let id = created["id"].as_str().unwrap();
    let list = s.json(&["list"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(
        s.json(&["list", "--env", "production"]).as_array().unwrap().len(),
        0
    );

    let updated = s.json(&[
        "update",
        id,
        "--name",
        "renamed",
        "--perm",
        "customer:read",
        "--rate",
        "5/m",
    ]);
    assert_eq!(updated["name"], "renamed");
    assert_eq!(updated["permissions"], serde_json::json!(["customer:read"]));
    assert_eq!(updated["rate_limit"]["per"], "1m");
    let cleared = s.json(&["update", id, "--default-rate", "--no-perms"]);
    assert!(cleared["rate_limit"].is_null());
    assert_eq!(cleared["permissions"], serde_json::json!([]));

    let regenerated = s.json(&["regenerate", id, "--grace", "10m"]);
    assert_ne!(regenerated["key"], created["key"]);
    assert_eq!(regenerated["id"], id);
    assert!(regenerated["grace_until"].is_string());
    assert!(regenerated["key"].as_str().unwrap().starts_with("kg_stg_"));

    assert_eq!(s.json(&["revoke", id])["status"], "revoked");
    assert_eq!(
        s.json(&["list", "--status", "revoked"]).as_array().unwrap().len(),
        1
    );
    assert_eq!(s.json(&["activate", id])["status"], "active");
    let usage = s.json(&["usage", id]);
    assert_eq!(usage["total_requests"], 0);

    let deleted = s.keys(&["delete", id, "--json"]);
    assert_eq!(code(&deleted), 0);
    // Shown as deleted, as `list --status deleted` and `events` show it.
    assert_eq!(s.json(&["show", id])["status"], "deleted");
    assert_eq!(code(&s.keys(&["usage", id])), 0, "usage stays after deletion");
    assert_eq!(s.json(&["list"]).as_array().unwrap().len(), 0);

    // The audit trail outlives the key, names the CLI as the actor and never holds a secret.
    let events = s.json(&["events", id]);
    let names: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "created",
            "updated",
            "updated",
            "regenerated",
            "revoked",
            "activated",
            "deleted"
        ]
    );
    assert!(events.as_array().unwrap().iter().all(|e| e["actor"] == "cli"));
    assert_eq!(events[1]["changes"]["name"], "renamed");
    assert!(events[2]["changes"]["rate_limit"].is_null());
    assert_eq!(events[3]["changes"]["secret"], "replaced");
    let text = events.to_string();
    for secret in [&created["key"], &regenerated["key"]] {
        assert!(!text.contains(secret.as_str().unwrap()));
    }
    let plain = s.keys(&["events", id]);
    assert_eq!(code(&plain), 0);
    assert!(String::from_utf8_lossy(&plain.stdout).contains("regenerated"));
}

#[test]
fn import_takes_an_existing_secret_from_stdin() {
    let s = setup();
    let output = s.keys_with_stdin(
        &["import", "--name", "legacy", "--env", "prod", "--json"],
        Some("sk_live_legacy_0123456789\n"),
    );
    assert_eq!(code(&output), 0, "{}", String::from_utf8_lossy(&output.stderr));
    let imported: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(imported["prefix"], "sk_l");
    assert!(imported.get("key").is_none());
    assert!(!String::from_utf8_lossy(&output.stdout).contains("sk_live_legacy_0123456789"));

    let again = s.keys_with_stdin(
        &["import", "--name", "dup", "--env", "prod"],
        Some("sk_live_legacy_0123456789\n"),
    );
    assert_eq!(code(&again), 1, "the same secret twice is a conflict");
    let short = s.keys_with_stdin(&["import", "--name", "short", "--env", "prod"], Some("tiny\n"));
    assert_eq!(code(&short), 2);
    let empty = s.keys_with_stdin(&["import", "--name", "none", "--env", "prod"], Some(""));
    assert_eq!(code(&empty), 2);
}

#[test]
fn import_file_takes_many_keys_all_or_none() {
    let s = setup();
    let dir = s.config.parent().unwrap();
    let write = |name: &str, lines: &[&str]| {
        let path = dir.join(name);
        std::fs::write(&path, lines.join("\n")).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let good = write(
        "good.jsonl",
        &[
            r#"{"key": "legacy-secret-number-one", "name": "one", "environment": "production"}"#,
            "",
            r#"{"key": "legacy-secret-number-two", "name": "two", "environment": "staging", "permissions": ["customer:*"], "rate_limit": {"requests": 5, "per": "1s"}, "customer_id": "acme"}"#,
        ],
    );
    assert_eq!(s.json(&["import-file", &good])["imported"], 2);
    let list = s.json(&["list"]);
    assert_eq!(list.as_array().unwrap().len(), 2);
    let two = list
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "two")
        .unwrap();
    assert_eq!(two["customer_id"], "acme");
    let events = s.json(&["events", two["id"].as_str().unwrap()]);
    assert_eq!(
        (events[0]["event"].as_str(), events[0]["actor"].as_str()),
        (Some("imported"), Some("cli"))
    );

    // A bad line, a repeated secret or a secret the store holds already: exit 1, the line
    // named, and nothing of the file imported.
    for (lines, code_wanted, says) in [
        (
            [
                r#"{"key": "legacy-secret-number-333", "name": "x", "environment": "production"}"#,
                r#"{"key": "legacy-secret-number-444", "name": "y", "environment": "moon"}"#,
            ],
            1,
            "line 2",
        ),
        (
            [
                r#"{"key": "legacy-secret-number-555", "name": "x", "environment": "production"}"#,
                r#"{"key": "legacy-secret-number-555", "name": "y", "environment": "production"}"#,
            ],
            1,
            "line 2",
        ),
        (
            [
                r#"{"key": "legacy-secret-number-666", "name": "x", "environment": "production"}"#,
                r#"{"key": "legacy-secret-number-one", "name": "y", "environment": "production"}"#,
            ],
            1,
            "already in use",
        ),
    ] {
        let path = write("bad.jsonl", &lines);
        let output = s.keys(&["import-file", &path]);
        assert_eq!(code(&output), code_wanted, "{lines:?}");
        assert!(
            one_line_stderr(&output).contains(says),
            "{}",
            one_line_stderr(&output)
        );
        assert_eq!(s.json(&["list"]).as_array().unwrap().len(), 2, "nothing imported");
    }
}

#[test]
fn usage_errors_exit_2_and_runtime_errors_exit_1() {
    let s = setup();
    for args in [
        vec!["create", "--env", "production"],
        vec!["create", "--name", "x", "--env", "qa"],
        vec!["create", "--name", "x", "--env", "prod", "--rate", "lots"],
        vec![
            "create",
            "--name",
            "x",
            "--env",
            "prod",
            "--perm",
            "not a permission",
        ],
        vec![
            "create",
            "--name",
            "x",
            "--env",
            "prod",
            "--allow-ip",
            "10.0.0.0/99",
        ],
        vec![
            "create",
            "--name",
            "x",
            "--env",
            "prod",
            "--expires-at",
            "tomorrow",
        ],
        vec![
            "create",
            "--name",
            "x",
            "--env",
            "prod",
            "--expires-at",
            "2001-01-01T00:00:00Z",
        ],
        vec!["create", "--name", "", "--env", "prod"],
        vec!["regenerate", "key_x", "--grace", "10 minutes"],
        vec!["frobnicate"],
    ] {
        let output = s.keys(&args);
        assert_eq!(
            code(&output),
            2,
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        one_line_stderr(&output);
    }
    assert_eq!(code(&s.keys(&["show", "key_doesnotexist"])), 1);
    assert_eq!(code(&keygate(&["keys", "list"], None)), 2, "--config is required");
    let missing = keygate(&["keys", "--config", "/nonexistent/gateway.toml", "list"], None);
    assert_eq!(code(&missing), 1);
}

#[tokio::test]
async fn a_key_created_by_the_cli_reaches_a_running_gateway() {
    let h = support::Harness::start().await;
    let config = h.config_path.to_str().unwrap().to_owned();
    let output = tokio::task::spawn_blocking(move || {
        keygate(
            &[
                "keys",
                "create",
                "--config",
                &config,
                "--name",
                "cli",
                "--env",
                "production",
                "--perm",
                "*",
                "--json",
            ],
            None,
        )
    })
    .await
    .unwrap();
    assert_eq!(code(&output), 0, "{}", String::from_utf8_lossy(&output.stderr));
    let created: Value = serde_json::from_slice(&output.stdout).unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    let seen = support::eventually(Duration::from_secs(5), || async {
        h.get("/v1/status", &key).await.status == 200
    })
    .await;
    assert!(
        seen,
        "the gateway did not pick up a key created by another process"
    );
}

#[test]
fn a_secret_cannot_belong_to_two_keys_not_even_during_a_grace_period() {
    let s = setup();
    let a = s.json(&["create", "--name", "A", "--env", "prod"]);
    let a_id = a["id"].as_str().unwrap();
    let old = a["key"].as_str().unwrap();
    let regenerated = s.json(&["regenerate", a_id, "--grace", "10m"]);
    let new = regenerated["key"].as_str().unwrap();
    for secret in [old, new] {
        let output = s.keys_with_stdin(
            &["import", "--name", "B", "--env", "production", "--perm", "*"],
            Some(&format!("{secret}\n")),
        );
        assert_eq!(code(&output), 1, "{}", String::from_utf8_lossy(&output.stderr));
        let stderr = one_line_stderr(&output);
        assert_eq!(stderr.trim(), "keygate: this secret is already in use");
        assert!(!stderr.contains(a_id), "the holder is not named: {stderr}");
    }
    let file = s.config.parent().unwrap().join("keys.jsonl");
    let line = serde_json::json!({ "key": old, "name": "B", "environment": "production" });
    std::fs::write(&file, line.to_string()).unwrap();
    let output = s.keys(&["import-file", file.to_str().unwrap()]);
    assert_eq!(code(&output), 1);
    assert!(one_line_stderr(&output).contains("this secret is already in use"));
    assert_eq!(s.json(&["list"]).as_array().unwrap().len(), 1, "no key B");
}

/// Runs `keygate serve` until it exits, or kills it after `deadline` (then `None`).
fn serve_exit(config: &Path, deadline: Duration) -> Option<Output> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .env_remove("KEYGATE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = std::time::Instant::now() + deadline;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > end {
            child.kill().unwrap();
            child.wait().unwrap();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(child.wait_with_output().unwrap())
}

const SERVE_ON: &str = r#"
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[store]
url = "sqlite://{store}"
[[upstream]]
name = "api"
url = "http://127.0.0.1:7001"
[[route]]
name = "api"
path = "/"
upstream = "api"
"#;

#[test]
fn serve_refuses_a_store_that_does_not_exist_and_says_how_to_create_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    for (store, says) in [("keys.db", "the store "), ("unmounted/keys.db", "the folder ")] {
        std::fs::write(&config, SERVE_ON.edit("{store}", store)).unwrap();
        let output = serve_exit(&config, Duration::from_secs(20)).expect("serve exits");
        assert_eq!(code(&output), 1);
        let stderr = one_line_stderr(&output);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(says) && stderr.contains("does not exist"),
            "{stderr}"
        );
        let init = format!("keygate store init --config {}", config.display());
        assert!(stderr.contains(&init), "{stderr}");
        assert!(!dir.path().join(store).exists(), "no empty store was made");

        let listed = keygate(&["keys", "--config", config.to_str().unwrap(), "list"], None);
        assert_eq!(code(&listed), 1);
        assert!(one_line_stderr(&listed).contains("does not exist"));
        assert!(!dir.path().join(store).exists(), "list makes no store either");
    }
    // store init makes the file, not a folder that a volume should have brought.
    let init = keygate(&["store", "init", "--config", config.to_str().unwrap()], None);
    assert_eq!(code(&init), 1);
    let stderr = one_line_stderr(&init);
    assert!(
        stderr.contains("the folder ") && stderr.contains("create it first"),
        "{stderr}"
    );
    assert!(!dir.path().join("unmounted").exists());
    let help = keygate(&["serve", "--help"], None);
    assert!(String::from_utf8_lossy(&help.stdout).contains("keygate store init"));
}

#[test]
fn serve_and_keys_refuse_an_empty_or_foreign_file_and_give_it_no_schema() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, SERVE_ON.edit("{store}", "keys.db")).unwrap();
    let store = dir.path().join("keys.db");
    let config_arg = config.to_str().unwrap();
    for (bytes, says) in [
        (&b""[..], "an empty file (0 bytes)"),
        (
            &b"id,name\n1,not a database at all, just some text\n"[..],
            "not a SQLite database",
        ),
    ] {
        std::fs::write(&store, bytes).unwrap();
        let output = serve_exit(&config, Duration::from_secs(20)).expect("serve refuses, it does not serve");
        assert_eq!(code(&output), 1);
        let stderr = one_line_stderr(&output);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("is not a keygate store") && stderr.contains(says),
            "{stderr}"
        );
        assert!(stderr.contains("keygate store init --config"), "{stderr}");
        assert_eq!(
            std::fs::read(&store).unwrap(),
            bytes,
            "serve left the file as it was"
        );

        for command in [&["list"][..], &["create", "--name", "first", "--env", "prod"][..]] {
            let mut args = vec!["keys", "--config", config_arg];
            args.extend_from_slice(command);
            let keys = keygate(&args, None);
            assert_eq!(code(&keys), 1, "{command:?}");
            assert!(one_line_stderr(&keys).contains(says), "{command:?}");
            assert_eq!(
                std::fs::read(&store).unwrap(),
                bytes,
                "{command:?} left the file as it was"
            );
        }
    }
}

#[test]
fn store_init_if_missing_creates_once_keeps_a_store_and_refuses_any_other_file_untouched() {
    let s = setup();
    let config = s.config.to_str().unwrap();
    let store = s.config.parent().unwrap().join("keys.db");
    let init = || keygate(&["store", "init", "--config", config, "--if-missing"], None);

    let first = init();
    assert_eq!(code(&first), 0, "{}", String::from_utf8_lossy(&first.stderr));
    assert!(String::from_utf8_lossy(&first.stdout).contains("created an empty store"));
    s.json(&["create", "--name", "kept", "--env", "prod"]);
    let second = init();
    assert_eq!(code(&second), 0, "{}", String::from_utf8_lossy(&second.stderr));
    assert!(
        String::from_utf8_lossy(&second.stdout).contains("left as it is"),
        "{}",
        String::from_utf8_lossy(&second.stdout)
    );
    assert_eq!(
        s.json(&["list"]).as_array().unwrap().len(),
        1,
        "the key is still there"
    );

    // A restore that wrote nothing, a file that is not SQLite, another program's database.
    let foreign = {
        let other = s.config.parent().unwrap().join("other.db");
        let conn = rusqlite::Connection::open(&other).unwrap();
        conn.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        drop(conn);
        std::fs::read(&other).unwrap()
    };
    for (bytes, says) in [
        (Vec::new(), "an empty file (0 bytes)"),
        (b"not a database".to_vec(), "not a SQLite database"),
        (foreign, "without keygate's tables"),
    ] {
        std::fs::write(&store, &bytes).unwrap();
        let refused = init();
        assert_eq!(code(&refused), 1, "{says}");
        let stderr = one_line_stderr(&refused);
        assert!(
            stderr.contains("is not a keygate store") && stderr.contains(says),
            "{stderr}"
        );
        assert!(stderr.contains("untouched"), "{stderr}");
        assert_eq!(std::fs::read(&store).unwrap(), bytes, "{says}: the same bytes");
    }

    // Without --if-missing, init is the deliberate act: an empty file becomes an empty store,
    // a file holding something else is still refused.
    std::fs::write(&store, b"not a database").unwrap();
    let plain = keygate(&["store", "init", "--config", config], None);
    assert_eq!(code(&plain), 1);
    assert_eq!(std::fs::read(&store).unwrap(), b"not a database");
    std::fs::write(&store, b"").unwrap();
    let plain = keygate(&["store", "init", "--config", config], None);
    assert_eq!(code(&plain), 0, "{}", String::from_utf8_lossy(&plain.stderr));
    assert_eq!(s.json(&["list"]), serde_json::json!([]));
    assert_eq!(code(&init()), 0, "now a keygate store");
}

#[cfg(unix)]
#[test]
fn a_store_is_created_on_purpose_and_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let s = setup();
    let config = s.config.to_str().unwrap();
    let store = s.config.parent().unwrap().join("keys.db");
    let init = keygate(&["store", "init", "--config", config], None);
    assert_eq!(code(&init), 0, "{}", String::from_utf8_lossy(&init.stderr));
    assert!(String::from_utf8_lossy(&init.stdout).contains("created"));
    assert_eq!(mode(&store), 0o600);
    let again = keygate(&["store", "init", "--config", config], None);
    assert_eq!(code(&again), 0, "init is safe to run again");
    assert!(String::from_utf8_lossy(&again.stdout).contains("exists"));
    assert_eq!(s.json(&["list"]), serde_json::json!([]));

    // The first key makes the store too, with the same mode, and SQLite's side files follow it.
    let other = setup();
    other.json(&["create", "--name", "first", "--env", "dev"]);
    let store = other.config.parent().unwrap().join("keys.db");
    assert_eq!(mode(&store), 0o600);
    let writer = rusqlite::Connection::open(&store).unwrap();
    writer
        .execute("UPDATE meta SET value = value WHERE name = 'revision'", [])
        .unwrap();
    for side in ["keys.db-wal", "keys.db-shm"] {
        assert_eq!(mode(&store.with_file_name(side)), 0o600, "{side}");
    }
}

fn check(config: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["check", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    keygate(&args, None)
}

fn json_of(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON document ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

#[test]
fn check_json_prints_one_document_with_every_error_at_its_line_and_column() {
    let s = setup();
    let output = check(&s.config, &["--json"]);
    assert_eq!(code(&output), 0, "{}", String::from_utf8_lossy(&output.stderr));
    let report = json_of(&output);
    assert_eq!(report["ok"], true);
    assert_eq!(report["config"], s.config.to_str().unwrap());
    assert_eq!(
        (report["routes"].as_u64(), report["upstreams"].as_u64()),
        (Some(1), Some(1))
    );

    let text = format!("{CONFIG}\n[server]\n  listen = \"nowhere\"\nshutdown_grace = \"soon\"\n");
    std::fs::write(&s.config, &text).unwrap();
    let line = text.lines().position(|l| l.contains("nowhere")).unwrap() + 1;
    let output = check(&s.config, &["--json"]);
    assert_eq!(
        code(&output),
        1,
        "the exit status of an invalid file, as without --json"
    );
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = json_of(&output);
    assert_eq!(report["ok"], false);
    let errors = report["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{report}");
    assert_eq!(errors[0]["line"], line);
    assert_eq!(errors[0]["column"], 12);
    assert_eq!(errors[0]["field"], "server.listen");
    assert!(errors[0]["message"].as_str().unwrap().contains("nowhere"));
    assert_eq!(errors[1]["line"], line + 1);

    let missing = s.config.with_file_name("absent.toml");
    let report = json_of(&check(&missing, &["--json"]));
    assert_eq!(report["ok"], false);
    assert!(report["errors"][0]["line"].is_null());
    assert!(report["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("cannot read"));
}

const WITH_SECRETS: &str = r#"
[store]
url = "postgres://keygate:hunter2@127.0.0.1:5432/keygate?sslmode=disable&password=hunter3"
pepper_env = "KEYGATE_PEPPER"
snapshot = "table.snapshot"
[rate_limit]
backend = "redis"
redis_url = "redis://:hunter4@127.0.0.1:6379/0"
[lifecycle]
idle_expiry = "90d"
warn_before = ["1d", "7d"]
webhook = "https://hooks.example.com/services/hunter5?token=hunter6"
[[upstream]]
name = "api"
url = "http://127.0.0.1:7001"
[[route]]
name = "customers"
path = "/v1/customers/{customer}"
upstream = "api"
customer_param = "customer"
permissions = { GET = "customer:read", "*" = "customer:write" }
"#;

#[test]
fn check_print_shows_every_default_redacts_secrets_and_round_trips() {
    let s = setup();
    std::fs::write(&s.config, WITH_SECRETS).unwrap();
    let output = check(&s.config, &["--print"]);
    assert_eq!(code(&output), 0, "{}", String::from_utf8_lossy(&output.stderr));
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(!printed.contains("hunter"), "a secret was printed:\n{printed}");
    let dir = s.config.parent().unwrap().to_str().unwrap();
    for shown in [
        "url = \"postgres://keygate:REDACTED@127.0.0.1:5432/keygate?sslmode=disable&password=REDACTED\"",
        "redis_url = \"redis://:REDACTED@127.0.0.1:6379/0\"",
        "webhook = \"https://hooks.example.com/REDACTED?token=REDACTED\"",
        "pepper_env = \"KEYGATE_PEPPER\"",
        "shutdown_grace = \"30s\"",
        "redis_timeout = \"25ms\"",
        "warn_before = [\"7d\", \"1d\"]",
        "pool_max_idle = 128",
        &format!("snapshot = \"{dir}/table.snapshot\""),
    ] {
        assert!(printed.contains(shown), "{shown} not in:\n{printed}");
    }

    // The printed file is a config in its own right, and prints the same again.
    let copy = s.config.with_file_name("effective.toml");
    std::fs::write(&copy, &printed).unwrap();
    let again = check(&copy, &["--print"]);
    assert_eq!(code(&again), 0, "{}", String::from_utf8_lossy(&again.stderr));
    let body = |text: &str| text.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&String::from_utf8_lossy(&again.stdout)), body(&printed));

    let report = json_of(&check(&s.config, &["--print", "--json"]));
    assert_eq!(report["ok"], true);
    let effective = &report["effective"];
    assert_eq!(effective["server"]["max_headers"], 100);
    assert_eq!(effective["route"][0]["permissions"]["GET"], "customer:read");
    assert!(!report.to_string().contains("hunter"), "{report}");
}

#[test]
fn check_refuses_a_missing_store_folder_and_warns_of_a_missing_store() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, SERVE_ON.edit("{store}", "unmounted/keys.db")).unwrap();
    let line = SERVE_ON.lines().position(|l| l.contains("{store}")).unwrap() + 1;
    let output = check(&config, &[]);
    assert_eq!(code(&output), 1);
    let stderr = one_line_stderr(&output);
    let folder = dir.path().join("unmounted");
    assert!(
        stderr.contains(&format!(
            "line {line}: store.url: the folder {} ",
            folder.display()
        )),
        "{stderr}"
    );
    let report = json_of(&check(&config, &["--json"]));
    assert_eq!(report["errors"][0]["field"], "store.url");
    assert_eq!(report["errors"][0]["line"], line);
    // A config for another host: its folders are not this machine's.
    assert_eq!(code(&check(&config, &["--file-only"])), 0);

    // The folder is there, the store not yet: what store init is for, so a warning.
    std::fs::create_dir(&folder).unwrap();
    let output = check(&config, &[]);
    assert_eq!(code(&output), 0, "{}", String::from_utf8_lossy(&output.stderr));
    let init = format!("keygate store init --config {}", config.display());
    assert!(String::from_utf8_lossy(&output.stderr).contains(&init));
    let report = json_of(&check(&config, &["--json"]));
    assert!(report["warnings"].to_string().contains("store init"), "{report}");
    // A snapshot serve could never save: refused by check, as by serve.
    let with_snapshot = SERVE_ON
        .edit("{store}", "unmounted/keys.db")
        .set("store", "snapshot = \"elsewhere/table.snap\"");
    std::fs::write(&config, with_snapshot).unwrap();
    let report = json_of(&check(&config, &["--json"]));
    assert_eq!(report["ok"], false);
    assert!(
        report["errors"].to_string().contains("store.snapshot"),
        "{report}"
    );
    assert!(report["errors"].to_string().contains("elsewhere"), "{report}");
    let serve = serve_exit(&config, Duration::from_secs(30)).expect("serve refuses it at once");
    assert_eq!(code(&serve), 1);
    assert!(String::from_utf8_lossy(&serve.stderr).contains("store.snapshot"));
    assert!(!folder.join("keys.db").exists(), "check creates nothing");
}

#[test]
fn keys_list_columns_line_up_for_values_of_every_width() {
    let s = setup();
    let dev = s.json(&["create", "--name", "a", "--env", "dev"]);
    s.json(&[
        "create",
        "--name",
        "a rather long name for a key",
        "--env",
        "prod",
    ]);
    s.json(&["revoke", dev["id"].as_str().unwrap()]);
    let imported = s.keys_with_stdin(
        &["import", "--name", "legacy", "--env", "stg"],
        Some("sk_live_legacy_0123456789\n"),
    );
    assert_eq!(code(&imported), 0);
    let output = s.keys(&["list"]);
    assert_eq!(code(&output), 0);
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    let header = lines[0];
    for column in ["ENVIRONMENT", "STATUS", "PREFIX", "LAST USED", "NAME"] {
        let at = header.find(column).unwrap();
        for line in &lines[1..] {
            let (before, value) = line.split_at(at);
            assert!(
                before.ends_with(' ') && !value.starts_with(' '),
                "{column} does not start at column {at}:\n{text}"
            );
        }
    }
    assert!(text.contains("development  revoked"), "{text}");
    assert!(lines.iter().all(|line| !line.ends_with(' ')));
}

#[test]
fn import_file_takes_short_environments_and_names_one_line_and_the_expected_shape() {
    let s = setup();
    let file = s.config.with_file_name("keys.jsonl");
    std::fs::write(
        &file,
        [
            r#"{"key": "legacy-secret-number-one", "name": "one", "environment": "prod"}"#,
            r#"{"key": "legacy-secret-number-two", "name": "two", "environment": "Stg"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    assert_eq!(s.json(&["import-file", file.to_str().unwrap()])["imported"], 2);
    let list = s.json(&["list"]);
    let environments: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["environment"].as_str().unwrap())
        .collect();
    assert_eq!(environments, ["production", "staging"]);

    std::fs::write(
        &file,
        [
            r#"{"key": "legacy-secret-number-333", "name": "x", "environment": "dev"}"#,
            r#"{"key": "legacy-secret-number-444", "name": "y", "environment": "dev", "rate_limit": "100/s"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let output = s.keys(&["import-file", file.to_str().unwrap()]);
    assert_eq!(code(&output), 1);
    let stderr = one_line_stderr(&output);
    assert_eq!(
        stderr.trim().lines().collect::<Vec<_>>(),
        [
            format!(
                r#"keygate: {}: line 2: rate_limit: got string "100/s", expected {{"requests":N,"per":"1s","burst":N}} or null"#,
                file.display()
            ),
            format!("keygate: {}: 1 bad line(s), nothing imported", file.display()),
        ]
    );
    assert_eq!(s.json(&["list"]).as_array().unwrap().len(), 2, "nothing imported");
}

fn help(command: &[&str]) -> String {
    let mut args = command.to_vec();
    args.push("-h");
    let output = keygate(&args, None);
    assert_eq!(code(&output), 0, "{command:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn every_option_and_argument_has_help_and_log_format_shows_only_on_serve() {
    let keys = [
        "create",
        "import",
        "import-file",
        "list",
        "show",
        "update",
        "regenerate",
    ];
    let more = ["revoke", "activate", "delete", "usage", "events"];
    let mut commands: Vec<Vec<&str>> = vec![vec![], vec!["serve"], vec!["check"], vec!["keys"]];
    commands.push(vec!["store", "init"]);
    commands.push(vec!["probe"]);
    commands.extend(keys.iter().chain(&more).map(|c| vec!["keys", c]));
    for command in &commands {
        let text = help(command);
        let listed = text
            .lines()
            .skip_while(|line| !matches!(*line, "Arguments:" | "Options:" | "Commands:"))
            .filter(|line| line.starts_with("  "));
        for line in listed {
            assert!(
                line.trim().contains("  "),
                "{command:?}: no help for {line:?}\n{text}"
            );
        }
        let logs = text.contains("--log-format");
        assert_eq!(logs, command == &["serve"], "{command:?}: --log-format\n{text}");
    }
    let list = help(&["keys", "list"]);
    assert!(list.contains("deleted keys only with --status deleted"), "{list}");
}

#[test]
fn serve_without_a_config_names_both_ways_to_start() {
    let output = keygate(&["serve"], None);
    assert_eq!(code(&output), 2);
    let stderr = one_line_stderr(&output);
    assert!(
        stderr.contains("--config FILE") && stderr.contains("keygate serve --dev"),
        "{stderr}"
    );
}

#[test]
fn expiry_takes_a_date_as_midnight_utc_and_refuses_past_9999_naming_the_field() {
    let s = setup();
    let created = s.json(&[
        "create",
        "--name",
        "d",
        "--env",
        "dev",
        "--expires-at",
        "2099-01-31",
    ]);
    assert_eq!(created["expires_at"], "2099-01-31T00:00:00Z");
    let id = created["id"].as_str().unwrap();
    assert_eq!(
        s.json(&["update", id, "--expires-at", "2098-12-31"])["expires_at"],
        "2098-12-31T00:00:00Z"
    );
    for args in [
        vec![
            "create",
            "--name",
            "n",
            "--env",
            "dev",
            "--expires-at",
            "9999-12-31",
        ],
        vec!["update", id, "--expires-at", "9999-12-31T12:00:00Z"],
        vec![
            "create",
            "--name",
            "n",
            "--env",
            "dev",
            "--expires-in",
            "99999999999d",
        ],
    ] {
        let output = s.keys(&args);
        assert_eq!(code(&output), 2, "{args:?}");
        let stderr = one_line_stderr(&output);
        assert!(stderr.contains("--expires-"), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("unix-seconds") && !stderr.contains("panicked"),
            "{stderr}"
        );
    }

    // In an import file, the line and the field are named.
    let file = s.config.with_file_name("never.jsonl");
    std::fs::write(
        &file,
        r#"{"key": "legacy-secret-number-one", "name": "one", "environment": "prod", "expires_at": "9999-12-31"}"#,
    )
    .unwrap();
    let output = s.keys(&["import-file", file.to_str().unwrap()]);
    assert_ne!(code(&output), 0);
    let stderr = one_line_stderr(&output);
    assert!(
        stderr.contains("line 1: expires_at: \"9999-12-31\" is past the last instant keygate holds"),
        "{stderr}"
    );
    let dated = s.config.with_file_name("dated.jsonl");
    std::fs::write(
        &dated,
        r#"{"key": "legacy-secret-number-one", "name": "one", "environment": "prod", "expires_at": "2099-01-31"}"#,
    )
    .unwrap();
    assert_eq!(s.json(&["import-file", dated.to_str().unwrap()])["imported"], 1);
    let list = s.json(&["list", "--env", "prod"]);
    assert_eq!(list[0]["expires_at"], "2099-01-31T00:00:00Z");
}

#[test]
fn check_names_the_field_of_a_value_of_the_wrong_type() {
    let s = setup();
    let text = CONFIG.set("store", "sync_interval = 1");
    std::fs::write(&s.config, &text).unwrap();
    let line = text.lines().position(|l| l.starts_with("sync_interval")).unwrap() + 1;
    let output = keygate(&["check", "--config", s.config.to_str().unwrap()], None);
    assert_eq!(code(&output), 1);
    let stderr = one_line_stderr(&output);
    assert!(
        stderr.contains(&format!(
            r#"line {line}: store.sync_interval: got integer `1`, expected a string in quotes, like "1s""#
        )),
        "{stderr}"
    );
}

/// Runs a `keys` command with `--json` that fails: its exit code and its one JSON document.
fn json_failure(s: &Setup, args: &[&str]) -> (i32, Value, String) {
    let mut all = args.to_vec();
    all.push("--json");
    let output = s.keys(&all);
    let document = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?} printed no single JSON document ({e}): {:?}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    (code(&output), document, one_line_stderr(&output))
}

#[test]
fn every_json_command_prints_a_json_error_document_when_it_fails() {
    let s = setup();
    let (id, _) = {
        let created = s.json(&["create", "--name", "gone", "--env", "dev"]);
        (created["id"].as_str().unwrap().to_owned(), created)
    };
    let (code_of, document, stderr) = json_failure(&s, &["show", "key_doesnotexist"]);
    assert_eq!(
        (code_of, &document),
        (
            1,
            &serde_json::json!({"error": "no key with id key_doesnotexist"})
        )
    );
    assert!(
        stderr.contains("no key with id key_doesnotexist"),
        "the stderr line stays: {stderr}"
    );
    let (code_of, document, _) = json_failure(&s, &["revoke", "key_doesnotexist"]);
    assert_eq!(code_of, 1);
    assert!(document["error"].is_string());
    // A refused value: exit 2, and the field named for a script to read.
    let (code_of, document, _) = json_failure(
        &s,
        &[
            "create",
            "--name",
            "x",
            "--env",
            "dev",
            "--expires-at",
            "2001-01-01T00:00:00Z",
        ],
    );
    assert_eq!(
        (code_of, document),
        (
            2,
            serde_json::json!({"error": "expires_at: must be in the future", "field": "expires_at"})
        )
    );
    // Arguments refused before any command runs: still one document.
    for args in [
        vec!["create", "--name", "x", "--env", "qa"],
        vec!["show"],
        vec!["frobnicate"],
    ] {
        let (code_of, document, _) = json_failure(&s, &args);
        assert_eq!(code_of, 2, "{args:?}");
        assert!(
            document["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{args:?}: {document}"
        );
    }
    let output = keygate(&["keys", "list", "--json"], None);
    assert_eq!(code(&output), 2);
    let document: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(
        document["error"].as_str().unwrap().contains("--config"),
        "{document}"
    );
    // A deleted key is shown, not denied.
    assert_eq!(code(&s.keys(&["delete", &id])), 0);
    assert_eq!(s.json(&["show", &id])["status"], "deleted");
    assert!(String::from_utf8_lossy(&s.keys(&["show", &id]).stdout).contains("deleted"));
}

#[test]
fn import_file_reports_every_bad_line_and_exits_1() {
    let s = setup();
    let file = s.config.with_file_name("keys.jsonl");
    let mut lines = vec![
        r#"{"key": "legacy-secret-number-one", "name": "one", "environment": "moon"}"#.to_owned(),
        r#"{"key": "legacy-secret-number-two", "name": "two", "environment": "prod"}"#.to_owned(),
        "not json".to_owned(),
        r#"{"key": "legacy-secret-number-two", "name": "again", "environment": "prod"}"#.to_owned(),
        r#"{"key": "legacy-secret-number-333", "name": "", "environment": "prod"}"#.to_owned(),
    ];
    std::fs::write(&file, lines.join("\n")).unwrap();
    let (code_of, document, stderr) = json_failure(&s, &["import-file", file.to_str().unwrap()]);
    assert_eq!(code_of, 1, "{stderr}");
    let bad: Vec<u64> = document["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| line["line"].as_u64().unwrap())
        .collect();
    assert_eq!(bad, [1, 3, 4, 5], "{document}");
    assert_eq!(document["bad_lines"], 4);
    assert!(document["error"]
        .as_str()
        .unwrap()
        .ends_with("4 bad line(s), nothing imported"));
    let stderr: Vec<&str> = stderr.trim().lines().collect();
    assert_eq!(stderr.len(), 5, "{stderr:?}");
    for (said, line) in stderr.iter().zip([
        "line 1: environment",
        "line 3: not valid JSON",
        "line 4: key: the same secret",
        "line 5: name",
    ]) {
        assert!(said.contains(line), "{said}");
    }
    assert_eq!(s.json(&["list"]).as_array().unwrap().len(), 0, "nothing imported");

    // Past a hundred, a count of the rest.
    lines = (0..150)
        .map(|i| format!(r#"{{"key": "legacy-secret-{i:06}", "name": "", "environment": "prod"}}"#))
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let output = s.keys(&["import-file", file.to_str().unwrap()]);
    assert_eq!(code(&output), 1);
    let stderr = one_line_stderr(&output);
    assert_eq!(stderr.lines().count(), 102, "{stderr}");
    assert!(
        stderr.contains("and 50 more bad line(s)") && stderr.contains("150 bad line(s)"),
        "{stderr}"
    );
}

/// A port free a moment ago on 127.0.0.1 (bound, then let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.1 GET over a new connection; the whole answer as text.
fn http_get(address: &str, path: &str, basic_user_pass: &str) -> String {
    use base64::Engine;
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let credential = base64::engine::general_purpose::STANDARD.encode(basic_user_pass);
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Basic {credential}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn serve_dev_listens_where_it_is_told_and_its_curl_lines_say_so() {
    use std::io::BufRead;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args([
            "serve",
            "--dev",
            "--listen",
            &listen,
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env_remove("KEYGATE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut welcome = String::new();
    while !welcome.contains("Ctrl-C stops it") {
        match received.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                welcome.push_str(&line);
                welcome.push('\n');
            }
            Err(_) => break,
        }
    }
    let url = format!("http://{listen}/v1/customers/acme");
    let key = welcome
        .lines()
        .find_map(|line| line.trim().strip_prefix("demo key "))
        .map(str::to_owned);
    let admin = welcome
        .lines()
        .find_map(|line| line.trim().strip_prefix("admin    http://"))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned);
    let answer = key
        .as_ref()
        .map(|key| http_get(&listen, "/v1/customers/acme", &format!("X:{key}")));
    child.kill().unwrap();
    child.wait().unwrap();

    let key = key.unwrap_or_else(|| panic!("no demo key in: {welcome}"));
    assert!(
        welcome.contains(&format!("curl -i -u X:{key} {url}")),
        "{welcome}"
    );
    assert!(!welcome.contains("127.0.0.1:8080"), "{welcome}");
    let admin = admin.unwrap_or_else(|| panic!("no admin address in: {welcome}"));
    assert_ne!(admin, "127.0.0.1:0", "the port taken is shown, not 0");
    assert!(
        welcome.contains(&format!("curl -s http://{admin}/metrics")),
        "{welcome}"
    );
    let answer = answer.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // An address asked for is not swapped for another: taken, it is an error naming the flag.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().to_string();
    let output = keygate(&["serve", "--dev", "--admin-listen", &taken], None);
    assert_eq!(code(&output), 1);
    let stderr = one_line_stderr(&output);
    assert!(
        stderr.contains(&taken) && stderr.contains("--admin-listen"),
        "{stderr}"
    );
    drop(holder);
    // The flags belong to --dev.
    assert_eq!(code(&keygate(&["serve", "--listen", &listen], None)), 2);
}

/// The `event` of each audit record, from a JSON array or an admin API page of them.
fn event_names(events: &Value) -> Vec<String> {
    let list = events.as_array().or_else(|| events["events"].as_array());
    list.expect("an array of events")
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn revoking_a_revoked_key_or_activating_an_active_one_records_nothing() {
    let s = setup();
    let id = s.json(&["create", "--name", "k", "--env", "dev"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for command in ["revoke", "revoke", "activate", "activate"] {
        s.json(&[command, &id]);
    }
    assert_eq!(
        event_names(&s.json(&["events", &id])),
        ["created", "revoked", "activated"]
    );
}

#[tokio::test]
async fn the_admin_api_records_no_empty_revoked_event_either() {
    let h = support::Harness::start().await;
    let (id, _) = h.key(&[]).await;
    for action in ["revoke", "revoke", "activate", "activate"] {
        let path = format!("/v1/keys/{id}/{action}");
        let answer = support::admin_call(&h.gateway, "POST", &path, "").await;
        assert_eq!(answer.status, 200, "{action}: {}", answer.text());
    }
    let events = support::admin_call(&h.gateway, "GET", &format!("/v1/keys/{id}/events"), "").await;
    assert_eq!(event_names(&events.json()), ["created", "revoked", "activated"]);
}

/// Every instant in `value` (strings that parse as one), whatever its depth.
fn instants(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::String(text) if text.parse::<jiff::Timestamp>().is_ok() => found.push(text.clone()),
        Value::Array(items) => items.iter().for_each(|item| instants(item, found)),
        Value::Object(fields) => fields.values().for_each(|field| instants(field, found)),
        _ => {}
    }
}

fn assert_whole_seconds(what: &str, times: &[String]) {
    assert!(!times.is_empty(), "{what}: no times");
    for time in times {
        let whole = time.len() == 20 && time.ends_with('Z') && !time.contains('.');
        assert!(whole, "{what}: {time} is not RFC 3339 in whole seconds");
    }
}

#[test]
fn key_times_are_whole_seconds_in_every_answer_text_and_json() {
    let s = setup();
    let created = s.json(&["create", "--name", "t", "--env", "dev", "--expires-in", "30d"]);
    let id = created["id"].as_str().unwrap().to_owned();
    let at = "2031-01-31T10:00:00.123456789Z";
    let mut answers = vec![
        created,
        s.json(&["update", &id, "--expires-at", at]),
        s.json(&["regenerate", &id, "--grace", "1500ms"]),
        s.json(&["revoke", &id]),
        s.json(&["show", &id]),
        s.json(&["list"]),
    ];
    answers.push(s.json(&["events", &id]));
    for answer in &answers {
        let mut found = Vec::new();
        instants(answer, &mut found);
        assert_whole_seconds(&answer.to_string(), &found);
    }
    assert_eq!(answers[1]["expires_at"], "2031-01-31T10:00:00Z");
    for command in [
        ["show", id.as_str()],
        ["revoke", id.as_str()],
        ["events", id.as_str()],
    ] {
        let text = String::from_utf8(s.keys(&command).stdout).unwrap();
        let times: Vec<String> = text
            .split_whitespace()
            .filter(|word| word.starts_with("20") && word.contains('T'))
            .map(str::to_owned)
            .collect();
        assert_whole_seconds(&text, &times);
    }
}

#[tokio::test]
async fn the_admin_api_answers_key_times_in_whole_seconds_too() {
    let h = support::Harness::start().await;
    let body = r#"{"name":"t","environment":"production","expires_in":"90d"}"#;
    let created = support::admin_call(&h.gateway, "POST", "/v1/keys", body).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_owned();
    h.clock.advance(Duration::from_millis(1_234));
    let path = format!("/v1/keys/{id}");
    let patch = r#"{"expires_at":"2031-01-31T10:00:00.5Z"}"#;
    let answers = [
        created,
        support::admin_call(&h.gateway, "PATCH", &path, patch).await,
        support::admin_call(&h.gateway, "POST", &format!("{path}/revoke"), "").await,
        support::admin_call(&h.gateway, "POST", &format!("{path}/regenerate"), "").await,
        support::admin_call(&h.gateway, "GET", &format!("{path}/events"), "").await,
    ];
    for answer in &answers {
        let mut found = Vec::new();
        instants(&answer.json(), &mut found);
        assert_whole_seconds(&answer.text(), &found);
    }
}

#[test]
fn a_reader_that_goes_away_ends_the_output_quietly_not_with_a_panic() {
    let s = setup();
    let id = s.json(&["create", "--name", "k", "--env", "dev"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let config = s.config.to_str().unwrap();
    for args in [
        vec!["keys", "--config", config, "list"],
        vec!["keys", "--config", config, "show", &id, "--json"],
        vec!["check", "--config", config, "--print"],
    ] {
        // The read end is closed before the command starts: its first write finds no reader,
        // as `keygate keys list | head -1` does once head has its line.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let output = Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(&args)
            .env_remove("KEYGATE_CONFIG")
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(code(&output), 141, "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn probe_exits_0_for_a_ready_gateway_and_1_with_the_reason_otherwise() {
    let h = support::Harness::start().await;
    let s = setup();
    let config = format!("[admin]\nlisten = \"{}\"\n{CONFIG}", h.gateway.admin_addr);
    std::fs::write(&s.config, config).unwrap();
    let probe = |config: &Path| {
        let config = config.to_str().unwrap().to_owned();
        tokio::task::spawn_blocking(move || keygate(&["probe", "--config", &config, "--timeout", "5s"], None))
    };
    let ready = probe(&s.config).await.unwrap();
    assert_eq!(code(&ready), 0, "{}", String::from_utf8_lossy(&ready.stderr));
    assert_eq!(String::from_utf8_lossy(&ready.stdout).trim(), "ready");

    // Nothing listens there any more.
    let addr = h.gateway.admin_addr;
    h.gateway.shutdown().await;
    let down = probe(&s.config).await.unwrap();
    assert_eq!(code(&down), 1);
    let message = one_line_stderr(&down);
    assert!(
        message.contains("not ready") && message.contains(&addr.to_string()),
        "{message}"
    );
}

#[test]
fn store_init_if_missing_on_postgres_creates_the_tables_and_is_safe_to_run_again() {
    let Some(url) = support::postgres::postgres_url() else {
        return;
    };
    let schema = support::postgres::FreshSchema::new(&url);
    let s = setup();
    std::fs::write(&s.config, CONFIG.edit("sqlite://keys.db", &schema.url)).unwrap();
    for _ in 0..2 {
        let init = keygate(
            &[
                "store",
                "init",
                "--config",
                s.config.to_str().unwrap(),
                "--if-missing",
            ],
            None,
        );
        assert_eq!(code(&init), 0, "{}", String::from_utf8_lossy(&init.stderr));
        assert!(String::from_utf8_lossy(&init.stdout).contains("tables are in place"));
    }
    // The tables are there (this panics otherwise), and a key can be added and listed.
    schema.sql("SELECT count(*) FROM keys");
    s.json(&["create", "--name", "first", "--env", "prod"]);
    assert_eq!(s.json(&["list"]).as_array().unwrap().len(), 1);
}
