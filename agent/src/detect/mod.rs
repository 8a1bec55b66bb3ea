//! What is wrong with this VM, decided in the agent from the samples it already takes:
//! resource pressure ([`pressure`]: CPU, memory, I/O, network, with hysteresis and
//! debounce) and anomalies against the VM's own history ([`anomaly`]: a change of
//! regime, a runaway process, a steady memory climb). The [`Detector`] turns each
//! sample into zero or more [`AgentEvent`]s; [`queue`] keeps them durably until the
//! coordinator acknowledges them, and the link sends them on the control stream as soon
//! as they are queued, not with the next batch.
//!
//! What it is not: a collector (it reads the [`Sample`] the collectors filled and never
//! touches `/proc` itself), a sender (the link sends) or a policy engine (the coordinator
//! decides what to do about an event). A steady tick allocates nothing: the detectors
//! keep fixed-size state, and only raising an event (rare) builds strings.

pub mod anomaly;
pub mod pressure;
pub mod queue;
pub mod watch;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use persona_shared::events::{AgentEvent, Resource, Severity};
use persona_shared::facts::HostFacts;
use persona_shared::sample::Sample;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

pub use anomaly::Anomalies;
pub use pressure::{Pressure, ResourceStatus};
pub use queue::{EventQueue, QueueError};
pub use watch::Watch;

/// Thresholds and timings of the detectors, the `[detect]` table of the agent's config.
/// The defaults are what an operator wants on a production VM: a resource is under
/// pressure when it is really saturated, for at least two samples in a row; tests lower
/// thresholds through the same keys when they need a reliable trigger.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Run the detectors at all.
    pub enabled: bool,
    /// Resources never reported under pressure ("cpu", "memory", "io", "network"), for
    /// VMs whose job is to saturate one (a render farm's CPU).
    pub ignore: Vec<String>,
    /// Consecutive samples a condition must hold before an event is raised (debounce).
    pub raise_after: u32,
    /// Consecutive samples below the relaxed thresholds before pressure is cleared.
    pub clear_after: u32,
    /// CPU busy (user, nice, system, irq, softirq) in % of all online vCPUs.
    pub cpu_busy_pct: f64,
    /// Runnable tasks per online vCPU.
    pub cpu_runqueue_per_vcpu: f64,
    /// CPU stolen by the hypervisor, in % of capacity.
    pub cpu_steal_pct: f64,
    /// MemAvailable below this % of MemTotal (0 = off).
    pub mem_available_pct: f64,
    /// PSI memory "some" stall, % of wall time over the tick.
    pub mem_psi_some_pct: f64,
    /// Major page faults per second.
    pub mem_major_faults_per_s: f64,
    /// Seconds until MemAvailable reaches zero at its decline over the last minute
    /// (0 = off).
    pub mem_exhaustion_s: f64,
    /// PSI io "some" stall, % of wall time over the tick.
    pub io_psi_some_pct: f64,
    /// Busiest disk's time with I/O in flight, % of wall time.
    pub io_busy_pct: f64,
    /// Most requests in flight on one disk.
    pub io_queue_depth: f64,
    /// Busiest direction of one interface in % of its link speed.
    pub net_utilization_pct: f64,
    /// Dropped packets per second over all interfaces but loopback.
    pub net_drops_per_s: f64,
    /// Link speed in Mbit/s by interface name, for interfaces whose driver reports none
    /// (virtio-net often) or whose provisioned bandwidth is below the link speed.
    pub nic_speed_mbps: BTreeMap<String, u64>,
    /// Minutes of history before anomaly detection starts.
    pub anomaly_warmup_min: u32,
    /// Robust z-score (distance from the median in scaled MADs) of a new regime.
    pub regime_z: f64,
    /// Consecutive minutes a metric must stay that far off to be a new regime.
    pub regime_minutes: u32,
    /// One process using at least this % of one core ...
    pub runaway_cpu_pct: f64,
    /// ... for at least this many minutes without a break is a runaway.
    pub runaway_minutes: u32,
    /// Minutes of steady memory climb that make a leak.
    pub leak_minutes: u32,
    /// Least growth over those minutes, in % of MemTotal.
    pub leak_min_pct: f64,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ignore: Vec::new(),
            raise_after: 2,
            clear_after: 5,
            cpu_busy_pct: 90.0,
            cpu_runqueue_per_vcpu: 2.0,
            cpu_steal_pct: 10.0,
            mem_available_pct: 10.0,
            mem_psi_some_pct: 10.0,
            mem_major_faults_per_s: 1000.0,
            mem_exhaustion_s: 300.0,
            io_psi_some_pct: 20.0,
            io_busy_pct: 90.0,
            io_queue_depth: 32.0,
            net_utilization_pct: 90.0,
            net_drops_per_s: 100.0,
            nic_speed_mbps: BTreeMap::new(),
            anomaly_warmup_min: 15,
            regime_z: 6.0,
            regime_minutes: 3,
            runaway_cpu_pct: 90.0,
            runaway_minutes: 10,
            leak_minutes: 30,
            leak_min_pct: 5.0,
        }
    }
}

