//! The command log, `state_dir/commands.db`: every command id the agent accepted, with
//! its last state, and the model versions a signed command granted. An id is on disk
//! (synchronous=FULL) before its command runs, so a resent command, even after a restart,
//! is answered with its known state and never run twice. A pre-load also keeps its
//! signed bytes and one result line per finished step, so after a restart it resumes
//! (signature and expiry checked again) after the steps already done instead of being
//! marked interrupted. What this is not: signature checks (`verify`) or running
//! commands (`runner`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use persona_shared::command::{CommandState, SignedCommand};
use persona_shared::preload::StepResult;
use persona_shared::sqlite::{self, OpenOptions, SqliteError, Synchronous};
use rusqlite::{Connection, OptionalExtension, params};

/// Name of the command log in the state dir.
pub const COMMANDS_FILE: &str = "commands.db";
/// Ids older than this are forgotten. The coordinator lets a command live at most 7 days
/// and the agent refuses an expired one by its signed expiry, so an id this old can never
/// run again anyway.
const FORGET_AFTER_MS: i64 = 8 * 24 * 3600 * 1000;

/// Errors of the command runner's set-up and log.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("command log: {0}")]
    Open(#[from] SqliteError),
    #[error("command log {path}: {source}")]
    Log {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot read the CA certificate {path}: {reason}")]
    Ca { path: PathBuf, reason: String },
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// What the log knows about an id.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// First time: recorded, run it.
    New,
    /// Seen before: its last known state and message.
    Seen {
        state: CommandState,
        message: Option<String>,
    },
}

/// The persistent record of accepted command ids (and model grants).
#[derive(Debug)]
pub struct CommandLog {
    conn: Connection,
    path: PathBuf,
}

impl CommandLog {
    /// Opens `path`, marking commands that were running when the agent stopped as failed.
    pub fn open(path: &Path) -> Result<CommandLog, CommandError> {
        let err = |source| CommandError::Log {
            path: path.to_owned(),
            source,
        };
        // An id must be on disk before its command runs: one fsync per command is cheap.
        // Private like the outbox: it names what the coordinator had this VM do.
        let conn = sqlite::open(
            path,
            OpenOptions::new(Synchronous::Full).mode(crate::outbox::DB_MODE),
        )?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS executed(
                id TEXT PRIMARY KEY, kind TEXT NOT NULL, received_ms INTEGER NOT NULL,
                state TEXT NOT NULL, finished_ms INTEGER, message TEXT);
             CREATE TABLE IF NOT EXISTS model_grants(
                kind TEXT NOT NULL, version TEXT NOT NULL, sha256 BLOB NOT NULL,
                granted_ms INTEGER NOT NULL, PRIMARY KEY(kind, version));",
        )
        .map_err(err)?;
        // Added after the first release: the signed command of a pre-load and its step
        // results, for resuming.
        for (col, ty) in [("body", "BLOB"), ("signature", "BLOB"), ("steps", "TEXT")] {
            let has: bool = conn
                .query_row(
                    "SELECT COUNT(*) FROM pragma_table_info('executed') WHERE name = ?1",
                    params![col],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(err)?
                > 0;
            if !has {
                conn.execute_batch(&format!("ALTER TABLE executed ADD COLUMN {col} {ty}"))
                    .map_err(err)?;
            }
        }
        conn.execute(
            "UPDATE executed SET state = 'failed', finished_ms = ?1,
                message = 'interrupted: the agent stopped before the command finished'
             WHERE state IN ('delivered', 'running') AND (kind != 'preload' OR body IS NULL)",
            params![now_ms()],
        )
        .map_err(err)?;
        conn.execute(
            "DELETE FROM executed WHERE received_ms < ?1",
            params![now_ms() - FORGET_AFTER_MS],
        )
        .map_err(err)?;
        Ok(CommandLog {
            conn,
            path: path.to_owned(),
        })
    }

    fn err(&self) -> impl FnOnce(rusqlite::Error) -> CommandError + '_ {
        move |source| CommandError::Log {
            path: self.path.clone(),
            source,
        }
    }

    /// Records `id` unless it is known; says which.
    pub fn claim(&self, id: &str, kind: &str) -> Result<Claim, CommandError> {
        self.claim_signed(id, kind, None)
    }

    /// [`CommandLog::claim`], keeping the signed command (body, signature) so that it can
    /// be resumed after a restart.
    pub fn claim_signed(
        &self,
        id: &str,
        kind: &str,
        signed: Option<&SignedCommand>,
    ) -> Result<Claim, CommandError> {
        let n = self
            .conn
            .execute(
                "INSERT OR IGNORE INTO executed(id, kind, received_ms, state, body, signature)
                 VALUES (?1, ?2, ?3, 'delivered', ?4, ?5)",
                params![
                    id,
                    kind,
                    now_ms(),
                    signed.map(|s| s.body.as_slice()),
                    signed.map(|s| s.signature.as_slice())
                ],
            )
            .map_err(self.err())?;
        if n == 1 {
            return Ok(Claim::New);
        }
        let row: Option<(String, Option<String>)> = self
            .conn
            .query_row(
                "SELECT state, message FROM executed WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.err())?;
        let (state, message) = row.unwrap_or_else(|| ("failed".into(), None));
        Ok(Claim::Seen {
            state: CommandState::parse(&state).unwrap_or(CommandState::Failed),
            message,
        })
    }

    /// Records a state (and, for a final one, the message).
    pub fn set_state(
        &self,
        id: &str,
        state: CommandState,
        message: Option<&str>,
    ) -> Result<(), CommandError> {
        let finished = state.is_final().then(now_ms);
        self.conn
            .execute(
                "UPDATE executed SET state = ?2, finished_ms = COALESCE(?3, finished_ms),
                    message = COALESCE(?4, message) WHERE id = ?1",
                params![id, state.as_str(), finished, message],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// The pre-loads that were running or queued when the agent stopped, to be resumed:
    /// their signed commands, oldest first.
    pub fn resumable(&self) -> Result<Vec<SignedCommand>, CommandError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT body, signature FROM executed
                 WHERE kind = 'preload' AND state IN ('delivered', 'running')
                   AND body IS NOT NULL AND signature IS NOT NULL
                 ORDER BY received_ms",
            )
            .map_err(self.err())?;
        let rows = st
            .query_map([], |r| {
                Ok(SignedCommand {
                    body: r.get(0)?,
                    signature: r.get(1)?,
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
    }

    /// Appends one step's result to the command's record.
    pub fn add_step_result(&self, id: &str, r: &StepResult) -> Result<(), CommandError> {
        self.conn
            .execute(
                "UPDATE executed SET steps = COALESCE(steps || char(10), '') || ?2 WHERE id = ?1",
                params![id, r.line()],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// The step results recorded for a command (empty when none).
    pub fn step_results(&self, id: &str) -> Result<Vec<StepResult>, CommandError> {
        let steps: Option<String> = self
            .conn
            .query_row(
                "SELECT steps FROM executed WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())?
            .flatten();
        Ok(steps.map(|s| StepResult::parse_all(&s)).unwrap_or_default())
    }

    /// Records that the model `kind` at `version` with this checksum may be accepted.
    pub fn grant_model(
        &self,
        kind: &str,
        version: &str,
        sha256: &[u8],
    ) -> Result<(), CommandError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO model_grants(kind, version, sha256, granted_ms) VALUES (?1, ?2, ?3, ?4)",
                params![kind, version, sha256, now_ms()],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Whether a signed command granted this model (the model push handler may ask).
    pub fn model_granted(
        &self,
        kind: &str,
        version: &str,
        sha256: &[u8],
    ) -> Result<bool, CommandError> {
        self.conn
            .query_row(
                "SELECT 1 FROM model_grants WHERE kind = ?1 AND version = ?2 AND sha256 = ?3",
                params![kind, version, sha256],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(self.err())
    }
}

/// Whether a signed `ModelUpdate` granted this model, read from the state dir's command
/// log by whoever handles a model push (a read of its own; the runner keeps writing).
pub fn model_granted_in(
    state_dir: &Path,
    kind: &str,
    version: &str,
    sha256: &[u8],
) -> Result<bool, CommandError> {
    let path = state_dir.join(COMMANDS_FILE);
    let err = |source| CommandError::Log {
        path: path.clone(),
        source,
    };
    let conn = sqlite::open_read_only(&path, Duration::from_secs(5))?;
    conn.query_row(
        "SELECT 1 FROM model_grants WHERE kind = ?1 AND version = ?2 AND sha256 = ?3",
        params![kind, version, sha256],
        |_| Ok(()),
    )
    .optional()
    .map(|r| r.is_some())
    .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 18, pre-load: a running plan survives a restart with its signed command and
    /// the results of the steps it finished, instead of being marked interrupted.
    #[test]
    fn a_running_preload_is_kept_for_resuming() {
        use persona_shared::preload::StepStatus;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(COMMANDS_FILE);
        let signed = SignedCommand {
            body: vec![1, 2, 3],
            signature: vec![4, 5],
        };
        {
            let log = CommandLog::open(&p).unwrap();
            assert_eq!(
                log.claim_signed("c-p", "preload", Some(&signed)).unwrap(),
                Claim::New
            );
            log.set_state("c-p", CommandState::Running, None).unwrap();
            log.add_step_result(
                "c-p",
                &StepResult {
                    index: 0,
                    status: StepStatus::Done,
                    detail: "apt curl".into(),
                },
            )
            .unwrap();
        }
        let log = CommandLog::open(&p).unwrap();
        assert_eq!(log.resumable().unwrap(), vec![signed]);
        let steps = log.step_results("c-p").unwrap();
        assert_eq!(steps.len(), 1);
        assert_eq!((steps[0].index, steps[0].status), (0, StepStatus::Done));
        log.set_state("c-p", CommandState::Succeeded, Some("ok"))
            .unwrap();
        assert!(log.resumable().unwrap().is_empty());
    }

    #[test]
    fn the_log_claims_each_id_once_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(COMMANDS_FILE);
        {
            let log = CommandLog::open(&p).unwrap();
            assert_eq!(log.claim("c-1", "preload").unwrap(), Claim::New);
            assert!(matches!(
                log.claim("c-1", "preload").unwrap(),
                Claim::Seen { .. }
            ));
            log.set_state("c-1", CommandState::Succeeded, Some("done"))
                .unwrap();
            assert_eq!(log.claim("c-2", "resize").unwrap(), Claim::New);
            log.set_state("c-2", CommandState::Running, None).unwrap();
            log.grant_model("mirror", "v2", &[1; 32]).unwrap();
        }
        let log = CommandLog::open(&p).unwrap();
        assert_eq!(
            log.claim("c-1", "preload").unwrap(),
            Claim::Seen {
                state: CommandState::Succeeded,
                message: Some("done".into())
            }
        );
        // Interrupted by the restart: failed, and never run again.
        match log.claim("c-2", "resize").unwrap() {
            Claim::Seen { state, message } => {
                assert_eq!(state, CommandState::Failed);
                assert!(message.unwrap().contains("interrupted"));
            }
            other => panic!("{other:?}"),
        }
        assert!(log.model_granted("mirror", "v2", &[1; 32]).unwrap());
        assert!(log.resumable().unwrap().is_empty());
        assert!(!log.model_granted("mirror", "v2", &[2; 32]).unwrap());
        assert!(model_granted_in(dir.path(), "mirror", "v2", &[1; 32]).unwrap());
        assert!(!model_granted_in(dir.path(), "mirror", "v3", &[1; 32]).unwrap());
    }

    /// Issue 18, items 11 and 17: the command log is 0600, WAL files included, even
    /// under a permissive umask.
    #[test]
    fn the_command_log_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(COMMANDS_FILE);
        let log = CommandLog::open(&p).unwrap();
        log.claim("c-1", "resize").unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let f = dir.path().join(format!("{COMMANDS_FILE}{suffix}"));
            let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
        }
    }
}
