//! Proves the detectors add no allocation to a steady tick: a counting global allocator
//! (only this thread, only while counting) around two hours of synthetic samples at 1 s
//! that cross minute boundaries (where the anomaly detector sorts its history), carry
//! process lists, and spike above a pressure threshold every other tick (breached, but
//! never long enough to raise). Then one sustained spike proves that raising an event is
//! where allocation happens. Real `/proc` samples are fed too, after the synthetic run.

use persona_agent::collect::{CollectConfig, Collector};
use persona_agent::detect::{DetectConfig, Detector, TickExtra};
use persona_shared::facts::HostFacts;
use persona_shared::metrics::{disk, host, nic};
use persona_shared::sample::{DiskValues, NicValues, ProcEntry, Sample};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

#[global_allocator]
static GLOBAL: counting_alloc::Counting = counting_alloc::Counting;

/// Allocations made by `f` on this thread.
fn counted(f: impl FnOnce()) -> u64 {
    counting_alloc::measure(f).allocs
}

fn sample(k: i64) -> Sample {
    let mut s = Sample {
        ts_ms: 1_700_000_000_000 + k * 1000,
        ..Sample::default()
    };
    let h = &mut s.host;
    h[host::CPU_USER_RATIO] = if k % 2 == 0 {
        0.97
    } else {
        0.1 + (k % 7) as f64 / 100.0
    };
    for i in [
        host::CPU_NICE_RATIO,
        host::CPU_SYSTEM_RATIO,
        host::CPU_IRQ_RATIO,
        host::CPU_SOFTIRQ_RATIO,
        host::CPU_STEAL_RATIO,
    ] {
        h[i] = 0.0;
    }
    h[host::CPU_ONLINE] = 2.0;
    h[host::PROCS_RUNNING] = 1.0;
    h[host::MEM_TOTAL] = 8e9;
    h[host::MEM_AVAILABLE] = 6e9;
    h[host::MEM_USED] = 2e9 + (k % 13) as f64 * 1e6;
    h[host::MEM_MAJFLT_PER_S] = 0.0;
    h[host::CTXT_PER_S] = 800.0;
    for i in 0..4 {
        h[host::PSI_MEMORY + i] = 0.0;
        h[host::PSI_IO + i] = 0.0;
    }
    let mut d = DiskValues::new("vda");
    d.values = [0.0; disk::COUNT];
    s.disks.push(d);
    s.disk_total = [0.0; disk::COUNT];
    let mut n = NicValues::new("eth0");
    n.values = [0.0; nic::COUNT];
    s.nics.push(n);
    s.nic_total = [0.0; nic::COUNT];
    s.top_cpu.push(ProcEntry {
        comm: "worker".into(),
        cpu_pct: 95.0,
        rss_bytes: 1 << 20,
    });
    s
}

#[test]
fn steady_ticks_do_not_allocate_and_raising_does() {
    let cfg = DetectConfig {
        // Long enough that the pinned "worker" never becomes a runaway in this run.
        runaway_minutes: 1440,
        ..DetectConfig::default()
    };
    let mut d = Detector::new(&cfg, &HostFacts::default());
    let mut out = Vec::with_capacity(8);
    // Samples are built outside the counted region.
    let samples: Vec<Sample> = (0..7200).map(sample).collect();
    let extra = |k: usize| TickExtra {
        oom_kills: Some(0),
        procs_scanned: k.is_multiple_of(5),
    };
    let allocs = counted(|| {
        for (k, s) in samples.iter().enumerate() {
            d.observe(s, extra(k), &mut out);
        }
    });
    assert!(out.is_empty(), "no event expected: {out:?}");
    assert_eq!(allocs, 0, "{allocs} allocations in 7200 steady ticks");

    // Real samples of this machine through a detector of their own (events may happen
    // on a busy machine; the point is that nothing panics on real data).
    let mut real = Detector::new(&cfg, &HostFacts::default());
    let mut c = Collector::new(CollectConfig::default());
    let mut s = Sample::default();
    for k in 0..5u64 {
        let r = c.sample_at(
            1_700_000_000_000 + 7_200_000 + k as i64 * 1000,
            k * 1_000_000_000,
            &mut s,
        );
        let e = TickExtra {
            oom_kills: c.oom_kills(),
            procs_scanned: r.procs_scanned,
        };
        real.observe(&s, e, &mut out);
    }

    // A sustained spike raises one CPU pressure event, and that allocates.
    out.clear();
    let mut spike = sample(8000);
    let allocs = counted(|| {
        for k in 0..3 {
            spike.ts_ms = 1_700_000_000_000 + (9000 + k) * 1000;
            d.observe(&spike, extra(1), &mut out);
        }
    });
    assert!(
        out.iter().any(|e| e.summary.starts_with("cpu pressure")),
        "{out:?}"
    );
    assert!(allocs > 0);
}
