//! Resource pressure: for each of CPU, memory, I/O and network, a handful of signals
//! read from the sample, each with a threshold, give a raw level per sample (ok,
//! warning, critical). A resource enters pressure when its raw level has been at least
//! warning for `raise_after` consecutive samples (debounce: one spike is not an event);
//! the event's `since_ms` is the first of those samples. It escalates to critical the
//! same way. It leaves pressure only after `clear_after` consecutive samples below the
//! *relaxed* thresholds (hysteresis: 80% of an upper threshold, 125% of a lower one), so
//! a value hovering at the line does not flap. An OOM kill is the exception: it is
//! critical at once, with no debounce, because it has already hurt.
//!
//! Signals (all from the collectors' sample, never from `/proc` directly):
//! - CPU: busy share of all vCPUs (critical when the run queue is long too), runnable
//!   tasks per vCPU, steal.
//! - Memory: MemAvailable share (critical at half the threshold), PSI memory some
//!   (critical when "full" crosses the same line), major faults (critical at 5x), time to
//!   exhaustion at the decline of MemAvailable over the last minute, OOM kills.
//! - I/O: PSI io some (critical when "full" crosses it), busiest disk's busy %, deepest
//!   queue (critical when busy and queued together).
//! - Network: busiest interface direction against its link speed (known from the host
//!   facts or configured), drops (critical when both).
//!
//! What it is not: anomaly detection against history (see [`super::anomaly`]).

use persona_shared::events::{AgentEvent, EventKind, Evidence, Resource, Severity};
use persona_shared::facts::HostFacts;
use persona_shared::metrics::{disk, host, nic};
use persona_shared::sample::Sample;

use super::{DetectConfig, TickExtra, resource_index};

/// Hysteresis: while under pressure, an upper threshold is relaxed to this share of
/// itself (a lower one to its inverse) before the sample counts as calm.
const RELAX: f64 = 0.8;
/// Samples of MemAvailable kept for the exhaustion trend (one minute at 1 s).
const TREND: usize = 60;
/// The exhaustion trend needs at least this many samples.
const TREND_MIN: usize = 20;
/// Most signals per resource.
const MAX_SIGNALS: usize = 5;

/// Where a signal's value came from, for the evidence's series name.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Inst {
    Host,
    Disk(usize),
    Nic(usize),
}

/// One signal on one sample.
#[derive(Debug, Clone, Copy)]
struct Signal {
    name: &'static str,
    inst: Inst,
    value: f64,
    threshold: f64,
    /// Pressure when `value >= threshold` (true) or `value <= threshold` (false).
    above: bool,
    /// The signal's own critical condition, on the unrelaxed thresholds.
    critical: bool,
}

impl Signal {
    const NONE: Signal = Signal {
        name: "",
        inst: Inst::Host,
        value: f64::NAN,
        threshold: f64::NAN,
        above: true,
        critical: false,
    };

    fn breached(&self, relax: bool) -> bool {
        if !self.value.is_finite() || !self.threshold.is_finite() {
            return false;
        }
        if self.above {
            let t = if relax {
                self.threshold * RELAX
            } else {
                self.threshold
            };
            self.threshold > 0.0 && self.value >= t
        } else {
            let t = if relax {
                self.threshold / RELAX
            } else {
                self.threshold
            };
            self.value <= t
        }
    }
}

/// The signals of one resource on one sample (fixed size: no allocation).
#[derive(Debug, Clone, Copy)]
struct Signals {
    list: [Signal; MAX_SIGNALS],
    n: usize,
}

impl Signals {
    fn new() -> Self {
        Self {
            list: [Signal::NONE; MAX_SIGNALS],
            n: 0,
        }
    }

