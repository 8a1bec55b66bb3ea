//! The guest actuator: resizes from inside the VM. In `machine` mode it brings CPUs
//! the hypervisor hot-added online, takes CPUs offline (never cpu0, never below the
//! floor) and onlines hot-added memory blocks; in `slice` mode it puts CPU, memory and
//! I/O limits on a delegated cgroup, which shares a VM between workloads rather than
//! growing it. Every change is read back, and a resize counts as done only when the read
//! back shows it (`ResizeOutcome::verified`).
//!
//! The privileged writes are the allow-listed requests of `crate::helper::protocol`:
//! sent to the root helper `persona-actuator` over its socket when
//! `guest_actuator.helper_socket` is set (the packaged setup: the agent runs
//! unprivileged), or performed in this process by the same checked code when it is
//! unset (an agent running as root, and tests against fixture trees). Reads need no
//! privilege and are always done here.
//!
//! What it is not: the decision to resize (the coordinator's engine), the command
//! bookkeeping (`commands`), or the local policy check (`policy`), which run before
//! [`apply_resize`] is called.

pub mod cgroup;
mod config;
pub mod cpu;
mod error;
pub mod memory;
mod privileged;

use std::time::{Duration, Instant};

use persona_shared::resize::{ResizeOutcome, ResizeRequest};

use crate::helper::protocol::{self, Request};
use cgroup::IoMax;

pub use config::{GuestActuatorConfig, GuestTarget};
pub use error::ActuateError;
pub use privileged::perform;

/// Sends one allow-listed request to the helper, or performs it here.
fn privileged(req: &Request, cfg: &GuestActuatorConfig) -> Result<String, ActuateError> {
    match &cfg.helper_socket {
        Some(socket) => {
            let reply = protocol::call(socket, req).map_err(|e| ActuateError::Helper {
                socket: socket.clone(),
                detail: e.to_string(),
            })?;
            if reply.ok {
                Ok(reply.detail)
            } else {
                Err(ActuateError::Helper {
                    socket: socket.clone(),
                    detail: format!(
                        "{}: {}",
                        reply.error.as_deref().unwrap_or("error"),
                        reply.detail
                    ),
                })
            }
        }
        None => perform(req, cfg),
    }
}

/// Applies a resize inside the guest and reads it back. The request has passed the
/// agent's policy; this checks its values (floor, cpu0, present CPUs and memory) and
/// refuses a change the guest cannot make before it writes anything.
pub fn apply_resize(
    req: &ResizeRequest,
    cfg: &GuestActuatorConfig,
) -> Result<ResizeOutcome, ActuateError> {
    if req.vcpus == Some(0) {
        return Err(ActuateError::Invalid("vcpus must be 1 or more".into()));
    }
    if req.memory_mib.is_some_and(|m| m < 64) {
        return Err(ActuateError::Invalid(
            "memory_mib must be 64 or more".into(),
        ));
    }
    if req.net.is_some() {
        return Err(ActuateError::Unsupported(
            "network limits are not a guest actuator change".into(),
        ));
    }
    match cfg.target {
        GuestTarget::Machine => apply_machine(req, cfg),
        GuestTarget::Slice => apply_slice(req, cfg),
    }
}

/// How long a read back may take to show a write (sysfs is synchronous; this only
/// covers a slow udev or helper).
const SETTLE: Duration = Duration::from_secs(2);

