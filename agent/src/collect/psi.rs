//! Pressure stall information (PSI) from `/proc/pressure/{cpu,memory,io}`: the kernel's
//! own `some`/`full` avg10 percentages, and the stall ratio over the tick computed from
//! the `total` stall-time counter (µs). Kernels without PSI (before 4.20, or booted
//! without `psi=1` on RHEL-likes) have no such files or refuse to read them: that is
//! reported as "not available" (NaN values, [`Psi::available`] false), not as a failure.
//! The cpu `full` line, absent before 5.13, is NaN on its own.

use std::io;
use std::path::{Path, PathBuf};

use persona_shared::metrics::host;
use persona_shared::sample::Sample;

use super::parse::{elapsed_secs, fields, lines, parse_f64, parse_u64, read_into};
use super::{CollectError, Source};

const FILES: [&str; 3] = ["pressure/cpu", "pressure/memory", "pressure/io"];
const FIRST: [usize; 3] = [host::PSI_CPU, host::PSI_MEMORY, host::PSI_IO];

/// One line of a pressure file: avg10 in percent and the total stall time in µs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PsiLine {
    pub avg10: f64,
    pub total_us: u64,
}

/// Parses a pressure file into its `some` and `full` lines (either may be absent).
pub(crate) fn parse_pressure(
    buf: &[u8],
    file: &'static str,
) -> Result<[Option<PsiLine>; 2], CollectError> {
    let bad = |what| CollectError::Parse { file, what };
    let mut out = [None, None];
    for line in lines(buf) {
        let mut f = fields(line);
        let slot = match f.next() {
            Some(b"some") => 0,
            Some(b"full") => 1,
            _ => return Err(bad("a line is neither some nor full")),
        };
        let (mut avg10, mut total) = (None, None);
        for kv in f {
            if let Some(v) = kv.strip_prefix(b"avg10=") {
                avg10 = parse_f64(v);
            } else if let Some(v) = kv.strip_prefix(b"total=") {
                total = parse_u64(v);
            }
        }
        match (avg10, total) {
            (Some(avg10), Some(total_us)) => out[slot] = Some(PsiLine { avg10, total_us }),
            _ => return Err(bad("avg10 or total missing or not a number")),
        }
    }
    if out[0].is_none() {
        return Err(bad("no some line"));
    }
    Ok(out)
}

/// Stalled share of the tick: delta of the µs counter over the elapsed µs. Clamped to
/// [0, 1] because the file and our clock are read a few µs apart, so a fully stalled
/// tick can come out a hair above 1. Backwards counter: NaN, as for every rate.
fn stall_ratio(prev: Option<u64>, cur: u64, secs: f64) -> f64 {
    match prev.and_then(|p| cur.checked_sub(p)) {
        Some(d) if secs > 0.0 => (d as f64 / (secs * 1e6)).clamp(0.0, 1.0),
        _ => f64::NAN,
    }
}

pub(crate) struct Psi {
    paths: [PathBuf; 3],
    /// Previous totals per resource and line, and when they were read.
    prev: [[Option<u64>; 2]; 3],
    prev_ns: Option<u64>,
    available: bool,
}

impl Psi {
    pub(crate) fn new(proc_root: &Path) -> Self {
        Self {
            paths: FILES.map(|f| proc_root.join(f)),
            prev: [[None; 2]; 3],
            prev_ns: None,
            available: false,
        }
    }

    /// Whether the last tick found PSI files to read.
    pub(crate) fn available(&self) -> bool {
        self.available
    }
}

/// The kernel has no PSI (missing files) or has it switched off (EOPNOTSUPP on read).
fn is_unavailable(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || e.kind() == io::ErrorKind::Unsupported
        || e.raw_os_error() == Some(95)
}

impl Source for Psi {
    fn name(&self) -> &'static str {
        "psi"
    }

    fn collect(
        &mut self,
        now_ns: u64,
        buf: &mut Vec<u8>,
        out: &mut Sample,
    ) -> Result<(), CollectError> {
        let secs = elapsed_secs(self.prev_ns, now_ns);
        let mut any = false;
        let mut result = Ok(());
        for r in 0..3 {
            let base = FIRST[r];
            let lines = match read_into(&self.paths[r], buf) {
                Ok(()) => parse_pressure(buf, FILES[r]),
                Err(e) if is_unavailable(&e) => Ok([None, None]),
                Err(source) => Err(CollectError::Io {
                    file: FILES[r],
                    source,
                }),
            };
            let lines = match lines {
                Ok(l) => l,
                Err(e) => {
                    // One bad file spoils only its resource's four values.
                    result = Err(e);
                    [None, None]
                }
            };
            any |= lines[0].is_some();
            for (k, line) in lines.iter().enumerate() {
                let (avg, stall) = match line {
                    Some(l) => (l.avg10, stall_ratio(self.prev[r][k], l.total_us, secs)),
                    None => (f64::NAN, f64::NAN),
                };
                // Order within a resource: some_avg10, full_avg10, some_stall, full_stall.
                out.host[base + k] = avg;
                out.host[base + 2 + k] = stall;
                self.prev[r][k] = line.map(|l| l.total_us);
            }
        }
        self.available = any;
        self.prev_ns = Some(now_ns);
        result
    }
}
