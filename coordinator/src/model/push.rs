//! Mirror model distribution: the registry of trained mirror models, pushing the current
//! one to agents over QUIC, and what each agent says it runs.
//!
//! What it is for: every agent's Hello carries the version of the mirror model it runs;
//! when that is not the coordinator's current model, the model goes out on the control
//! stream as `CoordMsg::Model`, and again to every connected agent whenever a new model is
//! trained. Each agent answers with `AgentMsg::ModelStatus` (taken, or refused
//! and why), which is recorded and shown by `personactl agents show`. The current model
//! is the newest row of `mirror_models` (written by `personactl model train`), or the one
//! built into the binary before any training.
//!
//! Every push is authorised first by a signed command. Before any bytes go out, the
//! session makes sure a `model_update` command for exactly (agent, kind, version,
//! SHA-256) exists in the command store (so it shows in `personactl commands list`),
//! and sends the bytes only once that command has succeeded: the agent verified the CA
//! signature, its id and the expiry, its policy allowed `actions.model_update`, and it
//! recorded a grant that its model store checks before installing anything. Waiting here
//! (rather than pushing at once and having the agent hold an early push until the grant
//! lands) keeps the agent simple and never ships bytes to an agent that will refuse
//! them; the cost is one command round trip before a push. There is at most one live
//! command per (agent, version): a succeeded one is reused for every later push of that
//! version (after a reconnect, a roll-back), a pending one is waited for, and a new one is
//! made only when there is none or the last one expired or was cancelled (it never ran).
//! A failed one (the agent's policy refused it) is not retried automatically: the refusal
//! is recorded as the agent's model status, and a command the operator submits later for
//! the same model (`POST /v1/commands`) is picked up by the session's slow poll.
//!
//! What it is not: training (`mirror_train`), or the control stream itself: pushes ride
//! on the command channel's per-session queue (`commands::read_or_push`).

use std::sync::Arc;

use std::time::Duration;

use persona_models::Mirror;
use persona_models::mirror::{file_sha256, hex};
use persona_shared::command::{Action, CommandState};
use persona_shared::protocol::{CoordMsg, ModelPush, ModelStatus};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::commands::CommandError;
use crate::store::{NewMirrorModel, Store, StoreError, now_ms};

/// The model kind agents run.
pub const KIND: &str = "mirror";
/// Pushes queued per session before it is dropped.
const QUEUE: usize = 8;
/// How long a `model_update` command lives (an expired one is replaced by a new one).
const GRANT_TTL: Duration = Duration::from_secs(3600);
/// How often a session first looks at a `model_update` command it waits for; the wait
/// doubles after each look up to [`GRANT_POLL_MAX`]. An agent that accepts the command
/// gets its push within a second; an agent that never answers (an old agent, a load
/// generator) costs one indexed lookup every 15 s instead of two a second, which across
/// a 10,000-agent fleet was enough to saturate the coordinator (docs/BENCHMARKS.md).
const GRANT_POLL: Duration = Duration::from_millis(500);
const GRANT_POLL_MAX: Duration = Duration::from_secs(15);
/// How often it looks again after the agent refused one (for an operator's new command).
const REFUSED_POLL: Duration = Duration::from_secs(5);
/// Serialises the check-then-submit of grants (two sessions of one agent overlap during
/// a reconnect; they must not both submit a command).
static GRANTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One model as the coordinator serves it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedModel {
    pub version: String,
    pub sha256: [u8; 32],
    pub bytes: Arc<Vec<u8>>,
    pub created_ms: i64,
    /// "trained" or "shipped".
    pub source: &'static str,
}

impl ServedModel {
    fn push(&self) -> ModelPush {
        ModelPush {
            kind: KIND.to_owned(),
            version: self.version.clone(),
            sha256: self.sha256.to_vec(),
            bytes: self.bytes.as_ref().clone(),
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "version": self.version,
            "sha256": hex(&self.sha256),
            "bytes": self.bytes.len(),
            "created_ms": self.created_ms,
            "source": self.source,
        })
    }
}

