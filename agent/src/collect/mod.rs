//! Sampling the machine: one [`Collector`] owns a collector per source (one file each:
//! cpu, load, memory, psi, disk, net, procs) and fills a [`Sample`] in place every
//! tick, computing rates from counter deltas against the previous tick. It is built to
//! be nearly free in the guest: every path is computed once, each `/proc` file is read
//! once per tick into one reused buffer and parsed from borrowed slices, and the
//! sample's vectors and strings are reused, so a steady-state tick does not allocate
//! (the process scan, which does, runs every `process_every` ticks). One collector
//! failing is logged (rate-limited), counted and leaves its values NaN; the rest of the
//! sample goes on. This module does not schedule ticks, encode or send anything: the
//! caller (`observe`, the daemon) owns the clock and the output.
//!
//! The `/proc` and `/sys` roots are configurable so that every collector runs against
//! fixture trees in tests.

mod cpu;
mod devices;
mod disk;
mod facts;
mod load;
mod memory;
mod net;
#[cfg(test)]
mod oracle_tests;
mod parse;
mod procs;
mod psi;

use std::path::PathBuf;
use std::time::Instant;

use persona_shared::facts::HostFacts;
use persona_shared::metrics::{disk as disk_idx, host, nic as nic_idx};
use persona_shared::sample::Sample;

/// How often the process scan runs by default, in ticks. A scan of ~100 processes costs
/// about as much as all the other collectors together (see docs/BENCHMARKS.md), and the
/// top-N lists change slowly, so at 1 s sampling they are refreshed every 5 s.
pub const DEFAULT_PROCESS_EVERY: u32 = 5;
/// Default length of the top-N process lists.
pub const DEFAULT_TOP_N: usize = 10;
/// Consecutive failures of one collector between two warnings after the first.
const WARN_EVERY: u64 = 60;

/// Names of the collectors, in the order they run and in [`Collector::failures`].
pub const COLLECTORS: [&str; 7] = ["cpu", "load", "memory", "psi", "disk", "net", "procs"];

/// Where to read from and how much to collect.
#[derive(Debug, Clone)]
pub struct CollectConfig {
    /// Root of the proc filesystem, `/proc` on a real machine.
    pub proc_root: PathBuf,
    /// Root of the sys filesystem, `/sys` on a real machine.
    pub sys_root: PathBuf,
    /// Length of the top-by-CPU and top-by-RSS process lists.
    pub top_n: usize,
    /// Scan processes every this many ticks (1 = every tick; 0 is taken as 1).
    pub process_every: u32,
}

impl Default for CollectConfig {
    fn default() -> Self {
        Self {
            proc_root: PathBuf::from("/proc"),
            sys_root: PathBuf::from("/sys"),
            top_n: DEFAULT_TOP_N,
            process_every: DEFAULT_PROCESS_EVERY,
        }
    }
}

/// Why one collector produced nothing this tick. It never escapes [`Collector::sample`]
/// (the tick goes on); it is logged and counted. `file` is relative to the proc root.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("cannot read {file}: {source}")]
    Io {
        file: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {file}: {what}")]
    Parse {
        file: &'static str,
        what: &'static str,
    },
    #[error("{what}: {source}")]
    Proc {
        what: &'static str,
        #[source]
        source: procfs::ProcError,
    },
}

/// The common shape of every collector: read its files, write its slots of the sample.
/// On error the collector may have written some of its values; the others stay NaN
/// (the collector resets the sample to NaN at the start of each tick).
pub(crate) trait Source {
    fn name(&self) -> &'static str;
    /// `now_ns` is a monotonic clock reading used for rates; `buf` is the shared read
    /// buffer.
    fn collect(
        &mut self,
        now_ns: u64,
        buf: &mut Vec<u8>,
        out: &mut Sample,
    ) -> Result<(), CollectError>;
}

/// What happened in one tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Bit i set: collector `COLLECTORS[i]` failed this tick.
    pub failed_mask: u8,
    /// Whether this tick ran a process scan (the top lists are fresh).
    pub procs_scanned: bool,
    /// Whether something the host facts describe changed since the previous tick
    /// (online CPUs, memory total, the set of disks or NICs): time to re-read
    /// [`Collector::host_facts`] and resend them.
    pub facts_changed: bool,
}

impl TickReport {
    /// Names of the collectors that failed this tick.
    pub fn failed(&self) -> impl Iterator<Item = &'static str> + '_ {
        COLLECTORS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.failed_mask & (1 << i) != 0)
            .map(|(_, n)| *n)
    }

    pub fn all_ok(&self) -> bool {
        self.failed_mask == 0
    }
}

/// Cheap fingerprint of the facts, compared tick to tick.
#[derive(Debug, Clone, Copy, PartialEq)]
struct FactsSignals {
    online: u64,
    mem_total: u64,
    disks: u64,
    nics: u64,
    psi: bool,
}

