//! The coordinator's command channel: a persisted state machine per command and its
//! delivery to agents on their control streams.
//!
//! A command is stored at submission as `pending` with its MessagePack body (the body
//! never changes, so a resend carries the same bytes). States move forward only:
//! `pending → delivered → running → succeeded | failed | expired | cancelled`, each
//! change timestamped, with the last progress (step, bytes, percent) and the result.
//! `delivered`, `running` and the final states come from the agent's `CommandUpdate`s;
//! `expired` and `cancelled` (of a command never sent) are decided here.
//!
//! Delivery is at least once. Each authenticated control stream gets a delivery task
//! after Hello: it sends every command of that agent that is not final and not
//! expired (so whatever a dropped connection lost goes again), then waits for a wake-up
//! from [`Hub::wake`] (on submission through the API) or a one-second tick (for
//! submissions that only had the store, such as the engine's), and sends what is new.
//! Each body is signed at sending time (`signing`) with the key the agent trusts: the
//! command key it pinned, or the CA key before the first pin. An agent whose pin is not
//! the current command key gets a `PinCommandKey` first ([`pin_if_needed`]), and nothing
//! else until that one is final. The agent remembers ids, so a repeat is acknowledged
//! with its known state and never run twice.
//!
//! What it is not: the agent side (`persona_agent::commands`), signing (`signing`) or
//! what a pre-load plan contains (`preload`).

pub mod delivery;
pub mod dispatch;
pub mod preload;

use std::time::Duration;

use persona_shared::command::{
    Action, Command, CommandState, CommandUpdate, MAX_ID_LEN, PreloadStep,
};
use serde::Serialize;

use crate::pki::Pki;
use crate::store::{self, CommandProgress, NewCommand, Store, StoreError};

pub use crate::store::CommandRow;

/// Finished commands are kept this long, then deleted with their results.
pub const KEEP_FINISHED_MS: i64 = 30 * 24 * 3600 * 1000;

/// Shortest and longest time a command may live.
pub const TTL_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(7 * 24 * 3600);
/// Most commands a list returns.
pub const MAX_LIST: usize = 1000;
/// How long a key pin may wait for its agent. Short, because everything else for the
/// agent waits behind it: an agent that is away gets a fresh pin when it is back.
const PIN_TTL: Duration = Duration::from_secs(600);
/// How long after a refused pin the same pin is tried again.
const PIN_RETRY_MS: i64 = 3600 * 1000;
/// The kind of the command that pins a command key.
pub const PIN_KIND: &str = "pin_command_key";

/// Errors of the command channel.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no agent {0}")]
    UnknownAgent(String),
    #[error("agent {0} is revoked")]
    Revoked(String),
    #[error("no command {0}")]
    NotFound(String),
    #[error("command {id} is already {state}")]
    Final { id: String, state: &'static str },
    #[error("a command lives between 1 s and 7 days, not {0:?}")]
    Ttl(Duration),
    #[error("cannot encode the command: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("random source failed: {0}")]
    Random(String),
    #[error("invalid command: {0}")]
    Invalid(String),
}

/// Rank of a state: updates only move forward.
fn rank(s: CommandState) -> u8 {
    match s {
        CommandState::Pending => 0,
        CommandState::Delivered => 1,
        CommandState::Running => 2,
        _ => 3,
    }
}

/// Submits `action` for `agent_id`, valid for `ttl`, and returns the new command id.
/// The command is stored `pending` and delivered as soon as the agent is connected:
/// within a second by the delivery task's poll, at once if the caller also calls
/// `delivery::Hub::wake`. This is what the engine calls for auto-mode resizes.
pub fn submit(
    store: &Store,
    agent_id: &str,
    action: Action,
    ttl: Duration,
) -> Result<String, CommandError> {
    if matches!(action, Action::PinCommandKey { .. }) {
        // Only the coordinator's own keys may be pinned (see `pin_if_needed`): a pin of
        // any other key would leave the agent trusting a key nobody here holds.
        return Err(CommandError::Invalid(
            "PinCommandKey is sent by the coordinator itself".into(),
        ));
    }
    store_new(store, agent_id, action, ttl)
}

