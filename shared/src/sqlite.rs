//! The one way Persona opens a SQLite database it writes: WAL journal, a busy timeout,
//! the caller's `synchronous` level and, when asked, a private file mode.
//!
//! WAL lets one writer and any number of readers work side by side, and a commit is one
//! append. The `synchronous` level is the caller's decision because it is a durability
//! decision: `NORMAL` loses at most the last commits on power loss (fine for telemetry
//! that is resent until acknowledged), `FULL` loses nothing (command ids that must be on
//! disk before the command runs). What this is not: schemas and queries stay with the
//! code that owns each table.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// SQLite's `synchronous` pragma, the levels Persona uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    /// Durable against a process crash; a power loss may undo the last commits.
    Normal,
    /// Every commit is fsynced before it returns.
    Full,
}

impl Synchronous {
    pub fn as_str(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

/// How to open a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOptions {
    pub synchronous: Synchronous,
    /// How long a statement waits for another connection's lock before failing.
    pub busy_timeout: Duration,
    /// Unix mode of the database and its `-wal` and `-shm` files (e.g. `0o600`); a
    /// missing database is created with it. `None` leaves modes to the umask.
    pub mode: Option<u32>,
    /// `journal_size_limit` in bytes: after a checkpoint resets the WAL, the file is cut
    /// back to this size, so a burst of writes does not keep its disk space for good.
    /// `None` keeps SQLite's default (no limit).
    pub journal_size_limit: Option<u64>,
}

impl OpenOptions {
    /// `synchronous` with a 5 s busy timeout and no mode change.
    pub fn new(synchronous: Synchronous) -> Self {
        Self {
            synchronous,
            busy_timeout: Duration::from_secs(5),
            mode: None,
            journal_size_limit: None,
        }
    }

    pub fn busy_timeout(self, busy_timeout: Duration) -> Self {
        Self {
            busy_timeout,
            ..self
        }
    }

    pub fn mode(self, mode: u32) -> Self {
        Self {
            mode: Some(mode),
            ..self
        }
    }

    pub fn journal_size_limit(self, bytes: u64) -> Self {
        Self {
            journal_size_limit: Some(bytes),
            ..self
        }
    }
}

/// Whether `e` says the database or its disk is full (`SQLITE_FULL`: no space left on
/// the device, or the database reached its `max_page_count`).
pub fn is_full(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
}

/// Why a database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
    #[error("cannot create {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot set {setting} on {path}: {source}")]
    Setting {
        path: PathBuf,
        setting: &'static str,
        source: rusqlite::Error,
    },
}

/// Opens (creating if needed) the database at `path` for reading and writing.
pub fn open(path: &Path, opts: OpenOptions) -> Result<Connection, SqliteError> {
    if let Some(mode) = opts.mode {
        create_private(path, mode)?;
    }
    let conn = Connection::open(path).map_err(|source| SqliteError::Open {
        path: path.to_owned(),
        source,
    })?;
    let setting = |setting| {
        move |source| SqliteError::Setting {
            path: path.to_owned(),
            setting,
            source,
        }
    };
    // The busy timeout first: switching to WAL takes a lock another process may hold.
    conn.busy_timeout(opts.busy_timeout)
        .map_err(setting("busy_timeout"))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(setting("journal_mode"))?;
    conn.pragma_update(None, "synchronous", opts.synchronous.as_str())
        .map_err(setting("synchronous"))?;
    if let Some(limit) = opts.journal_size_limit {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        conn.pragma_update(None, "journal_size_limit", limit)
            .map_err(setting("journal_size_limit"))?;
    }
    if let Some(mode) = opts.mode {
        restrict_mode(path, mode);
    }
    Ok(conn)
}

/// Opens an existing database read-only (it is never created, and no pragma is written).
pub fn open_read_only(path: &Path, busy_timeout: Duration) -> Result<Connection, SqliteError> {
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|source| {
            SqliteError::Open {
                path: path.to_owned(),
                source,
            }
        })?;
    conn.busy_timeout(busy_timeout)
        .map_err(|source| SqliteError::Setting {
            path: path.to_owned(),
            setting: "busy_timeout",
            source,
        })?;
    Ok(conn)
}

/// Creates an empty `path` with `mode` if it does not exist, so the database is never
/// readable by others, not even for the moment between its creation and a chmod.
fn create_private(path: &Path, mode: u32) -> Result<(), SqliteError> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(SqliteError::Create {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Applies `mode` to the database and its WAL files. Best effort: SQLite already
/// creates the WAL files with the database's mode, and the directory is private; this
/// only repairs files an older version left with the umask's mode.
fn restrict_mode(path: &Path, mode: u32) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_in_wal_with_the_level_and_mode_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let opts = OpenOptions::new(Synchronous::Full)
            .busy_timeout(Duration::from_secs(1))
            .mode(0o600)
            .journal_size_limit(65_536);
        let conn = open(&path, opts).unwrap();
        let limit: i64 = conn
            .query_row("PRAGMA journal_size_limit", [], |r| r.get(0))
            .unwrap();
        assert_eq!(limit, 65_536);
        let journal: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "FULL");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        drop(conn);

        let again = open(&path, OpenOptions::new(Synchronous::Normal)).unwrap();
        let sync: i64 = again
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 1, "NORMAL");
        let ro = open_read_only(&path, Duration::from_secs(1)).unwrap();
        let x: i64 = ro.query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(x, 1);
        assert!(ro.execute("INSERT INTO t VALUES (2)", []).is_err());
    }

    #[test]
    fn a_full_database_is_recognised_by_its_code() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(
            &dir.path().join("f.db"),
            OpenOptions::new(Synchronous::Normal),
        )
        .unwrap();
        conn.execute_batch("CREATE TABLE t(x BLOB); PRAGMA max_page_count = 4;")
            .unwrap();
        let e = conn
            .execute("INSERT INTO t VALUES (zeroblob(100000))", [])
            .unwrap_err();
        assert!(is_full(&e), "{e}");
        let other = conn
            .execute("INSERT INTO nowhere VALUES (1)", [])
            .unwrap_err();
        assert!(!is_full(&other), "{other}");
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/dir/a.db");
        let e = open(&path, OpenOptions::new(Synchronous::Normal).mode(0o600)).unwrap_err();
        assert!(matches!(e, SqliteError::Create { .. }), "{e}");
        assert!(e.to_string().contains("missing/dir/a.db"), "{e}");
        let e = open_read_only(&dir.path().join("none.db"), Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, SqliteError::Open { .. }), "{e}");
        assert!(e.to_string().contains("none.db"), "{e}");
    }
}
