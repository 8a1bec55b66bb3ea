//! The privileged half of the agent: `persona-actuator`, a small root helper that accepts
//! a fixed, allow-listed set of requests on a Unix socket and nothing else.
//!
//! Why a separate process: sampling and streaming need no privilege (everything the
//! collectors read in /proc and /sys is world-readable), and that half talks to the
//! network, parses coordinator messages and links a TLS stack. The few actions that need
//! root (a CPU online/offline write in sysfs, a cgroup limit, a package install) are
//! kept out of it: the unprivileged agent asks, this helper checks the request against
//! the allow-list with strict value checks, and only then acts. A compromised agent can
//! therefore do no more than the allow-list, whose every entry is bounded.
//!
//! Wire format: one JSON object per line in, one JSON object per line out, one request
//! per connection. The socket is created mode 0660 with the service's group (`persona`),
//! so only the agent's user can talk to it.
//!
//! Implemented: `ping`, `cpu_online`, `memory_online` and `cgroup_limit`, performed by
//! [`perform`], which is also what the guest actuator (`crate::actuate`) calls in-process
//! when no helper is configured, so both paths run the same checks. The helper takes its
//! roots, floor and cgroup slice from the agent's own config file (`[guest_actuator]`,
//! root-owned), never from the request.
//!
//! `install_packages` (apt, dnf or pip, for the pre-load orchestrator) is performed only
//! by the helper ([`HelperConfig`]): it checks every name against the package grammars of
//! `preload::validate` again, re-reads the root-owned policy file named in the agent's
//! config for every request (the manager must be on there; pip installs only into the
//! policy's venv), runs the manager by argument list with no shell and its own deadline
//! (`--install-timeout-s`, 15 min by default; the child is killed at the deadline), and
//! answers with the exit code and a bounded tail of the output. The caller chooses
//! nothing but the names and the manager. Connections are served on their own threads so
//! a long install does not hold up CPU or cgroup requests; installs run one at a time.
//! This module
//! does not decide *whether* to act (the coordinator and the agent's policy do); it only
//! decides whether a request is allowed and does it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::actuate::{ActuateError, GuestActuatorConfig};
use crate::preload::packages::{self, Manager};
use crate::preload::validate;

/// Default socket path (systemd's `RuntimeDirectory=persona-actuator`).
pub const DEFAULT_SOCKET: &str = "/run/persona-actuator/actuator.sock";
/// Longest request line accepted.
const MAX_REQUEST: u64 = 16 * 1024;
/// Highest CPU number accepted (the kernel's NR_CPUS upper bound in common configs).
const MAX_CPU: u32 = 8191;
/// Most packages in one install request.
const MAX_PACKAGES: usize = 64;
/// Highest memory block number accepted (2^20 blocks of 128 MiB is 128 TiB).
const MAX_MEMORY_BLOCK: u32 = 1 << 20;
/// Default deadline of one install in the helper.
pub const DEFAULT_INSTALL_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Bytes of an install's output returned in the reply.
const OUTPUT_TAIL: usize = 4000;
/// Connections served at once (the rest wait in the listen backlog).
const MAX_CONNECTIONS: usize = 8;
/// Deadline of every request but an install, each way.
const SHORT_DEADLINE: Duration = Duration::from_secs(5);

/// Why the actuator could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ActuatorError {
    #[error("cannot bind the actuator socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set the mode of {path}: {source}")]
    Mode {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The allow-list: every request the actuator understands.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Liveness check.
    Ping {},
    /// Bring a CPU online or offline (`/sys/devices/system/cpu/cpuN/online`). CPU 0 is
    /// never taken offline.
    CpuOnline { cpu: u32, online: bool },
    /// Bring a hot-added memory block online (`/sys/devices/system/memory/memoryN/state`).
    /// Taking memory offline is not on the list.
    MemoryOnline { block: u32 },
    /// Set limits of a cgroup Persona owns (`<cgroup_parent>/<group>` only).
    CgroupLimit {
        group: String,
        cpu_max_millicores: Option<u64>,
        memory_max_bytes: Option<u64>,
        #[serde(default)]
        io: Option<crate::actuate::cgroup::IoMax>,
    },
    /// Install packages by name with a package manager (no URLs, no local files); an
    /// optional version applies to a single package.
    InstallPackages {
        #[serde(default = "default_manager")]
        manager: Manager,
        packages: Vec<String>,
        #[serde(default)]
        version: Option<String>,
    },
}

