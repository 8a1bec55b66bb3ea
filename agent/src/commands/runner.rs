//! The agent's command runner: it takes the signed commands the link receives on the
//! control stream, verifies each against the CA pinned at enrollment (`verify`), records
//! every id it accepts (`log`), checks the local policy and runs the action off the
//! sampling path, streaming `CommandUpdate`s back.
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
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use persona_shared::command::{
    Action, Command, CommandState, CommandUpdate, ConfigUpdate, SignedCommand,
};
use tokio::sync::{mpsc, watch};

use super::log::{COMMANDS_FILE, Claim, CommandError, CommandLog, now_ms};
use super::verify::{Anchor, Refusal, Trust, ca_der_from_pem, claimed_id, key_fingerprint, verify};
use crate::actuate::{self, GuestActuatorConfig};
use crate::policy::Policy;
use crate::preload;
use crate::settings::{
    BATCH_INTERVAL_RANGE_S, MAX_POINTS_PER_BATCH, SAMPLE_INTERVAL_RANGE_MS, Settings,
};

/// Signed commands waiting to be checked, at most (more are dropped; the coordinator
/// resends undelivered ones after a reconnect).
const INBOX: usize = 64;
/// Updates waiting for the link, at most (progress beyond it is dropped; final states
/// are re-reported when the coordinator resends).
const OUTBOX: usize = 256;
/// Progress updates of one command, at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

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
    pub guest_actuator: GuestActuatorConfig,
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
    /// What signs commands for this agent now. Read from disk at each command (they are
    /// rare, and a pin changes it). An unreadable pin file trusts nothing: falling back
    /// to the CA would undo the pin.
    fn trust(&self) -> Option<Trust> {
        match Trust::load(&self.cfg.state_dir, &self.ca_der) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!("cannot read the pinned command key: {e}");
                None
            }
        }
    }

    /// Verifies a received command against the current anchor. The anchor before it is
    /// accepted for one thing only: a repeated pin of the key already pinned (the
    /// coordinator did not hear that the first one succeeded), which changes nothing.
    fn check(&self, signed: &SignedCommand) -> Result<Command, Refusal> {
        let trust = self.trust().ok_or(Refusal::BadSignature)?;
        let now = now_ms();
        match verify(&trust.current, signed, &self.cfg.agent_id, now) {
            Err(Refusal::BadSignature) => {
                let prev = trust.previous.as_ref().ok_or(Refusal::BadSignature)?;
                let cmd = verify(prev, signed, &self.cfg.agent_id, now)?;
                match &cmd.action {
                    Action::PinCommandKey { public_key }
                        if trust.current == Anchor::Key(public_key.clone()) =>
                    {
                        Ok(cmd)
                    }
                    _ => Err(Refusal::BadSignature),
                }
            }
            r => r,
        }
    }

    /// Pins a command key, at once and in order: every command received after this one
    /// is checked against the new key.
    fn pin(&self, public_key: &[u8]) -> (CommandState, String) {
        let fp = key_fingerprint(public_key);
        let already = self
            .trust()
            .is_some_and(|t| t.current == Anchor::Key(public_key.to_vec()));
        if already {
            return (
                CommandState::Succeeded,
                format!("command key {fp} was already pinned"),
            );
        }
        match Trust::pin(&self.cfg.state_dir, public_key) {
            Ok(()) => {
                tracing::info!(key = %fp, "pinned a new command key");
                (CommandState::Succeeded, format!("pinned command key {fp}"))
            }
            Err(e) => (
                CommandState::Failed,
                format!("cannot pin command key {fp}: {e}"),
            ),
        }
    }

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
        self.resume(&work_tx);
        while let Some(signed) = inbox.recv().await {
            self.accept(signed, &work_tx);
        }
        drop(work_tx);
        let _ = exec.await;
    }

    /// Queues again the pre-loads that were running or queued when the agent stopped,
    /// after checking their signature, agent id and expiry again; they continue after
    /// the steps already done (`preload::run_resumable`).
    fn resume(&self, work: &mpsc::UnboundedSender<(Command, Arc<AtomicBool>)>) {
        let pending = match lock_log(&self.log).resumable() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("cannot read the pre-loads to resume: {e}");
                return;
            }
        };
        for signed in pending {
            let id = claimed_id(&signed.body).unwrap_or_default();
            // The plan was verified when it arrived and kept in our own 0600 file; one
            // stored just before a pin was signed by the anchor the pin replaced.
            let checked = self.trust().ok_or(Refusal::BadSignature).and_then(|t| {
                verify(&t.current, &signed, &self.cfg.agent_id, now_ms()).or_else(|e| {
                    match (&e, &t.previous) {
                        (Refusal::BadSignature, Some(prev)) => {
                            verify(prev, &signed, &self.cfg.agent_id, now_ms())
                        }
                        _ => Err(e),
                    }
                })
            });
            match checked {
                Ok(cmd) => {
                    tracing::info!(id = %cmd.id, "resuming a pre-load after a restart");
                    self.report(update(
                        &cmd.id,
                        CommandState::Running,
                        Some("resuming after an agent restart".into()),
                    ));
                    let flag = Arc::new(AtomicBool::new(false));
                    if let Ok(mut m) = self.cancels.lock() {
                        m.insert(cmd.id.clone(), flag.clone());
                    }
                    let _ = work.send((cmd, flag));
                }
                Err(refusal) => {
                    let state = if matches!(refusal, Refusal::Expired { .. }) {
                        CommandState::Expired
                    } else {
                        CommandState::Failed
                    };
                    let msg = format!("interrupted by an agent restart, not resumed: {refusal}");
                    let _ = lock_log(&self.log).set_state(&id, state, Some(&msg));
                    self.report(update(&id, state, Some(msg)));
                }
            }
        }
    }

    /// Verifies, de-duplicates and queues one command (or handles a Cancel at once).
    fn accept(
        &self,
        signed: SignedCommand,
        work: &mpsc::UnboundedSender<(Command, Arc<AtomicBool>)>,
    ) {
        let cmd = match self.check(&signed) {
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
        // A pre-load keeps its signed bytes, to be resumed after a restart.
        let keep = matches!(cmd.action, Action::Preload(_)).then_some(&signed);
        let claim = lock_log(&self.log).claim_signed(&cmd.id, cmd.action.kind(), keep);
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
        if let Action::PinCommandKey { public_key } = &cmd.action {
            let (state, msg) = self.pin(public_key);
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
    guest: GuestActuatorConfig,
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
    guest: GuestActuatorConfig,
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
            match actuate::apply_resize(req, &ctx.guest) {
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
            let earlier = lock_log(log).step_results(&cmd.id).unwrap_or_default();
            let mut on_result = |r: &persona_shared::preload::StepResult| {
                // Where the plan is, on disk: a restarted agent resumes after it.
                if let Err(e) = lock_log(log).add_step_result(&cmd.id, r) {
                    tracing::warn!(id = %cmd.id, "cannot record a step result: {e}");
                }
            };
            match preload::run_resumable(
                plan,
                &policy,
                &installer,
                &earlier,
                &mut on_progress,
                &mut on_result,
                cancel,
            ) {
                Ok(report) => (CommandState::Succeeded, report.message()),
                Err(e @ preload::PreloadError::Cancelled { .. }) => (
                    CommandState::Cancelled,
                    with_steps(e.to_string(), e.report()),
                ),
                Err(e) => (CommandState::Failed, with_steps(e.to_string(), e.report())),
            }
        }
        Action::Cancel { .. } | Action::PinCommandKey { .. } => {
            (CommandState::Failed, "handled on receipt".into())
        }
    }
}

/// An error line, then the plan's per-step lines when it ran.
fn with_steps(first: String, report: Option<&preload::PlanReport>) -> String {
    match report {
        Some(r) => format!("{first}; {}", r.message()),
        None => first,
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
}
