//! Delivery of commands to connected agents: one task per authenticated control stream
//! sends every non-final, unexpired command of its agent, signed at sending time, then
//! new ones as they are submitted (woken through the [`Hub`], or by a slow poll); agents'
//! updates come back through [`on_update`]; [`expiry_loop`] marks what expired.
//!
//! What it is not: the state machine itself (`commands`), or resizes that a hypervisor
//! actuator runs in the coordinator (`commands::dispatch`).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use persona_shared::command::{Action, Command, CommandUpdate};
use persona_shared::protocol::{self, CoordMsg};
use persona_shared::wire::WireError;
use quinn::SendStream;
use tokio::sync::{Notify, mpsc, watch};

use crate::actuate::ActuatorBinding;
use crate::commands::dispatch;
use crate::commands::{
    PIN_KIND, apply_update, deliverable, expire_due, fail_unsignable, mark_sent, pin_if_needed,
};
use crate::pki::Pki;
use crate::store::{self, Store};

/// How often a delivery task looks for commands submitted without a wake-up. Every
/// submission in this process wakes the agent's task at once ([`Hub::wake`]), so this is
/// only a safety net (a row written by another process, a path that forgot to wake). It
/// is one SQLite query per connected agent per interval: at 1 s it was 10,000 queries a
/// second for a 10,000-agent fleet, enough to saturate the coordinator and time out
/// connections (docs/BENCHMARKS.md, issue 9).
const POLL_EVERY: Duration = Duration::from_secs(30);
/// How often expired commands are marked.
const EXPIRE_EVERY: Duration = Duration::from_secs(5);
/// Commands queued for one control stream, at most.
const PUSH_QUEUE: usize = 64;

/// Delivery tasks by agent key: (task number, its wake-up).
type Waiters = HashMap<i64, Vec<(u64, Arc<Notify>)>>;

/// Wake-ups for the delivery tasks of connected agents.
#[derive(Debug, Default)]
pub struct Hub {
    tasks: Mutex<Waiters>,
    next: AtomicU64,
}

impl Hub {
    /// Wakes the delivery tasks of an agent (after a submission) so it gets the command now.
    pub fn wake(&self, agent_key: i64) {
        if let Ok(m) = self.tasks.lock()
            && let Some(v) = m.get(&agent_key)
        {
            for (_, n) in v {
                n.notify_one();
            }
        }
    }

    /// Wakes the delivery tasks of an agent by id.
    pub fn wake_agent(&self, store: &Store, agent_id: &str) {
        if let Ok(Some(k)) = store.agent_key(agent_id) {
            self.wake(k);
        }
    }

    fn register(&self, agent_key: i64) -> (u64, Arc<Notify>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let n = Arc::new(Notify::new());
        if let Ok(mut m) = self.tasks.lock() {
            m.entry(agent_key).or_default().push((id, n.clone()));
        }
        (id, n)
    }

    fn unregister(&self, agent_key: i64, id: u64) {
        if let Ok(mut m) = self.tasks.lock()
            && let Some(v) = m.get_mut(&agent_key)
        {
            v.retain(|(i, _)| *i != id);
            if v.is_empty() {
                m.remove(&agent_key);
            }
        }
    }
}

/// Starts command delivery for an agent's control stream after Hello; the stream's
/// read loop writes what arrives on the returned receiver (see [`read_or_push`]).
pub fn open_session(
    store: Arc<Store>,
    pki: Arc<Pki>,
    hub: Arc<Hub>,
    actuators: Vec<ActuatorBinding>,
    agent_key: i64,
    agent_id: &str,
) -> mpsc::Receiver<CoordMsg> {
    let (tx, rx) = mpsc::channel(PUSH_QUEUE);
    let agent_id = agent_id.to_owned();
    tokio::spawn(async move {
        let (reg, wake) = hub.register(agent_key);
        let mut sent: HashSet<String> = HashSet::new();
        // Resizes of a VM served by an outside actuator run in the coordinator
        // (`actuate::dispatch`) and are not the agent's to execute.
        let external = {
            let (store, b, a) = (store.clone(), actuators.clone(), agent_id.clone());
            tokio::task::spawn_blocking(move || {
                dispatch::external_actuator(&b, &store, &a).is_some()
            })
            .await
            .unwrap_or(false)
        };
        loop {
            let (st, pk, aid) = (store.clone(), pki.clone(), agent_id.clone());
            let due =
                tokio::task::spawn_blocking(move || next_batch(&st, &pk, agent_key, &aid)).await;
            match due {
                Ok(Ok((signer, list))) => {
                    for (id, body) in list {
                        if sent.contains(&id) || dispatch::runs_here(external, &body) {
                            continue;
                        }
                        let signed = match signer.as_ref().map_err(ToString::to_string).and_then(
                            |k| crate::pki::signing::sign_body(k, body).map_err(|e| e.to_string()),
                        ) {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::error!(%id, agent = %agent_id, "cannot sign command: {e}");
                                let (st, id2) = (store.clone(), id.clone());
                                let _ = tokio::task::spawn_blocking(move || {
                                    fail_unsignable(&st, agent_key, &id2, &e)
                                })
                                .await;
                                continue;
                            }
                        };
                        if tx.send(CoordMsg::Command(signed)).await.is_err() {
                            hub.unregister(agent_key, reg);
                            return;
                        }
                        tracing::info!(%id, agent = %agent_id, "command sent");
                        let store = store.clone();
                        let id2 = id.clone();
                        let _ = tokio::task::spawn_blocking(move || mark_sent(&store, &id2)).await;
                        sent.insert(id);
                    }
                }
                Ok(Err(e)) => tracing::warn!(agent = %agent_id, "command delivery: {e}"),
                Err(e) => tracing::warn!(agent = %agent_id, "command delivery task: {e}"),
            }
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(POLL_EVERY) => {}
                () = tx.closed() => break,
            }
        }
        hub.unregister(agent_key, reg);
    });
    rx
}

