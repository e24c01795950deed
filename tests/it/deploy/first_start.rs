//! The first start on a fresh volume, simulated: the commands the Kubernetes pod and the
//! systemd unit run (each initContainer's, then the container's; each `ExecStartPre=`, then
//! `ExecStart=`), taken from the manifest as kustomize renders it and from the unit file, run
//! in order with the image's binary replaced by the binary under test and each volume or
//! directory the platform provides replaced by a folder of a fresh temp dir. A start stops at
//! the first command that fails, as the kubelet (init containers) and systemd
//! (`ExecStartPre=`) do; the serving command runs until `/readyz` answers 200, then gets
//! SIGTERM and must exit 0.
//!
//! What the simulation changes in the config, and why: both listeners on 127.0.0.1 port 0
//! (tests bind no fixed port and send only to the loopback), and the store's path to where its
//! volume is here (for the PostgreSQL variant: the store and Redis URLs to the test's, in a
//! schema of its own). Secrets the platform would inject get stand-in values.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::time::Instant;

use super::kubernetes::Kubernetes;
use super::*;

/// The binary's path in the image and in the unit.
const INSTALLED: &str = "/usr/local/bin/keygate";

/// What a failed restore or copy may leave where the store should be.
const NOT_A_STORE: &[u8] = b"half of a file that a restore did not finish\n";

const DEADLINE: Duration = Duration::from_secs(60);

/// Paths of the platform's filesystem, each with the temp folder that stands for it.
struct Mounts(Vec<(PathBuf, PathBuf)>);

impl Mounts {
    /// The temp path standing for `path`: under the deepest mount that holds it.
    fn host(&self, path: &Path) -> PathBuf {
        let mount = self
            .0
            .iter()
            .filter(|(at, _)| path.starts_with(at))
            .max_by_key(|(at, _)| at.components().count());
        let (at, host) = mount.unwrap_or_else(|| {
            panic!(
                "{} is on no volume: the read-only root filesystem",
                path.display()
            )
        });
        host.join(path.strip_prefix(at).unwrap())
    }

    /// A command-line argument, with a path on a mount turned into its temp path.
    fn arg(&self, arg: &str) -> String {
        if arg == INSTALLED {
            return env!("CARGO_BIN_EXE_keygate").to_owned();
        }
        let path = Path::new(arg);
        let mounted = self.0.iter().any(|(at, _)| path.starts_with(at));
        if path.is_absolute() && mounted {
            return self.host(path).to_string_lossy().into_owned();
        }
        arg.to_owned()
    }
}

/// One command of a start.
#[derive(Debug)]
struct Step {
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    /// Whether a failure stops the start (systemd's `-` prefix says it does not).
    must_succeed: bool,
}

impl Step {
    fn command(&self) -> Command {
        let mut command = Command::new(&self.argv[0]);
        command.args(&self.argv[1..]).env_clear().envs(&self.env);
        command
    }
}

/// A start: the commands before the gateway, the gateway's, and where its files are.
struct Start {
    before: Vec<Step>,
    serve: Step,
    /// The config the steps read (at its temp path).
    config: PathBuf,
    /// The SQLite store the config names (at its temp path); `None` on PostgreSQL.
    store: Option<PathBuf>,
    /// Where the serving command's stdout goes.
    log: PathBuf,
}

#[derive(Debug, PartialEq)]
enum Outcome {
    /// Every step before the gateway succeeded; the gateway answered `/readyz` 200 and exited
    /// 0 on SIGTERM.
    Served,
    /// A step before the gateway failed with this exit code; the gateway never ran.
    Refused { argv: Vec<String>, code: Option<i32> },
}

impl Start {
    fn run(&self) -> Outcome {
        if let Err(refused) = self.run_before() {
            return refused;
        }
        self.serve_until_ready_then_stop();
        Outcome::Served
    }

