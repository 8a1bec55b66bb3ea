//! Why a recommendation is what it is: one [`Reason`] per input that moved or bound a
//! value, in the order the engine applied them, so an operator can read the chain from
//! the persona prior to the last bound.
//!
//! What it is not: logging. Reasons are part of the recommendation document
//! (`personactl recommend --json`) and are stable enough to script against by `kind`.

use serde::Serialize;

/// What kind of input a reason is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The persona distribution and the probability-weighted requirement.
    PersonaWeights,
    /// How much the observed history counts against the prior.
    Confidence,
    /// A percentile of the decaying histogram.
    Percentile,
    /// The highest usage in the recent window.
    RecentPeak,
    /// A pressure event.
    Pressure,
    /// A forecast peak ahead.
    Forecast,
    /// An explicit spec from the profiler (a floor).
    Floor,
    /// Platform step rounding.
    Step,
    /// A per-VM or platform bound.
    Bound,
    /// A scale-down held back until the evidence has lasted long enough.
    Hysteresis,
    /// A change held back by the cooldown.
    Cooldown,
}

/// One reason.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reason {
    /// "cpu", "memory" or "all".
    pub resource: &'static str,
    pub kind: Kind,
    /// The value this step produced (cores or GiB), when it produced one.
    pub value: Option<f64>,
    pub detail: String,
}

impl Reason {
    pub fn new(resource: &'static str, kind: Kind, value: Option<f64>, detail: String) -> Self {
        Self {
            resource,
            kind,
            value: value.map(|v| (v * 1000.0).round() / 1000.0),
            detail,
        }
    }
}

/// Human text for a duration in seconds ("12 h", "90 s").
pub fn dur(s: f64) -> String {
    if s >= 3600.0 && (s % 3600.0).abs() < 1e-6 {
        format!("{} h", s / 3600.0)
    } else if s >= 60.0 && (s % 60.0).abs() < 1e-6 {
        format!("{} min", s / 60.0)
    } else {
        format!("{s} s")
    }
}

/// A reason list that can be switched off: the trace replay evaluates millions of
/// estimates and needs none of the text, so nothing is formatted unless it is on.
#[derive(Debug, Default)]
pub struct Why {
    list: Option<Vec<Reason>>,
}

impl Why {
    /// Collects reasons.
    pub fn on() -> Self {
        Self {
            list: Some(Vec::new()),
        }
    }

    /// Collects nothing and formats nothing.
    pub fn off() -> Self {
        Self { list: None }
    }

    /// Adds a reason; `detail` is only called when collecting.
    pub fn add(
        &mut self,
        resource: &'static str,
        kind: Kind,
        value: Option<f64>,
        detail: impl FnOnce() -> String,
    ) {
        if let Some(l) = self.list.as_mut() {
            l.push(Reason::new(resource, kind, value, detail()));
        }
    }

    /// How many reasons of `kind` were collected.
    pub fn count(&self, kind: Kind) -> usize {
        self.list
            .as_ref()
            .map_or(0, |l| l.iter().filter(|r| r.kind == kind).count())
    }

    pub fn has(&self, kind: Kind) -> bool {
        self.count(kind) > 0
    }

    pub fn into_vec(self) -> Vec<Reason> {
        self.list.unwrap_or_default()
    }
}