    fn push(&mut self, s: Signal) {
        if let Some(slot) = self.list.get_mut(self.n) {
            *slot = s;
            self.n += 1;
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Signal> {
        self.list.iter().take(self.n)
    }

    /// The raw level: critical if a breached signal is critical, warning if any is
    /// breached.
    fn level(&self, relax: bool) -> Option<Severity> {
        let mut level = None;
        for s in self.iter().filter(|s| s.breached(relax)) {
            if s.critical && !relax {
                return Some(Severity::Critical);
            }
            level = Some(Severity::Warning);
        }
        level
    }
}

/// Debounce and hysteresis state of one resource.
#[derive(Debug, Clone, Copy, Default)]
struct Track {
    active: Option<Severity>,
    since_ms: i64,
    /// Consecutive samples at warning or worse / at critical, and when each run began.
    run_warn: u32,
    run_warn_from: i64,
    run_crit: u32,
    /// Consecutive calm samples while active.
    run_calm: u32,
}

/// Pressure state of one resource, for `observe` and the daemon's logs.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceStatus {
    pub resource: Resource,
    /// None = no pressure.
    pub level: Option<Severity>,
    /// First sample of the current pressure.
    pub since_ms: Option<i64>,
    /// The signals as of the last sample.
    pub evidence: Vec<Evidence>,
}

/// The pressure detector. See the module documentation.
#[derive(Debug)]
pub struct Pressure {
    cfg: DetectConfig,
    /// (interface name, bits per second) where the speed is known.
    speeds: Vec<(String, f64)>,
    tracks: [Track; 4],
    last: [Signals; 4],
    /// Resources configured off (`ignore`).
    ignored: [bool; 4],
    /// MemAvailable ring for the exhaustion trend: (ts_ms, bytes).
    trend: [(i64, f64); TREND],
    trend_len: usize,
    trend_pos: usize,
    oom_prev: Option<u64>,
    /// OOM kills seen this tick (reset each tick), and the latest kill's time.
    oom_new: u64,
    oom_at: Option<i64>,
}

impl Pressure {
    pub fn new(cfg: &DetectConfig, facts: &HostFacts) -> Self {
        let mut p = Self {
            cfg: cfg.clone(),
            speeds: Vec::new(),
            tracks: [Track::default(); 4],
            last: [Signals::new(); 4],
            ignored: Resource::ALL.map(|r| cfg.ignore.iter().any(|x| x == r.as_str())),
            trend: [(0, f64::NAN); TREND],
            trend_len: 0,
            trend_pos: 0,
            oom_prev: None,
            oom_new: 0,
            oom_at: None,
        };
        p.set_facts(facts);
        p
    }

    /// Link speeds: the configured ones win over what the driver reports.
    pub fn set_facts(&mut self, facts: &HostFacts) {
        self.speeds.clear();
        for n in &facts.nics {
            let mbps = self
                .cfg
                .nic_speed_mbps
                .get(&n.name)
                .copied()
                .or(n.speed_mbps);
            if let Some(m) = mbps.filter(|m| *m > 0) {
                self.speeds.push((n.name.clone(), m as f64 * 1e6));
            }
        }
        for (name, m) in &self.cfg.nic_speed_mbps {
            if !self.speeds.iter().any(|(n, _)| n == name) {
                self.speeds.push((name.clone(), *m as f64 * 1e6));
            }
        }
    }

    /// Current state of each resource.
    pub fn status(&self) -> [ResourceStatus; 4] {
        Resource::ALL.map(|r| {
            let i = resource_index(r);
            let t = &self.tracks[i];
            ResourceStatus {
                resource: r,
                level: t.active,
                since_ms: t.active.map(|_| t.since_ms),
                evidence: self.evidence(i, None, None),
            }
        })
    }

    pub fn observe(&mut self, s: &Sample, extra: TickExtra, out: &mut Vec<AgentEvent>) {
        self.note_oom(s.ts_ms, extra.oom_kills);
        self.push_trend(s.ts_ms, s.host[host::MEM_AVAILABLE]);
        for r in Resource::ALL {
            let i = resource_index(r);
            if self.ignored[i] {
                continue;
            }
            self.last[i] = match r {
                Resource::Cpu => self.cpu(s),
                Resource::Memory => self.memory(s),
                Resource::Io => self.io(s),
                Resource::Network => self.network(s),
            };
            self.step(r, s, out);
        }
    }

    fn note_oom(&mut self, ts: i64, kills: Option<u64>) {
        self.oom_new = 0;
        if let Some(k) = kills {
            if let Some(prev) = self.oom_prev
                && k > prev
            {
                self.oom_new = k - prev;
                self.oom_at = Some(ts);
            }
            self.oom_prev = Some(k);
        }
    }

    fn push_trend(&mut self, ts: i64, avail: f64) {
        if !avail.is_finite() {
            return;
        }
        self.trend[self.trend_pos] = (ts, avail);
        self.trend_pos = (self.trend_pos + 1) % TREND;
        self.trend_len = (self.trend_len + 1).min(TREND);
    }

