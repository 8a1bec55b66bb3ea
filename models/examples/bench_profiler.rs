//! Times the shipped Usage Profiler: model load, and single-request inference (features +
//! forward + softmax) over a mix of descriptions.
//!
//! ```text
//! cargo run --release -p persona-models --example bench_profiler -- [--iters 1000]
//! ```

use std::process::ExitCode;
use std::time::Instant;

use persona_models::profiler::{ProfileInput, Profiler};

const INPUTS: [(&str, &[&str], Option<f64>); 6] = [
    (
        "fine-tuning a 7B model with LoRA on our support tickets",
        &["pytorch==2.3", "peft"],
        Some(80.0),
    ),
    ("obs streaming to twitch 1080p60 with nvenc", &[], None),
    (
        "nginx reverse proxy in front of three node apps, ~2k req/s",
        &["nginx"],
        Some(5.0),
    ),
    ("ci", &[], None),
    (
        "Postgres 16 primary for an e-commerce checkout, pgbouncer in front, heavy OLTP, 400GB",
        &["postgresql-16", "pgbouncer"],
        Some(400.0),
    ),
    (
        "Citrix desktops for the accounting team: Office 365, Teams, Outlook and a lot of Excel",
        &[],
        None,
    ),
];

fn main() -> ExitCode {
    let mut iters = 1000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--iters" {
            iters = args.next().and_then(|v| v.parse().ok()).unwrap_or(iters);
        }
    }
    let t = Instant::now();
    let profiler = match Profiler::shipped() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("bench_profiler: {e}");
            return ExitCode::FAILURE;
        }
    };
    let load = t.elapsed();
    let inputs: Vec<(String, Vec<String>, Option<f64>)> = INPUTS
        .iter()
        .map(|(d, s, g)| (d.to_string(), s.iter().map(|x| x.to_string()).collect(), *g))
        .collect();
    // Warm-up: first calls allocate burn's buffers.
    for (d, s, g) in &inputs {
        let _ = profiler.predict(&ProfileInput {
            description: d,
            software: s,
            data_gb: *g,
        });
    }
    let mut times = Vec::with_capacity(iters);
    let mut checksum = 0.0f32;
    for i in 0..iters {
        let (d, s, g) = &inputs[i % inputs.len()];
        let t = Instant::now();
        match profiler.predict(&ProfileInput {
            description: d,
            software: s,
            data_gb: *g,
        }) {
            Ok(p) => checksum += p[0],
            Err(e) => {
                eprintln!("bench_profiler: {e}");
                return ExitCode::FAILURE;
            }
        }
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    let pct = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let doc = serde_json::json!({
        "model_load_ms": load.as_secs_f64() * 1e3,
        "iters": iters,
        "predict_us": { "mean": mean, "p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0) },
        "checksum": checksum,
    });
    println!("{doc:#}");
    ExitCode::SUCCESS
}
