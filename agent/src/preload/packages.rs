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
    #[error("apt package {name:?} is refused: {reason}")]
    NotExact { name: String, reason: String },
    #[error(
        "apt package {name}: no available version matches {version:?} (available: {available})"
    )]
    NoVersion {
        name: String,
        version: String,
        available: String,
    },
    #[error("pip is refused: {path} is {reason}")]
    UnsafeVenv { path: PathBuf, reason: String },
    #[error("pip is refused: {0}")]
    PipUser(String),
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
    run_capture_as(program, args, env, None, timeout, cancel)
}

/// [`run_capture`], the child switching to `run_as` (uid, gid) first: std's
/// `CommandExt::uid`/`gid` call setgid, setgroups(0) and setuid in the child between
/// fork and exec, so nothing of the program ever runs with the parent's privilege.
fn run_capture_as(
    program: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    run_as: Option<(u32, u32)>,
    timeout: Duration,
    cancel: &AtomicBool,
) -> Result<Finished, ExecError> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(program);
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid).current_dir("/");
    }
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

/// Whether an RPM package is installed (`rpm -q`).
pub fn dnf_present(name: &str, cancel: &AtomicBool) -> bool {
    let Ok(rpm) = find_program("rpm") else {
        return false;
    };
    run(&rpm, &["-q", "--", name], &[], QUERY_TIMEOUT, cancel).is_ok()
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

/// The record fields of `apt-cache show` output: (Package, Version) per stanza.
fn apt_records(out: &str) -> Vec<(String, String)> {
    let mut recs = Vec::new();
    for stanza in out.split("\n\n") {
        let field = |k: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_owned())
        };
        if let Some(p) = field("Package:") {
            recs.push((p, field("Version:").unwrap_or_default()));
        }
    }
    recs
}

/// Whether a Debian `version` belongs to the release series `series` ("550" holds
/// "550.54.14-1" and "550", not "5501"): equal, or followed by `.`, `-`, `+`, `~`, with
/// any epoch ignored unless the series has one.
fn in_series(version: &str, series: &str) -> bool {
    let v = if series.contains(':') {
        version
    } else {
        version.split_once(':').map_or(version, |(_, v)| v)
    };
    v == series
        || v.strip_prefix(series)
            .is_some_and(|rest| rest.starts_with(['.', '-', '+', '~']))
}

/// The exact `NAME=VERSION` (or `NAME`) to give apt-get, after checking that `name` is
/// a package apt knows under exactly that name: `apt-cache show -- NAME` must print at
/// least one record and only records of `Package: NAME` (a name apt does not know would
/// otherwise be read as a regular expression or a glob and match others). A version
/// that is a release series ("550") is resolved to the newest available version in it
/// (apt-cache lists versions newest first); an exact version must be available as is.
pub fn apt_spec(
    program_dir: Option<&Path>,
    name: &str,
    version: Option<&str>,
    cancel: &AtomicBool,
) -> Result<String, ExecError> {
    persona_shared::preload::validate::apt_package(name).map_err(|e| ExecError::NotExact {
        name: name.to_owned(),
        reason: e.to_string(),
    })?;
    let cache = find_program_in(program_dir, "apt-cache")?;
    let f = run_capture(&cache, &["show", "--", name], &[], QUERY_TIMEOUT, cancel)?;
    let recs = apt_records(&f.stdout);
    let not_exact = |reason: String| ExecError::NotExact {
        name: name.to_owned(),
        reason,
    };
    if recs.is_empty() {
        return Err(not_exact(format!(
            "apt-cache show finds no package of exactly this name (a virtual or unknown package): {}",
            tail(&f.stderr, 300)
        )));
    }
    if let Some((other, _)) = recs.iter().find(|(p, _)| p != name) {
        return Err(not_exact(format!(
            "apt would read it as a pattern (it also matches {other})"
        )));
    }
    let Some(want) = version else {
        return Ok(name.to_owned());
    };
    let versions: Vec<&str> = recs.iter().map(|(_, v)| v.as_str()).collect();
    let pick = versions
        .iter()
        .find(|v| **v == want)
        .or_else(|| versions.iter().find(|v| in_series(v, want)));
    match pick {
        Some(v) => Ok(format!("{name}={v}")),
        None => Err(ExecError::NoVersion {
            name: name.to_owned(),
            version: want.to_owned(),
            available: versions.join(", "),
        }),
    }
}

