//! Package installs: apt-get and dnf for system packages, pip into the policy's venv, and
//! the one program runner every pre-load step uses.
//!
//! Programs are found in fixed system directories (never through `PATH`, which a
//! caller could have changed) and run with `std::process::Command` and an explicit
//! argument list: never a shell. Positional names come after `--`, and were checked
//! against their grammar (`validate`) before they get here, so a name can be neither a
//! shell command nor an option. What is already installed is detected first and
//! reported as present, which makes a repeated plan cheap and idempotent.
//!
//! Installs need root. An agent that is not root (the packaged setup: user `persona`,
//! `ProtectSystem=strict`) asks the root helper `persona-actuator` over its socket
//! (`guest_actuator.helper_socket`) with an `install_packages` request; the helper checks
//! the names and its own copy of the policy again and runs the same argument lists
//! ([`install_argv`]) with its own deadline. An agent running as root uses the helper when
//! its socket exists and otherwise runs the manager itself ([`Installer`]). Presence
//! queries need no privilege and always run here.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The managers the helper drives; named in its requests, so defined by its protocol.
pub use crate::helper::protocol::Manager;
use crate::helper::protocol::{self, CallError, Request};

/// Where system programs are looked up, in order.
const SYSTEM_DIRS: [&str; 5] = ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"];
/// Longest a package install or image pull may run.
pub const INSTALL_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Longest a presence query may run.
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes of a failed program's stderr kept for the error message.
const STDERR_TAIL: usize = 2000;

/// Why a program could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{program} not found in {dirs}", dirs = SYSTEM_DIRS.join(", "))]
    NotFound { program: String },
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("{program} {args} failed ({status}): {stderr}")]
    Failed {
        program: PathBuf,
        args: String,
        status: String,
        stderr: String,
    },
    #[error("{program} did not finish within {secs} s and was killed")]
    Timeout { program: PathBuf, secs: u64 },
    #[error("cancelled")]
    Cancelled,
    #[error("the root helper at {socket} did not install: {detail}")]
    Helper { socket: PathBuf, detail: String },
}

/// Finds a system program by name in [`SYSTEM_DIRS`].
pub fn find_program(name: &str) -> Result<PathBuf, ExecError> {
    find_program_in(None, name)
}

/// Finds a program in `dir` when given (the helper's `--package-program-dir`, set by
/// whoever starts the helper as root), else in [`SYSTEM_DIRS`].
pub fn find_program_in(dir: Option<&Path>, name: &str) -> Result<PathBuf, ExecError> {
    if let Some(d) = dir {
        let p = d.join(name);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(ExecError::NotFound {
                program: p.display().to_string(),
            })
        };
    }
    SYSTEM_DIRS
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| ExecError::NotFound {
            program: name.to_owned(),
        })
}

/// Runs `program` with `args` (no shell), stdin closed, with a timeout and a cancel flag
/// checked every 100 ms. Returns stdout when the exit status is 0.
pub fn run(
    program: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
    cancel: &AtomicBool,
) -> Result<String, ExecError> {
    let f = run_capture(program, args, env, timeout, cancel)?;
    if f.success {
        Ok(f.stdout)
    } else {
        Err(ExecError::Failed {
            program: program.to_owned(),
            args: args.join(" "),
            status: f.status,
            stderr: tail(&f.stderr, STDERR_TAIL),
        })
    }
}

/// The last `max` bytes of `s` (trimmed, cut at a character boundary).
pub fn tail(s: &str, max: usize) -> String {
    let t = s.trim();
    let mut start = t.len().saturating_sub(max);
    while !t.is_char_boundary(start) {
        start += 1;
    }
    t.get(start..).unwrap_or(t).to_owned()
}

/// A program that ran to its end (successfully or not).
#[derive(Debug, Clone)]
pub struct Finished {
    pub success: bool,
    /// The exit code (None: killed by a signal).
    pub code: Option<i32>,
    /// The exit status, for people.
    pub status: String,
    pub stdout: String,
    pub stderr: String,
}

/// Like [`run`], but a non-zero exit is a result, not an error.
pub fn run_capture(
    program: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
    cancel: &AtomicBool,
) -> Result<Finished, ExecError> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(|source| ExecError::Spawn {
        program: program.to_owned(),
        source,
    })?;
    // Drain both pipes on their own threads so a chatty program never blocks on a full pipe.
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(source) => {
                return Err(ExecError::Spawn {
                    program: program.to_owned(),
                    source,
                });
            }
        }
        if cancel.load(Ordering::Relaxed) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ExecError::Cancelled);
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ExecError::Timeout {
                program: program.to_owned(),
                secs: timeout.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    Ok(Finished {
        success: status.success(),
        code: status.code(),
        status: status.to_string(),
        stdout,
        stderr,
    })
}

