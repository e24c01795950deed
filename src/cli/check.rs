//! `keygate check --config FILE [--json] [--print] [--file-only]`: validates a config as `serve`
//! would, then looks on this machine for what `serve` would refuse at start (the SQLite store's
//! folder) or never be ready with (a store its user may not read and write: run `check` as the
//! service's user), and says what it would only warn about (a store not created yet, or a file
//! there that is not a keygate store, which `store init` may still fix). With `--print`, the effective
//! configuration: every default filled in, secrets redacted.
//!
//! Errors make the exit status 1, warnings do not. Validation itself reads no environment
//! (STYLE 4); the warnings here do, since they are about this machine.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;

use super::Failure;
use crate::config::effective::Effective;
use crate::config::raw::RawConfig;
use crate::config::{self, Config, ConfigError, Problem, StoreUrl};
use crate::control::store::StoreError;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The gateway.toml to check.
    #[arg(long, short, env = "KEYGATE_CONFIG")]
    config: PathBuf,
    /// Print exactly one JSON document on stdout: {"ok":true,...} or {"ok":false,"errors":[...]}.
    #[arg(long)]
    json: bool,
    /// Print the effective configuration: every default filled in, paths resolved, secrets
    /// redacted (TOML that passes check again; JSON with --json).
    #[arg(long)]
    print: bool,
    /// Check the file alone, not the folders it names on this machine: for a config made for
    /// another host (a container's, say).
    #[arg(long)]
    file_only: bool,
}

/// What `check --json` prints.
#[derive(Debug, Serialize)]
struct Report<'a> {
    ok: bool,
    config: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    routes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstreams: Option<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<JsonProblem>,
    warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    effective: Option<&'a Effective>,
}

#[derive(Debug, Serialize)]
struct JsonProblem {
    line: Option<usize>,
    column: Option<usize>,
    #[serde(skip_serializing_if = "String::is_empty")]
    field: String,
    message: String,
}

impl From<Problem> for JsonProblem {
    fn from(problem: Problem) -> Self {
        JsonProblem {
            line: problem.line,
            column: problem.column,
            field: problem.field,
            message: problem.message,
        }
    }
}

pub fn run(args: CheckArgs) -> Result<(), Failure> {
    // Absolute, so the printed paths name the same files from anywhere.
    let path = std::path::absolute(&args.config).unwrap_or_else(|_| args.config.clone());
    match validate(&path, args.file_only) {
        Ok(config) => valid(&config, &args),
        Err(error) => invalid(error, &args),
    }
}

/// The config as `serve` would load it (refused when it would serve nothing), and what `serve`
/// would refuse of it on this machine.
fn validate(path: &Path, file_only: bool) -> Result<Config, ConfigError> {
    let config = config::load(path)?;
    let mut problems = config::serving_problems(&config);
    if !file_only {
        problems.extend(host_problems(&config, path));
    }
    match problems.is_empty() {
        true => Ok(config),
        false => Err(ConfigError { problems }),
    }
}

fn valid(config: &Config, args: &CheckArgs) -> Result<(), Failure> {
    let shown = args.config.display().to_string();
    let warnings = match args.file_only {
        true => Vec::new(),
        false => warnings(config, &args.config),
    };
    let effective = args.print.then(|| Effective::of(config));
    if args.json {
        return print_json(&Report {
            ok: true,
            config: shown,
            routes: Some(config.routes.len()),
            upstreams: Some(config.upstreams.len()),
            errors: Vec::new(),
            warnings,
            effective: effective.as_ref(),
        });
    }
    for warning in &warnings {
        eprintln!("keygate: warning: {warning}");
    }
    match effective {
        Some(effective) => out!(
            "# The effective configuration of {shown}: every default filled in, secrets redacted.\n\n{}",
            effective.to_toml().trim_end()
        ),
        None => out!(
            "{shown} is valid: {} route(s), {} upstream(s)",
            config.routes.len(),
            config.upstreams.len()
        ),
    }
    Ok(())
}

fn invalid(error: ConfigError, args: &CheckArgs) -> Result<(), Failure> {
    let shown = args.config.display().to_string();
    if !args.json {
        return Err(Failure::Runtime(format!("{shown} is not valid:\n{error}")));
    }
    print_json(&Report {
        ok: false,
        config: shown,
        routes: None,
        upstreams: None,
        errors: error.problems.into_iter().map(JsonProblem::from).collect(),
        warnings: Vec::new(),
        effective: None,
    })?;
    Err(Failure::Reported)
}