/// Checks that `path` is owned by root and not writable by group or others.
fn root_owned(path: &Path, what: &str) -> Result<(), ExecError> {
    use std::os::unix::fs::MetadataExt;
    let unsafe_venv = |reason: String| ExecError::UnsafeVenv {
        path: path.to_owned(),
        reason,
    };
    let m =
        std::fs::symlink_metadata(path).map_err(|e| unsafe_venv(format!("not readable ({e})")))?;
    if m.file_type().is_symlink() {
        return Err(unsafe_venv(format!(
            "a symlink; the {what} must be a real one"
        )));
    }
    let mode = m.mode() & 0o7777;
    if m.uid() != 0 {
        return Err(unsafe_venv(format!(
            "owned by uid {}, mode {mode:04o}; the {what} must be owned by root",
            m.uid()
        )));
    }
    if mode & 0o022 != 0 {
        return Err(unsafe_venv(format!(
            "mode {mode:04o}: writable by group or others; the {what} must not be"
        )));
    }
    Ok(())
}

/// The uid and gid of `user` (a name in /etc/passwd, or a numeric uid), never root.
fn lookup_user(passwd: &str, user: &str) -> Result<(u32, u32), ExecError> {
    let found = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        let (uid, gid) = (
            f.get(2)?.parse::<u32>().ok()?,
            f.get(3)?.parse::<u32>().ok()?,
        );
        (f.first() == Some(&user) || user.parse::<u32>().ok() == Some(uid)).then_some((uid, gid))
    });
    match found {
        Some((0, _)) => Err(ExecError::PipUser(format!(
            "packages.pip_user {user:?} is root"
        ))),
        Some(ids) => Ok(ids),
        None => Err(ExecError::PipUser(format!(
            "packages.pip_user {user:?} is not in /etc/passwd"
        ))),
    }
}

/// A fully resolved install: program, arguments, environment and, for pip run by
/// root, the unprivileged uid and gid the child switches to before it runs anything.
/// Built only from names that passed their grammar (callers check; the helper checks
/// again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallArgv {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(&'static str, &'static str)>,
    /// `(uid, gid)` to run as (set in the child with setgid, setgroups, setuid).
    pub run_as: Option<(u32, u32)>,
}

impl InstallArgv {
    /// Runs it; a non-zero exit is an [`ExecError::Failed`].
    pub fn run(&self, timeout: Duration, cancel: &AtomicBool) -> Result<String, ExecError> {
        let f = self.run_capture(timeout, cancel)?;
        if f.success {
            Ok(f.stdout)
        } else {
            Err(ExecError::Failed {
                program: self.program.clone(),
                args: self.args.join(" "),
                status: f.status,
                stderr: tail(&f.stderr, STDERR_TAIL),
            })
        }
    }

    /// Runs it and returns how it ended.
    pub fn run_capture(
        &self,
        timeout: Duration,
        cancel: &AtomicBool,
    ) -> Result<Finished, ExecError> {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        run_capture_as(
            &self.program,
            &args,
            &self.env,
            self.run_as,
            timeout,
            cancel,
        )
    }
}

/// Where pip installs and as whom: the policy's venv and `packages.pip_user`.
#[derive(Debug, Clone, Copy)]
pub struct PipTarget<'a> {
    pub venv: &'a Path,
    pub user: Option<&'a str>,
}

/// The argument list that installs `specs` (already `NAME=VERSION` for apt, see
/// [`apt_spec`]; one `version` applies to a single dnf or pip name) with `manager`:
/// `apt-get install -y --no-install-recommends -- ...` with
/// DEBIAN_FRONTEND=noninteractive, `dnf install -y -- ...`, or the venv's
/// `pip install --no-input --only-binary :all: -- ...`. pip never runs as root: when
/// this process is root, the venv directory and its bin/pip must be root-owned and not
/// group/other writable, and pip runs as `packages.pip_user`. `program_dir` replaces
/// the system directories.
pub fn install_argv(
    manager: Manager,
    program_dir: Option<&Path>,
    pip: Option<PipTarget<'_>>,
    specs: &[String],
    version: Option<&str>,
) -> Result<InstallArgv, ExecError> {
    let specs: Vec<String> = specs
        .iter()
        .map(|n| match (manager, version) {
            (Manager::Dnf, Some(v)) => format!("{n}-{v}"),
            (Manager::Pip, Some(v)) => format!("{n}=={v}.*"),
            _ => n.clone(),
        })
        .collect();
    let mut run_as = None;
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
                let Some(target) = pip else {
                    return Err(ExecError::NotFound {
                        program: "pip (no venv configured)".into(),
                    });
                };
                let pip = venv_pip(target.venv)?;
                if is_root() {
                    root_owned(target.venv, "venv directory")?;
                    root_owned(&pip, "venv's bin/pip")?;
                    let Some(user) = target.user else {
                        return Err(ExecError::PipUser(
                            "pip would run as root: set packages.pip_user to an unprivileged user"
                                .into(),
                        ));
                    };
                    let passwd = std::fs::read_to_string("/etc/passwd")
                        .map_err(|e| ExecError::PipUser(format!("cannot read /etc/passwd: {e}")))?;
                    run_as = Some(lookup_user(&passwd, user)?);
                }
                (
                    pip,
                    // Wheels only: a source distribution's build script never runs.
                    vec!["install", "--no-input", "-q", "--only-binary", ":all:"],
                    vec![
                        ("PIP_DISABLE_PIP_VERSION_CHECK", "1"),
                        ("PIP_NO_CACHE_DIR", "1"),
                        ("HOME", "/nonexistent"),
                    ],
                )
            }
        };
    args.push("--");
    let mut args: Vec<String> = args.into_iter().map(str::to_owned).collect();
    args.extend(specs);
    Ok(InstallArgv {
        program,
        args,
        env,
        run_as,
    })
}

