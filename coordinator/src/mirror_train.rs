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

use bytes::Bytes;
use hyper::{Method, StatusCode};
use persona_models::mirror_data::{HourlySeries, PersonaProfile};
use persona_models::mirror_train::{LabelledWindow, MirrorTrainConfig, MirrorTrainReport};
use persona_shared::protocol::Batch;
use persona_shared::window::{Window, WindowConfig};
use rusqlite::params;
use serde::Serialize;
use serde_json::{Value, json};

use crate::api::{ApiState, Resp, error, reply};
use crate::model_push::{self, ModelHub, RegisterError};
use crate::personas::{Persona, Series};
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
    let batches: Vec<Batch> = {
        let c = store.r()?;
        let mut st = c
            .prepare_cached(
                "SELECT seq, ts, instances, idx, data FROM batches
                 WHERE agent = ?1 AND end_ms >= ?2 AND start_ms <= ?3 ORDER BY start_ms",
            )
            .map_err(|source| StoreError::Sql {
                context: "feedback window",
                source,
            })?;
        let rows = st
            .query_map(params![agent_key, end_ms - cfg.window_ms, end_ms], |r| {
                let instances: String = r.get(2)?;
                Ok(Batch {
                    seq: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                    timestamps: r.get(1)?,
                    instances: if instances.is_empty() {
                        Vec::new()
                    } else {
                        instances.split('\n').map(str::to_owned).collect()
                    },
                    index: r.get(3)?,
                    data: r.get(4)?,
                    procs: Vec::new(),
                    mirror: None,
                })
            })
            .map_err(|source| StoreError::Sql {
                context: "feedback window",
                source,
            })?;
        rows.collect::<Result<_, _>>()
            .map_err(|source| StoreError::Sql {
                context: "feedback window",
                source,
            })?
    };
    let mut w = Window::new(cfg);
    let mut scratch = Vec::new();
    for mut b in batches {
        let seq = i64::try_from(b.seq).unwrap_or(i64::MAX);
        b.procs = model_push::batch_procs(store, agent_key, seq)?;
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
    let rows: Vec<(String, i64, String)> = {
        let c = store.r()?;
        let exists: bool = c
            .query_row(
                "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'feedback_examples'",
                [],
                |r| r.get(0),
            )
            .map_err(|source| StoreError::Sql {
                context: "feedback examples",
                source,
            })?;
        if !exists {
            return Ok((Vec::new(), 0, 0));
        }
        let mut st = c
            .prepare("SELECT agent_id, at_ms, observed_slug FROM feedback_examples ORDER BY at_ms, agent_id")
            .map_err(|source| StoreError::Sql {
                context: "feedback examples",
                source,
            })?;
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|source| StoreError::Sql {
                context: "feedback examples",
                source,
            })?
    };
    let mut out = Vec::new();
    let mut missing = 0;
    for (agent, at_ms, slug) in &rows {
        let features = match store.agent_key(agent)? {
            Some(k) => window_at(store, k, *at_ms, WindowConfig::default())?,
            None => None,
        };
        match features {
            Some(features) => out.push(LabelledWindow {
                slug: slug.clone(),
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
    let served = model_push::register(store, bytes, &report_json)?;
    let model = served.json();
    hub.publish(served);
    Ok(MirrorOutcome {
        report,
        feedback_rows: rows,
        feedback_without_data: missing,
        model,
    })
}

async fn blocking(f: impl FnOnce() -> Resp + Send + 'static) -> Resp {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))
}

fn train_options(body: &Bytes) -> Result<(u64, Option<String>, MirrorTrainConfig), String> {
    let v: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body).map_err(|e| format!("body: {e}"))?
    };
    let seed = v.get("seed").and_then(Value::as_u64).unwrap_or(42);
    let only = v.get("only").and_then(Value::as_str).map(str::to_owned);
    if let Some(o) = &only
        && o != "mirror"
        && o != "profiler"
    {
        return Err(format!("only: {o:?} is not \"mirror\" or \"profiler\""));
    }
    let mut cfg = MirrorTrainConfig::default();
    if let Some(n) = v.get("mirror_windows_per_persona").and_then(Value::as_u64) {
        if !(10..=10_000).contains(&n) {
            return Err(format!(
                "mirror_windows_per_persona: {n} is outside 10..=10000"
            ));
        }
        cfg.per_persona = usize::try_from(n).unwrap_or(600);
        cfg.eval_per_persona = cfg.eval_per_persona.min(cfg.per_persona);
    }
    Ok((seed, only, cfg))
}

/// Routes of this module; `None` lets `api` go on matching. `POST /v1/model/train` is
/// answered here for both models: the profiler's report at the top level (as before)
/// and the mirror's under `mirror`.
pub async fn handle_api(
    st: &ApiState,
    method: &Method,
    parts: &[&str],
    body: &Bytes,
) -> Option<Resp> {
    let shared = st.shared.clone();
    match (method, parts) {
        (&Method::POST, ["v1", "model", "train"]) => {
            let (seed, only, cfg) = match train_options(body) {
                Ok(x) => x,
                Err(e) => return Some(error(StatusCode::BAD_REQUEST, e)),
            };
            let svc = st.profiling.clone();
            Some(
                blocking(move || {
                    let Some(svc) = svc else {
                        return error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the persona database is not available on this coordinator",
                        );
                    };
                    let mut doc = json!({});
                    if only.as_deref() != Some("mirror") {
                        match svc.train(seed) {
                            Ok(o) => doc = serde_json::to_value(&o).unwrap_or(Value::Null),
                            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
                        }
                    }
                    if only.as_deref() != Some("profiler") {
                        let personas: Vec<Persona> = match svc.db.all() {
                            Ok(l) => l.into_iter().map(|s| s.persona).collect(),
                            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
                        };
                        match train_and_publish(
                            &shared.store,
                            &shared.models,
                            &personas,
                            seed,
                            &cfg,
                        ) {
                            Ok(o) => {
                                doc["mirror"] = serde_json::to_value(&o).unwrap_or(Value::Null)
                            }
                            Err(MirrorTrainError::Busy) => {
                                return error(StatusCode::CONFLICT, MirrorTrainError::Busy);
                            }
                            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
                        }
                    }
                    reply(StatusCode::OK, &doc)
                })
                .await,
            )
        }
        (&Method::GET, ["v1", "model", "mirror"]) => Some(match shared.models.current() {
            Some(m) => reply(StatusCode::OK, &m.json()),
            None => error(StatusCode::SERVICE_UNAVAILABLE, "no mirror model available"),
        }),
        (&Method::POST, ["v1", "model", "mirror"]) => {
            let bytes = body.to_vec();
            Some(
                blocking(move || {
                    match model_push::register(&shared.store, bytes, &json!({"source": "import"})) {
                        Ok(m) => {
                            let doc = m.json();
                            shared.models.publish(m);
                            reply(StatusCode::OK, &doc)
                        }
                        Err(RegisterError::Model(e)) => error(
                            StatusCode::BAD_REQUEST,
                            format!("the mirror model was refused: {e}"),
                        ),
                        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
                    }
                })
                .await,
            )
        }
        _ => None,
    }
}

