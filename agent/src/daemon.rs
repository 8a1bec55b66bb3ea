//! The agent daemon (`persona-agent run`): the sampling thread, the outbox and the link,
//! wired together, with a graceful shutdown.
//!
//! Sampling runs on a dedicated OS thread because `/proc` reads block. Ticks sit on
//! wall-clock multiples of the interval and a sample is stamped with its scheduled tick
//! instant (12:00:01.000, read a few ms later), so timestamps compress to almost nothing
//! and "one sample per second" can be checked exactly; rates still come from the
//! collector's monotonic clock. A late loop skips the ticks it missed (a gap), never
//! doubles one. After every tick the open batch is rewritten in the outbox, so a SIGKILL
//! loses at most the tick in progress; at each batch boundary (also wall-clock aligned)
//! the batch is sealed and the link is woken.
//!
//! Under systemd the sampling thread says `READY=1` once it has taken its first sample
//! (never waiting for the coordinator: an agent whose coordinator is down still samples
//! into its outbox, which is exactly what it is for) and feeds the watchdog from its
//! loop, so a wedged sampler gets the unit restarted.
//!
//! Each tick also runs the pressure and anomaly detectors (`detect`) on the fresh sample;
//! an event they raise is queued durably and the link is woken to send it at once.
//!
//! This module owns the schedule and the wiring, not the collecting (`collect`), the
//! storage (`outbox`) or the protocol (`link`).

use std::future::Future;
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use persona_shared::batch::BatchBuilder;
use persona_shared::clock::{SystemClock, WallClock};
use persona_shared::facts::HostFacts;
use persona_shared::protocol::{Batch, encode_batch_frame};
use persona_shared::sample::Sample;
use persona_shared::systemd::{self, Watchdog};
use tokio::sync::{Notify, oneshot, watch};

use crate::collect::{CollectConfig, Collector};
use crate::config::AgentConfig;
use crate::health::{self, Health, HealthError};
use crate::identity::{CA_FILE, Identity, IdentityError};
use crate::link::{self, Link, LinkConfig, LinkContext, LinkError, LinkStats};
use crate::outbox::{self, Outbox, OutboxError, OutboxStats};
use crate::settings::Settings;

