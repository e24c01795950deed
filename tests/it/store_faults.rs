//! The gateway when its store lets it down: a stale key table, a store file replaced or
//! deleted under it, a store locked at start, a store its user may not open.

use crate::support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::support::{eventually, sample, spec, ConfigEdit, Harness, STANDARD};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use keygate::control::keys::KeyService;
use keygate::control::store::{Actor, SqliteStore};
use keygate::core::clock::system_clock;
use keygate::core::environment::Environment;
use keygate::core::secret::Hasher;

/// The standard config with `sync_interval` and `extra` store settings.
pub(crate) fn with_store(sync_interval: &str, extra: &str) -> String {
    STANDARD.edit(
        "sync_interval = \"100ms\"",
        &format!("sync_interval = \"{sync_interval}\"\n{extra}"),
    )
}

#[tokio::test]
async fn past_max_staleness_readyz_says_so_and_the_proxy_says_when_to_retry() {
    // No periodic sync within the test: the table ages only as the manual clock moves.
    let h = Harness::with_config(&with_store("1h", "max_staleness = \"5s\""), "").await;
    let (_, key) = h.key(&["*"]).await;
    assert_eq!(h.admin_get("/readyz").await.status, 200);
    assert_eq!(h.get("/v1/status", &key).await.status, 200);

    h.clock.advance(Duration::from_secs(65));
    let ready = h.admin_get("/readyz").await;
    assert_eq!(ready.status, 503);
    let detail = ready.json();
    assert_eq!(detail["ready"], false);
    assert_eq!(detail["last_sync_age_seconds"], 65.0);
    assert_eq!(detail["max_staleness_seconds"], 5.0);
    assert!(
        detail["reason"].as_str().unwrap().contains("65.0s old"),
        "{detail}"
    );
    let refused = h.get("/v1/status", &key).await;
    assert_eq!(refused.status, 503);
    assert_eq!(
        refused.json(),
        serde_json::json!({ "error": "service unavailable" })
    );
    assert_eq!(refused.headers["retry-after"], "3600", "one sync interval");

    h.sync().await;
    assert_eq!(h.admin_get("/readyz").await.status, 200);
    assert_eq!(h.get("/v1/status", &key).await.status, 200);
}

#[tokio::test]
async fn a_store_file_replaced_under_the_gateway_is_reopened_and_its_keys_replace_the_old() {
    let mut h = Harness::start().await;
    // Two keys in the old file, one in the new: seq 1 is replaced, seq 2 must be dropped.
    let (_, first_key) = h.key(&["*"]).await;
    let (_, old_key) = h.key(&["*"]).await;
    assert_eq!(h.get("/v1/status", &old_key).await.status, 200);
    // The harness's own connection to the file goes, as a CLI's does when it exits.
    let memory = SqliteStore::open(Path::new(":memory:")).unwrap();
    h.keys = KeyService::new(Arc::new(memory), Hasher::unkeyed(), system_clock(), Actor::Cli);

    // Another store, made beside it and closed, with another key: a restored backup.
    let path = h.dir.path().join("keygate.db");
    let restored = h.dir.path().join("restored.db");
    let new_key = {
        let store = SqliteStore::create(&restored).unwrap();
        let keys = KeyService::new(Arc::new(store), Hasher::unkeyed(), system_clock(), Actor::Cli);
        keys.create(spec(Environment::Production, &["*"])).unwrap().key
    };
    std::fs::rename(&restored, &path).unwrap();

    // A change through the admin API goes to the new file, and is in force when it answers.
    let body = r#"{"name":"after","environment":"production","key":"restored-era-secret-0123"}"#;
    assert_eq!(admin_post(&h, "/v1/keys", Some(body)).await.status, 201);
    assert_eq!(h.get("/v1/status", "restored-era-secret-0123").await.status, 200);

    let swapped = eventually(Duration::from_secs(10), || async {
        h.get("/v1/status", &new_key).await.status == 200
            && h.get("/v1/status", &old_key).await.status == 401
            && h.get("/v1/status", &first_key).await.status == 401
    })
    .await;
    assert!(swapped, "the periodic sync reads the new file");
    let metrics = h.metrics().await;
    assert_eq!(sample(&metrics, "keygate_store_reopened_total"), Some(1.0));
    assert_eq!(h.admin_get("/readyz").await.status, 200);
    assert_eq!(h.admin_get("/readyz").await.json()["keys"], 2);
    let rows = KeyService::new(
        Arc::new(SqliteStore::open(&path).unwrap()),
        Hasher::unkeyed(),
        system_clock(),
        Actor::Cli,
    );
    let names: Vec<String> = rows
        .list(&Default::default())
        .unwrap()
        .into_iter()
        .map(|k| k.spec.name)
        .collect();
    assert_eq!(names, ["test key", "after"], "the new file holds both");
}

