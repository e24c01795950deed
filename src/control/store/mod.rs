//! The backing store of keys and their usage (control plane), behind one seam: [`KeyStore`].
//! SQLite, embedded, for one host; PostgreSQL for replicas on several hosts. The CLI, the admin
//! API, the key sync, the lifecycle sweep, the webhook outbox and the usage flusher name only
//! [`Store`] and the [`model`] types.
//!
//! Both stores are synchronous and are called from blocking threads (`spawn_blocking`, the
//! CLI); the PostgreSQL one also copes with a caller inside a runtime.

pub mod dump;
pub mod model;
mod postgres;
mod sqlite;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::watch;

pub use model::*;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// The store a deployment uses, whichever backend it is.
pub type Store = dyn KeyStore;

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
    /// The file is there but is not a keygate store (an empty file included): it gets a schema
    /// only from `keygate store init`, never because something opened it.
    #[error("{0}")]
    NotAStore(String),
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
pub fn open(url: &crate::config::StoreUrl) -> Result<Arc<Store>, StoreError> {
    match url {
        crate::config::StoreUrl::Sqlite(path) => Ok(Arc::new(SqliteStore::open(Path::new(path))?)),
        crate::config::StoreUrl::Postgres(url) => Ok(Arc::new(PgStore::open(url)?)),
    }
}

/// The existing store a config names, opened by the key sync's first attempt that can (a
/// gateway starts while its store is locked); a missing one is [`StoreError::Missing`].
pub fn open_later(url: &crate::config::StoreUrl) -> Result<Arc<Store>, StoreError> {
    match url {
        crate::config::StoreUrl::Sqlite(path) => Ok(Arc::new(SqliteStore::open_later(Path::new(path))?)),
        crate::config::StoreUrl::Postgres(url) => Ok(Arc::new(PgStore::open_later(url)?)),
    }
}

/// Opens the store a config names, creating it first when it does not exist: the explicit act
/// of the commands that add keys. A file that exists must be a keygate store already.
pub fn create(url: &crate::config::StoreUrl) -> Result<Arc<Store>, StoreError> {
    match url {
        crate::config::StoreUrl::Sqlite(path) => Ok(Arc::new(SqliteStore::create(Path::new(path))?)),
        // The database is the operator's to create; its tables are created on first open.
        crate::config::StoreUrl::Postgres(url) => Ok(Arc::new(PgStore::open(url)?)),
    }
}

/// `keygate store init`: [`create`], and an existing empty file gets keygate's schema too.
pub fn init(url: &crate::config::StoreUrl) -> Result<Arc<Store>, StoreError> {
    match url {
        crate::config::StoreUrl::Sqlite(path) => Ok(Arc::new(SqliteStore::init(Path::new(path))?)),
        crate::config::StoreUrl::Postgres(url) => Ok(Arc::new(PgStore::open(url)?)),
    }
}

/// Whether the store a config names exists ([`StoreError::Missing`] when it does not) and is a
/// keygate store ([`StoreError::NotAStore`] when it is not), without writing to it. A store
/// that cannot be read now (locked) is [`StoreError::Unavailable`].
pub fn check(url: &crate::config::StoreUrl) -> Result<(), StoreError> {
    match url {
        crate::config::StoreUrl::Sqlite(path) => sqlite::check_store(Path::new(path)),
        crate::config::StoreUrl::Postgres(_) => Ok(()),
    }
}

