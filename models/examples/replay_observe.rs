//! Scores recorded `persona-agent observe --json` documents with a mirror model file, so
//! a new model can be checked against live workloads without running them again.
//!
//! ```text
//! cargo run --release -p persona-models --example replay_observe -- \
//!     --model models/assets/mirror.bin bench/out/*.json
//! ```
//! Each document's samples are replayed through the agent's window code (the values in
//! the document are already rounded to the wire precision, so the vector is the one the
//! agent computed); prints one JSON document: per file, the top three personas (and with
//! `--features`, the window vector by feature name).

use std::process::ExitCode;

use persona_models::Mirror;
use serde_json::{Value, json};

#[path = "support/observe.rs"]
mod observe;

fn main() -> ExitCode {
    let mut model = None;
    let mut show_features = false;
    let mut files = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--model" => model = args.next(),
            "--features" => show_features = true,
            _ => files.push(a),
        }
    }
    let bytes = match &model {
        Some(p) => match std::fs::read(p) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("replay_observe: {p}: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => Mirror::shipped_bytes().to_vec(),
    };
    let m = match Mirror::from_bytes(&bytes) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("replay_observe: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = Vec::new();
    for f in &files {
        let x = match observe::window_of(f) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("replay_observe: {e}");
                return ExitCode::FAILURE;
            }
        };
        let p = match m.predict(&x) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("replay_observe: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut order: Vec<usize> = (0..p.len()).collect();
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
        let top: Vec<Value> = order
            .iter()
            .take(3)
            .map(|&i| json!({"slug": m.slugs()[i], "probability": p[i]}))
            .collect();
        let mut r = json!({"file": f, "top": top});
        if show_features {
            let names = persona_shared::window::feature_names();
            r["features"] = names
                .iter()
                .zip(x.iter())
                .map(|(n, v)| (n.clone(), json!(v)))
                .collect::<serde_json::Map<String, Value>>()
                .into();
        }
        out.push(r);
    }
    println!("{}", json!({"model": m.version(), "results": out}));
    ExitCode::SUCCESS
}