/// The built-in model, as served before any training.
fn shipped() -> Option<ServedModel> {
    let bytes = Mirror::shipped_bytes();
    match Mirror::from_bytes(bytes) {
        Ok(m) => Some(ServedModel {
            version: m.version().to_owned(),
            sha256: file_sha256(bytes),
            bytes: Arc::new(bytes.to_vec()),
            created_ms: 0,
            source: "shipped",
        }),
        Err(e) => {
            tracing::error!("the built-in mirror model does not load: {e}");
            None
        }
    }
}

/// The newest trained model that still loads, if any.
fn newest(store: &Store) -> Result<Option<ServedModel>, StoreError> {
    store.find_mirror_model(|row| match Mirror::from_bytes(&row.bytes) {
        Ok(m) if m.version() == row.version => Some(ServedModel {
            version: row.version,
            sha256: file_sha256(&row.bytes),
            bytes: Arc::new(row.bytes),
            created_ms: row.created_ms,
            source: "trained",
        }),
        Ok(_) => {
            tracing::warn!(version = %row.version, "stored mirror model has another version; skipped");
            None
        }
        Err(e) => {
            tracing::warn!(version = %row.version, "stored mirror model does not load: {e}");
            None
        }
    })
}

/// The current model and a way to hear about new ones.
#[derive(Debug)]
pub struct ModelHub {
    tx: watch::Sender<Option<ServedModel>>,
}

impl Default for ModelHub {
    fn default() -> Self {
        Self {
            tx: watch::channel(shipped()).0,
        }
    }
}

impl ModelHub {
    /// Starts from the newest trained model in the store, else the shipped one.
    pub fn open(store: &Store) -> ModelHub {
        let current = match newest(store) {
            Ok(Some(m)) => Some(m),
            Ok(None) => shipped(),
            Err(e) => {
                tracing::warn!("cannot read the mirror models: {e}; serving the built-in one");
                shipped()
            }
        };
        ModelHub {
            tx: watch::channel(current).0,
        }
    }

    pub fn current(&self) -> Option<ServedModel> {
        self.tx.borrow().clone()
    }

