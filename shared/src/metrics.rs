//! The metric registry: every series the agent produces, with its stable numeric id,
//! its name, unit and precision. The ids go on the wire and into the coordinator's
//! database, so an id is never reused for another meaning; names follow the rule in
//! docs/metrics.md. This module only describes metrics; collecting them is the agent's job.

use serde::Serialize;

/// Stable numeric id of a metric on the wire.
pub type MetricId = u16;

/// What one series of a metric is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One series per host.
    Host,
    /// One series per block device, plus a total over whole disks.
    Disk,
    /// One series per network interface, plus a total without loopback.
    Nic,
}

/// Description of one metric.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MetricDef {
    pub id: MetricId,
    pub name: &'static str,
    pub unit: &'static str,
    /// Precision as a decimal exponent: values are kept to 10^scale of `unit`.
    pub scale: i8,
    pub scope: Scope,
    pub help: &'static str,
}

const fn m(
    id: MetricId,
    name: &'static str,
    unit: &'static str,
    scale: i8,
    scope: Scope,
    help: &'static str,
) -> MetricDef {
    MetricDef {
        id,
        name,
        unit,
        scale,
        scope,
        help,
    }
}

/// Index of each host metric in [`HOST`] and in a sample's host array.
pub mod host {
    pub const CPU_USER_RATIO: usize = 0;
    pub const CPU_NICE_RATIO: usize = 1;
    pub const CPU_SYSTEM_RATIO: usize = 2;
    pub const CPU_IOWAIT_RATIO: usize = 3;
    pub const CPU_IRQ_RATIO: usize = 4;
    pub const CPU_SOFTIRQ_RATIO: usize = 5;
    pub const CPU_STEAL_RATIO: usize = 6;
    pub const CPU_IDLE_RATIO: usize = 7;
    /// The eight `_cores` metrics follow the eight ratios in the same mode order.
    pub const CPU_USER_CORES: usize = 8;
    pub const CPU_IDLE_CORES: usize = 15;
    pub const CPU_ONLINE: usize = 16;
    pub const LOAD_1M: usize = 17;
    pub const LOAD_5M: usize = 18;
    pub const LOAD_15M: usize = 19;
    pub const PROCS_RUNNING: usize = 20;
    pub const PROCS_BLOCKED: usize = 21;
    pub const CTXT_PER_S: usize = 22;
    pub const INTR_PER_S: usize = 23;
    pub const MEM_TOTAL: usize = 24;
    pub const MEM_AVAILABLE: usize = 25;
    pub const MEM_USED: usize = 26;
    pub const MEM_CACHED: usize = 27;
    pub const MEM_BUFFERS: usize = 28;
    pub const MEM_DIRTY: usize = 29;
    pub const MEM_SWAP_USED: usize = 30;
    pub const MEM_MAJFLT_PER_S: usize = 31;
    pub const MEM_MINFLT_PER_S: usize = 32;
    /// PSI block: for each resource (cpu, memory, io) four metrics in the order
    /// some_avg10, full_avg10, some_stall, full_stall.
    pub const PSI_CPU: usize = 33;
    pub const PSI_MEMORY: usize = 37;
    pub const PSI_IO: usize = 41;
    pub const COUNT: usize = 45;
}

/// Index of each per-disk metric in [`DISK`].
pub mod disk {
    pub const READ_BYTES_PER_S: usize = 0;
    pub const WRITE_BYTES_PER_S: usize = 1;
    pub const READ_IOPS: usize = 2;
    pub const WRITE_IOPS: usize = 3;
    pub const INFLIGHT: usize = 4;
    pub const BUSY_PCT: usize = 5;
    pub const AVG_REQUEST_BYTES: usize = 6;
    pub const COUNT: usize = 7;
}

/// Index of each per-interface metric in [`NIC`].
pub mod nic {
    pub const RX_BYTES_PER_S: usize = 0;
    pub const TX_BYTES_PER_S: usize = 1;
    pub const RX_PACKETS_PER_S: usize = 2;
    pub const TX_PACKETS_PER_S: usize = 3;
    pub const RX_ERRORS_PER_S: usize = 4;
    pub const TX_ERRORS_PER_S: usize = 5;
    pub const RX_DROPS_PER_S: usize = 6;
    pub const TX_DROPS_PER_S: usize = 7;
    pub const COUNT: usize = 8;
}

