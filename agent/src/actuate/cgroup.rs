//! Limits on a delegated cgroup: the guest actuator's way of sharing a VM between
//! workloads (a slice gets N vCPUs' worth of CPU time, M MiB, some IOPS), not of growing
//! it. cgroup v2 (`cpu.max`, `memory.max`, `io.max`) and v1 for legacy guests
//! (`cpu.cfs_period_us`/`cpu.cfs_quota_us`, `memory.limit_in_bytes`,
//! `blkio.throttle.*_device`). Every write is read back.
//!
//! The group is `<parent>/<group>` under the cgroup root (v2) or under each
//! controller's hierarchy (v1); it is created when missing. What it is not: moving
//! processes into the group (whoever starts the workload does), or a cgroup library.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::ActuateError;

/// Which cgroup interface to use (`guest_actuator.cgroup_version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    /// v2 when the root is a cgroup2 mount (`cgroup.controllers` exists), else v1.
    #[default]
    Auto,
    V1,
    V2,
}

/// I/O limits of one block device (`MAJ:MIN`); None = leave, 0 = unlimited.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoMax {
    pub device: String,
    pub read_iops: Option<u64>,
    pub write_iops: Option<u64>,
    pub read_bps: Option<u64>,
    pub write_bps: Option<u64>,
}

/// The limits of one write; None = leave as is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Limits {
    pub cpu_quota_us: Option<u64>,
    pub cpu_period_us: u64,
    pub memory_bytes: Option<u64>,
    pub io: Option<IoMax>,
}

/// What the group's files say now. None = unlimited.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadBack {
    pub cpu_quota_us: Option<u64>,
    pub cpu_period_us: u64,
    pub memory_bytes: Option<u64>,
    pub io: Option<IoMax>,
}

/// `MAJ:MIN` with decimal numbers.
pub fn valid_device(s: &str) -> bool {
    match s.split_once(':') {
        Some((a, b)) => [a, b]
            .iter()
            .all(|p| (1..=10).contains(&p.len()) && p.bytes().all(|c| c.is_ascii_digit())),
        None => false,
    }
}

/// Group and parent names: `[a-z0-9._-]`, 1 to 64, not `.`/`..`, never a path.
pub fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// Resolves `Auto` by looking at the root.
pub fn resolve(root: &Path, v: CgroupVersion) -> Result<CgroupVersion, ActuateError> {
    match v {
        CgroupVersion::Auto if root.join("cgroup.controllers").exists() => Ok(CgroupVersion::V2),
        CgroupVersion::Auto if root.join("cpu").is_dir() || root.join("memory").is_dir() => {
            Ok(CgroupVersion::V1)
        }
        CgroupVersion::Auto => Err(ActuateError::Unsupported(format!(
            "no cgroup hierarchy under {}",
            root.display()
        ))),
        other => Ok(other),
    }
}

/// The group's directory for one controller (`cpu`, `memory`, `blkio`; v2 ignores it).
pub fn group_dir(
    root: &Path,
    v: CgroupVersion,
    controller: &str,
    parent: &str,
    group: &str,
) -> PathBuf {
    match v {
        CgroupVersion::V1 => root.join(controller).join(parent).join(group),
        _ => root.join(parent).join(group),
    }
}

fn write(path: &Path, value: &str) -> Result<(), ActuateError> {
    std::fs::write(path, value).map_err(|source| ActuateError::Write {
        path: path.to_owned(),
        value: value.to_owned(),
        source,
    })
}

fn read(path: &Path) -> Result<String, ActuateError> {
    std::fs::read_to_string(path).map_err(|source| ActuateError::Read {
        path: path.to_owned(),
        source,
    })
}

fn ensure_dir(dir: &Path) -> Result<(), ActuateError> {
    std::fs::create_dir_all(dir).map_err(|source| ActuateError::Write {
        path: dir.to_owned(),
        value: "(mkdir)".into(),
        source,
    })
}

/// v2: makes sure the parent hands `controller` down to its children.
fn enable_v2(root: &Path, parent: &str, controller: &str) -> Result<(), ActuateError> {
    let control = root.join(parent).join("cgroup.subtree_control");
    let now = read(&control)?;
    if now.split_whitespace().any(|c| c == controller) {
        return Ok(());
    }
    write(&control, &format!("+{controller}"))
}