impl DetectConfig {
    /// Checks ranges; returns the offending key (dotted, as in the file).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let pct = [
            ("detect.cpu_busy_pct", self.cpu_busy_pct),
            ("detect.cpu_steal_pct", self.cpu_steal_pct),
            ("detect.mem_available_pct", self.mem_available_pct),
            ("detect.mem_psi_some_pct", self.mem_psi_some_pct),
            ("detect.io_psi_some_pct", self.io_psi_some_pct),
            ("detect.io_busy_pct", self.io_busy_pct),
            ("detect.net_utilization_pct", self.net_utilization_pct),
            ("detect.leak_min_pct", self.leak_min_pct),
        ];
        for (key, v) in pct {
            if !(v.is_finite() && (0.0..=100.0).contains(&v)) {
                return Err((key, format!("{v} is not a percentage (0..=100)")));
            }
        }
        let positive = [
            ("detect.cpu_runqueue_per_vcpu", self.cpu_runqueue_per_vcpu),
            ("detect.mem_major_faults_per_s", self.mem_major_faults_per_s),
            ("detect.io_queue_depth", self.io_queue_depth),
            ("detect.net_drops_per_s", self.net_drops_per_s),
            ("detect.regime_z", self.regime_z),
            ("detect.runaway_cpu_pct", self.runaway_cpu_pct),
        ];
        for (key, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err((key, format!("{v} must be a number above 0")));
            }
        }
        if !(self.mem_exhaustion_s.is_finite() && self.mem_exhaustion_s >= 0.0) {
            return Err((
                "detect.mem_exhaustion_s",
                format!("{} must be 0 (off) or more", self.mem_exhaustion_s),
            ));
        }
        let counts = [
            ("detect.raise_after", self.raise_after, 1, 600),
            ("detect.clear_after", self.clear_after, 1, 3600),
            (
                "detect.anomaly_warmup_min",
                self.anomaly_warmup_min,
                1,
                1440,
            ),
            ("detect.regime_minutes", self.regime_minutes, 1, 60),
            ("detect.runaway_minutes", self.runaway_minutes, 1, 1440),
            (
                "detect.leak_minutes",
                self.leak_minutes,
                5,
                anomaly::HISTORY_MIN as u32,
            ),
        ];
        for (key, v, lo, hi) in counts {
            if !(lo..=hi).contains(&v) {
                return Err((key, format!("{v} is outside {lo}..={hi}")));
            }
        }
        if let Some(r) = self.ignore.iter().find(|r| Resource::parse(r).is_none()) {
            return Err((
                "detect.ignore",
                format!("{r:?} is not a resource: use cpu, memory, io or network"),
            ));
        }
        if let Some((name, _)) = self.nic_speed_mbps.iter().find(|(_, s)| **s == 0) {
            return Err((
                "detect.nic_speed_mbps",
                format!("interface {name:?}: a speed of 0 Mbit/s is not a speed"),
            ));
        }
        Ok(())
    }
}

/// What the collector knows besides the sample, for the detectors.
#[derive(Debug, Clone, Copy, Default)]
pub struct TickExtra {
    /// OOM kills since boot (None where the kernel has no counter).
    pub oom_kills: Option<u64>,
    /// Whether this tick's process lists are fresh (a scan ran).
    pub procs_scanned: bool,
}

/// Both detectors behind one call per tick.
#[derive(Debug)]
pub struct Detector {
    enabled: bool,
    pressure: Pressure,
    anomalies: Anomalies,
}

impl Detector {
    pub fn new(cfg: &DetectConfig, facts: &HostFacts) -> Self {
        Self {
            enabled: cfg.enabled,
            pressure: Pressure::new(cfg, facts),
            anomalies: Anomalies::new(cfg),
        }
    }

    /// New host facts (NIC speeds may have changed). Allocates; call on a facts change.
    pub fn set_facts(&mut self, facts: &HostFacts) {
        self.pressure.set_facts(facts);
    }

