//! The mirror model registry (`mirror_models`: each trained or imported model file by
//! version) and what each agent runs (`agent_models`: the version it announced, the
//! last offer and its outcome).

use rusqlite::{OptionalExtension, params};
use serde_json::Value;

use persona_shared::protocol::ModelStatus;

use super::{Store, StoreError, hex, sql};

/// A model file to keep.
#[derive(Debug, Clone, Copy)]
pub struct NewMirrorModel<'a> {
    pub version: &'a str,
    pub sha256: &'a [u8; 32],
    pub bytes: &'a [u8],
    pub created_ms: i64,
    /// The training report (or where the file came from).
    pub report: &'a Value,
}

/// A stored model file.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorModelRow {
    pub version: String,
    pub bytes: Vec<u8>,
    pub created_ms: i64,
}

/// What an agent runs and the outcome of the last offer.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentModel {
    pub running: Option<String>,
    pub offered: Option<String>,
    pub accepted: Option<bool>,
    pub message: Option<String>,
    pub updated_ms: i64,
}

impl Store {
    /// Stores a model file by version; storing a version again keeps the first bytes and
    /// takes the new time and report.
    pub fn put_mirror_model(&self, m: &NewMirrorModel<'_>) -> Result<(), StoreError> {
        self.w()?
            .execute(
                "INSERT INTO mirror_models(version, sha256, bytes, created_ms, report) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(version) DO UPDATE SET created_ms = excluded.created_ms, report = excluded.report",
                params![
                    m.version,
                    hex(m.sha256),
                    m.bytes,
                    m.created_ms,
                    m.report.to_string()
                ],
            )
            .map_err(sql("register mirror model"))?;
        Ok(())
    }

    /// Offers the stored models to `pick`, newest first, until it returns Some (the
    /// answer); None when it took none. Models are read one at a time.
    pub fn find_mirror_model<T>(
        &self,
        mut pick: impl FnMut(MirrorModelRow) -> Option<T>,
    ) -> Result<Option<T>, StoreError> {
        let c = self.r()?;
        let q = sql("mirror models");
        let mut st = c
            .prepare("SELECT version, bytes, created_ms FROM mirror_models ORDER BY created_ms DESC, version")
            .map_err(&q)?;
        let mut rows = st.query([]).map_err(&q)?;
        while let Some(r) = rows.next().map_err(&q)? {
            let row = MirrorModelRow {
                version: r.get(0).map_err(&q)?,
                bytes: r.get(1).map_err(&q)?,
                created_ms: r.get(2).map_err(&q)?,
            };
            if let Some(t) = pick(row) {
                return Ok(Some(t));
            }
        }
        Ok(None)
    }

    /// Records the version an agent announced in Hello (before any push).
    pub fn record_model_hello(
        &self,
        agent_id: &str,
        running: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.w()?
            .execute(
                "INSERT INTO agent_models(agent_id, running, updated_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(agent_id) DO UPDATE SET running = excluded.running, updated_ms = excluded.updated_ms",
                params![agent_id, running, now_ms],
            )
            .map_err(sql("record model hello"))?;
        Ok(())
    }

    /// Records an agent's answer to a push.
    pub fn record_model_status(
        &self,
        agent_id: &str,
        s: &ModelStatus,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.w()?
            .execute(
                "INSERT INTO agent_models(agent_id, running, offered, accepted, message, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(agent_id) DO UPDATE SET running = excluded.running, offered = excluded.offered,
                   accepted = excluded.accepted, message = excluded.message, updated_ms = excluded.updated_ms",
                params![agent_id, s.running, s.offered, s.accepted, s.message, now_ms],
            )
            .map_err(sql("record model status"))?;
        Ok(())
    }

    /// Records that `offered` was not pushed to the agent because it refused the
    /// command that authorises it.
    pub fn record_model_refusal(
        &self,
        agent_id: &str,
        offered: &str,
        message: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.w()?
            .execute(
                "INSERT INTO agent_models(agent_id, offered, accepted, message, updated_ms)
                 VALUES (?1, ?2, 0, ?3, ?4)
                 ON CONFLICT(agent_id) DO UPDATE SET offered = excluded.offered, accepted = 0,
                   message = excluded.message, updated_ms = excluded.updated_ms",
                params![agent_id, offered, message, now_ms],
            )
            .map_err(sql("record model refusal"))?;
        Ok(())
    }

    /// What an agent runs; None before its first Hello.
    pub fn agent_model(&self, agent_id: &str) -> Result<Option<AgentModel>, StoreError> {
        self.r()?
            .query_row(
                "SELECT running, offered, accepted, message, updated_ms FROM agent_models WHERE agent_id = ?1",
                params![agent_id],
                |r| {
                    Ok(AgentModel {
                        running: r.get(0)?,
                        offered: r.get(1)?,
                        accepted: r.get(2)?,
                        message: r.get(3)?,
                        updated_ms: r.get(4)?,
                    })
                },
            )
            .optional()
            .map_err(sql("agent model"))
    }
}