    /// The steps before the gateway's, up to the first that fails.
    fn run_before(&self) -> Result<(), Outcome> {
        for step in &self.before {
            let output = finish(step.command().stdin(Stdio::null()));
            println!("$ {}\n{output}", step.argv.join(" "));
            if step.must_succeed && output.code != Some(0) {
                return Err(Outcome::Refused {
                    argv: step.argv.clone(),
                    code: output.code,
                });
            }
        }
        Ok(())
    }

    fn sqlite(&self) -> &Path {
        self.store.as_deref().expect("a SQLite store")
    }

    fn serve_until_ready_then_stop(&self) {
        println!("$ {}", self.serve.argv.join(" "));
        let log = std::fs::File::create(&self.log).unwrap();
        let child = self
            .serve
            .command()
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut serving = Serving(child);
        let admin = self.admin_address(&mut serving);
        let ready = poll(|| (readyz(admin) == Some(200)).then_some(()));
        assert!(ready.is_some(), "/readyz never 200:\n{}", self.log_text());
        let pid = serving.0.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let status = poll(|| serving.0.try_wait().unwrap());
        let status = status.unwrap_or_else(|| panic!("no exit after SIGTERM:\n{}", self.log_text()));
        assert!(status.success(), "{status} after SIGTERM:\n{}", self.log_text());
    }

    /// The admin listener's address, from the gateway's `keygate serving` log line.
    fn admin_address(&self, serving: &mut Serving) -> SocketAddr {
        let found = poll(|| {
            if let Some(status) = serving.0.try_wait().unwrap() {
                panic!("serve exited with {status}:\n{}", self.log_text());
            }
            let text = self.log_text();
            let line = text.lines().find(|line| line.contains("keygate serving"))?;
            let line: Value = serde_json::from_str(line).expect("a JSON log line");
            line["admin_addr"].as_str()?.parse().ok()
        });
        found.unwrap_or_else(|| panic!("never serving:\n{}", self.log_text()))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A keygate CLI command on this start's store, run as the gateway is (same environment).
    fn cli(&self, args: &[&str]) -> Value {
        let config = self.config.to_string_lossy();
        let mut argv = vec![env!("CARGO_BIN_EXE_keygate"), "keys", "--config", &config];
        argv.extend(args);
        let step = Step {
            argv: argv.into_iter().map(str::to_owned).collect(),
            env: self.serve.env.clone(),
            must_succeed: true,
        };
        let output = step.command().output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{args:?}: {stderr}");
        serde_json::from_slice(&output.stdout).unwrap()
    }
}

/// The gateway process, killed if the test ends before it exits.
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A finished command: its exit code and what it said.
struct Finished {
    code: Option<i32>,
    said: String,
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}exit {:?}", self.said, self.code)
    }
}

/// Runs a short command, for up to [`DEADLINE`] (what it says is small enough for the pipes).
fn finish(command: &mut Command) -> Finished {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Serving(child);
    let status = poll(|| child.0.try_wait().unwrap()).expect("the command did not finish");
    let mut said = String::new();
    if let Some(mut stdout) = child.0.stdout.take() {
        stdout.read_to_string(&mut said).unwrap();
    }
    if let Some(mut stderr) = child.0.stderr.take() {
        stderr.read_to_string(&mut said).unwrap();
    }
    Finished {
        code: status.code(),
        said,
    }
}

