//! The coordinator's database, and the only code that speaks SQL.
//!
//! What it is for: every table of the coordinator (`persona.db`) and every operation on
//! them, one file per area: [`schema`] (the tables as one ordered list of migrations),
//! `telemetry` (batches, series, latest values, retention), `procs` (the process list
//! kept with each batch), `agents`, `tokens` (join tokens and enrollment), `commands`
//! (the command channel's state machine rows), `events`, `beliefs` (persona beliefs,
//! their history and the observed feedback examples), `models` (the mirror model
//! registry and what each agent runs), `engine` (the configuration engine's per-VM
//! settings) and `personas` (the persona database and operator feedback).
//!
//! The operations take and return the project's own types; no connection, statement
//! or SQLite type leaves this module, and each operation runs its own transaction where
//! it needs one, so a second backend (PostgreSQL) can implement the same operations.
//! [`StoreError`] is the one error of the store; features wrap it.
//!
//! Telemetry is stored as received: one row per batch (primary key agent and sequence
//! number, so a resent batch is recognised and not stored twice) holding the timestamp
//! block, the series index and the concatenated value blocks. The series index inside
//! the row locates each metric's block, and the (agent, end time) index finds the rows of
//! a time range, so a query slices out the one block it needs and decodes only that.
//! Nothing is decoded on ingest. The write connection runs WAL mode with
//! `synchronous=FULL`: every commit (one group commit for all waiting batches) is
//! fsynced before it returns, so an acknowledged batch survives a power loss, not only
//! a crash of the process. The read connection stays at `NORMAL` (it commits nothing
//! that an ack promises). docs/BENCHMARKS.md has the cost.
//!
//! What it is not: the rules of any feature (the state machine, the belief formula,
//! persona validation): the features decide, the store keeps.

pub mod schema;

mod agents;
mod beliefs;
mod commands;
mod engine;
mod events;
mod models;
mod personas;
mod procs;
mod telemetry;
mod tokens;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::Connection;

pub use agents::{AgentAuth, AgentInfo};
pub use beliefs::{BeliefRecord, BeliefSnapshot, BeliefWrite, FeedbackExample, FeedbackLabel};
pub use commands::{CommandProgress, CommandRow, NewCommand, PendingCommand};
pub use engine::{EngineVm, EngineVmBounds, EngineVmSettings, EngineVmSummary};
pub use events::StoredEvent;
pub use models::{AgentModel, MirrorModelRow, NewMirrorModel};
pub use personas::{Feedback, ImportReport, PersonaRecord};
pub use telemetry::{IngestItem, Latest, MAX_POINTS};
pub use tokens::{MAX_TOKEN_LIST, TokenInfo, TokenRefusal};

/// What the database itself said, whichever backend it is (today SQLite). Its text is
/// the backend's message.
#[derive(Debug)]
pub struct DbError(rusqlite::Error);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for DbError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        Self(e)
    }
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Open(#[from] persona_shared::sqlite::SqliteError),
    #[error("database schema migration {version} ({name}) failed: {source}")]
    Migrate {
        version: u32,
        name: &'static str,
        source: DbError,
    },
    #[error("database query failed ({context}): {source}")]
    Sql {
        context: &'static str,
        source: DbError,
    },
    #[error("a lock on the database was poisoned by a panic")]
    Poisoned,
    #[error("stored batch {seq} of agent {agent} is corrupt: {reason}")]
    Corrupt {
        agent: String,
        seq: u64,
        reason: String,
    },
    #[error("stored {what} {key} is corrupt: {reason}")]
    CorruptRow {
        what: &'static str,
        key: String,
        reason: String,
    },
    #[error("cannot encode {what} for the database: {reason}")]
    Encode { what: &'static str, reason: String },
    #[error("random source failed: {0}")]
    Random(String),
}

fn sql(context: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sql {
        context,
        source: DbError(source),
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Lower-case hex of bytes.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// `n` random bytes as hex (token ids and secrets).
fn random_hex(n: usize) -> Result<String, StoreError> {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| StoreError::Random("system random unavailable".into()))?;
    Ok(hex(&buf))
}

/// The database, with one connection for writes and one for reads (WAL lets them run
/// side by side).
#[derive(Debug)]
pub struct Store {
    write: Mutex<Connection>,
    read: Mutex<Connection>,
}

/// Opens one connection in WAL mode (the workspace's one SQLite open helper, which also
/// creates the file readable only by its owner).
fn open_conn(
    path: &Path,
    sync: persona_shared::sqlite::Synchronous,
) -> Result<Connection, StoreError> {
    use persona_shared::sqlite::OpenOptions;
    let opts = OpenOptions::new(sync)
        .busy_timeout(std::time::Duration::from_secs(10))
        .mode(0o600);
    Ok(persona_shared::sqlite::open(path, opts)?)
}

impl Store {
    /// Opens (creating if needed, readable only by its owner) the database at `path` and
    /// brings its schema up to date ([`schema::MIGRATIONS`]).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        use persona_shared::sqlite::Synchronous;
        // The writer commits what acks promise: FULL, so a commit is on disk when it returns.
        let mut write = open_conn(path, Synchronous::Full)?;
        schema::apply(&mut write)?;
        let read = open_conn(path, Synchronous::Normal)?;
        Ok(Self {
            write: Mutex::new(write),
            read: Mutex::new(read),
        })
    }

    /// The writer (for this module's operations only).
    fn w(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        self.write.lock().map_err(|_| StoreError::Poisoned)
    }

    /// The reader (for this module's operations only).
    fn r(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        self.read.lock().map_err(|_| StoreError::Poisoned)
    }

    /// The write connection's `PRAGMA synchronous` as SQLite reports it (`"FULL"`,
    /// `"NORMAL"`, ...): what a commit, and so an ack, is durable against.
    pub fn write_durability(&self) -> Result<&'static str, StoreError> {
        let level: i64 = self
            .w()?
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .map_err(sql("read synchronous"))?;
        Ok(match level {
            0 => "OFF",
            1 => "NORMAL",
            2 => "FULL",
            3 => "EXTRA",
            _ => "unknown",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_write_connection_commits_with_synchronous_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("persona.db")).expect("open");
        assert_eq!(store.write_durability().expect("pragma"), "FULL");
        let mode: String = store
            .w()
            .expect("writer")
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("journal mode");
        assert_eq!(mode, "wal");
    }
}