/// Whether a Debian package is installed (`dpkg-query`).
pub fn apt_present(name: &str, cancel: &AtomicBool) -> bool {
    let Ok(q) = find_program("dpkg-query") else {
        return false;
    };
    run(
        &q,
        &["-W", "-f=${db:Status-Status}", "--", name],
        &[],
        QUERY_TIMEOUT,
        cancel,
    )
    .is_ok_and(|s| s.trim() == "installed")
}

/// `apt-get install -y --no-install-recommends -- NAME[=VERSION]`, non-interactive.
pub fn apt_install(
    name: &str,
    version: Option<&str>,
    cancel: &AtomicBool,
) -> Result<(), ExecError> {
    let argv = install_argv(Manager::Apt, None, None, &[name.to_owned()], version)?;
    argv.run(INSTALL_TIMEOUT, cancel).map(|_| ())
}

/// Whether an RPM package is installed (`rpm -q`).
pub fn dnf_present(name: &str, cancel: &AtomicBool) -> bool {
    let Ok(rpm) = find_program("rpm") else {
        return false;
    };
    run(&rpm, &["-q", "--", name], &[], QUERY_TIMEOUT, cancel).is_ok()
}

/// `dnf install -y -- NAME[-VERSION]`.
pub fn dnf_install(
    name: &str,
    version: Option<&str>,
    cancel: &AtomicBool,
) -> Result<(), ExecError> {
    let argv = install_argv(Manager::Dnf, None, None, &[name.to_owned()], version)?;
    argv.run(INSTALL_TIMEOUT, cancel).map(|_| ())
}

/// The venv's pip; the venv must exist (the agent does not create environments).
pub fn venv_pip(venv: &Path) -> Result<PathBuf, ExecError> {
    let pip = venv.join("bin").join("pip");
    if pip.is_file() {
        Ok(pip)
    } else {
        Err(ExecError::NotFound {
            program: pip.display().to_string(),
        })
    }
}

/// Whether a Python distribution is installed in the venv (`pip show`).
pub fn pip_present(pip: &Path, name: &str, cancel: &AtomicBool) -> bool {
    run(
        pip,
        &["show", "-q", "--", name],
        &[("PIP_DISABLE_PIP_VERSION_CHECK", "1")],
        QUERY_TIMEOUT,
        cancel,
    )
    .is_ok()
}

/// `pip install --no-input -- NAME[==VERSION.*]` into the venv. A persona names a
/// release series ("2.5"), so the version is matched as a prefix.
pub fn pip_install(
    pip: &Path,
    name: &str,
    version: Option<&str>,
    cancel: &AtomicBool,
) -> Result<(), ExecError> {
    let venv = pip.parent().and_then(Path::parent).unwrap_or(pip);
    let argv = install_argv(Manager::Pip, None, Some(venv), &[name.to_owned()], version)?;
    argv.run(INSTALL_TIMEOUT, cancel).map(|_| ())
}

/// A fully resolved install: program, arguments and environment. Built only from names
/// that passed their grammar (callers check; the helper checks again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallArgv {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(&'static str, &'static str)>,
}

impl InstallArgv {
    /// Runs it; a non-zero exit is an [`ExecError::Failed`].
    pub fn run(&self, timeout: Duration, cancel: &AtomicBool) -> Result<String, ExecError> {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        run(&self.program, &args, &self.env, timeout, cancel)
    }

    /// Runs it and returns how it ended.
    pub fn run_capture(
        &self,
        timeout: Duration,
        cancel: &AtomicBool,
    ) -> Result<Finished, ExecError> {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        run_capture(&self.program, &args, &self.env, timeout, cancel)
    }
}

/// The argument list that installs `names` (one `version` applies to a single name) with
/// `manager`: `apt-get install -y --no-install-recommends -- ...` with
/// DEBIAN_FRONTEND=noninteractive, `dnf install -y -- ...`, or the venv's
/// `pip install --no-input -- ...`. `program_dir` replaces the system directories.
pub fn install_argv(
    manager: Manager,
    program_dir: Option<&Path>,
    pip_venv: Option<&Path>,
    names: &[String],
    version: Option<&str>,
) -> Result<InstallArgv, ExecError> {
    let specs: Vec<String> = names
        .iter()
        .map(|n| match (manager, version) {
            (Manager::Apt, Some(v)) => format!("{n}={v}"),
            (Manager::Dnf, Some(v)) => format!("{n}-{v}"),
            (Manager::Pip, Some(v)) => format!("{n}=={v}.*"),
            (_, None) => n.clone(),
        })
        .collect();
    let (program, mut args, env): (PathBuf, Vec<&str>, Vec<(&'static str, &'static str)>) =
        match manager {
            Manager::Apt => (
                find_program_in(program_dir, "apt-get")?,
                vec![
                    "install",
                    "-y",
                    "-q",
                    "--no-install-recommends",
                    "-o",
                    "Dpkg::Options::=--force-confold",
                    // unattended-upgrades (or an operator) may hold the lock for a while.
                    "-o",
                    "DPkg::Lock::Timeout=600",
                ],
                vec![("DEBIAN_FRONTEND", "noninteractive")],
            ),
            Manager::Dnf => (
                find_program_in(program_dir, "dnf")?,
                vec!["install", "-y", "-q"],
                vec![],
            ),
            Manager::Pip => {
                let Some(venv) = pip_venv else {
                    return Err(ExecError::NotFound {
                        program: "pip (no venv configured)".into(),
                    });
                };
                (
                    venv_pip(venv)?,
                    vec!["install", "--no-input", "-q"],
                    vec![
                        ("PIP_DISABLE_PIP_VERSION_CHECK", "1"),
                        ("PIP_NO_CACHE_DIR", "1"),
                    ],
                )
            }
        };
    args.push("--");
    let mut args: Vec<String> = args.into_iter().map(str::to_owned).collect();
    args.extend(specs);
    Ok(InstallArgv { program, args, env })
}

