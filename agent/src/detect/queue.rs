//! The durable event queue: every event the detectors raise is written here before
//! anything tries to send it, numbered with a per-agent id that never repeats (SQLite
//! AUTOINCREMENT never hands out a number twice, even after deletes), and kept until the
//! coordinator acknowledges it with `EventAck`. After a reconnect the link resends
//! whatever is unacknowledged, oldest first; the coordinator de-duplicates by
//! (agent, id). A link that is down therefore delays events, never loses them.
//!
//! It lives in its own table of the outbox database (`state_dir/outbox.db`, its own
//! connection; WAL lets it sit beside the batch outbox's), so one file holds everything
//! the agent still owes the coordinator. The queue is bounded: beyond [`MAX_EVENTS`]
//! the oldest unacknowledged events are dropped and counted, so a VM that flaps for
//! weeks without a coordinator cannot fill its disk. Events are stored as JSON.
//!
//! What it is not: the sender (the link) or the detector.

use std::path::{Path, PathBuf};

use persona_shared::events::AgentEvent;
use persona_shared::sqlite::{self, OpenOptions, SqliteError, Synchronous};
use rusqlite::{Connection, OptionalExtension, params};

/// Most events kept unacknowledged.
pub const MAX_EVENTS: i64 = 10_000;

/// Queue errors, each with the database file.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("event queue: {0}")]
    Open(#[from] SqliteError),
    #[error("event queue {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("event queue {path}: event {id} is stored but unreadable: {source}")]
    Corrupt {
        path: PathBuf,
        id: i64,
        source: serde_json::Error,
    },
    #[error("event queue {path}: cannot encode an event: {source}")]
    Encode {
        path: PathBuf,
        source: serde_json::Error,
    },
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms    INTEGER NOT NULL,
    event    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS event_counters (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO event_counters(key, value) VALUES ('dropped', 0), ('acked', 0);
";

/// The queue. Not `Sync`: share it behind a mutex; every call is short.
#[derive(Debug)]
pub struct EventQueue {
    conn: Connection,
    path: PathBuf,
}

impl EventQueue {
    /// Opens (or creates) the queue's tables in the database at `path`.
    pub fn open(path: &Path) -> Result<EventQueue, QueueError> {
        let sq = |source| QueueError::Sqlite {
            path: path.to_owned(),
            source,
        };
        // The queue's tables live in the outbox's file: the same durability and mode.
        let conn = sqlite::open(
            path,
            OpenOptions::new(Synchronous::Normal).mode(crate::outbox::DB_MODE),
        )?;
        conn.execute_batch(SCHEMA).map_err(sq)?;
        Ok(EventQueue {
            conn,
            path: path.to_owned(),
        })
    }

    fn sq(&self) -> impl FnOnce(rusqlite::Error) -> QueueError + '_ {
        |source| QueueError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Stores `ev`, giving it its id (written into `ev.id`).
    pub fn push(&mut self, ev: &mut AgentEvent) -> Result<u64, QueueError> {
        let tx = self
            .conn
            .transaction()
            .map_err(|source| QueueError::Sqlite {
                path: self.path.clone(),
                source,
            })?;
        let sq = |source| QueueError::Sqlite {
            path: self.path.clone(),
            source,
        };
        // The id is the row id; insert a placeholder to learn it, then store the event
        // carrying its own id (what is sent is exactly what is stored).
        tx.execute(
            "INSERT INTO events(at_ms, event) VALUES (?1, '')",
            params![ev.at_ms],
        )
        .map_err(sq)?;
        let id = tx.last_insert_rowid();
        ev.id = u64::try_from(id).unwrap_or(0);
        let json = serde_json::to_string(&*ev).map_err(|source| QueueError::Encode {
            path: self.path.clone(),
            source,
        })?;
        tx.execute(
            "UPDATE events SET event = ?1 WHERE id = ?2",
            params![json, id],
        )
        .map_err(sq)?;
        let over: i64 = tx
            .query_row("SELECT COUNT(*) - ?1 FROM events", [MAX_EVENTS], |r| {
                r.get(0)
            })
            .map_err(sq)?;
        if over > 0 {
            tx.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT ?1)",
                [over],
            )
            .map_err(sq)?;
            tx.execute(
                "UPDATE event_counters SET value = value + ?1 WHERE key = 'dropped'",
                [over],
            )
            .map_err(sq)?;
        }
        tx.commit().map_err(sq)?;
        Ok(ev.id)
    }

    /// Unacknowledged events with an id above `after`, oldest first, at most `limit`.
    pub fn pending_after(&self, after: u64, limit: usize) -> Result<Vec<AgentEvent>, QueueError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT id, event FROM events WHERE id > ?1 ORDER BY id LIMIT ?2")
            .map_err(self.sq())?;
        let rows = st
            .query_map(
                params![
                    i64::try_from(after).unwrap_or(i64::MAX),
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            )
            .map_err(self.sq())?;
        let mut out = Vec::new();
        for row in rows {
            let (id, json) = row.map_err(self.sq())?;
            let ev = serde_json::from_str(&json).map_err(|source| QueueError::Corrupt {
                path: self.path.clone(),
                id,
                source,
            })?;
            out.push(ev);
        }
        Ok(out)
    }

    /// Deletes an acknowledged event; false if it was not (or no longer) queued.
    pub fn ack(&mut self, id: u64) -> Result<bool, QueueError> {
        let id = i64::try_from(id).unwrap_or(i64::MAX);
        let n = self
            .conn
            .execute("DELETE FROM events WHERE id = ?1", [id])
            .map_err(self.sq())?;
        if n > 0 {
            self.conn
                .execute(
                    "UPDATE event_counters SET value = value + 1 WHERE key = 'acked'",
                    [],
                )
                .map_err(self.sq())?;
        }
        Ok(n > 0)
    }

    /// (unacknowledged, acknowledged so far, dropped so far).
    pub fn counts(&self) -> Result<(u64, u64, u64), QueueError> {
        let pending: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
            .map_err(self.sq())?;
        let get = |k: &str| -> Result<i64, QueueError> {
            self.conn
                .query_row(
                    "SELECT value FROM event_counters WHERE key = ?1",
                    [k],
                    |r| r.get(0),
                )
                .optional()
                .map(|v| v.unwrap_or(0))
                .map_err(self.sq())
        };
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok((n(pending), n(get("acked")?), n(get("dropped")?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use persona_shared::events::{EventKind, Evidence, Resource, Severity};

    fn ev(at: i64) -> AgentEvent {
        AgentEvent {
            id: 0,
            kind: EventKind::Pressure(Resource::Io),
            severity: Severity::Warning,
            since_ms: at - 1000,
            at_ms: at,
            summary: "io pressure".into(),
            evidence: vec![Evidence {
                name: "psi.io.some_stall_pct".into(),
                value: 42.0,
                threshold: 20.0,
            }],
        }
    }

    #[test]
    fn ids_increase_survive_reopen_and_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let mut q = EventQueue::open(&path).unwrap();
        let (mut a, mut b) = (ev(1000), ev(2000));
        assert_eq!(q.push(&mut a).unwrap(), 1);
        assert_eq!(q.push(&mut b).unwrap(), 2);
        assert!(q.ack(2).unwrap());
        assert!(!q.ack(2).unwrap(), "a second ack is a no-op");
        drop(q);
        let mut q = EventQueue::open(&path).unwrap();
        let pending = q.pending_after(0, 10).unwrap();
        assert_eq!(pending, vec![a.clone()]);
        assert_eq!(pending[0].id, 1);
        let mut c = ev(3000);
        assert_eq!(q.push(&mut c).unwrap(), 3, "id 2 is not handed out again");
        assert_eq!(q.pending_after(1, 10).unwrap().len(), 1);
        assert_eq!(q.counts().unwrap(), (2, 1, 0));
    }
}
