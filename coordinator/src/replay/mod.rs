//! Trace replay: how a sizing policy would have done on real VMs, measured.
//!
//! What it is for: `personactl replay --format bitbrains`, the proof of the engine. Each
//! VM is replayed causally: the allocation in force at sample t is decided only from the
//! samples before t (a policy sees sample t only after it has been scored against the
//! allocation it chose earlier). Files with the same name in different folders are the
//! same VM in consecutive months (the trace's convention) and are replayed as one history
//! in time order. VMs run in parallel on every core; each VM's file is parsed, replayed
//! under every selected policy and dropped, so memory stays small.
//!
//! Metrics, per resource (`cpu` in cores, `memory` in GiB):
//! - `slack` = Σ max(alloc − usage, 0) / Σ alloc over samples;
//! - `underprovisioned` = fraction of samples with usage > alloc;
//! - `footprint` = Σ alloc × interval, in core-hours or GiB-hours. A sample's interval
//!   is the time since the previous sample, capped at twice the VM's median interval (a
//!   gap in the trace is missing data, not a long sample); the first sample gets the
//!   median;
//! - `changes_per_vm_day` = allocation changes / VM-days, VM-days = Σ intervals / 86400;
//! - `vms`, `samples`.
//!
//! `total` combines them: `slack` is the mean of the two resources' slack,
//! `underprovisioned` the fraction of samples where either resource is short, and a
//! change is a sample at which either allocation changed.
//!
//! What it is not: the policies themselves (`vpa`, `static`, `persona`) or the file
//! format (`bitbrains`).

pub mod bitbrains;
pub mod persona;
#[path = "static.rs"]
pub mod static_policy;
pub mod vpa;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;

use crate::engine::policy::Steps;
use crate::engine::{EngineConfig, Size};
use bitbrains::Sample;

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a GWA-T-12 Bitbrains file: {reason}")]
    NotBitbrains { path: String, reason: String },
    #[error("{path}: {reason}")]
    Input { path: String, reason: String },
    #[error("no trace files found in {0}")]
    NoFiles(String),
    #[error("refused {} file(s):\n  {}", .0.len(), .0.join("\n  "))]
    Refused(Vec<String>),
    #[error("built-in personas: {0}")]
    Personas(String),
}

/// A sizing policy under replay.
pub trait Policy {
    /// The allocation before the first sample (from provisioning only, no usage).
    fn initial(&mut self, first: &Sample) -> Size;
    /// Sees sample `s`, which ran under `alloc`, and returns the allocation for the next
    /// sample.
    fn step(&mut self, s: &Sample, alloc: Size) -> Size;
}

/// The policies `--policy` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyName {
    Static,
    Vpa,
    Persona,
}

impl PolicyName {
    pub const ALL: [PolicyName; 3] = [Self::Static, Self::Vpa, Self::Persona];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Static => "static",
            Self::Vpa => "vpa",
            Self::Persona => "persona",
        }
    }
}

impl std::str::FromStr for PolicyName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "static" => Ok(Self::Static),
            "vpa" => Ok(Self::Vpa),
            "persona" => Ok(Self::Persona),
            o => Err(format!("unknown policy {o:?} (persona, vpa, static)")),
        }
    }
}

/// Replay settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub policies: Vec<PolicyName>,
    pub engine: EngineConfig,
    /// The platform's steps, applied to what the vpa and persona policies ask for.
    pub steps: Steps,
    pub per_vm: bool,
    /// Worker threads (0 = one per core).
    pub threads: usize,
    /// Draw a progress bar on stderr when it is a terminal.
    pub progress: bool,
}

/// Sums for one resource.
#[derive(Debug, Clone, Copy, Default)]
struct Acc {
    alloc: f64,
    slack: f64,
    under: u64,
    footprint: f64,
    changes: u64,
}

/// Sums for one policy over some VMs.
#[derive(Debug, Clone, Default)]
struct Tally {
    cpu: Acc,
    mem: Acc,
    any_under: u64,
    any_changes: u64,
    samples: u64,
    vm_seconds: f64,
    vms: u64,
}

