//! Agent events in the coordinator: the `events` table, the control-stream handler that
//! stores an `AgentMsg::Event` and answers `CoordMsg::EventAck`, and the
//! `GET /v1/events` route behind `personactl events`.
//!
//! An event is acknowledged only after it is committed, and stored with
//! `INSERT OR IGNORE` on the primary key (agent, id), so an event the agent resends after
//! a reconnect is acknowledged again and not stored twice. Events are checked before they
//! are stored (sizes, times, finite numbers); a bad one is refused on the control stream
//! and not acknowledged. The engine reads the same table (see the schema below: its
//! columns are a contract; add columns, never rename).
//!
//! Events and belief snapshots older than the telemetry retention are deleted with it.
//!
//! What it is not: detection (the agent's) or policy (the engine's).

use std::sync::Arc;

use hyper::{Method, StatusCode};
use quinn::SendStream;
use rusqlite::params;
use serde::Serialize;
use serde_json::{Value, json};

use persona_shared::events::AgentEvent;
use persona_shared::protocol::{self, CoordMsg};

use crate::api::{Resp, error, reply};
use crate::server::Shared;
use crate::store::{self, AgentAuth, Store, StoreError};

/// The events table. Additions to the agreed columns: `received_ms` (when the
/// coordinator stored it, for measuring delivery latency) and `comm` (the process of a
/// runaway-process event). `evidence` is always a JSON array of
/// `{"name", "value", "threshold"}` (null where a number was not finite).
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events(
    agent_id TEXT NOT NULL, id INTEGER NOT NULL, kind TEXT NOT NULL, resource TEXT NULL,
    severity TEXT NOT NULL, since_ms INTEGER NOT NULL, at_ms INTEGER NOT NULL,
    summary TEXT NOT NULL, evidence TEXT NOT NULL, received_ms INTEGER NOT NULL DEFAULT 0,
    comm TEXT NULL,
    PRIMARY KEY(agent_id, id));
CREATE INDEX IF NOT EXISTS events_by_time ON events(at_ms);
CREATE INDEX IF NOT EXISTS events_by_agent_time ON events(agent_id, at_ms);
";

/// Longest summary accepted, in bytes.
pub const MAX_SUMMARY: usize = 1024;
/// Most evidence lines per event, and the longest evidence name.
pub const MAX_EVIDENCE: usize = 32;
pub const MAX_NAME: usize = 200;
/// Most events one listing returns.
pub const MAX_LIST: usize = 10_000;

fn sql(context: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sql { context, source }
}

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

/// Checks an event from the network; the reason names the field.
pub fn validate(ev: &AgentEvent) -> Result<(), String> {
    if ev.id == 0 || i64::try_from(ev.id).is_err() {
        return Err(format!("event id {} is out of range", ev.id));
    }
    if ev.summary.len() > MAX_SUMMARY {
        return Err(format!(
            "event {}: summary of {} bytes (at most {MAX_SUMMARY})",
            ev.id,
            ev.summary.len()
        ));
    }
    if ev.evidence.len() > MAX_EVIDENCE {
        return Err(format!(
            "event {}: {} evidence lines (at most {MAX_EVIDENCE})",
            ev.id,
            ev.evidence.len()
        ));
    }
    if let Some(e) = ev.evidence.iter().find(|e| e.name.len() > MAX_NAME) {
        return Err(format!(
            "event {}: evidence name of {} bytes (at most {MAX_NAME})",
            ev.id,
            e.name.len()
        ));
    }
    if let persona_shared::events::EventKind::RunawayProcess { comm } = &ev.kind
        && comm.len() > 64
    {
        return Err(format!("event {}: process name too long", ev.id));
    }
    if ev.since_ms <= 0 || ev.at_ms <= 0 || ev.since_ms > ev.at_ms {
        return Err(format!(
            "event {}: since {} and at {} are not a time range",
            ev.id, ev.since_ms, ev.at_ms
        ));
    }
    Ok(())
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

/// Stores one event; true if it is new, false if (agent, id) was already stored.
pub fn store_event(store: &Store, agent_id: &str, ev: &AgentEvent) -> Result<bool, StoreError> {
    let comm = match &ev.kind {
        persona_shared::events::EventKind::RunawayProcess { comm } => Some(comm.as_str()),
        _ => None,
    };
    let evidence = evidence_json(ev);
    let conn = store.w()?;
    let n = conn
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
                store::now_ms(),
                comm,
            ],
        )
        .map_err(sql("insert event"))?;
    Ok(n > 0)
}

