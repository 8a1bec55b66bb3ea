//! The QUIC side of the coordinator: accepts agent connections (mutual TLS, ALPN
//! `persona/1`), enrolls agents that present a join token, and ingests telemetry
//! batches, acknowledging each only after it is committed.
//!
//! Every stream is handled on its own: a malformed, oversized or unexpected message
//! closes that stream (or, for an identity problem, that connection) with a reason, is
//! counted, and is logged at most once per interval per reason. Other agents never notice.
//! Batches from all connections go through one writer thread that commits them in groups
//! (one SQLite transaction for many batches), which is what makes a large fleet affordable.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::{Connection, RecvStream, SendStream, VarInt};
use rustls::pki_types::CertificateDer;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use persona_shared::protocol::{
    self, AgentMsg, Batch, CoordMsg, EnrollResponse, Hello, Reject, RejectCode, Welcome,
};

use crate::pki::{self, Pki};
use crate::store::{self, IngestItem, Store, TokenRefusal};

/// Errors that stop the server as a whole (per-stream problems never do).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot bind QUIC on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS set-up: {0}")]
    Tls(String),
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
}

/// Settings of the QUIC server.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub max_frame: usize,
    pub sample_interval_ms: u32,
    pub batch_interval_s: u32,
    pub retention_ms: i64,
    /// How far in the future a timestamp may be (clock skew).
    pub max_future_ms: i64,
    /// New connections allowed per source address per second (burst of 4x).
    pub conn_rate_per_ip: f64,
    /// Whether `GET /metrics` needs the admin token (see docs/operations.md).
    pub metrics_require_token: bool,
    /// Instance catalogue file for sizing (`--catalogue`); `None` = the built-in one.
    pub catalogue: Option<std::path::PathBuf>,
    /// Constants of the configuration engine (`[engine]` in the config file).
    pub engine: crate::engine::EngineConfig,
    /// Outside resize actuators by VM (`[[actuator]]`); empty = every agent resizes itself.
    pub actuators: Vec<crate::actuate::ActuatorBinding>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            max_frame: protocol::DEFAULT_MAX_FRAME,
            sample_interval_ms: 1000,
            batch_interval_s: 10,
            retention_ms: 14 * 24 * 3600 * 1000,
            max_future_ms: 10 * 60 * 1000,
            conn_rate_per_ip: 20.0,
            metrics_require_token: false,
            catalogue: None,
            engine: crate::engine::EngineConfig::default(),
            actuators: Vec::new(),
        }
    }
}

/// Counters the admin API and /metrics expose.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub batches: AtomicU64,
    pub duplicate_batches: AtomicU64,
    pub samples: AtomicU64,
    pub bytes_received: AtomicU64,
    pub ingest_nanos: AtomicU64,
    pub enrollments: AtomicU64,
    /// Monotonic milliseconds (since the server started) of the accept loop's last turn:
    /// the systemd watchdog checks that it keeps moving.
    pub accept_loop_heartbeat_ms: AtomicU64,
    rejected: Mutex<HashMap<&'static str, u64>>,
}

