//! The coordinator's HTTP admin API: JSON over HTTP/1.1, on loopback by default, every
//! request authenticated with the admin bearer token (compared by digest, so timing
//! tells nothing). `personactl` is its client. Request bodies are capped per route and
//! parsed into typed structs that refuse unknown fields; a malformed request gets a 4xx
//! with a JSON error and never touches other clients.
//!
//! [`route`] is the one route table: every route of the API is a line in it, and each
//! points to a handler in the file of its resource. Handlers call the features
//! (`commands`, `profile`, `recommend`, `model`) and the store; the features know nothing
//! of HTTP.

pub mod agents;
pub mod commands;
pub mod events;
pub mod metrics;
pub mod model;
pub mod profile;
pub mod recommend;
pub mod reply;
pub mod tokens;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::app::App;
pub use reply::{Resp, error, reply};

/// State the handlers need: the app and the admin token's digest.
#[derive(Debug)]
pub struct ApiState {
    pub app: Arc<App>,
    /// SHA-256 of the admin token.
    token_digest: Vec<u8>,
}

fn digest(s: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, s)
        .as_ref()
        .to_vec()
}

impl ApiState {
    pub fn new(app: Arc<App>, admin_token: &str) -> Self {
        Self {
            app,
            token_digest: digest(admin_token.trim().as_bytes()),
        }
    }
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

/// Largest request body per route. Persona imports are big (a persona is about 20 KB of
/// JSON); a profile request carries up to 64 KiB of text (JSON escaping can grow it); a
/// mirror model import is a model file; everything else is small.
fn body_limit(parts: &[&str]) -> usize {
    match parts {
        ["v1", "personas", "import"] => 16 * crate::profile::personas::MAX_PERSONA_BYTES,
        ["v1", "profile"] | ["v1", "feedback"] => 1024 * 1024,
        ["v1", "model", "mirror"] => model::MAX_MODEL_BODY,
        _ => 64 * 1024,
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
        if st.app.settings.metrics_require_token && !authorized {
            return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        }
        return metrics::response(st.app.clone()).await;
    }
    if !authorized {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let body = match Limited::new(req.into_body(), body_limit(&parts))
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(StatusCode::PAYLOAD_TOO_LARGE, e),
    };
    route(&st.app, &method, &parts, &query, &body).await
}

/// The route table.
async fn route(app: &Arc<App>, method: &Method, parts: &[&str], query: &str, body: &[u8]) -> Resp {
    use Method as M;
    let app = app.clone();
    match (method, parts) {
        (&M::GET, ["v1", "status"]) => agents::status(&app),
        (&M::GET, ["v1", "agents"]) => agents::list(app).await,
        (&M::GET, ["v1", "agents", id]) => agents::show(app, id).await,
        (&M::POST, ["v1", "agents", id, "revoke"]) => agents::revoke(app, id).await,
        (&M::GET, ["v1", "agents", id, "beliefs"]) => agents::beliefs(app, id, query).await,
        (&M::GET, ["v1", "series", id, metric]) => agents::series(app, id, metric, query).await,
        (&M::GET, ["v1", "tokens"]) => tokens::list(app).await,
        (&M::POST, ["v1", "tokens"]) => tokens::create(app, body).await,
        (&M::POST, ["v1", "tokens", id, "revoke"]) => tokens::revoke(app, id).await,
        (&M::GET, ["v1", "events"]) => events::list(app, query).await,
        (&M::GET, ["v1", "commands"]) => commands::list(app, query).await,
        (&M::POST, ["v1", "commands"]) => commands::submit(app, body).await,
        (&M::GET, ["v1", "commands", id]) => commands::show(app, id).await,
        (&M::POST, ["v1", "commands", id, "cancel"]) => commands::cancel(app, id).await,
        (&M::POST, ["v1", "preload"]) => commands::preload(app, body).await,
        (&M::GET, ["v1", "personas"]) => profile::list(app).await,
        (&M::GET, ["v1", "personas", "export"]) => profile::export(app).await,
        (&M::GET, ["v1", "personas", slug]) => profile::show(app, slug).await,
        (&M::POST, ["v1", "personas", "import"]) => profile::import(app, body).await,
        (&M::POST, ["v1", "profile"]) => profile::profile(app, body).await,
        (&M::POST, ["v1", "feedback"]) => profile::feedback(app, body).await,
        (&M::POST, ["v1", "model", "train"]) => model::train(app, body).await,
        (&M::GET, ["v1", "model", "mirror"]) => model::current(&app),
        (&M::POST, ["v1", "model", "mirror"]) => model::import(app, body).await,
        (&M::GET, ["v1", "recommend", agent]) => recommend::show(app, agent).await,
        (&M::POST, ["v1", "recommend", agent, "settings"]) => {
            recommend::settings(app, agent, body).await
        }
        (&M::POST, ["v1", "recommend", agent, "apply"]) => recommend::apply(app, agent).await,
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no route {method} /{}", parts.join("/")),
        ),
    }
}