/// Events at or after `since_ms`, newest first, optionally of one agent, at most `limit`.
pub fn list_events(
    store: &Store,
    agent_id: Option<&str>,
    since_ms: i64,
    limit: usize,
) -> Result<Vec<StoredEvent>, StoreError> {
    let conn = store.r()?;
    let mut st = conn
        .prepare_cached(
            "SELECT agent_id, id, kind, resource, severity, since_ms, at_ms, received_ms, summary, evidence, comm
             FROM events WHERE at_ms >= ?1 AND (?2 IS NULL OR agent_id = ?2)
             ORDER BY at_ms DESC, agent_id, id DESC LIMIT ?3",
        )
        .map_err(sql("list events"))?;
    let rows = st
        .query_map(
            params![
                since_ms,
                agent_id,
                i64::try_from(limit.min(MAX_LIST)).unwrap_or(0)
            ],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, i64>(7)?,
                    r.get::<_, String>(8)?,
                    r.get::<_, String>(9)?,
                    r.get::<_, Option<String>>(10)?,
                ))
            },
        )
        .map_err(sql("list events"))?;
    let mut out = Vec::new();
    for row in rows {
        let (
            agent_id,
            id,
            kind,
            resource,
            severity,
            since_ms,
            at_ms,
            received_ms,
            summary,
            ev,
            comm,
        ) = row.map_err(sql("list events"))?;
        let evidence: Value = serde_json::from_str(&ev).unwrap_or(Value::Null);
        out.push(StoredEvent {
            agent_id,
            id: u64::try_from(id).unwrap_or(0),
            kind,
            resource,
            severity,
            since_ms,
            at_ms,
            received_ms,
            summary,
            evidence,
            comm,
        });
    }
    Ok(out)
}

/// Deletes events and belief snapshots older than `cutoff_ms` (the telemetry retention);
/// returns how many rows went.
pub fn delete_before(store: &Store, cutoff_ms: i64) -> Result<usize, StoreError> {
    let conn = store.w()?;
    let a = conn
        .execute("DELETE FROM events WHERE at_ms < ?1", [cutoff_ms])
        .map_err(sql("delete old events"))?;
    let b = conn
        .execute(
            "DELETE FROM persona_belief_history WHERE at_ms < ?1",
            [cutoff_ms],
        )
        .map_err(sql("delete old belief snapshots"))?;
    Ok(a + b)
}

async fn send(tx: &mut SendStream, msg: &CoordMsg, max: usize) -> Result<(), String> {
    let mut buf = Vec::new();
    protocol::encode_frame(msg, &mut buf, max).map_err(|e| e.to_string())?;
    tx.write_all(&buf).await.map_err(|e| e.to_string())
}

/// Handles `AgentMsg::Event` on the control stream: checks it, stores it (off the async
/// threads), then answers `EventAck`. An invalid event is logged, not stored, and still
/// acknowledged (resending it cannot help); a store failure is not acknowledged, so the
/// agent resends it later. Err only when the stream itself failed.
pub async fn on_event(
    tx: &mut SendStream,
    ev: AgentEvent,
    auth: &AgentAuth,
    shared: &Arc<Shared>,
) -> Result<(), String> {
    let max = shared.settings.max_frame;
    if let Err(why) = validate(&ev) {
        // Resending the same bytes cannot cure it: drop it, but acknowledge it so the
        // agent's queue does not offer it again on every connection.
        tracing::warn!(agent = %auth.id, id = ev.id, "dropping an invalid event: {why}");
        return send(tx, &CoordMsg::EventAck { id: ev.id }, max).await;
    }
    let store = shared.store.clone();
    let agent = auth.id.clone();
    let id = ev.id;
    let stored = tokio::task::spawn_blocking(move || store_event(&store, &agent, &ev))
        .await
        .map_err(|e| e.to_string())?;
    match stored {
        Ok(new) => {
            tracing::debug!(agent = %auth.id, id, new, "event stored");
            send(tx, &CoordMsg::EventAck { id }, max).await
        }
        Err(e) => {
            tracing::warn!(agent = %auth.id, id, "cannot store an event (the agent will resend it): {e}");
            Ok(())
        }
    }
}

