//! Disk collector: per-device throughput, IOPS, queue and utilisation from
//! `/proc/diskstats`, for whole disks only. A name is a whole disk when
//! `<sys>/block/<name>` exists (partitions live one level below); `loop*`, `ram*` and
//! `zram*` are left out entirely (they are memory or files, not storage: zram is
//! compressed RAM used as swap, and its I/O shows up as memory pressure). Stacked
//! devices (dm-*, md*: `<sys>/block/<name>/slaves` not empty) are listed per device but
//! kept out of the total so the same I/O is not counted twice. Sizes and models are
//! host facts, read in [`super::facts`].

use std::path::{Path, PathBuf};

use persona_shared::metrics::disk;
use persona_shared::sample::Sample;

use super::devices::{Registry, copy_out, finite_sum};
use super::parse::{elapsed_secs, fields, lines, parse_u64, rate, read_into};
use super::{CollectError, Source};

const FILE: &str = "diskstats";
/// /proc/diskstats counts sectors of 512 bytes whatever the device's block size.
const SECTOR: f64 = 512.0;

/// The counters of one /proc/diskstats line that we use.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct DiskCounters {
    pub reads: u64,
    pub sectors_read: u64,
    pub writes: u64,
    pub sectors_written: u64,
    pub in_flight: u64,
    pub io_ticks_ms: u64,
}

/// Parses one /proc/diskstats line into the device name and its counters. Lines with
/// fewer than the 11 classic counters (partitions on 2.6.25-era kernels) give None.
pub(crate) fn parse_line(line: &[u8]) -> Option<(&str, DiskCounters)> {
    let mut f = fields(line).skip(2);
    let name = std::str::from_utf8(f.next()?).ok()?;
    let mut v = [0u64; 10];
    for slot in &mut v {
        *slot = parse_u64(f.next()?)?;
    }
    Some((
        name,
        DiskCounters {
            reads: v[0],
            sectors_read: v[2],
            writes: v[4],
            sectors_written: v[6],
            in_flight: v[8],
            io_ticks_ms: v[9],
        },
    ))
}

/// Values of one disk between two readings `secs` apart. Rates are NaN when a counter
/// went backwards; busy % is clamped to 100 (io_ticks and our clock are read at slightly
/// different instants); the average request size is 0 when no request completed.
pub(crate) fn disk_values(
    prev: &DiskCounters,
    cur: &DiskCounters,
    secs: f64,
) -> [f64; disk::COUNT] {
    let mut v = [f64::NAN; disk::COUNT];
    v[disk::READ_BYTES_PER_S] = rate(prev.sectors_read, cur.sectors_read, secs) * SECTOR;
    v[disk::WRITE_BYTES_PER_S] = rate(prev.sectors_written, cur.sectors_written, secs) * SECTOR;
    v[disk::READ_IOPS] = rate(prev.reads, cur.reads, secs);
    v[disk::WRITE_IOPS] = rate(prev.writes, cur.writes, secs);
    v[disk::INFLIGHT] = cur.in_flight as f64;
    // io_ticks is in ms: ms per second / 10 = percent.
    v[disk::BUSY_PCT] = (rate(prev.io_ticks_ms, cur.io_ticks_ms, secs) / 10.0).min(100.0);
    let ops = cur
        .reads
        .checked_sub(prev.reads)
        .zip(cur.writes.checked_sub(prev.writes));
    let sectors = cur
        .sectors_read
        .checked_sub(prev.sectors_read)
        .zip(cur.sectors_written.checked_sub(prev.sectors_written));
    if let (Some((r, w)), Some((sr, sw))) = (ops, sectors)
        && secs > 0.0
    {
        let ops = r + w;
        v[disk::AVG_REQUEST_BYTES] = if ops == 0 {
            0.0
        } else {
            (sr + sw) as f64 * SECTOR / ops as f64
        };
    }
    v
}

/// How a device name found in /proc/diskstats is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Partition, loop, ram or zram: not reported.
    Excluded,
    /// Whole disk, in the list and in the total.
    Disk,
    /// Whole but stacked on other disks (device mapper, md): in the list only.
    Stacked,
}

