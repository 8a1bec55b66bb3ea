//! What a resize asks for and what came of it, shared by the coordinator (which decides
//! and, for hypervisor actuators, applies) and the agent (which applies in the guest).
//! Every field is optional: a resize names only what it changes. This module holds only
//! the types; the actuators live in the agent and the coordinator.

use serde::{Deserialize, Serialize};

/// A requested change of size.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ResizeRequest {
    /// Online vCPUs wanted.
    pub vcpus: Option<u32>,
    /// Memory the guest should have, in MiB.
    pub memory_mib: Option<u64>,
    pub disk: Option<DiskLimits>,
    pub net: Option<NetLimits>,
    /// The operator allows changes that need a restart of the VM.
    pub allow_restart: bool,
}

/// I/O limits for one block device (None = leave as is, 0 = unlimited).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DiskLimits {
    /// The device as the platform names it (QEMU drive/qdev id, libvirt target, guest
    /// `MAJ:MIN` for cgroups).
    pub device: String,
    pub read_iops: Option<u64>,
    pub write_iops: Option<u64>,
    pub read_bps: Option<u64>,
    pub write_bps: Option<u64>,
}

/// Bandwidth limits for one network interface, in KiB/s (None = leave as is).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NetLimits {
    pub interface: String,
    pub inbound_kibps: Option<u64>,
    pub outbound_kibps: Option<u64>,
}

/// What an actuator did with a request.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ResizeOutcome {
    /// Changes made live, for people ("vcpus 2 -> 4").
    pub applied: Vec<String>,
    /// Changes this actuator can make only with a restart and did not make.
    pub needs_restart: Vec<String>,
    /// The new size was read back (hypervisor query or guest facts) and matches.
    pub verified: bool,
    pub observed_vcpus: Option<u32>,
    pub observed_memory_mib: Option<u64>,
}
