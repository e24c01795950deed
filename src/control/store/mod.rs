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
    /// The secret of a change is another key's, current or in its grace period.
    #[error("{}", sqlite::SECRET_IN_USE)]
    SecretInUse,
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

/// Opens the store a config names.
pub fn open(url: &crate::config::StoreUrl) -> Result<Store, StoreError> {
    match url {
        crate::config::StoreUrl::Sqlite(path) => SqliteStore::open(Path::new(path)),
        crate::config::StoreUrl::Postgres(_) => Err(StoreError::Unavailable(
            "PostgreSQL stores are not supported by this build yet; use sqlite://".into(),
        )),
    }
}
