//! The root helper's wire protocol, both ends' shared half: the allow-list of requests,
//! the value bounds every request is checked against, the reply, and the client call the
//! unprivileged agent makes.
//!
//! Wire format: one JSON object per line in, one JSON object per line out, one request
//! per connection, on a Unix socket that only the agent's group can open. The bounds are
//! here, not in the server, so the agent refuses an out-of-bounds request before it asks
//! and the helper refuses it again whatever the agent sent. What this is not: carrying a
//! request out (the guest actuator's `privileged` writes, the helper's `server`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use persona_shared::preload::validate;
use serde::{Deserialize, Serialize};

use crate::actuate::cgroup::{IoMax, valid_device};

/// Default socket path (systemd's `RuntimeDirectory=persona-actuator`).
pub const DEFAULT_SOCKET: &str = "/run/persona-actuator/actuator.sock";
/// Longest request line accepted.
pub(crate) const MAX_REQUEST: u64 = 16 * 1024;
/// Highest CPU number accepted (the kernel's NR_CPUS upper bound in common configs).
const MAX_CPU: u32 = 8191;
/// Most packages in one install request.
const MAX_PACKAGES: usize = 64;
/// Highest memory block number accepted (2^20 blocks of 128 MiB is 128 TiB).
const MAX_MEMORY_BLOCK: u32 = 1 << 20;
/// Deadline of every request but an install, each way.
pub(crate) const SHORT_DEADLINE: Duration = Duration::from_secs(5);

/// A package manager, as named in helper requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Manager {
    Apt,
    Dnf,
    Pip,
}

impl Manager {
    pub fn as_str(self) -> &'static str {
        match self {
            Manager::Apt => "apt",
            Manager::Dnf => "dnf",
            Manager::Pip => "pip",
        }
    }
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
        io: Option<IoMax>,
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
    pub(crate) fn ok(detail: impl Into<String>) -> Self {
        Self {
            ok: true,
            error: None,
            detail: detail.into(),
            exit_code: None,
            output_tail: None,
        }
    }
    pub(crate) fn err(kind: &str, detail: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(kind.to_owned()),
            detail: detail.into(),
            exit_code: None,
            output_tail: None,
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
                && !valid_device(&io.device)
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
                    Manager::Apt => validate::apt_package(p),
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

/// Decodes and checks one request line as the helper does with what it reads from its
/// socket: UTF-8, one JSON object of the allow-list, values inside their bounds. Any
/// input gives a request or a reason, never a panic (fuzzed: `fuzz/fuzz_targets/
/// helper_request.rs`).
pub fn decode_request(line: &[u8]) -> Result<Request, String> {
    if line.len() as u64 > MAX_REQUEST {
        return Err(format!("longer than {MAX_REQUEST} bytes"));
    }
    let text = std::str::from_utf8(line).map_err(|e| format!("not UTF-8: {e}"))?;
    let req: Request = serde_json::from_str(text.trim())
        .map_err(|e| format!("not an allow-listed request: {e}"))?;
    check(&req)?;
    Ok(req)
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
