//! `persona-agent observe`: runs the collectors standalone (no coordinator, no config)
//! and prints what the agent sees, so an operator can check a box. Human mode prints
//! one compact line per sample as it is taken; `--json` prints one document at the end,
//! `{"samples": [...], "summary": {...}}`, with values keyed by metric name from the
//! registry (rounded to each metric's precision; NaN as null). The summary carries
//! min/mean/max per host metric, the host facts, collector failures and the agent's own
//! CPU time and peak RSS, which is how the agent's overhead is benchmarked. Logs go to
//! stderr. This module only presents samples; collecting is [`crate::collect`]'s job.

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use persona_shared::facts::HostFacts;
use persona_shared::metrics::{self, MetricDef, host};
use persona_shared::sample::{ProcEntry, Sample};
use serde_json::{Map, Value, json};

use crate::collect::{CollectConfig, Collector, DEFAULT_PROCESS_EVERY};

/// Accepted sampling intervals, in ms.
pub const INTERVAL_MS: std::ops::RangeInclusive<u64> = 100..=60_000;

/// What `observe` was asked to do (see `persona-agent observe --help`).
#[derive(Debug, Clone)]
pub struct ObserveOptions {
    /// Number of samples to print (the priming read before them is not printed).
    pub seconds: u64,
    pub interval_ms: u64,
    pub json: bool,
    pub top_n: usize,
    pub proc_root: PathBuf,
    pub sys_root: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("--interval-ms must be between 100 and 60000 (ms), got {interval_ms}")]
    Interval { interval_ms: u64 },
    #[error("--seconds must be at least 1 (the number of samples to take), got {seconds}")]
    Seconds { seconds: u64 },
    #[error("{path} is not a readable proc filesystem: {source}")]
    ProcRoot {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing the output to stdout: {source}")]
    Output {
        #[source]
        source: io::Error,
    },
    #[error("encoding the JSON document: {source}")]
    Json {
        #[source]
        source: serde_json::Error,
    },
    #[error("mirror model: {0}")]
    Model(#[from] crate::model_store::ModelStoreError),
}

/// Runs `observe`. See the module documentation.
pub fn run(opts: ObserveOptions) -> Result<(), ObserveError> {
    if !INTERVAL_MS.contains(&opts.interval_ms) {
        return Err(ObserveError::Interval {
            interval_ms: opts.interval_ms,
        });
    }
    if opts.seconds == 0 {
        return Err(ObserveError::Seconds {
            seconds: opts.seconds,
        });
    }
    // Catch a wrong root up front rather than printing a screenful of NaN.
    std::fs::metadata(opts.proc_root.join("stat")).map_err(|source| ObserveError::ProcRoot {
        path: opts.proc_root.clone(),
        source,
    })?;

    let interval = Duration::from_millis(opts.interval_ms);
    // Scan processes at the daemon's default rate in wall time (every 5 s at 1 s), so
    // what observe costs is what the daemon costs.
    let process_every =
        (u64::from(DEFAULT_PROCESS_EVERY) * 1000 / opts.interval_ms).clamp(1, u64::from(u32::MAX));
    let mut collector = Collector::new(CollectConfig {
        proc_root: opts.proc_root.clone(),
        sys_root: opts.sys_root.clone(),
        top_n: opts.top_n,
        process_every: u32::try_from(process_every).unwrap_or(u32::MAX),
    });
    let mut sample = Sample::default();
    // Behavioural mirroring with the built-in model over the default window.
    let mut mirror = crate::mirror::MirrorRunner::new(
        persona_shared::window::WindowConfig::default(),
        crate::mirror::DEFAULT_STEP_S,
        crate::model_store::ModelHandle::open(None)?,
    );
    let mut stats = [Stat::default(); host::COUNT];
    let mut samples = Vec::new();
    let stdout = io::stdout();
    let out_err = |source| ObserveError::Output { source };

    // Priming read: rates need a previous reading, so every printed sample has them.
    let start = Instant::now();
    collector.sample(now_ms(), &mut sample);
    let mut facts = collector.host_facts();
    // Pressure and anomaly detection with the default thresholds (detect::watch).
    let mut watch = crate::detect::Watch::new(&facts);
    let self_at_start = SelfUsage::read();
    if !opts.json {
        let mut w = stdout.lock();
        print_facts(&mut w, &facts).map_err(out_err)?;
    }

    for i in 1..=opts.seconds {
        // Deadlines from one start instant: a slow tick does not push the next ones.
        let deadline = start + interval.saturating_mul(u32::try_from(i).unwrap_or(u32::MAX));
        if let Some(wait) = deadline.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let report = collector.sample(now_ms(), &mut sample);
        mirror.on_sample_procs(&sample);
        mirror.on_sample(&sample);
        if report.facts_changed {
            facts = collector.host_facts();
            watch.set_facts(&facts);
            tracing::info!("host facts changed");
        }
        let extra = crate::detect::TickExtra {
            oom_kills: collector.oom_kills(),
            procs_scanned: report.procs_scanned,
        };
        watch.tick(&sample, extra);
        for (s, v) in stats.iter_mut().zip(sample.host) {
            s.add(v);
        }
        if opts.json {
            samples.push(sample_json(&sample));
        } else {
            let mut w = stdout.lock();
            print_line(&mut w, &sample).map_err(out_err)?;
            w.flush().map_err(out_err)?;
        }
    }

    let me = SelfUsage::read();
    let wall = start.elapsed().as_secs_f64();
    let summary = summary_json(
        &stats,
        &facts,
        collector.failures(),
        me,
        self_at_start,
        wall,
    )?;
    let mirror_report = mirror.run_now().cloned();
    let mut w = stdout.lock();
    if opts.json {
        let mut doc = json!({ "samples": samples, "summary": summary });
        crate::mirror::annotate(mirror_report.as_ref(), &mut doc);
        watch.annotate(&mut doc);
        serde_json::to_writer(&mut w, &doc).map_err(|source| ObserveError::Json { source })?;
        writeln!(w).map_err(out_err)?;
    } else {
        print_summary(
            &mut w,
            &stats,
            collector.failures(),
            me,
            self_at_start,
            wall,
        )
        .map_err(out_err)?;
        watch.print_status(&mut w).map_err(out_err)?;
        crate::mirror::print_human(mirror_report.as_ref(), &mut w).map_err(out_err)?;
    }
    w.flush().map_err(out_err)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Running min/mean/max of one host metric over the finite values.
#[derive(Debug, Clone, Copy)]
struct Stat {
    n: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Default for Stat {
    fn default() -> Self {
        Self {
            n: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
}

impl Stat {
    fn add(&mut self, v: f64) {
        if v.is_finite() {
            self.n += 1;
            self.sum += v;
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
    }

    fn mean(&self) -> f64 {
        if self.n == 0 {
            f64::NAN
        } else {
            self.sum / self.n as f64
        }
    }
}

/// The agent's own resource use from /proc/self (always the real one, whatever
/// `--proc-root` says: it is this process that is measured).
#[derive(Debug, Clone, Copy, Default)]
struct SelfUsage {
    user_s: f64,
    system_s: f64,
    /// On-CPU time from /proc/self/schedstat in ns resolution (utime/stime are in
    /// 10 ms ticks, too coarse for a 60 s benchmark of a process that uses ~40 ms).
    /// It is the main thread's; observe has no other thread.
    sched_s: f64,
    peak_rss_bytes: Option<u64>,
    rss_bytes: Option<u64>,
}

impl SelfUsage {
    fn read() -> Self {
        let Ok(me) = procfs::process::Process::myself() else {
            return Self::default();
        };
        let tps = procfs::ticks_per_second() as f64;
        let (user_s, system_s) = me.stat().map_or((f64::NAN, f64::NAN), |s| {
            (s.utime as f64 / tps, s.stime as f64 / tps)
        });
        let status = me.status().ok();
        let sched_s = std::fs::read_to_string("/proc/self/schedstat")
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(f64::NAN, |ns| ns as f64 / 1e9);
        Self {
            user_s,
            system_s,
            sched_s,
            peak_rss_bytes: status.as_ref().and_then(|s| s.vmhwm).map(|kb| kb * 1024),
            rss_bytes: status.as_ref().and_then(|s| s.vmrss).map(|kb| kb * 1024),
        }
    }

    fn cpu_s(&self) -> f64 {
        self.user_s + self.system_s
    }
}

/// Rounds to the metric's precision (10^scale of its unit): what the wire keeps.
fn rounded(def: &MetricDef, v: f64) -> Value {
    if !v.is_finite() {
        return Value::Null;
    }
    let r = if def.scale < 0 {
        let f = 10f64.powi(-i32::from(def.scale));
        (v * f).round() / f
    } else {
        let f = 10f64.powi(i32::from(def.scale));
        (v / f).round() * f
    };
    Value::from(r)
}

fn values_json(defs: &[MetricDef], values: &[f64]) -> Value {
    let m: Map<String, Value> = defs
        .iter()
        .zip(values)
        .map(|(d, v)| (d.name.to_owned(), rounded(d, *v)))
        .collect();
    Value::Object(m)
}

fn procs_json(list: &[ProcEntry]) -> Value {
    list.iter()
        .map(|p| {
            let cpu = f64::from(p.cpu_pct);
            let cpu = if cpu.is_finite() {
                Value::from((cpu * 10.0).round() / 10.0)
            } else {
                Value::Null
            };
            json!({ "comm": p.comm, "cpu_pct": cpu, "rss_bytes": p.rss_bytes })
        })
        .collect()
}

fn sample_json(s: &Sample) -> Value {
    let disks: Map<String, Value> = s
        .disks
        .iter()
        .map(|d| (d.name.clone(), values_json(&metrics::DISK, &d.values)))
        .collect();
    let nics: Map<String, Value> = s
        .nics
        .iter()
        .map(|n| (n.name.clone(), values_json(&metrics::NIC, &n.values)))
        .collect();
    json!({
        "ts_ms": s.ts_ms,
        "host": values_json(&metrics::HOST, &s.host),
        "disk_total": values_json(&metrics::DISK, &s.disk_total),
        "disks": disks,
        "nic_total": values_json(&metrics::NIC, &s.nic_total),
        "nics": nics,
        "top_cpu": procs_json(&s.top_cpu),
        "top_rss": procs_json(&s.top_rss),
    })
}

fn nullable(v: f64) -> Value {
    if v.is_finite() {
        Value::from(v)
    } else {
        Value::Null
    }
}

fn summary_json(
    stats: &[Stat; host::COUNT],
    facts: &HostFacts,
    failures: &[(&'static str, u64)],
    me: SelfUsage,
    at_start: SelfUsage,
    wall_s: f64,
) -> Result<Value, ObserveError> {
    let host: Map<String, Value> = metrics::HOST
        .iter()
        .zip(stats)
        .map(|(d, s)| {
            let v = json!({ "min": rounded(d, s.min), "mean": rounded(d, s.mean()), "max": rounded(d, s.max), "n": s.n });
            (d.name.to_owned(), v)
        })
        .collect();
    let failures: Map<String, Value> = failures
        .iter()
        .map(|(n, c)| ((*n).to_owned(), Value::from(*c)))
        .collect();
    let loop_s = wall_s.max(f64::MIN_POSITIVE);
    Ok(json!({
        "host": host,
        "facts": serde_json::to_value(facts).map_err(|source| ObserveError::Json { source })?,
        "collector_failures": failures,
        "self": {
            "wall_s": nullable(wall_s),
            "cpu_user_s": nullable(me.user_s),
            "cpu_system_s": nullable(me.system_s),
            "cpu_s": nullable(me.cpu_s()),
            "sched_cpu_s": nullable(me.sched_s),
            "sched_loop_cpu_pct_of_one_core": nullable((me.sched_s - at_start.sched_s) / loop_s * 100.0),
            // Whole process, start-up included, over the sampling wall time.
            "cpu_pct_of_one_core": nullable(me.cpu_s() / loop_s * 100.0),
            // The sampling loop alone (after the priming read): the steady-state cost.
            "loop_cpu_pct_of_one_core": nullable((me.cpu_s() - at_start.cpu_s()) / loop_s * 100.0),
            "peak_rss_bytes": me.peak_rss_bytes,
            "rss_bytes": me.rss_bytes,
        },
    }))
}

/// Human-readable byte size.
fn size(v: f64) -> String {
    if !v.is_finite() {
        return "-".to_owned();
    }
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = v;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0}{}", UNITS[u])
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

fn pct(v: f64) -> String {
    if v.is_finite() {
        format!("{:.1}%", v * 100.0)
    } else {
        "-".to_owned()
    }
}

fn num(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "-".to_owned()
    }
}

fn print_facts(w: &mut impl Write, f: &HostFacts) -> io::Result<()> {
    let disks: Vec<String> = f
        .disks
        .iter()
        .map(|d| format!("{} {}", d.name, size(d.size_bytes as f64)))
        .collect();
    let nics: Vec<String> = f.nics.iter().map(|n| n.name.clone()).collect();
    writeln!(
        w,
        "{} | {} | kernel {} | {} | {}/{} vCPUs | {} RAM | disks: {} | nics: {} | psi: {}",
        f.hostname,
        f.os_release.as_deref().unwrap_or("?"),
        f.kernel.as_deref().unwrap_or("?"),
        f.virtualization.as_deref().unwrap_or("virt ?"),
        f.cpus_online,
        f.cpus_possible,
        size(f.mem_total_bytes as f64),
        disks.join(", "),
        nics.join(", "),
        if f.psi_available { "yes" } else { "no" },
    )
}

fn print_line(w: &mut impl Write, s: &Sample) -> io::Result<()> {
    use persona_shared::metrics::{disk, nic};
    let h = &s.host;
    let secs = s.ts_ms.rem_euclid(86_400_000) / 1000;
    let top: Vec<String> = s
        .top_cpu
        .iter()
        .take(3)
        .map(|p| format!("{} {:.0}%", p.comm, p.cpu_pct))
        .collect();
    writeln!(
        w,
        "{:02}:{:02}:{:02} cpu usr {} sys {} iow {} stl {} | load {} | run {} blk {} | mem avail {}/{} | psi cpu {} mem {} io {} | disk r {}/s w {}/s busy {}% | net rx {}/s tx {}/s | top {}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        pct(h[host::CPU_USER_RATIO] + h[host::CPU_NICE_RATIO]),
        pct(h[host::CPU_SYSTEM_RATIO] + h[host::CPU_IRQ_RATIO] + h[host::CPU_SOFTIRQ_RATIO]),
        pct(h[host::CPU_IOWAIT_RATIO]),
        pct(h[host::CPU_STEAL_RATIO]),
        num(h[host::LOAD_1M], 2),
        num(h[host::PROCS_RUNNING], 0),
        num(h[host::PROCS_BLOCKED], 0),
        size(h[host::MEM_AVAILABLE]),
        size(h[host::MEM_TOTAL]),
        num(h[host::PSI_CPU], 1),
        num(h[host::PSI_MEMORY], 1),
        num(h[host::PSI_IO], 1),
        size(s.disk_total[disk::READ_BYTES_PER_S]),
        size(s.disk_total[disk::WRITE_BYTES_PER_S]),
        num(s.disk_total[disk::BUSY_PCT], 0),
        size(s.nic_total[nic::RX_BYTES_PER_S]),
        size(s.nic_total[nic::TX_BYTES_PER_S]),
        top.join(", "),
    )
}

fn print_summary(
    w: &mut impl Write,
    stats: &[Stat; host::COUNT],
    failures: &[(&'static str, u64)],
    me: SelfUsage,
    at_start: SelfUsage,
    wall_s: f64,
) -> io::Result<()> {
    let u = &stats[host::CPU_USER_RATIO];
    let m = &stats[host::MEM_AVAILABLE];
    writeln!(
        w,
        "summary: {} samples | cpu user mean {} max {} | mem available min {} | failures: {}",
        u.n,
        pct(u.mean()),
        pct(u.max),
        size(m.min),
        failures
            .iter()
            .map(|(n, c)| format!("{n} {c}"))
            .collect::<Vec<_>>()
            .join(", "),
    )?;
    writeln!(
        w,
        "agent: cpu {:.3} s ({:.3}% of one core; sampling loop {:.3}%), peak rss {}",
        me.sched_s,
        me.sched_s / wall_s * 100.0,
        (me.sched_s - at_start.sched_s) / wall_s * 100.0,
        me.peak_rss_bytes.map_or("-".to_owned(), |b| size(b as f64)),
    )
}
