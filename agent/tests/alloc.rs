//! Proves the steady-state tick does not allocate: a counting global allocator wraps
//! the system one, and the collector samples the real /proc and /sys many times after a
//! warm-up. Only allocations made on this test's thread while counting is switched on
//! are counted, so the test harness's own threads do not disturb the figure. It also
//! prints (not asserts) the allocations and the time of a tick that includes a process
//! scan, and of one that does not:
//!
//! `cargo test --release -p persona-agent --test alloc -- --nocapture`
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use persona_agent::collect::{CollectConfig, Collector};
use persona_shared::sample::Sample;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // const-initialised and without a destructor, so reading it never allocates.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note(size: usize) {
    if COUNTING.with(Cell::get) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(size as u64, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so
// `System`'s guarantees (alignment, size, ownership of the returned blocks) hold; the
// only addition is counting in atomics and a const thread-local, neither of which
// allocates or unwinds.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: `ptr` was allocated by `System` through this allocator with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` through this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations (count, bytes) and time of `f` on this thread.
fn measure(f: impl FnOnce()) -> (u64, u64, Duration) {
    let (a0, b0) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    let t = Instant::now();
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    let d = t.elapsed();
    (
        ALLOCS.load(Ordering::Relaxed) - a0,
        BYTES.load(Ordering::Relaxed) - b0,
        d,
    )
}

fn collector(process_every: u32) -> Collector {
    Collector::new(CollectConfig {
        process_every,
        ..CollectConfig::default()
    })
}

#[test]
fn steady_state_tick_does_not_allocate_and_scan_cost_is_reported() {
    // Processes scanned only on the first two ticks (priming), never after.
    let mut c = collector(u32::MAX);
    let mut s = Sample::default();
    let mut now = 0u64;
    let mut tick = |c: &mut Collector, s: &mut Sample| {
        now += 1_000_000_000;
        c.sample_at(1, now, s)
    };
    for _ in 0..5 {
        tick(&mut c, &mut s);
    }
    const N: u32 = 50;
    let mut reports = Vec::with_capacity(N as usize);
    let (allocs, bytes, took) = measure(|| {
        for _ in 0..N {
            reports.push(tick(&mut c, &mut s));
        }
    });
    assert!(reports.iter().all(|r| r.all_ok() && !r.procs_scanned));
    assert_eq!(
        allocs, 0,
        "{allocs} allocations ({bytes} bytes) in {N} steady-state ticks"
    );
    eprintln!(
        "steady-state tick without process scan: 0 allocations, {:?} per tick",
        took / N
    );

    // A tick that scans processes (after its priming scans).
    let mut c = collector(1);
    for _ in 0..3 {
        tick(&mut c, &mut s);
    }
    let (allocs, bytes, took) = measure(|| {
        assert!(tick(&mut c, &mut s).procs_scanned);
    });
    let procs = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                .count()
        })
        .unwrap_or(0);
    eprintln!(
        "tick with process scan ({procs} processes): {allocs} allocations, {bytes} bytes, {took:?}"
    );
}