/// Asks `check` until it answers, for up to [`DEADLINE`].
fn poll<T>(mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let started = Instant::now();
    while started.elapsed() < DEADLINE {
        if let Some(found) = check() {
            return Some(found);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// `GET /readyz`'s status, or `None` when the listener does not answer.
fn readyz(admin: SocketAddr) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer.split(' ').nth(1)?.parse().ok()
}

/// Where a simulated start keeps its store.
enum Stores<'a> {
    /// Where the config says: a SQLite file on a volume.
    AsConfigured,
    /// The test's PostgreSQL (a schema of its own) and Redis, in place of the config's.
    Test { postgres: &'a str, redis: &'a str },
}

/// `text` as the simulation runs it: listeners on the loopback, port 0, and the SQLite store
/// (an absolute path, on a volume) at the temp path `mounts` gives it, or the test's stores.
/// Returns the SQLite store's path on the platform too.
fn localized(text: &str, mounts: &Mounts, stores: &Stores) -> (String, Option<PathBuf>) {
    let mut config: toml::Table = text.parse().expect("TOML");
    for section in ["server", "admin"] {
        let section = config[section].as_table_mut().expect("a table");
        section.insert("listen".into(), "127.0.0.1:0".into());
    }
    if let Stores::Test { postgres, redis } = stores {
        let store = config["store"].as_table_mut().expect("[store]");
        assert!(store["url"].as_str().unwrap().starts_with("postgres://"));
        store.insert("url".into(), (*postgres).into());
        let limits = config["rate_limit"].as_table_mut().expect("[rate_limit]");
        limits.insert("redis_url".into(), (*redis).into());
        return (toml::to_string(&config).unwrap(), None);
    }
    let store = config["store"].as_table_mut().expect("[store]");
    let url = store["url"].as_str().expect("store.url");
    let path = url.strip_prefix("sqlite://").expect("a SQLite store");
    let path = PathBuf::from(path);
    assert!(
        path.is_absolute(),
        "{url}: relative to the config's folder, a read-only mount"
    );
    let here = mounts.host(&path);
    store.insert("url".into(), format!("sqlite://{}", here.display()).into());
    (toml::to_string(&config).unwrap(), Some(path))
}

/// Stand-ins for the secrets the platform injects: the admin token and the pepper the config
/// names.
fn secrets(config_text: &str) -> BTreeMap<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let config = keygate::config::parse(config_text, dir.path()).unwrap();
    let names = [Some(config.admin.token_env), config.store.pepper_env];
    names
        .into_iter()
        .flatten()
        .map(|name| (name, "a-stand-in-secret-0123456789abcdef".to_owned()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

/// The image's `ENTRYPOINT`, from the Containerfile.
fn entrypoint() -> Vec<String> {
    let containerfile = read("deploy/container/Containerfile");
    let line = containerfile
        .lines()
        .find_map(|line| line.strip_prefix("ENTRYPOINT "))
        .expect("an ENTRYPOINT");
    serde_json::from_str(line).expect("ENTRYPOINT in exec form")
}

/// The pod's start in `root`: each volume a folder `volumes/NAME` (a ConfigMap's or Secret's
/// holding its files, the config localized), each container's mounts pointing there.
fn kubernetes_start(k8s: &Kubernetes, root: &Path, stores: &Stores) -> Start {
    let pod = k8s.pod();
    let volumes = pod["volumes"].as_array().expect("volumes");
    for volume in volumes {
        std::fs::create_dir_all(root.join("volumes").join(volume["name"].as_str().unwrap())).unwrap();
    }
    let mounts = |container: &Value| {
        let mounts = container["volumeMounts"].as_array().expect("volumeMounts");
        let mounts = mounts.iter().map(|mount| {
            let at = PathBuf::from(mount["mountPath"].as_str().unwrap());
            (at, root.join("volumes").join(mount["name"].as_str().unwrap()))
        });
        Mounts(mounts.collect())
    };
    let serving = k8s.container();
    let (config_text, store_path) = localized(&k8s.config_text, &mounts(serving), stores);
    let store = store_path.as_ref().map(|path| mounts(serving).host(path));
    let secrets = secrets(&k8s.config_text);
    let step = |container: &Value| {
        let mounts = mounts(container);
        let name = &container["name"];
        // A container that opens the store must see it where the gateway does.
        let sees = store_path.as_ref().map(|path| mounts.host(path));
        assert_eq!(sees, store, "{name}: the store's volume");
        let command = match container["command"].as_array() {
            Some(command) => command.iter().map(|a| a.as_str().unwrap().to_owned()).collect(),
            None => entrypoint(),
        };
        let args = container["args"].as_array().into_iter().flatten();
        let argv = command
            .iter()
            .map(String::as_str)
            .chain(args.map(|a| a.as_str().unwrap()))
            .map(|arg| mounts.arg(arg))
            .collect();
        let env = container["env"].as_array().into_iter().flatten().map(|var| {
            let name = var["name"].as_str().unwrap().to_owned();
            // The downward API's pod IP (admin.advertise_env): here, loopback.
            let pod_ip = var["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP";
            let value = match var["value"].as_str() {
                Some(value) => value.to_owned(),
                None if pod_ip => "127.0.0.1".to_owned(),
                None => secrets
                    .get(&name)
                    .cloned()
                    .unwrap_or_else(|| panic!("{name}: no stand-in")),
            };
            (name, value)
        });
        Step {
            argv,
            env: env.collect(),
            must_succeed: true,
        }
    };
    let before: Vec<Step> = pod["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(step)
        .collect();
    let serve = step(serving);
    let config = PathBuf::from(config_argument(&serve));
    assert!(
        config.starts_with(root),
        "--config {} is on a volume",
        config.display()
    );
    std::fs::write(&config, &config_text).unwrap();
    Start {
        before,
        serve,
        config,
        store,
        log: root.join("serve.log"),
    }
}

/// The value of a step's `--config`.
fn config_argument(step: &Step) -> &str {
    let at = step.argv.iter().position(|arg| arg == "--config");
    let value = at.and_then(|at| step.argv.get(at + 1));
    value.unwrap_or_else(|| panic!("no --config in {:?}", step.argv))
}

// ---------------------------------------------------------------------------------------------
// systemd

/// The unit's start in `root`: `StateDirectory=` (created empty, as systemd does) and
/// `ConfigurationDirectory=` as folders there, the config in the latter. The unit ships no
/// config of its own: it runs the Kubernetes one, which keeps its store in /var/lib/keygate too.
fn systemd_start(root: &Path) -> Start {
    let unit = read("deploy/systemd/keygate.service");
    let settings: Vec<(&str, &str)> = unit
        .lines()
        .skip_while(|line| *line != "[Service]")
        .take_while(|line| !line.starts_with("[Install]"))
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .collect();
    let all = |key: &'static str| settings.iter().filter(move |(k, _)| *k == key).map(|(_, v)| *v);
    let one = |key: &'static str| all(key).next().unwrap_or_else(|| panic!("no {key}="));
    let state = root.join("state");
    let etc = root.join("etc");
    for folder in [&state, &etc] {
        std::fs::create_dir_all(folder).unwrap();
    }
    let mounts = Mounts(vec![
        (Path::new("/var/lib").join(one("StateDirectory")), state),
        (Path::new("/etc").join(one("ConfigurationDirectory")), etc),
    ]);
    let kubernetes_config = read("deploy/kubernetes/gateway.toml");
    let (config_text, store_path) = localized(&kubernetes_config, &mounts, &Stores::AsConfigured);
    let mut env = secrets(&kubernetes_config);
    for assignment in all("Environment") {
        let (name, value) = assignment.split_once('=').expect("NAME=value");
        env.insert(name.into(), value.into());
    }
    let step = |line: &str| {
        // systemd's prefixes: `-` ignores a failure; the others (`@`, `:`, `+`, `!`) change
        // nothing here.
        let must_succeed = !line.trim_start_matches(['@', ':', '+', '!']).starts_with('-');
        let line = line.trim_start_matches(['-', '@', ':', '+', '!']);
        Step {
            argv: line.split_whitespace().map(|arg| mounts.arg(arg)).collect(),
            env: env.clone(),
            must_succeed,
        }
    };
    let before: Vec<Step> = all("ExecStartPre").map(step).collect();
    let serve = step(one("ExecStart"));
    let config = PathBuf::from(config_argument(&serve));
    std::fs::write(&config, config_text).unwrap();
    Start {
        before,
        serve,
        config,
        store: store_path.map(|path| mounts.host(&path)),
        log: root.join("serve.log"),
    }
}

// ---------------------------------------------------------------------------------------------
// The stories

/// A fresh volume, then the same start again on the store it made (holding a key by then),
/// then a fresh volume holding a file that is not a keygate store.
fn first_start_again_and_on_a_foreign_file(start_in: impl Fn(&Path) -> Start) {
    let dir = tempfile::tempdir().unwrap();
    let start = start_in(dir.path());
    assert!(!start.sqlite().exists(), "a fresh volume");
    assert_eq!(start.run(), Outcome::Served, "the first start on a fresh volume");
    assert!(start.sqlite().is_file(), "the first start made the store");

    let created = start.cli(&["create", "--name", "kept", "--env", "production", "--json"]);
    assert_eq!(
        start.run(),
        Outcome::Served,
        "the next start, on the existing store"
    );
    let listed = start.cli(&["list", "--json"]);
    let ids: Vec<&Value> = listed.as_array().unwrap().iter().map(|key| &key["id"]).collect();
    assert_eq!(ids, [&created["id"]], "the existing store kept as it was");

    let dir = tempfile::tempdir().unwrap();
    let start = start_in(dir.path());
    std::fs::write(start.sqlite(), NOT_A_STORE).unwrap();
    match start.run() {
        Outcome::Refused { argv, code } => {
            assert!(
                argv.windows(2).any(|w| w == ["store", "init"]),
                "refused by {argv:?}"
            );
            assert_eq!(code, Some(1), "{argv:?}");
        }
        Outcome::Served => panic!("served a store made over a file that was not one"),
    }
    assert_eq!(
        std::fs::read(start.sqlite()).unwrap(),
        NOT_A_STORE,
        "left untouched"
    );
}

#[test]
fn kubernetes_first_start_makes_the_store_keeps_it_after_and_refuses_a_foreign_file() {
    let k8s = Kubernetes::load();
    first_start_again_and_on_a_foreign_file(|root| kubernetes_start(&k8s, root, &Stores::AsConfigured));
}

/// Two replicas of the PostgreSQL variant on an empty schema: both pods' init containers at
/// once (the migrations' advisory lock lets each apply once), then each pod's whole start,
/// init again included (idempotent), serving.
#[test]
fn kubernetes_postgres_first_start_of_two_replicas_at_once_then_each_again() {
    let Some(k8s) = Kubernetes::postgres() else {
        return;
    };
    let (Some(postgres), Some(redis)) = (support::postgres::postgres_url(), support::redis_url()) else {
        eprintln!("skipped: no PostgreSQL or Redis for tests (see tests/it/support/services.rs)");
        return;
    };
    let schema = support::postgres::FreshSchema::new(&postgres);
    let stores = Stores::Test {
        postgres: &schema.url,
        redis: &redis,
    };
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let replicas: Vec<Start> = dirs
        .iter()
        .map(|dir| kubernetes_start(&k8s, dir.path(), &stores))
        .collect();
    let inits: Vec<Result<(), Outcome>> = std::thread::scope(|scope| {
        let running: Vec<_> = replicas
            .iter()
            .map(|replica| scope.spawn(|| replica.run_before()))
            .collect();
        running.into_iter().map(|init| init.join().unwrap()).collect()
    });
    assert_eq!(
        inits,
        [Ok(()), Ok(())],
        "both init containers, at once, on an empty schema"
    );
    for replica in &replicas {
        assert_eq!(replica.run(), Outcome::Served);
    }
    assert_eq!(replicas[1].cli(&["list", "--json"]), serde_json::json!([]));
}

#[test]
fn systemd_first_start_makes_the_store_keeps_it_after_and_refuses_a_foreign_file() {
    first_start_again_and_on_a_foreign_file(systemd_start);
}
