//! The servers some tests need, PostgreSQL and Redis: the URL from `KEYGATE_TEST_POSTGRES_URL` /
//! `KEYGATE_TEST_REDIS_URL` when it is set; otherwise a throwaway server of this test process,
//! started once from the installed binaries on a free port in a temporary folder and ended with
//! the process (a shell beside it waits for the process's end on a pipe, then stops the server
//! and removes the folder). Without a URL and without the binaries a test skips and says so on
//! stderr; with `CI` set it fails instead, so CI never passes a test that did not run.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The PostgreSQL of the tests that need one (a database where the test may create schemas).
pub fn postgres_url() -> Option<String> {
    static SERVER: OnceLock<Result<String, String>> = OnceLock::new();
    service("KEYGATE_TEST_POSTGRES_URL", &SERVER, start_postgres)
}

/// The Redis of the tests that need one.
pub fn redis_url() -> Option<String> {
    static SERVER: OnceLock<Result<String, String>> = OnceLock::new();
    service("KEYGATE_TEST_REDIS_URL", &SERVER, start_redis)
}

fn service(
    variable: &str,
    server: &'static OnceLock<Result<String, String>>,
    start: fn() -> Result<String, String>,
) -> Option<String> {
    if let Some(url) = std::env::var(variable).ok().filter(|url| !url.is_empty()) {
        return Some(url);
    }
    match server.get_or_init(start) {
        Ok(url) => Some(url.clone()),
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("{variable} is not set and no throwaway server could be started: {why}")
        }
        Err(why) => {
            eprintln!("skipped: {variable} is not set and no throwaway server could be started: {why}");
            None
        }
    }
}

/// The write ends of the pipes the servers' shells wait on: never closed before the process ends.
static KEEPERS: Mutex<Vec<ChildStdin>> = Mutex::new(Vec::new());

fn start_postgres() -> Result<String, String> {
    let bin = postgres_bin().ok_or("no PostgreSQL server binaries (initdb, postgres) were found")?;
    let dir = folder()?;
    let data = dir.join("data");
    // PostgreSQL refuses to run as root: then it runs as the `postgres` user.
    let as_user: Vec<String> = if is_root() {
        run(Command::new("chown").args(["-R", "postgres:"]).arg(&dir))?;
        ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
            .map(String::from)
            .to_vec()
    } else {
        Vec::new()
    };
    let mut initdb = as_command(&as_user, &bin.join("initdb"));
    initdb
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]);
    run(&mut initdb)?;
    let port = free_port()?;
    let mut postgres = as_user.clone();
    postgres.push(bin.join("postgres").display().to_string());
    postgres.extend(
        [
            "-D",
            &data.display().to_string(),
            "-p",
            &port.to_string(),
            "-k",
            &dir.display().to_string(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=300",
        ]
        .map(String::from),
    );
    keep_running(&postgres, &dir, "-INT")?;
    let ready = || {
        Command::new(bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .status()
            .is_ok_and(|status| status.success())
    };
    wait_for(ready, "PostgreSQL", &dir)?;
    Ok(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
}

fn start_redis() -> Result<String, String> {
    let server = on_path("redis-server").ok_or("no redis-server binary was found")?;
    let dir = folder()?;
    let port = free_port()?;
    let command = [
        server.display().to_string(),
        "--port".into(),
        port.to_string(),
        "--bind".into(),
        "127.0.0.1".into(),
        "--save".into(),
        String::new(),
        "--appendonly".into(),
        "no".into(),
        "--dir".into(),
        dir.display().to_string(),
        "--loglevel".into(),
        "warning".into(),
    ];
    keep_running(&command, &dir, "-TERM")?;
    let ready = || {
        use std::io::{Read, Write};
        let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
            return false;
        };
        let mut answer = [0u8; 7];
        stream.set_read_timeout(Some(Duration::from_secs(1))).ok();
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG\r\n"
    };
    wait_for(ready, "Redis", &dir)?;
    Ok(format!("redis://127.0.0.1:{port}"))
}

/// Starts `command` under a shell that stops it (with `signal`) and removes `dir` once this
/// process ends and the pipe on its standard input closes.
fn keep_running(command: &[String], dir: &Path, signal: &str) -> Result<(), String> {
    const SCRIPT: &str = r#"dir=$1; signal=$2; shift 2
"$@" >"$dir/server.log" 2>&1 &
server=$!
read -r _ || true
kill "$signal" "$server" 2>/dev/null
wait "$server"
rm -rf "$dir""#;
    let mut shell = Command::new("sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("sh")
        .arg(dir)
        .arg(signal)
        .args(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("sh: {e}"))?;
    let stdin = shell.stdin.take().ok_or("sh: no standard input")?;
    KEEPERS.lock().unwrap_or_else(|e| e.into_inner()).push(stdin);
    Ok(())
}

fn wait_for(ready: impl Fn() -> bool, what: &str, dir: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    Err(format!("{what} did not answer within 60 s: {log}"))
}

fn postgres_bin() -> Option<PathBuf> {
    if let Some(initdb) = on_path("initdb") {
        let real = std::fs::canonicalize(&initdb).unwrap_or(initdb);
        return real.parent().map(Path::to_path_buf);
    }
    // Debian keeps them out of PATH, one folder per major version: the newest.
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort_by_key(|bin| {
        let version = bin.parent().and_then(Path::file_name);
        version.and_then(|v| v.to_str()?.parse::<u32>().ok()).unwrap_or(0)
    });
    versions.pop()
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

fn as_command(as_user: &[String], program: &Path) -> Command {
    match as_user.split_first() {
        Some((first, rest)) => {
            let mut command = Command::new(first);
            command.args(rest).arg(program);
            command
        }
        None => Command::new(program),
    }
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    ))
}

/// A temporary folder that outlives this function: the server's shell removes it.
fn folder() -> Result<PathBuf, String> {
    let dir = tempfile::Builder::new()
        .prefix("keygate-test-server-")
        .tempdir()
        .map_err(|e| format!("temporary folder: {e}"))?;
    Ok(dir.keep())
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("free port: {e}"))
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}