/// Why the user this process runs as cannot use the store a config names (the file, its owner
/// and mode, and that user), as `keygate check` tells it: tried, then explained. `None` when
/// nothing is refused. Not for a process that holds the store open.
pub fn access_problem(url: &crate::config::StoreUrl) -> Option<String> {
    match url {
        crate::config::StoreUrl::Sqlite(path) => sqlite::access::confirmed_problem(Path::new(path)),
        crate::config::StoreUrl::Postgres(_) => None,
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

/// Writes the seam once: the trait, and each backend's implementation of it by its own
/// methods of the same names (documented there).
macro_rules! seam {
    ($( fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty; )*) => {
        /// What the control plane asks of a store. Every change bumps the store revision and
        /// writes its audit record in the same transaction.
        pub trait KeyStore: Send + Sync + std::fmt::Debug {
            $( fn $name(&self $(, $arg: $ty)*) -> $ret; )*

            /// Wakes on each change committed anywhere, where the store pushes changes
            /// (PostgreSQL's `NOTIFY`); `None` where readers poll.
            fn change_feed(&self) -> Option<watch::Receiver<u64>> {
                None
            }

            /// Opens a store not open yet, and reopens one whose file was replaced under it:
            /// true when it was (a file store's concern; a database server's store is never
            /// replaced under its clients).
            fn reopen_if_replaced(&self) -> Result<bool, StoreError> {
                Ok(false)
            }

            /// How many times the store was reopened because it was replaced.
            fn generation(&self) -> u64 {
                0
            }
        }

        impl KeyStore for SqliteStore {
            $( fn $name(&self $(, $arg: $ty)*) -> $ret { SqliteStore::$name(self $(, $arg)*) } )*

            fn reopen_if_replaced(&self) -> Result<bool, StoreError> {
                SqliteStore::reopen_if_replaced(self)
            }

            fn generation(&self) -> u64 {
                SqliteStore::generation(self)
            }
        }

        impl KeyStore for PgStore {
            $( fn $name(&self $(, $arg: $ty)*) -> $ret { PgStore::$name(self $(, $arg)*) } )*

            fn change_feed(&self) -> Option<watch::Receiver<u64>> {
                Some(PgStore::change_feed(self))
            }
        }
    };
}

seam! {
    fn insert(&self, key: &NewKey, audit: Audit) -> Result<StoredKey, StoreError>;
    fn get(&self, id: &str) -> Result<Option<StoredKey>, StoreError>;
    fn modify(
        &self,
        id: &str,
        audit: Audit,
        webhook: Option<&str>,
        change: &mut (dyn FnMut(&mut StoredKey) -> Result<(), StoreError> + Send)
    ) -> Result<Modified, StoreError>;
    fn events(&self, id: &str, after: u64, limit: usize) -> Result<Vec<KeyEvent>, StoreError>;
    fn list(
        &self,
        filter: &KeyFilter,
        now: Timestamp,
        after: u64,
        limit: usize
    ) -> Result<Vec<StoredKey>, StoreError>;
    fn changes_since(&self, revision: u64, limit: usize) -> Result<Changes, StoreError>;
    fn record_usage(&self, deltas: &[UsageDelta]) -> Result<(), StoreError>;
    fn usage(&self, id: &str) -> Result<Usage, StoreError>;
    fn revision(&self) -> Result<u64, StoreError>;
    fn idle_keys(
        &self,
        cutoff: Timestamp,
        now: Timestamp,
        after: u64,
        limit: usize
    ) -> Result<Vec<IdleKey>, StoreError>;
    fn record_warning(
        &self,
        seq: u64,
        deadline: Timestamp,
        threshold: u64,
        now: Timestamp,
        webhook: Option<&str>
    ) -> Result<bool, StoreError>;
    fn first_warning_at(&self, seq: u64, deadline: Timestamp) -> Result<Option<Timestamp>, StoreError>;
    fn enqueue_webhook(&self, payload: &str, now: Timestamp) -> Result<(), StoreError>;
    fn due_webhooks(&self, now: Timestamp, limit: usize) -> Result<Vec<PendingWebhook>, StoreError>;
    fn claim_webhook(&self, now: Timestamp, until: Timestamp) -> Result<Option<PendingWebhook>, StoreError>;
    fn webhook_done(&self, id: u64) -> Result<(), StoreError>;
    fn webhook_retry_at(&self, id: u64, attempts: u32, at: Timestamp) -> Result<(), StoreError>;
    fn try_lease(&self, name: &str, holder: &str, now: Timestamp, ttl: Duration) -> Result<bool, StoreError>;
    fn insert_many(&self, keys: &[NewKey], audit: Audit) -> Result<(), StoreError>;
    fn export_dump(&self) -> Result<dump::Dump, StoreError>;
    fn import_dump(&self, dump: &dump::Dump, onto: dump::Onto) -> Result<(), StoreError>;
}
