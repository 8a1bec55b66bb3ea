//! The coordinator's HTTP admin API: JSON over HTTP/1.1, on loopback by default, every
//! request authenticated with the admin bearer token (compared by digest, so timing
//! tells nothing). `personactl` is its client. Request bodies are capped; a malformed
//! request gets a 4xx with a JSON error and never touches other clients.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, warn};

use persona_shared::metrics;

use crate::server::Shared;
use crate::store::{self, StoreError};

/// State the handlers need.
#[derive(Debug)]
pub struct ApiState {
    pub shared: Arc<Shared>,
    /// SHA-256 of the admin token.
    pub token_digest: Vec<u8>,
    /// The QUIC address agents should use, for the enroll command line.
    pub advertise: String,
    /// Persona database and profiler (routes in `profile_api`); `None` answers 503.
    pub profiling: Option<Arc<crate::profiling::ProfilingService>>,
}

fn digest(s: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, s)
        .as_ref()
        .to_vec()
}

impl ApiState {
    pub fn new(shared: Arc<Shared>, admin_token: &str, advertise: String) -> Self {
        Self {
            shared,
            token_digest: digest(admin_token.trim().as_bytes()),
            advertise,
            profiling: None,
        }
    }

    /// Serves the persona and profiler routes from `svc`.
    pub fn with_profiling(mut self, svc: Arc<crate::profiling::ProfilingService>) -> Self {
        self.profiling = Some(svc);
        self
    }
}

pub(crate) type Resp = Response<Full<Bytes>>;

pub(crate) fn reply(status: StatusCode, body: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

pub(crate) fn error(status: StatusCode, msg: impl std::fmt::Display) -> Resp {
    reply(status, &json!({ "error": msg.to_string() }))
}

fn store_error(e: StoreError) -> Resp {
    warn!("API store error: {e}");
    error(StatusCode::INTERNAL_SERVER_ERROR, e)
}

/// Serves the API until `shutdown` turns true.
pub async fn run(listener: TcpListener, state: Arc<ApiState>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => { warn!("API accept: {e}"); continue; }
            },
            _ = shutdown.changed() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(req, &state, peer).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!(%peer, "API connection: {e}");
            }
        });
    }
}

