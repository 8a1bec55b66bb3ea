//! CPU collector: `/proc/stat` gives the time every CPU spent in each mode, the online
//! CPU count (one `cpuN` line per online CPU), runnable/blocked tasks and the context
//! switch and interrupt counters. It turns tick deltas into shares of capacity and
//! cores. It does not look at individual CPUs' shares or at guest time (already part of
//! user/nice), and the load averages live in [`super::load`].

use std::path::{Path, PathBuf};

use persona_shared::metrics::host;
use persona_shared::sample::Sample;

use super::parse::{elapsed_secs, fields, lines, parse_u64, rate, read_into};
use super::{CollectError, Source};

const FILE: &str = "stat";
/// Modes in the order of the `cpu.*_ratio` metrics: user, nice, system, iowait, irq,
/// softirq, steal, idle. The numbers are the column of each mode on the `cpu` line of
/// /proc/stat (after the label): user nice system idle iowait irq softirq steal.
const MODE_COLUMNS: [usize; 8] = [0, 1, 2, 4, 5, 6, 7, 3];

/// One parse of /proc/stat.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct StatReading {
    /// Ticks per mode, in metric order (see [`MODE_COLUMNS`]).
    pub modes: [u64; 8],
    pub online: u32,
    pub ctxt: u64,
    pub intr: u64,
    pub running: u64,
    pub blocked: u64,
}

/// Parses /proc/stat from a buffer without allocating.
pub(crate) fn parse_stat(buf: &[u8]) -> Result<StatReading, CollectError> {
    let bad = |what| CollectError::Parse { file: FILE, what };
    let mut r = StatReading::default();
    let (mut seen_cpu, mut seen_ctxt, mut seen_intr) = (false, false, false);
    for line in lines(buf) {
        let mut f = fields(line);
        let Some(key) = f.next() else { continue };
        if key == b"cpu" {
            let mut cols = [0u64; 8];
            // Kernels before 2.6.11 print fewer columns; the missing ones stay 0.
            for (i, v) in f.take(8).enumerate() {
                cols[i] = parse_u64(v).ok_or(bad("a cpu column is not a number"))?;
            }
            for (m, &c) in MODE_COLUMNS.iter().enumerate() {
                r.modes[m] = cols[c];
            }
            seen_cpu = true;
        } else if key.len() > 3 && key.starts_with(b"cpu") {
            r.online += 1;
        } else if key == b"ctxt" {
            r.ctxt = f.next().and_then(parse_u64).ok_or(bad("ctxt"))?;
            seen_ctxt = true;
        } else if key == b"intr" {
            r.intr = f.next().and_then(parse_u64).ok_or(bad("intr"))?;
            seen_intr = true;
        } else if key == b"procs_running" {
            r.running = f.next().and_then(parse_u64).ok_or(bad("procs_running"))?;
        } else if key == b"procs_blocked" {
            r.blocked = f.next().and_then(parse_u64).ok_or(bad("procs_blocked"))?;
        }
    }
    if !seen_cpu {
        return Err(bad("no aggregate cpu line"));
    }
    if !seen_ctxt || !seen_intr {
        return Err(bad("no ctxt or intr line"));
    }
    if r.online == 0 {
        return Err(bad("no per-cpu lines"));
    }
    Ok(r)
}

/// Shares of capacity per mode between two readings. A mode whose counter went backwards
/// (iowait can, on tickless idle CPUs) counts as 0 for the tick, and the total is the sum
/// of the per-mode deltas, so the eight shares always sum to 1. All NaN when no tick
/// elapsed.
pub(crate) fn ratios(prev: &[u64; 8], cur: &[u64; 8]) -> [f64; 8] {
    let mut d = [0u64; 8];
    for i in 0..8 {
        d[i] = cur[i].saturating_sub(prev[i]);
    }
    let total: u64 = d.iter().sum();
    let mut out = [f64::NAN; 8];
    if total > 0 {
        for i in 0..8 {
            out[i] = d[i] as f64 / total as f64;
        }
    }
    out
}

pub(crate) struct Cpu {
    path: PathBuf,
    prev: Option<(u64, StatReading)>,
}

impl Cpu {
    pub(crate) fn new(proc_root: &Path) -> Self {
        Self {
            path: proc_root.join(FILE),
            prev: None,
        }
    }
}

impl Source for Cpu {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn collect(
        &mut self,
        now_ns: u64,
        buf: &mut Vec<u8>,
        out: &mut Sample,
    ) -> Result<(), CollectError> {
        read_into(&self.path, buf).map_err(|source| CollectError::Io { file: FILE, source })?;
        let cur = parse_stat(buf)?;
        let h = &mut out.host;
        let online = f64::from(cur.online);
        h[host::CPU_ONLINE] = online;
        h[host::PROCS_RUNNING] = cur.running as f64;
        h[host::PROCS_BLOCKED] = cur.blocked as f64;
        let (shares, secs) = match &self.prev {
            Some((t, p)) => (ratios(&p.modes, &cur.modes), elapsed_secs(Some(*t), now_ns)),
            None => ([f64::NAN; 8], f64::NAN),
        };
        for (m, share) in shares.iter().enumerate() {
            h[host::CPU_USER_RATIO + m] = *share;
            // Same definition as the coordinator's derivation (ratio x online count), so
            // what `observe` prints is what the coordinator will show.
            h[host::CPU_USER_CORES + m] = share * online;
        }
        let (pc, pi) = self
            .prev
            .map_or((u64::MAX, u64::MAX), |(_, p)| (p.ctxt, p.intr));
        h[host::CTXT_PER_S] = rate(pc, cur.ctxt, secs);
        h[host::INTR_PER_S] = rate(pi, cur.intr, secs);
        self.prev = Some((now_ns, cur));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_sum_to_one_and_ignore_backwards_modes() {
        let prev = [100, 0, 50, 10, 0, 0, 0, 1000];
        let cur = [150, 0, 75, 5, 0, 0, 0, 1100];
        let r = ratios(&prev, &cur);
        assert!((r.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(r[3], 0.0);
        assert!(ratios(&cur, &cur).iter().all(|x| x.is_nan()));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_stat(b"").is_err());
        assert!(parse_stat(b"cpu 1 2 x\nctxt 1\nintr 1\ncpu0 1\n").is_err());
        assert!(parse_stat(b"cpu 1 2 3 4\nctxt 1\nintr 1 0 0\n").is_err());
        let ok = parse_stat(b"cpu 1 2 3 4\ncpu0 1 2 3 4\nctxt 1\nintr 9 0 0\n")
            .expect("old kernel layout");
        assert_eq!((ok.modes[0], ok.modes[7], ok.online, ok.intr), (1, 4, 1, 9));
    }
}