fn default_manager() -> Manager {
    Manager::Apt
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    /// `refused`, `failed`, `busy`, `bad_request`; absent when ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub detail: String,
    /// An install's exit code (absent for other requests, or when killed by a signal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The last few KiB of an install's output (stdout then stderr).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tail: Option<String>,
}

impl Reply {
    fn ok(detail: impl Into<String>) -> Self {
        Self {
            ok: true,
            error: None,
            detail: detail.into(),
            exit_code: None,
            output_tail: None,
        }
    }
    fn err(kind: &str, detail: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(kind.to_owned()),
            detail: detail.into(),
            exit_code: None,
            output_tail: None,
        }
    }
}

/// What the helper serves with: the guest actuator's roots and bounds, where the policy
/// is (re-read for every install), the install deadline and, for unusual layouts and
/// tests, the one directory package managers are taken from. All of it comes from the
/// helper's command line and the root-owned agent config, never from a request.
#[derive(Debug, Clone)]
pub struct HelperConfig {
    pub guest: GuestActuatorConfig,
    pub policy_file: PathBuf,
    pub install_timeout: Duration,
    /// Replaces the system directories when looking up apt-get and dnf.
    pub program_dir: Option<PathBuf>,
}

impl HelperConfig {
    /// The defaults around `guest`: the default policy path and deadline.
    pub fn new(guest: GuestActuatorConfig) -> Self {
        Self {
            guest,
            policy_file: PathBuf::from("/etc/persona/policy.toml"),
            install_timeout: DEFAULT_INSTALL_TIMEOUT,
            program_dir: None,
        }
    }
}

