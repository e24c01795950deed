//! `keygate store copy`, `store export` and `store import` (the real binary): a store moved to
//! another, SQLite to SQLite and SQLite to PostgreSQL, keeps every key working with the same
//! secrets (the grace secret of a regeneration too), every revoked or deleted key refused,
//! and its usage and audit trail; re-running is refused without `--update` and safe with it;
//! an export imported into a fresh store gives the same store.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::support::postgres::{postgres_url, FreshSchema};
use crate::support::{spec, ConfigEdit, Harness, STANDARD};
use http::StatusCode;
use keygate::config::StoreUrl;
use keygate::control::store;
use keygate::control::store::dump::Dump;
use keygate::core::environment::Environment;

const PATH: &str = "/v1/customers/acme";

fn keygate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(args)
        .env_remove("KEYGATE_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The secrets a source store was filled with: each should or should not work on a copy.
struct Secrets {
    plain: String,
    /// The secret of a regenerated key, and the one it replaced (in its grace period).
    current: String,
    grace: String,
    revoked: String,
    deleted: String,
    ids: Vec<String>,
}

/// A SQLite store with a plain key, a key regenerated with a grace period, a revoked one and a
/// deleted one, usage on two of them and the audit trail all that leaves.
async fn filled_source() -> (Harness, Secrets) {
    let source = Harness::start().await;
    let key = || spec(Environment::Production, &["customer:read"]);
    let (plain_id, plain) = source.create_key(key()).await;
    let (regen_id, grace) = source.create_key(key()).await;
    let current = source
        .keys
        .regenerate(&regen_id, Some(Duration::from_secs(3600)))
        .unwrap()
        .key;
    let (revoked_id, revoked) = source.create_key(key()).await;
    source.keys.revoke(&revoked_id).unwrap();
    let (deleted_id, deleted) = source.create_key(key()).await;
    source.keys.delete(&deleted_id).unwrap();
    // Usage, counted by the gateway and flushed to the store, on the current and grace secrets.
    for secret in [&plain, &plain, &grace] {
        assert_eq!(source.get(PATH, secret).await.status, StatusCode::OK);
    }
    source.gateway.flush_usage().await;
    // Customers, a deleted one (a tombstone) among them, and their audit trail.
    let customers = source.keys.customers();
    for (id, quota) in [("acme", true), ("gone", false)] {
        let request = serde_json::json!({"id": id, "quota": quota.then(|| serde_json::json!({"limit": 5, "period": "day"}))});
        customers
            .create(serde_json::from_value(request).unwrap())
            .unwrap();
    }
    customers.delete("gone").unwrap();
    let ids = vec![plain_id, regen_id, revoked_id, deleted_id];
    let secrets = Secrets {
        plain,
        current,
        grace,
        revoked,
        deleted,
        ids,
    };
    (source, secrets)
}

/// The store a config names, read through `keygate store export` in a process of its own (a
/// second handle on a SQLite file in this process would share the gateway's file locks).
fn export(config: &Path) -> Dump {
    let exported = keygate(&["store", "export", "--config", config.to_str().unwrap()]);
    assert!(exported.status.success(), "{}", stderr(&exported));
    Dump::read(&mut exported.stdout.as_slice()).unwrap().0
}

/// A config naming the store at `url`, in `dir`.
fn config_for(dir: &Path, url: &str) -> PathBuf {
    let path = dir.join("target.toml");
    std::fs::write(&path, format!("[store]\nurl = \"{url}\"\n")).unwrap();
    path
}

/// The target holds what the source holds: every row (keys by id with every column but their
/// place in the store, usage by key and day, audit events and the rest by id), the same
/// counts, a revision as recent.
fn assert_same_store(source: &Path, target: &Path) -> (Dump, Dump) {
    let (from, to) = (export(source), export(target));
    assert_eq!(from.check_contained_in(&to), Ok(()));
    assert_eq!(from.counts(), to.counts());
    assert!(
        to.revision >= from.revision,
        "{} < {}",
        to.revision,
        from.revision
    );
    (from, to)
}

/// A gateway on the store at `url` admits the live secrets, the grace one included, and
/// refuses the revoked and the deleted.
async fn assert_gateway_admits(url: &str, secrets: &Secrets) {
    let template = STANDARD.edit(r#"url = "sqlite://keygate.db""#, &format!(r#"url = "{url}""#));
    let gateway = Harness::with_config(&template, "").await;
    for secret in [&secrets.plain, &secrets.current, &secrets.grace] {
        assert_eq!(gateway.get(PATH, secret).await.status, StatusCode::OK, "{url}");
    }
    for secret in [&secrets.revoked, &secrets.deleted] {
        assert_eq!(
            gateway.get(PATH, secret).await.status,
            StatusCode::UNAUTHORIZED,
            "{url}"
        );
    }
}

/// Copies the source into `to`, checks it, refuses a second copy without `--update` and
/// takes it with the flag, the target equal to the source after each.
async fn copy_and_recopy(source: &Harness, secrets: &Secrets, to: &str) {
    let dir = tempfile::tempdir().unwrap();
    let target = config_for(dir.path(), to);
    let config = source.config_path.to_str().unwrap();
    let copied = keygate(&["store", "copy", "--config", config, "--to", to]);
    assert!(copied.status.success(), "{}", stderr(&copied));
    let (from, copy) = assert_same_store(&source.config_path, &target);
    assert_eq!(from.counts().keys, 4);
    assert_eq!(from.counts().usage, 2);
    assert_eq!((from.counts().customers, from.counts().customer_events), (2, 3));
    assert_eq!(from, copy, "a copy into an empty store is exact");
    assert_gateway_admits(to, secrets).await;

    let again = keygate(&["store", "copy", "--config", config, "--to", to]);
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    assert!(stderr(&again).contains("--update"), "{}", stderr(&again));
    assert_eq!(export(&target), copy, "a refused copy writes nothing");

    // A change in the source meanwhile reaches the target with --update, and nothing doubles.
    source.keys.revoke(&secrets.ids[0]).unwrap();
    for _ in 0..2 {
        let update = keygate(&["store", "copy", "--config", config, "--to", to, "--update"]);
        assert!(update.status.success(), "{}", stderr(&update));
    }
    let (from, copy) = assert_same_store(&source.config_path, &target);
    assert!(
        copy.revision > from.revision,
        "gateways on the target see the update"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_to_sqlite_keeps_every_secret_working_and_a_rerun_is_safe() {
    let (source, secrets) = filled_source().await;
    let target = tempfile::tempdir().unwrap();
    let to = format!("sqlite://{}", target.path().join("copy.db").display());
    copy_and_recopy(&source, &secrets, &to).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_to_postgres_keeps_every_secret_working_and_a_rerun_is_safe() {
    let Some(postgres) = postgres_url() else {
        eprintln!("skipped: no PostgreSQL");
        return;
    };
    let schema = FreshSchema::new(&postgres);
    let (source, secrets) = filled_source().await;
    copy_and_recopy(&source, &secrets, &schema.url).await;
    // Keys created on the target after the copy get their own seq, past the copied ones.
    let target = store::open(&StoreUrl::Postgres(schema.url.clone())).unwrap();
    let keys = keygate::control::keys::KeyService::new(
        target,
        keygate::core::secret::Hasher::unkeyed(),
        Arc::new(keygate::core::clock::ManualClock::new(jiff::Timestamp::now())),
        store::Actor::Cli,
    );
    keys.create(spec(Environment::Production, &[])).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_imported_into_a_fresh_store_gives_the_same_store() {
    let (source, secrets) = filled_source().await;
    let exported = keygate(&[
        "store",
        "export",
        "--config",
        source.config_path.to_str().unwrap(),
    ]);
    assert!(exported.status.success(), "{}", stderr(&exported));
    let text = String::from_utf8(exported.stdout).unwrap();
    assert!(text.starts_with(r#"{"keygate_dump":1,"#), "{text}");
    for secret in [&secrets.plain, &secrets.current, &secrets.grace] {
        assert!(!text.contains(secret.as_str()), "a secret is in the dump");
    }

    let target = tempfile::tempdir().unwrap();
    let dump = target.path().join("backup.jsonl");
    std::fs::write(&dump, &text).unwrap();
    let config = target.path().join("gateway.toml");
    std::fs::write(&config, "[store]\nurl = \"sqlite://restored.db\"\n").unwrap();
    let config = config.to_str().unwrap();
    let imported = keygate(&["store", "import", "--config", config, dump.to_str().unwrap()]);
    assert!(imported.status.success(), "{}", stderr(&imported));

    let from = export(&source.config_path);
    let to = export(Path::new(config));
    assert_eq!(from, to, "the restored store differs");
    let (reread, _) = Dump::read(&mut text.as_bytes()).unwrap();
    assert_eq!(reread, from);

    let again = keygate(&["store", "import", "--config", config, dump.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    let again = keygate(&[
        "store",
        "import",
        "--config",
        config,
        dump.to_str().unwrap(),
        "--update",
    ]);
    assert!(again.status.success(), "{}", stderr(&again));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dump_of_another_pepper_is_refused() {
    let (source, _) = filled_source().await;
    let exported = keygate(&[
        "store",
        "export",
        "--config",
        source.config_path.to_str().unwrap(),
    ]);
    assert!(exported.status.success(), "{}", stderr(&exported));
    let target = tempfile::tempdir().unwrap();
    let dump = target.path().join("backup.jsonl");
    std::fs::write(&dump, &exported.stdout).unwrap();
    let config = target.path().join("gateway.toml");
    std::fs::write(
        &config,
        "[store]\nurl = \"sqlite://restored.db\"\npepper_env = \"KEYGATE_TEST_COPY_PEPPER\"\n",
    )
    .unwrap();
    let imported = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args([
            "store",
            "import",
            "--config",
            config.to_str().unwrap(),
            dump.to_str().unwrap(),
        ])
        .env("KEYGATE_TEST_COPY_PEPPER", "another pepper")
        .output()
        .unwrap();
    assert_eq!(imported.status.code(), Some(1), "{}", stderr(&imported));
    assert!(stderr(&imported).contains("pepper"), "{}", stderr(&imported));
    assert!(!target.path().join("restored.db").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_onto_its_own_store_is_refused_however_the_path_is_written() {
    let (source, _) = filled_source().await;
    let before = export(&source.config_path);
    let dir = source.dir.path();
    let name = dir.file_name().unwrap().to_str().unwrap();
    let own = format!("sqlite://{}/../{name}/keygate.db", dir.display());
    let config = source.config_path.to_str().unwrap();
    let copied = keygate(&["store", "copy", "--config", config, "--to", &own, "--update"]);
    assert_eq!(copied.status.code(), Some(2), "{}", stderr(&copied));
    assert_eq!(export(&source.config_path), before);
}
