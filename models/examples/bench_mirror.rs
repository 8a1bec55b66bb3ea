//! Mirror inference latency: the shipped model on one window vector, many times.
//!
//! ```text
//! cargo run --release -p persona-models --example bench_mirror -- --iters 10000
//! ```
//! Prints one JSON document: mean, p50 and p99 microseconds per `Mirror::predict` (one
//! window: tensor in, softmax out), the model's version, and the mean cost of the
//! per-tick part (one sample into a full 5-minute window) and of computing the vector.

use std::process::ExitCode;
use std::time::Instant;

use persona_models::Mirror;
use persona_shared::metrics::host;
use persona_shared::sample::Sample;
use persona_shared::window::{FEATURE_DIM, Window, WindowConfig};

fn main() -> ExitCode {
    let mut iters = 10_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next().map(|v| v.parse::<usize>())) {
            ("--iters", Some(Ok(n))) if n > 0 => iters = n,
            _ => {
                eprintln!("bench_mirror: usage: bench_mirror [--iters N]");
                return ExitCode::FAILURE;
            }
        }
    }
    let m = match Mirror::shipped() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("bench_mirror: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut x = [0f32; FEATURE_DIM];
    let mut times = Vec::with_capacity(iters);
    let mut sink = 0f32;
    for i in 0..iters + 100 {
        // A different vector each time, so nothing is cached.
        for (k, v) in x.iter_mut().enumerate() {
            *v = ((i * 31 + k * 7) % 100) as f32 / 100.0;
        }
        let t = Instant::now();
        match m.predict(&x) {
            Ok(p) => sink += p[0],
            Err(e) => {
                eprintln!("bench_mirror: {e}");
                return ExitCode::FAILURE;
            }
        }
        if i >= 100 {
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    // The per-tick part: one sample into a full 5-minute window, and the vector.
    let mut w = Window::new(WindowConfig::default());
    let mut s = Sample::default();
    for k in 0..=host::CPU_STEAL_RATIO {
        s.host[k] = 0.1;
    }
    s.host[host::CPU_ONLINE] = 2.0;
    let mut push = Vec::with_capacity(iters);
    let mut feat = Vec::with_capacity(iters);
    for i in 0..iters + 400 {
        s.ts_ms = 1_700_000_000_000 + i as i64 * 1000;
        s.host[host::CPU_USER_RATIO] = (i % 97) as f64 / 100.0;
        let t = Instant::now();
        w.push_sample(&s);
        let p = t.elapsed().as_secs_f64() * 1e6;
        let t = Instant::now();
        w.features(&mut x);
        let f = t.elapsed().as_secs_f64() * 1e6;
        if i >= 400 {
            push.push(p);
            feat.push(f);
        }
        sink += x[0];
    }
    let mean_of = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    times.sort_by(f64::total_cmp);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let q = |p: f64| times[((times.len() - 1) as f64 * p) as usize];
    println!(
        "{}",
        serde_json::json!({
            "model_version": m.version(),
            "iters": iters,
            "mean_us": mean,
            "p50_us": q(0.5),
            "p99_us": q(0.99),
            "window_push_mean_us": mean_of(&push),
            "window_features_mean_us": mean_of(&feat),
            "checksum": sink,
        })
    );
    ExitCode::SUCCESS
}