fn valid_group(g: &str) -> bool {
    (1..=64).contains(&g.len())
        && g.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Checks a request's values against the allow-list bounds.
pub fn check(req: &Request) -> Result<(), String> {
    match req {
        Request::Ping {} => Ok(()),
        Request::CpuOnline { cpu, online } => {
            if *cpu == 0 && !online {
                Err("cpu 0 is never taken offline".into())
            } else if *cpu > MAX_CPU {
                Err(format!("cpu {cpu} is outside 0..={MAX_CPU}"))
            } else {
                Ok(())
            }
        }
        Request::MemoryOnline { block } => {
            if *block > MAX_MEMORY_BLOCK {
                Err(format!(
                    "memory block {block} is outside 0..={MAX_MEMORY_BLOCK}"
                ))
            } else {
                Ok(())
            }
        }
        Request::CgroupLimit {
            group,
            cpu_max_millicores,
            memory_max_bytes,
            io,
        } => {
            if !valid_group(group) {
                return Err(format!(
                    "group {group:?} is not 1 to 64 of [a-z0-9-] (only persona.slice/<group>)"
                ));
            }
            if cpu_max_millicores.is_some_and(|m| m < 10) {
                return Err("cpu_max_millicores below 10 would starve the group".into());
            }
            if memory_max_bytes.is_some_and(|m| m < 16 << 20) {
                return Err("memory_max_bytes below 16 MiB would starve the group".into());
            }
            if let Some(io) = io
                && !crate::actuate::cgroup::valid_device(&io.device)
            {
                return Err(format!("io device {:?} is not MAJ:MIN", io.device));
            }
            Ok(())
        }
        Request::InstallPackages {
            manager,
            packages,
            version,
        } => {
            if packages.is_empty() || packages.len() > MAX_PACKAGES {
                return Err(format!("1 to {MAX_PACKAGES} packages per request"));
            }
            for p in packages {
                match manager {
                    Manager::Apt => validate::debian_package(p),
                    Manager::Dnf => validate::rpm_package(p),
                    Manager::Pip => validate::python_name(p),
                }
                .map_err(|e| e.to_string())?;
            }
            if let Some(v) = version {
                if packages.len() != 1 {
                    return Err("a version applies to exactly one package".into());
                }
                match manager {
                    Manager::Pip => validate::python_version(v),
                    _ => validate::package_version(v),
                }
                .map_err(|e| e.to_string())?;
            }
            Ok(())
        }
    }
}

/// Checks a request and performs it with the roots and bounds of `cfg`; returns what
/// was done, for people.
pub fn perform(req: &Request, cfg: &GuestActuatorConfig) -> Result<String, ActuateError> {
    check(req).map_err(ActuateError::Refused)?;
    match req {
        Request::Ping {} => Ok(concat!("persona-actuator ", env!("CARGO_PKG_VERSION")).into()),
        Request::CpuOnline { cpu, online } => {
            let cpus = crate::actuate::cpu::read_cpus(&cfg.sys_root)?;
            let Some(state) = cpus.iter().find(|c| c.cpu == *cpu) else {
                return Err(ActuateError::Refused(format!("cpu{cpu} is not present")));
            };
            if !state.switchable {
                return Err(ActuateError::Refused(format!(
                    "cpu{cpu} cannot go on or offline"
                )));
            }
            let floor = cfg.cpu_floor.max(1);
            if !online && state.online && crate::actuate::cpu::online_count(&cpus) <= floor {
                return Err(ActuateError::Refused(format!(
                    "taking cpu{cpu} offline would leave fewer than {floor} CPUs online"
                )));
            }
            let path = crate::actuate::cpu::online_file(&cfg.sys_root, *cpu);
            crate::actuate::write_control(&path, if *online { "1" } else { "0" })?;
            Ok(format!(
                "cpu{cpu} {}",
                if *online { "online" } else { "offline" }
            ))
        }
        Request::MemoryOnline { block } => {
            let path = crate::actuate::memory::state_file(&cfg.sys_root, *block);
            if !path.exists() {
                return Err(ActuateError::Refused(format!(
                    "memory{block} is not present"
                )));
            }
            crate::actuate::write_control(&path, "online")?;
            Ok(format!("memory{block} online"))
        }
        Request::CgroupLimit {
            group,
            cpu_max_millicores,
            memory_max_bytes,
            io,
        } => {
            let limits = crate::actuate::cgroup::Limits {
                cpu_quota_us: cpu_max_millicores.map(|m| m * cfg.cpu_period_us / 1000),
                cpu_period_us: cfg.cpu_period_us,
                memory_bytes: *memory_max_bytes,
                io: io.clone(),
            };
            let done = crate::actuate::cgroup::apply(
                &cfg.cgroup_root,
                cfg.cgroup_version,
                &cfg.cgroup_parent,
                group,
                &limits,
            )?;
            Ok(done.join(", "))
        }
        Request::InstallPackages { .. } => Err(ActuateError::Unsupported(
            "install_packages is performed only by the persona-actuator helper".into(),
        )),
    }
}

/// Serialises installs (package managers take their own locks, but two at once would
/// only wait on each other while holding the deadline).
static INSTALLS: Mutex<()> = Mutex::new(());

/// Performs a checked `install_packages` request under the policy as it is on disk now.
fn install(manager: Manager, names: &[String], version: Option<&str>, cfg: &HelperConfig) -> Reply {
    let policy = match crate::policy::Policy::load(&cfg.policy_file) {
        Ok(p) => p,
        Err(e) => return Reply::err("refused", format!("no usable policy: {e}")),
    };
    let (on, key) = match manager {
        Manager::Apt => (policy.packages.apt, "packages.apt"),
        Manager::Dnf => (policy.packages.dnf, "packages.dnf"),
        Manager::Pip => (policy.packages.pip_venv.is_some(), "packages.pip_venv"),
    };
    if !on {
        return Reply::err(
            "refused",
            format!(
                "{} is off in the policy ({key} in {})",
                manager.as_str(),
                cfg.policy_file.display()
            ),
        );
    }
    let argv = match packages::install_argv(
        manager,
        cfg.program_dir.as_deref(),
        policy.packages.pip_venv.as_deref(),
        names,
        version,
    ) {
        Ok(a) => a,
        Err(e) => return Reply::err("failed", e.to_string()),
    };
    let _one = INSTALLS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    tracing::info!(manager = manager.as_str(), packages = %names.join(" "), "installing");
    let never = AtomicBool::new(false);
    let what = format!("{} {}", argv.program.display(), argv.args.join(" "));
    match argv.run_capture(cfg.install_timeout, &never) {
        Ok(f) => {
            let output = format!("{}\n{}", f.stdout.trim(), f.stderr.trim());
            let mut r = if f.success {
                Reply::ok(format!("installed: {what}"))
            } else {
                Reply::err("failed", format!("{what}: {}", f.status))
            };
            r.exit_code = f.code;
            r.output_tail = Some(packages::tail(&output, OUTPUT_TAIL));
            r
        }
        Err(e) => Reply::err("failed", e.to_string()),
    }
}

/// Parses, checks and performs one request line with `cfg` and the default helper
/// settings (see [`handle_helper_line`]).
pub fn handle_line(line: &str, cfg: &GuestActuatorConfig) -> Reply {
    handle_helper_line(line, &HelperConfig::new(cfg.clone()))
}

/// Parses, checks and performs one request line, as the helper does.
pub fn handle_helper_line(line: &str, cfg: &HelperConfig) -> Reply {
    let req: Request = match serde_json::from_str(line.trim()) {
        Ok(r) => r,
        Err(e) => return Reply::err("refused", format!("not an allow-listed request: {e}")),
    };
    if let Err(why) = check(&req) {
        return Reply::err("refused", why);
    }
    if let Request::InstallPackages {
        manager,
        packages,
        version,
    } = &req
    {
        return install(*manager, packages, version.as_deref(), cfg);
    }
    match perform(&req, &cfg.guest) {
        Ok(done) => Reply::ok(done),
        Err(ActuateError::Refused(why)) => Reply::err("refused", why),
        Err(e) => Reply::err("failed", e.to_string()),
    }
}

/// Sends one request to the helper and reads its reply (5 s deadlines each way).
pub fn call(socket: &Path, req: &Request) -> Result<Reply, std::io::Error> {
    let never = AtomicBool::new(false);
    call_until(socket, req, SHORT_DEADLINE, &never).map_err(|e| match e {
        CallError::Io(e) => e,
        other => std::io::Error::other(other.to_string()),
    })
}

/// Why a call to the helper gave no reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no reply within {0:?}")]
    Deadline(Duration),
    #[error("cancelled while waiting for the helper")]
    Cancelled,
    #[error("bad reply {reply:?}: {reason}")]
    BadReply { reply: String, reason: String },
}

