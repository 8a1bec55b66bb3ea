//! Package installs: apt-get and dnf for system packages, pip into the policy's venv, and
//! the one program runner every pre-load step uses.
//!
//! Programs are found in fixed system directories (never through `PATH`, which a
//! caller could have changed) and run with `std::process::Command` and an explicit
//! argument list: never a shell. Positional names come after `--`, and were checked
//! against their grammar (`validate`) before they get here, so a name can be neither a
//! shell command nor an option. What is already installed is detected first and
//! reported as present, which makes a repeated plan cheap and idempotent.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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
}

/// Finds a system program by name in [`SYSTEM_DIRS`].
pub fn find_program(name: &str) -> Result<PathBuf, ExecError> {
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
    if status.success() {
        Ok(stdout)
    } else {
        let tail: String = {
            let t = stderr.trim();
            let start = t.len().saturating_sub(STDERR_TAIL);
            t.get(start..).unwrap_or(t).to_owned()
        };
        Err(ExecError::Failed {
            program: program.to_owned(),
            args: args.join(" "),
            status: status.to_string(),
            stderr: tail,
        })
    }
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
    let apt = find_program("apt-get")?;
    let spec = match version {
        Some(v) => format!("{name}={v}"),
        None => name.to_owned(),
    };
    run(
        &apt,
        &[
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "-o",
            "Dpkg::Options::=--force-confold",
            // unattended-upgrades (or an operator) may hold the lock for a while.
            "-o",
            "DPkg::Lock::Timeout=600",
            "--",
            &spec,
        ],
        &[("DEBIAN_FRONTEND", "noninteractive")],
        INSTALL_TIMEOUT,
        cancel,
    )
    .map(|_| ())
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
    let dnf = find_program("dnf")?;
    let spec = match version {
        Some(v) => format!("{name}-{v}"),
        None => name.to_owned(),
    };
    run(
        &dnf,
        &["install", "-y", "-q", "--", &spec],
        &[],
        INSTALL_TIMEOUT,
        cancel,
    )
    .map(|_| ())
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
    let spec = match version {
        Some(v) => format!("{name}=={v}.*"),
        None => name.to_owned(),
    };
    run(
        pip,
        &["install", "--no-input", "-q", "--", &spec],
        &[("PIP_DISABLE_PIP_VERSION_CHECK", "1")],
        INSTALL_TIMEOUT,
        cancel,
    )
    .map(|_| ())
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
