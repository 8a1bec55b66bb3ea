//! The `exec` actuator: runs an operator's program (a cloud CLI wrapper that stops,
//! resizes and starts an instance, say) with the request as JSON on stdin, never through
//! a shell, and reads the result from its exit code and its stdout.
//!
//! Protocol, one JSON document each way:
//! - `{"op":"apply","request":{...ResizeRequest...}}` -> exit 0 and a JSON object with
//!   any of `applied`, `needs_restart` (lists of strings), `observed_vcpus`,
//!   `observed_memory_mib`; exit non-zero = failed (the end of stderr is the message).
//! - `{"op":"query","request":{...}}` -> exit 0 and the VM's size as JSON (`vcpus`,
//!   `memory_mib`, `max_vcpus`, `max_memory_mib`, `disks`, `nets`; any may be absent).
//!
//! The program runs in its own process group with a deadline; when the deadline passes
//! the whole group is killed, so a script's children do not outlive it. Which changes
//! the program makes live is configuration (`live`); every other change is taken to
//! need a restart, which is what cloud CLIs do.
//!
//! [`run_program`] is also how `virsh` is run by the libvirt actuator.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use persona_shared::resize::{Capability, ChangeKind, ResizeOutcome, ResizeRequest};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{ActuateError, Actuator, Observed, gate};

/// Most stdout read from a program; more is an error.
const MAX_STDOUT: u64 = 1 << 20;
/// Tail of stderr kept for the error message.
const STDERR_TAIL: usize = 2048;

fn default_timeout_ms() -> u64 {
    600_000
}
fn default_verify_timeout_ms() -> u64 {
    60_000
}

/// `[actuator.exec]`: the program and how it behaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// Absolute path of the program.
    pub program: PathBuf,
    /// Fixed arguments (for example the instance name); never interpreted by a shell.
    #[serde(default)]
    pub args: Vec<String>,
    /// Deadline of one run; the program's process group is killed when it passes.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Changes the program makes without a restart; all others need one.
    #[serde(default)]
    pub live: Vec<ChangeKind>,
    /// Changes the program cannot make at all.
    #[serde(default)]
    pub unsupported: Vec<ChangeKind>,
    #[serde(default = "default_verify_timeout_ms")]
    pub verify_timeout_ms: u64,
}

impl ExecConfig {
    /// A configuration with default deadlines and every change needing a restart.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            timeout_ms: default_timeout_ms(),
            live: Vec::new(),
            unsupported: Vec::new(),
            verify_timeout_ms: default_verify_timeout_ms(),
        }
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        if !self.program.is_absolute() {
            return Err(format!(
                "exec.program {} is not an absolute path",
                self.program.display()
            ));
        }
        if !(100..=86_400_000).contains(&self.timeout_ms) {
            return Err("exec.timeout_ms must be 100..=86400000".into());
        }
        if self.live.iter().any(|k| self.unsupported.contains(k)) {
            return Err("exec: a change kind is both live and unsupported".into());
        }
        Ok(())
    }
}

/// What a finished program left behind.
#[derive(Debug, Clone)]
pub struct ProgramOutput {
    pub status: std::process::ExitStatus,
    pub stdout: Vec<u8>,
    /// The last few KiB of stderr, lossily decoded.
    pub stderr_tail: String,
}