fn io_v2_line(io: &IoMax) -> String {
    let mut line = io.device.clone();
    for (k, v) in [
        ("riops", io.read_iops),
        ("wiops", io.write_iops),
        ("rbps", io.read_bps),
        ("wbps", io.write_bps),
    ] {
        if let Some(v) = v {
            if v == 0 {
                line.push_str(&format!(" {k}=max"));
            } else {
                line.push_str(&format!(" {k}={v}"));
            }
        }
    }
    line
}

/// Writes the limits; returns one line per change, for people.
pub fn apply(
    root: &Path,
    v: CgroupVersion,
    parent: &str,
    group: &str,
    l: &Limits,
) -> Result<Vec<String>, ActuateError> {
    if !valid_name(parent) || !valid_name(group) {
        return Err(ActuateError::Invalid(format!(
            "cgroup {parent:?}/{group:?} is not two names of [a-z0-9._-]"
        )));
    }
    if let Some(io) = &l.io
        && !valid_device(&io.device)
    {
        return Err(ActuateError::Invalid(format!(
            "{:?} is not a MAJ:MIN block device",
            io.device
        )));
    }
    let v = resolve(root, v)?;
    let mut done = Vec::new();
    if let Some(q) = l.cpu_quota_us {
        let dir = group_dir(root, v, "cpu", parent, group);
        if v == CgroupVersion::V2 {
            ensure_dir(&root.join(parent))?;
            enable_v2(root, parent, "cpu")?;
            ensure_dir(&dir)?;
            write(&dir.join("cpu.max"), &format!("{q} {}", l.cpu_period_us))?;
        } else {
            ensure_dir(&dir)?;
            write(&dir.join("cpu.cfs_period_us"), &l.cpu_period_us.to_string())?;
            write(&dir.join("cpu.cfs_quota_us"), &q.to_string())?;
        }
        done.push(format!("cpu quota {q} us per {} us", l.cpu_period_us));
    }
    if let Some(m) = l.memory_bytes {
        let dir = group_dir(root, v, "memory", parent, group);
        if v == CgroupVersion::V2 {
            ensure_dir(&root.join(parent))?;
            enable_v2(root, parent, "memory")?;
            ensure_dir(&dir)?;
            write(&dir.join("memory.max"), &m.to_string())?;
        } else {
            ensure_dir(&dir)?;
            write(&dir.join("memory.limit_in_bytes"), &m.to_string())?;
        }
        done.push(format!("memory limit {} MiB", m >> 20));
    }
    if let Some(io) = &l.io {
        let dir = group_dir(root, v, "blkio", parent, group);
        if v == CgroupVersion::V2 {
            ensure_dir(&root.join(parent))?;
            enable_v2(root, parent, "io")?;
            ensure_dir(&dir)?;
            write(&dir.join("io.max"), &io_v2_line(io))?;
        } else {
            ensure_dir(&dir)?;
            for (file, val) in [
                ("blkio.throttle.read_iops_device", io.read_iops),
                ("blkio.throttle.write_iops_device", io.write_iops),
                ("blkio.throttle.read_bps_device", io.read_bps),
                ("blkio.throttle.write_bps_device", io.write_bps),
            ] {
                if let Some(val) = val {
                    // v1 removes a device's limit when it is set to 0.
                    write(&dir.join(file), &format!("{} {val}", io.device))?;
                }
            }
        }
        done.push(format!("io limits of {}", io.device));
    }
    Ok(done)
}

fn parse_num(path: &Path, s: &str) -> Result<u64, ActuateError> {
    s.trim().parse().map_err(|_| ActuateError::Parse {
        path: path.to_owned(),
        detail: format!("{:?} is not a number", s.trim()),
    })
}

/// A v1 limit that means "none": -1 for the CFS quota, a huge page-rounded number for
/// memory (above 2^62 on every architecture).
fn v1_unlimited(s: &str) -> bool {
    let s = s.trim();
    s == "-1" || s.parse::<u64>().is_ok_and(|n| n >= 1 << 62)
}