/// Name of the outbox database in the state dir.
pub const OUTBOX_FILE: &str = "outbox.db";
/// Host facts are re-read at most this often, when the collector says they changed.
const FACTS_EVERY: Duration = Duration::from_secs(60);
/// How long the link may take to drain and close on shutdown, on top of its own
/// drain timeout, before the daemon stops waiting.
const LINK_STOP_GRACE: Duration = Duration::from_secs(3);

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("invalid configuration: key `{key}`: {message}")]
    Config { key: &'static str, message: String },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("cannot set up the link: {0}")]
    Link(#[from] LinkError),
    #[error("cannot start the sampling thread: {0}")]
    Thread(std::io::Error),
    #[error("the sampling thread stopped unexpectedly")]
    SamplerDied,
    #[error(transparent)]
    Metrics(#[from] HealthError),
    #[error(transparent)]
    Events(#[from] crate::detect::QueueError),
    #[error("cannot start the command runner: {0}")]
    Commands(#[from] crate::commands::CommandError),
    #[error("mirror model: {0}")]
    Model(#[from] crate::model_store::ModelStoreError),
}

/// What a run did, for tests and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DaemonReport {
    /// Samples stored (priming sample excluded).
    pub samples: u64,
    /// Ticks skipped because the loop fell behind.
    pub skipped_ticks: u64,
    pub batches_sealed: u64,
    pub link: LinkStats,
    pub outbox: OutboxStats,
}

/// Runs the agent until `shutdown` completes; see [`run_report`].
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    run_report(config, shutdown).await.map(|_| ())
}

/// What a caller may hand the daemon instead of its defaults: the wall clock (the
/// system clock; a test runs the agent with a clock that is off) and the health
/// counters (a test reads the same `/metrics` text the endpoint serves).
#[derive(Debug, Clone)]
pub struct RunHooks {
    pub clock: Arc<dyn WallClock>,
    pub health: Arc<Health>,
}

impl Default for RunHooks {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            health: Arc::new(Health::default()),
        }
    }
}

/// Runs the agent until `shutdown` completes, then seals the open batch, gives the link
/// up to [`link::DRAIN_TIMEOUT`] to deliver the outbox, closes and reports.
pub async fn run_report(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<DaemonReport, DaemonError> {
    run_with(config, RunHooks::default(), shutdown).await
}

/// [`run_report`] with the caller's clock and health counters.
pub async fn run_with(
    config: AgentConfig,
    hooks: RunHooks,
    shutdown: impl Future<Output = ()>,
) -> Result<DaemonReport, DaemonError> {
    config
        .validate()
        .map_err(|(key, message)| DaemonError::Config { key, message })?;
    let identity = Identity::load(&config.state_dir)?;
    // The state dir holds the key, the outbox and the command log: 0700, whoever made it.
    crate::identity::create_private_dir(&config.state_dir)?;
    let coordinator = config
        .coordinator
        .clone()
        .unwrap_or_else(|| identity.coordinator.clone());
    let outbox = Outbox::open(&config.state_dir.join(OUTBOX_FILE), config.outbox_max_bytes)?;
    let outbox = Arc::new(Mutex::new(outbox));
    // Detected events: queued in the outbox database, sent at once by the link.
    let events = crate::detect::EventHooks::open(&config.state_dir.join(OUTBOX_FILE))?;
    // The mirror model: the last one pushed (kept in the state dir) or the built-in one.
    let models = crate::model_store::ModelHandle::open(Some(&config.state_dir))?;

    let collector = Collector::new(CollectConfig {
        proc_root: config.proc_root.clone(),
        sys_root: config.sys_root.clone(),
        top_n: config.top_n,
        process_every: config.process_every,
    });
    let (facts_tx, facts_rx) = watch::channel(collector.host_facts());
    let settings = Settings {
        sample_interval_ms: config.sample_interval_ms,
        batch_interval_s: config.batch_interval_s,
    };
    let (settings_tx, settings_rx) = watch::channel(settings);
    // Coordinator commands are verified and run on tasks of their own (long ones on
    // blocking threads), never on the sampling thread.
    let (command_hooks, command_task) = crate::commands::start(
        crate::commands::RunnerConfig {
            state_dir: config.state_dir.clone(),
            agent_id: identity.agent_id.clone(),
            ca_pem: config.state_dir.join(CA_FILE),
            policy_file: config.policy_file.clone(),
            guest_actuator: {
                let mut g = config.guest_actuator.clone();
                g.sys_root = config.sys_root.clone();
                g
            },
        },
        settings_tx.clone(),
    )?;
    let sealed = Arc::new(Notify::new());
    let RunHooks { clock, health } = hooks;
    // Bound before anything starts, so a taken port is a start-up error, not a log line.
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(health::bind(addr).await?),
        None => None,
    };

    let link = Link::new(
        LinkConfig {
            coordinator: coordinator.clone(),
            state_dir: config.state_dir.clone(),
            max_frame_bytes: config.max_frame_bytes,
            purpose: config.wire_purpose(),
        },
        LinkContext {
            outbox: outbox.clone(),
            sealed: sealed.clone(),
            facts: facts_rx,
            settings: settings_tx,
            health: health.clone(),
            commands: Some(command_hooks),
            events: Some(events.clone()),
            models: Some(models.clone()),
            clock: clock.clone(),
        },
    )?;

    let detect = config
        .detect
        .enabled
        .then(|| crate::detect::Runner::new(&config.detect, &facts_tx.borrow(), events));
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let (done_tx, mut done_rx) = oneshot::channel::<SamplerReport>();
    let sampler = Sampler {
        collector,
        outbox: outbox.clone(),
        sealed,
        facts_tx,
        settings_rx,
        stop_rx,
        max_frame: config.max_frame_bytes,
        settings,
        sample: Sample::default(),
        open_seq: None,
        open_window: 0,
        builder: BatchBuilder::new(),
        batch: Batch::default(),
        frame: Vec::new(),
        report: SamplerReport::default(),
        outbox_errors: 0,
        facts_dirty: false,
        facts_read_at: Instant::now(),
        health: health.clone(),
        clock,
        watchdog: Watchdog::from_env(),
        detect,
        mirror: crate::mirror::MirrorRunner::new(
            persona_shared::window::WindowConfig {
                window_ms: i64::try_from(config.mirror_window_s * 1000).unwrap_or(300_000),
            },
            config.mirror_step_s,
            models,
        ),
    };
    let thread = std::thread::Builder::new()
        .name("persona-sampler".into())
        .spawn(move || {
            let report = sampler.run();
            let _ = done_tx.send(report);
        })
        .map_err(DaemonError::Thread)?;
    tracing::info!(
        agent_id = %identity.agent_id,
        coordinator = %coordinator,
        state_dir = %config.state_dir.display(),
        sample_interval_ms = settings.sample_interval_ms,
        batch_interval_s = settings.batch_interval_s,
        "agent started"
    );

    let (link_stop_tx, link_stop_rx) = watch::channel(false);
    let metrics_task = metrics_listener.map(|l| {
        if let Ok(a) = l.local_addr() {
            tracing::info!(addr = %a, "serving the agent's /metrics");
        }
        tokio::spawn(health::serve(
            l,
            health.clone(),
            outbox.clone(),
            link_stop_rx.clone(),
        ))
    });
    let mut link_task = tokio::spawn(link.run(link_stop_rx));

    let mut early: Option<DaemonError> = None;
    let mut sampler_report = None;
    let mut link_stats = None;
    tokio::select! {
        () = shutdown => tracing::info!("shutting down"),
        r = &mut done_rx => {
            sampler_report = r.ok();
            early = Some(DaemonError::SamplerDied);
        }
        r = &mut link_task => {
            link_stats = r.ok();
            tracing::error!("the link stopped unexpectedly");
        }
    }

    systemd::notify_or_log("STOPPING=1\nSTATUS=flushing the outbox");
    // Sampler first: it seals the open batch, which the link then still delivers.
    drop(stop_tx);
    if sampler_report.is_none() {
        sampler_report = done_rx.await.ok();
    }
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    let _ = link_stop_tx.send(true);
    if link_stats.is_none() {
        match tokio::time::timeout(link::DRAIN_TIMEOUT + LINK_STOP_GRACE, &mut link_task).await {
            Ok(r) => link_stats = r.ok(),
            Err(_) => {
                tracing::warn!("the link did not stop in time");
                link_task.abort();
            }
        }
    }
    if let Some(t) = metrics_task {
        t.abort();
    }
    command_task.abort();
    let outbox_stats = outbox::lock(&outbox).stats()?;
    let s = sampler_report.unwrap_or_default();
    let report = DaemonReport {
        samples: s.samples,
        skipped_ticks: s.skipped_ticks,
        batches_sealed: s.batches_sealed,
        link: link_stats.unwrap_or_default(),
        outbox: outbox_stats,
    };
    tracing::info!(
        samples = report.samples,
        skipped_ticks = report.skipped_ticks,
        batches_sealed = report.batches_sealed,
        outbox_pending = outbox_stats.pending_batches,
        outbox_dropped = outbox_stats.dropped_batches,
        "agent stopped"
    );
    match early {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct SamplerReport {
    samples: u64,
    skipped_ticks: u64,
    batches_sealed: u64,
}

/// The sampling thread's state. Every buffer is reused from tick to tick.
struct Sampler {
    collector: Collector,
    outbox: Arc<Mutex<Outbox>>,
    sealed: Arc<Notify>,
    facts_tx: watch::Sender<HostFacts>,
    settings_rx: watch::Receiver<Settings>,
    stop_rx: mpsc::Receiver<()>,
    max_frame: usize,
    settings: Settings,
    /// The sample being filled.
    sample: Sample,
    open_seq: Option<u64>,
    /// Batch window (tick / batch length) of the open batch.
    open_window: i64,
    /// The open batch's samples; re-encoded into `batch` after every tick so the outbox
    /// always holds everything sampled so far.
    builder: BatchBuilder,
    batch: Batch,
    frame: Vec<u8>,
    report: SamplerReport,
    outbox_errors: u64,
    facts_dirty: bool,
    facts_read_at: Instant,
    health: Arc<Health>,
    /// The wall clock ticks are scheduled and stamped on.
    clock: Arc<dyn WallClock>,
    watchdog: Watchdog,
    /// Pressure and anomaly detection (None when `[detect] enabled = false`).
    detect: Option<crate::detect::Runner>,
    /// Behavioural mirroring: window features and the model, run every window step.
    mirror: crate::mirror::MirrorRunner,
}

/// The tick schedule on the wall clock, separate from I/O so it can be tested.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub interval_ms: i64,
    pub batch_ms: i64,
}

impl Schedule {
    fn new(s: Settings) -> Self {
        Self {
            interval_ms: i64::try_from(s.sample_interval_ms).unwrap_or(1000).max(1),
            batch_ms: i64::try_from(s.batch_interval_s.saturating_mul(1000))
                .unwrap_or(10_000)
                .max(1),
        }
    }

    /// The first tick strictly after `t`.
    pub fn next_after(&self, t: i64) -> i64 {
        (t.div_euclid(self.interval_ms) + 1) * self.interval_ms
    }

    /// The tick to sample when the loop wakes at `now` for the scheduled tick `due`:
    /// `due` itself, or, when at least one more tick has passed since, the latest tick
    /// (the ones in between are skipped). Returns (tick, ticks skipped).
    pub fn tick_for(&self, due: i64, now: i64) -> (i64, u64) {
        if now - due >= self.interval_ms {
            let latest = now.div_euclid(self.interval_ms) * self.interval_ms;
            (
                latest,
                u64::try_from((latest - due) / self.interval_ms).unwrap_or(0),
            )
        } else {
            (due, 0)
        }
    }

    /// The batch window a tick belongs to.
    pub fn window(&self, tick: i64) -> i64 {
        tick.div_euclid(self.batch_ms)
    }

    /// Whether `tick` is the last tick of its batch window.
    pub fn ends_window(&self, tick: i64) -> bool {
        self.window(tick + self.interval_ms) != self.window(tick)
    }
}

impl Sampler {
    fn run(mut self) -> SamplerReport {
        let mut sched = Schedule::new(self.settings);
        // Priming: the collector computes rates from the previous tick, so this sample
        // is thrown away and the first stored one has rates. The first real tick is at
        // least half an interval later, so its rates span a meaningful time.
        let primed_at = self.clock.now_ms();
        self.collector.sample(primed_at, &mut self.sample);
        // Sampling works: that is what "ready" means for the agent (the link connects
        // on its own time, and the outbox holds the data meanwhile).
        systemd::notify_or_log("READY=1\nSTATUS=sampling");
        self.watchdog.feed();
        let mut due = sched.next_after(primed_at + sched.interval_ms / 2);
        loop {
            // Sleep until the tick, waking early for shutdown. Wall-clock steps are
            // re-read on every wake.
            loop {
                let now = self.clock.now_ms();
                if now >= due {
                    break;
                }
                if due - now > 2 * sched.interval_ms {
                    // The clock went back: restart the schedule from now. The open
                    // batch is sealed so timestamps stay increasing inside every batch.
                    tracing::warn!(
                        jump_ms = due - now,
                        "wall clock went backwards; restarting the tick schedule"
                    );
                    self.seal_open();
                    due = sched.next_after(now);
                    continue;
                }
                let mut wait = Duration::from_millis(u64::try_from(due - now).unwrap_or(0));
                if let Some(w) = self.watchdog.max_sleep() {
                    // Long sample intervals still wake in time to feed the watchdog.
                    wait = wait.min(w.max(Duration::from_millis(10)));
                }
                let woke = self.stop_rx.recv_timeout(wait);
                self.watchdog.feed();
                match woke {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                        self.seal_open();
                        return self.report;
                    }
                }
            }
            let (tick, skipped) = sched.tick_for(due, self.clock.now_ms());
            if skipped > 0 {
                self.report.skipped_ticks += skipped;
                tracing::debug!(skipped, "sampling fell behind; ticks skipped");
            }
            self.tick(&sched, tick);
            self.publish();
            due = tick + sched.interval_ms;

            if self.settings_rx.has_changed().unwrap_or(false) {
                let new = *self.settings_rx.borrow_and_update();
                if new != self.settings {
                    self.seal_open();
                    self.settings = new;
                    sched = Schedule::new(new);
                    due = sched.next_after(tick);
                }
            }
        }
    }

    fn tick(&mut self, sched: &Schedule, tick: i64) {
        let report = self.collector.sample(tick, &mut self.sample);
        self.report.samples += 1;
        self.mirror.on_sample(&self.sample);
        if let Some(d) = &mut self.detect {
            let extra = crate::detect::TickExtra {
                oom_kills: self.collector.oom_kills(),
                procs_scanned: report.procs_scanned,
            };
            d.tick(&self.sample, extra);
        }
        if report.facts_changed {
            self.facts_dirty = true;
        }
        if self.facts_dirty && self.facts_read_at.elapsed() >= FACTS_EVERY {
            self.facts_dirty = false;
            self.facts_read_at = Instant::now();
            let facts = self.collector.host_facts();
            if let Some(d) = &mut self.detect {
                d.set_facts(&facts);
            }
            self.facts_tx.send_if_modified(|cur| {
                let changed = *cur != facts;
                if changed {
                    *cur = facts;
                }
                changed
            });
        }

        let window = sched.window(tick);
        let last_ts = self.builder.last_ts();
        if !self.builder.is_empty()
            && (window != self.open_window || last_ts.is_some_and(|t| t >= tick))
        {
            self.seal_open();
        }
        if self.builder.is_empty() {
            self.open_window = window;
        }
        self.builder.push(&self.sample);

        if sched.ends_window(tick) {
            self.seal_open();
        } else if self.encode_open() {
            if self.frame.len() > self.max_frame / 2 {
                // Far more devices than expected: seal early rather than risk a frame
                // over the maximum.
                self.seal_open();
            } else if let Some(seq) = self.open_seq {
                let r = outbox::lock(&self.outbox)
                    .put_open(seq, self.frame.get(4..).unwrap_or_default());
                self.outbox_result(r);
            }
        }
        self.mirror.on_tick_end(tick, sched.interval_ms);
    }

    /// Encodes the builder's samples as the open batch into `self.frame` (length prefix
    /// included), reserving its sequence number first if needed. False on failure
    /// (logged), in which case the open batch is kept in memory only.
    fn encode_open(&mut self) -> bool {
        if self.builder.is_empty() {
            return false;
        }
        let seq = match self.open_seq {
            Some(s) => s,
            None => {
                let r = outbox::lock(&self.outbox).reserve_seq();
                match r {
                    Ok(s) => {
                        self.open_seq = Some(s);
                        s
                    }
                    Err(e) => {
                        self.outbox_result::<()>(Err(e));
                        return false;
                    }
                }
            }
        };
        if !self.builder.encode_into(seq, &mut self.batch) {
            return false;
        }
        self.frame.clear();
        match encode_batch_frame(&self.batch, &mut self.frame, self.max_frame) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(
                    seq,
                    samples = self.builder.len(),
                    "cannot encode the batch: {e}; its samples are lost"
                );
                self.builder.clear();
                false
            }
        }
    }

    /// Publishes the counters for `/metrics` (a few relaxed stores; no allocation).
    fn publish(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let h = &self.health;
        h.samples.store(self.report.samples, Relaxed);
        h.skipped_ticks.store(self.report.skipped_ticks, Relaxed);
        h.batches_sealed.store(self.report.batches_sealed, Relaxed);
        h.outbox_write_errors.store(self.outbox_errors, Relaxed);
        h.set_collector_errors(self.collector.failures());
    }

    /// Seals the open batch (if any) and wakes the link.
    fn seal_open(&mut self) {
        if self.builder.is_empty() {
            return;
        }
        if self.encode_open()
            && self.attach_mirror()
            && let Some(seq) = self.open_seq
        {
            let r = outbox::lock(&self.outbox).seal(seq, self.frame.get(4..).unwrap_or_default());
            if self.outbox_result(r).is_some() {
                self.report.batches_sealed += 1;
                tracing::debug!(
                    seq,
                    samples = self.builder.len(),
                    bytes = self.frame.len(),
                    "batch sealed"
                );
            }
            // Also when the disk refused it: the outbox keeps it in memory and offers
            // it to the link like a stored one.
            self.sealed.notify_one();
        }
        self.builder.clear();
        self.open_seq = None;
    }

    /// Puts the latest mirror distribution into the batch being sealed (re-encoding its
    /// frame when it changed). False only if the frame cannot be encoded at all.
    fn attach_mirror(&mut self) -> bool {
        let interval = i64::try_from(self.settings.sample_interval_ms).unwrap_or(1000);
        if !self.mirror.on_seal(&mut self.batch, interval) {
            return true;
        }
        self.frame.clear();
        if let Err(e) = encode_batch_frame(&self.batch, &mut self.frame, self.max_frame) {
            tracing::warn!(
                "batch with the mirror report does not encode ({e}); sending it without"
            );
            self.batch.mirror = None;
            self.frame.clear();
            return encode_batch_frame(&self.batch, &mut self.frame, self.max_frame).is_ok();
        }
        true
    }

    /// Logs outbox failures (the first, then one in 60) and carries on: a full disk must
    /// not stop sampling.
    fn outbox_result<T>(&mut self, r: Result<T, OutboxError>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                if self.outbox_errors.is_multiple_of(60) {
                    tracing::warn!(errors = self.outbox_errors + 1, "outbox write failed: {e}");
                }
                self.outbox_errors += 1;
                None
            }
        }
    }
}

/// The state dir's outbox path (for tools and tests that inspect it).
pub fn outbox_path(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join(OUTBOX_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_aligned_and_late_ticks_are_skipped() {
        let s = Schedule::new(Settings {
            sample_interval_ms: 1000,
            batch_interval_s: 10,
        });
        assert_eq!(s.next_after(12_345), 13_000);
        assert_eq!(s.next_after(13_000), 14_000);
        assert_eq!(s.tick_for(13_000, 13_004), (13_000, 0));
        assert_eq!(s.tick_for(13_000, 13_999), (13_000, 0));
        // Woke 3.2 s late: sample the latest tick, the two in between are a gap.
        assert_eq!(s.tick_for(13_000, 16_200), (16_000, 3));
        assert_eq!(s.window(19_000), 1);
        assert!(s.ends_window(19_000));
        assert!(!s.ends_window(20_000));
        let s = Schedule::new(Settings {
            sample_interval_ms: 300,
            batch_interval_s: 1,
        });
        assert!(s.ends_window(900));
        assert!(!s.ends_window(600));
    }
}
