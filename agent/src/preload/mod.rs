//! The agent's half of the pre-load orchestrator: it checks a signed plan against the
//! local policy and the grammars of every name in it, then carries the steps out in
//! order (packages, pip, container images, files), reporting progress.
//!
//! The whole plan is checked before the first step runs, so a plan with one refused
//! step does nothing at all and says which step and why. Once running, a step that
//! fails does not stop the others: every step gets a result (done, present, failed, or
//! not run after a cancel), reported one line each (`persona_shared::preload::
//! StepResult`) so the coordinator can retry only what did not succeed, and handed to
//! the caller as it is known so a restarted agent resumes after the steps already done.
//! Steps are idempotent: what is
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
use persona_shared::preload::{MAX_STEPS, StepResult, StepStatus, validate};
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
    /// One or more steps failed (the first is named); the others ran.
    #[error("step {index} ({step}) failed: {reason}")]
    Failed {
        index: usize,
        step: String,
        reason: String,
        report: Box<PlanReport>,
    },
    #[error("the plan has {0} steps, more than the {MAX_STEPS} accepted")]
    TooLong(usize),
    #[error("cancelled at step {index} ({step})")]
    Cancelled {
        index: usize,
        step: String,
        report: Box<PlanReport>,
    },
}

impl PreloadError {
    /// The per-step results, when the plan ran.
    pub fn report(&self) -> Option<&PlanReport> {
        match self {
            PreloadError::Failed { report, .. } | PreloadError::Cancelled { report, .. } => {
                Some(report)
            }
            _ => None,
        }
    }
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
        venv: PathBuf,
        user: Option<String>,
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
    /// Done before the agent restarted; not run again.
    DoneEarlier,
    Failed {
        reason: String,
    },
    /// Not reached (cancelled first).
    NotRun,
}

impl Outcome {
    fn status(&self) -> StepStatus {
        match self {
            Outcome::Installed | Outcome::Downloaded { .. } | Outcome::DoneEarlier => {
                StepStatus::Done
            }
            Outcome::Skipped => StepStatus::Present,
            Outcome::Failed { .. } => StepStatus::Failed,
            Outcome::NotRun => StepStatus::NotRun,
        }
    }

    fn detail(&self, desc: &str) -> String {
        match self {
            Outcome::Failed { reason } => format!("{desc}: {reason}"),
            Outcome::Downloaded { bytes, resumed } => format!(
                "{desc} ({bytes} bytes{})",
                if *resumed { ", resumed" } else { "" }
            ),
            Outcome::DoneEarlier => format!("{desc} (before a restart)"),
            _ => desc.to_owned(),
        }
    }
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
        let failed = self
            .steps
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Failed { .. }))
            .count();
        let not_run = self
            .steps
            .iter()
            .filter(|(_, o)| *o == Outcome::NotRun)
            .count();
        let earlier = self
            .steps
            .iter()
            .filter(|(_, o)| *o == Outcome::DoneEarlier)
            .count();
        let mut s = format!(
            "{} steps: {installed} installed, {skipped} skipped (present), {downloaded} downloaded ({bytes} bytes)",
            self.steps.len()
        );
        for (n, what) in [
            (earlier, "done before a restart"),
            (failed, "failed"),
            (not_run, "not run"),
        ] {
            if n > 0 {
                s.push_str(&format!(", {n} {what}"));
            }
        }
        s
    }

    /// One [`StepResult`] per step, in order.
    pub fn results(&self) -> Vec<StepResult> {
        self.steps
            .iter()
            .enumerate()
            .map(|(index, (desc, o))| StepResult {
                index,
                status: o.status(),
                detail: o.detail(desc),
            })
            .collect()
    }

    /// The summary, then one line per step (the final message of a plan).
    pub fn message(&self) -> String {
        let mut m = self.summary();
        for r in self.results() {
            m.push('\n');
            m.push_str(&r.line());
        }
        m
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
                    PackageManager::Apt => validate::apt_package(name),
                    PackageManager::Dnf => validate::rpm_package(name),
                }
                .map_err(|e| refuse(e.to_string()))?;
                policy
                    .packages
                    .allowed(manager.name(), name)
                    .map_err(refuse)?;
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
                policy.packages.allowed("pip", name).map_err(refuse)?;
                let pip = packages::venv_pip(venv).map_err(|e| refuse(e.to_string()))?;
                Checked::Pip {
                    pip,
                    venv: venv.clone(),
                    user: policy.packages.pip_user.clone(),
                    name: name.clone(),
                    version: version.clone(),
                }
            }
            PreloadStep::Image { reference } => {
                let q = validate::image_reference(reference).map_err(|e| refuse(e.to_string()))?;
                if policy.images.require_digest && !validate::image_has_digest(&q) {
                    return Err(refuse(format!(
                        "{q} is not pinned by digest (@sha256:...), and images.require_digest is on"
                    )));
                }
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
                let parsed = validate::http_url(url).map_err(|e| refuse(e.to_string()))?;
                if policy.files.require_https && !parsed.https {
                    return Err(refuse(format!(
                        "{url} is plain http, and files.require_https is on"
                    )));
                }
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
    run_resumable(plan, policy, installer, &[], progress, &mut |_| {}, cancel)
}

