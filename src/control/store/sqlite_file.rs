//! The SQLite store's file (control plane): opening only a file that exists, creating one on
//! purpose (mode 0600), and telling whether the path still names the file that is open.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::schema::migrate;
use crate::control::store::StoreError;

/// The identities of the database file and its write-ahead log as opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Files {
    pub(super) db: Option<FileId>,
    /// Stable while the connection is open: SQLite deletes the log only when the last
    /// connection closes.
    pub(super) wal: Option<FileId>,
}

impl Files {
    pub(super) fn of(path: &Path) -> Files {
        let id = |path: &Path| std::fs::metadata(path).ok().and_then(|meta| file_id(&meta));
        Files {
            db: id(path),
            wal: id(&side_file(path, "-wal")),
        }
    }
}

/// SQLite's `-wal` or `-shm` file beside the database at `path`.
fn side_file(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// A file's identity: (device, inode). A file renamed over the path has another.
pub(super) type FileId = (u64, u64);

#[cfg(unix)]
pub(super) fn file_id(meta: &std::fs::Metadata) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
pub(super) fn file_id(_: &std::fs::Metadata) -> Option<FileId> {
    None
}

/// How long an operation waits for another connection's lock before failing as unavailable.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const OPEN_BUSY_TIMEOUT: Duration = Duration::from_secs(1);

/// The path SQLite takes for a private in-memory database.
pub(super) const MEMORY: &str = ":memory:";

/// [`StoreError::Missing`] unless the store file at `path` exists.
pub(crate) fn exists(path: &Path) -> Result<(), StoreError> {
    if path == Path::new(MEMORY) || path.exists() {
        Ok(())
    } else {
        Err(StoreError::Missing(missing(path)))
    }
}

/// Moves the replaced database's write-ahead log away from `path`, and drops its shared-memory
/// index. Both go by the path, not the file: SQLite does not checkpoint a database that has
/// been moved, and would read the old database's pages out of its log as the new one's. Only
/// the log this store had open is moved (`wal`): one made since belongs to the new file.
pub(super) fn set_aside_old_log(path: &Path, wal: Option<FileId>) {
    let log = side_file(path, "-wal");
    let current = std::fs::metadata(&log).ok().and_then(|meta| file_id(&meta));
    if current.is_none() || current != wal {
        return;
    }
    let aside = side_file(path, "-wal.replaced");
    match std::fs::rename(&log, &aside) {
        Ok(()) => tracing::warn!(
            log = %aside.display(),
            "the replaced store's write-ahead log was moved aside; changes it held were not in the new file"
        ),
        Err(error) => {
            tracing::error!(%error, log = %log.display(), "cannot move the replaced store's write-ahead log aside")
        }
    }
    if let Err(error) = std::fs::remove_file(side_file(path, "-shm")) {
        if error.kind() != std::io::ErrorKind::NotFound {
            tracing::error!(%error, "cannot remove the replaced store's shared-memory index");
        }
    }
}

/// A connection to the existing file at `path`, its schema brought up to date.
pub(super) fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let mut conn = connect(path)?;
    // Opening waits little for a lock: a gateway retries it with backoff, reporting why
    // meanwhile. Once open, a change waits up to 10 s for another writer.
    conn.busy_timeout(OPEN_BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    migrate(&mut conn)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// A connection to the existing file at `path`; SQLite is not allowed to create it.
fn connect(path: &Path) -> Result<Connection, StoreError> {
    if path == Path::new(MEMORY) {
        return Ok(Connection::open_in_memory()?);
    }
    exists(path)?;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::Unavailable(format!("cannot open SQLite store {}: {e}", path.display())))
}

/// The folder the store at `path` would be in, when that is missing.
fn missing_folder(path: &Path) -> Option<&Path> {
    path.parent()
        .filter(|dir| !dir.as_os_str().is_empty() && !dir.exists())
}

/// What is missing of the store at `path`: the file, or the folder it would be in.
fn missing(path: &Path) -> String {
    match missing_folder(path) {
        Some(dir) => format!(
            "the folder {} of the store {} does not exist",
            dir.display(),
            path.display()
        ),
        None => format!("the store {} does not exist", path.display()),
    }
}

/// Creates an empty file at `path` with mode 0600, unless one exists.
pub(super) fn create_file(path: &Path) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => {
            tracing::info!(store = %path.display(), "created a new, empty store");
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(_) if missing_folder(path).is_some() => Err(StoreError::Missing(missing(path))),
        Err(error) => Err(StoreError::Unavailable(format!(
            "cannot create the store {}: {error}",
            path.display()
        ))),
    }
}