/// Stores a checked action as a new pending command.
fn store_new(
    store: &Store,
    agent_id: &str,
    action: Action,
    ttl: Duration,
) -> Result<String, CommandError> {
    if !TTL_RANGE.contains(&ttl) {
        return Err(CommandError::Ttl(ttl));
    }
    check_action(&action)?;
    let now = store::now_ms();
    let agent = store
        .agent_by_id(agent_id)?
        .ok_or_else(|| CommandError::UnknownAgent(agent_id.to_owned()))?;
    if agent.revoked {
        return Err(CommandError::Revoked(agent_id.to_owned()));
    }
    let id = format!(
        "c-{}",
        crate::pki::random_hex(8).map_err(|e| CommandError::Random(e.to_string()))?
    );
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let cmd = Command {
        id: id.clone(),
        agent_id: agent_id.to_owned(),
        issued_ms: now,
        expires_ms: now.saturating_add(ttl_ms),
        action,
    };
    let body = cmd.encode()?;
    store.insert_command(&NewCommand {
        id: &id,
        agent_key: agent.key,
        agent_id,
        action: &cmd.action,
        body: &body,
        created_ms: now,
        expires_ms: cmd.expires_ms,
    })?;
    tracing::info!(%id, agent = %agent_id, kind = cmd.action.kind(), "command submitted");
    Ok(id)
}

/// Cheap sanity checks before a command is stored (the agent checks everything again).
fn check_action(a: &Action) -> Result<(), CommandError> {
    match a {
        Action::Preload(p) => {
            if p.steps.is_empty() {
                return Err(CommandError::Invalid(
                    "a pre-load plan needs at least one step".into(),
                ));
            }
            if p.steps.len() > persona_shared::preload::MAX_STEPS {
                return Err(CommandError::Invalid(format!(
                    "{} steps; at most {}",
                    p.steps.len(),
                    persona_shared::preload::MAX_STEPS
                )));
            }
            for s in &p.steps {
                if let PreloadStep::File { sha256, url, .. } = s {
                    persona_shared::preload::validate::sha256_hex(sha256)
                        .map_err(|e| CommandError::Invalid(e.to_string()))?;
                    persona_shared::preload::validate::url(url)
                        .map_err(|e| CommandError::Invalid(e.to_string()))?;
                }
            }
        }
        Action::Cancel { id } if id.is_empty() || id.len() > MAX_ID_LEN => {
            return Err(CommandError::Invalid("bad command id to cancel".into()));
        }
        _ => {}
    }
    Ok(())
}

/// Lists commands, newest first, optionally of one agent (at most [`MAX_LIST`]).
pub fn list(
    store: &Store,
    agent_id: Option<&str>,
    limit: usize,
) -> Result<Vec<CommandRow>, CommandError> {
    Ok(store.list_commands(agent_id, limit.min(MAX_LIST))?)
}

/// One command.
pub fn get(store: &Store, id: &str) -> Result<Option<CommandRow>, CommandError> {
    Ok(store.get_command(id)?)
}

/// What a cancellation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Cancelled {
    /// It was never sent: cancelled here, it will never be delivered.
    Now,
    /// The agent has it: a signed cancel command was sent (its id); the command's own
    /// state changes when the agent reports.
    Requested(String),
}

/// Cancels a command that has not finished.
pub fn cancel(store: &Store, id: &str) -> Result<Cancelled, CommandError> {
    let cur = get(store, id)?.ok_or_else(|| CommandError::NotFound(id.to_owned()))?;
    let state = CommandState::parse(&cur.state).unwrap_or(CommandState::Failed);
    if state.is_final() {
        return Err(CommandError::Final {
            id: id.to_owned(),
            state: state.as_str(),
        });
    }
    let now = store::now_ms();
    if state == CommandState::Pending
        && cur.sent_ms.is_none()
        && store.cancel_unsent_command(id, now)?
    {
        return Ok(Cancelled::Now);
    }
    // On its way or running: ask the agent, with the same guarantees as any command.
    let ttl =
        Duration::from_millis(u64::try_from((cur.expires_ms - now).max(60_000)).unwrap_or(60_000))
            .min(*TTL_RANGE.end());
    let cid = submit(store, &cur.agent, Action::Cancel { id: id.to_owned() }, ttl)?;
    Ok(Cancelled::Requested(cid))
}

