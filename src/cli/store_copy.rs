//! `keygate store copy`, `store export` and `store import`: a store moved to another (SQLite to
//! PostgreSQL) or kept as a JSON Lines dump, hashes and never secrets ([`Dump`]). A copy is an
//! export read back and imported, in-process, so every copy goes through the dump format.
//! Every import is one transaction, and is checked after it commits: each row of the source
//! must be in the target as it was. Into an empty store the check compares digests (see
//! [`Dump::digest`]), so the source's rows are let go before the target is read back: a copy
//! holds one store's rows at a time, not three (the source, its text, the target).

use std::io::BufReader;
use std::path::{Path, PathBuf};

use clap::Args;

use super::store::{open, Create};
use super::Failure;
use crate::config::{Config, StoreUrl};
use crate::control::store::dump::{pepper_fingerprint, Dump, Onto};
use crate::control::store::{self, KeyStore};

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The gateway.toml whose store to copy from.
    #[arg(long, short, env = "KEYGATE_CONFIG")]
    config: PathBuf,
    /// The store to copy into: `sqlite://PATH` (created when missing; relative to the current
    /// folder) or `postgres://...`. It must hash with the same `store.pepper_env` secret.
    #[arg(long, value_name = "URL")]
    to: String,
    /// Write into a target that holds keys already, bringing it up to date with the source
    /// (keys replaced by id, usage set, missing events added; rows only the target holds
    /// stay). Without it a target holding any key is refused, untouched. Safe to repeat.
    #[arg(long)]
    update: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The gateway.toml whose store to export.
    #[arg(long, short, env = "KEYGATE_CONFIG")]
    config: PathBuf,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The gateway.toml whose store to import into (created when missing).
    #[arg(long, short, env = "KEYGATE_CONFIG")]
    config: PathBuf,
    /// The dump `keygate store export` wrote; `-` for stdin.
    dump: PathBuf,
    /// Import into a store that holds keys already: see `keygate store copy --update`.
    #[arg(long)]
    update: bool,
}

fn onto(update: bool) -> Onto {
    if update {
        Onto::Update
    } else {
        Onto::EmptyOnly
    }
}

/// `keygate store copy --config FILE --to URL [--update]`.
pub fn copy(args: CopyArgs) -> Result<(), Failure> {
    let config = super::load(&args.config)?;
    let here = std::env::current_dir().map_err(|e| Failure::Runtime(format!("no current folder: {e}")))?;
    let to = crate::config::urls::store_url(&args.to, &here)
        .map_err(|why| Failure::Usage(format!("--to {why}")))?;
    if same_store(&to, &config.store.url) {
        return Err(Failure::Usage("--to names the config's own store".into()));
    }
    let source = open(&config, &args.config, Create::Never)?;
    // Through the format, as `export | import` would.
    let dump = export(&*source)?.through_format().map_err(Failure::Runtime)?;
    drop(source);
    let target = store::create(&to).map_err(|e| Failure::Runtime(format!("the target store: {e}")))?;
    let (counts, revision) = (dump.counts(), dump.revision);
    import(&*target, dump, onto(args.update))?;
    out!(
        "copied {counts} at revision {revision} to {}; verified: each is in the target as in the source",
        describe(&to)
    );
    Ok(())
}

/// `keygate store export --config FILE`: the dump on stdout.
pub fn export_command(args: ExportArgs) -> Result<(), Failure> {
    let config = super::load(&args.config)?;
    let pepper = fingerprint(&config)?;
    let source = open(&config, &args.config, Create::Never)?;
    let dump = export(&*source)?;
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    match dump.write(&mut stdout, &pepper) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Err(Failure::Closed),
        Err(error) => Err(Failure::Runtime(format!("cannot write to stdout: {error}"))),
    }
}

/// `keygate store import --config FILE DUMP [--update]`.
pub fn import_command(args: ImportArgs) -> Result<(), Failure> {
    let config = super::load(&args.config)?;
    let pepper = fingerprint(&config)?;
    let (dump, dumped_pepper) = read_dump(&args.dump)?;
    if dumped_pepper != pepper {
        return Err(Failure::Runtime(format!(
            "{} was exported from a store whose secrets are hashed with another pepper (store.pepper_env): none of its keys would authenticate here; set the same pepper secret and run again",
            args.dump.display()
        )));
    }
    let target = open(&config, &args.config, Create::IfMissing)?;
    let (counts, revision) = (dump.counts(), dump.revision);
    import(&*target, dump, onto(args.update))
        .map_err(|e| e.map(|why| format!("{}: {why}", args.dump.display())))?;
    out!("imported {counts} at revision {revision}; verified: each is in the store as in the dump");
    Ok(())
}

fn export(source: &dyn KeyStore) -> Result<Dump, Failure> {
    source
        .export_dump()
        .map_err(|e| Failure::Runtime(format!("cannot read the store: {e}")))
}

/// Writes `dump` into `target`, then reads the target back: into an empty store it must hold
/// exactly the dump's rows (digests compared, the dump let go first); with `--update`, every
/// row of the dump must be in it.
fn import(target: &dyn KeyStore, dump: Dump, onto: Onto) -> Result<(), Failure> {
    target
        .import_dump(&dump, onto)
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    let (expected, counts) = (dump.digest(), dump.counts());
    let dump = (onto == Onto::Update).then_some(dump);
    let after = target.export_dump().map_err(|e| {
        Failure::Runtime(format!(
            "imported, but cannot read the target back to verify: {e}"
        ))
    })?;
    let problems = match dump {
        Some(dump) => dump.check_contained_in(&after).err().unwrap_or_default(),
        None if after.counts() != counts => {
            vec![format!(
                "the target holds {}, the source {counts}",
                after.counts()
            )]
        }
        None => (after.digest().differences(&expected).into_iter())
            .map(|kind| format!("its {kind} differ from the source's"))
            .collect(),
    };
    if problems.is_empty() {
        return Ok(());
    }
    Err(Failure::Runtime(format!(
        "the target does not match the source after the import: {}",
        problems.join("; ")
    )))
}

fn read_dump(path: &Path) -> Result<(Dump, String), Failure> {
    let read = if path == Path::new("-") {
        Dump::read(&mut std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(path)
            .map_err(|e| Failure::Runtime(format!("cannot read {}: {e}", path.display())))?;
        Dump::read(&mut BufReader::new(file))
    };
    read.map_err(|why| Failure::Runtime(format!("{}: {why}", path.display())))
}

/// The config's pepper fingerprint; its pepper must be set to export or import.
fn fingerprint(config: &Config) -> Result<String, Failure> {
    let hasher = crate::gateway::hasher_from_env(config)?;
    Ok(pepper_fingerprint(&hasher))
}

/// Whether two URLs name one store (SQLite paths compared as files, however written).
fn same_store(a: &StoreUrl, b: &StoreUrl) -> bool {
    match (a, b) {
        (StoreUrl::Sqlite(a), StoreUrl::Sqlite(b)) => match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => a == b,
        },
        _ => a == b,
    }
}

fn describe(url: &StoreUrl) -> String {
    match url {
        StoreUrl::Sqlite(path) => path.display().to_string(),
        StoreUrl::Postgres(_) => "the PostgreSQL store".into(),
    }
}
