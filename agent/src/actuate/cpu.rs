//! vCPUs seen from inside the guest: which CPUs are present (hot-added by the
//! hypervisor) and which are online, read from `/sys/devices/system/cpu`, and the plan
//! of online/offline writes that reaches a target count. CPU 0 is never taken offline
//! and the count never goes below the configured floor.
//!
//! What it is not: hot-adding CPUs (only the hypervisor can), or the write itself (it
//! goes through `privileged`, directly or via the root helper).

use std::path::{Path, PathBuf};

use super::error::ActuateError;

/// Highest CPU number accepted from sysfs (the kernel's NR_CPUS bound).
pub const MAX_CPU: u32 = 8191;

fn cpu_dir(sys_root: &Path) -> PathBuf {
    sys_root.join("devices/system/cpu")
}

/// The `online` control file of one CPU.
pub fn online_file(sys_root: &Path, cpu: u32) -> PathBuf {
    cpu_dir(sys_root).join(format!("cpu{cpu}/online"))
}

/// Parses a kernel CPU list such as `0-3,5,7-8`.
pub fn parse_cpu_list(s: &str) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let lo: u32 = a.parse().map_err(|_| format!("bad CPU number {a:?}"))?;
        let hi: u32 = b.parse().map_err(|_| format!("bad CPU number {b:?}"))?;
        if lo > hi || hi > MAX_CPU {
            return Err(format!("bad CPU range {part:?}"));
        }
        out.extend(lo..=hi);
    }
    Ok(out)
}

fn read(path: &Path) -> Result<String, ActuateError> {
    std::fs::read_to_string(path).map_err(|source| ActuateError::Read {
        path: path.to_owned(),
        source,
    })
}

/// One CPU as the guest has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuState {
    pub cpu: u32,
    pub online: bool,
    /// Whether it has an `online` file (CPU 0 usually has none: it cannot go offline).
    pub switchable: bool,
}

/// The present CPUs and whether each is online, from the per-CPU `online` files (a CPU
/// without one is online and fixed).
pub fn read_cpus(sys_root: &Path) -> Result<Vec<CpuState>, ActuateError> {
    let present_path = cpu_dir(sys_root).join("present");
    let present = parse_cpu_list(&read(&present_path)?).map_err(|detail| ActuateError::Parse {
        path: present_path.clone(),
        detail,
    })?;
    let mut out = Vec::with_capacity(present.len());
    for cpu in present {
        let f = online_file(sys_root, cpu);
        let state = match std::fs::read_to_string(&f) {
            Ok(s) => CpuState {
                cpu,
                online: match s.trim() {
                    "1" => true,
                    "0" => false,
                    other => {
                        return Err(ActuateError::Parse {
                            path: f,
                            detail: format!("{other:?} is neither 0 nor 1"),
                        });
                    }
                },
                switchable: true,
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => CpuState {
                cpu,
                online: true,
                switchable: false,
            },
            Err(source) => return Err(ActuateError::Read { path: f, source }),
        };
        out.push(state);
    }
    Ok(out)
}

/// Online CPUs now.
pub fn online_count(cpus: &[CpuState]) -> u32 {
    cpus.iter().filter(|c| c.online).count() as u32
}

/// The writes (cpu, online) that take the online count to `want`: the lowest offline
/// CPUs come online, the highest online ones go offline. Refused below `floor` (at
/// least 1), and when more CPUs are wanted than are present.
pub fn plan(cpus: &[CpuState], want: u32, floor: u32) -> Result<Vec<(u32, bool)>, ActuateError> {
    let floor = floor.max(1);
    if want < floor {
        return Err(ActuateError::Refused(format!(
            "{want} vCPUs is below the floor of {floor} (guest_actuator.cpu_floor)"
        )));
    }
    let have = online_count(cpus);
    if want > have {
        let mut off: Vec<u32> = cpus
            .iter()
            .filter(|c| !c.online && c.switchable)
            .map(|c| c.cpu)
            .collect();
        off.sort_unstable();
        let need = (want - have) as usize;
        if off.len() < need {
            return Err(ActuateError::Unsupported(format!(
                "{want} vCPUs wanted but only {} are present: the hypervisor must hot-add {} more first",
                cpus.len(),
                need - off.len()
            )));
        }
        Ok(off.into_iter().take(need).map(|c| (c, true)).collect())
    } else {
        let mut on: Vec<u32> = cpus
            .iter()
            .filter(|c| c.online && c.switchable && c.cpu != 0)
            .map(|c| c.cpu)
            .collect();
        on.sort_unstable_by(|a, b| b.cmp(a));
        let need = (have - want) as usize;
        if on.len() < need {
            return Err(ActuateError::Refused(format!(
                "cannot take {need} CPUs offline: only {} can go (cpu0 and CPUs without an online file stay)",
                on.len()
            )));
        }
        Ok(on.into_iter().take(need).map(|c| (c, false)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(
            parse_cpu_list("0-3,5,7-8\n").unwrap(),
            [0, 1, 2, 3, 5, 7, 8]
        );
        assert_eq!(parse_cpu_list("0").unwrap(), [0]);
        assert_eq!(parse_cpu_list("\n").unwrap(), Vec::<u32>::new());
        for bad in ["3-1", "a", "0-99999", "1--2"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad}");
        }
    }

    fn cpus(states: &[(bool, bool)]) -> Vec<CpuState> {
        states
            .iter()
            .enumerate()
            .map(|(i, &(online, switchable))| CpuState {
                cpu: i as u32,
                online,
                switchable,
            })
            .collect()
    }

    #[test]
    fn plans_never_touch_cpu0_or_cross_the_floor() {
        let c = cpus(&[(true, false), (true, true), (false, true), (false, true)]);
        assert_eq!(plan(&c, 4, 1).unwrap(), [(2, true), (3, true)]);
        assert_eq!(plan(&c, 3, 1).unwrap(), [(2, true)]);
        assert_eq!(plan(&c, 1, 1).unwrap(), [(1, false)]);
        assert!(plan(&c, 2, 1).unwrap().is_empty());
        assert!(matches!(plan(&c, 5, 1), Err(ActuateError::Unsupported(_))));
        assert!(matches!(plan(&c, 1, 2), Err(ActuateError::Refused(_))));
        assert!(matches!(plan(&c, 0, 0), Err(ActuateError::Refused(_))));
        // cpu0 with an online file is still never offlined.
        let c = cpus(&[(true, true), (true, true)]);
        assert_eq!(plan(&c, 1, 1).unwrap(), [(1, false)]);
    }
}