/// Sends one request and waits up to `deadline` for the reply, checking `cancel` every
/// second (a cancel stops waiting; the helper finishes or times out what it started).
pub fn call_until(
    socket: &Path,
    req: &Request,
    deadline: Duration,
    cancel: &AtomicBool,
) -> Result<Reply, CallError> {
    let stream = UnixStream::connect(socket)?;
    stream.set_write_timeout(Some(SHORT_DEADLINE))?;
    let mut line = serde_json::to_string(req).map_err(std::io::Error::other)?;
    line.push('\n');
    (&stream).write_all(line.as_bytes())?;
    stream.set_read_timeout(Some(Duration::from_secs(1).min(deadline)))?;
    let started = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match (&stream).read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.contains(&b'\n') || buf.len() as u64 > MAX_REQUEST {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e.into()),
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(CallError::Cancelled);
        }
        if started.elapsed() > deadline {
            return Err(CallError::Deadline(deadline));
        }
    }
    let out = String::from_utf8_lossy(&buf);
    let first = out.lines().next().unwrap_or("");
    serde_json::from_str(first).map_err(|e| CallError::BadReply {
        reply: first.chars().take(300).collect(),
        reason: e.to_string(),
    })
}

fn serve_one(stream: UnixStream, cfg: &HelperConfig) -> std::io::Result<()> {
    stream.set_read_timeout(Some(SHORT_DEADLINE))?;
    stream.set_write_timeout(Some(SHORT_DEADLINE))?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_REQUEST)).read_line(&mut line)?;
    let reply = if line.ends_with('\n') {
        handle_helper_line(&line, cfg)
    } else {
        Reply::err("bad_request", "one JSON object per line, at most 16 KiB")
    };
    let mut out = serde_json::to_string(&reply).unwrap_or_else(|_| "{\"ok\":false}".into());
    out.push('\n');
    (&stream).write_all(out.as_bytes())
}