#[tokio::test]
async fn a_store_file_deleted_under_the_gateway_fails_the_sync_and_the_last_table_serves() {
    let h = Harness::with_config(&with_store("1h", ""), "").await;
    let (id, key) = h.key(&["*"]).await;
    let path = h.dir.path().join("keygate.db");
    std::fs::remove_file(&path).unwrap();

    // A change now would land in a file nothing reads again: refused, not lost.
    let revoke = admin_post(&h, &format!("/v1/keys/{id}/revoke"), None).await;
    assert_eq!(revoke.status, 503, "{}", revoke.text());
    assert_eq!(revoke.json()["error"], "store unavailable");

    let failed = h.gateway.sync_now().await.unwrap_err();
    assert!(failed.to_string().contains("is gone"), "{failed}");
    assert!(!path.exists(), "no new empty store");
    assert_eq!(
        h.get("/v1/status", &key).await.status,
        200,
        "the last table serves"
    );
    let metrics = h.metrics().await;
    assert!(sample(&metrics, "keygate_store_sync_errors_total").unwrap() >= 1.0);
    assert_eq!(sample(&metrics, "keygate_store_reopened_total"), Some(0.0));
}

#[tokio::test]
async fn an_empty_file_renamed_over_the_store_is_refused_and_the_last_table_serves() {
    let h = Harness::with_config(&with_store("1h", ""), "").await;
    let (id, key) = h.key(&["*"]).await;
    let path = h.dir.path().join("keygate.db");
    let kept = h.dir.path().join("keygate.db.kept");
    std::fs::rename(&path, &kept).unwrap();
    let empty = h.dir.path().join("restore.tmp");
    std::fs::write(&empty, b"").unwrap();
    std::fs::rename(&empty, &path).unwrap();

    let failed = h.gateway.sync_now().await.unwrap_err().to_string();
    assert!(
        failed.contains("is not a keygate store") && failed.contains("empty file"),
        "{failed}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"",
        "no schema was written into it"
    );
    assert_eq!(
        h.get("/v1/status", &key).await.status,
        200,
        "the last table serves"
    );
    let ready = h.admin_get("/readyz").await;
    assert_eq!(
        ready.status,
        200,
        "a store outage, as when it is unreachable: {}",
        ready.text()
    );
    let detail = ready.json();
    assert_eq!(detail["keys"], 1, "{detail}");
    assert!(
        detail["last_sync_error"]
            .as_str()
            .is_some_and(|why| why.contains("is not a keygate store")),
        "{detail}"
    );
    let revoke = admin_post(&h, &format!("/v1/keys/{id}/revoke"), None).await;
    assert_eq!(
        revoke.status,
        503,
        "a change is refused, not lost: {}",
        revoke.text()
    );
    assert_eq!(h.get("/v1/status", &key).await.status, 200);

    // The store comes back: the same file, nothing to reload.
    std::fs::rename(&kept, &path).unwrap();
    h.sync().await;
    let ready = h.admin_get("/readyz").await.json();
    assert_eq!(ready["last_sync_error"], serde_json::Value::Null, "{ready}");
    let metrics = h.metrics().await;
    assert_eq!(sample(&metrics, "keygate_store_reopened_total"), Some(0.0));
    assert_eq!(h.get("/v1/status", &key).await.status, 200);
}

