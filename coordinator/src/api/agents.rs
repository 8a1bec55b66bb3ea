//! Agent routes: `GET /v1/status` (counters), `GET /v1/agents`, `GET /v1/agents/{id}`
//! (facts, purpose, latest values, top processes, beliefs, events, model),
//! `POST /v1/agents/{id}/revoke`, `GET /v1/agents/{id}/beliefs?since_ms=MS` and
//! `GET /v1/series/{id}/{metric}?since_ms=MS`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use hyper::StatusCode;
use serde_json::{Value, json};

use persona_shared::metrics;

use super::reply::{
    Resp, blocking, error, internal, num, parse_ms, query_pairs, query_param, reply,
};
use crate::app::App;
use crate::store::{self, AgentInfo};

pub fn status(app: &App) -> Resp {
    let s = &app.stats;
    reply(
        StatusCode::OK,
        &json!({
            "ca_hash": app.pki.ca_hash(),
            "advertise": app.advertise,
            "connected_agents": app.live.connected().len(),
            "batches": s.batches.load(Ordering::Relaxed),
            "duplicate_batches": s.duplicate_batches.load(Ordering::Relaxed),
            "samples": s.samples.load(Ordering::Relaxed),
            "bytes_received": s.bytes_received.load(Ordering::Relaxed),
            "ingest_seconds": s.ingest_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            "engine_passes": s.engine_passes.load(Ordering::Relaxed),
            "rejected": s.rejected().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        }),
    )
}

fn agent_json(a: &AgentInfo, connected: bool, full: bool) -> Value {
    let state = if a.revoked_ms.is_some() {
        "revoked"
    } else if connected {
        "connected"
    } else {
        "disconnected"
    };
    let mut v = json!({
        "id": a.id,
        "hostname": a.hostname,
        "state": state,
        "enrolled_ms": a.enrolled_ms,
        "last_seen_ms": a.last_seen_ms,
        "committed_seq": a.committed_seq,
        "batches": a.batches,
        // Which key signs its commands (null: the CA, before its first pin).
        "command_key": a.command_key,
    });
    if full {
        v["facts"] = a.facts.clone().unwrap_or(Value::Null);
        v["purpose"] = a.purpose.clone().unwrap_or(Value::Null);
        v["top_processes"] = a.top_processes.clone().unwrap_or(Value::Null);
    }
    v
}

pub async fn list(app: Arc<App>) -> Resp {
    blocking(move || {
        let connected = app.live.connected();
        match app.store.list_agents() {
            Ok(list) => {
                let v: Vec<Value> = list
                    .into_iter()
                    .map(|a| {
                        let key = app.store.agent_key(&a.id).ok().flatten();
                        agent_json(&a, key.is_some_and(|k| connected.contains(&k)), false)
                    })
                    .collect();
                reply(StatusCode::OK, &json!({ "agents": v }))
            }
            Err(e) => internal(e),
        }
    })
    .await
}

pub async fn show(app: Arc<App>, id: &str) -> Resp {
    let id = id.to_owned();
    blocking(move || {
        let store = &app.store;
        let info = match store.get_agent(&id) {
            Ok(Some(a)) => a,
            Ok(None) => return error(StatusCode::NOT_FOUND, format!("no agent {id}")),
            Err(e) => return internal(e),
        };
        let key = match store.agent_key(&id) {
            Ok(Some(k)) => k,
            Ok(None) => return error(StatusCode::NOT_FOUND, format!("no agent {id}")),
            Err(e) => return internal(e),
        };
        let mut v = agent_json(&info, app.live.connected().contains(&key), true);
        match store.latest(key) {
            Ok(Some((ts, values))) => {
                let m: serde_json::Map<String, Value> =
                    values.into_iter().map(|(k, x)| (k, num(x))).collect();
                v["latest"] = json!({ "ts": ts as f64 / 1000.0, "values": m });
            }
            Ok(None) => v["latest"] = Value::Null,
            Err(e) => return internal(e),
        }
        if let Err(e) = crate::profile::belief::augment_agent_json(store, &id, &mut v) {
            return internal(e);
        }
        if let Err(e) = crate::model::push::augment_agent_json(store, &app.models, &id, &mut v) {
            return internal(e);
        }
        reply(StatusCode::OK, &v)
    })
    .await
}

pub async fn revoke(app: Arc<App>, id: &str) -> Resp {
    let id = id.to_owned();
    blocking(move || match app.store.revoke_agent(&id) {
        Ok(true) => {
            if let Ok(Some(k)) = app.store.agent_key(&id) {
                app.live.disconnect(k);
            }
            reply(StatusCode::OK, &json!({ "revoked": id }))
        }
        Ok(false) => error(StatusCode::NOT_FOUND, format!("no agent {id}")),
        Err(e) => internal(e),
    })
    .await
}

/// The current beliefs and the snapshots since `since_ms` (default: all), `{"agent",
/// "prior", "observed", "combined", "belief", "history": [{"at_ms", "prior", "observed",
/// "combined", "observed_hours"}]}`.
pub async fn beliefs(app: Arc<App>, id: &str, query: &str) -> Resp {
    let mut since_ms = 0i64;
    for (k, v) in query_pairs(query) {
        match k {
            "since_ms" => match parse_ms(v) {
                Ok(x) => since_ms = x,
                Err(e) => return e.resp(),
            },
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter {:?}", format!("{k}={v}")),
                );
            }
        }
    }
    let id = id.to_owned();
    blocking(move || {
        let store = &app.store;
        match store.agent_key(&id) {
            Ok(Some(_)) => {}
            Ok(None) => return error(StatusCode::NOT_FOUND, format!("no agent {id}")),
            Err(e) => return internal(e),
        }
        let mut v = json!({ "agent": id });
        let b = crate::profile::belief::belief(store, &id).map(Option::unwrap_or_default);
        match (b, crate::profile::belief::history(store, &id, since_ms)) {
            (Ok(b), Ok(h)) => {
                crate::profile::belief::put_json(&b, &mut v);
                v["history"] = Value::Array(h);
                reply(StatusCode::OK, &v)
            }
            (Err(e), _) | (_, Err(e)) => internal(e),
        }
    })
    .await
}

/// One series: `{"agent","metric","unit","points":[[unix_ts, value],...]}`.
pub async fn series(app: Arc<App>, id: &str, metric: &str, query: &str) -> Resp {
    let Some((def, instance)) = metrics::parse_series(metric) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("unknown metric {metric} (see docs/metrics.md)"),
        );
    };
    let instance = instance.map(str::to_owned);
    let since_ms = query_param(query, "since_ms")
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or_else(|| store::now_ms() - 600_000);
    let (id, metric) = (id.to_owned(), metric.to_owned());
    blocking(move || {
        let key = match app.store.agent_key(&id) {
            Ok(Some(k)) => k,
            Ok(None) => return error(StatusCode::NOT_FOUND, format!("no agent {id}")),
            Err(e) => return internal(e),
        };
        match app
            .store
            .series(key, &id, def, instance.as_deref(), since_ms)
        {
            Ok(points) => {
                let pts: Vec<Value> = points
                    .into_iter()
                    .map(|(t, v)| json!([t as f64 / 1000.0, num(v)]))
                    .collect();
                reply(
                    StatusCode::OK,
                    &json!({ "agent": id, "metric": metric, "unit": def.unit, "points": pts }),
                )
            }
            Err(e) => internal(e),
        }
    })
    .await
}
