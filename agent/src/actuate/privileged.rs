//! The guest actuator's privileged writes: one allow-listed request (`helper::protocol`)
//! checked against its bounds, then carried out with the roots and floor of the agent's
//! `[guest_actuator]` table. The root helper runs this for the agent; an agent that runs
//! as root (or a test on a fixture tree) runs it in-process, so both paths share every
//! check. What this is not: choosing the requests (`apply_resize` in `actuate`) or
//! package installs, which only the helper performs.

use std::path::Path;

use super::config::GuestActuatorConfig;
use super::error::ActuateError;
use super::{cgroup, cpu, memory};
use crate::helper::protocol::{Request, check};

/// Checks a request and performs it with the roots and bounds of `cfg`; returns what
/// was done, for people.
pub fn perform(req: &Request, cfg: &GuestActuatorConfig) -> Result<String, ActuateError> {
    check(req).map_err(ActuateError::Refused)?;
    match req {
        Request::Ping {} => Ok(concat!("persona-actuator ", env!("CARGO_PKG_VERSION")).into()),
        Request::CpuOnline { cpu, online } => {
            let cpus = cpu::read_cpus(&cfg.sys_root)?;
            let Some(state) = cpus.iter().find(|c| c.cpu == *cpu) else {
                return Err(ActuateError::Refused(format!("cpu{cpu} is not present")));
            };
            if !state.switchable {
                return Err(ActuateError::Refused(format!(
                    "cpu{cpu} cannot go on or offline"
                )));
            }
            let floor = cfg.cpu_floor.max(1);
            if !online && state.online && cpu::online_count(&cpus) <= floor {
                return Err(ActuateError::Refused(format!(
                    "taking cpu{cpu} offline would leave fewer than {floor} CPUs online"
                )));
            }
            let path = cpu::online_file(&cfg.sys_root, *cpu);
            write_control(&path, if *online { "1" } else { "0" })?;
            Ok(format!(
                "cpu{cpu} {}",
                if *online { "online" } else { "offline" }
            ))
        }
        Request::MemoryOnline { block } => {
            let path = memory::state_file(&cfg.sys_root, *block);
            if !path.exists() {
                return Err(ActuateError::Refused(format!(
                    "memory{block} is not present"
                )));
            }
            write_control(&path, "online")?;
            Ok(format!("memory{block} online"))
        }
        Request::CgroupLimit {
            group,
            cpu_max_millicores,
            memory_max_bytes,
            io,
        } => {
            let limits = cgroup::Limits {
                cpu_quota_us: cpu_max_millicores.map(|m| m * cfg.cpu_period_us / 1000),
                cpu_period_us: cfg.cpu_period_us,
                memory_bytes: *memory_max_bytes,
                io: io.clone(),
            };
            let done = cgroup::apply(
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

/// Writes `value` to a sysfs control file (the helper's and the direct path's one
/// way of writing).
fn write_control(path: &Path, value: &str) -> Result<(), ActuateError> {
    std::fs::write(path, value).map_err(|source| ActuateError::Write {
        path: path.to_owned(),
        value: value.to_owned(),
        source,
    })
}
