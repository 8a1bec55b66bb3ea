//! Training the mirror model on the coordinator, and its admin API.
//!
//! What it is for: `personactl model train` (`POST /v1/model/train`) trains the profiler
//! (`profiling`) and then the mirror model: windows generated from every persona in the
//! database (their hourly p50/p95 profiles) plus the fleet's feedback windows. A feedback
//! window is what an agent did in the window before a confident, stable observation
//! (`feedback_examples`, written by `belief`): its stored batches are replayed through the
//! same window code the agent runs ([`persona_shared::window`]), so the vector is the one
//! the agent saw. The new model gets its version and SHA-256, is stored
//! (`model_push::register`) and published: connected agents get it at once.
//! `POST /v1/model/mirror` imports a model file trained elsewhere (the `train_mirror`
//! example), after checking it loads; `GET /v1/model/mirror` shows the current one.
//!
//! What it is not: the model or the generator (persona-models), or the push itself
//! (`model_push`).

use persona_models::mirror_data::{HourlySeries, PersonaProfile};
use persona_models::mirror_train::{LabelledWindow, MirrorTrainConfig, MirrorTrainReport};
use persona_shared::window::{Window, WindowConfig};
use serde::Serialize;
use serde_json::Value;

use crate::model::push::{self, ModelHub, RegisterError};
use crate::profile::personas::{Persona, Series};
use crate::store::{Store, StoreError, now_ms};