use Scope::{Disk, Host, Nic};

/// Host-wide metrics, in the order of the indices in [`host`]. Ids are index + 1.
pub const HOST: [MetricDef; host::COUNT] = [
    m(
        1,
        "cpu.user_ratio",
        "ratio",
        -4,
        Host,
        "Share of all online CPU capacity spent in user mode",
    ),
    m(
        2,
        "cpu.nice_ratio",
        "ratio",
        -4,
        Host,
        "Share of CPU capacity in user mode at low priority (nice)",
    ),
    m(
        3,
        "cpu.system_ratio",
        "ratio",
        -4,
        Host,
        "Share of CPU capacity in kernel mode",
    ),
    m(
        4,
        "cpu.iowait_ratio",
        "ratio",
        -4,
        Host,
        "Share of CPU capacity idle while I/O was outstanding",
    ),
    m(
        5,
        "cpu.irq_ratio",
        "ratio",
        -4,
        Host,
        "Share of CPU capacity serving hardware interrupts",
    ),
    m(
        6,
        "cpu.softirq_ratio",
        "ratio",
        -4,
        Host,
        "Share of CPU capacity serving soft interrupts",
    ),
    m(
        7,
        "cpu.steal_ratio",
        "ratio",
        -4,
        Host,
        "Share of CPU capacity taken by the hypervisor for others",
    ),
    m(
        8,
        "cpu.idle_ratio",
        "ratio",
        -4,
        Host,
        "Share of CPU capacity idle",
    ),
    m(
        9,
        "cpu.user_cores",
        "cores",
        -3,
        Host,
        "CPU in user mode, in cores",
    ),
    m(
        10,
        "cpu.nice_cores",
        "cores",
        -3,
        Host,
        "CPU in nice user mode, in cores",
    ),
    m(
        11,
        "cpu.system_cores",
        "cores",
        -3,
        Host,
        "CPU in kernel mode, in cores",
    ),
    m(
        12,
        "cpu.iowait_cores",
        "cores",
        -3,
        Host,
        "CPU idle waiting for I/O, in cores",
    ),
    m(
        13,
        "cpu.irq_cores",
        "cores",
        -3,
        Host,
        "CPU serving hardware interrupts, in cores",
    ),
    m(
        14,
        "cpu.softirq_cores",
        "cores",
        -3,
        Host,
        "CPU serving soft interrupts, in cores",
    ),
    m(
        15,
        "cpu.steal_cores",
        "cores",
        -3,
        Host,
        "CPU stolen by the hypervisor, in cores",
    ),
    m(
        16,
        "cpu.idle_cores",
        "cores",
        -3,
        Host,
        "Idle CPU, in cores",
    ),
    m(17, "cpu.online_count", "cpus", 0, Host, "Online vCPUs"),
    m(
        18,
        "load.avg1_tasks",
        "tasks",
        -2,
        Host,
        "1-minute load average",
    ),
    m(
        19,
        "load.avg5_tasks",
        "tasks",
        -2,
        Host,
        "5-minute load average",
    ),
    m(
        20,
        "load.avg15_tasks",
        "tasks",
        -2,
        Host,
        "15-minute load average",
    ),
    m(
        21,
        "procs.running_count",
        "tasks",
        0,
        Host,
        "Runnable tasks (procs_running)",
    ),
    m(
        22,
        "procs.blocked_count",
        "tasks",
        0,
        Host,
        "Tasks blocked on I/O (procs_blocked)",
    ),
    m(
        23,
        "cpu.context_switches_per_s",
        "1/s",
        0,
        Host,
        "Context switches per second",
    ),
    m(
        24,
        "cpu.interrupts_per_s",
        "1/s",
        0,
        Host,
        "Interrupts per second",
    ),
    m(25, "mem.total_bytes", "bytes", 3, Host, "MemTotal"),
    m(
        26,
        "mem.available_bytes",
        "bytes",
        3,
        Host,
        "MemAvailable: memory usable without swapping",
    ),
    m(
        27,
        "mem.used_bytes",
        "bytes",
        3,
        Host,
        "MemTotal - MemAvailable",
    ),
    m(
        28,
        "mem.cached_bytes",
        "bytes",
        3,
        Host,
        "Page cache (Cached)",
    ),
    m(
        29,
        "mem.buffers_bytes",
        "bytes",
        3,
        Host,
        "Block device buffers (Buffers)",
    ),
    m(
        30,
        "mem.dirty_bytes",
        "bytes",
        3,
        Host,
        "Dirty pages waiting for write-back",
    ),
    m(
        31,
        "mem.swap_used_bytes",
        "bytes",
        3,
        Host,
        "SwapTotal - SwapFree",
    ),
    m(
        32,
        "mem.major_faults_per_s",
        "1/s",
        0,
        Host,
        "Major page faults (pgmajfault) per second",
    ),
    m(
        33,
        "mem.minor_faults_per_s",
        "1/s",
        0,
        Host,
        "Minor page faults (pgfault - pgmajfault) per second",
    ),
    m(
        34,
        "psi.cpu.some_avg10_pct",
        "percent",
        -2,
        Host,
        "PSI cpu some avg10",
    ),
    m(
        35,
        "psi.cpu.full_avg10_pct",
        "percent",
        -2,
        Host,
        "PSI cpu full avg10",
    ),
    m(
        36,
        "psi.cpu.some_stall_ratio",
        "ratio",
        -4,
        Host,
        "PSI cpu some: stalled time per wall time over the tick",
    ),
    m(
        37,
        "psi.cpu.full_stall_ratio",
        "ratio",
        -4,
        Host,
        "PSI cpu full: stalled time per wall time over the tick",
    ),
    m(
        38,
        "psi.memory.some_avg10_pct",
        "percent",
        -2,
        Host,
        "PSI memory some avg10",
    ),
    m(
        39,
        "psi.memory.full_avg10_pct",
        "percent",
        -2,
        Host,
        "PSI memory full avg10",
    ),
    m(
        40,
        "psi.memory.some_stall_ratio",
        "ratio",
        -4,
        Host,
        "PSI memory some: stalled time per wall time",
    ),
    m(
        41,
        "psi.memory.full_stall_ratio",
        "ratio",
        -4,
        Host,
        "PSI memory full: stalled time per wall time",
    ),
    m(
        42,
        "psi.io.some_avg10_pct",
        "percent",
        -2,
        Host,
        "PSI io some avg10",
    ),
    m(
        43,
        "psi.io.full_avg10_pct",
        "percent",
        -2,
        Host,
        "PSI io full avg10",
    ),
    m(
        44,
        "psi.io.some_stall_ratio",
        "ratio",
        -4,
        Host,
        "PSI io some: stalled time per wall time",
    ),
    m(
        45,
        "psi.io.full_stall_ratio",
        "ratio",
        -4,
        Host,
        "PSI io full: stalled time per wall time",
    ),
];

