//! The agent's command runner: it takes the signed commands the link receives on the
//! control stream, verifies each against the CA pinned at enrollment, remembers every
//! id it has accepted, checks the local policy and runs the action off the sampling
//! path, streaming `CommandUpdate`s back.
//!
//! Order of checks, each refusal reported to the coordinator: the signature over the
//! exact body bytes (before anything in the body is trusted; only the id is read from an
//! unverified body, to say what was refused), then the agent id, then the expiry. The
//! accepted id is written to `state_dir/commands.db` (synchronous=FULL) before anything
//! runs, so a resent command, even after an agent restart, is acknowledged with its
//! known state and never run twice. A command that was running when the agent stopped
//! is reported failed on the next start rather than run again (its effect is unknown).
//! Commands run one at a time; a `Cancel` is handled at once, so it can stop a queued
//! command or a running pre-load between steps.
//!
//! What it is not: the transport (`link`), the policy file format (`policy`) or the
//! pre-load steps themselves (`preload`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use persona_shared::command::{
    Action, Command, CommandState, CommandUpdate, ConfigUpdate, MAX_ID_LEN, SignedCommand,
    signed_message,
};
use rusqlite::{Connection, OptionalExtension, params};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::{mpsc, watch};

use crate::config::{BATCH_INTERVAL_RANGE_S, MAX_POINTS_PER_BATCH, SAMPLE_INTERVAL_RANGE_MS};
use crate::link::Settings;
use crate::policy::Policy;
use crate::preload;

/// Name of the command log in the state dir.
pub const COMMANDS_FILE: &str = "commands.db";
/// Ids older than this are forgotten. The coordinator lets a command live at most 7 days
/// and the agent refuses an expired one by its signed expiry, so an id this old can never
/// run again anyway.
const FORGET_AFTER_MS: i64 = 8 * 24 * 3600 * 1000;
/// Signed commands waiting to be checked, at most (more are dropped; the coordinator
/// resends undelivered ones after a reconnect).
const INBOX: usize = 64;
/// Updates waiting for the link, at most (progress beyond it is dropped; final states
/// are re-reported when the coordinator resends).
const OUTBOX: usize = 256;
/// Progress updates of one command, at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// Errors of the command runner's set-up and log.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("command log {path}: {source}")]
    Log {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot read the CA certificate {path}: {reason}")]
    Ca { path: PathBuf, reason: String },
}

/// Why a command was refused before it could run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the signature does not verify against the pinned coordinator CA")]
    BadSignature,
    #[error("the command is for agent {target}, not this one")]
    WrongAgent { target: String },
    #[error("the command expired at {expires_ms} (now {now_ms})")]
    Expired { expires_ms: i64, now_ms: i64 },
    #[error("malformed command body: {0}")]
    Malformed(String),
}

/// The DER of the first certificate in a PEM file (the agent's `ca.pem`).
pub fn ca_der_from_pem(pem: &[u8]) -> Result<Vec<u8>, String> {
    CertificateDer::from_pem_slice(pem)
        .map(|c| c.as_ref().to_vec())
        .map_err(|e| e.to_string())
}

/// Checks a signed command against the CA certificate `ca_der`, this agent's id and the
/// clock, in that order, and only then decodes it.
pub fn verify(
    ca_der: &[u8],
    signed: &SignedCommand,
    agent_id: &str,
    now_ms: i64,
) -> Result<Command, Refusal> {
    let der = CertificateDer::from(ca_der);
    let ca = webpki::EndEntityCert::try_from(&der).map_err(|_| Refusal::BadSignature)?;
    ca.verify_signature(
        webpki::ring::ECDSA_P256_SHA256,
        &signed_message(&signed.body),
        &signed.signature,
    )
    .map_err(|_| Refusal::BadSignature)?;
    let cmd = Command::decode(&signed.body).map_err(|e| Refusal::Malformed(e.to_string()))?;
    if cmd.id.is_empty() || cmd.id.len() > MAX_ID_LEN {
        return Err(Refusal::Malformed(format!(
            "command id of {} bytes",
            cmd.id.len()
        )));
    }
    if cmd.agent_id != agent_id {
        return Err(Refusal::WrongAgent {
            target: cmd.agent_id,
        });
    }
    if now_ms > cmd.expires_ms {
        return Err(Refusal::Expired {
            expires_ms: cmd.expires_ms,
            now_ms,
        });
    }
    Ok(cmd)
}

