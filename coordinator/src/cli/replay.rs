//! `personactl replay`: replays trace files locally (no coordinator, no token) under the
//! chosen sizing policies and prints the figures. Argument parsing and output only; the
//! replay itself is `replay::run`.
//!
//! What it is not: the policies or the metrics (`replay`).

use std::path::PathBuf;

use serde_json::Value;

use crate::cli::Global;
use crate::cli::client::CtlError;
use crate::engine::EngineConfig;
use crate::engine::policy::Steps;
use crate::replay::{self, Options, PolicyName};

/// `personactl replay ...`
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Trace format (only `bitbrains`: GWA-T-12 per-VM CSV files, gzipped or not).
    #[arg(long, default_value = "bitbrains")]
    pub format: String,
    /// Policies to replay, comma-separated: persona, vpa, static (default: all three).
    #[arg(long, value_delimiter = ',')]
    pub policy: Vec<PolicyName>,
    /// Add one row per VM.
    #[arg(long)]
    pub per_vm: bool,
    /// Platform steps for the persona engine: `vm` (whole vCPUs, 128 MiB blocks) or
    /// `quota` (millicores and MiB, the granularity VPA sizes containers in).
    #[arg(long, default_value = "vm")]
    pub steps: String,
    /// Engine constants: a TOML file with the keys of the coordinator's `[engine]` table
    /// (default: the built-in constants).
    #[arg(long)]
    pub engine_config: Option<PathBuf>,
    /// Worker threads (default: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Files or directories of trace files.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

fn fail(e: impl std::fmt::Display) -> CtlError {
    CtlError::Profile(e.to_string())
}

/// Runs the replay and prints the report.
pub fn replay(a: ReplayArgs, g: &Global) -> Result<(), CtlError> {
    if a.format != "bitbrains" {
        return Err(CtlError::Arg(format!(
            "unknown trace format {:?} (known: bitbrains)",
            a.format
        )));
    }
    let steps = match a.steps.as_str() {
        "vm" => Steps::VM,
        "quota" => Steps::QUOTA,
        o => return Err(CtlError::Arg(format!("unknown steps {o:?} (vm, quota)"))),
    };
    let engine = match &a.engine_config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| fail(format!("cannot read {}: {e}", p.display())))?;
            let c: EngineConfig = toml::from_str(&text)
                .map_err(|e| fail(format!("invalid engine config {}: {e}", p.display())))?;
            c.validate().map_err(fail)?;
            c
        }
        None => EngineConfig::default(),
    };
    let mut policies = if a.policy.is_empty() {
        PolicyName::ALL.to_vec()
    } else {
        a.policy
    };
    policies.sort();
    policies.dedup();
    let o = Options {
        policies,
        engine,
        steps,
        per_vm: a.per_vm,
        threads: a.threads,
        progress: true,
    };
    let report = replay::run(&a.paths, &o).map_err(fail)?;
    if report.malformed_rows > 0 {
        eprintln!(
            "personactl: skipped {} malformed row(s) of {}; first: {}",
            report.malformed_rows,
            report.rows,
            report.malformed_examples.join("; ")
        );
    }
    let doc = serde_json::to_value(&report)?;
    crate::cli::emit(g, &doc, human);
    Ok(())
}

fn human(v: &Value) -> String {
    let mut s = format!(
        "{} VMs ({} files), {} samples, {} malformed and {} unprovisioned rows skipped, {:.1} s on {} threads\n\n",
        v["vms"],
        v["files"],
        v["samples"],
        v["malformed_rows"],
        v["unprovisioned_rows"],
        v["seconds"].as_f64().unwrap_or(0.0),
        v["threads"]
    );
    s += &format!(
        "{:<8} {:>9} {:>9} {:>9} {:>9} {:>13} {:>13} {:>11}\n",
        "POLICY",
        "CPU SLACK",
        "CPU UNDER",
        "MEM SLACK",
        "MEM UNDER",
        "CORE-HOURS",
        "GIB-HOURS",
        "CHG/VM-DAY"
    );
    for (name, f) in v["policies"].as_object().into_iter().flatten() {
        let pct = |x: &Value| format!("{:.1}%", x.as_f64().unwrap_or(0.0) * 100.0);
        s += &format!(
            "{:<8} {:>9} {:>9} {:>9} {:>9} {:>13.0} {:>13.0} {:>11.3}\n",
            name,
            pct(&f["cpu"]["slack"]),
            pct(&f["cpu"]["underprovisioned"]),
            pct(&f["memory"]["slack"]),
            pct(&f["memory"]["underprovisioned"]),
            f["cpu"]["footprint"].as_f64().unwrap_or(0.0),
            f["memory"]["footprint"].as_f64().unwrap_or(0.0),
            f["total"]["changes_per_vm_day"].as_f64().unwrap_or(0.0),
        );
    }
    s
}
