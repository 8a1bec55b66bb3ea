//! Real load for tests, generated in-process: CPU burner threads, a memory hog, fsync-heavy
//! file writes and a paced loopback TCP flood. Each load runs on its own threads, stops
//! when [`Load::stop`] is called, when it is dropped, or at its own deadline (so a test
//! that panics never leaves a burner behind), and reports how much work it did, so a test
//! can tell "the load ran" from "the load did nothing".
//!
//! What it is not: a benchmark tool (see `persona-loadgen` for fleet load) or a model of
//! any particular workload. Every load is bounded in time, and the network flood only
//! ever talks to 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a load did, counted by its threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Busy-loop rounds (CPU), pages touched (memory), fsyncs (disk) or bytes received
    /// (network).
    pub work: u64,
    /// Bytes allocated (memory), written (disk) or sent (network); 0 for CPU.
    pub bytes: u64,
    pub elapsed: Duration,
}

/// A running load. Stops on [`Load::stop`], on drop, or at its deadline.
#[derive(Debug)]
pub struct Load {
    what: &'static str,
    stop: Arc<AtomicBool>,
    work: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
    started: Instant,
    cleanup: Option<PathBuf>,
}

/// Shared state handed to each load thread.
#[derive(Clone)]
struct Ctl {
    stop: Arc<AtomicBool>,
    work: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    deadline: Instant,
}

impl Ctl {
    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed) && Instant::now() < self.deadline
    }
}

impl Load {
    fn start(
        what: &'static str,
        max: Duration,
        n: usize,
        f: impl Fn(usize, Ctl) + Send + Sync + 'static,
    ) -> Load {
        let ctl = Ctl {
            stop: Arc::new(AtomicBool::new(false)),
            work: Arc::new(AtomicU64::new(0)),
            bytes: Arc::new(AtomicU64::new(0)),
            deadline: Instant::now() + max,
        };
        let f = Arc::new(f);
        let threads = (0..n)
            .map(|i| {
                let (ctl, f) = (ctl.clone(), f.clone());
                std::thread::Builder::new()
                    .name(format!("load-{what}-{i}"))
                    .spawn(move || f(i, ctl))
                    .expect("spawn a load thread")
            })
            .collect();
        Load {
            what,
            stop: ctl.stop,
            work: ctl.work,
            bytes: ctl.bytes,
            threads,
            started: Instant::now(),
            cleanup: None,
        }
    }