    /// Makes `m` current; every connected agent gets it.
    pub fn publish(&self, m: ServedModel) {
        tracing::info!(version = %m.version, "new mirror model published");
        self.tx.send_replace(Some(m));
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<ServedModel>> {
        self.tx.subscribe()
    }
}

/// Stores a trained model file; returns it as served. Refuses a file that does not load.
pub fn register(
    store: &Store,
    bytes: Vec<u8>,
    report: &Value,
) -> Result<ServedModel, RegisterError> {
    let m = Mirror::from_bytes(&bytes).map_err(RegisterError::Model)?;
    let served = ServedModel {
        version: m.version().to_owned(),
        sha256: file_sha256(&bytes),
        bytes: Arc::new(bytes),
        created_ms: now_ms(),
        source: "trained",
    };
    store.put_mirror_model(&NewMirrorModel {
        version: &served.version,
        sha256: &served.sha256,
        bytes: served.bytes.as_slice(),
        created_ms: served.created_ms,
        report,
    })?;
    Ok(served)
}

/// Why a model could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("the trained mirror model does not load: {0}")]
    Model(persona_models::ModelError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where the signed authorisation of a push stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Grant {
    /// A `model_update` command for this model succeeded on the agent: push the bytes.
    Granted(String),
    /// The command (new when `new`) is on its way or running.
    Waiting { id: String, new: bool },
    /// The agent refused the command (its policy, or a malformed reference).
    Refused { id: String, message: String },
}

/// Finds, or submits, the `model_update` command that authorises pushing `m` to
/// `agent_id` (see the module documentation for the rules).
pub fn ensure_grant(store: &Store, agent_id: &str, m: &ServedModel) -> Result<Grant, CommandError> {
    let _one = GRANTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let action = Action::ModelUpdate {
        kind: KIND.to_owned(),
        version: m.version.clone(),
        sha256: m.sha256.to_vec(),
    };
    // The command store keeps each action as its JSON, so equal text is the same model.
    let latest = store.latest_command_for(agent_id, &action)?;
    let state = latest
        .as_ref()
        .map(|(_, s, _)| CommandState::parse(s).unwrap_or(CommandState::Failed));
    match (latest, state) {
        (Some((id, ..)), Some(CommandState::Succeeded)) => Ok(Grant::Granted(id)),
        (
            Some((id, ..)),
            Some(CommandState::Pending | CommandState::Delivered | CommandState::Running),
        ) => Ok(Grant::Waiting { id, new: false }),
        (Some((id, _, message)), Some(CommandState::Failed)) => Ok(Grant::Refused {
            id,
            message: message.unwrap_or_else(|| "failed without a message".into()),
        }),
        _ => {
            let id = crate::commands::submit(store, agent_id, action, GRANT_TTL)?;
            tracing::info!(agent = %agent_id, version = %m.version, command = %id,
                "model update command submitted before the push");
            Ok(Grant::Waiting { id, new: true })
        }
    }
}

/// Records that the agent refused the command for `offered` (the push is never sent).
pub fn record_refusal(
    store: &Store,
    agent_id: &str,
    offered: &str,
    message: &str,
) -> Result<(), StoreError> {
    store.record_model_refusal(agent_id, offered, message, now_ms())
}

/// Chains model pushes into an agent's control-stream queue (the command channel's):
/// the current model if the agent runs another version, then every new one, each only
/// after its `model_update` command succeeded ([`ensure_grant`]).
/// `inner` is the command session's queue; the returned one carries both.
pub fn session(
    store: Arc<Store>,
    commands: Arc<crate::commands::delivery::Hub>,
    mut models: watch::Receiver<Option<ServedModel>>,
    agent_id: &str,
    agent_version: Option<String>,
    mut inner: mpsc::Receiver<CoordMsg>,
) -> mpsc::Receiver<CoordMsg> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let agent_id = agent_id.to_owned();
    tokio::spawn(async move {
        {
            let (store, id, v) = (store.clone(), agent_id.clone(), agent_version.clone());
            let r =
                tokio::task::spawn_blocking(move || record_hello(&store, &id, v.as_deref())).await;
            if let Ok(Err(e)) = r {
                tracing::warn!(agent = %agent_id, "cannot record the agent's model: {e}");
            }
        }
        let mut sent = agent_version;
        let mut inner_open = true;
        // The refused command already recorded (so a refusal is written once).
        let mut refusal_noted: Option<String> = None;
        let mut grant_wait = GRANT_POLL;
        loop {
            let current = models.borrow_and_update().clone();
            let mut poll = None;
            if let Some(m) = current
                && sent.as_deref() != Some(m.version.as_str())
            {
                let (st, hub, id, mm) =
                    (store.clone(), commands.clone(), agent_id.clone(), m.clone());
                let grant = tokio::task::spawn_blocking(move || {
                    let g = ensure_grant(&st, &id, &mm);
                    if let Ok(Grant::Waiting { new: true, .. }) = &g {
                        hub.wake_agent(&st, &id);
                    }
                    g
                })
                .await;
                match grant {
                    Ok(Ok(Grant::Granted(cmd))) => {
                        tracing::info!(agent = %agent_id, version = %m.version, command = %cmd,
                            "pushing the mirror model");
                        if tx.send(CoordMsg::Model(m.push())).await.is_err() {
                            return;
                        }
                        sent = Some(m.version);
                    }
                    Ok(Ok(Grant::Waiting { new, .. })) => {
                        if new {
                            grant_wait = GRANT_POLL;
                        }
                        poll = Some(grant_wait);
                        grant_wait = (grant_wait * 2).min(GRANT_POLL_MAX);
                    }
                    Ok(Ok(Grant::Refused { id, message })) => {
                        if refusal_noted.as_deref() != Some(id.as_str()) {
                            tracing::warn!(agent = %agent_id, version = %m.version, command = %id,
                                "the agent refused the model update command; no push: {message}");
                            let text = format!(
                                "model_update command {id} failed on the agent, the model was not pushed: {message}"
                            );
                            let (store, aid, v) =
                                (store.clone(), agent_id.clone(), m.version.clone());
                            let r = tokio::task::spawn_blocking(move || {
                                record_refusal(&store, &aid, &v, &text)
                            })
                            .await;
                            if let Ok(Err(e)) = r {
                                tracing::warn!(agent = %agent_id, "cannot record the refusal: {e}");
                            }
                            refusal_noted = Some(id);
                        }
                        poll = Some(REFUSED_POLL);
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(agent = %agent_id, "model update command: {e}");
                        poll = Some(REFUSED_POLL);
                    }
                    Err(e) => {
                        tracing::warn!(agent = %agent_id, "model update task: {e}");
                        poll = Some(REFUSED_POLL);
                    }
                }
            }
            tokio::select! {
                r = models.changed() => if r.is_err() { return },
                m = inner.recv(), if inner_open => match m {
                    Some(m) => if tx.send(m).await.is_err() { return },
                    None => inner_open = false,
                },
                () = async {
                    if let Some(d) = poll { tokio::time::sleep(d).await } else { std::future::pending().await }
                } => {}
                () = tx.closed() => return,
            }
        }
    });
    rx
}

/// Records an agent's answer to a push.
pub fn record_status(store: &Store, agent_id: &str, s: &ModelStatus) -> Result<(), StoreError> {
    store.record_model_status(agent_id, s, now_ms())
}

/// Records the version an agent announced in Hello (before any push).
pub fn record_hello(
    store: &Store,
    agent_id: &str,
    running: Option<&str>,
) -> Result<(), StoreError> {
    store.record_model_hello(agent_id, running, now_ms())
}

/// Handles `AgentMsg::ModelStatus` (off the stream's task).
pub async fn on_status(store: &Arc<Store>, agent_id: &str, s: ModelStatus) {
    if s.accepted {
        tracing::info!(agent = %agent_id, running = %s.running, "agent runs the mirror model");
    } else {
        tracing::warn!(agent = %agent_id, offered = %s.offered, running = %s.running,
            "agent refused the mirror model: {}", s.message.as_deref().unwrap_or("no reason given"));
    }
    let (store, id) = (store.clone(), agent_id.to_owned());
    let r = tokio::task::spawn_blocking(move || record_status(&store, &id, &s)).await;
    if let Ok(Err(e)) = r {
        tracing::warn!(agent = %agent_id, "cannot record the model status: {e}");
    }
}

/// Adds `mirror_model` (what the agent runs, the last offer and its outcome, and the
/// coordinator's current model) to an agent's JSON.
pub fn augment_agent_json(
    store: &Store,
    hub: &ModelHub,
    agent_id: &str,
    v: &mut Value,
) -> Result<(), StoreError> {
    let row = store.agent_model(agent_id)?.map(|a| {
        json!({
            "running": a.running,
            "offered": a.offered,
            "accepted": a.accepted,
            "message": a.message,
            "updated_ms": a.updated_ms,
        })
    });
    let mut m = row.unwrap_or_else(|| json!({ "running": null }));
    m["current"] = hub
        .current()
        .map_or(Value::Null, |c| Value::from(c.version));
    v["mirror_model"] = m;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use persona_shared::command::CommandUpdate;

    fn update(id: &str, state: CommandState, message: Option<&str>) -> CommandUpdate {
        CommandUpdate {
            id: id.into(),
            state,
            at_ms: 0,
            step: None,
            bytes: None,
            percent: None,
            message: message.map(str::to_owned),
        }
    }

    /// One command per (agent, model): waited for, reused once it succeeded, replaced
    /// only when it never ran, and a refusal is reported rather than retried.
    #[test]
    fn a_push_waits_for_one_signed_command_per_agent_and_model() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("p.db")).unwrap();
        let (token, _) = store.create_token(60_000, 2).unwrap();
        store.enroll(&token, "a-1", "host", "fp1").unwrap().unwrap();
        store.enroll(&token, "a-2", "host", "fp2").unwrap().unwrap();
        let key = store.agent_key("a-1").unwrap().unwrap();
        let m = ModelHub::open(&store).current().unwrap();