/// Runs a plan, possibly again after an agent restart: the steps `earlier` says were
/// done or present are not run again (reported as [`Outcome::DoneEarlier`]); every
/// other step runs, whether or not an earlier one failed. `on_result` is called with each
/// step's result as soon as it is known, so the caller can persist where the plan is. A
/// cancel stops between steps (and inside downloads and installs), removes the partial
/// file of a download it stopped, and leaves the remaining steps [`Outcome::NotRun`].
pub fn run_resumable(
    plan: &PreloadPlan,
    policy: &Policy,
    installer: &packages::Installer,
    earlier: &[StepResult],
    progress: &mut dyn FnMut(Progress),
    on_result: &mut dyn FnMut(&StepResult),
    cancel: &AtomicBool,
) -> Result<PlanReport, PreloadError> {
    let steps = check(plan, policy)?;
    let n = steps.len().max(1) as f32;
    let http = steps
        .iter()
        .any(|(_, s)| matches!(s, Checked::File(_)))
        .then(download::client);
    let mut report = PlanReport::default();
    let mut first_failure: Option<(usize, String, String)> = None;
    let mut cancelled_at: Option<(usize, String)> = None;
    for (index, (desc, step)) in steps.into_iter().enumerate() {
        let done_before = earlier.iter().any(|r| {
            r.index == index && matches!(r.status, StepStatus::Done | StepStatus::Present)
        });
        let outcome = if cancelled_at.is_some() {
            Outcome::NotRun
        } else if done_before {
            Outcome::DoneEarlier
        } else if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            cancelled_at = Some((index, desc.clone()));
            Outcome::NotRun
        } else {
            progress(Progress {
                index,
                step: desc.clone(),
                bytes: None,
                percent: 100.0 * index as f32 / n,
            });
            match run_step(
                &step,
                index,
                &desc,
                n,
                policy,
                installer,
                http.as_ref(),
                progress,
                cancel,
            ) {
                Ok(o) => o,
                Err(StepError::Cancelled) => {
                    cancelled_at = Some((index, desc.clone()));
                    Outcome::NotRun
                }
                Err(StepError::Failed(reason)) => {
                    if first_failure.is_none() {
                        first_failure = Some((index, desc.clone(), reason.clone()));
                    }
                    Outcome::Failed { reason }
                }
            }
        };
        tracing::info!(step = %desc, ?outcome, "preload step");
        let result = StepResult {
            index,
            status: outcome.status(),
            detail: outcome.detail(&desc),
        };
        if outcome != Outcome::NotRun {
            on_result(&result);
        }
        report.steps.push((desc, outcome));
    }
    if let Some((index, step)) = cancelled_at {
        return Err(PreloadError::Cancelled {
            index,
            step,
            report: Box::new(report),
        });
    }
    if let Some((index, step, reason)) = first_failure {
        return Err(PreloadError::Failed {
            index,
            step,
            reason,
            report: Box::new(report),
        });
    }
    Ok(report)
}

enum StepError {
    Cancelled,
    Failed(String),
}

