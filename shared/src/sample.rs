//! One instant of a machine as the agent sees it: host-wide values, per-device and
//! per-interface values, and the busiest processes. The agent fills one `Sample` in
//! place every tick (so steady-state sampling does not allocate); the batch builder
//! turns a run of samples into columns. NaN means "not available at this instant".

use serde::{Deserialize, Serialize};

use crate::metrics::{disk, host, nic};

/// Values of one named device or interface.
#[derive(Debug, Clone, PartialEq)]
pub struct Device<const N: usize> {
    pub name: String,
    pub values: [f64; N],
}

impl<const N: usize> Device<N> {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            values: [f64::NAN; N],
        }
    }
}

/// A block device's values, indexed by [`crate::metrics::disk`].
pub type DiskValues = Device<{ disk::COUNT }>;
/// A network interface's values, indexed by [`crate::metrics::nic`].
pub type NicValues = Device<{ nic::COUNT }>;

/// One process among the busiest. Only the kernel's `comm` name is kept, never the
/// command line, which can carry secrets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcEntry {
    pub comm: String,
    /// CPU used since the previous process scan, in % of one core.
    pub cpu_pct: f32,
    pub rss_bytes: u64,
}

/// Everything sampled at one instant.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Wall-clock time of the sample, milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// Indexed by [`crate::metrics::host`].
    pub host: [f64; host::COUNT],
    /// Whole disks only (no partitions, loop or ram devices), sorted by name.
    pub disks: Vec<DiskValues>,
    /// Sum over `disks`.
    pub disk_total: [f64; disk::COUNT],
    /// Every interface including loopback, sorted by name.
    pub nics: Vec<NicValues>,
    /// Sum over `nics` without loopback.
    pub nic_total: [f64; nic::COUNT],
    /// Top processes by CPU, busiest first.
    pub top_cpu: Vec<ProcEntry>,
    /// Top processes by resident memory, largest first.
    pub top_rss: Vec<ProcEntry>,
}

impl Default for Sample {
    fn default() -> Self {
        Self {
            ts_ms: 0,
            host: [f64::NAN; host::COUNT],
            disks: Vec::new(),
            disk_total: [f64::NAN; disk::COUNT],
            nics: Vec::new(),
            nic_total: [f64::NAN; nic::COUNT],
            top_cpu: Vec::new(),
            top_rss: Vec::new(),
        }
    }
}
