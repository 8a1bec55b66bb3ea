//! The agent's half of the pre-load orchestrator: it checks a signed plan against the
//! local policy and the grammars of every name in it, then carries the steps out in
//! order (packages, pip, container images, files), reporting progress.
//!
//! The whole plan is checked before the first step runs, so a plan with one refused
//! step does nothing at all and says which step and why. Steps are idempotent: what is
//! already present (an installed package, a pulled image, a file with the right
//! checksum) is reported as skipped, so resending a plan costs a few queries. The
//! coordinator therefore does not need an inventory of the VM to plan, and a plan that
//! races a manual install still converges. What it is not: signature checks or
//! de-duplication of commands (`commands`), or deciding what a persona needs (the
//! coordinator's `preload`).

pub mod download;
pub mod images;
pub mod packages;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use persona_shared::command::{PackageManager, PreloadPlan, PreloadStep};
use persona_shared::preload::{MAX_STEPS, validate};
use serde::Serialize;

use crate::policy::Policy;

/// Why a plan was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum PreloadError {
    #[error("step {index} ({step}) refused: {reason}")]
    Refused {
        index: usize,
        step: String,
        reason: String,
    },
    #[error("step {index} ({step}) failed: {reason}")]
    Failed {
        index: usize,
        step: String,
        reason: String,
    },
    #[error("the plan has {0} steps, more than the {MAX_STEPS} accepted")]
    TooLong(usize),
    #[error("cancelled at step {index} ({step})")]
    Cancelled { index: usize, step: String },
}

/// A step after its checks, with the values it will use.
#[derive(Debug, Clone)]
enum Checked {
    Package {
        manager: PackageManager,
        name: String,
        version: Option<String>,
    },
    Pip {
        pip: PathBuf,
        name: String,
        version: Option<String>,
    },
    Image {
        engine: PathBuf,
        reference: String,
    },
    File(download::FileJob),
}

/// What happened to one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Installed,
    /// Already there; nothing done.
    Skipped,
    Downloaded {
        bytes: u64,
        resumed: bool,
    },
}

/// Progress while a plan runs.
#[derive(Debug, Clone)]
pub struct Progress {
    pub index: usize,
    pub step: String,
    /// Bytes of the current download so far.
    pub bytes: Option<u64>,
    /// Of the whole plan.
    pub percent: f32,
}

/// The result of a plan that finished.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PlanReport {
    pub steps: Vec<(String, Outcome)>,
}

impl PlanReport {
    /// One line for people: "3 steps: 1 installed, 1 skipped (present), 1 downloaded (10 bytes)".
    pub fn summary(&self) -> String {
        let installed = self
            .steps
            .iter()
            .filter(|(_, o)| *o == Outcome::Installed)
            .count();
        let skipped = self
            .steps
            .iter()
            .filter(|(_, o)| *o == Outcome::Skipped)
            .count();
        let (downloaded, bytes) = self.steps.iter().fold((0, 0u64), |(n, b), (_, o)| match o {
            Outcome::Downloaded { bytes, .. } => (n + 1, b + bytes),
            _ => (n, b),
        });
        format!(
            "{} steps: {installed} installed, {skipped} skipped (present), {downloaded} downloaded ({bytes} bytes)",
            self.steps.len()
        )
    }
}