    /// Least-squares slope of MemAvailable in bytes per second (None: too few points).
    fn avail_slope(&self) -> Option<f64> {
        if self.trend_len < TREND_MIN {
            return None;
        }
        let pts = &self.trend[..self.trend_len];
        let t0 = pts.iter().map(|p| p.0).min()?;
        let n = pts.len() as f64;
        let (mut sx, mut sy, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0);
        for &(t, y) in pts {
            let x = (t - t0) as f64 / 1000.0;
            sx += x;
            sy += y;
            sxx += x * x;
            sxy += x * y;
        }
        let den = n * sxx - sx * sx;
        (den > 0.0).then(|| (n * sxy - sx * sy) / den)
    }

    fn cpu(&self, s: &Sample) -> Signals {
        let c = &self.cfg;
        let h = &s.host;
        let busy = [
            host::CPU_USER_RATIO,
            host::CPU_NICE_RATIO,
            host::CPU_SYSTEM_RATIO,
            host::CPU_IRQ_RATIO,
            host::CPU_SOFTIRQ_RATIO,
        ]
        .iter()
        .map(|&i| h[i])
        .sum::<f64>()
            * 100.0;
        let online = h[host::CPU_ONLINE];
        let runq = if online > 0.0 {
            h[host::PROCS_RUNNING] / online
        } else {
            f64::NAN
        };
        let steal = h[host::CPU_STEAL_RATIO] * 100.0;
        let queued = runq.is_finite() && runq >= c.cpu_runqueue_per_vcpu;
        let mut v = Signals::new();
        v.push(Signal {
            name: "cpu.busy_pct",
            inst: Inst::Host,
            value: busy,
            threshold: c.cpu_busy_pct,
            above: true,
            critical: queued,
        });
        v.push(Signal {
            name: "cpu.runqueue_per_vcpu",
            inst: Inst::Host,
            value: runq,
            threshold: c.cpu_runqueue_per_vcpu,
            above: true,
            critical: false,
        });
        v.push(Signal {
            name: "cpu.steal_pct",
            inst: Inst::Host,
            value: steal,
            threshold: c.cpu_steal_pct,
            above: true,
            critical: steal >= 2.0 * c.cpu_steal_pct,
        });
        v
    }

    fn memory(&self, s: &Sample) -> Signals {
        let c = &self.cfg;
        let h = &s.host;
        let total = h[host::MEM_TOTAL];
        let avail = h[host::MEM_AVAILABLE];
        let avail_pct = if total > 0.0 {
            avail / total * 100.0
        } else {
            f64::NAN
        };
        let psi_some = h[host::PSI_MEMORY + 2] * 100.0;
        let psi_full = h[host::PSI_MEMORY + 3] * 100.0;
        let majflt = h[host::MEM_MAJFLT_PER_S];
        // Seconds to exhaustion at the last minute's decline; infinite when not falling.
        let eta = match self.avail_slope() {
            Some(slope) if slope < 0.0 && avail.is_finite() => avail / -slope,
            Some(_) => f64::INFINITY,
            None => f64::NAN,
        };
        let mut v = Signals::new();
        if c.mem_available_pct > 0.0 {
            v.push(Signal {
                name: "mem.available_pct",
                inst: Inst::Host,
                value: avail_pct,
                threshold: c.mem_available_pct,
                above: false,
                critical: avail_pct <= c.mem_available_pct / 2.0,
            });
        }
        v.push(Signal {
            name: "psi.memory.some_stall_pct",
            inst: Inst::Host,
            value: psi_some,
            threshold: c.mem_psi_some_pct,
            above: true,
            critical: psi_full >= c.mem_psi_some_pct,
        });
        v.push(Signal {
            name: "mem.major_faults_per_s",
            inst: Inst::Host,
            value: majflt,
            threshold: c.mem_major_faults_per_s,
            above: true,
            critical: majflt >= 5.0 * c.mem_major_faults_per_s,
        });
        if c.mem_exhaustion_s > 0.0 {
            v.push(Signal {
                name: "mem.exhaustion_s",
                inst: Inst::Host,
                value: if eta.is_infinite() { f64::MAX } else { eta },
                threshold: c.mem_exhaustion_s,
                above: false,
                critical: eta <= c.mem_exhaustion_s / 5.0,
            });
        }
        // An OOM kill is pressure for as long as the clearing takes (it is critical at
        // once: see `step`).
        let recent_oom = self
            .oom_at
            .is_some_and(|t| s.ts_ms - t < i64::from(c.clear_after) * 1000);
        v.push(Signal {
            name: "mem.oom_kills",
            inst: Inst::Host,
            value: if recent_oom {
                self.oom_new.max(1) as f64
            } else {
                0.0
            },
            threshold: 1.0,
            above: true,
            critical: recent_oom,
        });
        v
    }

