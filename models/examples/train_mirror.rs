//! Trains the mirror model on windows generated from the built-in personas and writes the
//! model file the agent ships with.
//!
//! ```text
//! cargo run --release -p persona-models --features train --example train_mirror -- \
//!     --out models/assets/mirror.bin --seed 42
//! ```
//! Reads `coordinator/personas/*.toml` (the persona database's built-in files; only the
//! slug, software and weekly usage are used). Prints the training report as one JSON
//! document on stdout. `--per-persona N --epochs N --hidden N` override the defaults for
//! experiments; the shipped model uses the defaults. `created_ms` is 0 so the same seed
//! gives the same bytes.

use std::path::PathBuf;
use std::process::ExitCode;

use persona_models::mirror_train::{MirrorTrainConfig, train_mirror};

#[path = "support/personas.rs"]
mod personas;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("train_mirror: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut out = None;
    let mut seed = 42u64;
    let mut dir = personas::default_dir();
    let mut cfg = MirrorTrainConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        let num = |v: String| v.parse::<usize>().map_err(|e| format!("{a}: {e}"));
        match a.as_str() {
            "--out" => out = Some(PathBuf::from(val()?)),
            "--personas" => dir = PathBuf::from(val()?),
            "--seed" => seed = val()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--per-persona" => cfg.per_persona = num(val()?)?,
            "--epochs" => cfg.epochs = num(val()?)?,
            "--hidden" => cfg.hidden = num(val()?)?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let profiles = personas::load(&dir)?;
    let (bytes, report) = train_mirror(&profiles, &[], seed, 0, &cfg).map_err(|e| e.to_string())?;
    if let Some(path) = &out {
        std::fs::write(path, &bytes).map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!(
            "wrote {} ({} bytes, version {}, sha256 {})",
            path.display(),
            bytes.len(),
            report.version,
            report.sha256
        );
    }
    eprintln!(
        "generated-window top1 {:.4} top2 {:.4} (n_eval {}), {:.1} s",
        report.top1, report.top2, report.n_eval, report.seconds
    );
    let doc = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    println!("{doc}");
    Ok(())
}
