//! Whether the user keygate runs as may use the SQLite store's files (control plane), and if
//! not, why, in words an operator can act on: the file, its owner and mode, and the user.
//!
//! SQLite says only "unable to open database file" or "attempt to write a readonly database".
//! The usual cause is a store made by root (`keygate store init` run by hand) and a gateway run
//! as another user (systemd's `DynamicUser`, a container's `USER`): `check` then looks fine to
//! root and `serve` is never ready. This module reads the files' owners and modes and the
//! process's own ids (Linux's `/proc/self/status`; elsewhere it says nothing), so the log and
//! `/readyz` name the problem when an open fails, and `check` (which first tries what SQLite
//! needs, so an ACL that grants it is not taken for a refusal) names it before `serve` runs.

use std::path::{Path, PathBuf};

/// Who the process runs as, for file access: its effective user and every group it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gids: Vec<u32>,
}

/// What access to a file depends on: its owner, group and permission bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owned {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

const READ: u32 = 4;
const WRITE: u32 = 2;
const SEARCH: u32 = 1;

impl User {
    /// The process's own, from `/proc/self/status`; `None` where that cannot be read.
    pub fn current() -> Option<User> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let field = |name: &str| -> Option<Vec<u32>> {
            let rest = status.lines().find_map(|line| line.strip_prefix(name))?;
            rest.split_whitespace().map(|id| id.parse().ok()).collect()
        };
        // Real, effective, saved, file-system: access goes by the file-system ids.
        let uid = *field("Uid:")?.get(3)?;
        let mut gids = field("Groups:").unwrap_or_default();
        gids.push(*field("Gid:")?.get(3)?);
        Some(User { uid, gids })
    }

    /// Whether this user may `want` (a mask of READ, WRITE, SEARCH) on a file `owned` so.
    fn may(&self, owned: &Owned, want: u32) -> bool {
        if self.uid == 0 {
            return true;
        }
        let bits = if self.uid == owned.uid {
            owned.mode >> 6
        } else if self.gids.contains(&owned.gid) {
            owned.mode >> 3
        } else {
            owned.mode
        };
        bits & want == want
    }
}

/// Why `user` cannot use the SQLite store at `store`, or `None` when nothing in the owners
/// and modes that `stat` gives says so. SQLite needs: to pass through every folder above the
/// store, to read and write the store and its `-wal` and `-shm` files, and to create those two
/// in the store's folder when they do not exist.
pub fn problem(store: &Path, user: &User, stat: impl Fn(&Path) -> Option<Owned>) -> Option<String> {
    let folder = folder_of(store);
    let runs_as = format!("keygate runs as {}", named(user.uid));
    // From the root down: a folder that cannot be passed hides what is below it.
    let above: Vec<&Path> = folder
        .ancestors()
        .filter(|dir| !dir.as_os_str().is_empty())
        .collect();
    for above in above.into_iter().rev() {
        let owned = stat(above)?;
        if !user.may(&owned, SEARCH) {
            return Some(format!(
                "{runs_as}, which cannot reach the store {} through the folder {} ({}): {}",
                store.display(),
                above.display(),
                describe(&owned),
                FIX
            ));
        }
    }
    let files = [
        store.to_owned(),
        side_file(store, "-wal"),
        side_file(store, "-shm"),
    ];
    let mut missing_side = false;
    for (n, file) in files.iter().enumerate() {
        let Some(owned) = stat(file) else {
            missing_side |= n > 0;
            continue;
        };
        if !user.may(&owned, READ | WRITE) {
            return Some(format!(
                "{runs_as}, which cannot read and write the store file {} ({}): {}",
                file.display(),
                describe(&owned),
                FIX
            ));
        }
    }
    let owned = stat(&folder)?;
    if missing_side && !user.may(&owned, WRITE | SEARCH) {
        return Some(format!(
            "{runs_as}, which cannot create files in the store's folder {} ({}), where SQLite keeps its -wal and -shm files beside the store: {}",
            folder.display(),
            describe(&owned),
            FIX
        ));
    }
    None
}

/// The same, for this process and the files as they are now: why an open that failed did.
/// Reads metadata only: the process may hold the store open, and closing any other
/// descriptor of the file would drop its SQLite locks.
pub fn current_problem(store: &Path) -> Option<String> {
    problem(store, &User::current()?, stat)
}

/// What `keygate check` says: whether this process is refused what SQLite needs of the store,
/// tried rather than worked out from modes (an ACL or a mount may grant what the modes do not),
/// then explained by [`problem`] where the modes show why. For a process that has no connection
/// to the store (see [`current_problem`]); it may create and remove an empty probe file in the
/// store's folder.
pub fn confirmed_problem(store: &Path) -> Option<String> {
    let denied = denied(store)?;
    let user = User::current();
    let explained = user.as_ref().and_then(|user| problem(store, user, stat));
    Some(explained.unwrap_or_else(|| {
        let runs_as = user.map_or("this user".to_owned(), |user| named(user.uid));
        format!("keygate runs as {runs_as}, which is refused {denied}: {FIX}")
    }))
}

