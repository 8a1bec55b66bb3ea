//! Runs resize commands for VMs that an outside actuator serves (`[[actuator]]` entries:
//! QMP, libvirt, Cloud Hypervisor, an operator's program). Such a command never goes to
//! the agent: the coordinator claims it (pending -> running), applies it through
//! [`crate::actuate::apply_resize`], and finishes it as succeeded only when the new size was read
//! back. Commands for every other VM go to their agent as before (the guest actuator).
//! This is not a scheduler: one command per VM at a time, in submission order.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use persona_shared::command::{Action, Command, CommandState, CommandUpdate};
use persona_shared::facts::HostFacts;
use tokio::sync::watch;

use crate::actuate::{ActuatorBinding, ActuatorConfig, actuator_for};
use crate::store::{self, Store, StoreError};

/// How often pending commands are looked for.
const POLL_EVERY: Duration = Duration::from_millis(500);

/// The outside actuator that serves `agent_id`, or None when its agent resizes it.
pub fn external_actuator(
    bindings: &[ActuatorBinding],
    store: &Store,
    agent_id: &str,
) -> Option<ActuatorConfig> {
    if bindings.is_empty() {
        return None;
    }
    let facts = agent_facts(store, agent_id);
    match actuator_for(bindings, agent_id, facts.as_ref()) {
        ActuatorConfig::Guest => None,
        a => Some(a),
    }
}

/// Whether a stored command body is a resize that the coordinator runs itself (so the
/// delivery task must not send it to the agent).
pub fn runs_here(external: bool, body: &[u8]) -> bool {
    external && matches!(Command::decode(body), Ok(c) if matches!(c.action, Action::Resize(_)))
}

fn agent_facts(store: &Store, agent_id: &str) -> Option<HostFacts> {
    store.agent_host_facts(agent_id).ok().flatten()
}

/// A pending resize: (command id, agent key, agent id, signed body).
type PendingResize = (String, i64, String, Vec<u8>);

/// Pending resize commands, oldest first.
fn pending_resizes(store: &Store, now: i64) -> Result<Vec<PendingResize>, StoreError> {
    Ok(store
        .pending_commands("resize", now)?
        .into_iter()
        .map(|c| (c.id, c.agent_key, c.agent_id, c.body))
        .collect())
}

/// Moves a command from pending to running; false when someone else got there first
/// (cancelled, expired, or already claimed).
fn claim(store: &Store, id: &str) -> Result<bool, StoreError> {
    store.claim_pending_command(
        id,
        "applying through the hypervisor actuator",
        store::now_ms(),
    )
}

fn finish(store: &Store, agent_key: i64, id: &str, state: CommandState, message: String) {
    let u = CommandUpdate {
        id: id.to_owned(),
        state,
        at_ms: store::now_ms(),
        step: Some("done".into()),
        bytes: None,
        percent: None,
        message: Some(message),
    };
    if let Err(e) = crate::commands::apply_update(store, agent_key, &u) {
        tracing::warn!(%id, "cannot record the result of a resize: {e}");
    }
}

/// Claims and applies pending resizes of VMs served by an outside actuator until
/// shutdown. Does nothing when no `[[actuator]]` entry is configured.
pub async fn run(
    store: Arc<Store>,
    bindings: Vec<ActuatorBinding>,
    mut shutdown: watch::Receiver<bool>,
) {
    if bindings.is_empty() {
        return;
    }
    // VMs with a resize in flight: the next one waits, so two never race on one VM.
    let busy: Arc<Mutex<HashSet<i64>>> = Arc::default();
    loop {
        let st = store.clone();
        let due = tokio::task::spawn_blocking(move || pending_resizes(&st, store::now_ms())).await;
        match due {
            Ok(Ok(list)) => {
                for (id, key, agent_id, body) in list {
                    if busy.lock().map(|b| b.contains(&key)).unwrap_or(true) {
                        continue;
                    }
                    let st = store.clone();
                    let (b2, a2) = (bindings.clone(), agent_id.clone());
                    let Ok(Some(actuator)) =
                        tokio::task::spawn_blocking(move || external_actuator(&b2, &st, &a2)).await
                    else {
                        continue;
                    };
                    let Ok(Command {
                        action: Action::Resize(req),
                        ..
                    }) = Command::decode(&body)
                    else {
                        continue;
                    };
                    let st = store.clone();
                    let id2 = id.clone();
                    if !matches!(
                        tokio::task::spawn_blocking(move || claim(&st, &id2)).await,
                        Ok(Ok(true))
                    ) {
                        continue;
                    }
                    if let Ok(mut b) = busy.lock() {
                        b.insert(key);
                    }
                    tracing::info!(%id, agent = %agent_id, actuator = actuator.name(), "applying resize");
                    let (st, busy) = (store.clone(), busy.clone());
                    tokio::spawn(async move {
                        let (state, msg) = match crate::actuate::apply_resize(&actuator, &req).await
                        {
                            Ok(o) if o.verified => (
                                CommandState::Succeeded,
                                format!("verified: {}", o.applied.join(", ")),
                            ),
                            Ok(o) => (
                                CommandState::Failed,
                                format!(
                                    "not verified: applied [{}], needs restart [{}], observed vcpus {:?} memory {:?} MiB",
                                    o.applied.join(", "),
                                    o.needs_restart.join(", "),
                                    o.observed_vcpus,
                                    o.observed_memory_mib
                                ),
                            ),
                            Err(e) => (CommandState::Failed, e.to_string()),
                        };
                        tracing::info!(%id, state = state.as_str(), "resize finished: {msg}");
                        let _ =
                            tokio::task::spawn_blocking(move || finish(&st, key, &id, state, msg))
                                .await;
                        if let Ok(mut b) = busy.lock() {
                            b.remove(&key);
                        }
                    });
                }
            }
            Ok(Err(e)) => tracing::warn!("resize dispatch: {e}"),
            Err(e) => tracing::warn!("resize dispatch task: {e}"),
        }
        tokio::select! {
            () = tokio::time::sleep(POLL_EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}