#[tokio::test]
async fn a_store_locked_at_start_delays_readiness_until_it_can_be_read() {
    let upstream = support::Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = STANDARD.edit("{upstream}", &upstream.addr.to_string());
    let config = keygate::config::parse(&text, dir.path()).unwrap();
    let path = dir.path().join("keygate.db");
    let key = {
        let store = SqliteStore::create(&path).unwrap();
        let keys = KeyService::new(Arc::new(store), Hasher::unkeyed(), system_clock(), Actor::Cli);
        keys.create(spec(Environment::Production, &["*"])).unwrap().key
    };
    // Another process holds the store with an exclusive lock, which in WAL mode readers wait on
    // too.
    let holder = rusqlite::Connection::open(&path).unwrap();
    holder
        .execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE;")
        .unwrap();

    let options = keygate::gateway::Options {
        hasher: Hasher::unkeyed(),
        admin_token: Some(support::ADMIN_TOKEN.into()),
        admin_read_token: Some(support::READ_TOKEN.into()),
        clock: system_clock(),
    };
    let gateway = keygate::gateway::Gateway::start(config, options).await.unwrap();
    let client = Client::new();
    let readyz = format!("http://{}/readyz", gateway.admin_addr);
    let ready = client.get(&readyz).await;
    assert_eq!(ready.status, 503);
    let says_why = eventually(Duration::from_secs(20), || async {
        let ready = client.get(&readyz).await;
        let reason = ready.json()["reason"].as_str().unwrap_or("").to_owned();
        ready.status == 503 && reason.starts_with("store unavailable: ") && reason.contains("locked")
    })
    .await;
    assert!(says_why, "{}", client.get(&readyz).await.text());
    let status = format!("http://{}/v1/status", gateway.proxy_addr);
    let refused = client.get_with_key(&status, &key).await;
    assert_eq!(refused.status, 503, "nothing is admitted against an empty table");
    assert_eq!(
        refused.json(),
        serde_json::json!({ "error": "service unavailable" })
    );
    assert_eq!(refused.headers["retry-after"], "1");

    drop(holder);
    let ready = eventually(Duration::from_secs(20), || async {
        client.get(&readyz).await.status == 200
    })
    .await;
    assert!(ready, "{}", client.get(&readyz).await.text());
    assert_eq!(client.get_with_key(&status, &key).await.status, 200);
    gateway.shutdown().await;
}

/// A plain HTTP client for a gateway started outside the harness.
struct Client(
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
);

impl Client {
    fn new() -> Client {
        Client(hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http())
    }

    async fn get(&self, url: &str) -> support::Answer {
        self.send(Request::get(url)).await
    }

    async fn get_with_key(&self, url: &str, key: &str) -> support::Answer {
        self.send(Request::get(url).header("authorization", support::basic(key)))
            .await
    }

    async fn send(&self, request: http::request::Builder) -> support::Answer {
        let request = request.body(Full::new(Bytes::new())).unwrap();
        support::read(self.0.request(request).await.unwrap()).await
    }
}

async fn admin_post(h: &Harness, path: &str, body: Option<&str>) -> support::Answer {
    let mut request =
        Request::post(h.admin_url(path)).header("authorization", format!("Bearer {}", support::ADMIN_TOKEN));
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let body = Full::new(Bytes::from(body.unwrap_or("").to_owned()));
    h.send(request.body(body).unwrap()).await
}