fn apply_machine(
    req: &ResizeRequest,
    cfg: &GuestActuatorConfig,
) -> Result<ResizeOutcome, ActuateError> {
    if req.disk.is_some() {
        return Err(ActuateError::Unsupported(
            "disk limits need guest_actuator.target = \"slice\"".into(),
        ));
    }
    let sys = &cfg.sys_root;
    // Plan everything before the first write.
    let cpu_plan = match req.vcpus {
        Some(v) => cpu::plan(&cpu::read_cpus(sys)?, v, cfg.cpu_floor)?,
        None => Vec::new(),
    };
    let (mem_plan, block_size) = match req.memory_mib {
        Some(m) => {
            let bs = memory::block_size(sys)?;
            (memory::plan(&memory::read_blocks(sys)?, bs, m)?, bs)
        }
        None => (Vec::new(), 0),
    };
    let mut out = ResizeOutcome::default();
    for (cpu, online) in &cpu_plan {
        privileged(
            &Request::CpuOnline {
                cpu: *cpu,
                online: *online,
            },
            cfg,
        )?;
        out.applied.push(format!(
            "cpu{cpu} {}",
            if *online { "online" } else { "offline" }
        ));
    }
    for block in &mem_plan {
        privileged(&Request::MemoryOnline { block: *block }, cfg)?;
        out.applied.push(format!("memory{block} online"));
    }
    // Read back, with a short bounded wait.
    let deadline = Instant::now() + SETTLE;
    loop {
        let mut ok = true;
        if let Some(v) = req.vcpus {
            let n = cpu::online_count(&cpu::read_cpus(sys)?);
            out.observed_vcpus = Some(n);
            ok &= n == v;
        }
        if let Some(m) = req.memory_mib {
            let have = memory::online_mib(&memory::read_blocks(sys)?, block_size);
            out.observed_memory_mib = Some(have);
            ok &= have >= m && have < m + (block_size >> 20).max(1);
        }
        if ok || Instant::now() >= deadline {
            out.verified = ok;
            return Ok(out);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn apply_slice(
    req: &ResizeRequest,
    cfg: &GuestActuatorConfig,
) -> Result<ResizeOutcome, ActuateError> {
    let io = req.disk.as_ref().map(|d| IoMax {
        device: d.device.clone(),
        read_iops: d.read_iops,
        write_iops: d.write_iops,
        read_bps: d.read_bps,
        write_bps: d.write_bps,
    });
    if let Some(io) = &io
        && !cgroup::valid_device(&io.device)
    {
        return Err(ActuateError::Invalid(format!(
            "disk {:?}: slice limits name the device as MAJ:MIN",
            io.device
        )));
    }
    let quota = req.vcpus.map(|v| u64::from(v) * cfg.cpu_period_us);
    let request = Request::CgroupLimit {
        group: cfg.cgroup_group.clone(),
        cpu_max_millicores: req.vcpus.map(|v| u64::from(v) * 1000),
        memory_max_bytes: req.memory_mib.map(|m| m << 20),
        io: io.clone(),
    };
    let detail = privileged(&request, cfg)?;
    let back = cgroup::read_back(
        &cfg.cgroup_root,
        cfg.cgroup_version,
        &cfg.cgroup_parent,
        &cfg.cgroup_group,
        io.as_ref().map(|i| i.device.as_str()),
    )?;
    let mut verified = true;
    if let Some(q) = quota {
        verified &= back.cpu_quota_us == Some(q) && back.cpu_period_us == cfg.cpu_period_us;
    }
    if let Some(m) = req.memory_mib {
        verified &= back.memory_bytes == Some(m << 20);
    }
    if let Some(want) = &io {
        let have = back.io.clone().unwrap_or_default();
        for (w, h) in [
            (want.read_iops, have.read_iops),
            (want.write_iops, have.write_iops),
            (want.read_bps, have.read_bps),
            (want.write_bps, have.write_bps),
        ] {
            verified &= w.is_none() || w == h;
        }
    }
    Ok(ResizeOutcome {
        applied: vec![format!(
            "cgroup {}/{}: {detail}",
            cfg.cgroup_parent, cfg.cgroup_group
        )],
        needs_restart: Vec::new(),
        verified,
        observed_vcpus: back
            .cpu_quota_us
            .filter(|_| back.cpu_period_us > 0)
            .map(|q| (q / back.cpu_period_us.max(1)) as u32),
        observed_memory_mib: back.memory_bytes.map(|b| b >> 20),
    })
}