    fn io(&self, s: &Sample) -> Signals {
        let c = &self.cfg;
        let h = &s.host;
        let some = h[host::PSI_IO + 2] * 100.0;
        let full = h[host::PSI_IO + 3] * 100.0;
        let (mut busy, mut busy_i) = (f64::NAN, 0);
        let (mut depth, mut depth_i) = (f64::NAN, 0);
        for (i, d) in s.disks.iter().enumerate() {
            let b = d.values[disk::BUSY_PCT];
            if b.is_finite() && (busy.is_nan() || b > busy) {
                (busy, busy_i) = (b, i);
            }
            let q = d.values[disk::INFLIGHT];
            if q.is_finite() && (depth.is_nan() || q > depth) {
                (depth, depth_i) = (q, i);
            }
        }
        let mut v = Signals::new();
        v.push(Signal {
            name: "psi.io.some_stall_pct",
            inst: Inst::Host,
            value: some,
            threshold: c.io_psi_some_pct,
            above: true,
            critical: full >= c.io_psi_some_pct,
        });
        v.push(Signal {
            name: "disk.busy_pct",
            inst: Inst::Disk(busy_i),
            value: busy,
            threshold: c.io_busy_pct,
            above: true,
            critical: depth >= c.io_queue_depth,
        });
        v.push(Signal {
            name: "disk.inflight_count",
            inst: Inst::Disk(depth_i),
            value: depth,
            threshold: c.io_queue_depth,
            above: true,
            critical: false,
        });
        v
    }

    fn network(&self, s: &Sample) -> Signals {
        let c = &self.cfg;
        let (mut util, mut util_i) = (f64::NAN, 0);
        for (i, n) in s.nics.iter().enumerate() {
            let Some((_, bps)) = self.speeds.iter().find(|(name, _)| *name == n.name) else {
                continue;
            };
            let rate = n.values[nic::RX_BYTES_PER_S].max(n.values[nic::TX_BYTES_PER_S]);
            let u = rate * 8.0 / bps * 100.0;
            if u.is_finite() && (util.is_nan() || u > util) {
                (util, util_i) = (u, i);
            }
        }
        let t = &s.nic_total;
        let drops = t[nic::RX_DROPS_PER_S] + t[nic::TX_DROPS_PER_S];
        let mut v = Signals::new();
        v.push(Signal {
            name: "net.utilization_pct",
            inst: Inst::Nic(util_i),
            value: util,
            threshold: c.net_utilization_pct,
            above: true,
            critical: drops >= c.net_drops_per_s,
        });
        v.push(Signal {
            name: "net.drops_per_s",
            inst: Inst::Host,
            value: drops,
            threshold: c.net_drops_per_s,
            above: true,
            critical: false,
        });
        v
    }