impl Stats {
    fn reject(&self, reason: &'static str) {
        if let Ok(mut m) = self.rejected.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    /// Rejections so far, by reason.
    pub fn rejected(&self) -> Vec<(&'static str, u64)> {
        let mut v: Vec<_> = self
            .rejected
            .lock()
            .map(|m| m.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default();
        v.sort_unstable();
        v
    }
}

/// Logs a reason at most once per `every`, with how many were suppressed in between.
#[derive(Debug)]
struct LogLimiter {
    every: Duration,
    last: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl LogLimiter {
    fn new(every: Duration) -> Self {
        Self {
            every,
            last: Mutex::new(HashMap::new()),
        }
    }

    fn warn(&self, reason: &'static str, peer: SocketAddr, detail: &dyn std::fmt::Display) {
        let Ok(mut m) = self.last.lock() else { return };
        let now = Instant::now();
        match m.get_mut(reason) {
            Some((t, n)) if now.duration_since(*t) < self.every => *n += 1,
            Some((t, n)) => {
                warn!(reason, %peer, suppressed = *n, "refused: {detail}");
                *t = now;
                *n = 0;
            }
            None => {
                warn!(reason, %peer, "refused: {detail}");
                m.insert(reason, (now, 0));
            }
        }
    }
}

/// Token bucket per source address, so one address cannot flood the handshake path.
#[derive(Debug)]
struct ConnLimiter {
    rate: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl ConnLimiter {
    fn allow(&self, ip: IpAddr) -> bool {
        let Ok(mut m) = self.buckets.lock() else {
            return false;
        };
        let now = Instant::now();
        let burst = self.rate * 4.0;
        if m.len() > 100_000 {
            m.retain(|_, (_, t)| now.duration_since(*t) < Duration::from_secs(60));
        }
        let (tokens, at) = m.entry(ip).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

type IngestReply = oneshot::Sender<Result<bool, String>>;

/// Shared state of a running server.
pub struct Shared {
    pub store: Arc<Store>,
    pub pki: Arc<Pki>,
    pub settings: ServerSettings,
    pub stats: Arc<Stats>,
    ingest_tx: mpsc::Sender<(IngestItem, IngestReply)>,
    /// Live connections by agent key, so a revocation can cut them at once.
    live: Mutex<HashMap<i64, Vec<Connection>>>,
    log: LogLimiter,
    limiter: ConnLimiter,
    /// Wake-ups for command delivery to connected agents (`commands`).
    pub commands: crate::commands::Hub,
    /// Persona beliefs per agent (`belief`): the profiler for priors.
    pub beliefs: crate::belief::Beliefs,
    /// The current mirror model, pushed to agents that run another (`model_push`).
    pub models: crate::model_push::ModelHub,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    /// Ids (store keys) of the agents with a live connection.
    pub fn connected(&self) -> Vec<i64> {
        self.live
            .lock()
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Whether the group-commit writer thread is still running (it owns the receiver).
    pub fn ingest_alive(&self) -> bool {
        !self.ingest_tx.is_closed()
    }

    /// Closes every live connection of an agent (after a revocation).
    pub fn disconnect(&self, key: i64) {
        if let Ok(mut m) = self.live.lock()
            && let Some(conns) = m.remove(&key)
        {
            for c in conns {
                c.close(VarInt::from_u32(3), b"revoked");
            }
        }
    }
}

/// Builds the endpoint and shared state; `run` then serves until shutdown.
pub fn bind(
    listen: SocketAddr,
    store: Arc<Store>,
    pki: Arc<Pki>,
    settings: ServerSettings,
) -> Result<(quinn::Endpoint, Arc<Shared>), ServeError> {
    let tls = pki
        .server_config()
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(VarInt::from_u32(32));
    transport.max_concurrent_uni_streams(VarInt::from_u32(0));
    transport.max_idle_timeout(Some(VarInt::from_u32(60_000).into()));
    cfg.transport_config(Arc::new(transport));
    let endpoint = quinn::Endpoint::server(cfg, listen).map_err(|source| ServeError::Bind {
        addr: listen,
        source,
    })?;
    let (ingest_tx, ingest_rx) = mpsc::channel(4096);
    let stats = Arc::new(Stats::default());
    spawn_writer(store.clone(), stats.clone(), ingest_rx);
    let models = crate::model_push::ModelHub::open(&store);
    let shared = Arc::new(Shared {
        models,
        store,
        pki,
        limiter: ConnLimiter {
            rate: settings.conn_rate_per_ip,
            buckets: Mutex::new(HashMap::new()),
        },
        settings,
        stats,
        ingest_tx,
        live: Mutex::new(HashMap::new()),
        log: LogLimiter::new(Duration::from_secs(10)),
        commands: crate::commands::Hub::default(),
        beliefs: crate::belief::Beliefs::default(),
    });
    Ok((endpoint, shared))
}

/// The group-commit writer: takes whatever batches are waiting (up to 512) and commits
/// them in one transaction, then answers each sender.
fn spawn_writer(
    store: Arc<Store>,
    stats: Arc<Stats>,
    mut rx: mpsc::Receiver<(IngestItem, IngestReply)>,
) {
    std::thread::Builder::new()
        .name("ingest-writer".into())
        .spawn(move || {
            let mut group: Vec<(IngestItem, IngestReply)> = Vec::with_capacity(512);
            while let Some(first) = rx.blocking_recv() {
                group.push(first);
                while group.len() < 512 {
                    match rx.try_recv() {
                        Ok(x) => group.push(x),
                        Err(_) => break,
                    }
                }
                let (items, replies): (Vec<_>, Vec<_>) = group.drain(..).unzip();
                let t = Instant::now();
                let result = store.ingest(&items);
                stats
                    .ingest_nanos
                    .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                match result {
                    Ok(dups) => {
                        for ((item, reply), dup) in items.iter().zip(replies).zip(dups) {
                            if dup {
                                stats.duplicate_batches.fetch_add(1, Ordering::Relaxed);
                            } else {
                                stats.batches.fetch_add(1, Ordering::Relaxed);
                                let n = item.batch.value_count(item.points) as u64;
                                stats.samples.fetch_add(n, Ordering::Relaxed);
                            }
                            let _ = reply.send(Ok(dup));
                        }
                    }
                    Err(e) => {
                        warn!("ingest commit failed: {e}");
                        for reply in replies {
                            let _ = reply.send(Err(e.to_string()));
                        }
                    }
                }
            }
        })
        .map(|_| ())
        .unwrap_or_else(|e| warn!("cannot start the ingest writer: {e}"));
}

/// Serves connections until `shutdown` turns true, then closes the endpoint.
pub async fn run(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let retention = tokio::spawn(retention_loop(shared.clone(), shutdown.clone()));
    let expiry = tokio::spawn(crate::commands::expiry_loop(
        shared.clone(),
        shutdown.clone(),
    ));
    let started = Instant::now();
    let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                shared.stats.accept_loop_heartbeat_ms.store(ms, Ordering::Relaxed);
            }
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let ip = incoming.remote_address().ip();
                if !shared.limiter.allow(ip) {
                    shared.stats.reject("rate_limited");
                    shared.log.warn("rate_limited", incoming.remote_address(), &"too many new connections from this address");
                    incoming.refuse();
                    continue;
                }
                tokio::spawn(handle_connection(incoming, shared.clone()));
            }
            _ = shutdown.changed() => break,
        }
    }
    retention.abort();
    expiry.abort();
    endpoint.close(VarInt::from_u32(0), b"coordinator shutting down");
    // Let in-flight commits finish and their acks go out.
    let _ = tokio::time::timeout(Duration::from_secs(3), endpoint.wait_idle()).await;
}

async fn retention_loop(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let store = shared.store.clone();
        let cutoff = store::now_ms() - shared.settings.retention_ms;
        match tokio::task::spawn_blocking(move || {
            // Events and belief snapshots age out with the telemetry (events.rs).
            if let Err(e) = crate::events::delete_before(&store, cutoff) {
                warn!("retention of events failed: {e}");
            }
            store.delete_before(cutoff)
        })
        .await
        {
            Ok(Ok(n)) if n > 0 => info!(batches = n, "retention deleted old telemetry"),
            Ok(Err(e)) => warn!("retention failed: {e}"),
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(600)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

fn classify_handshake(e: &quinn::ConnectionError) -> &'static str {
    let s = e.to_string().to_ascii_lowercase();
    if s.contains("application protocol") || s.contains("alpn") {
        "bad_alpn"
    } else if s.contains("certificate")
        || s.contains("unknownca")
        || s.contains("unknown ca")
        || s.contains("issuer")
    {
        "bad_certificate"
    } else if s.contains("timed out") {
        "handshake_timeout"
    } else {
        "handshake_failed"
    }
}

async fn handle_connection(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let peer = incoming.remote_address();
    let conn = match incoming.accept() {
        Ok(connecting) => match connecting.await {
            Ok(c) => c,
            Err(e) => {
                let reason = classify_handshake(&e);
                shared.stats.reject(reason);
                shared.log.warn(reason, peer, &e);
                return;
            }
        },
        Err(e) => {
            shared.stats.reject("handshake_failed");
            shared.log.warn("handshake_failed", peer, &e);
            return;
        }
    };
    let cert = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|certs| certs.first().cloned());
    match cert {
        None => enrollment(conn, shared).await,
        Some(cert) => agent_session(conn, cert, shared).await,
    }
}

/// Reads one frame from a stream, with the frame size bound checked before allocation
/// (the agent's reader, so both sides enforce the bound identically).
pub async fn read_frame(recv: &mut RecvStream, max: usize) -> Result<Vec<u8>, String> {
    persona_shared::wire::read_frame(recv, max)
        .await
        .map_err(|e| e.to_string())
}

async fn send(send: &mut SendStream, msg: &CoordMsg, max: usize) -> Result<(), String> {
    let mut buf = Vec::with_capacity(64);
    protocol::encode_frame(msg, &mut buf, max).map_err(|e| e.to_string())?;
    send.write_all(&buf).await.map_err(|e| e.to_string())
}

async fn reject(stream: &mut SendStream, code: RejectCode, message: String, max: usize) {
    let _ = send(stream, &CoordMsg::Reject(Reject { code, message }), max).await;
    let _ = stream.finish();
}

const STREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the accept loop proves it is turning (see `Stats::accept_loop_heartbeat_ms`).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

async fn enrollment(conn: Connection, shared: Arc<Shared>) {
    let peer = conn.remote_address();
    let max = shared.settings.max_frame.min(64 * 1024);
    let Ok(Ok((mut tx, mut rx))) = tokio::time::timeout(STREAM_TIMEOUT, conn.accept_bi()).await
    else {
        shared.stats.reject("no_client_certificate");
        shared.log.warn(
            "no_client_certificate",
            peer,
            &"connection without client certificate and no enrollment",
        );
        conn.close(VarInt::from_u32(2), b"client certificate required");
        return;
    };
    let body = match tokio::time::timeout(STREAM_TIMEOUT, read_frame(&mut rx, max)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            shared.stats.reject("bad_frame");
            shared.log.warn("bad_frame", peer, &e);
            reject(&mut tx, RejectCode::BadMessage, e, max).await;
            conn.close(VarInt::from_u32(2), b"bad frame");
            return;
        }
        Err(_) => {
            conn.close(VarInt::from_u32(2), b"timeout");
            return;
        }
    };
    let req = match protocol::decode_body::<AgentMsg>(&body) {
        Ok(AgentMsg::Enroll(r)) => r,
        Ok(_) => {
            shared.stats.reject("no_client_certificate");
            shared.log.warn(
                "no_client_certificate",
                peer,
                &"message other than Enroll without a client certificate",
            );
            reject(
                &mut tx,
                RejectCode::NotEnrolled,
                "client certificate required; enroll first".into(),
                max,
            )
            .await;
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            return;
        }
        Err(e) => {
            shared.stats.reject("bad_message");
            shared.log.warn("bad_message", peer, &e);
            reject(&mut tx, RejectCode::BadMessage, e.to_string(), max).await;
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            return;
        }
    };
    let agent_id = match pki::random_hex(8) {
        Ok(h) => format!("a-{h}"),
        Err(e) => {
            reject(&mut tx, RejectCode::Internal, e.to_string(), max).await;
            return;
        }
    };
    let (cert_pem, fp) = match shared.pki.sign_agent(&agent_id, &req.public_key) {
        Ok(x) => x,
        Err(e) => {
            shared.stats.reject("bad_public_key");
            shared.log.warn("bad_public_key", peer, &e);
            reject(&mut tx, RejectCode::BadMessage, e.to_string(), max).await;
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            return;
        }
    };
    let hostname: String = req
        .hostname
        .chars()
        .filter(|c| !c.is_control())
        .take(253)
        .collect();
    let store = shared.store.clone();
    let (token, id2, fp2) = (req.token.clone(), agent_id.clone(), fp.clone());
    let res =
        tokio::task::spawn_blocking(move || store.enroll(&token, &id2, &hostname, &fp2)).await;
    match res {
        Ok(Ok(Ok(()))) => {
            shared.stats.enrollments.fetch_add(1, Ordering::Relaxed);
            info!(agent = %agent_id, %peer, "agent enrolled");
            let msg = CoordMsg::Enrolled(EnrollResponse {
                agent_id,
                cert_pem,
                ca_pem: shared.pki.ca_pem.clone(),
            });
            if send(&mut tx, &msg, max).await.is_ok() {
                let _ = tx.finish();
            }
        }
        Ok(Ok(Err(refusal))) => {
            let reason = match refusal {
                TokenRefusal::Expired => "token_expired",
                TokenRefusal::UsedUp => "token_used",
                TokenRefusal::Revoked => "token_revoked",
                TokenRefusal::Unknown => "bad_token",
            };
            shared.stats.reject(reason);
            shared.log.warn(reason, peer, &refusal);
            reject(&mut tx, RejectCode::BadToken, refusal.to_string(), max).await;
        }
        Ok(Err(e)) => reject(&mut tx, RejectCode::Internal, e.to_string(), max).await,
        Err(e) => reject(&mut tx, RejectCode::Internal, e.to_string(), max).await,
    }
    // Keep the connection until the agent has read the answer and closes.
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
}

async fn agent_session(conn: Connection, cert: CertificateDer<'static>, shared: Arc<Shared>) {
    let peer = conn.remote_address();
    let fp = pki::fingerprint(&cert);
    let store = shared.store.clone();
    let auth = match tokio::task::spawn_blocking(move || store.agent_by_fingerprint(&fp)).await {
        Ok(Ok(a)) => a,
        _ => {
            conn.close(VarInt::from_u32(1), b"internal error");
            return;
        }
    };
    let auth = match auth {
        Some(a) if !a.revoked => a,
        Some(a) => {
            shared.stats.reject("revoked_agent");
            shared
                .log
                .warn("revoked_agent", peer, &format!("agent {} is revoked", a.id));
            refuse_streams(&conn, RejectCode::Revoked, "agent revoked", &shared).await;
            return;
        }
        None => {
            shared.stats.reject("unknown_agent");
            shared
                .log
                .warn("unknown_agent", peer, &"certificate of no enrolled agent");
            refuse_streams(
                &conn,
                RejectCode::NotEnrolled,
                "unknown agent certificate",
                &shared,
            )
            .await;
            return;
        }
    };
    shared.stats.connections.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut m) = shared.live.lock() {
        m.entry(auth.key).or_default().push(conn.clone());
    }
    debug!(agent = %auth.id, %peer, "agent connected");
    loop {
        match conn.accept_bi().await {
            Ok((tx, rx)) => {
                tokio::spawn(handle_stream(tx, rx, auth.clone(), shared.clone(), peer));
            }
            Err(e) => {
                debug!(agent = %auth.id, "connection ended: {e}");
                break;
            }
        }
    }
    if let Ok(mut m) = shared.live.lock()
        && let Some(v) = m.get_mut(&auth.key)
    {
        v.retain(|c| c.stable_id() != conn.stable_id());
        if v.is_empty() {
            m.remove(&auth.key);
        }
    }
}

/// Tells a refused agent why on its first stream (a refused client otherwise looks
/// connected until it exchanges data), then closes the connection.
async fn refuse_streams(conn: &Connection, code: RejectCode, why: &str, shared: &Shared) {
    if let Ok(Ok((mut tx, _rx))) =
        tokio::time::timeout(Duration::from_secs(5), conn.accept_bi()).await
    {
        reject(&mut tx, code, why.to_owned(), shared.settings.max_frame).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), tx.stopped()).await;
    }
    conn.close(VarInt::from_u32(3), why.as_bytes());
}

