//! The command line: `serve`, `check`, `keys ...`, `customers ...`, `store ...`, `probe`, `scan`. Parses arguments, calls into the library,
//! maps outcomes to exit codes: 0 success, 1 runtime error, 2 usage error.

/// `println!` for commands: a line on stdout, or `Err(Failure::Closed)` from the enclosing
/// function when the reader has gone (`keygate keys list | head -1`), where `println!` panics.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_line(format_args!($($arg)*))?
    };
}

mod check;
mod customers;
mod dev;
mod import;
mod keys;
mod leaks;
mod output;
mod probe;
mod scan;
mod serve;
mod store;
mod store_copy;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, Config, ConfigError};
use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(name = "keygate", version, about = "API-key authentication gateway")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    ///
    /// The store the config names must exist: a missing store file is an error, not an empty
    /// store (a volume that did not mount must not look like a store without keys). Create it
    /// once with `keygate store init --config FILE` (or by adding the first key with `keygate
    /// keys create` or `keys import`).
    Serve {
        /// The gateway.toml to run with (or --dev to try keygate without one).
        #[arg(long, short, env = "KEYGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Run with no config: a temporary store, a built-in echo upstream and a demo key.
        #[arg(long, conflicts_with = "config")]
        dev: bool,
        /// With --dev: the gateway's address, e.g. 127.0.0.1:8000 (default 127.0.0.1:8080, or
        /// any free port when that is taken).
        #[arg(long, value_name = "ADDR", requires = "dev")]
        listen: Option<SocketAddr>,
        /// With --dev: the admin API's address (default 127.0.0.1:9901, or any free port when
        /// that is taken).
        #[arg(long, value_name = "ADDR", requires = "dev")]
        admin_listen: Option<SocketAddr>,
        /// Log format on stdout.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Validate a config file, naming the line of each mistake, and what serve would refuse
    /// at start on this machine.
    Check(check::CheckArgs),
    /// Manage API keys in the store the config names (running gateway or not).
    Keys(Box<keys::KeysArgs>),
    /// Manage customers (their shared rate limit, quota and metadata) in the store the config
    /// names (running gateway or not).
    Customers(customers::CustomersArgs),
    /// Manage the store itself.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Exit 0 when the gateway of this config answers ready (`/readyz` 200), 1 otherwise: a
    /// health check for an image without a shell.
    Probe {
        /// The gateway.toml of the gateway to ask (its `admin.listen`).
        #[arg(long, short, env = "KEYGATE_CONFIG")]
        config: PathBuf,
        /// How long to wait for the answer.
        #[arg(long, default_value = "2s", value_parser = parse_timeout)]
        timeout: std::time::Duration,
    },
    /// Find keygate keys in files (by format and checksum) and say which are keys of the
    /// config's store; with --report, report those as leaked. Keys are printed by prefix only.
    Scan(scan::ScanArgs),
}

fn parse_timeout(text: &str) -> Result<std::time::Duration, String> {
    crate::core::units::parse_duration(text).map_err(|e| e.to_string())
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Create the store the config names, empty, readable by its owner only (0600); on an
    /// existing store, bring its schema up to date; an existing empty file becomes an empty
    /// store. Safe to run again.
    Init {
        /// The gateway.toml whose store to create.
        #[arg(long, short, env = "KEYGATE_CONFIG")]
        config: PathBuf,
        /// Only create a missing store: leave an existing keygate store as it is, and refuse
        /// (exit 1, file untouched) a file that is not one, an empty file included. Safe to
        /// run at every start.
        #[arg(long)]
        if_missing: bool,
    },
    /// Copy the config's store (keys with their ids, hashes and grace state, usage, audit
    /// trail, idle warnings, pending webhooks, revision) into another store, e.g. SQLite to
    /// PostgreSQL: every key then works against the target unchanged. Verified after.
    Copy(store_copy::CopyArgs),
    /// Write the config's store as JSON Lines on stdout: a backup (hashes, never secrets).
    Export(store_copy::ExportArgs),
    /// Read a dump that `store export` wrote into the config's store.
    Import(store_copy::ImportArgs),
}

/// What went wrong, and so which exit code.
#[derive(Debug)]
enum Failure {
    /// Bad arguments or input: exit 2.
    Usage(String),
    /// Anything else: exit 1.
    Runtime(String),
    /// A usage or runtime error with more to say: see [`Detailed`].
    Detailed(Box<Detailed>),
    /// A failure already reported on stdout (as a JSON document): exit 1, nothing on stderr.
    Reported,
    /// Stdout was closed by its reader: exit 141 quietly, as a process killed by SIGPIPE would
    /// (the status a shell shows for `| head`).
    Closed,
}

/// A failure with more than a line to say.
#[derive(Debug)]
struct Detailed {
    /// A usage error (exit 2) or a runtime one (exit 1).
    pub usage: bool,
    /// The one line that sums it up: on stderr last, and the JSON document's `error`.
    pub message: String,
    /// Lines on stderr before the message, one each, e.g. every bad line of a file.
    pub notes: Vec<String>,
    /// Fields beside `error` in the JSON document, e.g. `field`.
    pub detail: serde_json::Map<String, serde_json::Value>,
}

impl Failure {
    /// The same failure with its message rewritten.
    pub fn map(self, rewrite: impl FnOnce(String) -> String) -> Self {
        match self {
            Failure::Usage(why) => Failure::Usage(rewrite(why)),
            Failure::Runtime(why) => Failure::Runtime(rewrite(why)),
            Failure::Detailed(mut detailed) => {
                detailed.message = rewrite(std::mem::take(&mut detailed.message));
                Failure::Detailed(detailed)
            }
            Failure::Reported => Failure::Reported,
            Failure::Closed => Failure::Closed,
        }
    }