async fn handle(req: Request<Incoming>, st: &ApiState, _peer: SocketAddr) -> Resp {
    let authorized = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| digest(t.trim().as_bytes()) == st.token_digest);
    // Prometheus scrape endpoint: unauthenticated by default (loopback API), see
    // docs/operations.md; text format, not JSON.
    if req.method() == Method::GET && req.uri().path() == "/metrics" {
        if st.shared.settings.metrics_require_token && !authorized {
            return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        }
        return metrics_response(st.shared.clone()).await;
    }
    if !authorized {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let limit = crate::mirror_train::body_limit(&path)
        .unwrap_or_else(|| crate::profile_api::body_limit(&path));
    let body = match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(StatusCode::PAYLOAD_TOO_LARGE, e),
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let shared = st.shared.clone();
    let blocking = |f: Box<dyn FnOnce() -> Resp + Send>| async move {
        tokio::task::spawn_blocking(f)
            .await
            .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))
    };
    // Model training (both models) and the mirror model routes (mirror_train).
    if let Some(r) = crate::mirror_train::handle_api(st, &method, &parts, &body).await {
        return r;
    }
    if let Some(r) = crate::profile_api::handle(st.profiling.as_ref(), &method, &parts, &body).await
    {
        return r;
    }
    if let Some(r) =
        crate::engine_api::handle(&st.shared, st.profiling.as_ref(), &method, &parts, &body).await
    {
        return r;
    }
    if let Some(r) = crate::commands::handle_api(st, &method, &parts, &query, &body).await {
        return r;
    }
    if let Some(r) = crate::events::handle(&shared, &method, &parts, &query).await {
        return r;
    }
    if let Some(r) = crate::belief::handle(&shared, &method, &parts, &query).await {
        return r;
    }
    match (&method, parts.as_slice()) {
        (&Method::GET, ["v1", "status"]) => {
            let s = &shared.stats;
            reply(
                StatusCode::OK,
                &json!({
                    "ca_hash": shared.pki.ca_hash(),
                    "advertise": st.advertise,
                    "connected_agents": shared.connected().len(),
                    "batches": s.batches.load(Ordering::Relaxed),
                    "duplicate_batches": s.duplicate_batches.load(Ordering::Relaxed),
                    "samples": s.samples.load(Ordering::Relaxed),
                    "bytes_received": s.bytes_received.load(Ordering::Relaxed),
                    "ingest_seconds": s.ingest_nanos.load(Ordering::Relaxed) as f64 / 1e9,
                    "rejected": s.rejected().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
                }),
            )
        }
        (&Method::GET, ["v1", "agents"]) => {
            blocking(Box::new(move || {
                let connected = shared.connected();
                match shared.store.list_agents() {
                    Ok(list) => {
                        let v: Vec<Value> = list
                            .into_iter()
                            .map(|a| {
                                let key = shared.store.agent_key(&a.id).ok().flatten();
                                agent_json(&a, key.is_some_and(|k| connected.contains(&k)), false)
                            })
                            .collect();
                        reply(StatusCode::OK, &json!({ "agents": v }))
                    }
                    Err(e) => store_error(e),
                }
            }))
            .await
        }
        (&Method::GET, ["v1", "agents", id]) => {
            let id = (*id).to_owned();
            blocking(Box::new(move || {
                let info = match shared.store.get_agent(&id) {
                    Ok(Some(a)) => a,
                    Ok(None) => return error(StatusCode::NOT_FOUND, format!("no agent {id}")),
                    Err(e) => return store_error(e),
                };
                let key = match shared.store.agent_key(&id) {
                    Ok(Some(k)) => k,
                    Ok(None) => return error(StatusCode::NOT_FOUND, format!("no agent {id}")),
                    Err(e) => return store_error(e),
                };
                let mut v = agent_json(&info, shared.connected().contains(&key), true);
                match shared.store.latest(key) {
                    Ok(Some((ts, values))) => {
                        let m: serde_json::Map<String, Value> =
                            values.into_iter().map(|(k, x)| (k, num(x))).collect();
                        v["latest"] = json!({ "ts": ts as f64 / 1000.0, "values": m });
                    }
                    Ok(None) => v["latest"] = Value::Null,
                    Err(e) => return store_error(e),
                }
                if let Err(e) = crate::belief::augment_agent_json(&shared.store, &id, &mut v) {
                    return store_error(e);
                }
                if let Err(e) = crate::model_push::augment_agent_json(
                    &shared.store,
                    &shared.models,
                    &id,
                    &mut v,
                ) {
                    return store_error(e);
                }
                reply(StatusCode::OK, &v)
            }))
            .await
        }
        (&Method::POST, ["v1", "agents", id, "revoke"]) => {
            let id = (*id).to_owned();
            blocking(Box::new(move || match shared.store.revoke_agent(&id) {
                Ok(true) => {
                    if let Ok(Some(k)) = shared.store.agent_key(&id) {
                        shared.disconnect(k);
                    }
                    reply(StatusCode::OK, &json!({ "revoked": id }))
                }
                Ok(false) => error(StatusCode::NOT_FOUND, format!("no agent {id}")),
                Err(e) => store_error(e),
            }))
            .await
        }
        (&Method::GET, ["v1", "tokens"]) => {
            blocking(Box::new(move || match shared.store.list_tokens() {
                Ok(t) => reply(StatusCode::OK, &json!({ "tokens": t })),
                Err(e) => store_error(e),
            }))
            .await
        }
        (&Method::POST, ["v1", "tokens"]) => {
            let req: Value = if body.is_empty() {
                json!({})
            } else {
                match serde_json::from_slice(&body) {
                    Ok(v) => v,
                    Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
                }
            };
            let ttl_s = req.get("ttl_s").and_then(Value::as_i64).unwrap_or(3600);
            let uses = req.get("uses").and_then(Value::as_i64).unwrap_or(1);
            if !(1..=365 * 86400).contains(&ttl_s) || !(1..=1_000_000).contains(&uses) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "ttl_s must be 1..=31536000 and uses 1..=1000000",
                );
            }
            let advertise = st.advertise.clone();
            blocking(Box::new(move || match shared.store.create_token(ttl_s * 1000, uses) {
                Ok((token, info)) => {
                    let ca_hash = shared.pki.ca_hash();
                    reply(
                        StatusCode::OK,
                        &json!({
                            "token": token,
                            "id": info.id,
                            "expires_ms": info.expires_ms,
                            "uses": uses,
                            "ca_hash": ca_hash,
                            "coordinator": advertise,
                            "command": format!("persona-agent enroll --coordinator {advertise} --token {token} --ca-hash {ca_hash}"),
                        }),
                    )
                }
                Err(e) => store_error(e),
            }))
            .await
        }
        (&Method::POST, ["v1", "tokens", id, "revoke"]) => {
            let id = (*id).to_owned();
            blocking(Box::new(move || match shared.store.revoke_token(&id) {
                Ok(true) => reply(StatusCode::OK, &json!({ "revoked": id })),
                Ok(false) => error(StatusCode::NOT_FOUND, format!("no active token {id}")),
                Err(e) => store_error(e),
            }))
            .await
        }
        (&Method::GET, ["v1", "series", id, metric]) => {
            let Some((def, instance)) = metrics::parse_series(metric) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("unknown metric {metric} (see docs/metrics.md)"),
                );
            };
            let instance = instance.map(str::to_owned);
            let since_ms = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("since_ms="))
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or_else(|| store::now_ms() - 600_000);
            let (id, metric) = ((*id).to_owned(), (*metric).to_owned());
            blocking(Box::new(move || {
                let key = match shared.store.agent_key(&id) {
                    Ok(Some(k)) => k,
                    Ok(None) => return error(StatusCode::NOT_FOUND, format!("no agent {id}")),
                    Err(e) => return store_error(e),
                };
                match shared.store.series(key, &id, def, instance.as_deref(), since_ms) {
                    Ok(points) => {
                        let pts: Vec<Value> = points.into_iter().map(|(t, v)| json!([t as f64 / 1000.0, num(v)])).collect();
                        reply(StatusCode::OK, &json!({ "agent": id, "metric": metric, "unit": def.unit, "points": pts }))
                    }
                    Err(e) => store_error(e),
                }
            }))
            .await
        }
        _ => error(StatusCode::NOT_FOUND, format!("no route {method} {path}")),
    }
}

/// `GET /metrics`: renders off the async threads (it reads the store).
async fn metrics_response(shared: Arc<Shared>) -> Resp {
    match tokio::task::spawn_blocking(move || crate::prom::render(&shared)).await {
        Ok(Ok(text)) => {
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        Ok(Err(e)) => store_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

fn num(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

fn agent_json(a: &store::AgentInfo, connected: bool, full: bool) -> Value {
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
    });
    if full {
        v["facts"] = a.facts.clone().unwrap_or(Value::Null);
        v["purpose"] = a.purpose.clone().unwrap_or(Value::Null);
        v["top_processes"] = a.top_processes.clone().unwrap_or(Value::Null);
    }
    v
}