/// A command key (PKCS#8) or why none can sign for this agent.
type Signer = Result<Vec<u8>, crate::pki::PkiError>;
/// Commands to send: (id, body).
type Due = Vec<(String, Vec<u8>)>;

/// What to send an agent now, and the key to sign it with: its pin first if it needs
/// one, and while a pin is on its way only the pin, since what follows must be signed
/// with the key the agent will trust once the pin is done.
fn next_batch(
    store: &Store,
    pki: &Pki,
    agent_key: i64,
    agent_id: &str,
) -> Result<(Signer, Due), crate::commands::CommandError> {
    if let Some(id) = pin_if_needed(store, pki, agent_key, agent_id)? {
        tracing::info!(%id, agent = %agent_id, key = %pki.command_keys().current_fingerprint(), "command key pin queued");
    }
    let now = store::now_ms();
    let mut list = deliverable(store, agent_key, now)?;
    if store.has_live_command(agent_key, PIN_KIND, now)? {
        list.retain(|(_, body)| {
            Command::decode(body).is_ok_and(|c| matches!(c.action, Action::PinCommandKey { .. }))
        });
    }
    let pinned = store.agent_command_key(agent_key)?;
    Ok((pki.command_signer(pinned.as_deref()), list))
}

/// Why the control stream's loop ended.
#[derive(Debug, thiserror::Error)]
pub enum ControlError<E> {
    /// Reading the agent's next frame failed (or the agent finished the stream).
    #[error("{0}")]
    Read(E),
    /// Writing a pushed command failed: the stream is gone or the push cannot be framed.
    #[error("cannot push on the control stream: {0}")]
    Push(WireError),
}

/// Awaits `read` (the control stream's next frame) while writing whatever the delivery
/// task pushes on the same stream. The read future is kept across pushes, so no byte
/// of an incoming frame is lost.
pub async fn read_or_push<F, E>(
    read: F,
    tx: &mut SendStream,
    pushes: &mut Option<mpsc::Receiver<CoordMsg>>,
    max: usize,
) -> Result<Vec<u8>, ControlError<E>>
where
    F: Future<Output = Result<Vec<u8>, E>>,
{
    tokio::pin!(read);
    loop {
        let Some(rx) = pushes.as_mut() else {
            return read.await.map_err(ControlError::Read);
        };
        tokio::select! {
            r = &mut read => return r.map_err(ControlError::Read),
            m = rx.recv() => match m {
                Some(msg) => {
                    let mut buf = Vec::with_capacity(512);
                    protocol::encode_frame(&msg, &mut buf, max)
                        .map_err(|e| ControlError::Push(WireError::Frame(e)))?;
                    tx.write_all(&buf)
                        .await
                        .map_err(|e| ControlError::Push(WireError::Write(e.into())))?;
                }
                None => *pushes = None,
            }
        }
    }
}

/// Handles `AgentMsg::CommandUpdate` from an authenticated agent. A final state wakes
/// the agent's delivery: what waited behind a key pin goes now.
pub async fn on_update(
    store: &Arc<Store>,
    hub: &Hub,
    agent_key: i64,
    agent_id: &str,
    u: CommandUpdate,
) {
    let store = store.clone();
    let id = u.id.clone();
    let state = u.state;
    match tokio::task::spawn_blocking(move || apply_update(&store, agent_key, &u)).await {
        Ok(Ok(true)) => {
            tracing::info!(%id, agent = %agent_id, state = state.as_str(), "command update");
            if state.is_final() {
                hub.wake(agent_key);
            }
        }
        Ok(Ok(false)) => {
            tracing::debug!(%id, agent = %agent_id, "stale or foreign command update ignored")
        }
        Ok(Err(e)) => tracing::warn!(%id, "command update: {e}"),
        Err(e) => tracing::warn!(%id, "command update task: {e}"),
    }
}

/// Marks expired commands every few seconds until shutdown.
pub async fn expiry_loop(store: Arc<Store>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let store = store.clone();
        match tokio::task::spawn_blocking(move || expire_due(&store, store::now_ms())).await {
            Ok(Ok(n)) if n > 0 => tracing::info!(commands = n, "commands expired"),
            Ok(Err(e)) => tracing::warn!("command expiry: {e}"),
            _ => {}
        }
        tokio::select! {
            () = tokio::time::sleep(EXPIRE_EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}
