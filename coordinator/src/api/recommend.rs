//! Engine routes: `GET /v1/recommend/{agent}` (the recommendation with its reasons and
//! cost), `POST /v1/recommend/{agent}/settings` (per-VM mode, platform and bounds) and
//! `POST /v1/recommend/{agent}/apply` (submit the recommended resize now).

use std::sync::Arc;

use hyper::StatusCode;
use serde::Serialize;
use serde_json::json;

use super::reply::{Resp, blocking, body, error, internal, reply};
use crate::app::App;
use crate::recommend::{self, Ctx, EngineApiError, SettingsPatch};
use crate::store;

fn status_of(e: &EngineApiError) -> StatusCode {
    match e {
        EngineApiError::UnknownAgent(_) => StatusCode::NOT_FOUND,
        EngineApiError::NoFacts(_) | EngineApiError::NothingToApply { .. } => StatusCode::CONFLICT,
        EngineApiError::Setting(_) => StatusCode::BAD_REQUEST,
        EngineApiError::Store(_) | EngineApiError::Submit { .. } => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

fn doc(r: Result<impl Serialize, EngineApiError>) -> Resp {
    match r {
        Ok(v) => match serde_json::to_value(&v) {
            Ok(v) => reply(StatusCode::OK, &v),
            Err(e) => internal(e),
        },
        Err(e) => error(status_of(&e), e),
    }
}

/// Runs `f` with the engine's context: the store, the engine constants, the catalogue,
/// the personas and the profiler.
fn with_ctx(app: &App, f: impl FnOnce(&Ctx<'_>) -> Resp) -> Resp {
    let (catalogue, personas) = match recommend::ctx_parts(Some(&app.profiling)) {
        Ok(x) => x,
        Err(e) => return internal(e),
    };
    f(&Ctx {
        store: &app.store,
        cfg: &app.settings.engine,
        catalogue: &catalogue,
        personas: &personas,
        profiler: Some(&app.profiling),
    })
}

pub async fn show(app: Arc<App>, agent: &str) -> Resp {
    let agent = agent.to_owned();
    blocking(move || {
        with_ctx(&app, |c| {
            doc(recommend::recommend(c, &agent, store::now_ms()))
        })
    })
    .await
}

pub async fn settings(app: Arc<App>, agent: &str, bytes: &[u8]) -> Resp {
    let patch: SettingsPatch = match body(bytes) {
        Ok(p) => p,
        Err(e) => return e.resp(),
    };
    let agent = agent.to_owned();
    blocking(move || doc(recommend::set_settings(&app.store, &agent, &patch))).await
}

pub async fn apply(app: Arc<App>, agent: &str) -> Resp {
    let agent = agent.to_owned();
    blocking(move || {
        with_ctx(&app, |c| {
            doc(
                recommend::recommend(c, &agent, store::now_ms()).and_then(|r| {
                    recommend::apply(&app.store, &app.commands, &r, r.recommended, false)
                        .map(|id| json!({ "command": id, "recommendation": r }))
                }),
            )
        })
    })
    .await
}
