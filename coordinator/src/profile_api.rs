//! HTTP routes of the persona database and the profiler, mounted by `api::handle`:
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/personas` | list (slug, name, source, updated) |
//! | `GET /v1/personas/export` | every persona in full: `{"personas": [...]}` (the import format) |
//! | `GET /v1/personas/{slug}` | one persona in full with its source and update time |
//! | `POST /v1/personas/import` | body `{"personas": [...]}` or one persona; validated in full, one transaction |
//! | `POST /v1/profile` | body `{"description", "software"?, "data_gb"?}` -> the profile document |
//! | `POST /v1/model/train` | body `{"seed"?}`; trains in a blocking task, stores and serves the model |
//! | `POST /v1/feedback` | body `{"description","software","data_gb","slug","source"}`: a training example |
//!
//! What it is not: authentication and body reading (done by `api` before these run).

use std::sync::Arc;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use crate::persona_db::Feedback;
use crate::personas;
use crate::profiling::{ProfileError, ProfileRequest, ProfilingService};

use crate::api::{Resp, error, reply};

/// Largest request body per route: persona imports are big (a persona is about 20 KB of
/// JSON), a profile request carries up to 64 KiB of text (JSON escaping can grow it).
pub fn body_limit(path: &str) -> usize {
    match path.trim_end_matches('/') {
        "/v1/personas/import" => 16 * personas::MAX_PERSONA_BYTES,
        "/v1/profile" | "/v1/feedback" => 1024 * 1024,
        _ => 64 * 1024,
    }
}

fn profile_status(e: &ProfileError) -> StatusCode {
    match e {
        ProfileError::EmptyDescription
        | ProfileError::DescriptionTooLong { .. }
        | ProfileError::NotUtf8 { .. }
        | ProfileError::DataSize { .. }
        | ProfileError::Software(_) => StatusCode::BAD_REQUEST,
        ProfileError::Busy => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn blocking(f: impl FnOnce() -> Resp + Send + 'static) -> Resp {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))
}

fn to_json<T: serde::Serialize>(v: &T) -> Resp {
    match serde_json::to_value(v) {
        Ok(v) => reply(StatusCode::OK, &v),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// Handles the route if it is one of ours; `None` lets `api` go on matching.
pub async fn handle(
    svc: Option<&Arc<ProfilingService>>,
    method: &Method,
    parts: &[&str],
    body: &Bytes,
) -> Option<Resp> {
    let ours = matches!(
        parts,
        ["v1", "personas", ..] | ["v1", "profile"] | ["v1", "model", "train"] | ["v1", "feedback"]
    );
    if !ours {
        return None;
    }
    let Some(svc) = svc.cloned() else {
        return Some(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the profiler is not available on this coordinator",
        ));
    };
    let body = body.clone();
    Some(match (method, parts) {
        (&Method::GET, ["v1", "personas"]) => {
            blocking(move || match svc.db.list() {
                Ok(l) => reply(StatusCode::OK, &json!({ "personas": l })),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
            })
            .await
        }
        (&Method::GET, ["v1", "personas", "export"]) => {
            blocking(move || match svc.db.all() {
                Ok(l) => {
                    let ps: Vec<_> = l.into_iter().map(|s| s.persona).collect();
                    to_json(&json!({ "personas": ps }))
                }
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
            })
            .await
        }
        (&Method::GET, ["v1", "personas", slug]) => {
            let slug = (*slug).to_owned();
            blocking(move || match svc.db.get(&slug) {
                Ok(Some(s)) => to_json(&s),
                Ok(None) => error(StatusCode::NOT_FOUND, format!("no persona {slug}")),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
            })
            .await
        }
        (&Method::POST, ["v1", "personas", "import"]) => {
            blocking(move || {
                let list = match personas::parse_many(&body) {
                    Ok(l) => l,
                    Err(e) => return error(StatusCode::BAD_REQUEST, e),
                };
                match svc.db.import(&list) {
                    Ok(r) => to_json(&r),
                    Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
                }
            })
            .await
        }
        (&Method::POST, ["v1", "profile"]) => {
            let req: ProfileRequest = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => return Some(error(StatusCode::BAD_REQUEST, format!("body: {e}"))),
            };
            blocking(move || match svc.profile(&req) {
                Ok(doc) => to_json(&doc),
                Err(e) => error(profile_status(&e), e),
            })
            .await
        }
        (&Method::POST, ["v1", "model", "train"]) => {
            let seed = if body.is_empty() {
                Ok(None)
            } else {
                serde_json::from_slice::<Value>(&body)
                    .map(|v| v.get("seed").and_then(Value::as_u64))
            };
            let seed = match seed {
                Ok(s) => s.unwrap_or(42),
                Err(e) => return Some(error(StatusCode::BAD_REQUEST, format!("body: {e}"))),
            };
            blocking(move || match svc.train(seed) {
                Ok(o) => to_json(&o),
                Err(e) => error(profile_status(&e), e),
            })
            .await
        }
        (&Method::POST, ["v1", "feedback"]) => {
            let f: Feedback = match serde_json::from_slice(&body) {
                Ok(f) => f,
                Err(e) => return Some(error(StatusCode::BAD_REQUEST, format!("body: {e}"))),
            };
            blocking(move || match svc.db.add_feedback(&f) {
                Ok(id) => reply(StatusCode::OK, &json!({ "id": id })),
                Err(e) => error(StatusCode::BAD_REQUEST, e),
            })
            .await
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no route {method} /{}", parts.join("/")),
        ),
    })
}