async fn handle_stream(
    mut tx: SendStream,
    mut rx: RecvStream,
    auth: store::AgentAuth,
    shared: Arc<Shared>,
    peer: SocketAddr,
) {
    let max = shared.settings.max_frame;
    // A stream must say what it is within the timeout; after Hello the control stream
    // may stay quiet for as long as the connection lives (the agent writes on it only
    // when its facts change, and QUIC keep-alives hold the connection).
    let mut is_control = false;
    // Commands pushed to this agent on its control stream (after Hello).
    let mut pushes = None;
    loop {
        let next = read_frame(&mut rx, max);
        let read = if is_control {
            Ok(crate::commands::read_or_push(next, &mut tx, &mut pushes, max).await)
        } else {
            tokio::time::timeout(STREAM_TIMEOUT, next).await
        };
        let body = match read {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                // A clean end of the control stream is not an error.
                if !e.contains("finished early") && !e.contains("closed") && !e.contains("lost") {
                    let reason = if e.contains("exceeds the maximum") {
                        "frame_too_large"
                    } else {
                        "bad_frame"
                    };
                    shared.stats.reject(reason);
                    shared.log.warn(reason, peer, &e);
                    let code = if reason == "frame_too_large" {
                        RejectCode::TooLarge
                    } else {
                        RejectCode::BadMessage
                    };
                    reject(&mut tx, code, e, max).await;
                    let _ = rx.stop(VarInt::from_u32(4));
                }
                return;
            }
            Err(_) => return,
        };
        shared
            .stats
            .bytes_received
            .fetch_add(body.len() as u64 + 4, Ordering::Relaxed);
        let msg = match protocol::decode_body::<AgentMsg>(&body) {
            Ok(m) => m,
            Err(e) => {
                shared.stats.reject("bad_message");
                shared.log.warn("bad_message", peer, &e);
                reject(&mut tx, RejectCode::BadMessage, e.to_string(), max).await;
                let _ = rx.stop(VarInt::from_u32(4));
                return;
            }
        };
        match msg {
            AgentMsg::Hello(h) => {
                let model_version = h.model_version.clone();
                if on_hello(&mut tx, h, &auth, &shared).await.is_err() {
                    return;
                }
                is_control = true;
                pushes = Some(crate::commands::open_session(&shared, auth.key, &auth.id));
                // Mirror model pushes ride on the same queue (model_push).
                pushes =
                    pushes.map(|p| crate::model_push::session(&shared, &auth.id, model_version, p));
            }
            AgentMsg::Facts(f) => {
                let store = shared.store.clone();
                let facts = serde_json::to_string(&f).ok();
                let key = auth.key;
                let _ = tokio::task::spawn_blocking(move || {
                    store.update_agent(key, facts.as_deref(), None)
                })
                .await;
            }
            AgentMsg::Batch(b) => {
                let reply = on_batch(b, &auth, &shared, peer).await;
                let _ = send(&mut tx, &reply, max).await;
                let _ = tx.finish();
                return;
            }
            AgentMsg::CommandUpdate(u) => {
                crate::commands::on_update(&shared, auth.key, &auth.id, u).await;
            }
            AgentMsg::Event(e) => {
                if crate::events::on_event(&mut tx, e, &auth, &shared)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            AgentMsg::ModelStatus(s) => {
                crate::model_push::on_status(&shared, &auth.id, s).await;
            }
            AgentMsg::Enroll(_) => {
                reject(
                    &mut tx,
                    RejectCode::BadMessage,
                    "already enrolled".into(),
                    max,
                )
                .await;
                return;
            }
        }
    }
}

