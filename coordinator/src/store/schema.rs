//! The database schema as one ordered list of migrations, applied once each.
//!
//! The version a database has reached is SQLite's `PRAGMA user_version` (0 for a
//! database made before this list existed). [`apply`] runs every migration above it in
//! order, each in its own transaction together with the new version number, so a crash
//! leaves the database at a migration boundary. The first migrations are the tables the
//! coordinator created before there was a list (`CREATE TABLE IF NOT EXISTS`, exactly as
//! they were): a `persona.db` written by an older coordinator is at version 0, already
//! has some or all of them, and is brought to the current version without a change to
//! what it holds.
//!
//! Rules for the list: append only; never edit a migration that has shipped; a
//! migration is plain DDL, one area of the store each. A second backend (PostgreSQL)
//! follows the same list with the same numbers and names, keeping its version in a
//! `schema_version` table instead of `user_version`.
//!
//! What it is not: the operations on the tables (the sibling files, one per area).

use rusqlite::Connection;

use super::{StoreError, sql};

/// One step of the schema.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// 1, 2, 3...: the `user_version` the database has after it.
    pub version: u32,
    /// What it adds, for errors and logs.
    pub name: &'static str,
    /// The SQLite DDL.
    pub sqlite: &'static str,
}

/// Every migration, in order. Versions are 1..=N without gaps (checked by a test).
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "tokens, agents and telemetry batches",
        sqlite: "
CREATE TABLE IF NOT EXISTS tokens(
    id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL, uses_left INTEGER NOT NULL, used INTEGER NOT NULL DEFAULT 0,
    revoked_ms INTEGER);
CREATE TABLE IF NOT EXISTS agents(
    key INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, hostname TEXT NOT NULL,
    fingerprint TEXT NOT NULL UNIQUE, enrolled_ms INTEGER NOT NULL, revoked_ms INTEGER,
    last_seen_ms INTEGER, committed_seq INTEGER NOT NULL DEFAULT 0,
    facts TEXT, purpose TEXT, procs TEXT);
