//! `keygate scan PATH... [--config FILE] [--report] [--json]`: finds keygate keys in files by
//! format and checksum (`control::leaks::scan`), says of each whether it is a key of the
//! config's store (by hash) and in what state, and with `--report` reports those as leaked.
//! A key is printed by its display prefix only, never whole.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use clap::Args;

use super::store::Create;
use super::Failure;
use crate::control::leaks::scan::Stream;
use crate::control::leaks::{Holder, LeakError, Leaks, Outcome, Report, Source, Which};
use crate::core::clock::system_clock;
use crate::core::key::KeyStatus;
use crate::core::secret::Secret;
use crate::gateway::hasher_from_env;

/// Bytes read from a file at a time.
const CHUNK: usize = 64 * 1024;

#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Files and folders to search; folders recursively, without following the symbolic links
    /// inside them.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// The gateway.toml whose store the keys found are looked up in.
    #[arg(long, short, env = "KEYGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Report each key of the store found as leaked: `leaks.action` applies (revoke by
    /// default), audited as `leaked`.
    #[arg(long)]
    report: bool,
    /// Print exactly one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

impl ScanArgs {
    /// Whether the command is to print one JSON document, failed or not.
    pub fn json(&self) -> bool {
        self.json
    }
}

impl From<LeakError> for Failure {
    fn from(error: LeakError) -> Self {
        Failure::Runtime(error.to_string())
    }
}

/// A key found in a file. Its secret is never printed.
struct Finding {
    path: PathBuf,
    line: u64,
    secret: Secret,
}

/// What a search went through.
#[derive(Default)]
struct Searched {
    files: usize,
    findings: Vec<Finding>,
    unreadable: Vec<(PathBuf, std::io::Error)>,
}

pub fn run(args: ScanArgs) -> Result<(), Failure> {
    if args.report && args.config.is_none() {
        return Err(Failure::Usage(
            "--report needs --config FILE (or KEYGATE_CONFIG): the store the keys are reported to".into(),
        ));
    }
    // The store first: a wrong config fails before any file is read.
    let leaks = args.config.as_deref().map(open).transpose()?;
    let mut searched = Searched::default();
    for path in &args.paths {
        search(path, true, &mut searched);
    }
    let tokens: Vec<&[u8]> = searched
        .findings
        .iter()
        .map(|finding| finding.secret.expose().as_bytes())
        .collect();
    let holders = match &leaks {
        Some(leaks) => leaks.holders(&tokens)?,
        None => Vec::new(),
    };
    let outcomes = match (&leaks, args.report) {
        (Some(leaks), true) => leaks.report(&reports(&searched.findings), Source::Cli)?,
        _ => Vec::new(),
    };
    let rows: Vec<Row> = searched
        .findings
        .iter()
        .enumerate()
        .map(|(index, finding)| Row {
            finding,
            looked_up: leaks.is_some(),
            holder: holders.get(index).and_then(Option::as_ref),
            outcome: outcomes.get(index),
        })
        .collect();
    match args.json {
        true => print_json(&rows, &searched)?,
        false => print_text(&rows, &searched)?,
    }
    unreadable(&searched, args.json)
}

/// The config's store, to look keys up in and report them to.
fn open(config_path: &Path) -> Result<Leaks, Failure> {
    let config = super::load(config_path)?;
    let hasher = hasher_from_env(&config)?;
    let store = super::store::open(&config, config_path, Create::Never)?;
    let leaks = Leaks::new(store, hasher, system_clock(), config.leaks.action);
    Ok(leaks.with_webhooks(config.lifecycle.webhook.is_some()))
}

/// Searches a file, or a folder's files recursively. A path given on the command line is
/// followed when it is a link; a link inside a folder is not (no loops, nothing outside).
fn search(path: &Path, given: bool, searched: &mut Searched) {
    let metadata = match given {
        true => std::fs::metadata(path),
        false => std::fs::symlink_metadata(path),
    };
    match metadata {
        Ok(metadata) if metadata.is_dir() => search_folder(path, searched),
        Ok(metadata) if metadata.is_file() => match search_file(path) {
            Ok(sightings) => {
                searched.files += 1;
                searched.findings.extend(sightings);
            }
            Err(error) => searched.unreadable.push((path.to_owned(), error)),
        },
        // Links inside folders, sockets, devices: not files to search.
        Ok(_) => {}
        Err(error) => searched.unreadable.push((path.to_owned(), error)),
    }
}

fn search_folder(path: &Path, searched: &mut Searched) {
    let entries = std::fs::read_dir(path).and_then(|entries| entries.collect::<Result<Vec<_>, _>>());
    match entries {
        Ok(mut entries) => {
            entries.sort_by_key(|entry| entry.file_name());
            for entry in entries {
                search(&entry.path(), false, searched);
            }
        }
        Err(error) => searched.unreadable.push((path.to_owned(), error)),
    }
}

