//! Routes of the persona database and the profiler:
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/personas` | list (slug, name, source, updated) |
//! | `GET /v1/personas/export` | every persona in full: `{"personas": [...]}` (the import format) |
//! | `GET /v1/personas/{slug}` | one persona in full with its source and update time |
//! | `POST /v1/personas/import` | body `{"personas": [...]}` or one persona; validated in full, one transaction |
//! | `POST /v1/profile` | body `{"description", "software"?, "data_gb"?}` -> the profile document |
//! | `POST /v1/feedback` | body `{"description","software","data_gb","slug","source"}`: a training example |
//!
//! What it is not: authentication and body reading (done by `api` before these run),
//! or `POST /v1/model/train` (`api::model`).

use std::sync::Arc;

use hyper::StatusCode;
use serde_json::json;

use super::reply::{Resp, blocking, body, error, internal, reply, to_json};
use crate::app::App;
use crate::profile::persona_db::Feedback;
use crate::profile::personas;
use crate::profile::{ProfileError, ProfileRequest};

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

pub async fn list(app: Arc<App>) -> Resp {
    blocking(move || match app.profiling.db.list() {
        Ok(l) => reply(StatusCode::OK, &json!({ "personas": l })),
        Err(e) => internal(e),
    })
    .await
}

pub async fn export(app: Arc<App>) -> Resp {
    blocking(move || match app.profiling.db.all() {
        Ok(l) => {
            let ps: Vec<_> = l.into_iter().map(|s| s.persona).collect();
            to_json(&json!({ "personas": ps }))
        }
        Err(e) => internal(e),
    })
    .await
}

pub async fn show(app: Arc<App>, slug: &str) -> Resp {
    let slug = slug.to_owned();
    blocking(move || match app.profiling.db.get(&slug) {
        Ok(Some(s)) => to_json(&s),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no persona {slug}")),
        Err(e) => internal(e),
    })
    .await
}

pub async fn import(app: Arc<App>, bytes: &[u8]) -> Resp {
    let bytes = bytes.to_vec();
    blocking(move || {
        // The persona schema is strict (unknown keys refused, each named) in `personas`.
        let list = match personas::parse_many(&bytes) {
            Ok(l) => l,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
        match app.profiling.db.import(&list) {
            Ok(r) => to_json(&r),
            Err(e) => internal(e),
        }
    })
    .await
}

pub async fn profile(app: Arc<App>, bytes: &[u8]) -> Resp {
    let req: ProfileRequest = match body(bytes) {
        Ok(r) => r,
        Err(e) => return e.resp(),
    };
    blocking(move || match app.profiling.profile(&req) {
        Ok(doc) => to_json(&doc),
        Err(e) => error(profile_status(&e), e),
    })
    .await
}

pub async fn feedback(app: Arc<App>, bytes: &[u8]) -> Resp {
    let f: Feedback = match body(bytes) {
        Ok(f) => f,
        Err(e) => return e.resp(),
    };
    blocking(move || match app.profiling.db.add_feedback(&f) {
        Ok(id) => reply(StatusCode::OK, &json!({ "id": id })),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    })
    .await
}