/// Per-disk metrics; the total series has no instance. Ids are 100 + index.
pub const DISK: [MetricDef; disk::COUNT] = [
    m(
        100,
        "disk.read_bytes_per_s",
        "bytes/s",
        0,
        Disk,
        "Bytes read per second",
    ),
    m(
        101,
        "disk.write_bytes_per_s",
        "bytes/s",
        0,
        Disk,
        "Bytes written per second",
    ),
    m(
        102,
        "disk.read_iops",
        "1/s",
        -1,
        Disk,
        "Completed reads per second",
    ),
    m(
        103,
        "disk.write_iops",
        "1/s",
        -1,
        Disk,
        "Completed writes per second",
    ),
    m(
        104,
        "disk.inflight_count",
        "requests",
        0,
        Disk,
        "Requests in flight at the end of the tick",
    ),
    m(
        105,
        "disk.busy_pct",
        "percent",
        -1,
        Disk,
        "Time the device had I/O in flight (io_ticks), % of wall time",
    ),
    m(
        106,
        "disk.avg_request_bytes",
        "bytes",
        0,
        Disk,
        "Average size of the requests completed in the tick",
    ),
];

/// Per-interface metrics; the total series has no instance and leaves out loopback.
/// Ids are 200 + index.
pub const NIC: [MetricDef; nic::COUNT] = [
    m(
        200,
        "net.rx_bytes_per_s",
        "bytes/s",
        0,
        Nic,
        "Bytes received per second",
    ),
    m(
        201,
        "net.tx_bytes_per_s",
        "bytes/s",
        0,
        Nic,
        "Bytes sent per second",
    ),
    m(
        202,
        "net.rx_packets_per_s",
        "1/s",
        0,
        Nic,
        "Packets received per second",
    ),
    m(
        203,
        "net.tx_packets_per_s",
        "1/s",
        0,
        Nic,
        "Packets sent per second",
    ),
    m(
        204,
        "net.rx_errors_per_s",
        "1/s",
        0,
        Nic,
        "Receive errors per second",
    ),
    m(
        205,
        "net.tx_errors_per_s",
        "1/s",
        0,
        Nic,
        "Transmit errors per second",
    ),
    m(
        206,
        "net.rx_drops_per_s",
        "1/s",
        0,
        Nic,
        "Received packets dropped per second",
    ),
    m(
        207,
        "net.tx_drops_per_s",
        "1/s",
        0,
        Nic,
        "Transmitted packets dropped per second",
    ),
];

