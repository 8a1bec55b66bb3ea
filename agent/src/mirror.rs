//! Behavioural mirroring in the agent: feeds every sample into the window
//! ([`persona_shared::window`]), runs the mirror model every window step (10 s by default)
//! and keeps the latest distribution for the next sealed batch (`Batch.mirror`) and for
//! `persona-agent observe`.
//!
//! Cost: a push into the window is a few hundred integer operations and never allocates;
//! the process list is taken from each sealed batch (the same list the coordinator gets,
//! so both compute the same vector); inference (burn, one 110-feature vector) runs once
//! per step and allocates its small tensors then, not per tick. The report's strings are
//! updated in place.
//!
//! What it is not: the model (persona-models), its storage and updates (`model_store`),
//! or the schedule of ticks and batches (`daemon`).

use persona_shared::protocol::{Batch, MirrorReport, PersonaProb};
use persona_shared::sample::Sample;
use persona_shared::window::{FEATURE_DIM, Window, WindowConfig};

use crate::model_store::ModelHandle;

/// Default window step: how often the model runs.
pub const DEFAULT_STEP_S: u64 = 10;
/// Accepted window steps, in seconds.
pub const STEP_RANGE_S: std::ops::RangeInclusive<u64> = 1..=3600;

/// The mirror's state in the sampling thread.
#[derive(Debug)]
pub struct MirrorRunner {
    window: Window,
    models: ModelHandle,
    step_ms: i64,
    /// The step (tick / step) the model last ran in.
    last_step: Option<i64>,
    features: [f32; FEATURE_DIM],
    report: Option<MirrorReport>,
    errors: u64,
}

impl MirrorRunner {
    pub fn new(window: WindowConfig, step_s: u64, models: ModelHandle) -> MirrorRunner {
        MirrorRunner {
            window: Window::new(window),
            models,
            step_ms: i64::try_from(step_s.clamp(*STEP_RANGE_S.start(), *STEP_RANGE_S.end()))
                .unwrap_or(10)
                * 1000,
            last_step: None,
            features: [0.0; FEATURE_DIM],
            report: None,
            errors: 0,
        }
    }

    /// Every tick: the sample goes into the window.
    pub fn on_sample(&mut self, s: &Sample) {
        self.window.push_sample(s);
    }

    /// Where no batches are built (`observe`): the sample's own process lists.
    pub fn on_sample_procs(&mut self, s: &Sample) {
        self.window.set_procs_from_sample(s);
    }

    /// When a batch is sealed: its process list goes into the window, the model runs if
    /// the newest sample ends a step (or nothing ran yet), and the latest report is
    /// attached to the batch. Returns whether the batch changed (the caller then
    /// re-encodes its frame). `interval_ms` is the sampling interval.
    pub fn on_seal(&mut self, batch: &mut Batch, interval_ms: i64) -> bool {
        if !batch.procs.is_empty() {
            self.window.set_procs(&batch.procs);
        }
        if let Some(end) = self.window.end_ms() {
            self.step_if_due(end, interval_ms);
        }
        match (&self.report, &mut batch.mirror) {
            (None, _) => false,
            (Some(r), Some(b)) if b == r => false,
            (Some(r), slot) => {
                match slot {
                    Some(b) => b.clone_from(r),
                    None => *slot = Some(r.clone()),
                }
                true
            }
        }
    }

    /// After every tick: runs the model on the last tick of each step. Steps sit on
    /// wall-clock multiples like the batches, so at equal lengths the model runs on the
    /// tick that seals the batch (from [`MirrorRunner::on_seal`]) and the batch carries a
    /// distribution that includes its own last sample.
    pub fn on_tick_end(&mut self, tick_ms: i64, interval_ms: i64) {
        self.step_if_due(tick_ms, interval_ms);
    }

    fn step_if_due(&mut self, now_ms: i64, interval_ms: i64) {
        let step = now_ms.div_euclid(self.step_ms);
        let ends_step = (now_ms + interval_ms.max(1)).div_euclid(self.step_ms) != step;
        if ends_step {
            if self.last_step.is_some_and(|s| s >= step) {
                return;
            }
            self.last_step = Some(step);
            self.run_now();
        } else if self.report.is_none() {
            // Before the first step ends, so the first batches carry something.
            self.run_now();
        }
    }

