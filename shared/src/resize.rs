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
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
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

/// The kinds of change a [`ResizeRequest`] can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// More online vCPUs.
    VcpusUp,
    /// Fewer online vCPUs.
    VcpusDown,
    /// More memory.
    MemoryUp,
    /// Less memory.
    MemoryDown,
    /// Block device I/O limits.
    Disk,
    /// Network bandwidth limits.
    Net,
}

impl ChangeKind {
    /// Every kind, in the order plans list them.
    pub const ALL: [ChangeKind; 6] = [
        ChangeKind::VcpusUp,
        ChangeKind::VcpusDown,
        ChangeKind::MemoryUp,
        ChangeKind::MemoryDown,
        ChangeKind::Disk,
        ChangeKind::Net,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::VcpusUp => "vcpus_up",
            ChangeKind::VcpusDown => "vcpus_down",
            ChangeKind::MemoryUp => "memory_up",
            ChangeKind::MemoryDown => "memory_down",
            ChangeKind::Disk => "disk",
            ChangeKind::Net => "net",
        }
    }
}

/// How an actuator can make one kind of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// While the VM runs.
    Live,
    /// Only by restarting the VM, which needs the operator's opt-in
    /// ([`ResizeRequest::allow_restart`]).
    Restart,
    /// Not at all.
    Unsupported,
}

/// One change of a request, with how the actuator would make it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedChange {
    pub kind: ChangeKind,
    pub capability: Capability,
    /// For people: "vcpus 2 -> 4", "memory 4096 MiB above maxmem 2048 MiB".
    pub detail: String,
}

/// What an actuator would do with a request, before it does anything: the engine shows
/// this to the operator and never sends a change that needs a restart unless the
/// request allows one.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ResizePlan {
    /// Changes made while the VM runs.
    pub live: Vec<PlannedChange>,
    /// Changes that need a restart; made only when the request allows it.
    pub restart: Vec<PlannedChange>,
    /// Changes this actuator cannot make; a request with any is refused as a whole.
    pub unsupported: Vec<PlannedChange>,
}

impl ResizePlan {
    /// Sorts planned changes into the three lists.
    pub fn push(&mut self, change: PlannedChange) {
        match change.capability {
            Capability::Live => self.live.push(change),
            Capability::Restart => self.restart.push(change),
            Capability::Unsupported => self.unsupported.push(change),
        }
    }

    /// True when every change can be made without a restart.
    pub fn is_live_only(&self) -> bool {
        self.restart.is_empty() && self.unsupported.is_empty()
    }
}

/// How far the guest's `MemTotal` may fall below the memory it was given: the kernel
/// keeps its own image, page tables and crash reservations out of `MemTotal`, which is
/// a few percent of RAM on small VMs. A sixteenth, or 96 MiB if more, covers that.
fn memtotal_slack_mib(memory_mib: u64) -> u64 {
    (memory_mib / 16).max(96)
}

/// Whether the agent's reported facts show the size a guest resize asked for: the
/// online vCPU count exactly, and `MemTotal` within the kernel's reservations below the
/// requested memory (never above it by more than 1 MiB). Disk and network limits are
/// not part of the facts, so a request that carries them is not verified here.
pub fn verify_against_facts(req: &ResizeRequest, facts: &crate::facts::HostFacts) -> bool {
    if req.disk.is_some() || req.net.is_some() {
        return false;
    }
    if let Some(v) = req.vcpus
        && facts.cpus_online != v
    {
        return false;
    }
    if let Some(m) = req.memory_mib {
        let have = facts.mem_total_bytes >> 20;
        if have > m + 1 || have + memtotal_slack_mib(m) < m {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::HostFacts;

    fn facts(cpus: u32, mem_mib: u64) -> HostFacts {
        HostFacts {
            cpus_online: cpus,
            mem_total_bytes: mem_mib << 20,
            ..HostFacts::default()
        }
    }

    #[test]
    fn facts_verify_vcpus_exactly_and_memory_within_the_kernel_reserve() {
        let req = ResizeRequest {
            vcpus: Some(4),
            memory_mib: Some(4096),
            ..ResizeRequest::default()
        };
        assert!(verify_against_facts(&req, &facts(4, 4096)));
        // A 4 GiB guest typically shows about 3.8 GiB of MemTotal.
        assert!(verify_against_facts(&req, &facts(4, 3900)));
        assert!(!verify_against_facts(&req, &facts(2, 4096)));
        assert!(!verify_against_facts(&req, &facts(4, 2048)));
        assert!(!verify_against_facts(&req, &facts(4, 8192)));
        let small = ResizeRequest {
            memory_mib: Some(512),
            ..ResizeRequest::default()
        };
        assert!(verify_against_facts(&small, &facts(1, 440)));
        assert!(!verify_against_facts(&small, &facts(1, 256)));
        // Limits are not in the facts: never claimed verified from them.
        let disk = ResizeRequest {
            disk: Some(DiskLimits::default()),
            ..ResizeRequest::default()
        };
        assert!(!verify_against_facts(&disk, &facts(1, 440)));
    }

    #[test]
    fn plans_sort_changes_by_capability() {
        let mut p = ResizePlan::default();
        for (kind, capability) in [
            (ChangeKind::VcpusUp, Capability::Live),
            (ChangeKind::MemoryUp, Capability::Restart),
            (ChangeKind::Net, Capability::Unsupported),
        ] {
            p.push(PlannedChange {
                kind,
                capability,
                detail: kind.as_str().into(),
            });
        }
        assert_eq!(
            (p.live.len(), p.restart.len(), p.unsupported.len()),
            (1, 1, 1)
        );
        assert!(!p.is_live_only());
        assert!(ResizePlan::default().is_live_only());
    }
}
