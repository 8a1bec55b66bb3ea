//! `[guest_actuator]`, the guest actuator's table in the agent's config file: what it
//! acts on, its bounds, where the root helper listens and the cgroup slice it may limit.
//! Only the settings and their checks; acting on them is the rest of `actuate`.

use std::path::PathBuf;

use serde::Deserialize;

use super::cgroup::{self, CgroupVersion};
use crate::helper::protocol::DEFAULT_SOCKET;

/// What the guest actuator acts on (`guest_actuator.target`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestTarget {
    /// The VM itself: CPU and memory hotplug inside the guest.
    #[default]
    Machine,
    /// A delegated cgroup: limits, for sharing the VM.
    Slice,
}

/// `[guest_actuator]` in the agent's config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuestActuatorConfig {
    pub target: GuestTarget,
    /// Fewest online vCPUs a resize may leave (at least 1; cpu0 always stays).
    pub cpu_floor: u32,
    /// The root helper's socket; unset = write directly (the agent must be root).
    pub helper_socket: Option<PathBuf>,
    pub cgroup_root: PathBuf,
    pub cgroup_version: CgroupVersion,
    /// The delegated slice under the cgroup root.
    pub cgroup_parent: String,
    /// The group inside the slice that `slice` mode limits.
    pub cgroup_group: String,
    /// CFS period for CPU quotas.
    pub cpu_period_us: u64,
    /// Where sysfs is mounted: the agent's `sys_root` (not a key of this table).
    #[serde(skip)]
    pub sys_root: PathBuf,
}

impl Default for GuestActuatorConfig {
    fn default() -> Self {
        Self {
            target: GuestTarget::Machine,
            cpu_floor: 1,
            helper_socket: Some(PathBuf::from(DEFAULT_SOCKET)),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            cgroup_version: CgroupVersion::Auto,
            cgroup_parent: "persona.slice".into(),
            cgroup_group: "shared".into(),
            cpu_period_us: 100_000,
            sys_root: PathBuf::from("/sys"),
        }
    }
}

impl GuestActuatorConfig {
    /// Checks ranges and names; returns the offending key (for `AgentConfig::validate`).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(1..=8192).contains(&self.cpu_floor) {
            return Err((
                "guest_actuator.cpu_floor",
                format!("{} is outside 1..=8192", self.cpu_floor),
            ));
        }
        if !(1_000..=1_000_000).contains(&self.cpu_period_us) {
            return Err((
                "guest_actuator.cpu_period_us",
                format!("{} is outside 1000..=1000000", self.cpu_period_us),
            ));
        }
        for (key, name) in [
            ("guest_actuator.cgroup_parent", &self.cgroup_parent),
            ("guest_actuator.cgroup_group", &self.cgroup_group),
        ] {
            if !cgroup::valid_name(name) {
                return Err((key, format!("{name:?} is not 1 to 64 of [a-z0-9._-]")));
            }
        }
        Ok(())
    }
}