/// Binds `path` (replacing a stale socket), mode 0660.
pub fn bind(path: &Path) -> Result<UnixListener, ActuatorError> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|source| ActuatorError::Bind {
        path: path.to_owned(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(|source| {
        ActuatorError::Mode {
            path: path.to_owned(),
            source,
        }
    })?;
    Ok(listener)
}

/// Serves requests with the default helper settings around `cfg` (see [`serve_with`]).
pub fn serve(listener: &UnixListener, cfg: &GuestActuatorConfig) {
    serve_with(listener, &HelperConfig::new(cfg.clone()));
}

/// Serves requests forever, each connection on its own thread, at most
/// [`MAX_CONNECTIONS`] at once (systemd stops it with SIGTERM, which ends the process:
/// there is no state to save).
pub fn serve_with(listener: &UnixListener, cfg: &HelperConfig) {
    let cfg = Arc::new(cfg.clone());
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        match stream {
            Ok(s) => {
                if active.load(Ordering::Acquire) >= MAX_CONNECTIONS {
                    let mut out = serde_json::to_string(&Reply::err(
                        "busy",
                        format!("{MAX_CONNECTIONS} requests in progress"),
                    ))
                    .unwrap_or_default();
                    out.push('\n');
                    let _ = (&s).write_all(out.as_bytes());
                    continue;
                }
                active.fetch_add(1, Ordering::AcqRel);
                let (cfg, active) = (cfg.clone(), active.clone());
                std::thread::spawn(move || {
                    if let Err(e) = serve_one(s, &cfg) {
                        tracing::debug!("actuator connection: {e}");
                    }
                    active.fetch_sub(1, Ordering::AcqRel);
                });
            }
            Err(e) => tracing::warn!("actuator accept: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration whose roots are an empty directory: nothing can be written.
    fn nowhere(dir: &Path) -> GuestActuatorConfig {
        GuestActuatorConfig {
            sys_root: dir.join("sys"),
            cgroup_root: dir.join("cgroup"),
            helper_socket: None,
            ..GuestActuatorConfig::default()
        }
    }

    #[test]
    fn the_allow_list() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = nowhere(dir.path());
        assert!(handle_line("{\"op\":\"ping\"}\n", &cfg).ok);
        // Allowed, but the (empty) sysfs has no such CPU: a failure, not a refusal.
        let r = handle_line("{\"op\":\"cpu_online\",\"cpu\":1,\"online\":false}", &cfg);
        assert_eq!(r.error.as_deref(), Some("failed"), "{r:?}");
        for refused in [
            "{\"op\":\"cpu_online\",\"cpu\":0,\"online\":false}",
            "{\"op\":\"cpu_online\",\"cpu\":99999,\"online\":true}",
            "{\"op\":\"memory_online\",\"block\":4294967295}",
            "{\"op\":\"memory_offline\",\"block\":1}",
            "{\"op\":\"exec\",\"cmd\":\"rm -rf /\"}",
            "{\"op\":\"ping\",\"extra\":1}",
            "{\"op\":\"cgroup_limit\",\"group\":\"../../etc\"}",
            "{\"op\":\"cgroup_limit\",\"group\":\"web\",\"memory_max_bytes\":1}",
            "{\"op\":\"cgroup_limit\",\"group\":\"web\",\"io\":{\"device\":\"sda\"}}",
            "{\"op\":\"install_packages\",\"packages\":[\"curl; rm -rf /\"]}",
            "{\"op\":\"install_packages\",\"packages\":[\"http://x/y.deb\"]}",
            "{\"op\":\"install_packages\",\"packages\":[]}",
            "not json",
        ] {
            let r = handle_line(refused, &cfg);
            assert_eq!(r.error.as_deref(), Some("refused"), "{refused}: {r:?}");
        }
        // Well-formed installs are decided by the helper's policy: absent here, so off.
        let mut helper = HelperConfig::new(cfg.clone());
        helper.policy_file = dir.path().join("no-policy.toml");
        let r = handle_helper_line(
            "{\"op\":\"install_packages\",\"packages\":[\"python3-torch\",\"g++\"]}",
            &helper,
        );
        assert_eq!(r.error.as_deref(), Some("refused"), "{r:?}");
        assert!(r.detail.contains("packages.apt"), "{r:?}");
    }

    #[test]
    fn serves_over_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = nowhere(dir.path());
        let path = dir.path().join("a.sock");
        let l = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            serve_one(s, &HelperConfig::new(cfg)).unwrap();
        });
        let r = call(&path, &Request::Ping {}).unwrap();
        assert!(r.ok, "{r:?}");
        t.join().unwrap();
    }
}
