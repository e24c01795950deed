//! The command line: `serve`, `check`, `keys ...`. Parses arguments, calls into the library,
//! maps outcomes to exit codes: 0 success, 1 runtime error, 2 usage error.

mod dev;
mod keys;
mod output;
mod serve;
mod store;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::telemetry::logs::LogFormat;

#[derive(Debug, Parser)]
#[command(name = "keygate", version, about = "API-key authentication gateway")]
pub struct Cli {
    /// Log format on stdout.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
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
        /// The gateway.toml to run with.
        #[arg(long, short, env = "KEYGATE_CONFIG", required_unless_present = "dev")]
        config: Option<PathBuf>,
        /// Run with no config: a temporary store, a built-in echo upstream and a demo key.
        #[arg(long, conflicts_with = "config")]
        dev: bool,
    },
    /// Validate a config file and name the line of each mistake.
    Check {
        #[arg(long, short, env = "KEYGATE_CONFIG")]
        config: PathBuf,
    },
    /// Manage API keys in the store the config names (running gateway or not).
    Keys(Box<keys::KeysArgs>),
    /// Manage the store itself.
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Create the store the config names, empty, readable by its owner only (0600); on an
    /// existing store, bring its schema up to date. Safe to run again.
    Init {
        #[arg(long, short, env = "KEYGATE_CONFIG")]
        config: PathBuf,
    },
}

/// What went wrong, and so which exit code.
#[derive(Debug)]
pub enum Failure {
    /// Bad arguments or input: exit 2.
    Usage(String),
    /// Anything else: exit 1.
    Runtime(String),
}

impl Failure {
    /// The same failure with its message rewritten.
    pub fn map(self, rewrite: impl FnOnce(String) -> String) -> Self {
        match self {
            Failure::Usage(why) => Failure::Usage(rewrite(why)),
            Failure::Runtime(why) => Failure::Runtime(rewrite(why)),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure::Runtime(format!("{error:#}"))
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, dev } => {
            // Held until the gateway stops, so the last lines are written.
            let _logs = crate::telemetry::logs::init(cli.log_format);
            if dev {
                dev::run()
            } else {
                serve::run(config.expect("clap requires --config without --dev"))
            }
        }
        Command::Check { config } => serve::check(&config),
        Command::Keys(args) => keys::run(*args),
        Command::Store(StoreCommand::Init { config }) => store::init(&config),
    };
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
