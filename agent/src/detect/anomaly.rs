//! Anomalies against this VM's own history, from the same samples as everything else:
//!
//! - **Change of regime.** A few key series (CPU busy, memory used, disk and network
//!   throughput, context switches) are averaged per minute into a two-hour ring. At each
//!   minute the baseline is the median and the MAD (median absolute deviation, scaled by
//!   1.4826 to estimate a standard deviation) of the older minutes; when the last
//!   `regime_minutes` minutes all sit more than `regime_z` scaled MADs away on the same
//!   side, the series changed regime. Median and MAD are robust: a few odd minutes in
//!   the history do not move the baseline, so one burst neither raises an event nor
//!   hides the next. The scale has a floor per series (and 10% of the median), so an idle
//!   VM whose MAD is zero does not alarm on its first cron job. The ring then absorbs the
//!   new regime, which re-arms the series.
//! - **Runaway process.** One process (by `comm`) at `runaway_cpu_pct` of a core or more
//!   in every process scan for `runaway_minutes`.
//! - **Resource leak.** Memory used climbs over the last `leak_minutes` minutes along a
//!   straight line (least squares, R² at least 0.9) by at least `leak_min_pct` of
//!   MemTotal.
//!
//! Nothing is raised during the first `anomaly_warmup_min` minutes: there is no history
//! to compare with. State is fixed-size arrays; a steady tick adds to a few sums, a
//! minute boundary sorts a copy of a 120-element ring in place, and only raising an
//! event allocates.
//!
//! Why no burn autoencoder: the three events asked for are each a statement about one
//! series (which moved, which process, which resource), and the robust statistics above
//! say it with evidence an operator can check (value, baseline, threshold). An
//! autoencoder over window features would need per-VM training data (hours of a
//! regime before it knows the regime, so it is blind exactly when the VM is new),
//! training inside the guest (burn's training stack in the agent costs megabytes of
//! binary and far more than the 0.3%-of-a-core budget) or a fleet-wide model (which
//! learns personas, not this VM's normal, and flags a persona switch as an anomaly that
//! the mirror already reports). Its reconstruction error would also come without
//! evidence. It would have to beat these detectors on labelled incidents to earn its
//! place; we have no such labels yet.

use persona_shared::events::{AgentEvent, EventKind, Evidence, Severity};
use persona_shared::metrics::{disk, host, nic};
use persona_shared::sample::Sample;

use super::{DetectConfig, TickExtra};

/// Minutes of per-minute means kept per series.
pub const HISTORY_MIN: usize = 120;
/// Series watched for a change of regime.
const SERIES: usize = 5;
const NAMES: [&str; SERIES] = [
    "cpu.busy_ratio",
    "mem.used_bytes",
    "disk.total_bytes_per_s",
    "net.total_bytes_per_s",
    "cpu.context_switches_per_s",
];
/// Smallest scale per series (same units), so a flat history is not infinitely strict.
const FLOOR: [f64; SERIES] = [0.05, 256.0 * 1048576.0, 1048576.0, 1048576.0, 2000.0];
/// Consistency constant: MAD * 1.4826 estimates the standard deviation of normal data.
const MAD_SCALE: f64 = 1.4826;
/// Processes tracked at once for the runaway rule.
const RUNAWAY_SLOTS: usize = 8;
/// Least R² of the memory climb's straight line.
const LEAK_R2: f64 = 0.9;

#[derive(Debug, Clone, Copy)]
struct Ring {
    v: [f64; HISTORY_MIN],
    len: usize,
    pos: usize,
}

impl Ring {
    const fn new() -> Self {
        Self {
            v: [f64::NAN; HISTORY_MIN],
            len: 0,
            pos: 0,
        }
    }

    fn push(&mut self, x: f64) {
        self.v[self.pos] = x;
        self.pos = (self.pos + 1) % HISTORY_MIN;
        self.len = (self.len + 1).min(HISTORY_MIN);
    }

    /// The k-th most recent value (0 = newest).
    fn back(&self, k: usize) -> f64 {
        if k >= self.len {
            return f64::NAN;
        }
        self.v[(self.pos + HISTORY_MIN - 1 - k) % HISTORY_MIN]
    }
}