/// Checks every step against the grammars and the policy; nothing runs.
fn check(plan: &PreloadPlan, policy: &Policy) -> Result<Vec<(String, Checked)>, PreloadError> {
    if plan.steps.len() > MAX_STEPS {
        return Err(PreloadError::TooLong(plan.steps.len()));
    }
    let mut out = Vec::with_capacity(plan.steps.len());
    for (index, step) in plan.steps.iter().enumerate() {
        let desc: String = step.describe().chars().take(300).collect();
        let refuse = |reason: String| PreloadError::Refused {
            index,
            step: desc.clone(),
            reason,
        };
        let checked = match step {
            PreloadStep::Package {
                manager,
                name,
                version,
            } => {
                match manager {
                    PackageManager::Apt if !policy.packages.apt => {
                        return Err(refuse("apt is off in the policy (packages.apt)".into()));
                    }
                    PackageManager::Dnf if !policy.packages.dnf => {
                        return Err(refuse("dnf is off in the policy (packages.dnf)".into()));
                    }
                    PackageManager::Apt => validate::debian_package(name),
                    PackageManager::Dnf => validate::rpm_package(name),
                }
                .map_err(|e| refuse(e.to_string()))?;
                if let Some(v) = version {
                    validate::package_version(v).map_err(|e| refuse(e.to_string()))?;
                }
                Checked::Package {
                    manager: *manager,
                    name: name.clone(),
                    version: version.clone(),
                }
            }
            PreloadStep::Pip { name, version } => {
                let Some(venv) = &policy.packages.pip_venv else {
                    return Err(refuse(
                        "pip is off in the policy (packages.pip_venv is unset)".into(),
                    ));
                };
                validate::python_name(name).map_err(|e| refuse(e.to_string()))?;
                if let Some(v) = version {
                    validate::python_version(v).map_err(|e| refuse(e.to_string()))?;
                }
                let pip = packages::venv_pip(venv).map_err(|e| refuse(e.to_string()))?;
                Checked::Pip {
                    pip,
                    name: name.clone(),
                    version: version.clone(),
                }
            }
            PreloadStep::Image { reference } => {
                let q = validate::image_reference(reference).map_err(|e| refuse(e.to_string()))?;
                if !policy.image_allowed(&q) {
                    return Err(refuse(format!(
                        "{q} is not under a registry the policy allows (images.registries)"
                    )));
                }
                let Some((_, engine)) = images::engine(&policy.images.engines) else {
                    return Err(refuse(if policy.images.engines.is_empty() {
                        "no container engine is allowed in the policy (images.engines)".into()
                    } else {
                        format!(
                            "none of the allowed engines ({}) is installed",
                            policy.images.engines.join(", ")
                        )
                    }));
                };
                Checked::Image {
                    engine,
                    reference: q,
                }
            }
            PreloadStep::File {
                url,
                sha256,
                size,
                dest,
            } => {
                validate::url(url).map_err(|e| refuse(e.to_string()))?;
                if !policy.url_allowed(url) {
                    return Err(refuse(format!(
                        "{url} is not under a URL prefix the policy allows (files.url_prefixes)"
                    )));
                }
                if *size > policy.files.max_bytes {
                    return Err(refuse(format!(
                        "{size} bytes is more than the policy's files.max_bytes ({})",
                        policy.files.max_bytes
                    )));
                }
                let sha = validate::sha256_hex(sha256).map_err(|e| refuse(e.to_string()))?;
                let dest = validate::destination(dest, &policy.files.destinations)
                    .map_err(|e| refuse(e.to_string()))?;
                Checked::File(download::FileJob {
                    url: url.clone(),
                    sha256: sha,
                    size: *size,
                    dest,
                })
            }
        };
        out.push((desc, checked));
    }
    Ok(out)
}

/// Checks a plan without running it (the same checks `run` makes first).
pub fn check_plan(plan: &PreloadPlan, policy: &Policy) -> Result<(), PreloadError> {
    check(plan, policy).map(|_| ())
}

/// Checks, then runs the plan step by step, installing packages in this process.
/// Blocking: call from a blocking thread.
pub fn run(
    plan: &PreloadPlan,
    policy: &Policy,
    progress: &mut dyn FnMut(Progress),
    cancel: &AtomicBool,
) -> Result<PlanReport, PreloadError> {
    run_with(plan, policy, &packages::Installer::Direct, progress, cancel)
}