/// Applies an agent's update to a command of that agent (others are ignored: an agent
/// can only speak about its own commands). Returns whether anything changed.
pub fn apply_update(
    store: &Store,
    agent_key: i64,
    u: &CommandUpdate,
) -> Result<bool, CommandError> {
    // The agent is the authority on execution, but a final state stays final (an
    // expiry decided here yields to what the agent says it did).
    let allowed = |cur: CommandState| {
        if cur.is_final() {
            cur == CommandState::Expired && u.state != CommandState::Expired
        } else {
            rank(u.state) > rank(cur)
                || (u.state == CommandState::Running && cur == CommandState::Running)
        }
    };
    let text =
        |s: &Option<String>, n: usize| s.as_ref().map(|x| x.chars().take(n).collect::<String>());
    let (step, message) = (text(&u.step, 300), text(&u.message, 4000));
    // A pin that succeeded changes which key signs this agent's commands from now on.
    let pins = if u.state == CommandState::Succeeded {
        pinned_by(store, &u.id)?
    } else {
        None
    };
    let progress = CommandProgress {
        pins: pins.as_deref(),
        state: u.state,
        at_ms: store::now_ms(),
        delivered: rank(u.state) >= 1,
        finished: rank(u.state) == 3,
        step: step.as_deref(),
        bytes: u.bytes.and_then(|b| i64::try_from(b).ok()),
        percent: u
            .percent
            .filter(|p| p.is_finite())
            .map(|p| f64::from(p.clamp(0.0, 100.0))),
        message: message.as_deref(),
    };
    // A successful cancel command finishes the command it cancelled only when the agent
    // reports that one; nothing more to do here.
    Ok(store.advance_command(&u.id, agent_key, allowed, &progress)?)
}

/// The fingerprint a command pins, if it is a `PinCommandKey`.
fn pinned_by(store: &Store, id: &str) -> Result<Option<String>, CommandError> {
    let Some(row) = store.get_command(id)? else {
        return Ok(None);
    };
    if row.kind != PIN_KIND {
        return Ok(None);
    }
    Ok(match serde_json::from_value::<Action>(row.action) {
        Ok(Action::PinCommandKey { public_key }) => {
            Some(crate::pki::command_keys::fingerprint(&public_key))
        }
        _ => None,
    })
}

/// Queues a `PinCommandKey` of the current command key for an agent that pins another
/// key or none, unless one is already on its way or it could not be signed (the agent
/// trusts only the CA and the CA key is offline). Returns the new command's id.
pub fn pin_if_needed(
    store: &Store,
    pki: &Pki,
    agent_key: i64,
    agent_id: &str,
) -> Result<Option<String>, CommandError> {
    let keys = pki.command_keys();
    let pinned = store.agent_command_key(agent_key)?;
    if pinned.as_deref() == Some(keys.current_fingerprint())
        || store.has_live_command(agent_key, PIN_KIND, store::now_ms())?
        || pki.command_signer(pinned.as_deref()).is_err()
    {
        return Ok(None);
    }
    let action = Action::PinCommandKey {
        public_key: keys.current_public().to_vec(),
    };
    // An agent that refused this pin (a release without pinning, a hostile one) is
    // asked again an hour later, not at every wake-up of its delivery task.
    if let Some((id, state, _)) = store.latest_command_for(agent_id, &action)? {
        let refused = CommandState::parse(&state) == Some(CommandState::Failed);
        let recent = store
            .get_command(&id)?
            .is_some_and(|c| store::now_ms() - c.updated_ms < PIN_RETRY_MS);
        if refused && recent {
            return Ok(None);
        }
    }
    store_new(store, agent_id, action, PIN_TTL).map(Some)
}

/// Marks a command the coordinator cannot sign for its agent as failed, with why.
pub fn fail_unsignable(
    store: &Store,
    agent_key: i64,
    id: &str,
    reason: &str,
) -> Result<bool, CommandError> {
    let message = format!("not sent: {reason}");
    let progress = CommandProgress {
        state: CommandState::Failed,
        at_ms: store::now_ms(),
        delivered: false,
        finished: true,
        step: None,
        bytes: None,
        percent: None,
        message: Some(&message),
        pins: None,
    };
    Ok(store.advance_command(id, agent_key, |cur| !cur.is_final(), &progress)?)
}

/// Commands to (re)send to an agent: not final and not expired, oldest first.
pub fn deliverable(
    store: &Store,
    agent_key: i64,
    now: i64,
) -> Result<Vec<(String, Vec<u8>)>, CommandError> {
    Ok(store.deliverable_commands(agent_key, now)?)
}

pub fn mark_sent(store: &Store, id: &str) -> Result<(), CommandError> {
    Ok(store.mark_command_sent(id, store::now_ms())?)
}