CREATE TABLE IF NOT EXISTS batches(
    agent INTEGER NOT NULL, seq INTEGER NOT NULL, start_ms INTEGER NOT NULL, end_ms INTEGER NOT NULL,
    points INTEGER NOT NULL, received_ms INTEGER NOT NULL, ts BLOB NOT NULL, instances TEXT NOT NULL,
    idx BLOB NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY(agent, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS batches_by_time ON batches(agent, end_ms);
CREATE INDEX IF NOT EXISTS batches_by_end ON batches(end_ms);
",
    },
    Migration {
        version: 2,
        name: "command channel",
        sqlite: "
CREATE TABLE IF NOT EXISTS commands(
    id TEXT PRIMARY KEY, agent INTEGER NOT NULL, agent_id TEXT NOT NULL, kind TEXT NOT NULL,
    body BLOB NOT NULL, action TEXT NOT NULL, state TEXT NOT NULL,
    created_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
    sent_ms INTEGER, delivered_ms INTEGER, started_ms INTEGER, finished_ms INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    step TEXT, bytes INTEGER, percent REAL, message TEXT);
CREATE INDEX IF NOT EXISTS commands_by_agent ON commands(agent, state);
CREATE INDEX IF NOT EXISTS commands_by_created ON commands(created_ms);
CREATE INDEX IF NOT EXISTS commands_by_expiry ON commands(state, expires_ms);
-- The model push looks up an agent's latest model_update by agent id; without this
-- index each lookup scanned the whole table (one per waiting agent per poll).
CREATE INDEX IF NOT EXISTS commands_by_agent_kind ON commands(agent_id, kind, created_ms);
",
    },
    Migration {
        version: 3,
        name: "agent events",
        // The columns are a contract (the engine reads them): add columns, never rename.
        // `received_ms` is when the coordinator stored the event, `comm` the process of
        // a runaway-process event; `evidence` is a JSON array of
        // `{"name", "value", "threshold"}` (null where a number was not finite).
        sqlite: "
CREATE TABLE IF NOT EXISTS events(
    agent_id TEXT NOT NULL, id INTEGER NOT NULL, kind TEXT NOT NULL, resource TEXT NULL,
    severity TEXT NOT NULL, since_ms INTEGER NOT NULL, at_ms INTEGER NOT NULL,
    summary TEXT NOT NULL, evidence TEXT NOT NULL, received_ms INTEGER NOT NULL DEFAULT 0,
    comm TEXT NULL,
    PRIMARY KEY(agent_id, id));
CREATE INDEX IF NOT EXISTS events_by_time ON events(at_ms);
CREATE INDEX IF NOT EXISTS events_by_agent_time ON events(agent_id, at_ms);
",
    },
    Migration {
        version: 4,
        name: "persona beliefs, their history and observed feedback examples",
        sqlite: "
CREATE TABLE IF NOT EXISTS persona_belief(
    agent_id TEXT PRIMARY KEY, purpose TEXT, prior TEXT, observed TEXT, combined TEXT,
    observed_hours REAL NOT NULL DEFAULT 0, reports INTEGER NOT NULL DEFAULT 0,
    last_report_ms INTEGER, history_ms INTEGER, updated_ms INTEGER NOT NULL,
    stable_slug TEXT, stable_since_ms INTEGER, stable_count INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS persona_belief_history(
    agent_id TEXT NOT NULL, at_ms INTEGER NOT NULL, prior TEXT, observed TEXT,
    combined TEXT NOT NULL, observed_hours REAL NOT NULL,
    PRIMARY KEY(agent_id, at_ms));
CREATE TABLE IF NOT EXISTS feedback_examples(
    agent_id TEXT NOT NULL, at_ms INTEGER NOT NULL, description TEXT NOT NULL,
    software TEXT NOT NULL, observed_slug TEXT NOT NULL, probability REAL NOT NULL,
    PRIMARY KEY(agent_id, observed_slug));
",
    },
    Migration {
        version: 5,
        name: "mirror model registry, agents' models and per-batch process lists",
        sqlite: "
CREATE TABLE IF NOT EXISTS mirror_models(
    version TEXT PRIMARY KEY, sha256 TEXT NOT NULL, bytes BLOB NOT NULL,
    created_ms INTEGER NOT NULL, report TEXT);
CREATE TABLE IF NOT EXISTS agent_models(
    agent_id TEXT PRIMARY KEY, running TEXT, offered TEXT, accepted INTEGER,
    message TEXT, updated_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS batch_procs(
    agent INTEGER NOT NULL, seq INTEGER NOT NULL, end_ms INTEGER NOT NULL, procs BLOB NOT NULL,
    PRIMARY KEY(agent, seq)) WITHOUT ROWID;
",
    },
    Migration {
        version: 6,
        name: "configuration engine settings per VM",
        sqlite: "
CREATE TABLE IF NOT EXISTS engine_vms(
    agent_id TEXT PRIMARY KEY, mode TEXT NOT NULL DEFAULT 'off',
    platform TEXT NOT NULL DEFAULT 'exact',
    min_vcpus REAL, max_vcpus REAL, min_memory_gib REAL, max_memory_gib REAL,
    max_memory_platform_gib REAL,
    initial_done INTEGER NOT NULL DEFAULT 0, last_applied_ms INTEGER, last_command TEXT,
    updated_ms INTEGER NOT NULL);
",
    },
    Migration {
        version: 7,
        name: "persona database and operator feedback",
        sqlite: "
CREATE TABLE IF NOT EXISTS personas(
    slug TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    source TEXT NOT NULL CHECK(source IN ('builtin', 'imported')),
    updated_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS feedback(
    id INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    software TEXT NOT NULL,
    data_gb REAL,
    slug TEXT NOT NULL,
    source TEXT NOT NULL,
    created_ms INTEGER NOT NULL);
",
    },
    Migration {
        version: 8,
        name: "the command key each agent pinned",
        sqlite: "
ALTER TABLE agents ADD COLUMN command_key TEXT;
",
    },
    Migration {
        version: 9,
        name: "limits the engine learned from refused resizes",
        sqlite: "
ALTER TABLE engine_vms ADD COLUMN learned TEXT;
ALTER TABLE engine_vms ADD COLUMN learned_from TEXT;
",
    },
];

/// The newest step whose tables releases before this list created without recording a
/// version: up to it every step is `CREATE ... IF NOT EXISTS`, so a version-0 database
/// replays them harmlessly. Steps after it may be anything.
pub const LAST_BEFORE_THE_LIST: u32 = 7;

/// The version a database has after every migration.
pub fn latest_version() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// The version the database is at (0 before the first migration).
pub(super) fn version(c: &Connection) -> Result<u32, StoreError> {
    let v: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql("schema version"))?;
    Ok(u32::try_from(v).unwrap_or(0))
}

/// Brings the database up to the newest migration. Each step runs in an immediate
/// transaction that re-reads the version first, so two processes opening the same file
/// at once apply each step once.
pub(super) fn apply(c: &mut Connection) -> Result<(), StoreError> {
    for m in MIGRATIONS {
        if version(c)? >= m.version {
            continue;
        }
        let failed = |source: rusqlite::Error| StoreError::Migrate {
            version: m.version,
            name: m.name,
            source: source.into(),
        };
        let tx = c
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(failed)?;
        if version(&tx)? >= m.version {
            continue;
        }
        tx.execute_batch(m.sqlite).map_err(failed)?;
        // PRAGMA takes no parameters; the version is a number from the list above.
        tx.execute_batch(&format!("PRAGMA user_version = {}", m.version))
            .map_err(failed)?;
        tx.commit().map_err(failed)?;
        tracing::debug!(
            version = m.version,
            name = m.name,
            "database migration applied"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_one_to_n_without_gaps() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "{}", m.name);
        }
        assert_eq!(latest_version() as usize, MIGRATIONS.len());
    }

    /// A database made by the coordinator before the list (every table, version 0) is
    /// migrated without losing a row; a new one gets every table; both end at the newest
    /// version, and a second apply changes nothing.
    #[test]
    fn an_old_database_and_a_new_one_end_at_the_same_version() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old.db");
        {
            let c = Connection::open(&old).unwrap();
            // Releases before the list made the tables of migrations 1 to 7; later
            // steps (an ALTER TABLE) are not idempotent and never ran on such a file.
            for m in MIGRATIONS
                .iter()
                .filter(|m| m.version <= LAST_BEFORE_THE_LIST)
            {
                c.execute_batch(m.sqlite).unwrap();
            }
            c.execute(
                "INSERT INTO tokens(id, secret_hash, created_ms, expires_ms, uses_left) VALUES ('t', 'h', 1, 2, 3)",
                [],
            )
            .unwrap();
            assert_eq!(version(&c).unwrap(), 0);
        }
        let mut shapes = Vec::new();
        for path in [old, dir.path().join("new.db")] {
            let mut c = Connection::open(&path).unwrap();
            apply(&mut c).unwrap();
            assert_eq!(version(&c).unwrap(), latest_version());
            apply(&mut c).unwrap();
            assert_eq!(version(&c).unwrap(), latest_version());
            let tables: i64 = c
                .query_row(
                    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(tables, 14, "{}", path.display());
            let mut st = c
                .prepare("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")
                .unwrap();
            let shape: Vec<(String, String, Option<String>)> = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            shapes.push(shape);
        }
        assert_eq!(shapes[0], shapes[1], "same tables, columns and indexes");
        let c = Connection::open(dir.path().join("old.db")).unwrap();
        let n: i64 = c
            .query_row("SELECT COUNT(*) FROM tokens", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }
}
