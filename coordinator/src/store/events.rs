//! Agent events (`events`): stored once per (agent, id), so an event the agent resends
//! after a reconnect is not stored twice; listed newest first; deleted with the
//! telemetry retention.

use rusqlite::params;
use serde::Serialize;
use serde_json::{Value, json};

use persona_shared::events::{AgentEvent, EventKind};

use super::{Store, StoreError, sql};

/// An event as stored and listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredEvent {
    pub agent_id: String,
    pub id: u64,
    pub kind: String,
    pub resource: Option<String>,
    pub severity: String,
    pub since_ms: i64,
    pub at_ms: i64,
    pub received_ms: i64,
    pub summary: String,
    pub evidence: Value,
    /// The process of a runaway-process event.
    pub comm: Option<String>,
}

/// Evidence as JSON; non-finite numbers (which JSON cannot carry) become null.
fn evidence_json(ev: &AgentEvent) -> Value {
    let num = |x: f64| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number);
    Value::Array(
        ev.evidence
            .iter()
            .map(|e| json!({"name": e.name, "value": num(e.value), "threshold": num(e.threshold)}))
            .collect(),
    )
}

impl Store {
    /// Stores one event of `agent_id`, received at `received_ms`; true if it is new,
    /// false if (agent, id) was already stored.
    pub fn insert_event(
        &self,
        agent_id: &str,
        ev: &AgentEvent,
        received_ms: i64,
    ) -> Result<bool, StoreError> {
        let comm = match &ev.kind {
            EventKind::RunawayProcess { comm } => Some(comm.as_str()),
            _ => None,
        };
        let evidence = evidence_json(ev);
        let n = self
            .w()?
            .execute(
                "INSERT OR IGNORE INTO events(agent_id, id, kind, resource, severity, since_ms, at_ms, summary, evidence, received_ms, comm)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    agent_id,
                    i64::try_from(ev.id).unwrap_or(i64::MAX),
                    ev.kind.name(),
                    ev.kind.resource().map(|r| r.as_str()),
                    ev.severity.as_str(),
                    ev.since_ms,
                    ev.at_ms,
                    ev.summary,
                    evidence.to_string(),
                    received_ms,
                    comm,
                ],
            )
            .map_err(sql("insert event"))?;
        Ok(n > 0)
    }

    /// Events at or after `since_ms`, newest first, optionally of one agent, at most `limit`.
    pub fn list_events(
        &self,
        agent_id: Option<&str>,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let conn = self.r()?;
        let mut st = conn
            .prepare_cached(
                "SELECT agent_id, id, kind, resource, severity, since_ms, at_ms, received_ms, summary, evidence, comm
                 FROM events WHERE at_ms >= ?1 AND (?2 IS NULL OR agent_id = ?2)
                 ORDER BY at_ms DESC, agent_id, id DESC LIMIT ?3",
            )
            .map_err(sql("list events"))?;
        let rows = st
            .query_map(
                params![since_ms, agent_id, i64::try_from(limit).unwrap_or(0)],
                |r| {
                    let evidence: String = r.get(9)?;
                    Ok(StoredEvent {
                        agent_id: r.get(0)?,
                        id: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                        kind: r.get(2)?,
                        resource: r.get(3)?,
                        severity: r.get(4)?,
                        since_ms: r.get(5)?,
                        at_ms: r.get(6)?,
                        received_ms: r.get(7)?,
                        summary: r.get(8)?,
                        evidence: serde_json::from_str(&evidence).unwrap_or(Value::Null),
                        comm: r.get(10)?,
                    })
                },
            )
            .map_err(sql("list events"))?;
        rows.collect::<Result<_, _>>().map_err(sql("list events"))
    }

    /// Deletes events older than `cutoff_ms`; returns how many went.
    pub fn delete_events_before(&self, cutoff_ms: i64) -> Result<usize, StoreError> {
        self.w()?
            .execute("DELETE FROM events WHERE at_ms < ?1", [cutoff_ms])
            .map_err(sql("delete old events"))
    }
}
