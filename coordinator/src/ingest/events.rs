//! Agent events in the coordinator: the `events` table, the control-stream handler that
//! stores an `AgentMsg::Event` and answers `CoordMsg::EventAck`, and the
//! `GET /v1/events` route behind `personactl events`.
//!
//! An event is acknowledged only after it is committed, and stored with
//! `INSERT OR IGNORE` on the primary key (agent, id), so an event the agent resends after
//! a reconnect is acknowledged again and not stored twice. Events are checked before they
//! are stored (sizes, times, finite numbers); a bad one is refused on the control stream
//! and not acknowledged. The engine reads the same table (`store::schema`: its columns
//! are a contract; add columns, never rename).
//!
//! Events and belief snapshots older than the telemetry retention are deleted with it.
//!
//! What it is not: detection (the agent's) or policy (the engine's).

use std::sync::Arc;

use quinn::SendStream;

use persona_shared::events::AgentEvent;
use persona_shared::protocol::{self, CoordMsg};

use crate::app::App;
use crate::store::{self, AgentAuth, Store, StoreError};

pub use crate::store::StoredEvent;

/// Longest summary accepted, in bytes.
pub const MAX_SUMMARY: usize = 1024;
/// Most evidence lines per event, and the longest evidence name.
pub const MAX_EVIDENCE: usize = 32;
pub const MAX_NAME: usize = 200;
/// Most events one listing returns.
pub use persona_shared::events::MAX_LIST;

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

/// Stores one event; true if it is new, false if (agent, id) was already stored.
pub fn store_event(store: &Store, agent_id: &str, ev: &AgentEvent) -> Result<bool, StoreError> {
    store.insert_event(agent_id, ev, store::now_ms())
}

/// Events at or after `since_ms`, newest first, optionally of one agent, at most `limit`
/// (and at most [`MAX_LIST`]).
pub fn list_events(
    store: &Store,
    agent_id: Option<&str>,
    since_ms: i64,
    limit: usize,
) -> Result<Vec<StoredEvent>, StoreError> {
    store.list_events(agent_id, since_ms, limit.min(MAX_LIST))
}

/// Deletes events and belief snapshots older than `cutoff_ms` (the telemetry retention);
/// returns how many rows went.
pub fn delete_before(store: &Store, cutoff_ms: i64) -> Result<usize, StoreError> {
    let a = store.delete_events_before(cutoff_ms)?;
    let b = store.delete_belief_history_before(cutoff_ms)?;
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
    app: &Arc<App>,
) -> Result<(), String> {
    let max = app.settings.max_frame;
    if let Err(why) = validate(&ev) {
        // Resending the same bytes cannot cure it: drop it, but acknowledge it so the
        // agent's queue does not offer it again on every connection.
        tracing::warn!(agent = %auth.id, id = ev.id, "dropping an invalid event: {why}");
        return send(tx, &CoordMsg::EventAck { id: ev.id }, max).await;
    }
    let store = app.store.clone();
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

#[cfg(test)]
mod tests {
    use super::*;
    use persona_shared::events::{EventKind, Evidence, Resource, Severity};
    use serde_json::Value;

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
