//! Process collector: the top N processes by CPU and by resident memory, found by
//! scanning `<proc>/<pid>/stat` with the `procfs` crate. Only the kernel's `comm` name
//! (at most 15 bytes) is kept, never the command line, which can hold secrets. CPU is
//! the process's user+system time since the previous scan, in % of one core; a process
//! born since the previous scan is charged all its time. The scan is the one part of a
//! tick that costs more than a few µs and allocates (procfs builds a `Process` and a
//! `Stat` per pid), so the collector runs it every `process_every` ticks and the
//! sample carries the latest lists in between.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use persona_shared::sample::{ProcEntry, Sample};

use super::parse::elapsed_secs;
use super::{CollectError, Source};

/// The kernel's comm is at most 15 bytes (TASK_COMM_LEN - 1); kept inline so ranking
/// does not allocate a `String` per process.
#[derive(Clone, Copy)]
struct Comm {
    bytes: [u8; 16],
    len: u8,
}

impl Comm {
    fn new(s: &str) -> Self {
        let mut bytes = [0u8; 16];
        // comm is at most 15 bytes; cut longer input at a char boundary anyway.
        let mut len = s.len().min(15);
        while !s.is_char_boundary(len) {
            len -= 1;
        }
        bytes[..len].copy_from_slice(&s.as_bytes()[..len]);
        Self {
            bytes,
            len: len as u8,
        }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("?")
    }
}

#[derive(Clone, Copy)]
struct Candidate {
    comm: Comm,
    cpu_pct: f32,
    rss_bytes: u64,
}

/// Identifies a process across scans: pid plus start time, so a reused pid is a new
/// process and not a negative CPU delta.
type Key = (i32, u64);

pub(crate) struct Procs {
    root: PathBuf,
    top_n: usize,
    tps: f64,
    page_size: u64,
    prev: HashMap<Key, u64>,
    cur: HashMap<Key, u64>,
    prev_ns: Option<u64>,
    candidates: Vec<Candidate>,
    top_cpu: Vec<ProcEntry>,
    top_rss: Vec<ProcEntry>,
}

impl Procs {
    pub(crate) fn new(proc_root: &Path, top_n: usize) -> Self {
        Self {
            root: proc_root.to_owned(),
            top_n,
            tps: procfs::ticks_per_second() as f64,
            page_size: procfs::page_size(),
            prev: HashMap::new(),
            cur: HashMap::new(),
            prev_ns: None,
            candidates: Vec::new(),
            top_cpu: Vec::new(),
            top_rss: Vec::new(),
        }
    }

    /// Scans every process and ranks them; the result is kept for [`Source::collect`]
    /// to copy into samples until the next scan.
    pub(crate) fn scan(&mut self, now_ns: u64) -> Result<(), CollectError> {
        let iter = procfs::process::all_processes_with_root(&self.root).map_err(|source| {
            CollectError::Proc {
                what: "listing processes",
                source,
            }
        })?;
        let secs = elapsed_secs(self.prev_ns, now_ns);
        self.cur.clear();
        self.candidates.clear();
        for p in iter {
            // A process that exits between the listing and the read is not an error.
            let Ok(stat) = p.and_then(|p| p.stat()) else {
                continue;
            };
            let ticks = stat.utime + stat.stime;
            let key = (stat.pid, stat.starttime);
            self.cur.insert(key, ticks);
            let cpu_pct = if secs.is_finite() {
                let before = self.prev.get(&key).copied().unwrap_or(0);
                (ticks.saturating_sub(before) as f64 / self.tps / secs * 100.0) as f32
            } else {
                f32::NAN
            };
            self.candidates.push(Candidate {
                comm: Comm::new(&stat.comm),
                cpu_pct,
                rss_bytes: stat.rss.saturating_mul(self.page_size),
            });
        }
        std::mem::swap(&mut self.prev, &mut self.cur);
        self.prev_ns = Some(now_ns);

        let n = self.top_n.min(self.candidates.len());
        // Without a previous scan there is no CPU figure to rank by.
        let by_cpu = if secs.is_finite() { n } else { 0 };
        rank(
            &mut self.candidates,
            by_cpu,
            |c| f64::from(c.cpu_pct),
            &mut self.top_cpu,
        );
        rank(
            &mut self.candidates,
            n,
            |c| c.rss_bytes as f64,
            &mut self.top_rss,
        );
        Ok(())
    }
}

/// Puts the `n` largest candidates by `key` into `out`, largest first, reusing `out`'s
/// strings.
fn rank(c: &mut [Candidate], n: usize, key: impl Fn(&Candidate) -> f64, out: &mut Vec<ProcEntry>) {
    let desc = |a: &Candidate, b: &Candidate| key(b).total_cmp(&key(a));
    if n > 0 && n < c.len() {
        c.select_nth_unstable_by(n - 1, desc);
    }
    let top = &mut c[..n];
    top.sort_unstable_by(desc);
    // Idle processes and kernel threads (no RSS) say nothing about the workload and
    // would only pad the lists that later serve as a persona signal.
    let used = top.iter().take_while(|x| key(x) > 0.0).count();
    copy_entries(&top[..used], out);
}

/// A `String` with room for any comm, so later scans reuse it whatever name lands there.
fn comm_string(s: &str) -> String {
    let mut c = String::with_capacity(16);
    c.push_str(s);
    c
}

fn copy_entries(src: &[Candidate], out: &mut Vec<ProcEntry>) {
    out.truncate(src.len());
    for (i, c) in src.iter().enumerate() {
        match out.get_mut(i) {
            Some(e) => {
                e.comm.clear();
                e.comm.push_str(c.comm.as_str());
                e.cpu_pct = c.cpu_pct;
                e.rss_bytes = c.rss_bytes;
            }
            None => out.push(ProcEntry {
                comm: comm_string(c.comm.as_str()),
                cpu_pct: c.cpu_pct,
                rss_bytes: c.rss_bytes,
            }),
        }
    }
}

fn copy_list(src: &[ProcEntry], out: &mut Vec<ProcEntry>) {
    out.truncate(src.len());
    for (i, s) in src.iter().enumerate() {
        match out.get_mut(i) {
            Some(e) => {
                e.comm.clear();
                e.comm.push_str(&s.comm);
                e.cpu_pct = s.cpu_pct;
                e.rss_bytes = s.rss_bytes;
            }
            None => out.push(ProcEntry {
                comm: comm_string(&s.comm),
                cpu_pct: s.cpu_pct,
                rss_bytes: s.rss_bytes,
            }),
        }
    }
}

impl Source for Procs {
    fn name(&self) -> &'static str {
        "procs"
    }

    /// Copies the latest scan's lists into the sample (the scan itself is
    /// [`Procs::scan`], which the collector calls every `process_every` ticks).
    fn collect(
        &mut self,
        _now_ns: u64,
        _buf: &mut Vec<u8>,
        out: &mut Sample,
    ) -> Result<(), CollectError> {
        copy_list(&self.top_cpu, &mut out.top_cpu);
        copy_list(&self.top_rss, &mut out.top_rss);
        Ok(())
    }
}