/// The whole install of one request: apt names resolved and checked exactly
/// ([`apt_spec`]), then [`install_argv`].
pub fn prepare_install(
    manager: Manager,
    program_dir: Option<&Path>,
    pip: Option<PipTarget<'_>>,
    names: &[String],
    version: Option<&str>,
    cancel: &AtomicBool,
) -> Result<InstallArgv, ExecError> {
    if manager == Manager::Apt {
        let specs = names
            .iter()
            .map(|n| apt_spec(program_dir, n, version, cancel))
            .collect::<Result<Vec<_>, _>>()?;
        install_argv(manager, program_dir, None, &specs, None)
    } else {
        install_argv(manager, program_dir, pip, names, version)
    }
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

    /// Installs one package (`pip` is the policy's venv and user for [`Manager::Pip`]).
    pub fn install(
        &self,
        manager: Manager,
        pip: Option<PipTarget<'_>>,
        name: &str,
        version: Option<&str>,
        cancel: &AtomicBool,
    ) -> Result<(), ExecError> {
        match self {
            Installer::Direct => {
                let argv =
                    prepare_install(manager, None, pip, &[name.to_owned()], version, cancel)?;
                argv.run(INSTALL_TIMEOUT, cancel).map(|_| ())
            }
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
    fn versions_belong_to_their_series() {
        assert!(in_series("550.54.14-1", "550"));
        assert!(in_series("550", "550"));
        assert!(in_series("1:2.36-9+deb12u4", "2.36"));
        assert!(!in_series("5501.1", "550"));
        assert!(!in_series("55.0", "550"));
        let recs = apt_records("Package: a\nVersion: 2\n\nPackage: a\nVersion: 1\n");
        assert_eq!(
            recs,
            vec![("a".into(), "2".into()), ("a".into(), "1".into())]
        );
    }

    /// Issue 18 item 3 and "apt versions kept": only names apt knows exactly get to
    /// apt-get, and a release series becomes the newest exact version in it, which
    /// `apt-get -s` (simulation) then accepts as an install of that one package.
    #[test]
    fn apt_names_are_checked_exactly_and_versions_resolved() {
        let never = AtomicBool::new(false);
        if find_program("apt-cache").is_err() || find_program("dpkg-query").is_err() {
            eprintln!("skipped: no apt-cache on this machine");
            return;
        }
        for bad in ["curl-", "python3.+-", "libcurl.+-"] {
            let e = apt_spec(None, bad, None, &never).unwrap_err();
            assert!(matches!(e, ExecError::NotExact { .. }), "{bad}: {e}");
        }
        let e = apt_spec(None, "persona-no-such-package", None, &never).unwrap_err();
        assert!(e.to_string().contains("exactly"), "{e}");
        assert_eq!(apt_spec(None, "dpkg", None, &never).unwrap(), "dpkg");
        let installed = run(
            &find_program("dpkg-query").unwrap(),
            &["-W", "-f=${Version}", "--", "dpkg"],
            &[],
            QUERY_TIMEOUT,
            &never,
        )
        .unwrap();
        let series: String = installed.split('.').take(2).collect::<Vec<_>>().join(".");
        let spec = apt_spec(None, "dpkg", Some(&series), &never).unwrap();
        let exact = spec.strip_prefix("dpkg=").unwrap();
        assert!(in_series(exact, &series), "{spec}");
        assert_eq!(
            apt_spec(None, "dpkg", Some(&installed), &never).unwrap(),
            format!("dpkg={installed}")
        );
        let e = apt_spec(None, "dpkg", Some("999"), &never).unwrap_err();
        assert!(matches!(e, ExecError::NoVersion { .. }), "{e}");
        // apt-get's own reading of the resolved argument: one package, nothing removed.
        let sim = run_capture(
            &find_program("apt-get").unwrap(),
            &["-s", "install", "--", &spec],
            &[],
            QUERY_TIMEOUT,
            &never,
        )
        .unwrap();
        assert!(sim.success, "{}", sim.stderr);
        assert!(
            !sim.stdout.lines().any(|l| l.starts_with("Remv")),
            "{}",
            sim.stdout
        );
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