/// Runs one checked step.
#[allow(clippy::too_many_arguments)]
fn run_step(
    step: &Checked,
    index: usize,
    desc: &str,
    n: f32,
    policy: &Policy,
    installer: &packages::Installer,
    http: Option<&ureq::Agent>,
    progress: &mut dyn FnMut(Progress),
    cancel: &AtomicBool,
) -> Result<Outcome, StepError> {
    let exec = |e: packages::ExecError| match e {
        packages::ExecError::Cancelled => StepError::Cancelled,
        other => StepError::Failed(other.to_string()),
    };
    Ok(match step {
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
        Checked::Pip {
            pip,
            venv,
            user,
            name,
            version,
        } => {
            if version.is_none() && packages::pip_present(pip, name, cancel) {
                Outcome::Skipped
            } else {
                let target = packages::PipTarget {
                    venv,
                    user: user.as_deref(),
                };
                installer
                    .install(
                        packages::Manager::Pip,
                        Some(target),
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
            let Some(http) = http else {
                return Err(StepError::Failed("no HTTP client".into()));
            };
            // Directories are made only now, and the path is checked again.
            let dest = validate::prepare_destination(&job.dest, &policy.files.destinations)
                .map_err(|e| StepError::Failed(e.to_string()))?;
            let job = &download::FileJob {
                dest,
                ..job.clone()
            };
            let size = job.size.max(1) as f32;
            let mut on_bytes = |b: u64| {
                progress(Progress {
                    index,
                    step: desc.to_owned(),
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
                    // A cancel means "stop": nothing of this download is kept.
                    download::discard_partial(&job.dest);
                    return Err(StepError::Cancelled);
                }
                Err(e) => return Err(StepError::Failed(e.to_string())),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn policy(extra: &str, dest: &std::path::Path) -> Policy {
        Policy::parse(
            &format!(
                "[files]\nurl_prefixes = [\"http://127.0.0.1/d/\"]\ndestinations = [{:?}]\nmax_bytes = 1000\n{extra}",
                dest.display().to_string()
            ),
            std::path::Path::new("t.toml"),
        )
        .unwrap()
    }

    fn file(url: &str, body: &[u8], dest: &std::path::Path) -> PreloadStep {
        let sha: String = ring::digest::digest(&ring::digest::SHA256, body)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        PreloadStep::File {
            url: url.into(),
            sha256: sha,
            size: body.len() as u64,
            dest: dest.display().to_string(),
        }
    }

    /// Issue 18 items 3, 6 and 16 through a (signed) plan: refused before anything runs.
    #[test]
    fn hostile_plans_are_refused_before_anything_runs() {
        let dir = tempfile::tempdir().unwrap();
        let mut pol = policy("", dir.path());
        pol.packages.apt = true;
        pol.images.require_digest = true;
        pol.images.registries = vec!["docker.io/library/".into()];
        let dest = dir.path().join("x");
        let cases = [
            (
                PreloadStep::Package {
                    manager: PackageManager::Apt,
                    name: "python3.+-".into(),
                    version: None,
                },
                "apt package name",
            ),
            (
                PreloadStep::Package {
                    manager: PackageManager::Apt,
                    name: "curl-".into(),
                    version: None,
                },
                "apt package name",
            ),
            (
                file("http://127.0.0.1/d/../private/secret.bin", b"x", &dest),
                "dot segment",
            ),
            (
                file("http://127.0.0.1/d/%2e%2e/private/secret.bin", b"x", &dest),
                "dot segment",
            ),
            (
                PreloadStep::Image {
                    reference: "redis:7".into(),
                },
                "require_digest",
            ),
        ];
        for (step, why) in cases {
            let plan = PreloadPlan {
                persona: None,
                steps: vec![step],
            };
            let e = check_plan(&plan, &pol).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
        let mut https = policy("", dir.path());
        https.files.require_https = true;
        let plan = PreloadPlan {
            persona: None,
            steps: vec![file("http://127.0.0.1/d/a", b"x", &dest)],
        };
        let e = check_plan(&plan, &https).unwrap_err().to_string();
        assert!(e.contains("require_https"), "{e}");
    }

    /// A server on loopback: `/d/missing` answers 404, `/d/stall` sends half its
    /// announced body and then holds the connection until the test ends.
    fn server() -> (std::net::SocketAddr, std::sync::mpsc::Sender<()>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let mut req = [0u8; 2048];
                let n = s.read(&mut req).unwrap_or(0);
                let head = String::from_utf8_lossy(&req[..n]).into_owned();
                if head.contains("/d/stall") {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n");
                    let _ = s.write_all(&[7u8; 50]);
                    held.push(s);
                    if rx.try_recv().is_ok() {
                        return;
                    }
                } else {
                    let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                }
            }
        });
        (addr, tx)
    }

    /// Issue 18, pre-load: a failed step does not stop the others, every step has a
    /// result line, and steps done before a restart are not run again.
    #[test]
    fn every_step_gets_a_result_and_done_steps_are_not_rerun() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, _stop) = server();
        let mut pol = policy("", dir.path());
        pol.files.url_prefixes = vec![format!("http://{addr}/d/")];
        let present = dir.path().join("present.bin");
        std::fs::write(&present, b"here").unwrap();
        let plan = PreloadPlan {
            persona: None,
            steps: vec![
                file(
                    &format!("http://{addr}/d/missing"),
                    b"zz",
                    &dir.path().join("m"),
                ),
                file(&format!("http://{addr}/d/present"), b"here", &present),
            ],
        };
        let never = AtomicBool::new(false);
        let mut seen = Vec::new();
        let e = run_resumable(
            &plan,
            &pol,
            &packages::Installer::Direct,
            &[],
            &mut |_| {},
            &mut |r| seen.push(r.clone()),
            &never,
        )
        .unwrap_err();
        let report = e.report().unwrap();
        let results = report.results();
        assert_eq!(results[0].status, StepStatus::Failed, "{results:?}");
        assert!(results[0].detail.contains("404"), "{results:?}");
        assert_eq!(results[1].status, StepStatus::Present, "{results:?}");
        assert_eq!(seen.len(), 2);
        let msg = report.message();
        assert!(msg.contains("1 failed"), "{msg}");
        assert_eq!(StepResult::parse_all(&msg), results);
        // Resumed with step 0 recorded as done: it is not asked for again.
        let earlier = [StepResult {
            index: 0,
            status: StepStatus::Done,
            detail: String::new(),
        }];
        let r = run_resumable(
            &plan,
            &pol,
            &packages::Installer::Direct,
            &earlier,
            &mut |_| {},
            &mut |_| {},
            &never,
        )
        .unwrap();
        assert_eq!(r.steps[0].1, Outcome::DoneEarlier);
        assert_eq!(r.steps[1].1, Outcome::Skipped);
    }

    /// Issue 18, pre-load: a cancel removes the partial file and leaves the rest not run.
    #[test]
    fn a_cancel_removes_the_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, stop) = server();
        let mut pol = policy("", dir.path());
        pol.files.url_prefixes = vec![format!("http://{addr}/d/")];
        let dest = dir.path().join("big.bin");
        let plan = PreloadPlan {
            persona: None,
            steps: vec![
                file(&format!("http://{addr}/d/stall"), &[7u8; 100], &dest),
                file(
                    &format!("http://{addr}/d/missing"),
                    b"z",
                    &dir.path().join("n"),
                ),
            ],
        };
        let cancel = AtomicBool::new(false);
        // Cancelled as soon as the first bytes are on disk.
        let mut on_progress = |p: Progress| {
            if p.bytes.is_some_and(|b| b > 0) {
                cancel.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        };
        let e = run_resumable(
            &plan,
            &pol,
            &packages::Installer::Direct,
            &[],
            &mut on_progress,
            &mut |_| {},
            &cancel,
        )
        .unwrap_err();
        let _ = stop.send(());
        assert!(matches!(e, PreloadError::Cancelled { index: 0, .. }), "{e}");
        assert!(!download::partial_path(&dest).exists(), "partial file left");
        assert!(!dest.exists());
        let results = e.report().unwrap().results();
        assert!(
            results.iter().all(|r| r.status == StepStatus::NotRun),
            "{results:?}"
        );
    }
}
