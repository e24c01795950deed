//! `keygate store init --config FILE [--if-missing]`, and how every command reaches the store:
//! the store is created only on purpose (`store init`, or a command that adds keys), never
//! because a path named nothing or an empty file, so a volume that did not mount, or a restore
//! that wrote nothing, is an error and not an empty store.

use std::path::Path;
use std::sync::Arc;

use super::Failure;
use crate::config::{Config, StoreUrl};
use crate::control::store::{self, KeyStore, StoreError};

/// Whether a command may create the store it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    IfMissing,
    Never,
}

/// The store `config` (read from `config_path`) names.
pub fn open(config: &Config, config_path: &Path, create: Create) -> Result<Arc<dyn KeyStore>, Failure> {
    let opened = match create {
        Create::IfMissing => store::create(&config.store.url),
        Create::Never => store::open(&config.store.url),
    };
    opened.map_err(|error| failure(error, config, config_path))
}

/// A store error as one line; a missing store's says how to create one.
pub fn failure(error: StoreError, config: &Config, config_path: &Path) -> Failure {
    let init = format!("keygate store init --config {}", config_path.display());
    match error {
        StoreError::Missing(what) if folder_missing(config) => Failure::Runtime(format!(
            "{what} (is its volume mounted?); to start with an empty store, create the folder, then run: {init}"
        )),
        StoreError::Missing(what) => Failure::Runtime(format!(
            "{what} (is its volume mounted?); to start with an empty store, run: {init}"
        )),
        StoreError::NotAStore(what) => Failure::Runtime(format!(
            "{what} (a restore or copy that did not complete?); keygate makes a store only on purpose, in a missing or empty file: {init}"
        )),
        other => Failure::Runtime(other.to_string()),
    }
}

/// Whether the folder the store would be in is missing too.
fn folder_missing(config: &Config) -> bool {
    match &config.store.url {
        StoreUrl::Sqlite(path) => path
            .parent()
            .is_some_and(|dir| !dir.as_os_str().is_empty() && !dir.exists()),
        StoreUrl::Postgres(_) => false,
    }
}

/// `keygate store init`: creates the store the config names, or brings an existing one's
/// schema up to date (an existing empty file becomes an empty store). Safe to run again.
/// With `if_missing`, an existing keygate store is left as it is and any other file (an empty
/// one included) is refused untouched: safe to run at every start.
///
/// On PostgreSQL the database is the operator's to create; init connects and creates or
/// migrates keygate's tables under the migration lock, which is safe at every start with or
/// without `if_missing`.
pub fn init(config_path: &Path, if_missing: bool) -> Result<(), Failure> {
    let config = super::load(config_path)?;
    if let StoreUrl::Postgres(_) = &config.store.url {
        store::open(&config.store.url).map_err(|e| failure(e, &config, config_path))?;
        out!("store.url: keygate's tables are in place (created where missing, migrated under the migration lock)");
        return Ok(());
    }
    let existed = store::check(&config.store.url);
    match existed {
        Ok(()) if if_missing => out!("{}: a keygate store exists; left as it is", describe(&config)),
        Ok(()) => {
            store::open(&config.store.url).map_err(|e| failure(e, &config, config_path))?;
            out!("{}: the store exists; its schema is up to date", describe(&config))
        }
        Err(StoreError::Missing(what)) if folder_missing(&config) => {
            return Err(Failure::Runtime(format!(
                "{what}: create it first (or mount its volume); store init makes the store file, not folders"
            )))
        }
        Err(StoreError::Missing(_)) => {
            open(&config, config_path, Create::IfMissing)?;
            out!("{}: created an empty store", describe(&config));
        }
        Err(StoreError::NotAStore(what)) if if_missing => {
            return Err(Failure::Runtime(format!(
                "{what}; --if-missing leaves it untouched: move it away, or run keygate store init --config {} without --if-missing to make an empty file an empty store",
                config_path.display()
            )))
        }
        Err(StoreError::NotAStore(_)) => {
            store::init(&config.store.url).map_err(|e| failure(e, &config, config_path))?;
            out!("{}: the empty file is now an empty store", describe(&config));
        }
        Err(other) => return Err(failure(other, &config, config_path)),
    }
    Ok(())
}

fn describe(config: &Config) -> String {
    match &config.store.url {
        StoreUrl::Sqlite(path) => path.display().to_string(),
        StoreUrl::Postgres(_) => "store.url".into(),
    }
}
