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
//! Each body is signed with the CA key at sending time (`signing`). The agent remembers
//! ids, so a repeat is acknowledged with its known state and never run twice.
//!
//! What it is not: the agent side (`persona_agent::commands`), signing (`signing`) or
//! what a pre-load plan contains (`preload`).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::{Method, StatusCode};
use persona_shared::command::{
    Action, Command, CommandState, CommandUpdate, MAX_ID_LEN, PreloadStep,
};
use persona_shared::protocol::{self, CoordMsg};
use quinn::SendStream;
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, watch};

use crate::api::{ApiState, Resp, error, reply};
use crate::server::Shared;
use crate::store::{self, Store, StoreError};

/// The command tables, created with the store (see `Store::open`).
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS commands(
    id TEXT PRIMARY KEY, agent INTEGER NOT NULL, agent_id TEXT NOT NULL, kind TEXT NOT NULL,
    body BLOB NOT NULL, action TEXT NOT NULL, state TEXT NOT NULL,
    created_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
    sent_ms INTEGER, delivered_ms INTEGER, started_ms INTEGER, finished_ms INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    step TEXT, bytes INTEGER, percent REAL, message TEXT);
CREATE INDEX IF NOT EXISTS commands_by_agent ON commands(agent, state);
CREATE INDEX IF NOT EXISTS commands_by_created ON commands(created_ms);
CREATE INDEX IF NOT EXISTS commands_by_expiry ON commands(state, expires_ms);
-- model_push::ensure_grant looks up an agent's latest model_update by agent id; without
-- this index each lookup scanned the whole table (one per waiting agent per poll).
CREATE INDEX IF NOT EXISTS commands_by_agent_kind ON commands(agent_id, kind, created_ms);
";

/// Finished commands are kept this long, then deleted with their results.
pub const KEEP_FINISHED_MS: i64 = 30 * 24 * 3600 * 1000;

/// Shortest and longest time a command may live.
pub const TTL_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(7 * 24 * 3600);
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
/// Most commands a list returns.
pub const MAX_LIST: usize = 1000;

/// Errors of the command channel.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("command store query failed ({context}): {source}")]
    Sql {
        context: &'static str,
        source: rusqlite::Error,
    },
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

