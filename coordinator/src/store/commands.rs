//! The command channel's rows: one per command, its signed body (never changed), its
//! state and timestamps, the last progress and the result. The state machine's rules
//! live in `commands` (the feature); these operations only move rows as told, each
//! guarded by the state it expects, so two writers cannot both win.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use serde_json::Value;

use persona_shared::command::{Action, CommandState};

use super::{Store, StoreError, sql};

/// A command as listed and shown.
#[derive(Debug, Clone, Serialize)]
pub struct CommandRow {
    pub id: String,
    pub agent: String,
    pub kind: String,
    pub state: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub updated_ms: i64,
    pub sent_ms: Option<i64>,
    pub delivered_ms: Option<i64>,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// Times the body was written to a control stream.
    pub attempts: i64,
    pub step: Option<String>,
    pub bytes: Option<i64>,
    pub percent: Option<f64>,
    /// The result or the error.
    pub message: Option<String>,
    /// The action as JSON (for `show`).
    pub action: Value,
}

/// A command to store as `pending`.
#[derive(Debug, Clone, Copy)]
pub struct NewCommand<'a> {
    pub id: &'a str,
    pub agent_key: i64,
    pub agent_id: &'a str,
    pub action: &'a Action,
    /// The encoded command, as it is signed and sent.
    pub body: &'a [u8],
    pub created_ms: i64,
    pub expires_ms: i64,
}

/// A state change reported for a command, and its progress.
#[derive(Debug, Clone, Copy)]
pub struct CommandProgress<'a> {
    pub state: CommandState,
    pub at_ms: i64,
    /// The state says the agent has the command (sets `delivered_ms` once).
    pub delivered: bool,
    /// The state is final (sets `finished_ms`).
    pub finished: bool,
    pub step: Option<&'a str>,
    pub bytes: Option<i64>,
    pub percent: Option<f64>,
    pub message: Option<&'a str>,
    /// When the change makes the command `succeeded`, the agent now pins this command
    /// key: recorded in the same transaction, so the coordinator never signs with a key
    /// the agent has left (or the reverse).
    pub pins: Option<&'a str>,
}

/// A pending command waiting to be claimed.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingCommand {
    pub id: String,
    pub agent_key: i64,
    pub agent_id: String,
    /// The encoded command.
    pub body: Vec<u8>,
}

const COLUMNS: &str = "id, agent_id, kind, state, created_ms, expires_ms, updated_ms, sent_ms, delivered_ms, started_ms, finished_ms, attempts, step, bytes, percent, message, action";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CommandRow> {
    let action: String = r.get(16)?;
    Ok(CommandRow {
        id: r.get(0)?,
        agent: r.get(1)?,
        kind: r.get(2)?,
        state: r.get(3)?,
        created_ms: r.get(4)?,
        expires_ms: r.get(5)?,
        updated_ms: r.get(6)?,
        sent_ms: r.get(7)?,
        delivered_ms: r.get(8)?,
        started_ms: r.get(9)?,
        finished_ms: r.get(10)?,
        attempts: r.get(11)?,
        step: r.get(12)?,
        bytes: r.get(13)?,
        percent: r.get(14)?,
        message: r.get(15)?,
        action: serde_json::from_str(&action).unwrap_or(Value::Null),
    })
}

/// The stored text of an action: equal text is the same action.
fn action_text(a: &Action) -> Result<String, StoreError> {
    serde_json::to_string(a).map_err(|e| StoreError::Encode {
        what: "command action",
        reason: e.to_string(),
    })
}

fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

impl Store {
    /// Stores a new command as `pending`.
    pub fn insert_command(&self, c: &NewCommand<'_>) -> Result<(), StoreError> {
        let action = serde_json::to_string(c.action).unwrap_or_else(|_| "null".into());
        self.w()?
            .execute(
                "INSERT INTO commands(id, agent, agent_id, kind, body, action, state, created_ms, expires_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?8, ?7)",
                params![
                    c.id,
                    c.agent_key,
                    c.agent_id,
                    c.action.kind(),
                    c.body,
                    action,
                    c.created_ms,
                    c.expires_ms
                ],
            )
            .map_err(sql("insert command"))?;
        Ok(())
    }