/// The id of an unverified body, only to say which command was refused (the body's
/// first field; nothing else in it is read). Sanitised and bounded.
fn claimed_id(body: &[u8]) -> Option<String> {
    let (id, ..): (
        String,
        serde::de::IgnoredAny,
        serde::de::IgnoredAny,
        serde::de::IgnoredAny,
        serde::de::IgnoredAny,
    ) = rmp_serde::from_slice(body).ok()?;
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    ok.then_some(id)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// What the log knows about an id.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// First time: recorded, run it.
    New,
    /// Seen before: its last known state and message.
    Seen {
        state: CommandState,
        message: Option<String>,
    },
}

/// The persistent record of accepted command ids (and model grants).
#[derive(Debug)]
pub struct CommandLog {
    conn: Connection,
    path: PathBuf,
}

impl CommandLog {
    /// Opens `path`, marking commands that were running when the agent stopped as failed.
    pub fn open(path: &Path) -> Result<CommandLog, CommandError> {
        let err = |source| CommandError::Log {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        // An id must be on disk before its command runs: one fsync per command is cheap.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS executed(
                id TEXT PRIMARY KEY, kind TEXT NOT NULL, received_ms INTEGER NOT NULL,
                state TEXT NOT NULL, finished_ms INTEGER, message TEXT);
             CREATE TABLE IF NOT EXISTS model_grants(
                kind TEXT NOT NULL, version TEXT NOT NULL, sha256 BLOB NOT NULL,
                granted_ms INTEGER NOT NULL, PRIMARY KEY(kind, version));",
        )
        .map_err(err)?;
        conn.execute(
            "UPDATE executed SET state = 'failed', finished_ms = ?1,
                message = 'interrupted: the agent stopped before the command finished'
             WHERE state IN ('delivered', 'running')",
            params![now_ms()],
        )
        .map_err(err)?;
        conn.execute(
            "DELETE FROM executed WHERE received_ms < ?1",
            params![now_ms() - FORGET_AFTER_MS],
        )
        .map_err(err)?;
        Ok(CommandLog {
            conn,
            path: path.to_owned(),
        })
    }

    fn err(&self) -> impl FnOnce(rusqlite::Error) -> CommandError + '_ {
        move |source| CommandError::Log {
            path: self.path.clone(),
            source,
        }
    }

    /// Records `id` unless it is known; says which.
    pub fn claim(&self, id: &str, kind: &str) -> Result<Claim, CommandError> {
        let n = self
            .conn
            .execute(
                "INSERT OR IGNORE INTO executed(id, kind, received_ms, state) VALUES (?1, ?2, ?3, 'delivered')",
                params![id, kind, now_ms()],
            )
            .map_err(self.err())?;
        if n == 1 {
            return Ok(Claim::New);
        }
        let row: Option<(String, Option<String>)> = self
            .conn
            .query_row(
                "SELECT state, message FROM executed WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.err())?;
        let (state, message) = row.unwrap_or_else(|| ("failed".into(), None));
        Ok(Claim::Seen {
            state: CommandState::parse(&state).unwrap_or(CommandState::Failed),
            message,
        })
    }

    /// Records a state (and, for a final one, the message).
    pub fn set_state(
        &self,
        id: &str,
        state: CommandState,
        message: Option<&str>,
    ) -> Result<(), CommandError> {
        let finished = state.is_final().then(now_ms);
        self.conn
            .execute(
                "UPDATE executed SET state = ?2, finished_ms = COALESCE(?3, finished_ms),
                    message = COALESCE(?4, message) WHERE id = ?1",
                params![id, state.as_str(), finished, message],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Records that the model `kind` at `version` with this checksum may be accepted.
    pub fn grant_model(
        &self,
        kind: &str,
        version: &str,
        sha256: &[u8],
    ) -> Result<(), CommandError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO model_grants(kind, version, sha256, granted_ms) VALUES (?1, ?2, ?3, ?4)",
                params![kind, version, sha256, now_ms()],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Whether a signed command granted this model (the model push handler may ask).
    pub fn model_granted(
        &self,
        kind: &str,
        version: &str,
        sha256: &[u8],
    ) -> Result<bool, CommandError> {
        self.conn
            .query_row(
                "SELECT 1 FROM model_grants WHERE kind = ?1 AND version = ?2 AND sha256 = ?3",
                params![kind, version, sha256],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(self.err())
    }
}

/// Whether a signed `ModelUpdate` granted this model, read from the state dir's command
/// log by whoever handles a model push (a read of its own; the runner keeps writing).
pub fn model_granted_in(
    state_dir: &Path,
    kind: &str,
    version: &str,
    sha256: &[u8],
) -> Result<bool, CommandError> {
    let path = state_dir.join(COMMANDS_FILE);
    let err = |source| CommandError::Log {
        path: path.clone(),
        source,
    };
    let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(err)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
    conn.query_row(
        "SELECT 1 FROM model_grants WHERE kind = ?1 AND version = ?2 AND sha256 = ?3",
        params![kind, version, sha256],
        |_| Ok(()),
    )
    .optional()
    .map(|r| r.is_some())
    .map_err(err)
}

/// What the runner needs.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub state_dir: PathBuf,
    pub agent_id: String,
    /// The pinned CA (`state_dir/ca.pem`).
    pub ca_pem: PathBuf,
    /// The local policy, re-read for every command so an edit needs no restart.
    pub policy_file: PathBuf,
    /// The `guest` resize actuator's settings (`sys_root` filled in).
    pub guest_actuator: crate::actuate::GuestActuatorConfig,
}

/// The two ends the link uses: where received commands go, and the updates to send.
#[derive(Debug, Clone)]
pub struct LinkHooks {
    pub inbox: mpsc::Sender<SignedCommand>,
    pub updates: Arc<tokio::sync::Mutex<mpsc::Receiver<CommandUpdate>>>,
}

impl LinkHooks {
    /// Hands a received command to the runner without waiting; a full inbox drops it
    /// (the coordinator resends what was not acknowledged after a reconnect).
    pub fn received(&self, c: SignedCommand) {
        if self.inbox.try_send(c).is_err() {
            tracing::warn!(
                "command inbox full or closed; a command was dropped until it is resent"
            );
        }
    }
}

struct Runner {
    cfg: RunnerConfig,
    ca_der: Vec<u8>,
    log: Arc<Mutex<CommandLog>>,
    updates: mpsc::Sender<CommandUpdate>,
    settings: watch::Sender<Settings>,
    /// Cancel flags of accepted commands that have not finished.
    cancels: Arc<Mutex<HashMap<String, Arc<AtomicBool>>>>,
}

/// Starts the runner: returns the hooks for the link and the runner's task.
pub fn start(
    cfg: RunnerConfig,
    settings: watch::Sender<Settings>,
) -> Result<(LinkHooks, tokio::task::JoinHandle<()>), CommandError> {
    let pem = std::fs::read(&cfg.ca_pem).map_err(|e| CommandError::Ca {
        path: cfg.ca_pem.clone(),
        reason: e.to_string(),
    })?;
    let ca_der = ca_der_from_pem(&pem).map_err(|reason| CommandError::Ca {
        path: cfg.ca_pem.clone(),
        reason,
    })?;
    let log = CommandLog::open(&cfg.state_dir.join(COMMANDS_FILE))?;
    let (in_tx, in_rx) = mpsc::channel(INBOX);
    let (up_tx, up_rx) = mpsc::channel(OUTBOX);
    let runner = Runner {
        cfg,
        ca_der,
        log: Arc::new(Mutex::new(log)),
        updates: up_tx,
        settings,
        cancels: Arc::new(Mutex::new(HashMap::new())),
    };
    let task = tokio::spawn(runner.run(in_rx));
    Ok((
        LinkHooks {
            inbox: in_tx,
            updates: Arc::new(tokio::sync::Mutex::new(up_rx)),
        },
        task,
    ))
}

fn update(id: &str, state: CommandState, message: Option<String>) -> CommandUpdate {
    CommandUpdate {
        id: id.to_owned(),
        state,
        at_ms: now_ms(),
        step: None,
        bytes: None,
        percent: None,
        message,
    }
}

fn lock_log(log: &Mutex<CommandLog>) -> std::sync::MutexGuard<'_, CommandLog> {
    log.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Runner {
    fn report(&self, u: CommandUpdate) {
        if self.updates.try_send(u).is_err() {
            tracing::debug!("command update queue full; dropped one update");
        }
    }

    async fn run(self, mut inbox: mpsc::Receiver<SignedCommand>) {
        let (work_tx, work_rx) = mpsc::unbounded_channel::<(Command, Arc<AtomicBool>)>();
        let exec = tokio::spawn(execute_loop(
            work_rx,
            self.log.clone(),
            self.updates.clone(),
            self.settings.clone(),
            self.cfg.policy_file.clone(),
            self.cfg.guest_actuator.clone(),
            self.cancels.clone(),
        ));
        while let Some(signed) = inbox.recv().await {
            self.accept(signed, &work_tx);
        }
        drop(work_tx);
        let _ = exec.await;
    }

    /// Verifies, de-duplicates and queues one command (or handles a Cancel at once).
    fn accept(
        &self,
        signed: SignedCommand,
        work: &mpsc::UnboundedSender<(Command, Arc<AtomicBool>)>,
    ) {
        let cmd = match verify(&self.ca_der, &signed, &self.cfg.agent_id, now_ms()) {
            Ok(c) => c,
            Err(refusal) => {
                let id = claimed_id(&signed.body);
                tracing::warn!(
                    id = id.as_deref().unwrap_or("?"),
                    "command refused: {refusal}"
                );
                if let Some(id) = id {
                    let state = if matches!(refusal, Refusal::Expired { .. }) {
                        CommandState::Expired
                    } else {
                        CommandState::Failed
                    };
                    self.report(update(&id, state, Some(format!("refused: {refusal}"))));
                }
                return;
            }
        };
        let claim = lock_log(&self.log).claim(&cmd.id, cmd.action.kind());
        match claim {
            Ok(Claim::New) => {}
            Ok(Claim::Seen { state, message }) => {
                tracing::info!(id = %cmd.id, state = state.as_str(), "repeated command acknowledged, not run again");
                self.report(update(&cmd.id, state, message));
                return;
            }
            Err(e) => {
                // Without a durable record it could run twice: refuse.
                tracing::error!("{e}");
                self.report(update(
                    &cmd.id,
                    CommandState::Failed,
                    Some(format!("refused: cannot record the command id: {e}")),
                ));
                return;
            }
        }
        self.report(update(&cmd.id, CommandState::Delivered, None));
        if let Action::Cancel { id } = &cmd.action {
            let flag = self.cancels.lock().ok().and_then(|m| m.get(id).cloned());
            let (state, msg) = match flag {
                Some(f) => {
                    f.store(true, Ordering::Relaxed);
                    (
                        CommandState::Succeeded,
                        format!("cancellation of {id} requested"),
                    )
                }
                None => (
                    CommandState::Failed,
                    format!("{id} is not queued or running here"),
                ),
            };
            let _ = lock_log(&self.log).set_state(&cmd.id, state, Some(&msg));
            self.report(update(&cmd.id, state, Some(msg)));
            return;
        }
        let flag = Arc::new(AtomicBool::new(false));
        if let Ok(mut m) = self.cancels.lock() {
            m.insert(cmd.id.clone(), flag.clone());
        }
        let _ = work.send((cmd, flag));
    }
}

/// Runs accepted commands one at a time, each on a blocking thread.
async fn execute_loop(
    mut work: mpsc::UnboundedReceiver<(Command, Arc<AtomicBool>)>,
    log: Arc<Mutex<CommandLog>>,
    updates: mpsc::Sender<CommandUpdate>,
    settings: watch::Sender<Settings>,
    policy_file: PathBuf,
    guest: crate::actuate::GuestActuatorConfig,
    cancels: Arc<Mutex<HashMap<String, Arc<AtomicBool>>>>,
) {
    while let Some((cmd, cancel)) = work.recv().await {
        let id = cmd.id.clone();
        let (state, message) = if cancel.load(Ordering::Relaxed) {
            (
                CommandState::Cancelled,
                "cancelled before it started".to_owned(),
            )
        } else if now_ms() > cmd.expires_ms {
            (
                CommandState::Expired,
                format!("expired at {} before it could start", cmd.expires_ms),
            )
        } else {
            let _ = lock_log(&log).set_state(&id, CommandState::Running, None);
            let _ = updates.try_send(update(&id, CommandState::Running, None));
            let ctx = ExecContext {
                policy_file: policy_file.clone(),
                guest: guest.clone(),
                settings: settings.clone(),
                log: log.clone(),
                updates: updates.clone(),
            };
            let c2 = cancel.clone();
            match tokio::task::spawn_blocking(move || execute(&cmd, &ctx, &c2)).await {
                Ok(r) => r,
                Err(e) => (
                    CommandState::Failed,
                    format!("the command's task failed: {e}"),
                ),
            }
        };
        tracing::info!(%id, state = state.as_str(), "command finished: {message}");
        let _ = lock_log(&log).set_state(&id, state, Some(&message));
        let _ = updates.try_send(update(&id, state, Some(message)));
        if let Ok(mut m) = cancels.lock() {
            m.remove(&id);
        }
    }
}

/// What an action needs besides the command.
struct ExecContext {
    policy_file: PathBuf,
    guest: crate::actuate::GuestActuatorConfig,
    settings: watch::Sender<Settings>,
    log: Arc<Mutex<CommandLog>>,
    updates: mpsc::Sender<CommandUpdate>,
}

/// Carries out one action (blocking). Returns the final state and message.
fn execute(cmd: &Command, ctx: &ExecContext, cancel: &AtomicBool) -> (CommandState, String) {
    let (policy_file, settings, log, updates) =
        (&ctx.policy_file, &ctx.settings, &ctx.log, &ctx.updates);
    let policy = match Policy::load(policy_file) {
        Ok(p) => p,
        Err(e) => return (CommandState::Failed, format!("refused: {e}")),
    };
    let refused = |what: &str, key: &str| {
        (
            CommandState::Failed,
            format!(
                "refused: {what} is off in the local policy ({key} in {})",
                policy_file.display()
            ),
        )
    };
    match &cmd.action {
        Action::Resize(req) => {
            if !policy.actions.resize {
                return refused("resize", "actions.resize");
            }
            match crate::actuate::apply_resize(req, &ctx.guest) {
                // Done only when the new size was read back.
                Ok(o) if o.verified => (CommandState::Succeeded, resize_summary(&o)),
                Ok(o) => (
                    CommandState::Failed,
                    format!("not verified: {}", resize_summary(&o)),
                ),
                Err(e) => (CommandState::Failed, e.to_string()),
            }
        }
        Action::ConfigUpdate(u) => {
            if !policy.actions.config_update {
                return refused("config update", "actions.config_update");
            }
            match apply_config(u, settings) {
                Ok(m) => (CommandState::Succeeded, m),
                Err(m) => (CommandState::Failed, format!("refused: {m}")),
            }
        }
        Action::ModelUpdate {
            kind,
            version,
            sha256,
        } => {
            if !policy.actions.model_update {
                return refused("model update", "actions.model_update");
            }
            if sha256.len() != 32
                || kind.is_empty()
                || kind.len() > 32
                || version.is_empty()
                || version.len() > 128
            {
                return (
                    CommandState::Failed,
                    "refused: malformed model reference".into(),
                );
            }
            match lock_log(log).grant_model(kind, version, sha256) {
                Ok(()) => (
                    CommandState::Succeeded,
                    format!("model {kind} {version} may now be pushed and loaded"),
                ),
                Err(e) => (CommandState::Failed, e.to_string()),
            }
        }
        Action::Preload(plan) => {
            let mut last = Instant::now() - PROGRESS_EVERY;
            let mut last_index = usize::MAX;
            let mut on_progress = |p: preload::Progress| {
                // Every new step is reported; byte progress at most every PROGRESS_EVERY.
                if p.index == last_index && last.elapsed() < PROGRESS_EVERY {
                    return;
                }
                last = Instant::now();
                last_index = p.index;
                let _ = updates.try_send(CommandUpdate {
                    id: cmd.id.clone(),
                    state: CommandState::Running,
                    at_ms: now_ms(),
                    step: Some(p.step),
                    bytes: p.bytes,
                    percent: Some(p.percent),
                    message: None,
                });
            };
            // Installs go through the root helper when the agent is unprivileged.
            let installer =
                preload::packages::Installer::choose(ctx.guest.helper_socket.as_deref());
            match preload::run_with(plan, &policy, &installer, &mut on_progress, cancel) {
                Ok(report) => (CommandState::Succeeded, report.summary()),
                Err(preload::PreloadError::Cancelled { index, step }) => (
                    CommandState::Cancelled,
                    format!("cancelled at step {index} ({step})"),
                ),
                Err(e) => (CommandState::Failed, e.to_string()),
            }
        }
        Action::Cancel { .. } => (
            CommandState::Failed,
            "a cancel is handled on receipt".into(),
        ),
    }
}

fn resize_summary(o: &persona_shared::resize::ResizeOutcome) -> String {
    let mut parts = Vec::new();
    if !o.applied.is_empty() {
        parts.push(format!("applied {}", o.applied.join(", ")));
    }
    if !o.needs_restart.is_empty() {
        parts.push(format!("needs a restart: {}", o.needs_restart.join(", ")));
    }
    if let Some(c) = o.observed_vcpus {
        parts.push(format!("{c} vCPUs online"));
    }
    if let Some(m) = o.observed_memory_mib {
        parts.push(format!("{m} MiB"));
    }
    if parts.is_empty() {
        "nothing to change".into()
    } else {
        parts.join("; ")
    }
}

/// Applies a live settings change after the same range checks as the config file.
fn apply_config(u: &ConfigUpdate, settings: &watch::Sender<Settings>) -> Result<String, String> {
    let mut new = *settings.borrow();
    if let Some(ms) = u.sample_interval_ms {
        let ms = u64::from(ms);
        if !SAMPLE_INTERVAL_RANGE_MS.contains(&ms) {
            return Err(format!("sample_interval_ms {ms} is outside 100..=60000"));
        }
        new.sample_interval_ms = ms;
    }
    if let Some(s) = u.batch_interval_s {
        let s = u64::from(s);
        if !BATCH_INTERVAL_RANGE_S.contains(&s) {
            return Err(format!("batch_interval_s {s} is outside 1..=600"));
        }
        new.batch_interval_s = s;
    }
    if new.batch_interval_s * 1000 < new.sample_interval_ms
        || new.batch_interval_s * 1000 / new.sample_interval_ms > MAX_POINTS_PER_BATCH
    {
        return Err(format!(
            "a batch of {} s at {} ms per sample is not allowed",
            new.batch_interval_s, new.sample_interval_ms
        ));
    }
    settings.send_replace(new);
    Ok(format!(
        "sample_interval_ms = {}, batch_interval_s = {} (until the coordinator's next Welcome)",
        new.sample_interval_ms, new.batch_interval_s
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_claims_each_id_once_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(COMMANDS_FILE);
        {
            let log = CommandLog::open(&p).unwrap();
            assert_eq!(log.claim("c-1", "preload").unwrap(), Claim::New);
            assert!(matches!(
                log.claim("c-1", "preload").unwrap(),
                Claim::Seen { .. }
            ));
            log.set_state("c-1", CommandState::Succeeded, Some("done"))
                .unwrap();
            assert_eq!(log.claim("c-2", "resize").unwrap(), Claim::New);
            log.set_state("c-2", CommandState::Running, None).unwrap();
            log.grant_model("mirror", "v2", &[1; 32]).unwrap();
        }
        let log = CommandLog::open(&p).unwrap();
        assert_eq!(
            log.claim("c-1", "preload").unwrap(),
            Claim::Seen {
                state: CommandState::Succeeded,
                message: Some("done".into())
            }
        );
        // Interrupted by the restart: failed, and never run again.
        match log.claim("c-2", "resize").unwrap() {
            Claim::Seen { state, message } => {
                assert_eq!(state, CommandState::Failed);
                assert!(message.unwrap().contains("interrupted"));
            }
            other => panic!("{other:?}"),
        }
        assert!(log.model_granted("mirror", "v2", &[1; 32]).unwrap());
        assert!(!log.model_granted("mirror", "v2", &[2; 32]).unwrap());
        assert!(model_granted_in(dir.path(), "mirror", "v2", &[1; 32]).unwrap());
        assert!(!model_granted_in(dir.path(), "mirror", "v3", &[1; 32]).unwrap());
    }

    #[test]
    fn config_updates_are_range_checked() {
        let (tx, rx) = watch::channel(Settings {
            sample_interval_ms: 1000,
            batch_interval_s: 10,
        });
        apply_config(
            &ConfigUpdate {
                sample_interval_ms: Some(500),
                batch_interval_s: None,
            },
            &tx,
        )
        .unwrap();
        assert_eq!(rx.borrow().sample_interval_ms, 500);
        for bad in [
            ConfigUpdate {
                sample_interval_ms: Some(5),
                batch_interval_s: None,
            },
            ConfigUpdate {
                sample_interval_ms: Some(60_000),
                batch_interval_s: Some(1),
            },
        ] {
            assert!(apply_config(&bad, &tx).is_err(), "{bad:?}");
        }
        assert_eq!(rx.borrow().sample_interval_ms, 500);
    }

    #[test]
    fn the_claimed_id_is_read_only_when_harmless() {
        let c = Command {
            id: "c-0123".into(),
            agent_id: "a".into(),
            issued_ms: 0,
            expires_ms: 0,
            action: Action::Cancel { id: "x".into() },
        };
        assert_eq!(claimed_id(&c.encode().unwrap()).as_deref(), Some("c-0123"));
        let mut bad = c.clone();
        bad.id = "c;rm -rf".into();
        assert_eq!(claimed_id(&bad.encode().unwrap()), None);
        assert_eq!(claimed_id(b"\xc1garbage"), None);
    }
}