/// How the pre-load installs packages: through the root helper, or itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installer {
    /// Run the manager in this process (the agent is root, or a test).
    Direct,
    /// Ask `persona-actuator` at this socket.
    Helper(PathBuf),
}

impl Installer {
    /// The helper when the agent is not root (it is required then; a missing socket
    /// fails the step with a clear error), or when it is root and the helper's socket
    /// exists; otherwise direct.
    pub fn choose(helper_socket: Option<&Path>) -> Installer {
        match helper_socket {
            Some(s) if !is_root() || s.exists() => Installer::Helper(s.to_owned()),
            _ => Installer::Direct,
        }
    }

    /// Installs one package (`pip` is the policy's venv pip for [`Manager::Pip`]).
    pub fn install(
        &self,
        manager: Manager,
        pip: Option<&Path>,
        name: &str,
        version: Option<&str>,
        cancel: &AtomicBool,
    ) -> Result<(), ExecError> {
        match self {
            Installer::Direct => match manager {
                Manager::Apt => apt_install(name, version, cancel),
                Manager::Dnf => dnf_install(name, version, cancel),
                Manager::Pip => match pip {
                    Some(p) => pip_install(p, name, version, cancel),
                    None => Err(ExecError::NotFound {
                        program: "pip (no venv configured)".into(),
                    }),
                },
            },
            Installer::Helper(socket) => {
                let req = Request::InstallPackages {
                    manager,
                    packages: vec![name.to_owned()],
                    version: version.map(str::to_owned),
                };
                // The helper kills the install at its own deadline (at most this long).
                let deadline = INSTALL_TIMEOUT + Duration::from_secs(60);
                let reply =
                    protocol::call_until(socket, &req, deadline, cancel).map_err(|e| match e {
                        CallError::Cancelled => ExecError::Cancelled,
                        other => ExecError::Helper {
                            socket: socket.clone(),
                            detail: other.to_string(),
                        },
                    })?;
                if reply.ok {
                    Ok(())
                } else {
                    Err(ExecError::Helper {
                        socket: socket.clone(),
                        detail: format!(
                            "{}: {}{}",
                            reply.error.as_deref().unwrap_or("error"),
                            reply.detail,
                            reply
                                .output_tail
                                .as_deref()
                                .map(|t| format!("; output: {t}"))
                                .unwrap_or_default()
                        ),
                    })
                }
            }
        }
    }
}

/// Effective uid 0, from /proc/self/status (`Uid: real effective saved fs`).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_run_without_a_shell_and_fail_clearly() {
        let never = AtomicBool::new(false);
        let echo = find_program("echo").unwrap();
        // A shell would split this and run `id`; echo prints it verbatim.
        let out = run(&echo, &["foo; id"], &[], Duration::from_secs(10), &never).unwrap();
        assert_eq!(out.trim(), "foo; id");
        let f = find_program("false").unwrap();
        let e = run(&f, &[], &[], Duration::from_secs(10), &never).unwrap_err();
        assert!(matches!(e, ExecError::Failed { .. }), "{e}");
        assert!(matches!(
            find_program("no-such-program-here"),
            Err(ExecError::NotFound { .. })
        ));
        let sleep = find_program("sleep").unwrap();
        let e = run(&sleep, &["5"], &[], Duration::from_millis(300), &never).unwrap_err();
        assert!(matches!(e, ExecError::Timeout { .. }), "{e}");
        let cancelled = AtomicBool::new(true);
        let e = run(&sleep, &["5"], &[], Duration::from_secs(10), &cancelled).unwrap_err();
        assert!(matches!(e, ExecError::Cancelled), "{e}");
    }

    #[test]
    fn an_absent_debian_package_is_not_present() {
        let never = AtomicBool::new(false);
        if find_program("dpkg-query").is_err() {
            eprintln!("skipped: no dpkg-query on this machine");
            return;
        }
        assert!(!apt_present("persona-no-such-package", &never));
        assert!(apt_present("dpkg", &never));
    }
}