/// The human summary of a mirror training (empty when there was none).
pub fn human(v: &Value) -> String {
    if v.is_null() {
        return String::new();
    }
    let r = &v["report"];
    format!(
        "\nmirror model {} (sha256 {}), now pushed to agents\ngenerated-window top-1 {:.3}, top-2 {:.3} ({} generated + {} feedback windows; {} feedback rows without telemetry; seed {}, {:.1} s)\n",
        r["version"].as_str().unwrap_or(""),
        r["sha256"].as_str().unwrap_or(""),
        r["top1"].as_f64().unwrap_or(0.0),
        r["top2"].as_f64().unwrap_or(0.0),
        r["n_generated"],
        r["n_feedback"],
        v["feedback_without_data"],
        r["seed"],
        r["seconds"].as_f64().unwrap_or(0.0),
    )
}

/// Largest body of `POST /v1/model/mirror` (a model file).
pub const MAX_IMPORT_BYTES: usize = persona_models::mirror::MAX_MODEL_BYTES;

/// The body limit for this module's routes, if the path is one of them.
pub fn body_limit(path: &str) -> Option<usize> {
    (path.trim_end_matches('/') == "/v1/model/mirror").then_some(MAX_IMPORT_BYTES)
}

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
        store
            .w()
            .unwrap()
            .execute(
                "INSERT INTO agents(key, id, hostname, fingerprint, enrolled_ms) VALUES (7, 'a7', 'h', 'fp', 0)",
                [],
            )
            .unwrap();
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
                    agent_key: 7,
                    start_ms: t0 + (i - 9) * 1000,
                    end_ms: t0 + i * 1000,
                    points: 10,
                    batch: b,
                });
            }
        }
        store.ingest(&items).unwrap();
        let got = window_at(&store, 7, t0 + 119_000, cfg).unwrap().unwrap();
        let mut want = [0f32; persona_shared::window::FEATURE_DIM];
        agent.features(&mut want);
        assert_eq!(got, want.to_vec());
        assert!(window_at(&store, 7, t0 - 1, cfg).unwrap().is_none());
    }
}