fn sql(context: &'static str) -> impl FnOnce(rusqlite::Error) -> CommandError {
    move |source| CommandError::Sql { context, source }
}

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
/// [`Hub::wake`]. This is what the engine calls for auto-mode resizes.
pub fn submit(
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
    let (key, revoked): (i64, bool) = {
        let c = store.r()?;
        c.query_row(
            "SELECT key, revoked_ms IS NOT NULL FROM agents WHERE id = ?1",
            params![agent_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(sql("agent lookup"))?
        .ok_or_else(|| CommandError::UnknownAgent(agent_id.to_owned()))?
    };
    if revoked {
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
    let action_json = serde_json::to_string(&cmd.action).unwrap_or_else(|_| "null".into());
    store
        .w()?
        .execute(
            "INSERT INTO commands(id, agent, agent_id, kind, body, action, state, created_ms, expires_ms, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?8, ?7)",
            params![
                id,
                key,
                agent_id,
                cmd.action.kind(),
                body,
                action_json,
                now,
                cmd.expires_ms
            ],
        )
        .map_err(sql("insert command"))?;
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

/// Lists commands, newest first, optionally of one agent.
pub fn list(
    store: &Store,
    agent_id: Option<&str>,
    limit: usize,
) -> Result<Vec<CommandRow>, CommandError> {
    let c = store.r()?;
    let limit = i64::try_from(limit.min(MAX_LIST)).unwrap_or(100);
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
pub fn get(store: &Store, id: &str) -> Result<Option<CommandRow>, CommandError> {
    store
        .r()?
        .query_row(
            &format!("SELECT {COLUMNS} FROM commands WHERE id = ?1"),
            params![id],
            row,
        )
        .optional()
        .map_err(sql("get command"))
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
    if state == CommandState::Pending && cur.sent_ms.is_none() {
        let n = store
            .w()?
            .execute(
                "UPDATE commands SET state = 'cancelled', finished_ms = ?2, updated_ms = ?2,
                    message = 'cancelled by the operator before delivery'
                 WHERE id = ?1 AND state = 'pending' AND sent_ms IS NULL",
                params![id, now],
            )
            .map_err(sql("cancel command"))?;
        if n == 1 {
            return Ok(Cancelled::Now);
        }
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
    let c = store.w()?;
    let cur: Option<String> = c
        .query_row(
            "SELECT state FROM commands WHERE id = ?1 AND agent = ?2",
            params![u.id, agent_key],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql("update lookup"))?;
    let Some(cur) = cur.as_deref().and_then(CommandState::parse) else {
        return Ok(false);
    };
    // The agent is the authority on execution, but a final state stays final (an
    // expiry decided here yields to what the agent says it did).
    let allowed = if cur.is_final() {
        cur == CommandState::Expired && u.state != CommandState::Expired
    } else {
        rank(u.state) > rank(cur)
            || (u.state == CommandState::Running && cur == CommandState::Running)
    };
    if !allowed {
        return Ok(false);
    }
    let now = store::now_ms();
    let text =
        |s: &Option<String>, n: usize| s.as_ref().map(|x| x.chars().take(n).collect::<String>());
    let bytes = u.bytes.and_then(|b| i64::try_from(b).ok());
    let percent = u
        .percent
        .filter(|p| p.is_finite())
        .map(|p| f64::from(p.clamp(0.0, 100.0)));
    c.execute(
        "UPDATE commands SET state = ?3, updated_ms = ?4,
            delivered_ms = COALESCE(delivered_ms, CASE WHEN ?5 >= 1 THEN ?4 END),
            started_ms = COALESCE(started_ms, CASE WHEN ?3 = 'running' THEN ?4 END),
            finished_ms = CASE WHEN ?5 = 3 THEN ?4 ELSE finished_ms END,
            step = COALESCE(?6, step), bytes = COALESCE(?7, bytes),
            percent = CASE WHEN ?3 = 'succeeded' THEN 100.0 ELSE COALESCE(?8, percent) END,
            message = COALESCE(?9, message)
         WHERE id = ?1 AND agent = ?2",
        params![
            u.id,
            agent_key,
            u.state.as_str(),
            now,
            rank(u.state),
            text(&u.step, 300),
            bytes,
            percent,
            text(&u.message, 4000)
        ],
    )
    .map_err(sql("apply update"))?;
    // A successful cancel command finishes the command it cancelled only when the agent
    // reports that one; nothing more to do here.
    Ok(true)
}

/// Commands to (re)send to an agent: not final and not expired, oldest first.
pub fn deliverable(
    store: &Store,
    agent_key: i64,
    now: i64,
) -> Result<Vec<(String, Vec<u8>)>, CommandError> {
    let c = store.r()?;
    let mut st = c
        .prepare(
            "SELECT id, body FROM commands WHERE agent = ?1
                AND state IN ('pending', 'delivered', 'running') AND expires_ms >= ?2
             ORDER BY created_ms, id LIMIT 256",
        )
        .map_err(sql("deliverable"))?;
    let rows = st
        .query_map(params![agent_key, now], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(sql("deliverable"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql("deliverable"))?;
    Ok(rows)
}

fn mark_sent(store: &Store, id: &str) -> Result<(), CommandError> {
    store
        .w()?
        .execute(
            "UPDATE commands SET sent_ms = ?2, attempts = attempts + 1 WHERE id = ?1",
            params![id, store::now_ms()],
        )
        .map_err(sql("mark sent"))?;
    Ok(())
}

/// Marks commands past their expiry that never started as expired, and deletes
/// commands that finished more than [`KEEP_FINISHED_MS`] ago; returns how many expired.
pub fn expire_due(store: &Store, now: i64) -> Result<usize, CommandError> {
    let c = store.w()?;
    let n = c
        .execute(
            "UPDATE commands SET state = 'expired', finished_ms = ?1, updated_ms = ?1,
                message = COALESCE(message, 'expired before the agent ran it')
             WHERE state IN ('pending', 'delivered') AND expires_ms < ?1",
            params![now],
        )
        .map_err(sql("expire"))?;
    c.execute(
        "DELETE FROM commands WHERE created_ms < ?1
            AND state IN ('succeeded', 'failed', 'expired', 'cancelled')",
        params![now - KEEP_FINISHED_MS],
    )
    .map_err(sql("prune commands"))?;
    Ok(n)
}

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
    shared: &Arc<Shared>,
    agent_key: i64,
    agent_id: &str,
) -> mpsc::Receiver<CoordMsg> {
    let (tx, rx) = mpsc::channel(PUSH_QUEUE);
    let shared = shared.clone();
    let agent_id = agent_id.to_owned();
    tokio::spawn(async move {
        let (reg, wake) = shared.commands.register(agent_key);
        let mut sent: HashSet<String> = HashSet::new();
        // Resizes of a VM served by an outside actuator run in the coordinator
        // (`actuate::dispatch`) and are not the agent's to execute.
        let external = {
            let (store, b, a) = (
                shared.store.clone(),
                shared.settings.actuators.clone(),
                agent_id.clone(),
            );
            tokio::task::spawn_blocking(move || {
                crate::actuate::dispatch::external_actuator(&b, &store, &a).is_some()
            })
            .await
            .unwrap_or(false)
        };
        loop {
            let store = shared.store.clone();
            let due = tokio::task::spawn_blocking(move || {
                deliverable(&store, agent_key, store::now_ms())
            })
            .await;
            match due {
                Ok(Ok(list)) => {
                    for (id, body) in list {
                        if sent.contains(&id)
                            || crate::actuate::dispatch::runs_here(external, &body)
                        {
                            continue;
                        }
                        let signed = match crate::signing::sign_body(&shared.pki, body) {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::error!(%id, "cannot sign command: {e}");
                                continue;
                            }
                        };
                        if tx.send(CoordMsg::Command(signed)).await.is_err() {
                            shared.commands.unregister(agent_key, reg);
                            return;
                        }
                        tracing::info!(%id, agent = %agent_id, "command sent");
                        let store = shared.store.clone();
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
        shared.commands.unregister(agent_key, reg);
    });
    rx
}

/// Awaits `read` (the control stream's next frame) while writing whatever the delivery
/// task pushes on the same stream. The read future is kept across pushes, so no byte
/// of an incoming frame is lost.
pub async fn read_or_push<F>(
    read: F,
    tx: &mut SendStream,
    pushes: &mut Option<mpsc::Receiver<CoordMsg>>,
    max: usize,
) -> Result<Vec<u8>, String>
where
    F: Future<Output = Result<Vec<u8>, String>>,
{
    tokio::pin!(read);
    loop {
        let Some(rx) = pushes.as_mut() else {
            return read.await;
        };
        tokio::select! {
            r = &mut read => return r,
            m = rx.recv() => match m {
                Some(msg) => {
                    let mut buf = Vec::with_capacity(512);
                    protocol::encode_frame(&msg, &mut buf, max)
                        .map_err(|e| format!("control stream closed: cannot encode a push: {e}"))?;
                    tx.write_all(&buf)
                        .await
                        .map_err(|e| format!("control stream closed while pushing: {e}"))?;
                }
                None => *pushes = None,
            }
        }
    }
}

/// Handles `AgentMsg::CommandUpdate` from an authenticated agent.
pub async fn on_update(shared: &Shared, agent_key: i64, agent_id: &str, u: CommandUpdate) {
    let store = shared.store.clone();
    let id = u.id.clone();
    let state = u.state;
    match tokio::task::spawn_blocking(move || apply_update(&store, agent_key, &u)).await {
        Ok(Ok(true)) => {
            tracing::info!(%id, agent = %agent_id, state = state.as_str(), "command update");
        }
        Ok(Ok(false)) => {
            tracing::debug!(%id, agent = %agent_id, "stale or foreign command update ignored")
        }
        Ok(Err(e)) => tracing::warn!(%id, "command update: {e}"),
        Err(e) => tracing::warn!(%id, "command update task: {e}"),
    }
}

/// Marks expired commands every few seconds until shutdown.
pub async fn expiry_loop(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let store = shared.store.clone();
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

fn status_of(e: &CommandError) -> StatusCode {
    match e {
        CommandError::UnknownAgent(_) | CommandError::NotFound(_) => StatusCode::NOT_FOUND,
        CommandError::Final { .. } | CommandError::Revoked(_) => StatusCode::CONFLICT,
        CommandError::Ttl(_) | CommandError::Invalid(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn fail(e: CommandError) -> Resp {
    error(status_of(&e), e)
}

async fn blocking(f: impl FnOnce() -> Resp + Send + 'static) -> Resp {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// HTTP routes of the command channel, mounted by `api::handle`:
///
/// | route | what |
/// |---|---|
/// | `GET /v1/commands?agent=ID&limit=N` | commands, newest first |
/// | `GET /v1/commands/{id}` | one command |
/// | `POST /v1/commands` | body `{"agent","action","ttl_s"}`: submit any action (JSON of `Action`) |
/// | `POST /v1/commands/{id}/cancel` | cancel |
/// | `POST /v1/preload` | body `{"agent","persona"?,"files"?,"dry_run"?,"ttl_s"?}` (see `preload`) |
pub async fn handle_api(
    st: &ApiState,
    method: &Method,
    parts: &[&str],
    query: &str,
    body: &[u8],
) -> Option<Resp> {
    let shared = st.shared.clone();
    let r = match (method, parts) {
        (&Method::GET, ["v1", "commands"]) => {
            let agent = query_param(query, "agent").map(str::to_owned);
            let limit = query_param(query, "limit")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(100);
            blocking(move || match list(&shared.store, agent.as_deref(), limit) {
                Ok(v) => reply(StatusCode::OK, &json!({ "commands": v })),
                Err(e) => fail(e),
            })
            .await
        }
        (&Method::GET, ["v1", "commands", id]) => {
            let id = (*id).to_owned();
            blocking(move || match get(&shared.store, &id) {
                Ok(Some(c)) => reply(StatusCode::OK, &json!(c)),
                Ok(None) => error(StatusCode::NOT_FOUND, format!("no command {id}")),
                Err(e) => fail(e),
            })
            .await
        }
        (&Method::POST, ["v1", "commands", id, "cancel"]) => {
            let id = (*id).to_owned();
            blocking(move || match cancel(&shared.store, &id) {
                Ok(outcome) => {
                    if let Ok(Some(c)) = get(&shared.store, &id) {
                        shared.commands.wake_agent(&shared.store, &c.agent);
                    }
                    let (how, cancel_id) = match outcome {
                        Cancelled::Now => ("cancelled", None),
                        Cancelled::Requested(c) => ("requested", Some(c)),
                    };
                    reply(
                        StatusCode::OK,
                        &json!({ "id": id, "cancel": how, "cancel_command": cancel_id }),
                    )
                }
                Err(e) => fail(e),
            })
            .await
        }
        (&Method::POST, ["v1", "commands"]) => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Req {
                agent: String,
                action: Action,
                #[serde(default = "default_ttl")]
                ttl_s: u64,
            }
            let req: Req = match serde_json::from_slice(body) {
                Ok(r) => r,
                Err(e) => return Some(error(StatusCode::BAD_REQUEST, format!("body: {e}"))),
            };
            blocking(move || {
                match submit(
                    &shared.store,
                    &req.agent,
                    req.action,
                    Duration::from_secs(req.ttl_s),
                ) {
                    Ok(id) => {
                        shared.commands.wake_agent(&shared.store, &req.agent);
                        match get(&shared.store, &id) {
                            Ok(Some(c)) => reply(StatusCode::OK, &json!(c)),
                            _ => reply(StatusCode::OK, &json!({ "id": id })),
                        }
                    }
                    Err(e) => fail(e),
                }
            })
            .await
        }
        (&Method::POST, ["v1", "preload"]) => crate::preload::handle(st, body).await,
        _ => return None,
    };
    Some(r)
}

fn default_ttl() -> u64 {
    3600
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
