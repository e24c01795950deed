//! The SQLite store's file (control plane): opening only a file that exists and holds keygate's
//! schema, creating one on purpose (mode 0600), and telling whether the path still names the
//! file that is open. An empty file, or one that is not keygate's, is never given a schema by
//! an open: only by `keygate store init` (or the command that created the file just before).

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

/// What an open may find in the file: only keygate's schema, or also nothing yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Schema {
    /// The file must hold keygate's schema (brought up to date if older).
    Existing,
    /// An empty file gets keygate's schema: `store init`, or a file created just before.
    CreateInEmpty,
}

/// What the file at `path` holds, by its first bytes, read without SQLite: a replaced file is
/// judged before the open store lets go of its own (see [`set_aside_old_log`]). Only for a file
/// this process holds no SQLite connection to (a replacement is another inode): see
/// [`empty_file`] for why.
pub(super) fn check_header(path: &Path) -> Result<Content, StoreError> {
    use std::io::Read;
    let unreadable =
        |e: std::io::Error| StoreError::Unavailable(format!("cannot read {}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(unreadable)?;
    let mut header = [0u8; 16];
    let mut read = 0;
    while read < header.len() {
        match file.read(&mut header[read..]).map_err(unreadable)? {
            0 => break,
            n => read += n,
        }
    }
    match read {
        0 => Ok(Content::Empty),
        _ if header[..read] == SQLITE_MAGIC[..read] && read == SQLITE_MAGIC.len() => Ok(Content::Sqlite),
        _ => Err(not_a_store(path, "not a SQLite database")),
    }
}

/// Whether the file at `path` is 0 bytes, asked of its metadata. Never by opening it: closing
/// any descriptor of a file drops every POSIX lock this process holds on it, SQLite's too, so
/// a check of a store this process already has open (a second handle in one process, as the
/// tests have) would let another process checkpoint and delete the write-ahead log under it.
/// What a non-empty file holds is SQLite's to judge when it is opened
/// ([`holds_keygate_schema`] names a file that is not a database).
fn empty_file(path: &Path) -> Result<bool, StoreError> {
    std::fs::metadata(path)
        .map(|meta| meta.len() == 0)
        .map_err(|e| StoreError::Unavailable(format!("cannot read {}: {e}", path.display())))
}

/// The first 16 bytes of every SQLite database file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// What a file holds, as far as [`check_header`] can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Content {
    /// 0 bytes.
    Empty,
    Sqlite,
}

/// [`StoreError::NotAStore`] for the file at `path`, and why.
pub(super) fn not_a_store(path: &Path, why: &str) -> StoreError {
    StoreError::NotAStore(format!("{} is not a keygate store: {why}", path.display()))
}

/// Whether the open database holds keygate's schema (`Ok(true)`), nothing at all (`Ok(false)`),
/// or something else ([`StoreError::NotAStore`]). Reads only.
fn holds_keygate_schema(conn: &Connection, path: &Path) -> Result<bool, StoreError> {
    let read = |e: rusqlite::Error| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => not_a_store(path, "not a SQLite database"),
        _ => StoreError::Unavailable(format!("cannot read the store {}: {e}", path.display())),
    };
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(read)?;
    let (objects, meta): (i64, i64) = conn
        .query_row(
            "SELECT count(*), count(CASE WHEN type = 'table' AND name = 'meta' THEN 1 END) FROM sqlite_master",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(read)?;
    match (version, objects, meta) {
        (0, 0, _) => Ok(false),
        (1.., _, 1) => Ok(true),
        _ => Err(not_a_store(path, "a SQLite database without keygate's tables")),
    }
}

/// Checks, without writing anything, that the file at `path` is a keygate store: what
/// `serve` and `store init --if-missing` ask before anything else. A store locked by another
/// process is [`StoreError::Unavailable`].
pub(crate) fn check_store(path: &Path) -> Result<(), StoreError> {
    check_store_as_is(path).map_err(|error| explained(path, error))
}

fn check_store_as_is(path: &Path) -> Result<(), StoreError> {
    exists(path)?;
    if path == Path::new(MEMORY) {
        return Ok(());
    }
    if empty_file(path)? {
        return Err(not_a_store(path, "an empty file (0 bytes)"));
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::Unavailable(format!("cannot open SQLite store {}: {e}", path.display())))?;
    conn.busy_timeout(OPEN_BUSY_TIMEOUT)?;
    match holds_keygate_schema(&conn, path)? {
        true => Ok(()),
        false => Err(not_a_store(
            path,
            "an empty SQLite database, without keygate's tables",
        )),
    }
}

/// A connection to the existing file at `path`, its schema brought up to date; a file
/// without keygate's schema is [`StoreError::NotAStore`] unless `schema` allows creating it
/// in an empty one.
pub(super) fn open_connection(path: &Path, schema: Schema) -> Result<Connection, StoreError> {
    open_connection_as_is(path, schema).map_err(|error| explained(path, error))
}

/// `error` from opening the store at `path`, with the permission problem behind it named when
/// the files' owners and modes show one: SQLite's own words ("unable to open database file")
/// say nothing of who may not do what.
fn explained(path: &Path, error: StoreError) -> StoreError {
    let problem = || match path == Path::new(MEMORY) {
        true => None,
        false => super::access::current_problem(path),
    };
    // A folder that cannot be passed makes the store look missing.
    match error {
        StoreError::Unavailable(why) => match problem() {
            Some(problem) => StoreError::Unavailable(format!("{problem} ({why})")),
            None => StoreError::Unavailable(why),
        },
        StoreError::Missing(why) => match problem() {
            Some(problem) => StoreError::Missing(format!("{problem} ({why})")),
            None => StoreError::Missing(why),
        },
        other => other,
    }
}

fn open_connection_as_is(path: &Path, schema: Schema) -> Result<Connection, StoreError> {
    if path != Path::new(MEMORY) {
        exists(path)?;
        if empty_file(path)? && schema == Schema::Existing {
            return Err(not_a_store(path, "an empty file (0 bytes)"));
        }
    }
    let mut conn = connect(path)?;
    // Opening waits little for a lock: a gateway retries it with backoff, reporting why
    // meanwhile. Once open, a change waits up to 10 s for another writer.
    conn.busy_timeout(OPEN_BUSY_TIMEOUT)?;
    if !holds_keygate_schema(&conn, path)? && schema == Schema::Existing {
        return Err(not_a_store(
            path,
            "an empty SQLite database, without keygate's tables",
        ));
    }
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

/// Creates an empty file at `path` with mode 0600, unless one exists: whether it did.
pub(super) fn create_file(path: &Path) -> Result<bool, StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => {
            tracing::info!(store = %path.display(), "created a new, empty store");
            Ok(true)
        }
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(_) if missing_folder(path).is_some() => Err(StoreError::Missing(missing(path))),
        Err(error) => Err(StoreError::Unavailable(format!(
            "cannot create the store {}: {error}",
            path.display()
        ))),
    }
}