/// Like [`run`], with package installs done by `installer` (the root helper when the
/// agent is unprivileged; see `packages::Installer::choose`).
pub fn run_with(
    plan: &PreloadPlan,
    policy: &Policy,
    installer: &packages::Installer,
    progress: &mut dyn FnMut(Progress),
    cancel: &AtomicBool,
) -> Result<PlanReport, PreloadError> {
    let steps = check(plan, policy)?;
    let n = steps.len().max(1) as f32;
    let http = steps
        .iter()
        .any(|(_, s)| matches!(s, Checked::File(_)))
        .then(download::client);
    let mut report = PlanReport::default();
    for (index, (desc, step)) in steps.into_iter().enumerate() {
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(PreloadError::Cancelled { index, step: desc });
        }
        progress(Progress {
            index,
            step: desc.clone(),
            bytes: None,
            percent: 100.0 * index as f32 / n,
        });
        let failed = |reason: String| PreloadError::Failed {
            index,
            step: desc.clone(),
            reason,
        };
        let exec = |e: packages::ExecError| match e {
            packages::ExecError::Cancelled => PreloadError::Cancelled {
                index,
                step: desc.clone(),
            },
            other => failed(other.to_string()),
        };
        let outcome = match &step {
            Checked::Package {
                manager: PackageManager::Apt,
                name,
                version,
            } => {
                if version.is_none() && packages::apt_present(name, cancel) {
                    Outcome::Skipped
                } else {
                    installer
                        .install(
                            packages::Manager::Apt,
                            None,
                            name,
                            version.as_deref(),
                            cancel,
                        )
                        .map_err(exec)?;
                    Outcome::Installed
                }
            }
            Checked::Package {
                manager: PackageManager::Dnf,
                name,
                version,
            } => {
                if version.is_none() && packages::dnf_present(name, cancel) {
                    Outcome::Skipped
                } else {
                    installer
                        .install(
                            packages::Manager::Dnf,
                            None,
                            name,
                            version.as_deref(),
                            cancel,
                        )
                        .map_err(exec)?;
                    Outcome::Installed
                }
            }
            Checked::Pip { pip, name, version } => {
                if version.is_none() && packages::pip_present(pip, name, cancel) {
                    Outcome::Skipped
                } else {
                    installer
                        .install(
                            packages::Manager::Pip,
                            Some(pip),
                            name,
                            version.as_deref(),
                            cancel,
                        )
                        .map_err(exec)?;
                    Outcome::Installed
                }
            }
            Checked::Image { engine, reference } => {
                if images::present(engine, reference, cancel) {
                    Outcome::Skipped
                } else {
                    images::pull(engine, reference, cancel).map_err(exec)?;
                    Outcome::Installed
                }
            }
            Checked::File(job) => {
                let Some(http) = &http else {
                    return Err(failed("no HTTP client".into()));
                };
                // Directories are made only now, and the path is checked again.
                let dest = validate::prepare_destination(&job.dest, &policy.files.destinations)
                    .map_err(|e| failed(e.to_string()))?;
                let job = &download::FileJob {
                    dest,
                    ..job.clone()
                };
                let size = job.size.max(1) as f32;
                let mut on_bytes = |b: u64| {
                    progress(Progress {
                        index,
                        step: desc.clone(),
                        bytes: Some(b),
                        percent: 100.0 * (index as f32 + b as f32 / size) / n,
                    })
                };
                match download::fetch(http, job, &mut on_bytes, cancel) {
                    Ok(download::Fetched::AlreadyPresent) => Outcome::Skipped,
                    Ok(download::Fetched::Downloaded { bytes, resumed }) => {
                        Outcome::Downloaded { bytes, resumed }
                    }
                    Err(download::DownloadError::Cancelled) => {
                        return Err(PreloadError::Cancelled { index, step: desc });
                    }
                    Err(e) => return Err(failed(e.to_string())),
                }
            }
        };
        tracing::info!(step = %desc, ?outcome, "preload step done");
        report.steps.push((desc, outcome));
    }
    Ok(report)
}