/// What the system refuses this process of what SQLite needs: opening the store and its side
/// files to read and write, and creating the side files when they do not exist.
fn denied(store: &Path) -> Option<String> {
    let refused = |error: &std::io::Error| error.kind() == std::io::ErrorKind::PermissionDenied;
    let files = [
        store.to_owned(),
        side_file(store, "-wal"),
        side_file(store, "-shm"),
    ];
    let mut missing_side = false;
    for (n, file) in files.iter().enumerate() {
        match std::fs::OpenOptions::new().read(true).write(true).open(file) {
            Err(error) if refused(&error) => {
                return Some(format!("opening {} to read and write ({error})", file.display()))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => missing_side |= n > 0,
            _ => {}
        }
    }
    if !missing_side || !store.exists() {
        return None;
    }
    let folder = folder_of(store);
    let probe = folder.join(format!(".keygate-check-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            None
        }
        Err(error) if refused(&error) => Some(format!(
            "creating files in the store's folder {} ({error})",
            folder.display()
        )),
        Err(_) => None,
    }
}

fn folder_of(store: &Path) -> PathBuf {
    match store.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// SQLite's `-wal` or `-shm` file beside the store.
fn side_file(store: &Path, suffix: &str) -> PathBuf {
    let mut name = store.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

const FIX: &str = "give the store, its folder and its -wal and -shm files to the user keygate runs as (chown), or run keygate as their owner (with systemd's DynamicUser, keep the store under StateDirectory=)";

#[cfg(unix)]
fn stat(path: &Path) -> Option<Owned> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Owned {
        uid: meta.uid(),
        gid: meta.gid(),
        mode: meta.mode() & 0o7777,
    })
}

#[cfg(not(unix))]
fn stat(_: &Path) -> Option<Owned> {
    None
}

fn describe(owned: &Owned) -> String {
    format!(
        "owner {}, group {}, mode {:04o}",
        named(owned.uid),
        owned.gid,
        owned.mode
    )
}

/// `uid 65534 (nobody)`, or `uid 61234` for a user without a line in `/etc/passwd` (systemd's
/// dynamic users among them).
fn named(uid: u32) -> String {
    let name = std::fs::read_to_string("/etc/passwd").ok().and_then(|passwd| {
        passwd.lines().find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            (fields.nth(1)? == uid.to_string()).then(|| name.to_owned())
        })
    });
    match name {
        Some(name) => format!("uid {uid} ({name})"),
        None => format!("uid {uid}"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const ROOT: Owned = Owned {
        uid: 0,
        gid: 0,
        mode: 0o755,
    };

    /// A file system of these entries; a later entry for a path replaces an earlier one.
    fn files(entries: &[(&str, Owned)]) -> impl Fn(&Path) -> Option<Owned> {
        let map: HashMap<PathBuf, Owned> = entries.iter().map(|(p, o)| (PathBuf::from(p), *o)).collect();
        move |path| map.get(path).copied()
    }

    fn nobody() -> User {
        User {
            uid: 65534,
            gids: vec![65534],
        }
    }

    #[test]
    fn a_store_made_by_root_and_read_by_another_user_is_named_with_owner_mode_and_user() {
        let stat = files(&[
            ("/", ROOT),
            ("/var", ROOT),
            ("/var/keygate", ROOT),
            ("/var/keygate/keys.db", Owned { mode: 0o600, ..ROOT }),
        ]);
        let said = problem(Path::new("/var/keygate/keys.db"), &nobody(), &stat).unwrap();
        for part in [
            "keygate runs as uid 65534",
            "cannot read and write the store file /var/keygate/keys.db",
            "owner uid 0",
            "mode 0600",
            "chown",
        ] {
            assert!(said.contains(part), "{part:?} in {said}");
        }
        let root = User {
            uid: 0,
            gids: vec![0],
        };
        assert_eq!(problem(Path::new("/var/keygate/keys.db"), &root, &stat), None);
    }

    #[test]
    fn each_thing_sqlite_needs_is_checked_owner_group_and_other_bits_apart() {
        let store = Path::new("/srv/k/keys.db");
        let mine = Owned {
            uid: 65534,
            gid: 0,
            mode: 0o600,
        };
        let group_rw = Owned {
            uid: 0,
            gid: 65534,
            mode: 0o660,
        };
        /// A case's name, its own files, and what is said (`None`: nothing).
        type Case = (&'static str, Vec<(&'static str, Owned)>, Option<&'static str>);
        let cases: [Case; 6] = [
            ("owned by the user", vec![("/srv/k/keys.db", mine)], None),
            ("group may", vec![("/srv/k/keys.db", group_rw)], None),
            (
                "readable only",
                vec![("/srv/k/keys.db", Owned { mode: 0o644, ..ROOT })],
                Some("cannot read and write the store file"),
            ),
            (
                "a folder above closed",
                vec![("/srv", Owned { mode: 0o700, ..ROOT }), ("/srv/k/keys.db", mine)],
                Some("through the folder /srv (owner uid 0"),
            ),
            (
                "a -wal of root's",
                vec![
                    ("/srv/k/keys.db", mine),
                    ("/srv/k/keys.db-wal", Owned { mode: 0o600, ..ROOT }),
                ],
                Some("store file /srv/k/keys.db-wal"),
            ),
            (
                "no -wal yet, and a folder it cannot write",
                vec![("/srv/k/keys.db", mine)],
                Some("cannot create files in the store's folder /srv/k"),
            ),
        ];
        for (case, own, want) in cases {
            let mut entries = vec![("/", ROOT), ("/srv", ROOT), ("/srv/k", ROOT)];
            if want.is_none() {
                // The side files exist and are the user's: only the store itself decides.
                entries.extend([("/srv/k/keys.db-wal", mine), ("/srv/k/keys.db-shm", mine)]);
            }
            entries.extend(own);
            let said = problem(store, &nobody(), files(&entries));
            match want {
                None => assert_eq!(said, None, "{case}"),
                Some(part) => {
                    let said = said.unwrap_or_else(|| panic!("{case}: nothing said"));
                    assert!(said.contains(part), "{case}: {part:?} in {said}");
                }
            }
        }
    }

    #[test]
    fn what_cannot_be_looked_at_says_nothing() {
        assert_eq!(problem(Path::new("/x/keys.db"), &nobody(), |_| None), None);
    }
}