    /// Debounce, escalation and hysteresis for resource `r` after its signals were
    /// computed into `self.last`.
    fn step(&mut self, r: Resource, s: &Sample, out: &mut Vec<AgentEvent>) {
        let ts = s.ts_ms;
        let i = resource_index(r);
        let sig = self.last[i];
        let raw = sig.level(false);
        let calm = sig.level(true).is_none();
        let oom_now = r == Resource::Memory && self.oom_new > 0;
        let (raise_after, clear_after) = (self.cfg.raise_after, self.cfg.clear_after);
        let t = &mut self.tracks[i];
        if raw.is_some() {
            if t.run_warn == 0 {
                t.run_warn_from = ts;
            }
            t.run_warn = t.run_warn.saturating_add(1);
        } else {
            t.run_warn = 0;
        }
        if raw == Some(Severity::Critical) {
            t.run_crit = t.run_crit.saturating_add(1);
        } else {
            t.run_crit = 0;
        }
        let mut raise = None;
        match t.active {
            None => {
                if oom_now {
                    raise = Some(Severity::Critical);
                    if t.run_warn <= 1 {
                        t.run_warn_from = ts;
                    }
                } else if t.run_warn >= raise_after {
                    raise = Some(if t.run_crit >= raise_after {
                        Severity::Critical
                    } else {
                        Severity::Warning
                    });
                }
                if let Some(sev) = raise {
                    t.active = Some(sev);
                    t.since_ms = t.run_warn_from;
                    t.run_calm = 0;
                }
            }
            Some(Severity::Critical) => {}
            Some(_) => {
                if oom_now || t.run_crit >= raise_after {
                    raise = Some(Severity::Critical);
                    t.active = raise;
                }
            }
        }
        let (active, since) = (t.active, t.since_ms);
        if raise.is_none() && active.is_some() {
            let t = &mut self.tracks[i];
            if calm {
                t.run_calm = t.run_calm.saturating_add(1);
            } else {
                t.run_calm = 0;
            }
            if t.run_calm >= clear_after {
                t.active = None;
                t.run_calm = 0;
                out.push(AgentEvent {
                    id: 0,
                    kind: EventKind::PressureCleared(r),
                    severity: Severity::Info,
                    since_ms: since,
                    at_ms: ts,
                    summary: format!(
                        "{} pressure cleared after {} s",
                        r.as_str(),
                        (ts - since).max(0) / 1000
                    ),
                    evidence: self.evidence(i, None, Some(s)),
                });
            }
            return;
        }
        if let Some(sev) = raise {
            let evidence = self.evidence(i, Some(false), Some(s));
            let summary = summary(r, sev, &evidence);
            out.push(AgentEvent {
                id: 0,
                kind: EventKind::Pressure(r),
                severity: sev,
                since_ms: since,
                at_ms: ts,
                summary,
                evidence,
            });
        }
    }