/// The `cpu.*_cores` metrics are not sent: the coordinator derives them from the
/// matching ratio times `cpu.online_count` of the same instant, which saves about a
/// fifth of the bytes of a batch. Returns the ratio's host index for a derived metric.
pub fn derived_from_ratio(host_index: usize) -> Option<usize> {
    (host::CPU_USER_CORES..=host::CPU_IDLE_CORES)
        .contains(&host_index)
        .then(|| host_index - host::CPU_USER_CORES + host::CPU_USER_RATIO)
}

/// Every metric, host first.
pub fn all() -> impl Iterator<Item = &'static MetricDef> {
    HOST.iter().chain(DISK.iter()).chain(NIC.iter())
}

/// Looks a metric up by its wire id.
pub fn by_id(id: MetricId) -> Option<&'static MetricDef> {
    match id {
        1..=45 => HOST.get(usize::from(id) - 1),
        100..=106 => DISK.get(usize::from(id) - 100),
        200..=207 => NIC.get(usize::from(id) - 200),
        _ => None,
    }
}

/// Looks a metric up by its name.
pub fn by_name(name: &str) -> Option<&'static MetricDef> {
    all().find(|d| d.name == name)
}

/// Parses a series selector `NAME` or `NAME@INSTANCE` (for example
/// `disk.read_bytes_per_s@vda`) into the metric and its instance.
pub fn parse_series(selector: &str) -> Option<(&'static MetricDef, Option<&str>)> {
    let (name, instance) = match selector.split_once('@') {
        Some((n, i)) if !i.is_empty() => (n, Some(i)),
        Some(_) => return None,
        None => (selector, None),
    };
    let def = by_name(name)?;
    if instance.is_some() && def.scope == Scope::Host {
        return None;
    }
    Some((def, instance))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_positions_and_names_are_unique() {
        for (i, d) in HOST.iter().enumerate() {
            assert_eq!(usize::from(d.id), i + 1, "{}", d.name);
        }
        for (i, d) in DISK.iter().enumerate() {
            assert_eq!(usize::from(d.id), i + 100, "{}", d.name);
        }
        for (i, d) in NIC.iter().enumerate() {
            assert_eq!(usize::from(d.id), i + 200, "{}", d.name);
        }
        let mut names: Vec<_> = all().map(|d| d.name).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
        for d in all() {
            assert_eq!(by_id(d.id).map(|x| x.name), Some(d.name));
            assert_eq!(by_name(d.name).map(|x| x.id), Some(d.id));
        }
        assert!(by_id(0).is_none() && by_id(46).is_none() && by_id(107).is_none());
    }

    #[test]
    fn names_follow_the_rule() {
        const SUFFIXES: [&str; 8] = [
            "_ratio", "_cores", "_count", "_bytes", "_per_s", "_iops", "_pct", "_tasks",
        ];
        for d in all() {
            assert!(
                d.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_')
            );
            assert!(SUFFIXES.iter().any(|s| d.name.ends_with(s)), "{}", d.name);
        }
    }

    #[test]
    fn series_selectors() {
        let (d, i) = parse_series("disk.read_bytes_per_s@vda").expect("valid");
        assert_eq!((d.id, i), (100, Some("vda")));
        let (d, i) = parse_series("cpu.user_ratio").expect("valid");
        assert_eq!((d.id, i), (1, None));
        assert!(parse_series("cpu.user_ratio@x").is_none());
        assert!(parse_series("disk.read_bytes_per_s@").is_none());
        assert!(parse_series("nope").is_none());
    }
}