#[tokio::test]
async fn a_gateway_starts_from_its_saved_table_while_the_store_is_locked() {
    let config = with_store("100ms", "snapshot = \"table.snap\"");
    let h = Harness::with_config(&config, "").await;
    let (id, key) = h.key(&["*"]).await;
    let snapshot = h.dir.path().join("table.snap");
    let saved = eventually(Duration::from_secs(10), || async {
        std::fs::read_to_string(&snapshot).is_ok_and(|text| text.contains(&id))
    })
    .await;
    assert!(saved, "the table is saved after the change");
    let text = std::fs::read_to_string(&snapshot).unwrap();
    assert!(!text.contains(&key), "hashes only, never a secret");

    // The gateway stops; another process holds the store, and a new gateway cannot read it: it
    // starts from the file.
    let support::Harness {
        gateway,
        keys,
        dir,
        upstream: _upstream,
        ..
    } = h;
    gateway.shutdown().await;
    drop(keys);
    let holder = rusqlite::Connection::open(dir.path().join("keygate.db")).unwrap();
    holder.busy_timeout(Duration::from_secs(10)).unwrap();
    holder
        .execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE;")
        .unwrap();
    let text = std::fs::read_to_string(dir.path().join("gateway.toml")).unwrap();
    let options = keygate::gateway::Options {
        hasher: Hasher::unkeyed(),
        admin_token: Some(support::ADMIN_TOKEN.into()),
        admin_read_token: Some(support::READ_TOKEN.into()),
        clock: system_clock(),
    };
    let replica =
        keygate::gateway::Gateway::start(keygate::config::parse(&text, dir.path()).unwrap(), options)
            .await
            .unwrap();
    support::loaded(&replica).await;
    let client = Client::new();
    let readyz = format!("http://{}/readyz", replica.admin_addr);
    let ready = client.get(&readyz).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["table_source"], "snapshot", "{}", ready.text());
    let status = format!("http://{}/v1/status", replica.proxy_addr);
    assert_eq!(client.get_with_key(&status, &key).await.status, 200);
    assert_eq!(
        client
            .get_with_key(&status, "kg_prod_not0a0key0at0all0000000000000000")
            .await
            .status,
        401
    );

    drop(holder);
    let from_store = eventually(Duration::from_secs(20), || async {
        client.get(&readyz).await.json()["table_source"] == "store"
    })
    .await;
    assert!(from_store, "the store replaces the saved table once it answers");
    assert_eq!(client.get_with_key(&status, &key).await.status, 200);
    replica.shutdown().await;
}

/// What a gateway restarted on its saved table needs kept alive.
pub(crate) struct Restarted {
    pub gateway: keygate::gateway::Gateway,
    /// Holds the store locked; drop it to let the store answer.
    holder: rusqlite::Connection,
    client: Client,
    /// The clock both gateways run on.
    clock: keygate::core::clock::ManualClock,
    _dir: tempfile::TempDir,
    _upstream: support::Upstream,
}

impl Restarted {
    pub async fn readyz(&self) -> support::Answer {
        self.client
            .get(&format!("http://{}/readyz", self.gateway.admin_addr))
            .await
    }

    pub async fn status(&self, key: &str) -> u16 {
        let url = format!("http://{}/v1/status", self.gateway.proxy_addr);
        self.client.get_with_key(&url, key).await.status.as_u16()
    }
}

/// Stops the harness's gateway, locks its store as another process would, and starts it again
/// on the same config and clock: it can only start from its saved table.
pub(crate) async fn restart_with_the_store_locked(h: Harness) -> Restarted {
    let support::Harness {
        gateway,
        keys,
        dir,
        upstream,
        clock,
        ..
    } = h;
    gateway.shutdown().await;
    drop(keys);
    let holder = rusqlite::Connection::open(dir.path().join("keygate.db")).unwrap();
    holder.busy_timeout(Duration::from_secs(10)).unwrap();
    holder
        .execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE;")
        .unwrap();
    let text = std::fs::read_to_string(dir.path().join("gateway.toml")).unwrap();
    let options = keygate::gateway::Options {
        hasher: Hasher::unkeyed(),
        admin_token: Some(support::ADMIN_TOKEN.into()),
        admin_read_token: Some(support::READ_TOKEN.into()),
        clock: Arc::new(clock.clone()),
    };
    let config = keygate::config::parse(&text, dir.path()).unwrap();
    let gateway = keygate::gateway::Gateway::start(config, options).await.unwrap();
    support::loaded(&gateway).await;
    Restarted {
        gateway,
        holder,
        client: Client::new(),
        clock,
        _dir: dir,
        _upstream: upstream,
    }
}

