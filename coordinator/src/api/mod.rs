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
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

use crate::app::App;
use crate::config::ApiLimits;
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

/// The API's connection bounds as applied: `connections` served at once and `queue`
/// more waiting briefly for a slot, both fitted under the open-file limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionBudget {
    pub connections: usize,
    pub queue: usize,
}

/// Files kept back from the API for the database, the QUIC socket, logs and model files.
const RESERVED_FILES: u64 = 64;
/// Most connections that wait for a slot (each holds a file while it waits).
const MAX_QUEUE: usize = 64;

impl ConnectionBudget {
    /// Fits `max_connections` under a soft open-file limit: the API's connections and its
    /// queue together never take more than the limit minus [`RESERVED_FILES`], so a
    /// flood of clients cannot starve the database or the QUIC side of descriptors.
    pub fn fit(max_connections: usize, nofile: Option<u64>) -> Self {
        let Some(limit) = nofile else {
            return Self {
                connections: max_connections.max(1),
                queue: MAX_QUEUE,
            };
        };
        let spare =
            usize::try_from(limit.saturating_sub(RESERVED_FILES).max(8)).unwrap_or(usize::MAX);
        Self {
            connections: max_connections.min(spare / 4 * 3).max(1),
            queue: MAX_QUEUE.min(spare / 4).max(1),
        }
    }
}

/// The soft `RLIMIT_NOFILE` of this process, from /proc/self/limits.
fn open_file_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The pause after a failed `accept`: 10 ms, doubling to 1 s, back to 10 ms after a
/// success. An error such as `EMFILE` does not go away by retrying at once, and
/// retrying at once is what turned a descriptor shortage into a busy loop.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn new() -> Self {
        Self { next: Self::FIRST }
    }

    fn failed(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        d
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// One log line per `every` for a recurring condition, with the count of the ones
/// left out in between.
#[derive(Debug)]
struct LogLimit {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when a line should be written now (`n` lines were left out since the
    /// last one), `None` when this one is left out.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// What a client over the connection bound gets before the connection is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 43\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{\"error\":\"too many admin API connections\"}\n";

/// Serves the API until `shutdown` turns true.
///
/// Bounds (`settings.api_limits`, docs/operations.md "HTTP API bounds"): a client has
/// `header_timeout` to send a request's headers (hyper's header-read timer, which also
/// closes an idle keep-alive connection after as long) and `body_timeout` for its body;
/// at most [`ConnectionBudget::connections`] are served at once. One over that waits up
/// to `queue_wait` for a slot in a queue of [`ConnectionBudget::queue`], then gets a 503;
/// with the queue full it gets the 503 at once. Waiting briefly absorbs a burst of
/// `personactl` runs, and answering a clear 503 beats leaving connections in the
/// kernel's backlog, where a client only learns of the trouble from its own timeout and
/// the backlog holds a hostile client's sockets in front of everyone else's.
pub async fn run(listener: TcpListener, state: Arc<ApiState>, mut shutdown: watch::Receiver<bool>) {
    let limits = state.app.settings.api_limits.clone();
    let nofile = open_file_limit();
    let budget = ConnectionBudget::fit(limits.max_connections, nofile);
    if budget.connections < limits.max_connections {
        info!(
            connections = budget.connections,
            api_max_connections = limits.max_connections,
            open_file_limit = nofile.unwrap_or(0),
            "admin API connections lowered to fit the open-file limit"
        );
    }
    let slots = Arc::new(Semaphore::new(budget.connections));
    let queue = Arc::new(Semaphore::new(budget.queue));
    let mut backoff = Backoff::new();
    let mut accept_log = LogLimit::new(Duration::from_secs(10));
    let mut busy_log = LogLimit::new(Duration::from_secs(10));
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => {
                    backoff.reset();
                    x
                }
                Err(e) => {
                    let pause = backoff.failed();
                    if let Some(left_out) = accept_log.admit(Instant::now()) {
                        warn!(retry_in_ms = pause.as_millis() as u64, left_out, "API accept: {e}");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
            },
            _ = shutdown.changed() => return,
        };
        let slot = slots.clone().try_acquire_owned().ok();
        let waiting = match slot {
            Some(_) => None,
            None => match queue.clone().try_acquire_owned() {
                Ok(w) => Some(w),
                Err(_) => {
                    if let Some(left_out) = busy_log.admit(Instant::now()) {
                        warn!(%peer, left_out, connections = budget.connections, "API busy: connection refused with 503");
                    }
                    let _ = stream.try_write(BUSY);
                    continue;
                }
            },
        };
        let state = state.clone();
        let slots = slots.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let _slot = match slot {
                Some(s) => s,
                None => {
                    let got = tokio::time::timeout(limits.queue_wait, slots.acquire_owned()).await;
                    match got {
                        Ok(Ok(s)) => {
                            drop(waiting);
                            s
                        }
                        _ => {
                            debug!(%peer, "API busy: no slot within {:?}", limits.queue_wait);
                            // The queue place is held until the socket is closed, so the
                            // queue bounds the files these take too.
                            refuse_busy(stream).await;
                            drop(waiting);
                            return;
                        }
                    }
                }
            };
            serve(stream, peer, state, &limits).await;
        });
    }
}

