//! The QUIC side of the coordinator: accepts agent connections (mutual TLS, ALPN
//! `persona/1`), enrolls agents that present a join token, and ingests telemetry
//! batches, acknowledging each only after it is committed.
//!
//! Every stream is handled on its own: a malformed, oversized or unexpected message
//! closes that stream (or, for an identity problem, that connection) with a reason, is
//! counted, and is logged at most once per interval per reason. Other agents never notice.
//! Batches from all connections go through one writer thread that commits them in groups
//! (one SQLite transaction for many batches), which is what makes a large fleet affordable.

mod clean;
mod enroll;
pub mod events;
pub mod limits;
mod session;
pub mod writer;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::{RecvStream, SendStream, VarInt};
use rustls::pki_types::CertificateDer;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use persona_shared::protocol::{self, CoordMsg, Reject, RejectCode};

use persona_shared::wire::WireError;

use crate::app::App;

use crate::store;
use limits::{Buckets, FrameBudget};
use writer::Writer;

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
    #[error("cannot start the ingest writer thread: {0}")]
    Writer(std::io::Error),
}

/// Logs a reason at most once per `every`, with how many were suppressed in between.
#[derive(Debug)]
pub(crate) struct LogLimiter {
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

    pub(crate) fn warn(
        &self,
        reason: &'static str,
        peer: SocketAddr,
        detail: &dyn std::fmt::Display,
    ) {
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

/// The QUIC side's own state around the `App`: the group-commit writer, the refusal
/// log limiter, the per-address connection limiter, the memory budget of frames still
/// arriving and the per-agent batch quota.
pub struct Ingest {
    pub app: Arc<App>,
    writer: Writer,
    pub(crate) log: LogLimiter,
    /// New connections per proven source address (token bucket, burst of 4x).
    limiter: Buckets<IpAddr>,
    /// Handshakes in flight from addresses not yet proven (no Retry answered).
    unproven: Arc<AtomicUsize>,
    /// Bytes all frames still arriving may hold (`IngestLimits::frame_budget_bytes`).
    pub(crate) frames: FrameBudget,
    /// Batch bytes per agent key (`IngestLimits::agent_bytes_per_s`).
    pub(crate) quota: Buckets<i64>,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest").finish_non_exhaustive()
    }
}

impl Ingest {
    /// Whether the group-commit writer thread is still running.
    pub fn writer_alive(&self) -> bool {
        self.writer.alive()
    }
}

/// The QUIC endpoint for `app`'s settings and CA, and the state `run` serves with.
pub fn bind(
    socket: std::net::UdpSocket,
    app: Arc<App>,
) -> Result<(quinn::Endpoint, Arc<Ingest>), ServeError> {
    let listen = socket.local_addr().map_err(|source| ServeError::Bind {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    let tls = app
        .pki
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
    let runtime = quinn::default_runtime().ok_or_else(|| ServeError::Bind {
        addr: listen,
        source: std::io::Error::other("no async runtime"),
    })?;
    let endpoint =
        quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(cfg), socket, runtime)
            .map_err(|source| ServeError::Bind {
                addr: listen,
                source,
            })?;
    let writer = Writer::spawn(app.clone()).map_err(ServeError::Writer)?;
    let rate = app.settings.conn_rate_per_ip;
    let limits = &app.settings.ingest_limits;
    let ingest = Arc::new(Ingest {
        limiter: Buckets::new(rate, rate * 4.0),
        unproven: Arc::new(AtomicUsize::new(0)),
        frames: FrameBudget::new(limits.frame_budget_bytes),
        quota: Buckets::new(limits.agent_bytes_per_s, limits.agent_bytes_per_s * 8.0),
        app,
        writer,
        log: LogLimiter::new(Duration::from_secs(10)),
    });
    Ok((endpoint, ingest))
}

/// Asks the kernel for a `want`-byte receive buffer on the QUIC socket (0: leave the
/// default), and warns when it granted less.
///
/// Why: every agent's datagrams arrive on this one socket. With Debian's default of
/// 208 KiB, 50,000 agents overflowed it (131,340 `UdpRcvbufErrors` in one run) and the
/// datagrams QUIC had to resend pushed the ack p99 to seconds (docs/BENCHMARKS.md).
/// The kernel caps the size at `net.core.rmem_max`, which only root can raise, so a
/// short buffer is a warning with the fix, not an error.
pub fn grow_receive_buffer(socket: &std::net::UdpSocket, want: usize) {
    if want == 0 {
        return;
    }
    let s = socket2::SockRef::from(socket);
    if let Err(e) = s.set_recv_buffer_size(want) {
        tracing::warn!("could not set the QUIC socket's receive buffer to {want} bytes: {e}");
        return;
    }
    // Linux reports twice what it reserved for the payload (the rest is its overhead).
    match s.recv_buffer_size() {
        Ok(got) if got < want => tracing::warn!(
            granted = got,
            asked = want,
            "the QUIC socket's receive buffer is smaller than asked: raise net.core.rmem_max \
             (sysctl -w net.core.rmem_max={want}), or datagrams are dropped under a fleet's \
             bursts"
        ),
        Ok(got) => tracing::debug!(granted = got, "QUIC socket receive buffer"),
        Err(e) => tracing::warn!("could not read the QUIC socket's receive buffer: {e}"),
    }
}

/// Serves connections until `shutdown` turns true, then closes the endpoint.
pub async fn run(endpoint: quinn::Endpoint, ing: Arc<Ingest>, mut shutdown: watch::Receiver<bool>) {
    let retention = tokio::spawn(retention_loop(ing.clone(), shutdown.clone()));
    let expiry = tokio::spawn(crate::commands::delivery::expiry_loop(
        ing.app.store.clone(),
        shutdown.clone(),
    ));
    let started = Instant::now();
    let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                ing.app.stats.accept_loop_heartbeat_ms.store(ms, Ordering::Relaxed);
            }
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                // The source of an Initial is only a claim until the peer answers a
                // Retry or completes its handshake: counting it before would let anyone
                // who can spoof a UDP source spend a real agent's allowance. A Retry on
                // every connection, though, left about one handshake in 300 silent for
                // 30 s during a 20,000-agent ramp (docs/BENCHMARKS.md, issue 30). So an
                // unproven address is asked for a Retry only when it would matter: many
                // unproven handshakes already in flight (each holds state until it
                // completes or times out), or an allowance already spent. Otherwise the
                // handshake runs and the address is charged once it has completed, which
                // a spoofer cannot do.
                let ip = incoming.remote_address().ip();
                let proven = incoming.remote_address_validated();
                if !proven
                    && (ing.unproven.load(Ordering::Relaxed) >= UNPROVEN_HANDSHAKES_MAX
                        || !ing.limiter.has(ip, 1.0))
                {
                    if let Err(e) = incoming.retry() {
                        debug!("cannot ask for address validation: {e}");
                    }
                    continue;
                }
                if proven && !ing.limiter.take(ip, 1.0) {
                    ing.app.stats.reject("rate_limited");
                    ing.log.warn("rate_limited", incoming.remote_address(), &"too many new connections from this address");
                    incoming.refuse();
                    continue;
                }
                let unproven = (!proven).then(|| Unproven::count(&ing.unproven));
                tokio::spawn(handle_connection(incoming, ing.clone(), unproven));
                continue;
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

async fn retention_loop(ing: Arc<Ingest>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let store = ing.app.store.clone();
        let cutoff = store::now_ms() - ing.app.settings.retention_ms;
        match tokio::task::spawn_blocking(move || {
            // Events and belief snapshots age out with the telemetry (events.rs).
            if let Err(e) = crate::ingest::events::delete_before(&store, cutoff) {
                warn!("retention of events failed: {e}");
            }
            // Tokens that expired, were used up or revoked go a day later.
            if let Err(e) = store.prune_tokens(store::now_ms() - 86_400_000) {
                warn!("pruning old join tokens failed: {e}");
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

/// The refusal label of a failed handshake, from the error's kind and the TLS alert it
/// carries (never its text): a wrong ALPN is `bad_alpn`, a certificate problem
/// `bad_certificate`, a peer that gave up `handshake_aborted`.
fn classify_handshake(e: &quinn::ConnectionError) -> &'static str {
    use quinn::{ConnectionError as C, TransportErrorCode as T};
    // TLS alert numbers (RFC 8446 section 6), carried as QUIC crypto errors.
    const NO_APPLICATION_PROTOCOL: u8 = 120;
    const CERTIFICATE_ALERTS: [u8; 8] = [42, 43, 44, 45, 46, 48, 49, 116];
    match e {
        C::TransportError(t) if t.code == T::crypto(NO_APPLICATION_PROTOCOL) => "bad_alpn",
        C::TransportError(t) if CERTIFICATE_ALERTS.iter().any(|a| t.code == T::crypto(*a)) => {
            "bad_certificate"
        }
        C::TimedOut => "handshake_timeout",
        C::ConnectionClosed(_) | C::ApplicationClosed(_) | C::Reset => "handshake_aborted",
        _ => "handshake_failed",
    }
}

/// Unproven handshakes that may run at once before every new one is asked for a Retry: a
/// ramp of 250 connections a second keeps a few in flight; a flood of spoofed Initials
/// holds at most this many handshake states.
const UNPROVEN_HANDSHAKES_MAX: usize = 256;

/// One unproven handshake in flight, counted in `Ingest::unproven` until dropped.
struct Unproven(Arc<AtomicUsize>);

impl Unproven {
    fn count(n: &Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Self(n.clone())
    }
}

impl Drop for Unproven {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn handle_connection(
    incoming: quinn::Incoming,
    ing: Arc<Ingest>,
    unproven: Option<Unproven>,
) {
    let peer = incoming.remote_address();
    let conn = match incoming.accept() {
        Ok(connecting) => match connecting.await {
            Ok(c) => c,
            Err(e) => {
                let reason = classify_handshake(&e);
                ing.app.stats.reject(reason);
                ing.log.warn(reason, peer, &e);
                return;
            }
        },
        Err(e) => {
            // The first flight failed (a wrong ALPN is refused right here).
            let reason = classify_handshake(&e);
            ing.app.stats.reject(reason);
            ing.log.warn(reason, peer, &e);
            return;
        }
    };
    // The handshake completed, so the address is proven: now it is charged.
    if unproven.is_some() {
        drop(unproven);
        if !ing.limiter.take(peer.ip(), 1.0) {
            ing.app.stats.reject("rate_limited");
            ing.log.warn(
                "rate_limited",
                peer,
                &"too many new connections from this address",
            );
            conn.close(
                VarInt::from_u32(0x0F),
                b"too many new connections from this address",
            );
            return;
        }
    }
    let cert = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|certs| certs.first().cloned());
    match cert {
        None => enroll::enrollment(conn, ing).await,
        Some(cert) => session::agent_session(conn, cert, ing).await,
    }
}

/// Reads one frame from a stream, with the frame size bound checked before allocation
/// (the agent's reader, so both sides enforce the bound identically).
pub async fn read_frame(recv: &mut RecvStream, max: usize) -> Result<Vec<u8>, WireError> {
    persona_shared::wire::read_frame(recv, max).await
}

pub(crate) async fn send(send: &mut SendStream, msg: &CoordMsg, max: usize) -> Result<(), String> {
    let mut buf = Vec::with_capacity(64);
    protocol::encode_frame(msg, &mut buf, max).map_err(|e| e.to_string())?;
    send.write_all(&buf).await.map_err(|e| e.to_string())
}

pub(crate) async fn reject(stream: &mut SendStream, code: RejectCode, message: String, max: usize) {
    let _ = send(stream, &CoordMsg::Reject(Reject { code, message }), max).await;
    let _ = stream.finish();
}

pub(crate) const STREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the accept loop proves it is turning (see `Stats::accept_loop_heartbeat_ms`).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
