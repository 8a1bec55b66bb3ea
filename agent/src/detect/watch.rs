//! The detectors for `persona-agent observe`: the same [`Detector`] as the daemon, with
//! the default thresholds, but nothing queued or sent. It keeps every event it raised
//! (numbered from 1 for this run) and renders the pressure status per resource and the
//! anomalies for the `observe` output, so an operator sees on any box what the agent
//! makes of it.

use std::io::{self, Write};

use persona_shared::events::{AgentEvent, EventKind};
use persona_shared::facts::HostFacts;
use persona_shared::sample::Sample;
use serde_json::{Value, json};

use super::{DetectConfig, Detector, TickExtra, level_name};

/// Detection for one `observe` run.
#[derive(Debug)]
pub struct Watch {
    detector: Detector,
    buf: Vec<AgentEvent>,
    events: Vec<AgentEvent>,
}

fn num(x: f64) -> Value {
    serde_json::Number::from_f64((x * 1000.0).round() / 1000.0).map_or(Value::Null, Value::Number)
}

fn event_json(e: &AgentEvent) -> Value {
    let comm = match &e.kind {
        EventKind::RunawayProcess { comm } => Some(comm.as_str()),
        _ => None,
    };
    json!({
        "id": e.id,
        "kind": e.kind.name(),
        "resource": e.kind.resource().map(|r| r.as_str()),
        "process": comm,
        "severity": e.severity.as_str(),
        "since_ms": e.since_ms,
        "at_ms": e.at_ms,
        "summary": e.summary,
        "evidence": e.evidence.iter().map(|v| json!({"name": v.name, "value": num(v.value), "threshold": num(v.threshold)})).collect::<Vec<_>>(),
    })
}

impl Watch {
    pub fn new(facts: &HostFacts) -> Self {
        Self::with_config(&DetectConfig::default(), facts)
    }

    pub fn with_config(cfg: &DetectConfig, facts: &HostFacts) -> Self {
        Self {
            detector: Detector::new(cfg, facts),
            buf: Vec::new(),
            events: Vec::new(),
        }
    }

    pub fn set_facts(&mut self, facts: &HostFacts) {
        self.detector.set_facts(facts);
    }

    pub fn tick(&mut self, s: &Sample, extra: TickExtra) {
        self.detector.observe(s, extra, &mut self.buf);
        for mut e in self.buf.drain(..) {
            e.id = self.events.len() as u64 + 1;
            self.events.push(e);
        }
    }

    /// `{"cpu": {"state", "since_ms", "evidence"}, "memory": ..., "io": ..., "network": ...}`
    pub fn pressure_json(&self) -> Value {
        let m: serde_json::Map<String, Value> = self
            .detector
            .pressure_status()
            .iter()
            .map(|st| {
                (
                    st.resource.as_str().to_owned(),
                    json!({
                        "state": level_name(st.level),
                        "since_ms": st.since_ms,
                        "evidence": st.evidence.iter().map(|v| json!({"name": v.name, "value": num(v.value), "threshold": num(v.threshold)})).collect::<Vec<_>>(),
                    }),
                )
            })
            .collect();
        Value::Object(m)
    }

    /// Every anomaly event of the run (regime change, runaway process, leak).
    pub fn anomalies_json(&self) -> Value {
        Value::Array(
            self.events
                .iter()
                .filter(|e| e.kind.resource().is_none())
                .map(event_json)
                .collect(),
        )
    }

    /// Every event of the run, pressure included.
    pub fn events_json(&self) -> Value {
        Value::Array(self.events.iter().map(event_json).collect())
    }

    /// Adds `pressure`, `anomalies` and `events` to the observe document.
    pub fn annotate(&self, doc: &mut Value) {
        doc["pressure"] = self.pressure_json();
        doc["anomalies"] = self.anomalies_json();
        doc["events"] = self.events_json();
    }

    /// Prints one line: the pressure state per resource and the number of anomalies
    /// (the events themselves are in the JSON output).
    pub fn print_status(&self, w: &mut impl Write) -> io::Result<()> {
        let states: Vec<String> = self
            .detector
            .pressure_status()
            .iter()
            .map(|st| format!("{} {}", st.resource.as_str(), level_name(st.level)))
            .collect();
        let anomalies = self
            .events
            .iter()
            .filter(|e| e.kind.resource().is_none())
            .count();
        writeln!(w, "pressure: {}; anomalies: {anomalies}", states.join(", "))
    }
}