impl Tally {
    fn merge(&mut self, o: &Tally) {
        for (a, b) in [(&mut self.cpu, &o.cpu), (&mut self.mem, &o.mem)] {
            a.alloc += b.alloc;
            a.slack += b.slack;
            a.under += b.under;
            a.footprint += b.footprint;
            a.changes += b.changes;
        }
        self.any_under += o.any_under;
        self.any_changes += o.any_changes;
        self.samples += o.samples;
        self.vm_seconds += o.vm_seconds;
        self.vms += o.vms;
    }
}

/// One resource's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResourceFigures {
    pub slack: f64,
    pub underprovisioned: f64,
    pub footprint: f64,
    pub footprint_unit: &'static str,
    pub changes_per_vm_day: f64,
    pub vms: u64,
    pub samples: u64,
}

/// Both resources together.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TotalFigures {
    pub slack: f64,
    pub underprovisioned: f64,
    pub footprint: BTreeMap<&'static str, f64>,
    pub changes_per_vm_day: f64,
    pub vms: u64,
    pub samples: u64,
}

/// One policy's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    pub cpu: ResourceFigures,
    pub memory: ResourceFigures,
    pub total: TotalFigures,
}

fn round6(v: f64) -> f64 {
    if v.is_finite() {
        (v * 1e6).round() / 1e6
    } else {
        0.0
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { round6(a / b) } else { 0.0 }
}

impl Tally {
    fn figures(&self) -> Figures {
        let days = self.vm_seconds / 86400.0;
        let n = self.samples as f64;
        let res = |a: &Acc, unit: &'static str| ResourceFigures {
            slack: ratio(a.slack, a.alloc),
            underprovisioned: ratio(a.under as f64, n),
            footprint: (a.footprint * 100.0).round() / 100.0,
            footprint_unit: unit,
            changes_per_vm_day: ratio(a.changes as f64, days),
            vms: self.vms,
            samples: self.samples,
        };
        let cpu = res(&self.cpu, "core-hours");
        let memory = res(&self.mem, "GiB-hours");
        let total = TotalFigures {
            slack: round6((cpu.slack + memory.slack) / 2.0),
            underprovisioned: ratio(self.any_under as f64, n),
            footprint: [
                ("core_hours", cpu.footprint),
                ("gib_hours", memory.footprint),
            ]
            .into_iter()
            .collect(),
            changes_per_vm_day: ratio(self.any_changes as f64, days),
            vms: self.vms,
            samples: self.samples,
        };
        Figures { cpu, memory, total }
    }
}

/// One VM's row (`--per-vm`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmRow {
    pub vm: String,
    pub files: Vec<String>,
    pub policies: BTreeMap<&'static str, Figures>,
}

/// The whole replay document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub format: &'static str,
    pub files: usize,
    pub vms: usize,
    pub rows: u64,
    pub samples: u64,
    pub malformed_rows: u64,
    pub unprovisioned_rows: u64,
    /// The first few malformed rows, "path:line: reason".
    pub malformed_examples: Vec<String>,
    pub policies: BTreeMap<&'static str, Figures>,
    pub engine: EngineConfig,
    pub persona_steps: Steps,
    pub threads: usize,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_vm: Option<Vec<VmRow>>,
}

/// One VM to replay: its files in time order.
#[derive(Debug, Clone)]
struct Vm {
    id: String,
    files: Vec<PathBuf>,
}

fn is_trace_name(p: &Path) -> bool {
    let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    n.ends_with(".csv") || n.ends_with(".csv.gz")
}

fn vm_id(p: &Path) -> String {
    let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    n.trim_end_matches(".gz")
        .trim_end_matches(".csv")
        .to_owned()
}