/// Answers the 503 and closes so that the client reads it: the request it may have sent
/// is read and dropped first (closing with unread data would reset the connection and
/// could discard the answer), all within half a second.
async fn refuse_busy(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        stream.write_all(BUSY).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut left = 64 * 1024usize;
        while left > 0 {
            let n = stream.read(&mut sink).await?;
            if n == 0 {
                break;
            }
            left = left.saturating_sub(n);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// Serves one connection with hyper, under the header-read (and idle) timeout.
async fn serve(stream: TcpStream, peer: SocketAddr, state: Arc<ApiState>, limits: &ApiLimits) {
    let body_timeout = limits.body_timeout;
    let svc = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(req, &state, peer, body_timeout).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(stream), svc)
        .await
    {
        debug!(%peer, "API connection: {e}");
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

async fn handle(
    req: Request<Incoming>,
    st: &ApiState,
    _peer: SocketAddr,
    body_timeout: Duration,
) -> Resp {
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
    if req.uri().path() == "/metrics" {
        return not_allowed(req.method(), &["metrics"], &[Method::GET]);
    }
    if !authorized {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let collect = Limited::new(req.into_body(), body_limit(&parts)).collect();
    let body = match tokio::time::timeout(body_timeout, collect).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => return error(StatusCode::PAYLOAD_TOO_LARGE, e),
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                format!("request body not received within {body_timeout:?}"),
            );
        }
    };
    route(&st.app, &method, &parts, &query, &body).await
}

/// `405 Method Not Allowed` for a known path, with the methods it has in `Allow`.
fn not_allowed(method: &Method, parts: &[&str], allow: &[Method]) -> Resp {
    let list = allow
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} /{} is not a route; it takes {list}",
            parts.join("/")
        ),
    );
    if let Ok(v) = hyper::header::HeaderValue::from_str(&list) {
        r.headers_mut().insert(hyper::header::ALLOW, v);
    }
    r
}

/// One path of the route table: its handler per method, and a 405 naming the methods
/// for any other.
macro_rules! on {
    ($method:expr, $parts:expr; $($m:ident => $h:expr),+ $(,)?) => {
        match $method {
            $( &Method::$m => $h, )+
            other => not_allowed(other, $parts, &[$(Method::$m),+]),
        }
    };
}