    /// The evidence of resource `i`: every signal with a value (`None`), or only the
    /// breached ones (`Some(relax)`).
    /// `sample` names the disk or interface of a per-device signal (`name@vda`).
    fn evidence(
        &self,
        i: usize,
        only_breached: Option<bool>,
        sample: Option<&Sample>,
    ) -> Vec<Evidence> {
        self.last[i]
            .iter()
            .filter(|s| s.value.is_finite() && s.value != f64::MAX)
            .filter(|s| only_breached.is_none_or(|relax| s.breached(relax)))
            .map(|s| Evidence {
                name: series_name(s, sample),
                value: s.value,
                threshold: s.threshold,
            })
            .collect()
    }
}

fn series_name(s: &Signal, sample: Option<&Sample>) -> String {
    let dev = match (s.inst, sample) {
        (Inst::Disk(i), Some(x)) => x.disks.get(i).map(|d| d.name.as_str()),
        (Inst::Nic(i), Some(x)) => x.nics.get(i).map(|d| d.name.as_str()),
        _ => None,
    };
    match dev {
        Some(d) => format!("{}@{d}", s.name),
        None => s.name.to_owned(),
    }
}

/// One line for people: "cpu pressure (warning): cpu.busy_pct 97.1 >= 90".
fn summary(r: Resource, sev: Severity, ev: &[Evidence]) -> String {
    let mut s = format!("{} pressure ({})", r.as_str(), sev.as_str());
    for (k, e) in ev.iter().enumerate() {
        s.push_str(if k == 0 { ": " } else { ", " });
        s.push_str(&format!("{} {:.1} vs {}", e.name, e.value, e.threshold));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use persona_shared::facts::NicFact;
    use persona_shared::sample::{DiskValues, NicValues};

    fn idle(ts: i64) -> Sample {
        let mut s = Sample {
            ts_ms: ts,
            ..Sample::default()
        };
        let h = &mut s.host;
        h[host::CPU_USER_RATIO] = 0.05;
        h[host::CPU_NICE_RATIO] = 0.0;
        h[host::CPU_SYSTEM_RATIO] = 0.02;
        h[host::CPU_IRQ_RATIO] = 0.0;
        h[host::CPU_SOFTIRQ_RATIO] = 0.0;
        h[host::CPU_STEAL_RATIO] = 0.0;
        h[host::CPU_ONLINE] = 2.0;
        h[host::PROCS_RUNNING] = 1.0;
        h[host::MEM_TOTAL] = 8e9;
        h[host::MEM_AVAILABLE] = 6e9;
        h[host::MEM_MAJFLT_PER_S] = 0.0;
        for k in 0..4 {
            h[host::PSI_MEMORY + k] = 0.0;
            h[host::PSI_IO + k] = 0.0;
        }
        let mut d = DiskValues::new("vda");
        d.values[disk::BUSY_PCT] = 5.0;
        d.values[disk::INFLIGHT] = 0.0;
        s.disks.push(d);
        let mut n = NicValues::new("eth0");
        n.values = [0.0; nic::COUNT];
        s.nics.push(n);
        s.nic_total = [0.0; nic::COUNT];
        s
    }

    fn facts() -> HostFacts {
        HostFacts {
            nics: vec![NicFact {
                name: "eth0".into(),
                speed_mbps: Some(1000),
                mtu: Some(1500),
            }],
            ..HostFacts::default()
        }
    }

    fn run(p: &mut Pressure, samples: impl IntoIterator<Item = Sample>) -> Vec<AgentEvent> {
        let mut out = Vec::new();
        for s in samples {
            p.observe(&s, TickExtra::default(), &mut out);
        }
        out
    }

    fn busy(ts: i64, ratio: f64) -> Sample {
        let mut s = idle(ts);
        s.host[host::CPU_USER_RATIO] = ratio;
        s.host[host::CPU_SYSTEM_RATIO] = 0.0;
        s
    }

    #[test]
    fn one_spike_is_not_an_event() {
        let mut p = Pressure::new(&DetectConfig::default(), &facts());
        let ev = run(
            &mut p,
            (0..20).map(|k| {
                let ts = k * 1000;
                if k % 2 == 0 { busy(ts, 1.0) } else { idle(ts) }
            }),
        );
        assert!(ev.is_empty(), "{ev:?}");
    }

    #[test]
    fn sustained_pressure_raises_once_with_the_first_sample_as_since() {
        let mut p = Pressure::new(&DetectConfig::default(), &facts());
        let mut samples: Vec<Sample> = (0..5).map(|k| idle(k * 1000)).collect();
        samples.extend((5..15).map(|k| busy(k * 1000, 0.97)));
        let ev = run(&mut p, samples);
        assert_eq!(ev.len(), 1, "{ev:?}");
        let e = &ev[0];
        assert_eq!(e.kind, EventKind::Pressure(Resource::Cpu));
        assert_eq!(e.severity, Severity::Warning);
        assert_eq!(e.since_ms, 5000);
        assert_eq!(
            e.at_ms, 6000,
            "raised on the second sample (raise_after = 2)"
        );
        assert_eq!(e.evidence[0].name, "cpu.busy_pct");
        assert!(e.evidence[0].value > 90.0);
        assert_eq!(p.status()[0].level, Some(Severity::Warning));
    }

    #[test]
    fn hysteresis_keeps_pressure_while_hovering_and_clears_when_calm() {
        let cfg = DetectConfig::default();
        let mut p = Pressure::new(&cfg, &facts());
        let mut samples: Vec<Sample> = (0..3).map(|k| busy(k * 1000, 0.95)).collect();
        // Hovering just under the line (85% >= 90% * 0.8): still pressure.
        samples.extend((3..30).map(|k| busy(k * 1000, 0.85)));
        let ev = run(&mut p, samples);
        assert_eq!(ev.len(), 1, "no clearing while hovering: {ev:?}");
        // Calm, but only for clear_after - 1 samples, then a blip, then calm for good.
        let mut samples: Vec<Sample> = (30..34).map(|k| idle(k * 1000)).collect();
        samples.push(busy(34_000, 0.80));
        samples.extend((35..35 + i64::from(cfg.clear_after)).map(|k| idle(k * 1000)));
        let ev = run(&mut p, samples);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0].kind, EventKind::PressureCleared(Resource::Cpu));
        assert_eq!(ev[0].since_ms, 0);
        assert_eq!(ev[0].at_ms, (34 + i64::from(cfg.clear_after)) * 1000);
        assert_eq!(p.status()[0].level, None);
    }

    #[test]
    fn escalates_to_critical_once() {
        let mut p = Pressure::new(&DetectConfig::default(), &facts());
        let mut samples: Vec<Sample> = (0..4).map(|k| busy(k * 1000, 0.95)).collect();
        samples.extend((4..10).map(|k| {
            let mut s = busy(k * 1000, 0.99);
            s.host[host::PROCS_RUNNING] = 9.0;
            s
        }));
        let ev = run(&mut p, samples);
        let sev: Vec<_> = ev.iter().map(|e| e.severity).collect();
        assert_eq!(sev, [Severity::Warning, Severity::Critical], "{ev:?}");
        assert_eq!(ev[1].since_ms, 0, "escalation keeps the original since");
    }