/// Files named on the command line are taken as they are (and refused later if they are
/// not traces); directories are walked for `*.csv` and `*.csv.gz`.
fn collect(paths: &[PathBuf]) -> Result<Vec<Vm>, ReplayError> {
    let mut files = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|source| ReplayError::Read {
            path: p.display().to_string(),
            source,
        })?;
        if meta.is_dir() {
            let before = files.len();
            walk(p, &mut files)?;
            if files.len() == before {
                return Err(ReplayError::NoFiles(p.display().to_string()));
            }
        } else {
            files.push(p.clone());
        }
    }
    let mut by_id: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for f in files {
        by_id.entry(vm_id(&f)).or_default().push(f);
    }
    let mut vms: Vec<Vm> = by_id
        .into_iter()
        .map(|(id, mut files)| {
            files.sort();
            files.dedup();
            Vm { id, files }
        })
        .collect();
    // Numeric ids in numeric order, for readable per-VM output.
    vms.sort_by(|a, b| match (a.id.parse::<u64>(), b.id.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.id.cmp(&b.id),
    });
    Ok(vms)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ReplayError> {
    let rd = std::fs::read_dir(dir).map_err(|source| ReplayError::Read {
        path: dir.display().to_string(),
        source,
    })?;
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if is_trace_name(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// Loads one VM: every file parsed, joined in time order (a later file's rows that do not
/// move time forward are counted as malformed).
fn load(vm: &Vm) -> Result<(Vec<Sample>, bitbrains::FileStats), ReplayError> {
    let mut parts = Vec::new();
    for f in &vm.files {
        parts.push(bitbrains::parse(f)?);
    }
    parts.sort_by_key(|(s, _)| s.first().map_or(i64::MAX, |x| x.t_s));
    let mut all: Vec<Sample> = Vec::new();
    let mut stats = bitbrains::FileStats::default();
    for (s, st) in parts {
        stats.rows += st.rows;
        stats.malformed += st.malformed;
        stats.unprovisioned += st.unprovisioned;
        stats.examples.extend(st.examples);
        let last = all.last().map_or(i64::MIN, |x| x.t_s);
        let (offered, had) = (s.len(), all.len());
        all.extend(s.into_iter().filter(|x| x.t_s > last));
        stats.malformed += (offered - (all.len() - had)) as u64;
    }
    Ok((all, stats))
}

fn intervals(s: &[Sample]) -> Vec<f64> {
    if s.is_empty() {
        return Vec::new();
    }
    let mut gaps: Vec<i64> = s.windows(2).map(|w| w[1].t_s - w[0].t_s).collect();
    let median = if gaps.is_empty() {
        300.0
    } else {
        let mid = gaps.len() / 2;
        *gaps.select_nth_unstable(mid).1 as f64
    };
    let cap = 2.0 * median;
    std::iter::once(median)
        .chain(
            s.windows(2)
                .map(|w| ((w[1].t_s - w[0].t_s) as f64).min(cap)),
        )
        .collect()
}

/// Replays one VM under one policy.
fn run_one(p: &mut dyn Policy, s: &[Sample], dur: &[f64]) -> Tally {
    let mut t = Tally {
        vms: 1,
        ..Tally::default()
    };
    let Some(first) = s.first() else {
        t.vms = 0;
        return t;
    };
    let mut alloc = p.initial(first);
    let mut prev: Option<Size> = None;
    for (x, d) in s.iter().zip(dur) {
        let hours = d / 3600.0;
        let mut short = false;
        for (acc, a, u, changed) in [
            (
                &mut t.cpu,
                alloc.cpu_cores,
                x.cpu_cores,
                prev.is_some_and(|p| p.cpu_cores != alloc.cpu_cores),
            ),
            (
                &mut t.mem,
                alloc.memory_gib,
                x.memory_gib,
                prev.is_some_and(|p| p.memory_gib != alloc.memory_gib),
            ),
        ] {
            acc.alloc += a;
            acc.slack += (a - u).max(0.0);
            if u > a {
                acc.under += 1;
                short = true;
            }
            acc.footprint += a * hours;
            acc.changes += u64::from(changed);
        }
        t.any_under += u64::from(short);
        t.any_changes += u64::from(prev.is_some_and(|p| p != alloc));
        t.samples += 1;
        t.vm_seconds += d;
        prev = Some(alloc);
        alloc = p.step(x, alloc);
    }
    t
}

fn make_policy(
    name: PolicyName,
    o: &Options,
    shape: Option<&(
        crate::profile::personas::Week,
        crate::profile::personas::Week,
    )>,
) -> Box<dyn Policy> {
    match name {
        PolicyName::Static => Box::new(static_policy::Static),
        PolicyName::Vpa => Box::new(Stepped {
            inner: vpa::Vpa::default(),
            steps: o.steps,
        }),
        PolicyName::Persona => Box::new(persona::PersonaPolicy::new(&o.engine, shape, o.steps)),
    }
}

/// The platform's granularity applied to what a policy asks for: a platform cannot run
/// 1.37 vCPUs when it hot-plugs whole ones, whichever policy asked.
struct Stepped<P> {
    inner: P,
    steps: Steps,
}

impl<P: Policy> Policy for Stepped<P> {
    fn initial(&mut self, first: &Sample) -> Size {
        self.inner.initial(first)
    }

    fn step(&mut self, s: &Sample, alloc: Size) -> Size {
        let want = self.inner.step(s, alloc);
        if want == alloc {
            return alloc;
        }
        let up = |v: f64, step: f64| ((v / step) - 1e-9).ceil().max(1.0) * step;
        Size {
            cpu_cores: up(want.cpu_cores, self.steps.cpu_cores),
            memory_gib: up(want.memory_gib, self.steps.memory_gib),
        }
    }
}

struct Shared {
    totals: BTreeMap<PolicyName, Tally>,
    rows: Vec<(usize, VmRow)>,
    stats: bitbrains::FileStats,
    samples: u64,
    refused: Vec<String>,
}

/// Replays every VM found under `paths`.
pub fn run(paths: &[PathBuf], o: &Options) -> Result<Report, ReplayError> {
    let started = std::time::Instant::now();
    let vms = collect(paths)?;
    if vms.is_empty() {
        return Err(ReplayError::NoFiles(
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }
    let files: usize = vms.iter().map(|v| v.files.len()).sum();
    let personas =
        crate::profile::personas::builtin().map_err(|e| ReplayError::Personas(e.to_string()))?;
    let shape = persona::mixture_shape(&personas);
    let threads = if o.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        o.threads
    }
    .clamp(1, 64)
    .min(vms.len());
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let shared = Mutex::new(Shared {
        totals: BTreeMap::new(),
        rows: Vec::new(),
        stats: bitbrains::FileStats::default(),
        samples: 0,
        refused: Vec::new(),
    });
    let progress = o.progress && std::io::stderr().is_terminal();
    std::thread::scope(|sc| {
        for _ in 0..threads {
            sc.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(vm) = vms.get(i) else { break };
                    let loaded = load(vm);
                    let mut local: Vec<(PolicyName, Tally)> = Vec::new();
                    let outcome = loaded.map(|(samples, stats)| {
                        let dur = intervals(&samples);
                        for &name in &o.policies {
                            let mut p = make_policy(name, o, shape.as_ref());
                            local.push((name, run_one(p.as_mut(), &samples, &dur)));
                        }
                        (samples.len(), stats)
                    });
                    if let Ok(mut g) = shared.lock() {
                        match outcome {
                            Ok((n, stats)) => {
                                g.samples += n as u64;
                                g.stats.rows += stats.rows;
                                g.stats.malformed += stats.malformed;
                                g.stats.unprovisioned += stats.unprovisioned;
                                for e in stats.examples {
                                    if g.stats.examples.len() < 10 {
                                        g.stats.examples.push(e);
                                    }
                                }
                                for (name, t) in &local {
                                    g.totals.entry(*name).or_default().merge(t);
                                }
                                if o.per_vm {
                                    let row = VmRow {
                                        vm: vm.id.clone(),
                                        files: vm
                                            .files
                                            .iter()
                                            .map(|f| f.display().to_string())
                                            .collect(),
                                        policies: local
                                            .iter()
                                            .map(|(n, t)| (n.as_str(), t.figures()))
                                            .collect(),
                                    };
                                    g.rows.push((i, row));
                                }
                            }
                            Err(e) => g.refused.push(e.to_string()),
                        }
                    }
                    let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if progress {
                        draw(d, vms.len());
                    }
                }
            });
        }
    });
    if progress {
        let _ = writeln!(std::io::stderr());
    }
    let g = shared.into_inner().map_err(|_| ReplayError::Input {
        path: "(replay)".into(),
        reason: "a worker thread panicked".into(),
    })?;
    if !g.refused.is_empty() {
        let mut r = g.refused;
        r.sort();
        return Err(ReplayError::Refused(r));
    }
    let mut rows = g.rows;
    rows.sort_by_key(|(i, _)| *i);
    Ok(Report {
        format: "bitbrains",
        files,
        vms: vms.len(),
        rows: g.stats.rows,
        samples: g.samples,
        malformed_rows: g.stats.malformed,
        unprovisioned_rows: g.stats.unprovisioned,
        malformed_examples: g.stats.examples,
        policies: g
            .totals
            .iter()
            .map(|(n, t)| (n.as_str(), t.figures()))
            .collect(),
        engine: o.engine.clone(),
        persona_steps: o.steps,
        threads,
        seconds: (started.elapsed().as_secs_f64() * 100.0).round() / 100.0,
        per_vm: o.per_vm.then(|| rows.into_iter().map(|(_, r)| r).collect()),
    })
}

