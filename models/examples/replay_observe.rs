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
use persona_shared::metrics::{self, MetricDef};
use persona_shared::sample::{Device, ProcEntry, Sample};
use persona_shared::window::{FEATURE_DIM, Window, WindowConfig};
use serde_json::{Value, json};

fn values<const N: usize>(defs: &[MetricDef], v: &Value) -> [f64; N] {
    let mut out = [f64::NAN; N];
    for (o, d) in out.iter_mut().zip(defs) {
        *o = v.get(d.name).and_then(Value::as_f64).unwrap_or(f64::NAN);
    }
    out
}

fn procs(v: &Value) -> Vec<ProcEntry> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|p| ProcEntry {
            comm: p["comm"].as_str().unwrap_or("").to_owned(),
            cpu_pct: p["cpu_pct"].as_f64().unwrap_or(0.0) as f32,
            rss_bytes: p["rss_bytes"].as_u64().unwrap_or(0),
        })
        .collect()
}

fn sample(v: &Value) -> Sample {
    let mut s = Sample {
        ts_ms: v["ts_ms"].as_i64().unwrap_or(0),
        ..Sample::default()
    };
    s.host = values(&metrics::HOST, &v["host"]);
    s.disk_total = values(&metrics::DISK, &v["disk_total"]);
    s.nic_total = values(&metrics::NIC, &v["nic_total"]);
    if let Some(m) = v["nics"].as_object() {
        for (name, vals) in m {
            s.nics.push(Device {
                name: name.clone(),
                values: values(&metrics::NIC, vals),
            });
        }
    }
    s.top_cpu = procs(&v["top_cpu"]);
    s.top_rss = procs(&v["top_rss"]);
    s
}

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
        let doc: Value = match std::fs::read_to_string(f).map(|t| serde_json::from_str(&t)) {
            Ok(Ok(d)) => d,
            _ => {
                eprintln!("replay_observe: {f}: not an observe JSON document");
                return ExitCode::FAILURE;
            }
        };
        let mut w = Window::new(WindowConfig::default());
        for v in doc["samples"].as_array().into_iter().flatten() {
            let s = sample(v);
            w.set_procs_from_sample(&s);
            w.push_sample(&s);
        }
        let mut x = [0f32; FEATURE_DIM];
        w.features(&mut x);
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