        let Grant::Waiting { id, new: true } = ensure_grant(&store, "a-1", &m).unwrap() else {
            panic!("a first command is submitted");
        };
        assert_eq!(
            ensure_grant(&store, "a-1", &m).unwrap(),
            Grant::Waiting {
                id: id.clone(),
                new: false
            }
        );
        let row = crate::commands::get(&store, &id).unwrap().unwrap();
        assert_eq!(row.kind, "model_update");
        assert_eq!(row.action["ModelUpdate"]["version"], json!(m.version));
        // Another agent gets its own command.
        let Grant::Waiting {
            id: other,
            new: true,
        } = ensure_grant(&store, "a-2", &m).unwrap()
        else {
            panic!("a-2 needs its own command");
        };
        assert_ne!(other, id);

        crate::commands::apply_update(&store, key, &update(&id, CommandState::Succeeded, None))
            .unwrap();
        assert_eq!(
            ensure_grant(&store, "a-1", &m).unwrap(),
            Grant::Granted(id.clone())
        );
        assert_eq!(
            crate::commands::list(&store, Some("a-1"), 100)
                .unwrap()
                .len(),
            1,
            "no duplicate command"
        );

        // A refused command is reported, not retried.
        let key2 = store.agent_key("a-2").unwrap().unwrap();
        crate::commands::apply_update(
            &store,
            key2,
            &update(&other, CommandState::Failed, Some("refused: policy")),
        )
        .unwrap();
        assert_eq!(
            ensure_grant(&store, "a-2", &m).unwrap(),
            Grant::Refused {
                id: other.clone(),
                message: "refused: policy".into()
            }
        );
        // One that expired before it ran is replaced.
        let mut newer = m.clone();
        newer.version = "mirror-000000000001".into();
        let Grant::Waiting { id: third, .. } = ensure_grant(&store, "a-1", &newer).unwrap() else {
            panic!("a new version needs a new command");
        };
        crate::commands::expire_due(&store, now_ms() + 2 * GRANT_TTL.as_millis() as i64).unwrap();
        let Grant::Waiting {
            id: fourth,
            new: true,
        } = ensure_grant(&store, "a-1", &newer).unwrap()
        else {
            panic!("an expired command is replaced");
        };
        assert_ne!(third, fourth);
        record_refusal(&store, "a-2", &m.version, "no").unwrap();
        let hub = ModelHub::open(&store);
        let mut v = json!({});
        augment_agent_json(&store, &hub, "a-2", &mut v).unwrap();
        assert_eq!(v["mirror_model"]["accepted"], json!(false));
        assert_eq!(v["mirror_model"]["offered"], json!(m.version));
    }

    #[test]
    fn registry_serves_the_newest_loadable_model_and_refuses_junk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("persona.db")).unwrap();
        let hub = ModelHub::open(&store);
        let shipped = hub.current().unwrap();
        assert_eq!(shipped.source, "shipped");
        assert!(matches!(
            register(&store, b"junk".to_vec(), &Value::Null),
            Err(RegisterError::Model(_))
        ));
        let m = register(&store, Mirror::shipped_bytes().to_vec(), &json!({"x": 1})).unwrap();
        assert_eq!(m.version, shipped.version);
        let again = ModelHub::open(&store).current().unwrap();
        assert_eq!(again.source, "trained");
        assert_eq!(again.sha256, file_sha256(Mirror::shipped_bytes()));
        record_hello(&store, "a1", Some("mirror-old")).unwrap();
        record_status(
            &store,
            "a1",
            &ModelStatus {
                kind: KIND.into(),
                offered: m.version.clone(),
                running: "mirror-old".into(),
                accepted: false,
                message: Some("bad".into()),
            },
        )
        .unwrap();
        let mut v = json!({});
        augment_agent_json(&store, &hub, "a1", &mut v).unwrap();
        assert_eq!(v["mirror_model"]["accepted"], json!(false));
        assert_eq!(v["mirror_model"]["running"], json!("mirror-old"));
    }
}