    /// The JSON error document of SPEC 4 (`{"error": "...", ...}`), for a failure not reported
    /// already.
    fn json_document(&self) -> Option<serde_json::Value> {
        let (message, detail) = match self {
            Failure::Usage(message) | Failure::Runtime(message) => (message, None),
            Failure::Detailed(detailed) => (&detailed.message, Some(&detailed.detail)),
            Failure::Reported | Failure::Closed => return None,
        };
        let mut document = serde_json::Map::new();
        document.insert("error".into(), message.as_str().into());
        document.extend(detail.into_iter().flatten().map(|(k, v)| (k.clone(), v.clone())));
        Some(document.into())
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure::Runtime(format!("{error:#}"))
    }
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => refuse_arguments(error),
    };
    // `check --json` prints its own document, failed or not.
    let json = match &cli.command {
        Command::Keys(args) => args.json(),
        Command::Customers(args) => args.json(),
        Command::Scan(args) => args.json(),
        Command::Serve { .. } | Command::Check(_) | Command::Store(_) | Command::Probe { .. } => false,
    };
    let result = match cli.command {
        Command::Serve {
            config,
            dev,
            listen,
            admin_listen,
            log_format,
        } => serve_command(
            config,
            dev.then_some(dev::Addresses { listen, admin_listen }),
            log_format,
        ),
        Command::Check(args) => check::run(args),
        Command::Keys(args) => keys::run(*args),
        Command::Customers(args) => customers::run(args),
        Command::Store(StoreCommand::Init { config, if_missing }) => store::init(&config, if_missing),
        Command::Store(StoreCommand::Copy(args)) => store_copy::copy(args),
        Command::Store(StoreCommand::Export(args)) => store_copy::export_command(args),
        Command::Store(StoreCommand::Import(args)) => store_copy::import_command(args),
        Command::Probe { config, timeout } => probe::run(&config, timeout),
        Command::Scan(args) => scan::run(args),
    };
    if let Some(document) = result
        .as_ref()
        .err()
        .filter(|_| json)
        .and_then(Failure::json_document)
    {
        // Stdout may be gone; the line on stderr and the status still tell.
        let _ = write_line(format_args!("{document:#}"));
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("keygate: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(message)) => {
            eprintln!("keygate: {message}");
            ExitCode::from(1)
        }
        Err(Failure::Detailed(detailed)) => {
            for note in &detailed.notes {
                eprintln!("keygate: {note}");
            }
            eprintln!("keygate: {}", detailed.message);
            ExitCode::from(if detailed.usage { 2 } else { 1 })
        }
        Err(Failure::Reported) => ExitCode::from(1),
        Err(Failure::Closed) => ExitCode::from(141),
    }
}

/// Arguments clap refuses: its message on stderr and exit 2 as always, and with `--json` the
/// error document on stdout too, since a script asked for one. Help and version are no error.
fn refuse_arguments(error: clap::Error) -> ! {
    use clap::error::ErrorKind;
    let asked_json = std::env::args()
        .take_while(|arg| arg != "--")
        .any(|arg| arg == "--json");
    let is_error = !matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if asked_json && is_error {
        let text = error.render().to_string();
        let first = text.lines().next().unwrap_or("invalid arguments");
        let message = first.strip_prefix("error: ").unwrap_or(first);
        let _ = write_line(format_args!("{:#}", serde_json::json!({ "error": message })));
    }
    error.exit()
}

/// One line on stdout; see [`out!`].
fn write_line(line: std::fmt::Arguments<'_>) -> Result<(), Failure> {
    use std::io::Write;
    match writeln!(std::io::stdout().lock(), "{line}") {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Err(Failure::Closed),
        Err(error) => Err(Failure::Runtime(format!("cannot write to stdout: {error}"))),
    }
}

/// The config file of a command, validated: every command reads its file this way (`serve`
/// checks more, see `serve::load_to_serve`).
fn load(path: &Path) -> Result<Config, Failure> {
    config::load(path).map_err(|error| not_valid(path, &error))
}

/// A config file refused, with every problem in it.
fn not_valid(path: &Path, error: &ConfigError) -> Failure {
    Failure::Runtime(format!("{} is not valid:\n{error}", path.display()))
}

/// `keygate serve`: with `--config FILE`, or `--dev` (`Some`, with the addresses asked for) for
/// a demo that needs none.
fn serve_command(
    config: Option<PathBuf>,
    dev: Option<dev::Addresses>,
    log_format: LogFormat,
) -> Result<(), Failure> {
    if config.is_none() && dev.is_none() {
        return Err(Failure::Usage(
            "serve needs --config FILE (or KEYGATE_CONFIG); to try keygate without a config, run: keygate serve --dev"
                .into(),
        ));
    }
    // Held until the gateway stops, so the last lines are written.
    let _logs = crate::telemetry::logs::init(log_format);
    match (config, dev) {
        (_, Some(addresses)) => dev::run(addresses),
        (Some(config), None) => serve::run(config),
        (None, None) => Ok(()),
    }
}

/// The async runtime: `workers` threads, or one per CPU.
fn runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime, Failure> {
    let mut builder = match workers {
        // One worker: no work stealing to pay for, and tasks wake on the thread that polls.
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(workers) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(workers);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start the async runtime: {e}")))
}