    /// `threads` threads spinning on integer arithmetic (one per vCPU saturates the
    /// machine).
    pub fn cpu(threads: usize, max: Duration) -> Load {
        Load::start("cpu", max, threads.max(1), |_, ctl| {
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            while ctl.running() {
                for _ in 0..200_000 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                }
                std::hint::black_box(x);
                ctl.work.fetch_add(1, Ordering::Relaxed);
            }
        })
    }

    /// Allocates `bytes`, writes every page so it is really resident, and holds it until
    /// stopped. `work` counts the pages touched; `bytes` is set once all are.
    pub fn memory(bytes: usize, max: Duration) -> Load {
        Load::start("memory", max, 1, move |_, ctl| {
            const PAGE: usize = 4096;
            // Zeroed pages from the kernel are not resident until written: the loop
            // below is what makes the memory really used.
            let mut v = vec![0u8; bytes];
            let mut i = 0;
            while i < bytes && ctl.running() {
                v[i] = 1;
                i += PAGE;
                ctl.work.fetch_add(1, Ordering::Relaxed);
            }
            ctl.bytes.store(bytes as u64, Ordering::Relaxed);
            while ctl.running() {
                std::thread::sleep(Duration::from_millis(20));
            }
            std::hint::black_box(&v);
        })
    }

    /// Grows a resident hog in 64 MiB steps until `/proc/meminfo`'s MemAvailable is at
    /// or below `target_available` bytes, never past `cap` bytes, and holds it; when
    /// MemAvailable climbs back over the target it grows again. Used where a fixed-size
    /// hog cannot be trusted to move MemAvailable by its own size: on a VM whose
    /// balloon has deflate-on-OOM (Firecracker's, this machine's), the hypervisor can
    /// deflate the balloon mid-test and hand the guest gigabytes, which a fixed hog
    /// never makes up for. `bytes` is what is held.
    pub fn memory_until_available(target_available: u64, cap: usize, max: Duration) -> Load {
        Load::start("memory", max, 1, move |_, ctl| {
            const STEP: usize = 64 << 20;
            const PAGE: usize = 4096;
            let mut held: Vec<Vec<u8>> = Vec::new();
            let mut size = 0usize;
            while ctl.running() {
                let over = available_bytes().is_some_and(|a| a > target_available);
                if over && size + STEP <= cap {
                    let mut chunk = vec![0u8; STEP];
                    for i in (0..STEP).step_by(PAGE) {
                        chunk[i] = 1;
                        ctl.work.fetch_add(1, Ordering::Relaxed);
                    }
                    held.push(chunk);
                    size += STEP;
                    ctl.bytes.store(size as u64, Ordering::Relaxed);
                } else {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            std::hint::black_box(&held);
        })
    }

    /// `threads` writers, each appending `block` bytes to its own file in `dir` and
    /// calling fsync after every write; files are rewritten from the start every 64 MiB
    /// so disk use stays bounded. The files are removed when the load stops.
    pub fn fsync_writes(dir: &Path, threads: usize, block: usize, max: Duration) -> Load {
        let dir = dir.join(format!("fsync-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the fsync load directory");
        let d = dir.clone();
        let mut load = Load::start("fsync", max, threads.max(1), move |i, ctl| {
            let path = d.join(format!("w{i}"));
            let Ok(mut f) = std::fs::File::create(&path) else {
                return;
            };
            let buf = vec![0x5au8; block.max(1)];
            let mut written = 0usize;
            while ctl.running() {
                if written >= 64 << 20 {
                    let _ = f.set_len(0);
                    let _ = std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0));
                    written = 0;
                }
                if f.write_all(&buf).is_err() || f.sync_data().is_err() {
                    return;
                }
                written += buf.len();
                ctl.work.fetch_add(1, Ordering::Relaxed);
                ctl.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
            }
        });
        load.cleanup = Some(dir);
        load
    }

    /// A TCP flood over 127.0.0.1: one sender writing 64 KiB chunks paced to
    /// `bytes_per_s` (None = as fast as it can), one receiver draining them. `work` is
    /// the bytes received, `bytes` the bytes sent.
    pub fn loopback_flood(bytes_per_s: Option<u64>, max: Duration) -> Load {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback listener");
        let addr = listener.local_addr().expect("listener address");
        let listener = Arc::new(std::sync::Mutex::new(Some(listener)));
        Load::start("net", max, 2, move |i, ctl| {
            if i == 0 {
                let Some(l) = listener.lock().ok().and_then(|mut g| g.take()) else {
                    return;
                };
                let Ok((mut s, _)) = l.accept() else { return };
                let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                let mut buf = vec![0u8; 64 * 1024];
                while ctl.running() {
                    match s.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => {
                            ctl.work.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e) if timed_out(&e) => {}
                        Err(_) => return,
                    }
                }
            } else {
                let Ok(mut s) = TcpStream::connect(addr) else {
                    return;
                };
                let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
                let chunk = vec![0xa5u8; 64 * 1024];
                let t0 = Instant::now();
                let mut sent = 0u64;
                while ctl.running() {
                    if let Some(rate) = bytes_per_s {
                        // Pace: sleep until the bytes sent so far are due.
                        let due = Duration::from_secs_f64(sent as f64 / rate.max(1) as f64);
                        let now = t0.elapsed();
                        if due > now {
                            std::thread::sleep((due - now).min(Duration::from_millis(50)));
                            continue;
                        }
                    }
                    match s.write(&chunk) {
                        Ok(n) => {
                            sent += n as u64;
                            ctl.bytes.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e) if timed_out(&e) => {}
                        Err(_) => return,
                    }
                }
            }
        })
    }

    /// What the load is ("cpu", "memory", "fsync", "net").
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// Work done so far (see [`LoadReport::work`]).
    pub fn work(&self) -> u64 {
        self.work.load(Ordering::Relaxed)
    }

    /// Bytes so far (see [`LoadReport::bytes`]).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Stops the load, joins its threads and reports.
    pub fn stop(mut self) -> LoadReport {
        self.halt()
    }

    fn halt(&mut self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(d) = self.cleanup.take() {
            let _ = std::fs::remove_dir_all(d);
        }
        LoadReport {
            work: self.work(),
            bytes: self.bytes(),
            elapsed: self.started.elapsed(),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.halt();
    }
}

/// A socket read or write that ran into its timeout (the loop checks `running` again).
fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// MemAvailable and MemTotal from `/proc/meminfo`, in bytes.
pub fn meminfo() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kib| kib * 1024)
    };
    Some((get("MemAvailable:")?, get("MemTotal:")?))
}

fn available_bytes() -> Option<u64> {
    meminfo().map(|(a, _)| a)
}

/// The most runnable tasks `/proc/stat` showed over `span`, polled every 100 ms: what
/// the machine's run queue looks like before a test adds its own load.
pub fn runnable_max(span: Duration) -> f64 {
    let end = Instant::now() + span;
    let mut max = 0.0f64;
    while Instant::now() < end {
        if let Some(n) = std::fs::read_to_string("/proc/stat").ok().and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("procs_running "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        }) {
            max = max.max(n);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_load_does_work_and_stops() {
        let cpu = Load::cpu(1, Duration::from_secs(5));
        let mem = Load::memory(8 << 20, Duration::from_secs(5));
        let dir = tempfile::tempdir().unwrap();
        let io = Load::fsync_writes(dir.path(), 1, 4096, Duration::from_secs(5));
        let net = Load::loopback_flood(Some(20 << 20), Duration::from_secs(5));
        crate::wait_for(
            Duration::from_secs(5),
            "every load to make progress",
            || {
                (cpu.work() > 0 && mem.bytes() == 8 << 20 && io.work() > 0 && net.work() > 0)
                    .then_some(())
            },
        );
        for l in [cpu, mem, io, net] {
            let what = l.what();
            let r = l.stop();
            assert!(r.work > 0, "{what} did no work: {r:?}");
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "fsync files removed"
        );
    }

    #[test]
    fn a_load_ends_at_its_deadline() {
        let l = Load::cpu(1, Duration::from_millis(200));
        crate::wait_for(Duration::from_secs(10), "the burner to stop", || {
            l.threads.iter().all(JoinHandle::is_finished).then_some(())
        });
        assert!(l.stop().work > 0);
    }
}