/// Waits until the snapshot file itself (not only its journal) holds `id`.
pub(crate) async fn written_whole_with(h: &Harness, id: &str) {
    let snapshot = h.dir.path().join("table.snap");
    let saved = eventually(Duration::from_secs(20), || async {
        std::fs::read_to_string(&snapshot).is_ok_and(|text| text.contains(id))
    })
    .await;
    assert!(saved, "the table is written whole within a few sync intervals");
}

#[tokio::test]
async fn a_revocation_in_force_before_a_stop_is_in_force_after_a_start_from_the_saved_table() {
    let h = Harness::with_config(&with_store("100ms", "snapshot = \"table.snap\""), "").await;
    let (id, key) = h.key(&["*"]).await;
    let (_, kept) = h.key(&["*"]).await;
    written_whole_with(&h, &id).await;

    // Revoked, in force, and the gateway stops at once: no periodic write in between.
    h.keys.revoke(&id).unwrap();
    h.sync().await;
    assert_eq!(h.get("/v1/status", &key).await.status, 401);
    let replica = restart_with_the_store_locked(h).await;

    let ready = replica.readyz().await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["table_source"], "snapshot", "{}", ready.text());
    assert_eq!(
        replica.status(&key).await,
        401,
        "the revocation was saved before it was enforced"
    );
    assert_eq!(replica.status(&kept).await, 200);

    drop(replica.holder);
    let from_store = eventually(Duration::from_secs(20), || async {
        let ready = replica
            .client
            .get(&format!("http://{}/readyz", replica.gateway.admin_addr))
            .await;
        ready.json()["table_source"] == "store"
    })
    .await;
    assert!(from_store);
    let url = format!("http://{}/v1/status", replica.gateway.proxy_addr);
    assert_eq!(replica.client.get_with_key(&url, &key).await.status, 401);
    replica.gateway.shutdown().await;
}

#[tokio::test]
async fn a_start_after_a_quiet_period_counts_the_saved_table_age_from_its_last_sync() {
    let config = with_store("100ms", "snapshot = \"table.snap\"\nmax_staleness = \"5m\"");
    let h = Harness::with_config(&config, "").await;
    let (id, key) = h.key(&["*"]).await;
    written_whole_with(&h, &id).await;

    // Ten quiet minutes: no change, but the store answers every sync.
    h.clock.advance(Duration::from_secs(600));
    h.sync().await;
    assert_eq!(h.admin_get("/readyz").await.status, 200);
    let replica = restart_with_the_store_locked(h).await;
    replica.clock.advance(Duration::from_secs(60));

    let ready = replica.readyz().await;
    assert_eq!(ready.status, 200, "synced a minute ago, not 11: {}", ready.text());
    let detail = ready.json();
    assert_eq!(detail["table_source"], "snapshot", "{detail}");
    assert_eq!(detail["last_sync_age_seconds"], 60.0, "{detail}");
    assert_eq!(replica.status(&key).await, 200);

    replica.gateway.shutdown().await;
    drop(replica.holder);
}

/// `keygate` run as `nobody` through `setpriv`: a gateway whose user is not the store's owner
/// (systemd's `DynamicUser`). `None` where `setpriv` is not installed.
fn as_nobody(args: &[&str]) -> Option<std::process::Command> {
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|path| Path::new(path).exists())?;
    let mut command = std::process::Command::new(setpriv);
    command
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_keygate"))
        .args(args)
        .env_remove("KEYGATE_CONFIG")
        .env("KEYGATE_ADMIN_TOKEN", "a-token-of-thirty-two-characters-xx")
        .stdin(std::process::Stdio::null());
    Some(command)
}

