//! Facts about the machine that change rarely: sent in the agent's Hello and again
//! when they change (a vCPU hot-added, a disk attached). They size the VM in the
//! coordinator's eyes, so they are read from the kernel, not from configuration.

use serde::{Deserialize, Serialize};

/// A block device as the kernel describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskFact {
    pub name: String,
    pub size_bytes: u64,
    pub rotational: bool,
    /// Model string from sysfs where the driver exposes one (virtio-blk does not).
    pub model: Option<String>,
}

/// A network interface as the kernel describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicFact {
    pub name: String,
    /// Link speed in Mbit/s; None where the driver reports none (virtio-net often).
    pub speed_mbps: Option<u64>,
    pub mtu: Option<u32>,
}

/// What the agent knows about its machine.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HostFacts {
    pub hostname: String,
    pub cpus_online: u32,
    pub cpus_possible: u32,
    pub mem_total_bytes: u64,
    pub disks: Vec<DiskFact>,
    pub nics: Vec<NicFact>,
    /// PRETTY_NAME from os-release.
    pub os_release: Option<String>,
    pub kernel: Option<String>,
    /// For example "kvm", "xen", "microsoft", "none"; None when it cannot be told.
    pub virtualization: Option<String>,
    /// Cloud or DMI instance id where readable (for example /sys/class/dmi/id/product_uuid).
    pub instance_id: Option<String>,
    /// Whether /proc/pressure exists (PSI metrics are NaN otherwise).
    pub psi_available: bool,
}
