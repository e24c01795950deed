//! `keygate store init --config FILE`, and how every command reaches the store: the store is
//! created only on purpose (`store init`, or a command that adds keys), never because a path
//! named nothing, so a volume that did not mount is an error and not an empty store.

use std::path::Path;

use super::Failure;
use crate::config::Config;
use crate::control::store::{self, Store, StoreError};

/// Whether a command may create the store it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    IfMissing,
    Never,
}

/// The store `config` (read from `config_path`) names.
pub fn open(config: &Config, config_path: &Path, create: Create) -> Result<Store, Failure> {
    let opened = match create {
        Create::IfMissing => store::create(&config.store.url),
        Create::Never => store::open(&config.store.url),
    };
    opened.map_err(|error| failure(error, config_path))
}

/// A store error as one line; a missing store's says how to create one.
pub fn failure(error: StoreError, config_path: &Path) -> Failure {
    match error {
        StoreError::Missing(what) => Failure::Runtime(format!(
            "{what} (is its volume mounted?); to start with an empty store, create it with: \
             keygate store init --config {}",
            config_path.display()
        )),
        other => Failure::Runtime(other.to_string()),
    }
}

/// `keygate store init`: creates the store the config names, or brings an existing one's
/// schema up to date. Safe to run again.
pub fn init(config_path: &Path) -> Result<(), Failure> {
    let config = super::serve::load(config_path)?;
    let existed = store::open(&config.store.url).map(drop);
    match existed {
        Ok(()) => println!(
            "{}: the store exists; its schema is up to date",
            describe(&config)
        ),
        Err(StoreError::Missing(_)) => {
            open(&config, config_path, Create::IfMissing)?;
            println!("{}: created an empty store", describe(&config));
        }
        Err(other) => return Err(failure(other, config_path)),
    }
    Ok(())
}

fn describe(config: &Config) -> String {
    match &config.store.url {
        crate::config::StoreUrl::Sqlite(path) => path.display().to_string(),
        crate::config::StoreUrl::Postgres(_) => "store.url".into(),
    }
}