    /// Commands, newest first, optionally of one agent, at most `limit`.
    pub fn list_commands(
        &self,
        agent_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<CommandRow>, StoreError> {
        let c = self.r()?;
        let limit = limit_of(limit);
        let rows = match agent_id {
            Some(a) => {
                let mut st = c
                    .prepare(&format!(
                        "SELECT {COLUMNS} FROM commands WHERE agent_id = ?1 ORDER BY created_ms DESC, id LIMIT ?2"
                    ))
                    .map_err(sql("list commands"))?;
                st.query_map(params![a, limit], row)
                    .map_err(sql("list commands"))?
                    .collect::<Result<Vec<_>, _>>()
            }
            None => {
                let mut st = c
                    .prepare(&format!(
                        "SELECT {COLUMNS} FROM commands ORDER BY created_ms DESC, id LIMIT ?1"
                    ))
                    .map_err(sql("list commands"))?;
                st.query_map(params![limit], row)
                    .map_err(sql("list commands"))?
                    .collect::<Result<Vec<_>, _>>()
            }
        };
        rows.map_err(sql("list commands"))
    }

    /// One command.
    pub fn get_command(&self, id: &str) -> Result<Option<CommandRow>, StoreError> {
        self.r()?
            .query_row(
                &format!("SELECT {COLUMNS} FROM commands WHERE id = ?1"),
                params![id],
                row,
            )
            .optional()
            .map_err(sql("get command"))
    }

    /// Cancels a command that is pending and was never sent; false when it is not (any
    /// more) in that state.
    pub fn cancel_unsent_command(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let n = self
            .w()?
            .execute(
                "UPDATE commands SET state = 'cancelled', finished_ms = ?2, updated_ms = ?2,
                    message = 'cancelled by the operator before delivery'
                 WHERE id = ?1 AND state = 'pending' AND sent_ms IS NULL",
                params![id, now_ms],
            )
            .map_err(sql("cancel command"))?;
        Ok(n == 1)
    }

    /// Applies a state change to command `id` of agent `agent_key`, if `allowed` says
    /// so given its current state. Returns whether the row changed: false for another
    /// agent's command, an unknown one, or a change `allowed` refused. The check and the
    /// write are one transaction.
    pub fn advance_command(
        &self,
        id: &str,
        agent_key: i64,
        allowed: impl FnOnce(CommandState) -> bool,
        p: &CommandProgress<'_>,
    ) -> Result<bool, StoreError> {
        let mut c = self.w()?;
        let tx = c.transaction().map_err(sql("update begin"))?;
        let cur: Option<String> = tx
            .query_row(
                "SELECT state FROM commands WHERE id = ?1 AND agent = ?2",
                params![id, agent_key],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("update lookup"))?;
        let Some(cur) = cur.as_deref().and_then(CommandState::parse) else {
            return Ok(false);
        };
        if !allowed(cur) {
            return Ok(false);
        }
        tx.execute(
            "UPDATE commands SET state = ?3, updated_ms = ?4,
                delivered_ms = COALESCE(delivered_ms, CASE WHEN ?5 THEN ?4 END),
                started_ms = COALESCE(started_ms, CASE WHEN ?3 = 'running' THEN ?4 END),
                finished_ms = CASE WHEN ?6 THEN ?4 ELSE finished_ms END,
                step = COALESCE(?7, step), bytes = COALESCE(?8, bytes),
                percent = CASE WHEN ?3 = 'succeeded' THEN 100.0 ELSE COALESCE(?9, percent) END,
                message = COALESCE(?10, message)
             WHERE id = ?1 AND agent = ?2",
            params![
                id,
                agent_key,
                p.state.as_str(),
                p.at_ms,
                p.delivered,
                p.finished,
                p.step,
                p.bytes,
                p.percent,
                p.message
            ],
        )
        .map_err(sql("apply update"))?;
        if let Some(fp) = p.pins.filter(|_| p.state == CommandState::Succeeded) {
            tx.execute(
                "UPDATE agents SET command_key = ?2 WHERE key = ?1",
                params![agent_key, fp],
            )
            .map_err(sql("record pinned command key"))?;
        }
        tx.commit().map_err(sql("update commit"))?;
        Ok(true)
    }

    /// Commands to (re)send to an agent: not final and not expired at `now_ms`, oldest
    /// first, at most 256: (id, body).
    pub fn deliverable_commands(
        &self,
        agent_key: i64,
        now_ms: i64,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let c = self.r()?;
        let mut st = c
            .prepare(
                "SELECT id, body FROM commands WHERE agent = ?1
                    AND state IN ('pending', 'delivered', 'running') AND expires_ms >= ?2
                 ORDER BY created_ms, id LIMIT 256",
            )
            .map_err(sql("deliverable"))?;
        let rows = st
            .query_map(params![agent_key, now_ms], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(sql("deliverable"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql("deliverable"))?;
        Ok(rows)
    }

    /// Whether agent `agent_key` has a command of `kind` not final and not expired at
    /// `now_ms`.
    pub fn has_live_command(
        &self,
        agent_key: i64,
        kind: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.r()?
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM commands WHERE agent = ?1 AND kind = ?2
                    AND state IN ('pending', 'delivered', 'running') AND expires_ms >= ?3)",
                params![agent_key, kind, now_ms],
                |r| r.get(0),
            )
            .map_err(sql("live command"))
    }

    /// Notes that a command's body was written to a control stream.
    pub fn mark_command_sent(&self, id: &str, now_ms: i64) -> Result<(), StoreError> {
        self.w()?
            .execute(
                "UPDATE commands SET sent_ms = ?2, attempts = attempts + 1 WHERE id = ?1",
                params![id, now_ms],
            )
            .map_err(sql("mark sent"))?;
        Ok(())
    }

    /// Marks commands past their expiry at `now_ms` that never started as expired, and
    /// deletes finished commands created before `delete_finished_before_ms`; returns how
    /// many expired.
    pub fn expire_commands(
        &self,
        now_ms: i64,
        delete_finished_before_ms: i64,
    ) -> Result<usize, StoreError> {
        let mut c = self.w()?;
        let tx = c.transaction().map_err(sql("expire begin"))?;
        let n = tx
            .execute(
                "UPDATE commands SET state = 'expired', finished_ms = ?1, updated_ms = ?1,
                    message = COALESCE(message, 'expired before the agent ran it')
                 WHERE state IN ('pending', 'delivered') AND expires_ms < ?1",
                params![now_ms],
            )
            .map_err(sql("expire"))?;
        tx.execute(
            "DELETE FROM commands WHERE created_ms < ?1
                AND state IN ('succeeded', 'failed', 'expired', 'cancelled')",
            params![delete_finished_before_ms],
        )
        .map_err(sql("prune commands"))?;
        tx.commit().map_err(sql("expire commit"))?;
        Ok(n)
    }

    /// Pending commands of one kind (e.g. "resize") not expired at `now_ms`, oldest
    /// first, at most 64.
    pub fn pending_commands(
        &self,
        kind: &str,
        now_ms: i64,
    ) -> Result<Vec<PendingCommand>, StoreError> {
        let c = self.r()?;
        let mut st = c
            .prepare(
                "SELECT id, agent, agent_id, body FROM commands
                 WHERE state = 'pending' AND kind = ?2 AND expires_ms >= ?1
                 ORDER BY created_ms, id LIMIT 64",
            )
            .map_err(sql("pending commands"))?;
        let rows = st
            .query_map(params![now_ms, kind], |r| {
                Ok(PendingCommand {
                    id: r.get(0)?,
                    agent_key: r.get(1)?,
                    agent_id: r.get(2)?,
                    body: r.get(3)?,
                })
            })
            .map_err(sql("pending commands"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql("pending commands"))?;
        Ok(rows)
    }

    /// Moves a pending command to running for the coordinator itself to run it (marks it
    /// delivered and started, records `step`, counts an attempt); false when it is no
    /// longer pending (cancelled, expired, or claimed by someone else).
    pub fn claim_pending_command(
        &self,
        id: &str,
        step: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let n = self
            .w()?
            .execute(
                "UPDATE commands SET state = 'running', updated_ms = ?2,
                    delivered_ms = COALESCE(delivered_ms, ?2), started_ms = COALESCE(started_ms, ?2),
                    step = ?3, attempts = attempts + 1
                 WHERE id = ?1 AND state = 'pending'",
                params![id, now_ms, step],
            )
            .map_err(sql("claim command"))?;
        Ok(n == 1)
    }

    /// The newest command of `agent_id` for exactly `action`: (id, state, message).
    pub fn latest_command_for(
        &self,
        agent_id: &str,
        action: &Action,
    ) -> Result<Option<(String, String, Option<String>)>, StoreError> {
        let text = action_text(action)?;
        self.r()?
            .query_row(
                "SELECT id, state, message FROM commands
                 WHERE agent_id = ?1 AND kind = ?3 AND action = ?2
                 ORDER BY created_ms DESC, rowid DESC LIMIT 1",
                params![agent_id, text, action.kind()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(sql("latest command for an action"))
    }
}
