//! The mirror's per-tick path does not allocate: pushing a sample into the window and
//! taking a process list, after the ring has wrapped many times. A counting global
//! allocator wraps the system one; only this thread's allocations while counting are
//! counted. (Inference, once per window step, allocates its small tensors; it is not
//! part of the tick.)

use persona_agent::mirror::MirrorRunner;
use persona_agent::model_store::ModelHandle;
use persona_shared::metrics::{disk, host, nic};
use persona_shared::sample::{NicValues, ProcEntry, Sample};
use persona_shared::window::WindowConfig;

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

#[global_allocator]
static GLOBAL: counting_alloc::Counting = counting_alloc::Counting;

fn fill(s: &mut Sample, i: i64) {
    s.ts_ms = 1_700_000_000_000 + i * 1000;
    for (k, v) in s.host.iter_mut().enumerate() {
        *v = ((i + k as i64) % 17) as f64 / 100.0;
    }
    s.host[host::CPU_ONLINE] = 2.0;
    s.host[host::MEM_TOTAL] = 8e9;
    s.host[host::MEM_USED] = 2e9 + (i % 100) as f64 * 1e6;
    for (k, v) in s.disk_total.iter_mut().enumerate() {
        *v = ((i * 31 + k as i64) % 1000) as f64 * 100.0;
    }
    for (k, v) in s.nic_total.iter_mut().enumerate() {
        *v = ((i * 7 + k as i64) % 1000) as f64 * 10.0;
    }
    s.nics[0].values[nic::RX_BYTES_PER_S] = (i % 50) as f64 * 1000.0;
    let _ = disk::COUNT;
    // A process scan every fifth tick, rewritten in place as the collector does.
    s.top_cpu[0].cpu_pct = (i % 200) as f32;
}

#[test]
fn window_push_and_process_lists_do_not_allocate() {
    let models = ModelHandle::open(None).expect("shipped model");
    let mut r = MirrorRunner::new(WindowConfig { window_ms: 30_000 }, 10, models);
    let mut s = Sample::default();
    s.nics.push(NicValues::new("lo"));
    s.top_cpu.push(ProcEntry {
        comm: "postgres".into(),
        cpu_pct: 1.0,
        rss_bytes: 1 << 20,
    });
    s.top_rss.push(ProcEntry {
        comm: "java".into(),
        cpu_pct: 1.0,
        rss_bytes: 1 << 30,
    });
    // Warm up past several ring wraps (capacity 301 points at 100 ms).
    for i in 0..2000 {
        fill(&mut s, i);
        r.on_sample(&s);
        r.on_sample_procs(&s);
    }
    let n = counting_alloc::measure(|| {
        for i in 2000..4000 {
            fill(&mut s, i);
            r.on_sample(&s);
            if i % 5 == 0 {
                r.on_sample_procs(&s);
            }
        }
    })
    .allocs;
    assert_eq!(n, 0, "{n} allocations in 2000 ticks");
    // The window is really in use: a vector comes out and the model answers.
    assert!(r.features().iter().any(|&x| x != 0.0));
    assert!(r.run_now().is_some());
}
