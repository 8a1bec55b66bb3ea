//! The coordinator's `/metrics`: its counters and a per-VM view, rendered in the
//! Prometheus text exposition format (0.0.4) for `GET /metrics` on the HTTP API address.
//!
//! Names follow Prometheus conventions: a `persona_` prefix, base units in the name
//! (`_bytes`, `_seconds`), `_total` on counters. Per-VM families (`persona_vm_*`) carry
//! `agent` and `hostname` labels. Families whose data arrives with later issues
//! (commands by state: issue 7; top persona: issues 4 and 5; recommended size: issue 6)
//! are emitted with HELP and TYPE but no series yet, so dashboards and alerts can
//! be written against the final names today; each is marked `TODO(issue N)` below, which
//! is where the values get filled in. This module renders only; the counters live in
//! `server::Stats` and the facts in the store.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use serde_json::Value;

use crate::app::App;
use crate::store::StoreError;

/// One series: rendered label set (`{a="b"}` or empty) and value.
type Series = (String, f64);

/// Escapes a label value (backslash, double quote, newline), as the format requires.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn family(out: &mut String, name: &str, kind: &str, help: &str, series: &[Series]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in series {
        if v.is_finite() {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    }
}

fn one(v: f64) -> Vec<Series> {
    vec![(String::new(), v)]
}

/// Renders the whole exposition. Reads the store (a few queries), so call it off the
/// async threads.
pub fn render(app: &App) -> Result<String, StoreError> {
    let s = &app.stats;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
    let mut out = String::with_capacity(8192);
    family(
        &mut out,
        "persona_build_info",
        "gauge",
        "Always 1; the coordinator version is in the label.",
        &[(
            format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION")),
            1.0,
        )],
    );
    let connected = app.live.connected();
    family(
        &mut out,
        "persona_agents_connected",
        "gauge",
        "Agents with a live QUIC connection.",
        &one(connected.len() as f64),
    );
    family(
        &mut out,
        "persona_agent_connections_total",
        "counter",
        "Authenticated agent connections accepted.",
        &one(load(&s.connections)),
    );
    family(
        &mut out,
        "persona_enrollments_total",
        "counter",
        "Agents enrolled with a join token.",
        &one(load(&s.enrollments)),
    );
    family(
        &mut out,
        "persona_batches_ingested_total",
        "counter",
        "Telemetry batches committed to the database (duplicates excluded).",
        &one(load(&s.batches)),
    );
    family(
        &mut out,
        "persona_batches_duplicate_total",
        "counter",
        "Batches received again after a reconnect and acknowledged without storing.",
        &one(load(&s.duplicate_batches)),
    );
    family(
        &mut out,
        "persona_engine_passes_total",
        "counter",
        "Passes of the configuration engine over the VMs in initial and auto mode.",
        &one(load(&s.engine_passes)),
    );
    family(
        &mut out,
        "persona_samples_ingested_total",
        "counter",
        "Values (metric points) committed to the database.",
        &one(load(&s.samples)),
    );
    family(
        &mut out,
        "persona_received_bytes_total",
        "counter",
        "Frame bytes received on agent streams.",
        &one(load(&s.bytes_received)),
    );
    family(
        &mut out,
        "persona_ingest_seconds_total",
        "counter",
        "Time spent committing batches to the database.",
        &one(load(&s.ingest_nanos) / 1e9),
    );
    let rejected: Vec<Series> = s
        .rejected()
        .into_iter()
        .map(|(reason, n)| (format!("{{reason=\"{}\"}}", escape_label(reason)), n as f64))
        .collect();
    family(
        &mut out,
        "persona_rejected_total",
        "counter",
        "Refused connections, streams and batches, by reason (see docs/protocol.md).",
        &rejected,
    );
    // TODO(issue 7): one series per command state (pending, sent, acked, failed, expired)
    // once commands exist.
    family(
        &mut out,
        "persona_commands",
        "gauge",
        "Commands by state (no series until commands exist, issue 7).",
        &[],
    );

    let mut enrolled = 0.0;
    let (mut up, mut vcpus, mut mem, mut seen) = (vec![], vec![], vec![], vec![]);
    for a in app.store.list_agents()? {
        if a.revoked_ms.is_some() {
            continue;
        }
        enrolled += 1.0;
        let labels = format!(
            "{{agent=\"{}\",hostname=\"{}\"}}",
            escape_label(&a.id),
            escape_label(&a.hostname)
        );
        let live = app
            .store
            .agent_key(&a.id)?
            .is_some_and(|k| connected.contains(&k));
        up.push((labels.clone(), if live { 1.0 } else { 0.0 }));
        let facts = a.facts.as_ref();
        let fact = |k: &str| facts.and_then(|f| f.get(k)).and_then(Value::as_f64);
        if let Some(n) = fact("cpus_online") {
            vcpus.push((labels.clone(), n));
        }
        if let Some(n) = fact("mem_total_bytes") {
            mem.push((labels.clone(), n));
        }
        if let Some(ms) = a.last_seen_ms {
            seen.push((labels, ms as f64 / 1000.0));
        }
    }
    family(
        &mut out,
        "persona_agents_enrolled",
        "gauge",
        "Enrolled agents that are not revoked.",
        &one(enrolled),
    );
    family(
        &mut out,
        "persona_vm_connected",
        "gauge",
        "1 while the VM's agent is connected.",
        &up,
    );
    family(
        &mut out,
        "persona_vm_last_seen_timestamp_seconds",
        "gauge",
        "When the VM's agent last delivered anything (Unix time).",
        &seen,
    );
    family(
        &mut out,
        "persona_vm_vcpus",
        "gauge",
        "Online vCPUs the VM reports (current size).",
        &vcpus,
    );
    family(
        &mut out,
        "persona_vm_memory_bytes",
        "gauge",
        "Memory the VM reports (current size).",
        &mem,
    );
    // TODO(issues 4 and 5, profiler and mirroring): fill from the VM's persona
    // distribution, one series per VM with its top persona in the `persona` label.
    family(
        &mut out,
        "persona_vm_top_persona_probability",
        "gauge",
        "Probability of the VM's most likely persona (no series until the profiler runs).",
        &[],
    );
    // TODO(issue 6, engine): fill from the engine's recommendation for the VM.
    family(
        &mut out,
        "persona_vm_recommended_vcpus",
        "gauge",
        "vCPUs the engine recommends (no series until the engine runs).",
        &[],
    );
    family(
        &mut out,
        "persona_vm_recommended_memory_bytes",
        "gauge",
        "Memory the engine recommends (no series until the engine runs).",
        &[],
    );
    Ok(out)
}

/// `GET /metrics`: renders off the async threads (it reads the store).
pub async fn response(app: std::sync::Arc<App>) -> super::Resp {
    use bytes::Bytes;
    use http_body_util::Full;
    match tokio::task::spawn_blocking(move || render(&app)).await {
        Ok(Ok(text)) => {
            let mut r = hyper::Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        Ok(Err(e)) => super::reply::internal(e),
        Err(e) => super::reply::internal(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn families_have_help_and_type() {
        let mut out = String::new();
        family(&mut out, "x_total", "counter", "X.", &one(3.0));
        family(
            &mut out,
            "y",
            "gauge",
            "Y.",
            &[("{a=\"b\"}".into(), f64::NAN)],
        );
        assert_eq!(
            out,
            "# HELP x_total X.\n# TYPE x_total counter\nx_total 3\n# HELP y Y.\n# TYPE y gauge\n"
        );
    }
}