fn search_file(path: &Path) -> std::io::Result<Vec<Finding>> {
    let mut file = File::open(path)?;
    let mut stream = Stream::default();
    let mut chunk = vec![0; CHUNK];
    let mut sightings = Vec::new();
    loop {
        let read = match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        sightings.extend(stream.feed(&chunk[..read]));
    }
    sightings.extend(stream.finish());
    let findings = sightings.into_iter().map(|sighting| Finding {
        path: path.to_owned(),
        line: sighting.line,
        secret: sighting.secret,
    });
    Ok(findings.collect())
}

/// Each finding as a leak report, its file and line as the URL.
fn reports(findings: &[Finding]) -> Vec<Report> {
    findings
        .iter()
        .map(|finding| {
            let place = format!("{}:{}", finding.path.display(), finding.line);
            Report::new(finding.secret.expose().to_owned(), Some(place))
        })
        .collect()
}

/// One finding with what the store says of it.
struct Row<'a> {
    finding: &'a Finding,
    /// Whether a store was asked.
    looked_up: bool,
    holder: Option<&'a Holder>,
    outcome: Option<&'a Outcome>,
}

impl Row<'_> {
    /// What the text output says after the prefix.
    fn state(&self) -> String {
        let holder = match (self.looked_up, self.holder) {
            (false, _) => return String::new(),
            (true, None) => return "not a key of this store".into(),
            (true, Some(holder)) => holder,
        };
        let grace = match holder.which {
            Which::Current => "",
            Which::Grace => " (its grace-period secret)",
        };
        let result = match self.outcome {
            Some(Outcome::Revoked { .. }) => ", revoked now",
            Some(Outcome::Quarantined { .. }) => ", quarantined now",
            Some(Outcome::GraceEnded { .. }) => ", its grace period ended now",
            Some(Outcome::AlreadyRevoked { .. }) => ", reported (revoked already)",
            Some(Outcome::Unknown) | None => "",
        };
        format!("{} {}{grace}{result}", holder.key_id, holder.status)
    }

    fn json(&self) -> serde_json::Value {
        let finding = self.finding;
        let mut row = serde_json::json!({
            "path": finding.path.display().to_string(),
            "line": finding.line,
            "prefix": finding.secret.display_prefix(),
        });
        if self.looked_up {
            row["key_id"] = self.holder.map(|h| h.key_id.as_str()).into();
            row["status"] = self.holder.map(|h| h.status.as_str()).into();
            row["secret"] = self.holder.map(|h| which(h.which)).into();
        }
        if let Some(outcome) = self.outcome {
            row["result"] = outcome.as_str().into();
        }
        row
    }
}

fn which(which: Which) -> &'static str {
    match which {
        Which::Current => "current",
        Which::Grace => "grace",
    }
}

fn print_text(rows: &[Row<'_>], searched: &Searched) -> Result<(), Failure> {
    for row in rows {
        let finding = row.finding;
        let prefix = finding.secret.display_prefix();
        let state = row.state();
        let line = format!("{}:{}: {prefix}", finding.path.display(), finding.line);
        match state.is_empty() {
            true => out!("{line}"),
            false => out!("{line}  {state}"),
        }
    }
    out!("{}", summary(rows, searched));
    Ok(())
}

/// The last line: how many keys in how many files, how many live, how many revoked now.
fn summary(rows: &[Row<'_>], searched: &Searched) -> String {
    let count = |what: &dyn Fn(&Row<'_>) -> bool| rows.iter().filter(|row| what(row)).count();
    let mut line = format!("{} key(s) found in {} file(s)", rows.len(), searched.files);
    if rows.first().is_some_and(|row| row.looked_up) {
        let live = count(&|row| row.holder.is_some_and(|h| h.status == KeyStatus::Active));
        line.push_str(&format!(", {live} active in this store"));
    }
    if rows.iter().any(|row| row.outcome.is_some()) {
        let revoked = count(&|row| matches!(row.outcome, Some(Outcome::Revoked { .. })));
        line.push_str(&format!(", {revoked} revoked now"));
    }
    line
}

fn print_json(rows: &[Row<'_>], searched: &Searched) -> Result<(), Failure> {
    let unreadable: Vec<serde_json::Value> = searched
        .unreadable
        .iter()
        .map(|(path, error)| serde_json::json!({"path": path.display().to_string(), "error": error.to_string()}))
        .collect();
    let document = serde_json::json!({
        "files": searched.files,
        "keys": rows.iter().map(Row::json).collect::<Vec<_>>(),
        "unreadable": unreadable,
    });
    out!("{document:#}");
    Ok(())
}

/// Each path that could not be read, on stderr; then a runtime failure if there was one
/// (already in the document with `--json`).
fn unreadable(searched: &Searched, json: bool) -> Result<(), Failure> {
    for (path, error) in &searched.unreadable {
        eprintln!("keygate: cannot read {}: {error}", path.display());
    }
    match (searched.unreadable.len(), json) {
        (0, _) => Ok(()),
        (_, true) => Err(Failure::Reported),
        (count, false) => Err(Failure::Runtime(format!(
            "{count} path(s) could not be read; the rest was searched"
        ))),
    }
}