/// `GET /v1/events?agent=ID&since_ms=MS&limit=N`: `{"events": [...]}`, newest first.
pub async fn handle(
    shared: &Arc<Shared>,
    method: &Method,
    parts: &[&str],
    query: &str,
) -> Option<Resp> {
    if !(method == Method::GET && parts == ["v1", "events"]) {
        return None;
    }
    let mut agent = None;
    let mut since_ms = 0i64;
    let mut limit = 1000usize;
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "agent" => agent = Some(v.to_owned()),
            "since_ms" => match v.parse() {
                Ok(x) => since_ms = x,
                Err(_) => {
                    return Some(error(
                        StatusCode::BAD_REQUEST,
                        format!("since_ms={v:?} is not a time in ms"),
                    ));
                }
            },
            "limit" => match v.parse::<usize>() {
                Ok(x) if (1..=MAX_LIST).contains(&x) => limit = x,
                _ => {
                    return Some(error(
                        StatusCode::BAD_REQUEST,
                        format!("limit={v:?} is not in 1..={MAX_LIST}"),
                    ));
                }
            },
            _ => {
                return Some(error(
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter {k:?}"),
                ));
            }
        }
    }
    let store = shared.store.clone();
    let r = tokio::task::spawn_blocking(move || {
        if let Some(a) = &agent {
            match store.agent_key(a) {
                Ok(Some(_)) => {}
                Ok(None) => return error(StatusCode::NOT_FOUND, format!("no agent {a}")),
                Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
            }
        }
        match list_events(&store, agent.as_deref(), since_ms, limit) {
            Ok(v) => reply(StatusCode::OK, &json!({ "events": v })),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        }
    })
    .await
    .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e));
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use persona_shared::events::{EventKind, Evidence, Resource, Severity};

    fn ev(id: u64, at: i64) -> AgentEvent {
        AgentEvent {
            id,
            kind: EventKind::Pressure(Resource::Memory),
            severity: Severity::Critical,
            since_ms: at - 2000,
            at_ms: at,
            summary: "memory pressure".into(),
            evidence: vec![Evidence {
                name: "mem.available_pct".into(),
                value: 3.0,
                threshold: f64::NAN,
            }],
        }
    }

    #[test]
    fn stored_once_per_agent_and_id_and_listed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("c.db")).unwrap();
        assert!(store_event(&store, "a-1", &ev(1, 10_000)).unwrap());
        assert!(
            !store_event(&store, "a-1", &ev(1, 10_000)).unwrap(),
            "duplicate"
        );
        assert!(
            store_event(&store, "a-2", &ev(1, 20_000)).unwrap(),
            "other agent"
        );
        let mut run = ev(2, 30_000);
        run.kind = EventKind::RunawayProcess { comm: "yes".into() };
        assert!(store_event(&store, "a-1", &run).unwrap());
        let all = list_events(&store, None, 0, 100).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].comm.as_deref(), Some("yes"));
        assert_eq!(all[0].kind, "runaway_process");
        let a1 = list_events(&store, Some("a-1"), 15_000, 100).unwrap();
        assert_eq!(a1.len(), 1);
        let m = &list_events(&store, Some("a-2"), 0, 100).unwrap()[0];
        assert_eq!(
            (m.resource.as_deref(), m.severity.as_str(), m.since_ms),
            (Some("memory"), "critical", 18_000)
        );
        assert_eq!(
            m.evidence[0]["threshold"],
            Value::Null,
            "NaN stored as null"
        );
    }

    #[test]
    fn bad_events_are_refused() {
        assert!(validate(&ev(1, 10_000)).is_ok());
        assert!(validate(&ev(0, 10_000)).is_err());
        let mut e = ev(1, 10_000);
        e.since_ms = 20_000;
        assert!(validate(&e).is_err());
        let mut e = ev(1, 10_000);
        e.summary = "x".repeat(MAX_SUMMARY + 1);
        assert!(validate(&e).is_err());
        let mut e = ev(1, 10_000);
        e.evidence = vec![e.evidence[0].clone(); MAX_EVIDENCE + 1];
        assert!(validate(&e).is_err());
    }
}
