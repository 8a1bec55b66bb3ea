//! Where a recorded live window falls against the generator's windows of a persona, and
//! which features move the model's answer: the tool behind the generator fixes recorded
//! in docs/EVALUATION.md ("Mirroring: live workloads").
//!
//! ```text
//! cargo run --release -p persona-models --features train --example mirror_compare -- \
//!     --slug database-oltp [--model FILE] [--n 400] [--seed 7] bench/out/RUN/database.json
//! ```
//! For each recorded `persona-agent observe --json` document: the model's top three; then
//! per feature (the process bag counts as one feature, "procs.bag", replaced by its mean) the live value, the
//! 5th/50th/95th percentiles over `--n` generated windows of `--slug` and of the model's
//! top persona, and the change in `--slug`'s probability when the live value is replaced
//! by `--slug`'s generated median (the features that cost `--slug` the most come first).
//! Prints one JSON document on stdout.

use std::process::ExitCode;

use persona_models::Mirror;
use persona_models::mirror_data::{GenConfig, PersonaProfile, generate};
use persona_models::rng::Rng;
use persona_shared::window::{FEATURE_DIM, PROC_BUCKETS, feature_names};
use serde_json::{Value, json};

#[path = "support/observe.rs"]
mod observe;
#[path = "support/personas.rs"]
mod personas;

const SCALAR: usize = FEATURE_DIM - PROC_BUCKETS;

/// Generated windows of one persona, row-major.
fn windows_of(p: &PersonaProfile, n: usize, seed: u64) -> Vec<f32> {
    generate(
        std::slice::from_ref(p),
        n,
        &GenConfig::default(),
        &mut Rng::new(seed),
    )
    .0
}

fn quantiles(rows: &[f32], f: usize) -> [f32; 3] {
    let mut v: Vec<f32> = rows.chunks_exact(FEATURE_DIM).map(|r| r[f]).collect();
    v.sort_by(f32::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    [at(0.05), at(0.5), at(0.95)]
}

/// The mean process bag (a per-bucket median would be almost all zeros).
fn mean_bag(rows: &[f32]) -> Vec<f32> {
    let n = (rows.len() / FEATURE_DIM).max(1) as f32;
    (SCALAR..FEATURE_DIM)
        .map(|f| rows.chunks_exact(FEATURE_DIM).map(|r| r[f]).sum::<f32>() / n)
        .collect()
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mirror_compare: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let (mut model, mut slug, mut n, mut seed) = (None, None, 400usize, 7u64);
    let mut files = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--model" => model = Some(val()?),
            "--slug" => slug = Some(val()?),
            "--n" => n = val()?.parse().map_err(|e| format!("--n: {e}"))?,
            "--seed" => seed = val()?.parse().map_err(|e| format!("--seed: {e}"))?,
            _ => files.push(a),
        }
    }
    let slug = slug.ok_or("--slug is required")?;
    if n < 20 {
        return Err("--n must be at least 20".into());
    }
    let bytes = match &model {
        Some(p) => std::fs::read(p).map_err(|e| format!("{p}: {e}"))?,
        None => Mirror::shipped_bytes().to_vec(),
    };
    let m = Mirror::from_bytes(&bytes).map_err(|e| e.to_string())?;
    let profiles = personas::load(&personas::default_dir())?;
    let find = |s: &str| {
        profiles
            .iter()
            .find(|p| p.slug == s)
            .ok_or(format!("no persona {s:?}"))
    };
    let target = find(&slug)?;
    let t_idx = m
        .slugs()
        .iter()
        .position(|s| *s == slug)
        .ok_or(format!("the model has no persona {slug:?}"))?;
    let t_rows = windows_of(target, n, seed);
    let names = feature_names();
    let mut results = Vec::new();
    for f in &files {
        let x = observe::window_of(f)?;
        let p = m.predict(&x).map_err(|e| e.to_string())?;
        let mut order: Vec<usize> = (0..p.len()).collect();
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
        let top_slug = m.slugs()[order[0]].clone();
        let o_rows = windows_of(find(&top_slug)?, n, seed + 1);
        let mut feats = Vec::new();
        let probe = |x2: &[f32; FEATURE_DIM]| m.predict(x2).map(|q| q[t_idx] - p[t_idx]);
        for k in 0..SCALAR {
            let tq = quantiles(&t_rows, k);
            let mut x2 = x;
            x2[k] = tq[1];
            let gain = probe(&x2).map_err(|e| e.to_string())?;
            feats.push(json!({
                "feature": names[k], "live": x[k], "slug_p5_p50_p95": tq,
                "top_p5_p50_p95": quantiles(&o_rows, k), "gain_at_slug_median": gain,
            }));
        }
        let mut x2 = x;
        x2[SCALAR..].copy_from_slice(&mean_bag(&t_rows));
        let gain = probe(&x2).map_err(|e| e.to_string())?;
        feats.push(json!({"feature": "procs.bag", "gain_at_slug_median": gain}));
        feats.sort_by(|a, b| {
            let g = |v: &Value| v["gain_at_slug_median"].as_f64().unwrap_or(0.0);
            g(b).total_cmp(&g(a))
        });
        let top: Vec<Value> = order
            .iter()
            .take(3)
            .map(|&i| json!({"slug": m.slugs()[i], "probability": p[i]}))
            .collect();
        results.push(json!({"file": f, "top": top, "features": feats}));
    }
    let doc = json!({"model": m.version(), "slug": slug, "n": n, "results": results});
    println!(
        "{}",
        serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?
    );
    Ok(())
}
