//! Proves the steady-state tick does not allocate: a counting global allocator wraps
//! the system one, and the collector samples the real /proc and /sys many times after a
//! warm-up. Only allocations made on this test's thread while counting is switched on
//! are counted, so the test harness's own threads do not disturb the figure. It also
//! prints (not asserts) the allocations and the time of a tick that includes a process
//! scan, and of one that does not:
//!
//! `cargo test --release -p persona-agent --test alloc -- --nocapture`

use persona_agent::collect::{CollectConfig, Collector};
use persona_shared::sample::Sample;

#[path = "support/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::{Measured, measure};

#[global_allocator]
static GLOBAL: counting_alloc::Counting = counting_alloc::Counting;

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
    let Measured {
        allocs,
        bytes,
        took,
    } = measure(|| {
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
    let Measured {
        allocs,
        bytes,
        took,
    } = measure(|| {
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