/// Classifies a device by name and sysfs. Runs once per device when it first appears.
pub(crate) fn classify(sys_root: &Path, name: &str) -> Kind {
    if ["loop", "ram", "zram"].iter().any(|p| name.starts_with(p)) {
        return Kind::Excluded;
    }
    // sysfs spells a '/' in a device name (cciss/c0d0) as '!'.
    let dir = sys_root.join("block").join(name.replace('/', "!"));
    if !dir.is_dir() {
        return Kind::Excluded;
    }
    let stacked = std::fs::read_dir(dir.join("slaves")).is_ok_and(|mut d| d.next().is_some());
    if stacked { Kind::Stacked } else { Kind::Disk }
}

pub(crate) struct DiskState {
    kind: Kind,
    prev: Option<(u64, DiskCounters)>,
    values: [f64; disk::COUNT],
}

pub(crate) struct Disks {
    path: PathBuf,
    sys_root: PathBuf,
    pub(crate) devices: Registry<DiskState>,
}

impl Disks {
    pub(crate) fn new(proc_root: &Path, sys_root: &Path) -> Self {
        Self {
            path: proc_root.join(FILE),
            sys_root: sys_root.to_owned(),
            devices: Registry::new(),
        }
    }
}

impl Source for Disks {
    fn name(&self) -> &'static str {
        "disk"
    }

    fn collect(
        &mut self,
        now_ns: u64,
        buf: &mut Vec<u8>,
        out: &mut Sample,
    ) -> Result<(), CollectError> {
        read_into(&self.path, buf).map_err(|source| CollectError::Io { file: FILE, source })?;
        let mut parsed_any = false;
        self.devices.begin();
        for line in lines(buf) {
            let Some((name, cur)) = parse_line(line) else {
                continue;
            };
            parsed_any = true;
            let sys_root = &self.sys_root;
            let st = &mut self
                .devices
                .entry(name, |n| DiskState {
                    kind: classify(sys_root, n),
                    prev: None,
                    values: [f64::NAN; disk::COUNT],
                })
                .state;
            if st.kind == Kind::Excluded {
                continue;
            }
            st.values = match &st.prev {
                Some((t, p)) => disk_values(p, &cur, elapsed_secs(Some(*t), now_ns)),
                None => {
                    let mut v = [f64::NAN; disk::COUNT];
                    v[disk::INFLIGHT] = cur.in_flight as f64;
                    v
                }
            };
            st.prev = Some((now_ns, cur));
        }
        if !parsed_any && !buf.is_empty() {
            // Garbage, not "all disks gone": keep the known devices (no facts change).
            return Err(CollectError::Parse {
                file: FILE,
                what: "no line has the diskstats layout",
            });
        }
        self.devices.end();

        let listed = || {
            self.devices
                .iter()
                .filter(|d| d.state.kind != Kind::Excluded)
        };
        copy_out(
            listed().map(|d| (d.name.as_str(), &d.state.values)),
            &mut out.disks,
        );
        let counted = || {
            listed()
                .filter(|d| d.state.kind == Kind::Disk)
                .map(|d| &d.state.values)
        };
        let t = &mut out.disk_total;
        for i in [
            disk::READ_BYTES_PER_S,
            disk::WRITE_BYTES_PER_S,
            disk::READ_IOPS,
            disk::WRITE_IOPS,
            disk::INFLIGHT,
        ] {
            t[i] = finite_sum(counted().map(|v| v[i]));
        }
        // A sum of percentages means nothing: the total is the busiest disk.
        t[disk::BUSY_PCT] = counted()
            .map(|v| v[disk::BUSY_PCT])
            .filter(|v| v.is_finite())
            .fold(f64::NAN, f64::max);
        let ops = t[disk::READ_IOPS] + t[disk::WRITE_IOPS];
        let bytes = t[disk::READ_BYTES_PER_S] + t[disk::WRITE_BYTES_PER_S];
        t[disk::AVG_REQUEST_BYTES] = if ops == 0.0 { 0.0 } else { bytes / ops };
        Ok(())
    }
}