/// Samples the machine. See the module documentation.
pub struct Collector {
    cfg: CollectConfig,
    start: Instant,
    buf: Vec<u8>,
    cpu: cpu::Cpu,
    load: load::Load,
    memory: memory::Memory,
    psi: psi::Psi,
    disks: disk::Disks,
    nics: net::Nics,
    procs: procs::Procs,
    ticks: u64,
    failures: [(&'static str, u64); 7],
    consecutive: [u64; 7],
    signals: Option<FactsSignals>,
}

impl Collector {
    pub fn new(cfg: CollectConfig) -> Self {
        let (p, s) = (&cfg.proc_root, &cfg.sys_root);
        Self {
            start: Instant::now(),
            // Big enough for /proc/stat's long intr line on a few dozen CPUs; grows once
            // if needed and is then reused.
            buf: Vec::with_capacity(16 * 1024),
            cpu: cpu::Cpu::new(p),
            load: load::Load::new(p),
            memory: memory::Memory::new(p),
            psi: psi::Psi::new(p),
            disks: disk::Disks::new(p, s),
            nics: net::Nics::new(p),
            procs: procs::Procs::new(p, cfg.top_n),
            ticks: 0,
            failures: COLLECTORS.map(|n| (n, 0)),
            consecutive: [0; 7],
            signals: None,
            cfg,
        }
    }

    /// Fills `out` in place, time-stamped `now_ms` (wall clock, ms since the epoch).
    /// Rates are computed over the time since the previous call measured on a monotonic
    /// clock, so a wall-clock step never produces an absurd rate; on the first call
    /// they are NaN. Never fails as a whole: see [`TickReport`].
    pub fn sample(&mut self, now_ms: i64, out: &mut Sample) -> TickReport {
        let now_ns = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.sample_at(now_ms, now_ns, out)
    }

    /// [`Collector::sample`] with an explicit monotonic time in ns (any origin, never
    /// decreasing), for tests and callers that keep their own clock.
    pub fn sample_at(&mut self, now_ms: i64, now_ns: u64, out: &mut Sample) -> TickReport {
        out.ts_ms = now_ms;
        out.host = [f64::NAN; host::COUNT];
        out.disk_total = [f64::NAN; disk_idx::COUNT];
        out.nic_total = [f64::NAN; nic_idx::COUNT];
        for d in &mut out.disks {
            d.values = [f64::NAN; disk_idx::COUNT];
        }
        for n in &mut out.nics {
            n.values = [f64::NAN; nic_idx::COUNT];
        }
        let mut report = TickReport::default();
        let buf = &mut self.buf;
        // The first scan only primes the per-process CPU counters, so the second one
        // runs on the very next tick and the lists are complete from then on.
        let every = u64::from(self.cfg.process_every.max(1));
        let scan_due = self.ticks <= 1 || (self.ticks - 1).is_multiple_of(every);
        report.procs_scanned = scan_due;
        let results = [
            (self.cpu.name(), self.cpu.collect(now_ns, buf, out)),
            (self.load.name(), self.load.collect(now_ns, buf, out)),
            (self.memory.name(), self.memory.collect(now_ns, buf, out)),
            (self.psi.name(), self.psi.collect(now_ns, buf, out)),
            (self.disks.name(), self.disks.collect(now_ns, buf, out)),
            (self.nics.name(), self.nics.collect(now_ns, buf, out)),
            (
                self.procs.name(),
                if scan_due {
                    self.procs.scan(now_ns)
                } else {
                    Ok(())
                },
            ),
        ];
        // Copy the latest lists even when the scan failed: they are the freshest we have.
        let _ = self.procs.collect(now_ns, buf, out);
        for (i, (name, r)) in results.into_iter().enumerate() {
            debug_assert_eq!(name, COLLECTORS[i]);
            self.account(i, r, &mut report);
        }
        self.ticks += 1;

        // A failed collector (NaN) is not a change: keep the last known value.
        let keep = |v: f64, old: Option<u64>| {
            if v.is_finite() && v >= 0.0 {
                v as u64
            } else {
                old.unwrap_or(u64::MAX)
            }
        };
        let signals = FactsSignals {
            online: keep(out.host[host::CPU_ONLINE], self.signals.map(|s| s.online)),
            mem_total: keep(out.host[host::MEM_TOTAL], self.signals.map(|s| s.mem_total)),
            disks: self.disks.devices.generation,
            nics: self.nics.devices.generation,
            psi: self.psi.available(),
        };
        report.facts_changed = self.signals.is_some_and(|s| s != signals);
        self.signals = Some(signals);
        report
    }

    fn account(&mut self, i: usize, r: Result<(), CollectError>, report: &mut TickReport) {
        let name = COLLECTORS[i];
        match r {
            Ok(()) => {
                if self.consecutive[i] > 0 {
                    tracing::info!(
                        collector = name,
                        after = self.consecutive[i],
                        "collector recovered"
                    );
                }
                self.consecutive[i] = 0;
            }
            Err(e) => {
                report.failed_mask |= 1 << i;
                self.failures[i].1 += 1;
                self.consecutive[i] += 1;
                let n = self.consecutive[i];
                if n == 1 || n.is_multiple_of(WARN_EVERY) {
                    tracing::warn!(
                        collector = name,
                        consecutive = n,
                        total = self.failures[i].1,
                        "collector failed, its values are NaN: {e}"
                    );
                }
            }
        }
    }

    /// Reads the host facts fresh (allocates; call at start-up and when a tick reports
    /// `facts_changed`).
    pub fn host_facts(&self) -> HostFacts {
        facts::read(&self.cfg.proc_root, &self.cfg.sys_root)
    }

    /// Failures so far per collector, in [`COLLECTORS`] order.
    pub fn failures(&self) -> &[(&'static str, u64)] {
        &self.failures
    }

    /// OOM kills since boot (`oom_kill` in /proc/vmstat) as of the last tick; None on
    /// kernels without the counter. Read by the pressure detector, not sent as a metric.
    pub fn oom_kills(&self) -> Option<u64> {
        self.memory.oom_kills
    }

    /// The configuration this collector runs with.
    pub fn config(&self) -> &CollectConfig {
        &self.cfg
    }
}