    #[test]
    fn each_resource_has_its_own_signal() {
        let cfg = DetectConfig::default();
        type Case = (Resource, fn(&mut Sample));
        let cases: [Case; 4] = [
            (Resource::Cpu, |s| s.host[host::CPU_STEAL_RATIO] = 0.25),
            (Resource::Memory, |s| s.host[host::MEM_AVAILABLE] = 0.5e9),
            (Resource::Io, |s| s.host[host::PSI_IO + 2] = 0.4),
            (Resource::Network, |s| {
                s.nics[0].values[nic::TX_BYTES_PER_S] = 120e6;
            }),
        ];
        for (r, f) in cases {
            let mut p = Pressure::new(&cfg, &facts());
            let ev = run(
                &mut p,
                (0..4).map(|k| {
                    let mut s = idle(k * 1000);
                    f(&mut s);
                    s
                }),
            );
            assert_eq!(ev.len(), 1, "{r:?}: {ev:?}");
            assert_eq!(ev[0].kind, EventKind::Pressure(r));
        }
    }

    #[test]
    fn oom_kill_is_critical_at_once() {
        let mut p = Pressure::new(&DetectConfig::default(), &facts());
        let mut out = Vec::new();
        let extra = |k| TickExtra {
            oom_kills: Some(k),
            procs_scanned: false,
        };
        p.observe(&idle(0), extra(3), &mut out);
        p.observe(&idle(1000), extra(3), &mut out);
        assert!(out.is_empty());
        p.observe(&idle(2000), extra(4), &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].kind, EventKind::Pressure(Resource::Memory));
        assert_eq!(out[0].severity, Severity::Critical);
        assert_eq!(out[0].since_ms, 2000);
        assert!(out[0].evidence.iter().any(|e| e.name == "mem.oom_kills"));
    }

    #[test]
    fn memory_running_out_fast_is_pressure_before_it_is_low() {
        let mut p = Pressure::new(&DetectConfig::default(), &facts());
        // 6 GB available, falling 40 MB/s: gone in 150 s < 300 s.
        let ev = run(
            &mut p,
            (0..40).map(|k| {
                let mut s = idle(k * 1000);
                s.host[host::MEM_AVAILABLE] = 6e9 - 40e6 * k as f64;
                s
            }),
        );
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert!(ev[0].evidence.iter().any(|e| e.name == "mem.exhaustion_s"));
    }

    #[test]
    fn configured_speed_covers_interfaces_without_one() {
        let cfg = DetectConfig {
            nic_speed_mbps: [("lo".to_string(), 100)].into_iter().collect(),
            ..DetectConfig::default()
        };
        let mut p = Pressure::new(&cfg, &facts());
        let ev = run(
            &mut p,
            (0..3).map(|k| {
                let mut s = idle(k * 1000);
                let mut lo = NicValues::new("lo");
                lo.values = [0.0; nic::COUNT];
                lo.values[nic::RX_BYTES_PER_S] = 12e6; // 96 Mbit/s of 100
                s.nics.push(lo);
                s
            }),
        );
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0].kind, EventKind::Pressure(Resource::Network));
        assert_eq!(ev[0].evidence[0].name, "net.utilization_pct@lo");
    }

    #[test]
    fn an_ignored_resource_is_never_under_pressure() {
        let cfg = DetectConfig {
            ignore: vec!["cpu".into()],
            ..DetectConfig::default()
        };
        let mut p = Pressure::new(&cfg, &facts());
        let ev = run(&mut p, (0..10).map(|k| busy(k * 1000, 1.0)));
        assert!(ev.is_empty(), "{ev:?}");
        assert!(cfg.validate().is_ok());
        let bad = DetectConfig {
            ignore: vec!["gpu".into()],
            ..DetectConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().0, "detect.ignore");
    }

    #[test]
    fn missing_values_are_not_pressure() {
        let mut p = Pressure::new(&DetectConfig::default(), &facts());
        let ev = run(
            &mut p,
            (0..10).map(|k| Sample {
                ts_ms: k * 1000,
                ..Sample::default()
            }),
        );
        assert!(ev.is_empty(), "{ev:?}");
    }
}