/// Median of the finite values of `xs` (sorted in place); NaN when there are none.
fn median(xs: &mut [f64]) -> f64 {
    xs.sort_unstable_by(|a, b| a.total_cmp(b));
    // NaN sorts last with total_cmp; count the finite prefix.
    let n = xs.iter().take_while(|x| x.is_finite()).count();
    match n {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

/// Median and MAD of `vals` (a scratch copy is sorted; `vals` is not touched).
pub(crate) fn median_mad(vals: &[f64], scratch: &mut [f64; HISTORY_MIN]) -> (f64, f64) {
    let n = vals.len().min(HISTORY_MIN);
    scratch[..n].copy_from_slice(&vals[..n]);
    let m = median(&mut scratch[..n]);
    for x in scratch[..n].iter_mut() {
        *x = (*x - m).abs();
    }
    (m, median(&mut scratch[..n]))
}

#[derive(Debug, Clone, Copy)]
struct Runaway {
    comm: [u8; 16],
    len: usize,
    first_ms: i64,
    seen: bool,
    raised: bool,
}

impl Runaway {
    const EMPTY: Runaway = Runaway {
        comm: [0; 16],
        len: 0,
        first_ms: 0,
        seen: false,
        raised: false,
    };

    fn name(&self) -> &[u8] {
        &self.comm[..self.len]
    }
}

/// The anomaly detector. See the module documentation.
#[derive(Debug)]
pub struct Anomalies {
    cfg: DetectConfig,
    minute: i64,
    sums: [f64; SERIES],
    counts: [u32; SERIES],
    rings: [Ring; SERIES],
    /// First minute of each series' current regime alarm (re-armed when back inside).
    flagged: [bool; SERIES],
    scratch: [f64; HISTORY_MIN],
    window: [f64; HISTORY_MIN],
    minutes: u32,
    leak_raised: bool,
    mem_total: f64,
    runaway: [Runaway; RUNAWAY_SLOTS],
}

impl Anomalies {
    pub fn new(cfg: &DetectConfig) -> Self {
        Self {
            cfg: cfg.clone(),
            minute: i64::MIN,
            sums: [0.0; SERIES],
            counts: [0; SERIES],
            rings: [Ring::new(); SERIES],
            flagged: [false; SERIES],
            scratch: [0.0; HISTORY_MIN],
            window: [0.0; HISTORY_MIN],
            minutes: 0,
            leak_raised: false,
            mem_total: f64::NAN,
            runaway: [Runaway::EMPTY; RUNAWAY_SLOTS],
        }
    }

    /// Minutes of history so far.
    pub fn minutes(&self) -> u32 {
        self.minutes
    }

    pub fn observe(&mut self, s: &Sample, extra: TickExtra, out: &mut Vec<AgentEvent>) {
        let minute = s.ts_ms.div_euclid(60_000);
        if minute != self.minute {
            if self.minute != i64::MIN {
                self.close_minute(s.ts_ms, out);
            }
            self.minute = minute;
        }
        let h = &s.host;
        let busy = h[host::CPU_USER_RATIO]
            + h[host::CPU_NICE_RATIO]
            + h[host::CPU_SYSTEM_RATIO]
            + h[host::CPU_IRQ_RATIO]
            + h[host::CPU_SOFTIRQ_RATIO];
        let vals = [
            busy,
            h[host::MEM_USED],
            s.disk_total[disk::READ_BYTES_PER_S] + s.disk_total[disk::WRITE_BYTES_PER_S],
            s.nic_total[nic::RX_BYTES_PER_S] + s.nic_total[nic::TX_BYTES_PER_S],
            h[host::CTXT_PER_S],
        ];
        for (k, v) in vals.into_iter().enumerate() {
            if v.is_finite() {
                self.sums[k] += v;
                self.counts[k] += 1;
            }
        }
        if h[host::MEM_TOTAL].is_finite() {
            self.mem_total = h[host::MEM_TOTAL];
        }
        if extra.procs_scanned {
            self.runaways(s, out);
        }
    }

    fn close_minute(&mut self, ts: i64, out: &mut Vec<AgentEvent>) {
        for k in 0..SERIES {
            let mean = if self.counts[k] > 0 {
                self.sums[k] / f64::from(self.counts[k])
            } else {
                f64::NAN
            };
            self.rings[k].push(mean);
            self.sums[k] = 0.0;
            self.counts[k] = 0;
        }
        self.minutes = self.minutes.saturating_add(1);
        if self.minutes < self.cfg.anomaly_warmup_min {
            return;
        }
        self.regime(ts, out);
        self.leak(ts, out);
    }

    fn regime(&mut self, ts: i64, out: &mut Vec<AgentEvent>) {
        let recent = self.cfg.regime_minutes as usize;
        let mut evidence: Option<Vec<Evidence>> = None;
        let mut since = ts;
        for k in 0..SERIES {
            let ring = &self.rings[k];
            if ring.len < recent + 5 {
                continue;
            }
            // Baseline: everything older than the recent minutes.
            let old = ring.len - recent;
            for j in 0..old {
                self.window[j] = ring.back(recent + j);
            }
            let (med, mad) = median_mad(&self.window[..old], &mut self.scratch);
            if !med.is_finite() {
                continue;
            }
            let scale = (mad * MAD_SCALE).max(FLOOR[k]).max(0.1 * med.abs());
            let z = |x: f64| (x - med) / scale;
            let last = ring.back(0);
            if self.flagged[k] {
                if z(last).abs() < self.cfg.regime_z / 2.0 {
                    self.flagged[k] = false;
                }
                continue;
            }
            let zs = (0..recent).map(|j| z(ring.back(j)));
            let (mut up, mut down) = (true, true);
            for zj in zs {
                up &= zj >= self.cfg.regime_z;
                down &= zj <= -self.cfg.regime_z;
            }
            if up || down {
                self.flagged[k] = true;
                let line = med + self.cfg.regime_z * scale * if up { 1.0 } else { -1.0 };
                since = since.min((self.minute - recent as i64 + 1) * 60_000);
                evidence.get_or_insert_with(Vec::new).push(Evidence {
                    name: NAMES[k].to_owned(),
                    value: last,
                    threshold: line,
                });
            }
        }
        if let Some(evidence) = evidence {
            let names: Vec<&str> = evidence.iter().map(|e| e.name.as_str()).collect();
            out.push(AgentEvent {
                id: 0,
                kind: EventKind::RegimeChange,
                severity: Severity::Warning,
                since_ms: since,
                at_ms: ts,
                summary: format!(
                    "change of regime for {} minutes: {}",
                    recent,
                    names.join(", ")
                ),
                evidence,
            });
        }
    }

    fn leak(&mut self, ts: i64, out: &mut Vec<AgentEvent>) {
        let n = self.cfg.leak_minutes as usize;
        let ring = &self.rings[1];
        if ring.len < n || !self.mem_total.is_finite() {
            return;
        }
        // Least squares over minutes 0..n (oldest first).
        let (mut sx, mut sy, mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0, 0.0, 0.0);
        let mut m = 0.0;
        for j in 0..n {
            let y = ring.back(n - 1 - j);
            if !y.is_finite() {
                continue;
            }
            let x = j as f64;
            m += 1.0;
            sx += x;
            sy += y;
            sxx += x * x;
            sxy += x * y;
            syy += y * y;
        }
        let den_x = m * sxx - sx * sx;
        let den_y = m * syy - sy * sy;
        if m < (n as f64) * 0.8 || den_x <= 0.0 {
            return;
        }
        let slope = (m * sxy - sx * sy) / den_x;
        let r2 = if den_y > 0.0 {
            (m * sxy - sx * sy).powi(2) / (den_x * den_y)
        } else {
            0.0
        };
        let min_slope = self.cfg.leak_min_pct / 100.0 * self.mem_total / (n as f64 - 1.0);
        let leaking = slope >= min_slope && r2 >= LEAK_R2;
        if leaking && !self.leak_raised {
            self.leak_raised = true;
            out.push(AgentEvent {
                id: 0,
                kind: EventKind::MemoryLeak,
                severity: Severity::Warning,
                since_ms: (self.minute - n as i64 + 1) * 60_000,
                at_ms: ts,
                summary: format!(
                    "memory used climbed {:.0} MiB per minute for {n} minutes (R² {r2:.2})",
                    slope / 1048576.0
                ),
                evidence: vec![
                    Evidence {
                        name: "mem.used_growth_bytes_per_min".into(),
                        value: slope,
                        threshold: min_slope,
                    },
                    Evidence {
                        name: "mem.used_trend_r2".into(),
                        value: r2,
                        threshold: LEAK_R2,
                    },
                ],
            });
        } else if !leaking && slope < min_slope / 2.0 {
            self.leak_raised = false;
        }
    }

    fn runaways(&mut self, s: &Sample, out: &mut Vec<AgentEvent>) {
        for r in &mut self.runaway {
            r.seen = false;
        }
        let limit = i64::from(self.cfg.runaway_minutes) * 60_000;
        for p in s
            .top_cpu
            .iter()
            .filter(|p| f64::from(p.cpu_pct) >= self.cfg.runaway_cpu_pct)
        {
            let name = p.comm.as_bytes();
            let name = &name[..name.len().min(16)];
            let slot = match self
                .runaway
                .iter()
                .position(|r| r.len > 0 && r.name() == name)
            {
                Some(i) => i,
                None => {
                    let Some(i) = self.runaway.iter().position(|r| r.len == 0) else {
                        continue;
                    };
                    let r = &mut self.runaway[i];
                    r.comm[..name.len()].copy_from_slice(name);
                    r.len = name.len();
                    r.first_ms = s.ts_ms;
                    r.raised = false;
                    i
                }
            };
            let r = &mut self.runaway[slot];
            r.seen = true;
            if !r.raised && s.ts_ms - r.first_ms >= limit {
                r.raised = true;
                out.push(AgentEvent {
                    id: 0,
                    kind: EventKind::RunawayProcess {
                        comm: p.comm.clone(),
                    },
                    severity: Severity::Warning,
                    since_ms: r.first_ms,
                    at_ms: s.ts_ms,
                    summary: format!(
                        "process {} has used {:.0}% of a core or more for {} minutes",
                        p.comm,
                        self.cfg.runaway_cpu_pct,
                        (s.ts_ms - r.first_ms) / 60_000
                    ),
                    evidence: vec![Evidence {
                        name: format!("proc.cpu_pct@{}", p.comm),
                        value: f64::from(p.cpu_pct),
                        threshold: self.cfg.runaway_cpu_pct,
                    }],
                });
            }
        }
        // A process that dropped below the line (or exited) starts over.
        for r in &mut self.runaway {
            if !r.seen {
                *r = Runaway::EMPTY;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use persona_shared::sample::ProcEntry;

    /// A quiet VM with a little noise: deterministic xorshift.
    struct Noise(u64);
    impl Noise {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % 1000) as f64 / 1000.0
        }
    }

    fn sample(ts: i64, busy: f64, used: f64) -> Sample {
        let mut s = Sample {
            ts_ms: ts,
            ..Sample::default()
        };
        s.host[host::CPU_USER_RATIO] = busy;
        for i in [
            host::CPU_NICE_RATIO,
            host::CPU_SYSTEM_RATIO,
            host::CPU_IRQ_RATIO,
            host::CPU_SOFTIRQ_RATIO,
        ] {
            s.host[i] = 0.0;
        }
        s.host[host::MEM_TOTAL] = 8e9;
        s.host[host::MEM_USED] = used;
        s.host[host::CTXT_PER_S] = 500.0;
        s.disk_total = [0.0; disk::COUNT];
        s.nic_total = [0.0; nic::COUNT];
        s
    }

    /// Feeds `minutes` of samples every 10 s, `f(minute, noise)` giving (busy, used).
    fn feed(
        a: &mut Anomalies,
        from_min: i64,
        minutes: i64,
        noise: &mut Noise,
        f: impl Fn(i64, f64) -> (f64, f64),
    ) -> Vec<AgentEvent> {
        let mut out = Vec::new();
        for m in from_min..from_min + minutes {
            for k in 0..6 {
                let (busy, used) = f(m, noise.next());
                a.observe(
                    &sample(m * 60_000 + k * 10_000, busy, used),
                    TickExtra::default(),
                    &mut out,
                );
            }
        }
        out
    }

    #[test]
    fn median_and_mad_are_robust() {
        let mut scratch = [0.0; HISTORY_MIN];
        let vals = [1.0, 2.0, 3.0, 4.0, 1000.0];
        assert_eq!(median_mad(&vals, &mut scratch), (3.0, 1.0));
        let vals = [5.0, f64::NAN, 7.0];
        assert_eq!(median_mad(&vals, &mut scratch).0, 6.0);
        assert!(median_mad(&[], &mut scratch).0.is_nan());
    }

    #[test]
    fn a_lasting_shift_is_one_regime_change_and_a_burst_is_none() {
        let mut a = Anomalies::new(&DetectConfig::default());
        let mut n = Noise(7);
        // 30 quiet minutes with one 2-minute burst at minute 20: no event.
        let ev = feed(&mut a, 0, 30, &mut n, |m, x| {
            let busy = if (20..22).contains(&m) {
                0.9
            } else {
                0.1 + 0.02 * x
            };
            (busy, 2e9 + 1e7 * x)
        });
        assert!(ev.is_empty(), "{ev:?}");
        // From minute 30 the VM is busy for good: one event after regime_minutes.
        let ev = feed(&mut a, 30, 20, &mut n, |_, x| {
            (0.8 + 0.02 * x, 2e9 + 1e7 * x)
        });
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0].kind, EventKind::RegimeChange);
        assert_eq!(ev[0].evidence[0].name, "cpu.busy_ratio");
        assert_eq!(ev[0].since_ms, 30 * 60_000);
    }

    #[test]
    fn nothing_during_warm_up() {
        let mut a = Anomalies::new(&DetectConfig::default());
        let mut n = Noise(3);
        let ev = feed(&mut a, 0, 14, &mut n, |m, _| {
            (if m > 3 { 0.9 } else { 0.1 }, 2e9)
        });
        assert!(ev.is_empty(), "{ev:?}");
    }

    #[test]
    fn a_steady_climb_is_a_leak_and_noise_is_not() {
        let cfg = DetectConfig::default();
        let mut a = Anomalies::new(&cfg);
        let mut n = Noise(11);
        // Flat with noise for 40 minutes.
        let ev = feed(&mut a, 0, 40, &mut n, |_, x| (0.1, 3e9 + 2e8 * x));
        assert!(ev.iter().all(|e| e.kind != EventKind::MemoryLeak), "{ev:?}");
        // +20 MB per minute for 40 minutes: 800 MB > 5% of 8 GB over 30 min (600 MB).
        let ev = feed(&mut a, 40, 40, &mut n, |m, x| {
            (0.1, 3e9 + 2e7 * (m - 40) as f64 + 1e6 * x)
        });
        let leaks: Vec<_> = ev
            .iter()
            .filter(|e| e.kind == EventKind::MemoryLeak)
            .collect();
        assert_eq!(leaks.len(), 1, "{ev:?}");
        assert!(leaks[0].evidence[1].value >= LEAK_R2);
    }

    #[test]
    fn a_process_pinned_for_long_is_a_runaway() {
        let cfg = DetectConfig::default();
        let mut a = Anomalies::new(&cfg);
        let mut out = Vec::new();
        let scanned = TickExtra {
            oom_kills: None,
            procs_scanned: true,
        };
        let proc_at = |ts: i64, cpu: f32| {
            let mut s = sample(ts, 0.6, 2e9);
            s.top_cpu = vec![
                ProcEntry {
                    comm: "spinner".into(),
                    cpu_pct: cpu,
                    rss_bytes: 1,
                },
                ProcEntry {
                    comm: "sshd".into(),
                    cpu_pct: 1.0,
                    rss_bytes: 1,
                },
            ];
            s
        };
        // 8 minutes pinned, one scan below the line: the clock starts again.
        for k in 0..48 {
            a.observe(&proc_at(k * 10_000, 99.0), scanned, &mut out);
        }
        a.observe(&proc_at(480_000, 20.0), scanned, &mut out);
        for k in 49..(49 + 6 * 9) {
            a.observe(&proc_at(k * 10_000, 99.0), scanned, &mut out);
        }
        assert!(out.is_empty(), "{out:?}");
        for k in (49 + 6 * 9)..(49 + 6 * 11) {
            a.observe(&proc_at(k * 10_000, 99.0), scanned, &mut out);
        }
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(
            out[0].kind,
            EventKind::RunawayProcess {
                comm: "spinner".into()
            }
        );
        assert_eq!(out[0].since_ms, 490_000);
    }
}