fn print_json(report: &Report<'_>) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(report).map_err(|e| Failure::Runtime(e.to_string()))?;
    out!("{text}");
    Ok(())
}

/// What `serve` would refuse at start, or never be ready with, that this machine shows: the
/// SQLite store's folder, the store's files that the user running `check` may not use, and
/// the TLS certificate and key (missing, not PEM, not a pair, expired).
fn host_problems(config: &Config, path: &Path) -> Vec<Problem> {
    let mut problems = store_folder_problem(config, path);
    problems.extend(store_access_problem(config, path));
    if let Err(error) = config::check_files(config, jiff::Timestamp::now().as_second()) {
        problems.extend(error.problems);
    }
    problems
}

fn store_folder_problem(config: &Config, path: &Path) -> Vec<Problem> {
    let StoreUrl::Sqlite(store) = &config.store.url else {
        return Vec::new();
    };
    let Some(folder) = missing_folder(store) else {
        return Vec::new();
    };
    let (line, column) = store_url_position(path).unzip();
    vec![Problem {
        line,
        column,
        field: "store.url".into(),
        message: format!(
            "the folder {} of the store does not exist: create it (or mount its volume); serve refuses to start without it",
            folder.display()
        ),
    }]
}

/// A store the user running `check` cannot use (made by root, served as another user): `serve`
/// as this user would never be ready. Run `check` as the user the service runs as.
fn store_access_problem(config: &Config, path: &Path) -> Option<Problem> {
    let message = crate::control::store::access_problem(&config.store.url)?;
    let (line, column) = store_url_position(path).unzip();
    Some(Problem {
        line,
        column,
        field: "store.url".into(),
        message: format!("{message}; serve as this user would answer 503 until then"),
    })
}

fn missing_folder(store: &Path) -> Option<&Path> {
    store
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty() && !dir.exists())
}

/// Where `store.url` is written in the file, if it is.
fn store_url_position(path: &Path) -> Option<(usize, usize)> {
    let source = std::fs::read_to_string(path).ok()?;
    let raw: RawConfig = toml::from_str(&source).ok()?;
    let span = raw.store.url?.span();
    Some(config::position(&source, span.start))
}

/// What `serve` would start with but warn about, or refuse on this machine for a reason that
/// another machine may not have (its environment).
fn warnings(config: &Config, shown: &Path) -> Vec<String> {
    let mut warnings = Vec::new();
    if let StoreUrl::Sqlite(store) = &config.store.url {
        if !store.exists() {
            warnings.push(format!(
                "the store {} does not exist yet; serve refuses to start without it: create it with keygate store init --config {}",
                store.display(),
                shown.display()
            ));
        } else if let Err(StoreError::NotAStore(why)) = crate::control::store::check(&config.store.url) {
            // Read only: an empty file or a foreign one, which serve refuses to start on.
            warnings.push(format!(
                "{why}; serve refuses to start on it: keygate store init --config {} gives an empty file keygate's schema (and refuses any other), or point store.url at the keygate store",
                shown.display()
            ));
        }
    }
    let unset = |name: &str| std::env::var_os(name).is_none_or(|value| value.is_empty());
    if let Some(name) = config.store.pepper_env.as_deref().filter(|name| unset(name)) {
        warnings.push(format!(
            "store.pepper_env names {name}, which is not set here; serve refuses to start without it"
        ));
    }
    if let Some(name) = config.admin.advertise_env.as_deref().filter(|name| unset(name)) {
        warnings.push(format!(
            "admin.advertise_env names {name}, which is not set here; serve refuses to start without it"
        ));
    }
    let token = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    let signing =
        token(&config.admin.token_env).or_else(|| config.admin.read_token_env.as_deref().and_then(token));
    let short = crate::control::replicas::credential::short_token_warning(config, signing.as_deref());
    warnings.extend(short);
    if unset(&config.admin.token_env) {
        warnings.push(format!(
            "admin.token_env names {}, which is not set here; without it the admin API refuses every request",
            config.admin.token_env
        ));
    }
    warnings
}
