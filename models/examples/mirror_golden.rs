//! Records what the shipped mirror model answers on a fixed set of windows, so that a
//! change to the model-loading or inference code can be shown not to move a single
//! probability (`models/tests/mirror_golden.rs` compares against the record).
//!
//! ```text
//! # the windows (once; they are committed): 4 generated windows per built-in persona
//! # (seed 7) plus an all-zero and an all-0.5 window, f32 little-endian rows
//! cargo run --release -p persona-models --features train --example mirror_golden -- \
//!     windows models/tests/fixtures/mirror_windows.bin
//! # the answers of the model this tree ships, on those windows
//! cargo run --release -p persona-models --features train --example mirror_golden -- \
//!     predict models/tests/fixtures/mirror_windows.bin models/tests/fixtures/mirror_golden.json
//! ```
//! Run `predict` on an older tree (with this file copied in) to record what that code
//! answered; the test then proves the current code answers the same. A retrained model
//! changes the answers on purpose: record them again with `predict`.

use std::process::ExitCode;

use persona_models::Mirror;
use persona_models::mirror_data::{GenConfig, generate};
use persona_models::rng::Rng;
use persona_shared::window::FEATURE_DIM;
use serde_json::json;

#[path = "support/personas.rs"]
mod personas;

const PER_PERSONA: usize = 4;
const SEED: u64 = 7;

fn windows(out: &str) -> Result<(), String> {
    let profiles = personas::load(&personas::default_dir())?;
    let (mut x, _) = generate(
        &profiles,
        PER_PERSONA,
        &GenConfig::default(),
        &mut Rng::new(SEED),
    );
    // Two windows outside what the generator makes: nothing at all, and everything
    // half-way. They exercise the model away from its training data.
    x.extend(std::iter::repeat_n(0.0f32, FEATURE_DIM));
    x.extend(std::iter::repeat_n(0.5f32, FEATURE_DIM));
    let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(out, bytes).map_err(|e| format!("{out}: {e}"))?;
    eprintln!("{} windows written to {out}", x.len() / FEATURE_DIM);
    Ok(())
}

fn predict(windows: &str, out: &str) -> Result<(), String> {
    let bytes = std::fs::read(windows).map_err(|e| format!("{windows}: {e}"))?;
    if bytes.is_empty() || bytes.len() % (FEATURE_DIM * 4) != 0 {
        return Err(format!(
            "{windows}: {} bytes is not a whole number of {FEATURE_DIM}-value rows",
            bytes.len()
        ));
    }
    let mirror = Mirror::shipped().map_err(|e| format!("shipped model: {e}"))?;
    let mut rows = Vec::new();
    for chunk in bytes.chunks_exact(FEATURE_DIM * 4) {
        let mut w = [0.0f32; FEATURE_DIM];
        for (v, b) in w.iter_mut().zip(chunk.chunks_exact(4)) {
            *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        rows.push(mirror.predict(&w).map_err(|e| format!("predict: {e}"))?);
    }
    let doc = json!({
        "model_version": mirror.version(),
        "slugs": mirror.slugs(),
        "windows": rows.len(),
        "probabilities": rows,
    });
    let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    std::fs::write(out, text + "\n").map_err(|e| format!("{out}: {e}"))?;
    eprintln!(
        "{} answers of {} written to {out}",
        rows.len(),
        mirror.version()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["windows", out] => windows(out),
        ["predict", windows, out] => predict(windows, out),
        _ => Err("usage: mirror_golden windows OUT | predict WINDOWS OUT".into()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mirror_golden: {e}");
            ExitCode::FAILURE
        }
    }
}