/// Reads the limits back (io only for `device`).
pub fn read_back(
    root: &Path,
    v: CgroupVersion,
    parent: &str,
    group: &str,
    device: Option<&str>,
) -> Result<ReadBack, ActuateError> {
    let v = resolve(root, v)?;
    let mut out = ReadBack::default();
    let cpu = group_dir(root, v, "cpu", parent, group);
    let mem = group_dir(root, v, "memory", parent, group);
    if v == CgroupVersion::V2 {
        let p = cpu.join("cpu.max");
        if p.exists() {
            let text = read(&p)?;
            let mut it = text.split_whitespace();
            let q = it.next().unwrap_or("max");
            out.cpu_quota_us = if q == "max" {
                None
            } else {
                Some(parse_num(&p, q)?)
            };
            out.cpu_period_us = parse_num(&p, it.next().unwrap_or("100000"))?;
        }
        let p = mem.join("memory.max");
        if p.exists() {
            let t = read(&p)?;
            out.memory_bytes = if t.trim() == "max" {
                None
            } else {
                Some(parse_num(&p, &t)?)
            };
        }
        if let Some(dev) = device {
            let p = group_dir(root, v, "io", parent, group).join("io.max");
            let mut io = IoMax {
                device: dev.to_owned(),
                read_iops: Some(0),
                write_iops: Some(0),
                read_bps: Some(0),
                write_bps: Some(0),
            };
            if p.exists() {
                let text = read(&p)?;
                for line in text
                    .lines()
                    .filter(|l| l.split_whitespace().next() == Some(dev))
                {
                    for kv in line.split_whitespace().skip(1) {
                        let Some((k, val)) = kv.split_once('=') else {
                            continue;
                        };
                        let n = if val == "max" { 0 } else { parse_num(&p, val)? };
                        match k {
                            "riops" => io.read_iops = Some(n),
                            "wiops" => io.write_iops = Some(n),
                            "rbps" => io.read_bps = Some(n),
                            "wbps" => io.write_bps = Some(n),
                            _ => {}
                        }
                    }
                }
            }
            out.io = Some(io);
        }
    } else {
        let p = cpu.join("cpu.cfs_quota_us");
        if p.exists() {
            let t = read(&p)?;
            out.cpu_quota_us = if v1_unlimited(&t) {
                None
            } else {
                Some(parse_num(&p, &t)?)
            };
            let pp = cpu.join("cpu.cfs_period_us");
            out.cpu_period_us = parse_num(&pp, &read(&pp)?)?;
        }
        let p = mem.join("memory.limit_in_bytes");
        if p.exists() {
            let t = read(&p)?;
            out.memory_bytes = if v1_unlimited(&t) {
                None
            } else {
                Some(parse_num(&p, &t)?)
            };
        }
        if let Some(dev) = device {
            let blk = group_dir(root, v, "blkio", parent, group);
            let mut vals = [Some(0u64); 4];
            for (i, file) in [
                "blkio.throttle.read_iops_device",
                "blkio.throttle.write_iops_device",
                "blkio.throttle.read_bps_device",
                "blkio.throttle.write_bps_device",
            ]
            .iter()
            .enumerate()
            {
                let p = blk.join(file);
                if !p.exists() {
                    continue;
                }
                let text = read(&p)?;
                for line in text.lines() {
                    let mut it = line.split_whitespace();
                    if it.next() == Some(dev) {
                        vals[i] = Some(parse_num(&p, it.next().unwrap_or(""))?);
                    }
                }
            }
            out.io = Some(IoMax {
                device: dev.to_owned(),
                read_iops: vals[0],
                write_iops: vals[1],
                read_bps: vals[2],
                write_bps: vals[3],
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_devices() {
        assert!(valid_name("persona.slice") && valid_name("shared-1"));
        for bad in ["..", ".", "a/b", "", "UPPER", "x y"] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(valid_device("8:0") && valid_device("253:16"));
        for bad in ["8", "8:", ":0", "a:b", "8:0 riops=1"] {
            assert!(!valid_device(bad), "{bad}");
        }
        let line = io_v2_line(&IoMax {
            device: "8:0".into(),
            read_iops: Some(100),
            write_bps: Some(0),
            ..IoMax::default()
        });
        assert_eq!(line, "8:0 riops=100 wbps=max");
    }
}
