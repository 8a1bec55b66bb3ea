//! Model routes: `POST /v1/model/train` (both models: the profiler's report at the top
//! level, the mirror's under `mirror`), `GET /v1/model/mirror` (the model served to
//! agents) and `POST /v1/model/mirror` (import a mirror model file).

use std::sync::Arc;

use hyper::StatusCode;
use serde_json::{Value, json};

use persona_models::mirror_train::MirrorTrainConfig;

use super::reply::{Resp, blocking, body, error, internal, reply};
use crate::app::App;
use crate::model::push::{self, RegisterError};
use crate::model::train::{self, MirrorTrainError};
use crate::profile::personas::Persona;

/// Largest body of `POST /v1/model/mirror` (a model file).
pub const MAX_MODEL_BODY: usize = train::MAX_IMPORT_BYTES;

/// `POST /v1/model/train` body.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainBody {
    #[serde(default)]
    seed: Option<u64>,
    /// `"mirror"` or `"profiler"`; absent trains both.
    #[serde(default)]
    only: Option<String>,
    #[serde(default)]
    mirror_windows_per_persona: Option<u64>,
}

pub async fn train(app: Arc<App>, bytes: &[u8]) -> Resp {
    let req: TrainBody = match body(bytes) {
        Ok(r) => r,
        Err(e) => return e.resp(),
    };
    let seed = req.seed.unwrap_or(42);
    let only = req.only;
    if let Some(o) = &only
        && o != "mirror"
        && o != "profiler"
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!("only: {o:?} is not \"mirror\" or \"profiler\""),
        );
    }
    let mut cfg = MirrorTrainConfig::default();
    if let Some(n) = req.mirror_windows_per_persona {
        if !(10..=10_000).contains(&n) {
            return error(
                StatusCode::BAD_REQUEST,
                format!("mirror_windows_per_persona: {n} is outside 10..=10000"),
            );
        }
        cfg.per_persona = usize::try_from(n).unwrap_or(600);
        cfg.eval_per_persona = cfg.eval_per_persona.min(cfg.per_persona);
    }
    blocking(move || {
        let svc = &app.profiling;
        let mut doc = json!({});
        if only.as_deref() != Some("mirror") {
            match svc.train(seed) {
                Ok(o) => doc = serde_json::to_value(&o).unwrap_or(Value::Null),
                Err(e) => return internal(e),
            }
        }
        if only.as_deref() != Some("profiler") {
            let personas: Vec<Persona> = match svc.db.all() {
                Ok(l) => l.into_iter().map(|s| s.persona).collect(),
                Err(e) => return internal(e),
            };
            match train::train_and_publish(&app.store, &app.models, &personas, seed, &cfg) {
                Ok(o) => doc["mirror"] = serde_json::to_value(&o).unwrap_or(Value::Null),
                Err(MirrorTrainError::Busy) => {
                    return error(StatusCode::CONFLICT, MirrorTrainError::Busy);
                }
                Err(e) => return internal(e),
            }
        }
        reply(StatusCode::OK, &doc)
    })
    .await
}

pub fn current(app: &App) -> Resp {
    match app.models.current() {
        Some(m) => reply(StatusCode::OK, &m.json()),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "no mirror model available"),
    }
}

pub async fn import(app: Arc<App>, bytes: &[u8]) -> Resp {
    let bytes = bytes.to_vec();
    blocking(
        move || match push::register(&app.store, bytes, &json!({"source": "import"})) {
            Ok(m) => {
                let doc = m.json();
                app.models.publish(m);
                reply(StatusCode::OK, &doc)
            }
            Err(RegisterError::Model(e)) => error(
                StatusCode::BAD_REQUEST,
                format!("the mirror model was refused: {e}"),
            ),
            Err(e) => internal(e),
        },
    )
    .await
}
