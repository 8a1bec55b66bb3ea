//! `GET /v1/events?agent=ID&since_ms=MS&limit=N`: `{"events": [...]}`, newest first.
//! Unknown parameters are refused with their name.

use std::sync::Arc;

use hyper::StatusCode;
use serde_json::json;

use super::reply::{Resp, blocking, error, internal, parse_ms, query_pairs, reply};
use crate::app::App;
use persona_shared::events::MAX_LIST;

pub async fn list(app: Arc<App>, query: &str) -> Resp {
    let mut agent = None;
    let mut since_ms = 0i64;
    let mut limit = 1000usize;
    for (k, v) in query_pairs(query) {
        match k {
            "agent" => agent = Some(v.to_owned()),
            "since_ms" => match parse_ms(v) {
                Ok(x) => since_ms = x,
                Err(e) => return e.resp(),
            },
            "limit" => match v.parse::<usize>() {
                Ok(x) if (1..=MAX_LIST).contains(&x) => limit = x,
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("limit={v:?} is not in 1..={MAX_LIST}"),
                    );
                }
            },
            _ => {
                return error(StatusCode::BAD_REQUEST, format!("unknown parameter {k:?}"));
            }
        }
    }
    blocking(move || {
        if let Some(a) = &agent {
            match app.store.agent_key(a) {
                Ok(Some(_)) => {}
                Ok(None) => return error(StatusCode::NOT_FOUND, format!("no agent {a}")),
                Err(e) => return internal(e),
            }
        }
        match app.store.list_events(agent.as_deref(), since_ms, limit) {
            Ok(v) => reply(StatusCode::OK, &json!({ "events": v })),
            Err(e) => internal(e),
        }
    })
    .await
}