    /// Runs the model on the window as it is; returns the report (None before the
    /// first sample or when inference failed, which is logged and counted).
    pub fn run_now(&mut self) -> Option<&MirrorReport> {
        let end = self.window.end_ms()?;
        self.window.features(&mut self.features);
        let active = self.models.current();
        let m = &active.mirror;
        let probs = match m.predict(&self.features) {
            Ok(p) => p,
            Err(e) => {
                if self.errors.is_multiple_of(60) {
                    tracing::warn!(errors = self.errors + 1, "mirror inference failed: {e}");
                }
                self.errors += 1;
                return None;
            }
        };
        let report = self.report.get_or_insert_with(MirrorReport::default);
        if report.model_version != m.version() {
            report.model_version.clear();
            report.model_version.push_str(m.version());
        }
        report.window_end_ms = end;
        report
            .distribution
            .resize_with(probs.len(), || PersonaProb {
                slug: String::new(),
                probability: 0.0,
            });
        let mut order: [usize; 64] = std::array::from_fn(|i| i);
        let n = probs.len().min(order.len());
        order[..n].sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        for (slot, &i) in report.distribution.iter_mut().zip(order[..n].iter()) {
            let slug = &m.slugs()[i];
            if slot.slug != *slug {
                slot.slug.clone_from(slug);
            }
            slot.probability = probs[i];
        }
        report.distribution.truncate(n);
        Some(&*report)
    }

    /// The latest report.
    pub fn report(&self) -> Option<&MirrorReport> {
        self.report.as_ref()
    }

    /// The current window vector (for tests and debugging).
    pub fn features(&mut self) -> &[f32; FEATURE_DIM] {
        self.window.features(&mut self.features);
        &self.features
    }
}

/// Adds `mirror` (`[{"slug","probability"}]`, most likely first; empty before the first
/// sample) and `mirror_model` (the version that answered) to an observe document.
pub fn annotate(report: Option<&MirrorReport>, doc: &mut serde_json::Value) {
    let list: Vec<serde_json::Value> = report
        .map(|r| {
            r.distribution
                .iter()
                .map(|p| serde_json::json!({ "slug": p.slug, "probability": p.probability }))
                .collect()
        })
        .unwrap_or_default();
    doc["mirror"] = serde_json::Value::Array(list);
    doc["mirror_model"] = report.map_or(serde_json::Value::Null, |r| {
        serde_json::Value::from(r.model_version.as_str())
    });
}

/// The human form: the three most likely personas on one line.
pub fn print_human(
    report: Option<&MirrorReport>,
    w: &mut impl std::io::Write,
) -> std::io::Result<()> {
    let Some(r) = report else {
        return writeln!(w, "mirror: no window yet");
    };
    let top: Vec<String> = r
        .distribution
        .iter()
        .take(3)
        .map(|p| format!("{} {:.0}%", p.slug, p.probability * 100.0))
        .collect();
    writeln!(w, "mirror ({}): {}", r.model_version, top.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use persona_shared::metrics::host;
    use persona_shared::protocol::WireProc;

    fn busy_sample(t: i64, busy: f64) -> Sample {
        let mut s = Sample {
            ts_ms: t,
            ..Sample::default()
        };
        for i in 0..=host::CPU_STEAL_RATIO {
            s.host[i] = 0.0;
        }
        s.host[host::CPU_USER_RATIO] = busy;
        s.host[host::CPU_ONLINE] = 2.0;
        s
    }

    #[test]
    fn reports_are_sorted_attached_once_per_step_and_versioned() {
        let models = ModelHandle::open(None).expect("shipped model");
        let mut r = MirrorRunner::new(WindowConfig::default(), 10, models.clone());
        assert!(r.run_now().is_none(), "no samples yet");
        let mut batch = Batch::default();
        for i in 0..30 {
            let t = 1_700_000_000_000 + i * 1000;
            r.on_sample(&busy_sample(t, 0.95));
            if i % 10 == 9 {
                batch.procs = vec![WireProc {
                    comm: "ffmpeg".into(),
                    cpu_milli: 1900,
                    rss_kib: 1 << 18,
                }];
                assert!(r.on_seal(&mut batch, 1000));
                let m = batch.mirror.as_ref().expect("report attached");
                assert_eq!(m.model_version, models.version());
                assert_eq!(m.window_end_ms, t);
                assert_eq!(m.distribution.len(), 10);
                assert!(
                    m.distribution
                        .windows(2)
                        .all(|w| w[0].probability >= w[1].probability)
                );
                let sum: f32 = m.distribution.iter().map(|p| p.probability).sum();
                assert!((sum - 1.0).abs() < 1e-4);
                // Sealing again at the same instant does not run the model again.
                assert!(!r.on_seal(&mut batch, 1000));
            }
            r.on_tick_end(t, 1000);
        }
    }
}
