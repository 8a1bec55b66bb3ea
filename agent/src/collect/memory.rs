//! Memory collector: gauges from `/proc/meminfo` (total, available, used, page cache,
//! buffers, dirty, swap used) and page-fault rates from the `pgfault`/`pgmajfault`
//! counters of `/proc/vmstat`. It does not report per-process or per-cgroup memory.

use std::path::{Path, PathBuf};

use persona_shared::metrics::host;
use persona_shared::sample::Sample;

use super::parse::{elapsed_secs, fields, lines, parse_u64, rate, read_into};
use super::{CollectError, Source};

const MEMINFO: &str = "meminfo";
const VMSTAT: &str = "vmstat";

/// The /proc/meminfo fields we use, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct MemReading {
    pub total: u64,
    /// None on kernels before 3.14, which have no MemAvailable.
    pub available: Option<u64>,
    pub free: u64,
    pub cached: u64,
    pub buffers: u64,
    pub dirty: u64,
    pub swap_total: u64,
    pub swap_free: u64,
}

/// Parses /proc/meminfo. Values are printed in kB (KiB in fact) and returned in bytes.
pub(crate) fn parse_meminfo(buf: &[u8]) -> Result<MemReading, CollectError> {
    let mut r = MemReading::default();
    let mut have_total = false;
    for line in lines(buf) {
        let mut f = fields(line);
        let (Some(key), Some(val)) = (f.next(), f.next()) else {
            continue;
        };
        let slot = match key {
            b"MemTotal:" => {
                have_total = true;
                &mut r.total
            }
            b"MemFree:" => &mut r.free,
            b"Cached:" => &mut r.cached,
            b"Buffers:" => &mut r.buffers,
            b"Dirty:" => &mut r.dirty,
            b"SwapTotal:" => &mut r.swap_total,
            b"SwapFree:" => &mut r.swap_free,
            b"MemAvailable:" => {
                let v = parse_u64(val).ok_or(CollectError::Parse {
                    file: MEMINFO,
                    what: "MemAvailable",
                })?;
                r.available = Some(v.saturating_mul(1024));
                continue;
            }
            _ => continue,
        };
        let v = parse_u64(val).ok_or(CollectError::Parse {
            file: MEMINFO,
            what: "a value is not a number",
        })?;
        *slot = v.saturating_mul(1024);
    }
    if !have_total {
        return Err(CollectError::Parse {
            file: MEMINFO,
            what: "no MemTotal",
        });
    }
    Ok(r)
}

/// Parses `pgfault` and `pgmajfault` from /proc/vmstat.
pub(crate) fn parse_vmstat_faults(buf: &[u8]) -> Result<(u64, u64), CollectError> {
    let (mut all, mut major) = (None, None);
    for line in lines(buf) {
        let mut f = fields(line);
        let (Some(key), Some(val)) = (f.next(), f.next()) else {
            continue;
        };
        match key {
            b"pgfault" => all = parse_u64(val),
            b"pgmajfault" => major = parse_u64(val),
            _ => continue,
        }
        if all.is_some() && major.is_some() {
            break;
        }
    }
    match (all, major) {
        (Some(a), Some(m)) => Ok((a, m)),
        _ => Err(CollectError::Parse {
            file: VMSTAT,
            what: "no pgfault or pgmajfault",
        }),
    }
}

/// The `oom_kill` counter of /proc/vmstat (kernels since 4.13); None when absent.
pub(crate) fn parse_vmstat_oom(buf: &[u8]) -> Option<u64> {
    lines(buf).find_map(|line| {
        let mut f = fields(line);
        (f.next() == Some(b"oom_kill".as_slice()))
            .then(|| f.next().and_then(parse_u64))
            .flatten()
    })
}

pub(crate) struct Memory {
    meminfo: PathBuf,
    vmstat: PathBuf,
    /// OOM kills since boot at the last read, for the pressure detector (not a metric).
    pub(crate) oom_kills: Option<u64>,
    /// (time, major faults, minor faults) of the previous successful read.
    prev: Option<(u64, u64, u64)>,
}

impl Memory {
    pub(crate) fn new(proc_root: &Path) -> Self {
        Self {
            meminfo: proc_root.join(MEMINFO),
            vmstat: proc_root.join(VMSTAT),
            oom_kills: None,
            prev: None,
        }
    }
}

impl Source for Memory {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn collect(
        &mut self,
        now_ns: u64,
        buf: &mut Vec<u8>,
        out: &mut Sample,
    ) -> Result<(), CollectError> {
        read_into(&self.meminfo, buf).map_err(|source| CollectError::Io {
            file: MEMINFO,
            source,
        })?;
        let m = parse_meminfo(buf)?;
        read_into(&self.vmstat, buf).map_err(|source| CollectError::Io {
            file: VMSTAT,
            source,
        })?;
        let (all, major) = parse_vmstat_faults(buf)?;
        self.oom_kills = parse_vmstat_oom(buf);
        // pgfault counts every fault, major ones included.
        let minor = all.saturating_sub(major);

        // Before 3.14 there is no MemAvailable: free + buffers + page cache is the
        // classic estimate (it overstates a little: not all cache can be dropped).
        let available = m
            .available
            .unwrap_or(m.free + m.buffers + m.cached)
            .min(m.total);
        let h = &mut out.host;
        h[host::MEM_TOTAL] = m.total as f64;
        h[host::MEM_AVAILABLE] = available as f64;
        h[host::MEM_USED] = (m.total - available) as f64;
        h[host::MEM_CACHED] = m.cached as f64;
        h[host::MEM_BUFFERS] = m.buffers as f64;
        h[host::MEM_DIRTY] = m.dirty as f64;
        h[host::MEM_SWAP_USED] = m.swap_total.saturating_sub(m.swap_free) as f64;
        let (secs, pmaj, pmin) = match self.prev {
            Some((t, a, b)) => (elapsed_secs(Some(t), now_ns), a, b),
            None => (f64::NAN, u64::MAX, u64::MAX),
        };
        h[host::MEM_MAJFLT_PER_S] = rate(pmaj, major, secs);
        h[host::MEM_MINFLT_PER_S] = rate(pmin, minor, secs);
        self.prev = Some((now_ns, major, minor));
        Ok(())
    }
}
