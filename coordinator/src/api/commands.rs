//! Command channel routes:
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/commands?agent=ID&limit=N` | commands, newest first |
//! | `GET /v1/commands/{id}` | one command |
//! | `POST /v1/commands` | body `{"agent","action","ttl_s"}`: submit any action (JSON of `Action`) |
//! | `POST /v1/commands/{id}/cancel` | cancel |
//! | `POST /v1/preload` | body `{"agent","persona"?,"files"?,"dry_run"?,"ttl_s"?}` (see `commands::preload`) |

use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use persona_shared::command::Action;
use serde_json::json;

use super::reply::{Resp, blocking, body, error, query_param, reply};
use crate::app::App;
use crate::commands::preload::{self, PreloadError, PreloadRequest};
use crate::commands::{self, Cancelled, CommandError};

fn status_of(e: &CommandError) -> StatusCode {
    match e {
        CommandError::UnknownAgent(_) | CommandError::NotFound(_) => StatusCode::NOT_FOUND,
        CommandError::Final { .. } | CommandError::Revoked(_) => StatusCode::CONFLICT,
        CommandError::Ttl(_) | CommandError::Invalid(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn fail(e: CommandError) -> Resp {
    error(status_of(&e), e)
}

fn preload_status(e: &PreloadError) -> StatusCode {
    match e {
        PreloadError::UnknownAgent(_) | PreloadError::UnknownPersona(_) => StatusCode::NOT_FOUND,
        PreloadError::NoProfiler => StatusCode::SERVICE_UNAVAILABLE,
        PreloadError::NoPurpose(_)
        | PreloadError::BadFile { .. }
        | PreloadError::Empty(_)
        | PreloadError::NotRetriable { .. } => StatusCode::BAD_REQUEST,
        PreloadError::Command(CommandError::Invalid(_))
        | PreloadError::Command(CommandError::Ttl(_)) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub async fn list(app: Arc<App>, query: &str) -> Resp {
    let agent = query_param(query, "agent").map(str::to_owned);
    let limit = query_param(query, "limit")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(100);
    blocking(
        move || match commands::list(&app.store, agent.as_deref(), limit) {
            Ok(v) => reply(StatusCode::OK, &json!({ "commands": v })),
            Err(e) => fail(e),
        },
    )
    .await
}

pub async fn show(app: Arc<App>, id: &str) -> Resp {
    let id = id.to_owned();
    blocking(move || match commands::get(&app.store, &id) {
        Ok(Some(c)) => reply(StatusCode::OK, &json!(c)),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no command {id}")),
        Err(e) => fail(e),
    })
    .await
}

pub async fn cancel(app: Arc<App>, id: &str) -> Resp {
    let id = id.to_owned();
    blocking(move || match commands::cancel(&app.store, &id) {
        Ok(outcome) => {
            if let Ok(Some(c)) = commands::get(&app.store, &id) {
                app.commands.wake_agent(&app.store, &c.agent);
            }
            let (how, cancel_id) = match outcome {
                Cancelled::Now => ("cancelled", None),
                Cancelled::Requested(c) => ("requested", Some(c)),
            };
            reply(
                StatusCode::OK,
                &json!({ "id": id, "cancel": how, "cancel_command": cancel_id }),
            )
        }
        Err(e) => fail(e),
    })
    .await
}

/// `POST /v1/commands` body.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    agent: String,
    action: Action,
    #[serde(default = "default_ttl")]
    ttl_s: u64,
}

fn default_ttl() -> u64 {
    3600
}

pub async fn submit(app: Arc<App>, bytes: &[u8]) -> Resp {
    let req: SubmitBody = match body(bytes) {
        Ok(r) => r,
        Err(e) => return e.resp(),
    };
    blocking(move || {
        match commands::submit(
            &app.store,
            &req.agent,
            req.action,
            Duration::from_secs(req.ttl_s),
        ) {
            Ok(id) => {
                app.commands.wake_agent(&app.store, &req.agent);
                match commands::get(&app.store, &id) {
                    Ok(Some(c)) => reply(StatusCode::OK, &json!(c)),
                    _ => reply(StatusCode::OK, &json!({ "id": id })),
                }
            }
            Err(e) => fail(e),
        }
    })
    .await
}

/// `POST /v1/preload`: plans, and unless `dry_run` submits the plan as a command.
pub async fn preload(app: Arc<App>, bytes: &[u8]) -> Resp {
    let req: PreloadRequest = match body(bytes) {
        Ok(r) => r,
        Err(e) => return e.resp(),
    };
    let res = tokio::task::spawn_blocking(move || {
        let mut doc = preload::plan(&app.store, Some(&app.profiling), &req)?;
        if !req.dry_run {
            let id = commands::submit(
                &app.store,
                &req.agent,
                Action::Preload(doc.plan.clone()),
                Duration::from_secs(req.ttl_s),
            )?;
            app.commands.wake_agent(&app.store, &req.agent);
            doc.command = Some(id);
        }
        Ok::<_, PreloadError>(doc)
    })
    .await;
    match res {
        Ok(Ok(doc)) => reply(StatusCode::OK, &json!(doc)),
        Ok(Err(e)) => error(preload_status(&e), e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}
