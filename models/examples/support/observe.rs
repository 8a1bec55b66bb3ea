//! Turning a recorded `persona-agent observe --json` document back into the window vector
//! the agent computed, for the examples that re-score or probe live recordings. The values
//! in the document are already rounded to the wire precision, so replaying them through
//! the agent's window code gives the agent's vector.

use persona_shared::metrics::{self, MetricDef};
use persona_shared::sample::{Device, ProcEntry, Sample};
use persona_shared::window::{FEATURE_DIM, Window, WindowConfig};
use serde_json::Value;

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

/// Reads `path` and returns the window vector over all its samples.
pub fn window_of(path: &str) -> Result<[f32; FEATURE_DIM], String> {
    let doc: Value = match std::fs::read_to_string(path).map(|t| serde_json::from_str(&t)) {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => return Err(format!("{path}: not an observe JSON document: {e}")),
        Err(e) => return Err(format!("{path}: {e}")),
    };
    let samples = doc["samples"]
        .as_array()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("{path}: no samples"))?;
    let mut w = Window::new(WindowConfig::default());
    for v in samples {
        let s = sample(v);
        w.set_procs_from_sample(&s);
        w.push_sample(&s);
    }
    let mut x = [0f32; FEATURE_DIM];
    w.features(&mut x);
    Ok(x)
}