/// Marks commands past their expiry that never started as expired, and deletes
/// commands that finished more than [`KEEP_FINISHED_MS`] ago; returns how many expired.
pub fn expire_due(store: &Store, now: i64) -> Result<usize, CommandError> {
    Ok(store.expire_commands(now, now - KEEP_FINISHED_MS)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use persona_shared::command::ConfigUpdate;

    fn store_with_agent() -> (tempfile::TempDir, Store, i64) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("p.db")).unwrap();
        let (token, _) = store.create_token(60_000, 1).unwrap();
        store.enroll(&token, "a-1", "host", "fp").unwrap().unwrap();
        let key = store.agent_key("a-1").unwrap().unwrap();
        (dir, store, key)
    }

    fn update(id: &str, state: CommandState) -> CommandUpdate {
        CommandUpdate {
            id: id.into(),
            state,
            at_ms: 0,
            step: Some("x".into()),
            bytes: Some(5),
            percent: Some(50.0),
            message: None,
        }
    }

    #[test]
    fn the_state_machine_moves_forward_only() {
        let (_d, store, key) = store_with_agent();
        let action = Action::ConfigUpdate(ConfigUpdate::default());
        let id = submit(&store, "a-1", action.clone(), Duration::from_secs(60)).unwrap();
        assert_eq!(get(&store, &id).unwrap().unwrap().state, "pending");
        assert_eq!(deliverable(&store, key, store::now_ms()).unwrap().len(), 1);
        // Another agent cannot speak about it.
        assert!(!apply_update(&store, key + 1, &update(&id, CommandState::Running)).unwrap());
        assert!(apply_update(&store, key, &update(&id, CommandState::Running)).unwrap());
        assert!(!apply_update(&store, key, &update(&id, CommandState::Delivered)).unwrap());
        assert!(apply_update(&store, key, &update(&id, CommandState::Succeeded)).unwrap());
        assert!(!apply_update(&store, key, &update(&id, CommandState::Failed)).unwrap());
        let row = get(&store, &id).unwrap().unwrap();
        assert_eq!(row.state, "succeeded");
        assert!(
            row.started_ms.is_some() && row.finished_ms.is_some() && row.delivered_ms.is_some()
        );
        assert_eq!(row.percent, Some(100.0));
        assert!(
            deliverable(&store, key, store::now_ms())
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            cancel(&store, &id),
            Err(CommandError::Final { .. })
        ));
        // Pending and never sent: cancelled at once, never delivered.
        let id2 = submit(&store, "a-1", action.clone(), Duration::from_secs(60)).unwrap();
        assert_eq!(cancel(&store, &id2).unwrap(), Cancelled::Now);
        assert_eq!(get(&store, &id2).unwrap().unwrap().state, "cancelled");
        // Sent: a signed cancel goes to the agent instead.
        let id3 = submit(&store, "a-1", action.clone(), Duration::from_secs(60)).unwrap();
        mark_sent(&store, &id3).unwrap();
        let Cancelled::Requested(c) = cancel(&store, &id3).unwrap() else {
            panic!("expected a cancel command");
        };
        assert_eq!(get(&store, &c).unwrap().unwrap().kind, "cancel");
        // Expiry.
        let id4 = submit(&store, "a-1", action, Duration::from_secs(1)).unwrap();
        assert!(expire_due(&store, store::now_ms() + 5_000).unwrap() >= 1);
        assert_eq!(get(&store, &id4).unwrap().unwrap().state, "expired");
        assert_eq!(list(&store, Some("a-1"), 10).unwrap().len(), 5);
        assert!(list(&store, Some("a-2"), 10).unwrap().is_empty());
        // A month on, the two still pending (the sent one and its cancel) have expired
        // too, and everything finished that old is deleted.
        let later = store::now_ms() + KEEP_FINISHED_MS + 60_000;
        assert_eq!(expire_due(&store, later).unwrap(), 2);
        assert!(list(&store, Some("a-1"), 10).unwrap().is_empty());
        // A fresh one is kept.
        let fresh = submit(
            &store,
            "a-1",
            Action::Cancel { id: id4.clone() },
            Duration::from_secs(60),
        )
        .unwrap();
        expire_due(&store, store::now_ms()).unwrap();
        assert_eq!(get(&store, &fresh).unwrap().unwrap().state, "pending");
    }

    #[test]
    fn bad_submissions_are_refused() {
        let (_d, store, _) = store_with_agent();
        let a = Action::ConfigUpdate(ConfigUpdate::default());
        assert!(matches!(
            submit(&store, "a-9", a.clone(), Duration::from_secs(60)),
            Err(CommandError::UnknownAgent(_))
        ));
        assert!(matches!(
            submit(&store, "a-1", a, Duration::from_secs(30 * 86400)),
            Err(CommandError::Ttl(_))
        ));
        let empty = Action::Preload(Default::default());
        assert!(matches!(
            submit(&store, "a-1", empty, Duration::from_secs(60)),
            Err(CommandError::Invalid(_))
        ));
    }
}