/// `GET /readyz` on `admin` over a plain socket: the status code and the body.
fn readyz(admin: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut socket = std::net::TcpStream::connect(admin).ok()?;
    socket
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    socket.read_to_string(&mut answer).ok()?;
    let status = answer.get(9..12)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

// Issue 20 item 2: a store made by root, a gateway run as another user.
#[test]
fn a_store_its_user_may_not_open_is_named_by_check_in_the_log_and_in_readyz() {
    if !running_as_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let store = dir.path().join("keys.db");
    drop(SqliteStore::create(&store).unwrap());
    let config = dir.path().join("gateway.toml");
    let text = STANDARD
        .edit("{upstream}", "127.0.0.1:9")
        .edit("sqlite://keygate.db", &format!("sqlite://{}", store.display()));
    std::fs::write(&config, text).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = config.to_str().unwrap();
    let named = |said: &str| {
        ["keygate runs as uid 65534", "owner uid 0", "mode 0600", "keys.db"]
            .iter()
            .all(|part| said.contains(part))
    };

    let Some(mut check) = as_nobody(&["check", "--config", config]) else {
        return;
    };
    let checked = check.output().unwrap();
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert_eq!(checked.status.code(), Some(1), "{stderr}");
    assert!(named(&stderr), "check names owner, mode and user: {stderr}");

    let mut serve = as_nobody(&["serve", "--config", config, "--log-format", "json"])
        .unwrap()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lines = Arc::new(std::sync::Mutex::new(Vec::<serde_json::Value>::new()));
    let stdout = serve.stdout.take().unwrap();
    let read = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            if let Ok(line) = serde_json::from_str(&line) {
                read.lock().unwrap().push(line);
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut seen = None;
    while std::time::Instant::now() < deadline && seen.is_none() {
        std::thread::sleep(Duration::from_millis(50));
        let admin = lines.lock().unwrap().iter().find_map(|line| {
            (line["message"] == "keygate serving").then(|| line["admin_addr"].as_str().unwrap().to_owned())
        });
        let logged = lines.lock().unwrap().iter().any(|line| {
            line["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("cannot load the key table"))
                && line["error"].as_str().is_some_and(named)
        });
        seen = admin
            .and_then(|admin| readyz(&admin))
            .filter(|(status, body)| logged && *status == 503 && named(body));
    }
    serve.kill().unwrap();
    serve.wait().unwrap();
    assert!(
        seen.is_some(),
        "the log and /readyz name owner, mode and user: {:?}",
        lines.lock().unwrap()
    );
}

/// Whether the tests run as root (the only user that can make a store another user cannot
/// open, and switch to that user).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(1) == Some("0"))
    })
}

#[test]
fn check_warns_of_a_store_file_that_is_not_a_keygate_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("keys.db");
    let config = dir.path().join("gateway.toml");
    let text = STANDARD
        .edit("{upstream}", "127.0.0.1:9")
        .edit("sqlite://keygate.db", &format!("sqlite://{}", store.display()));
    std::fs::write(&config, text).unwrap();
    let foreign = rusqlite::Connection::open(dir.path().join("foreign.db")).unwrap();
    foreign.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
    drop(foreign);
    for (case, make, says) in [
        ("empty", None, "an empty file (0 bytes)"),
        ("foreign", Some("foreign.db"), "without keygate's tables"),
    ] {
        match make {
            None => std::fs::write(&store, b"").unwrap(),
            Some(source) => {
                std::fs::copy(dir.path().join(source), &store).unwrap();
            }
        }
        let before = std::fs::read(&store).unwrap();
        let checked = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(["check", "--config", config.to_str().unwrap()])
            .env_remove("KEYGATE_CONFIG")
            .env("KEYGATE_ADMIN_TOKEN", "a-token-of-thirty-two-characters-xx")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&checked.stderr);
        assert_eq!(
            checked.status.code(),
            Some(0),
            "{case}: a warning, not an error: {stderr}"
        );
        assert!(
            stderr.contains("is not a keygate store") && stderr.contains(says),
            "{case}: {stderr}"
        );
        assert!(
            stderr.contains("serve refuses to start on it"),
            "{case}: {stderr}"
        );
        assert_eq!(
            std::fs::read(&store).unwrap(),
            before,
            "{case}: check writes nothing"
        );
    }
}