async fn on_hello(
    tx: &mut SendStream,
    h: Hello,
    auth: &store::AgentAuth,
    shared: &Shared,
) -> Result<(), ()> {
    let max = shared.settings.max_frame;
    if h.protocol != protocol::PROTOCOL_VERSION {
        shared.stats.reject("bad_protocol_version");
        reject(
            tx,
            RejectCode::BadMessage,
            format!("protocol version {} not supported", h.protocol),
            max,
        )
        .await;
        return Err(());
    }
    let store = shared.store.clone();
    let facts = serde_json::to_string(&h.facts).ok();
    let purpose = h
        .purpose
        .as_ref()
        .and_then(|p| serde_json::to_string(p).ok());
    let key = auth.key;
    let committed = tokio::task::spawn_blocking(move || {
        store.update_agent(key, facts.as_deref(), purpose.as_deref())?;
        store.committed_seq(key)
    })
    .await
    .map_err(|_| ())?
    .map_err(|_| ())?;
    info!(agent = %auth.id, version = %h.agent_version, last_seq = h.last_seq, "agent hello");
    // The prior for the declared purpose (belief.rs), off the Welcome's path.
    {
        let (store, profiler) = (shared.store.clone(), shared.beliefs.profiler());
        let (agent, purpose) = (auth.id.clone(), h.purpose.clone());
        tokio::task::spawn_blocking(move || {
            let r = crate::belief::set_prior(&store, profiler.as_deref(), &agent, purpose.as_ref());
            if let Err(e) = r {
                warn!(%agent, "cannot store the prior: {e}");
            }
        });
    }
    let w = CoordMsg::Welcome(Welcome {
        agent_id: auth.id.clone(),
        sample_interval_ms: shared.settings.sample_interval_ms,
        batch_interval_s: shared.settings.batch_interval_s,
        committed_seq: committed,
        server_time_ms: store::now_ms(),
    });
    send(tx, &w, max).await.map_err(|_| ())
}