/// The route table: one arm per path, one line per method. A known path asked with
/// another method answers 405 with `Allow`; an unknown path 404. A fixed segment wins
/// over a parameter in the same place (`/v1/personas/export` is never a slug).
async fn route(app: &Arc<App>, method: &Method, parts: &[&str], query: &str, body: &[u8]) -> Resp {
    let app = app.clone();
    match parts {
        ["v1", "status"] => on!(method, parts; GET => agents::status(&app)),
        ["v1", "agents"] => on!(method, parts; GET => agents::list(app).await),
        ["v1", "agents", id] => on!(method, parts; GET => agents::show(app, id).await),
        ["v1", "agents", id, "revoke"] => on!(method, parts; POST => agents::revoke(app, id).await),
        ["v1", "agents", id, "beliefs"] => {
            on!(method, parts; GET => agents::beliefs(app, id, query).await)
        }
        ["v1", "series", id, metric] => {
            on!(method, parts; GET => agents::series(app, id, metric, query).await)
        }
        ["v1", "tokens"] => on!(method, parts;
            GET => tokens::list(app, query).await,
            POST => tokens::create(app, body).await,
        ),
        ["v1", "tokens", id, "revoke"] => on!(method, parts; POST => tokens::revoke(app, id).await),
        ["v1", "events"] => on!(method, parts; GET => events::list(app, query).await),
        ["v1", "commands"] => on!(method, parts;
            GET => commands::list(app, query).await,
            POST => commands::submit(app, body).await,
        ),
        ["v1", "commands", id] => on!(method, parts; GET => commands::show(app, id).await),
        ["v1", "commands", id, "cancel"] => {
            on!(method, parts; POST => commands::cancel(app, id).await)
        }
        ["v1", "preload"] => on!(method, parts; POST => commands::preload(app, body).await),
        ["v1", "personas"] => on!(method, parts; GET => profile::list(app).await),
        ["v1", "personas", "export"] => on!(method, parts; GET => profile::export(app).await),
        ["v1", "personas", "import"] => {
            on!(method, parts; POST => profile::import(app, body).await)
        }
        ["v1", "personas", slug] => on!(method, parts; GET => profile::show(app, slug).await),
        ["v1", "profile"] => on!(method, parts; POST => profile::profile(app, body).await),
        ["v1", "feedback"] => on!(method, parts; POST => profile::feedback(app, body).await),
        ["v1", "model", "train"] => on!(method, parts; POST => model::train(app, body).await),
        ["v1", "model", "mirror"] => on!(method, parts;
            GET => model::current(&app),
            POST => model::import(app, body).await,
        ),
        ["v1", "recommend", agent] => on!(method, parts; GET => recommend::show(app, agent).await),
        ["v1", "recommend", agent, "settings"] => {
            on!(method, parts; POST => recommend::settings(app, agent, body).await)
        }
        ["v1", "recommend", agent, "apply"] => {
            on!(method, parts; POST => recommend::apply(app, agent).await)
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no route {method} /{}", parts.join("/")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_second_and_resets() {
        let mut b = Backoff::new();
        let got: Vec<u128> = (0..9).map(|_| b.failed().as_millis()).collect();
        assert_eq!(got, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.reset();
        assert_eq!(b.failed(), Duration::from_millis(10));
    }

    #[test]
    fn the_log_limit_admits_one_line_per_period_and_counts_the_rest() {
        let mut l = LogLimit::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(l.admit(t0), Some(0));
        for i in 1..=1000 {
            assert_eq!(l.admit(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(l.admit(t0 + Duration::from_secs(10)), Some(1000));
        assert_eq!(l.admit(t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn the_connection_budget_fits_under_the_file_limit() {
        // 256 files: 192 for the API, 144 served and 48 queued.
        assert_eq!(
            ConnectionBudget::fit(256, Some(256)),
            ConnectionBudget {
                connections: 144,
                queue: 48
            }
        );
        // A generous limit leaves the setting as it is.
        assert_eq!(ConnectionBudget::fit(256, Some(65_536)).connections, 256);
        assert_eq!(ConnectionBudget::fit(256, Some(65_536)).queue, MAX_QUEUE);
        // Absurdly low limits still serve someone.
        let tiny = ConnectionBudget::fit(256, Some(10));
        assert!(tiny.connections >= 1 && tiny.queue >= 1, "{tiny:?}");
        assert_eq!(ConnectionBudget::fit(5, None).connections, 5);
        assert!(open_file_limit().is_some_and(|n| n > 0));
    }

    #[test]
    fn the_busy_answer_is_well_formed_http() {
        let text = std::str::from_utf8(BUSY).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 503 "));
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|v| v.parse().ok())
            .expect("content-length");
        assert_eq!(len, body.len());
        serde_json::from_str::<serde_json::Value>(body).expect("json body");
    }
}