/// Why the mirror model could not be trained.
#[derive(Debug, thiserror::Error)]
pub enum MirrorTrainError {
    #[error("persona database: {0}")]
    Personas(String),
    #[error("reading the feedback windows: {0}")]
    Store(#[from] StoreError),
    #[error("training: {0}")]
    Model(#[from] persona_models::ModelError),
    #[error(transparent)]
    Register(#[from] RegisterError),
    #[error("a mirror model is already being trained; try again when it finishes")]
    Busy,
}

/// What a mirror training run produced.
#[derive(Debug, Clone, Serialize)]
pub struct MirrorOutcome {
    pub report: MirrorTrainReport,
    /// Feedback rows found, and those without enough stored telemetry to make a window.
    pub feedback_rows: usize,
    pub feedback_without_data: usize,
    pub model: Value,
}

fn hourly(s: &Series) -> HourlySeries {
    HourlySeries {
        p50: s.p50.clone(),
        p95: s.p95.clone(),
    }
}

/// The generator's view of a persona.
pub fn profile_of(p: &Persona) -> PersonaProfile {
    let sw = &p.software;
    PersonaProfile {
        slug: p.slug.clone(),
        cpu_cores: hourly(&p.usage.cpu_cores),
        memory_gib: hourly(&p.usage.memory_gib),
        disk_mbps: hourly(&p.usage.disk_mbps),
        network_mbps: hourly(&p.usage.network_mbps),
        software: sw
            .deb
            .iter()
            .chain(&sw.pip)
            .chain(&sw.npm)
            .chain(&sw.containers)
            .map(|x| x.name.clone())
            .collect(),
    }
}

/// Fewest points a feedback window must have to be used.
const MIN_POINTS: usize = 30;

/// The window vector of an agent's telemetry ending at `end_ms`, replayed from the stored
/// batches (and their process lists). None when there are fewer than [`MIN_POINTS`].
pub fn window_at(
    store: &Store,
    agent_key: i64,
    end_ms: i64,
    cfg: WindowConfig,
) -> Result<Option<Vec<f32>>, StoreError> {
    let batches = store.batches_between(agent_key, end_ms - cfg.window_ms, end_ms)?;
    let mut w = Window::new(cfg);
    let mut scratch = Vec::new();
    for b in batches {
        // A batch past `end_ms` is cut: only its earlier points count.
        scratch.clear();
        persona_shared::window::points_from_batch(&b, &mut scratch).map_err(|e| {
            StoreError::Corrupt {
                agent: agent_key.to_string(),
                seq: b.seq,
                reason: e.to_string(),
            }
        })?;
        for p in scratch.iter().filter(|p| p.ts_ms <= end_ms) {
            w.push(*p);
        }
        if !b.procs.is_empty() {
            w.set_procs(&b.procs);
        }
    }
    if w.len() < MIN_POINTS {
        return Ok(None);
    }
    let mut f = [0f32; persona_shared::window::FEATURE_DIM];
    w.features(&mut f);
    Ok(Some(f.to_vec()))
}

/// Feedback windows from `feedback_examples`: (windows, rows, rows without data).
pub fn feedback_windows(store: &Store) -> Result<(Vec<LabelledWindow>, usize, usize), StoreError> {
    let rows = store.feedback_labels()?;
    let mut out = Vec::new();
    let mut missing = 0;
    for row in &rows {
        let features = match store.agent_key(&row.agent_id)? {
            Some(k) => window_at(store, k, row.at_ms, WindowConfig::default())?,
            None => None,
        };
        match features {
            Some(features) => out.push(LabelledWindow {
                slug: row.observed_slug.clone(),
                features,
            }),
            None => missing += 1,
        }
    }
    Ok((out, rows.len(), missing))
}

/// One mirror training at a time per process.
static TRAINING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Trains a mirror model over `personas` and the feedback windows, stores it and makes it
/// current (connected agents get it at once). Blocking: call it from a blocking task.
pub fn train_and_publish(
    store: &Store,
    hub: &ModelHub,
    personas: &[Persona],
    seed: u64,
    cfg: &MirrorTrainConfig,
) -> Result<MirrorOutcome, MirrorTrainError> {
    let _one = TRAINING.try_lock().map_err(|_| MirrorTrainError::Busy)?;
    if personas.is_empty() {
        return Err(MirrorTrainError::Personas(
            "no personas in the database".into(),
        ));
    }
    let profiles: Vec<PersonaProfile> = personas.iter().map(profile_of).collect();
    let (feedback, rows, missing) = feedback_windows(store)?;
    let (bytes, report) =
        persona_models::mirror_train::train_mirror(&profiles, &feedback, seed, now_ms(), cfg)?;
    let report_json = serde_json::to_value(&report).unwrap_or(Value::Null);
    let served = push::register(store, bytes, &report_json)?;
    let model = served.json();
    hub.publish(served);
    Ok(MirrorOutcome {
        report,
        feedback_rows: rows,
        feedback_without_data: missing,
        model,
    })
}

/// Largest body of `POST /v1/model/mirror` (a model file).
pub const MAX_IMPORT_BYTES: usize = persona_models::mirror::MAX_MODEL_BYTES;

#[cfg(test)]
mod tests {
    use super::*;
    use persona_shared::batch::BatchBuilder;
    use persona_shared::metrics::host;
    use persona_shared::protocol::WireProc;
    use persona_shared::sample::Sample;

    /// The coordinator's window over stored batches equals the agent's over the samples.
    #[test]
    fn stored_batches_replay_to_the_agents_vector() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("persona.db")).unwrap();
        // An agent row to hang batches on.
        let (token, _) = store.create_token(60_000, 1).unwrap();
        store.enroll(&token, "a7", "h", "fp").unwrap().unwrap();
        let key = store.agent_key("a7").unwrap().unwrap();
        let cfg = WindowConfig { window_ms: 60_000 };
        let mut agent = Window::new(cfg);
        let mut builder = BatchBuilder::new();
        let t0 = now_ms() - 200_000;
        let mut items = Vec::new();
        for i in 0..120i64 {
            let mut s = Sample {
                ts_ms: t0 + i * 1000,
                ..Sample::default()
            };
            for k in 0..=host::CPU_STEAL_RATIO {
                s.host[k] = 0.0;
            }
            s.host[host::CPU_USER_RATIO] = (i % 13) as f64 / 20.0;
            s.host[host::CPU_ONLINE] = 4.0;
            agent.push_sample(&s);
            builder.push(&s);
            if i % 10 == 9 {
                let mut b = builder.finish(u64::try_from(i).unwrap()).unwrap();
                b.procs = vec![WireProc {
                    comm: format!("p{}", i / 40),
                    cpu_milli: 500,
                    rss_kib: 1,
                }];
                agent.set_procs(&b.procs);
                items.push(crate::store::IngestItem {
                    agent_key: key,
                    start_ms: t0 + (i - 9) * 1000,
                    end_ms: t0 + i * 1000,
                    points: 10,
                    batch: b,
                });
            }
        }
        store.ingest(&items).unwrap();
        let got = window_at(&store, key, t0 + 119_000, cfg).unwrap().unwrap();
        let mut want = [0f32; persona_shared::window::FEATURE_DIM];
        agent.features(&mut want);
        assert_eq!(got, want.to_vec());
        assert!(window_at(&store, key, t0 - 1, cfg).unwrap().is_none());
    }
}