async fn on_batch(
    b: Batch,
    auth: &store::AgentAuth,
    shared: &Shared,
    peer: SocketAddr,
) -> CoordMsg {
    let now = store::now_ms();
    let min = now - shared.settings.retention_ms;
    let maxt = now + shared.settings.max_future_ms;
    let seq = b.seq;
    let refuse = |reason: &'static str, code: RejectCode, msg: String| {
        shared.stats.reject(reason);
        shared.log.warn(
            reason,
            peer,
            &format!("agent {} batch {seq}: {msg}", auth.id),
        );
        CoordMsg::Reject(Reject { code, message: msg })
    };
    let ts = match b.check_timestamps(store::MAX_POINTS, min, maxt) {
        Ok(ts) if !ts.is_empty() => ts,
        Ok(_) => {
            return refuse(
                "bad_timestamps",
                RejectCode::BadTimestamps,
                "empty batch".into(),
            );
        }
        Err(e) => return refuse("bad_timestamps", RejectCode::BadTimestamps, e.to_string()),
    };
    // Structure only: every block must exist and declare exactly one point per
    // timestamp; the values themselves stay encoded.
    for s in b.series() {
        match s {
            Ok(s) => {
                let mut pos = 0;
                if persona_shared::varint::get(s.block, &mut pos) != Some(ts.len() as u64) {
                    return refuse(
                        "bad_message",
                        RejectCode::BadMessage,
                        format!("block of metric {} has the wrong point count", s.metric),
                    );
                }
            }
            Err(e) => return refuse("bad_message", RejectCode::BadMessage, e.to_string()),
        }
    }
    let (start_ms, end_ms) = (ts[0], ts[ts.len() - 1]);
    let mirror = b.mirror.clone();
    let item = IngestItem {
        agent_key: auth.key,
        start_ms,
        end_ms,
        points: ts.len(),
        batch: b,
    };
    let (reply_tx, reply_rx) = oneshot::channel();
    if shared.ingest_tx.send((item, reply_tx)).await.is_err() {
        return CoordMsg::Reject(Reject {
            code: RejectCode::Internal,
            message: "ingest stopped".into(),
        });
    }
    match reply_rx.await {
        Ok(Ok(duplicate)) => {
            // Beliefs (belief.rs) learn from the mirror report after the commit, without
            // holding up the ack.
            if let Some(m) = mirror.filter(|_| !duplicate) {
                let (store, agent) = (shared.store.clone(), auth.id.clone());
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = crate::belief::on_mirror(&store, &agent, &m) {
                        warn!(%agent, "cannot update the persona beliefs: {e}");
                    }
                });
            }
            CoordMsg::Ack { seq, duplicate }
        }
        Ok(Err(e)) => CoordMsg::Reject(Reject {
            code: RejectCode::Internal,
            message: e,
        }),
        Err(_) => CoordMsg::Reject(Reject {
            code: RejectCode::Internal,
            message: "ingest stopped".into(),
        }),
    }
}