/// Runs `program args..` without a shell, feeds `stdin`, and waits at most `timeout`;
/// on expiry the program's whole process group is killed and reaped.
pub async fn run_program(
    program: &std::path::Path,
    args: &[String],
    stdin: &[u8],
    timeout: Duration,
) -> Result<ProgramOutput, ActuateError> {
    let target = program.display().to_string();
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ActuateError::Connect {
            target: target.clone(),
            source,
        })?;
    let pid = child.id();
    let input = stdin.to_vec();
    let feed = child.stdin.take().map(|mut w| {
        tokio::spawn(async move {
            // A program that does not read its stdin closes the pipe: not an error here.
            let _ = w.write_all(&input).await;
        })
    });
    let out = child.stdout.take().map(|r| {
        tokio::spawn(async move {
            let mut buf = Vec::new();
            r.take(MAX_STDOUT + 1)
                .read_to_end(&mut buf)
                .await
                .map(|_| buf)
        })
    });
    let err = child.stderr.take().map(|r| {
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = r.take(1 << 20).read_to_end(&mut buf).await;
            buf
        })
    });
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(ActuateError::Io { target, source }),
        Err(_) => {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.kill().await;
            return Err(ActuateError::Timeout {
                target,
                what: "the program".into(),
                after_ms: timeout.as_millis() as u64,
            });
        }
    };
    if let Some(f) = feed {
        let _ = f.await;
    }
    let stdout = match out {
        Some(h) => match h.await {
            Ok(Ok(b)) => b,
            Ok(Err(source)) => return Err(ActuateError::Io { target, source }),
            Err(e) => {
                return Err(ActuateError::Protocol {
                    target,
                    what: "stdout".into(),
                    detail: e.to_string(),
                });
            }
        },
        None => Vec::new(),
    };
    if stdout.len() as u64 > MAX_STDOUT {
        return Err(ActuateError::Protocol {
            target,
            what: "stdout".into(),
            detail: format!("more than {MAX_STDOUT} bytes"),
        });
    }
    let stderr = match err {
        Some(h) => h.await.unwrap_or_default(),
        None => Vec::new(),
    };
    let tail_from = stderr.len().saturating_sub(STDERR_TAIL);
    Ok(ProgramOutput {
        status,
        stdout,
        stderr_tail: String::from_utf8_lossy(&stderr[tail_from..])
            .trim()
            .to_owned(),
    })
}

/// What the program prints after `apply`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ApplyReply {
    applied: Vec<String>,
    needs_restart: Vec<String>,
    observed_vcpus: Option<u32>,
    observed_memory_mib: Option<u64>,
}

/// The exec actuator of one VM.
#[derive(Debug, Clone)]
pub struct Exec {
    cfg: ExecConfig,
}

impl Exec {
    pub fn new(cfg: ExecConfig) -> Self {
        Self { cfg }
    }

    /// Runs the program once; a non-zero exit is [`ActuateError::Refused`] with the
    /// end of its stderr.
    async fn call(&self, op: &str, req: &ResizeRequest) -> Result<Vec<u8>, ActuateError> {
        let input = serde_json::json!({ "op": op, "request": req }).to_string();
        let out = run_program(
            &self.cfg.program,
            &self.cfg.args,
            input.as_bytes(),
            Duration::from_millis(self.cfg.timeout_ms),
        )
        .await?;
        if !out.status.success() {
            return Err(ActuateError::Refused {
                target: self.cfg.program.display().to_string(),
                what: op.into(),
                detail: format!("{}: {}", out.status, out.stderr_tail),
            });
        }
        Ok(out.stdout)
    }

    fn parse<T: serde::de::DeserializeOwned>(
        &self,
        op: &str,
        out: &[u8],
    ) -> Result<T, ActuateError> {
        serde_json::from_slice(out).map_err(|e| ActuateError::Protocol {
            target: self.cfg.program.display().to_string(),
            what: op.into(),
            detail: format!("stdout is not the expected JSON: {e}"),
        })
    }
}

impl Actuator for Exec {
    fn name(&self) -> &'static str {
        "exec"
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn capability(&self, kind: ChangeKind) -> Capability {
        if self.cfg.live.contains(&kind) {
            Capability::Live
        } else if self.cfg.unsupported.contains(&kind) {
            Capability::Unsupported
        } else {
            Capability::Restart
        }
    }

    async fn query(&self, about: &ResizeRequest) -> Result<Observed, ActuateError> {
        let out = self.call("query", about).await?;
        self.parse("query", &out)
    }

    async fn apply(&self, req: &ResizeRequest) -> Result<ResizeOutcome, ActuateError> {
        super::validate_request(req)?;
        let plan = self.plan(req).await?;
        let held_back = gate(self.name(), req, &plan)?;
        // The program gets only what it may do: restart changes stay out unless allowed.
        let send = super::expected_after(req, &plan);
        if super::changes_of(&send, &Observed::default()).is_empty() {
            return Ok(ResizeOutcome {
                needs_restart: held_back,
                ..ResizeOutcome::default()
            });
        }
        let out = self.call("apply", &send).await?;
        let reply: ApplyReply = self.parse("apply", &out)?;
        let mut needs_restart = reply.needs_restart;
        needs_restart.extend(held_back);
        Ok(ResizeOutcome {
            applied: reply.applied,
            needs_restart,
            verified: false,
            observed_vcpus: reply.observed_vcpus,
            observed_memory_mib: reply.observed_memory_mib,
        })
    }
}