    /// Feeds one sample; events raised by it are appended to `out` with id 0 (the
    /// queue numbers them). Allocates only when an event is raised.
    pub fn observe(&mut self, s: &Sample, extra: TickExtra, out: &mut Vec<AgentEvent>) {
        if !self.enabled {
            return;
        }
        self.pressure.observe(s, extra, out);
        self.anomalies.observe(s, extra, out);
    }

    /// Current pressure state of each resource, in [`Resource::ALL`] order.
    pub fn pressure_status(&self) -> [ResourceStatus; 4] {
        self.pressure.status()
    }

    /// Whether the detectors run.
    pub fn enabled(&self) -> bool {
        self.enabled
    }
}

/// Lower-case state name of a pressure level for JSON and tables.
pub fn level_name(level: Option<Severity>) -> &'static str {
    match level {
        None => "ok",
        Some(s) => s.as_str(),
    }
}

/// The resource's index in [`Resource::ALL`].
pub(crate) fn resource_index(r: Resource) -> usize {
    match r {
        Resource::Cpu => 0,
        Resource::Memory => 1,
        Resource::Io => 2,
        Resource::Network => 3,
    }
}

/// What the daemon's sampling thread and the link share about events: the durable queue
/// and a wake-up for the link when an event was queued.
#[derive(Debug, Clone)]
pub struct EventHooks {
    pub queue: Arc<Mutex<EventQueue>>,
    /// Notified after each queued event; the link sends what is pending at once.
    pub raised: Arc<Notify>,
}

impl EventHooks {
    /// Opens the queue in the outbox database at `path`.
    pub fn open(path: &Path) -> Result<EventHooks, QueueError> {
        Ok(EventHooks {
            queue: Arc::new(Mutex::new(EventQueue::open(path)?)),
            raised: Arc::new(Notify::new()),
        })
    }

    /// A poisoned lock is taken over: SQLite stays consistent whatever panicked.
    fn lock(&self) -> MutexGuard<'_, EventQueue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `ev` (numbering it) and wakes the link.
    pub fn raise(&self, ev: &mut AgentEvent) -> Result<u64, QueueError> {
        let id = self.lock().push(ev)?;
        self.raised.notify_one();
        Ok(id)
    }

    /// Unacknowledged events above id `after`, oldest first (errors logged: the events
    /// stay queued for the next try).
    pub fn pending_after(&self, after: u64, limit: usize) -> Vec<AgentEvent> {
        self.lock().pending_after(after, limit).unwrap_or_else(|e| {
            tracing::warn!("cannot read the event queue: {e}");
            Vec::new()
        })
    }

    /// The coordinator stored event `id`.
    pub fn acked(&self, id: u64) {
        match self.lock().ack(id) {
            Ok(_) => tracing::debug!(id, "event acked"),
            Err(e) => tracing::warn!(id, "cannot delete an acknowledged event: {e}"),
        }
    }
}

/// The detectors as the sampling thread runs them: detect, queue, wake the link.
#[derive(Debug)]
pub struct Runner {
    detector: Detector,
    hooks: EventHooks,
    /// Reused every tick; holds events only between detection and queueing.
    buf: Vec<AgentEvent>,
    queue_errors: u64,
}

impl Runner {
    pub fn new(cfg: &DetectConfig, facts: &HostFacts, hooks: EventHooks) -> Self {
        Self {
            detector: Detector::new(cfg, facts),
            hooks,
            buf: Vec::with_capacity(4),
            queue_errors: 0,
        }
    }

    /// New host facts (call when the daemon re-reads them).
    pub fn set_facts(&mut self, facts: &HostFacts) {
        self.detector.set_facts(facts);
    }

    /// One tick: no allocation unless an event is raised.
    pub fn tick(&mut self, s: &Sample, extra: TickExtra) {
        self.detector.observe(s, extra, &mut self.buf);
        for mut ev in self.buf.drain(..) {
            match self.hooks.raise(&mut ev) {
                Ok(id) => tracing::info!(
                    id,
                    kind = ev.kind.name(),
                    severity = ev.severity.as_str(),
                    "event: {}",
                    ev.summary
                ),
                Err(e) => {
                    // A full or broken disk must not stop sampling; the event is lost.
                    if self.queue_errors.is_multiple_of(60) {
                        tracing::warn!(
                            errors = self.queue_errors + 1,
                            "cannot queue an event: {e}"
                        );
                    }
                    self.queue_errors += 1;
                }
            }
        }
    }
}
