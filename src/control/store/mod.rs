//! The backing store of keys and their usage (control plane). SQLite, embedded, for now; the
//! rest of the crate sees only [`Store`] and the [`model`] types.

pub mod model;
mod sqlite;

use std::path::Path;

pub use model::*;
pub use sqlite::SqliteStore;

/// The store a deployment uses.
pub type Store = SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no such key")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    /// The secret of a change is another key's, current or in its grace period. The message
    /// names no key: whoever tries a secret must not learn which key holds it.
    #[error("this secret is already in use")]
    SecretInUse,
    /// The store does not exist (or the folder it would be in): it is created only on purpose.
    #[error("{0}")]
    Missing(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store holds an unreadable row: {0}")]
    Corrupt(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        StoreError::Unavailable(error.to_string())
    }
}

/// Opens the existing store a config names; a missing one is [`StoreError::Missing`].
pub fn open(url: &crate::config::StoreUrl) -> Result<Store, StoreError> {
    match url {
        crate::config::StoreUrl::Sqlite(path) => SqliteStore::open(Path::new(path)),
        crate::config::StoreUrl::Postgres(_) => Err(unsupported()),
    }
}

/// The existing store a config names, opened by the key sync's first attempt that can (a
/// gateway starts while its store is locked); a missing one is [`StoreError::Missing`].
pub fn open_later(url: &crate::config::StoreUrl) -> Result<Store, StoreError> {
    match url {
        crate::config::StoreUrl::Sqlite(path) => SqliteStore::open_later(Path::new(path)),
        crate::config::StoreUrl::Postgres(_) => Err(unsupported()),
    }
}

/// Opens the store a config names, creating it first when it does not exist: the explicit acts
/// of `keygate store init` and of the commands that add keys.
pub fn create(url: &crate::config::StoreUrl) -> Result<Store, StoreError> {
    match url {
        crate::config::StoreUrl::Sqlite(path) => SqliteStore::create(Path::new(path)),
        crate::config::StoreUrl::Postgres(_) => Err(unsupported()),
    }
}

/// Whether the store a config names exists, without opening it: [`StoreError::Missing`] when
/// it does not.
pub fn exists(url: &crate::config::StoreUrl) -> Result<(), StoreError> {
    match url {
        crate::config::StoreUrl::Sqlite(path) => sqlite::exists(Path::new(path)),
        crate::config::StoreUrl::Postgres(_) => Ok(()),
    }
}

fn unsupported() -> StoreError {
    StoreError::Unavailable("PostgreSQL stores are not supported by this build yet; use sqlite://".into())
}
