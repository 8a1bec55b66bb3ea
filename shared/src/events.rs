//! Events the agent raises on its own, outside the 10 s batch rhythm: resource pressure
//! (with hysteresis, so one spike is not an event) and anomalies against the VM's own
//! history. They travel on the control stream as soon as they are raised; the
//! coordinator stores them and acknowledges each by id. This module holds only the
//! message types; detection lives in the agent.

use serde::{Deserialize, Serialize};

/// Most events one listing returns (`GET /v1/events`, `personactl events --limit`).
pub const MAX_LIST: usize = 10_000;

/// A resource a pressure event or a sizing decision is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Resource {
    Cpu,
    Memory,
    Io,
    Network,
}

impl Resource {
    /// The inverse of [`Resource::as_str`].
    pub fn parse(s: &str) -> Option<Resource> {
        Resource::ALL.into_iter().find(|r| r.as_str() == s)
    }

    pub const ALL: [Resource; 4] = [
        Resource::Cpu,
        Resource::Memory,
        Resource::Io,
        Resource::Network,
    ];

    /// Lower-case name used in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Cpu => "cpu",
            Resource::Memory => "memory",
            Resource::Io => "io",
            Resource::Network => "network",
        }
    }
}

/// How bad an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    /// The inverse of [`Severity::as_str`].
    pub fn parse(s: &str) -> Option<Severity> {
        match s {
            "info" => Some(Severity::Info),
            "warning" => Some(Severity::Warning),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A resource has been under sustained pressure since `AgentEvent::since_ms`.
    Pressure(Resource),
    /// The pressure on a resource has ended (hysteresis passed).
    PressureCleared(Resource),
    /// The VM's behaviour changed regime against its own baseline.
    RegimeChange,
    /// One process is using far more than it usually does.
    RunawayProcess { comm: String },
    /// Memory in use climbs steadily.
    MemoryLeak,
}

impl EventKind {
    /// Stable snake_case name, stored by the coordinator and shown by `personactl events`.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Pressure(_) => "pressure",
            EventKind::PressureCleared(_) => "pressure_cleared",
            EventKind::RegimeChange => "regime_change",
            EventKind::RunawayProcess { .. } => "runaway_process",
            EventKind::MemoryLeak => "memory_leak",
        }
    }

    /// The resource a pressure event is about (None for anomalies).
    pub fn resource(&self) -> Option<Resource> {
        match self {
            EventKind::Pressure(r) | EventKind::PressureCleared(r) => Some(*r),
            _ => None,
        }
    }
}

/// One number behind an event: what was measured, and the line it crossed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// A series name from the metric registry (`name@instance` where it has one) or a
    /// detector's derived quantity.
    pub name: String,
    pub value: f64,
    pub threshold: f64,
}

/// An event as the agent raises it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentEvent {
    /// Per-agent, strictly increasing; the coordinator de-duplicates by (agent, id).
    pub id: u64,
    pub kind: EventKind,
    pub severity: Severity,
    /// First sample that showed the condition (ms since the Unix epoch).
    pub since_ms: i64,
    /// When the event was raised.
    pub at_ms: i64,
    /// One line for people.
    pub summary: String,
    pub evidence: Vec<Evidence>,
}