fn draw(done: usize, total: usize) {
    let width = 40;
    let filled = done * width / total.max(1);
    let _ = write!(
        std::io::stderr(),
        "\rreplay [{}{}] {done}/{total} VMs",
        "#".repeat(filled),
        " ".repeat(width - filled)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t_s: i64, cpu: f64, mem: f64) -> Sample {
        Sample {
            t_s,
            cpu_cores: cpu,
            memory_gib: mem,
            prov_cores: 2.0,
            prov_memory_gib: 4.0,
        }
    }

    /// A policy that halves the allocation after the first sample it sees.
    struct Halve;
    impl Policy for Halve {
        fn initial(&mut self, f: &Sample) -> Size {
            Size {
                cpu_cores: f.prov_cores,
                memory_gib: f.prov_memory_gib,
            }
        }
        fn step(&mut self, _s: &Sample, _a: Size) -> Size {
            Size {
                cpu_cores: 1.0,
                memory_gib: 2.0,
            }
        }
    }

    #[test]
    fn metrics_follow_their_definitions() {
        // Three 5-minute samples, then a 2-hour gap (capped at 10 minutes).
        let v = [
            s(0, 1.0, 1.0),
            s(300, 1.5, 3.0),
            s(600, 0.5, 1.0),
            s(7800, 1.0, 2.0),
        ];
        let d = intervals(&v);
        assert_eq!(d, vec![300.0, 300.0, 300.0, 600.0]);
        let t = run_one(&mut Halve, &v, &d);
        let f = t.figures();
        // Allocations in force: (2,4) then (1,2) x3 — causal: sample 0 runs on (2,4).
        // CPU slack: (1 + 0 + 0.5 + 0) / (2 + 1 + 1 + 1) = 0.3; under at sample 1.
        assert!((f.cpu.slack - 0.3).abs() < 1e-9, "{f:?}");
        assert!((f.cpu.underprovisioned - 0.25).abs() < 1e-9);
        // Memory slack: (3 + 0 + 1 + 0) / (4 + 2 + 2 + 2) = 0.4; under at sample 1.
        assert!((f.memory.slack - 0.4).abs() < 1e-9);
        // Footprint: 2·300 + 1·300 + 1·300 + 1·600 core-seconds = 1800 s = 0.5 h.
        assert!((f.cpu.footprint - 0.5).abs() < 1e-9);
        // One change over 1500 s = 1/(1500/86400) per VM-day.
        assert!((f.total.changes_per_vm_day - 86400.0 / 1500.0).abs() < 1e-3);
        assert!((f.total.underprovisioned - 0.25).abs() < 1e-9);
    }
}
