//! An enrolled agent's connection: the certificate names the agent, then each stream is
//! one of: the control stream (Hello, then facts, events, command updates and model
//! status in, Welcome, acks and pushed commands out) or one telemetry batch (checked
//! without decoding values, committed by the group-commit writer, then acked).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use quinn::{Connection, RecvStream, SendStream, VarInt};
use rustls::pki_types::CertificateDer;
use tracing::{debug, info, warn};

use persona_shared::protocol::{
    self, AgentMsg, Batch, CoordMsg, Hello, Reject, RejectCode, Welcome,
};

use super::limits::FrameBudget;
use super::{Ingest, STREAM_TIMEOUT, clean, events, reject, send};
use persona_shared::wire::WireError;

use crate::commands::delivery::ControlError;
use crate::pki;
use crate::store::{self, IngestItem};

pub(super) async fn agent_session(
    conn: Connection,
    cert: CertificateDer<'static>,
    ing: Arc<Ingest>,
) {
    let peer = conn.remote_address();
    let fp = pki::fingerprint(&cert);
    let store = ing.app.store.clone();
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
            ing.app.stats.reject("revoked_agent");
            ing.log
                .warn("revoked_agent", peer, &format!("agent {} is revoked", a.id));
            refuse_streams(&conn, RejectCode::Revoked, "agent revoked", &ing).await;
            return;
        }
        None => {
            ing.app.stats.reject("unknown_agent");
            ing.log
                .warn("unknown_agent", peer, &"certificate of no enrolled agent");
            refuse_streams(
                &conn,
                RejectCode::NotEnrolled,
                "unknown agent certificate",
                &ing,
            )
            .await;
            return;
        }
    };
    ing.app.stats.connections.fetch_add(1, Ordering::Relaxed);
    let limits = &ing.app.settings.ingest_limits;
    // One agent holds a few connections at most: a new one closes the oldest, so a
    // stolen identity cannot open hundreds (a restarted agent's new connection wins).
    for old in ing
        .app
        .live
        .add(auth.key, conn.clone(), limits.connections_per_agent)
    {
        ing.app.stats.reject("connection_superseded");
        old.close(VarInt::from_u32(5), b"superseded by a newer connection");
    }
    debug!(agent = %auth.id, %peer, "agent connected");
    let session = Arc::new(Session {
        auth: auth.clone(),
        peer,
        frames: FrameBudget::new(limits.connection_frame_budget_bytes),
        control: AtomicBool::new(false),
    });
    loop {
        match conn.accept_bi().await {
            Ok((tx, rx)) => {
                tokio::spawn(handle_stream(tx, rx, session.clone(), ing.clone()));
            }
            Err(e) => {
                debug!(agent = %auth.id, "connection ended: {e}");
                break;
            }
        }
    }
    ing.app.live.remove(auth.key, &conn);
}

/// Tells a refused agent why on its first stream (a refused client otherwise looks
/// connected until it exchanges data), then closes the connection.
async fn refuse_streams(conn: &Connection, code: RejectCode, why: &str, ing: &Ingest) {
    if let Ok(Ok((mut tx, _rx))) =
        tokio::time::timeout(Duration::from_secs(5), conn.accept_bi()).await
    {
        reject(&mut tx, code, why.to_owned(), ing.app.settings.max_frame).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), tx.stopped()).await;
    }
    conn.close(VarInt::from_u32(3), why.as_bytes());
}

/// One authenticated connection: whose it is, the memory its unfinished frames may hold,
/// and whether its control stream is taken (a connection has one).
struct Session {
    auth: store::AgentAuth,
    peer: SocketAddr,
    frames: FrameBudget,
    control: AtomicBool,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
enum FrameError {
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("a frame of {len} bytes does not fit the memory left for frames in flight")]
    Budget { len: usize },
    #[error("the frame's {len} bytes did not arrive within {secs} s")]
    Stalled { len: usize, secs: u64 },
}

/// Reads one frame: the header (as long as it takes: a quiet control stream is
/// normal), then reserves the body's bytes from the server's and the connection's
/// budgets before allocating, and reads the body within the frame timeout.
async fn read_budgeted(
    rx: &mut RecvStream,
    max: usize,
    ing: &Ingest,
    session: &Session,
) -> Result<Vec<u8>, FrameError> {
    let len = persona_shared::wire::read_header(rx, max).await?;
    let Some(_held) = FrameBudget::reserve(&[&ing.frames, &session.frames], len) else {
        return Err(FrameError::Budget { len });
    };
    let limit = ing.app.settings.ingest_limits.frame_timeout;
    match tokio::time::timeout(limit, persona_shared::wire::read_body(rx, len)).await {
        Ok(body) => Ok(body?),
        Err(_) => Err(FrameError::Stalled {
            len,
            secs: limit.as_secs(),
        }),
    }
}

async fn handle_stream(
    mut tx: SendStream,
    mut rx: RecvStream,
    session: Arc<Session>,
    ing: Arc<Ingest>,
) {
    let (auth, peer) = (&session.auth, session.peer);
    let max = ing.app.settings.max_frame;
    // A stream must say what it is within the timeout; after Hello the control stream
    // may stay quiet for as long as the connection lives (the agent writes on it only
    // when its facts change, and QUIC keep-alives hold the connection).
    let mut is_control = false;
    // Commands pushed to this agent on its control stream (after Hello).
    let mut pushes = None;
    loop {
        let next = read_budgeted(&mut rx, max, &ing, &session);
        let read = if is_control {
            Ok(crate::commands::delivery::read_or_push(next, &mut tx, &mut pushes, max).await)
        } else {
            tokio::time::timeout(STREAM_TIMEOUT, next)
                .await
                .map(|r| r.map_err(ControlError::Read))
        };
        let body = match read {
            Ok(Ok(b)) => b,
            // The agent went away (a clean end of the control stream is not an error),
            // or a push found the stream gone: close quietly.
            Ok(Err(ControlError::Read(FrameError::Wire(e)))) if e.is_disconnect() => return,
            Ok(Err(ControlError::Push(e))) => {
                debug!(agent = %auth.id, "control stream ended while pushing: {e}");
                return;
            }
            Ok(Err(ControlError::Read(e))) => {
                let (reason, code) = match e {
                    FrameError::Wire(WireError::TooLarge { .. }) => {
                        ("frame_too_large", RejectCode::TooLarge)
                    }
                    // Not the agent's fault as such: it may retry once memory is free.
                    FrameError::Budget { .. } => ("frame_budget", RejectCode::Internal),
                    FrameError::Stalled { .. } => ("frame_stalled", RejectCode::BadMessage),
                    FrameError::Wire(_) => ("bad_frame", RejectCode::BadMessage),
                };
                ing.app.stats.reject(reason);
                ing.log.warn(reason, peer, &e);
                reject(&mut tx, code, e.to_string(), max).await;
                let _ = rx.stop(VarInt::from_u32(4));
                return;
            }
            Err(_) => return,
        };
        let body_len = body.len() + 4;
        ing.app
            .stats
            .bytes_received
            .fetch_add(body_len as u64, Ordering::Relaxed);
        let msg = match protocol::decode_body::<AgentMsg>(&body) {
            Ok(m) => m,
            Err(e) => {
                ing.app.stats.reject("bad_message");
                ing.log.warn("bad_message", peer, &e);
                reject(&mut tx, RejectCode::BadMessage, e.to_string(), max).await;
                let _ = rx.stop(VarInt::from_u32(4));
                return;
            }
        };
        match msg {
            AgentMsg::Hello(_) if is_control || session.control.swap(true, Ordering::AcqRel) => {
                // One control stream per connection: every extra one would hold a
                // delivery task and a frame buffer for as long as it stays open.
                ing.app.stats.reject("second_hello");
                ing.log.warn(
                    "second_hello",
                    peer,
                    &format!("agent {}: a connection has one control stream", auth.id),
                );
                reject(
                    &mut tx,
                    RejectCode::BadMessage,
                    "this connection already has a control stream".into(),
                    max,
                )
                .await;
                let _ = rx.stop(VarInt::from_u32(4));
                return;
            }
            AgentMsg::Hello(mut h) => {
                clean::facts(&mut h.facts);
                if let Some(p) = &mut h.purpose {
                    clean::purpose(p);
                }
                let model_version = h.model_version.clone();
                if on_hello(&mut tx, h, auth, &ing).await.is_err() {
                    return;
                }
                is_control = true;
                let app = &ing.app;
                pushes = Some(crate::commands::delivery::open_session(
                    app.store.clone(),
                    app.pki.clone(),
                    app.commands.clone(),
                    app.settings.actuators.clone(),
                    auth.key,
                    &auth.id,
                ));
                // Mirror model pushes ride on the same queue (model_push).
                pushes = pushes.map(|p| {
                    crate::model::push::session(
                        app.store.clone(),
                        app.commands.clone(),
                        app.models.subscribe(),
                        &auth.id,
                        model_version,
                        p,
                    )
                });
            }
            AgentMsg::Facts(mut f) => {
                clean::facts(&mut f);
                let store = ing.app.store.clone();
                let facts = serde_json::to_string(&f).ok();
                let key = auth.key;
                let _ = tokio::task::spawn_blocking(move || {
                    store.update_agent(key, facts.as_deref(), None)
                })
                .await;
            }
            AgentMsg::Batch(mut b) => {
                clean::procs(&mut b.procs);
                let reply = if ing.quota.take(auth.key, body_len as f64) {
                    on_batch(b, auth, &ing, peer).await
                } else {
                    // Not permanent: the agent keeps the batch and comes back later.
                    ing.app.stats.reject("agent_quota");
                    ing.log.warn(
                        "agent_quota",
                        peer,
                        &format!("agent {} is over its ingest quota", auth.id),
                    );
                    CoordMsg::Reject(Reject {
                        code: RejectCode::Internal,
                        message: format!(
                            "over this agent's ingest quota ({:.0} bytes/s); retry later",
                            ing.app.settings.ingest_limits.agent_bytes_per_s
                        ),
                    })
                };
                let _ = send(&mut tx, &reply, max).await;
                let _ = tx.finish();
                return;
            }
            AgentMsg::CommandUpdate(u) => {
                crate::commands::delivery::on_update(
                    &ing.app.store,
                    &ing.app.commands,
                    auth.key,
                    &auth.id,
                    u,
                )
                .await;
            }
            AgentMsg::Event(mut e) => {
                clean::event(&mut e);
                if events::on_event(&mut tx, e, auth, &ing.app).await.is_err() {
                    return;
                }
            }
            AgentMsg::ModelStatus(s) => {
                crate::model::push::on_status(&ing.app.store, &auth.id, s).await;
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
    ing: &Ingest,
) -> Result<(), ()> {
    let max = ing.app.settings.max_frame;
    if h.protocol != protocol::PROTOCOL_VERSION {
        ing.app.stats.reject("bad_protocol_version");
        reject(
            tx,
            RejectCode::BadMessage,
            format!("protocol version {} not supported", h.protocol),
            max,
        )
        .await;
        return Err(());
    }
    let store = ing.app.store.clone();
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
        let (store, profiler) = (ing.app.store.clone(), ing.app.profiling.clone());
        let (agent, purpose) = (auth.id.clone(), h.purpose.clone());
        tokio::task::spawn_blocking(move || {
            let r = crate::profile::belief::set_prior(
                &store,
                Some(profiler.as_ref()),
                &agent,
                purpose.as_ref(),
            );
            if let Err(e) = r {
                warn!(%agent, "cannot store the prior: {e}");
            }
        });
    }
    let w = CoordMsg::Welcome(Welcome {
        agent_id: auth.id.clone(),
        sample_interval_ms: ing.app.settings.sample_interval_ms,
        batch_interval_s: ing.app.settings.batch_interval_s,
        committed_seq: committed,
        server_time_ms: store::now_ms(),
    });
    send(tx, &w, max).await.map_err(|_| ())
}

async fn on_batch(b: Batch, auth: &store::AgentAuth, ing: &Ingest, peer: SocketAddr) -> CoordMsg {
    let now = store::now_ms();
    let min = now - ing.app.settings.retention_ms;
    let maxt = now + ing.app.settings.max_future_ms;
    let seq = b.seq;
    let refuse = |reason: &'static str, code: RejectCode, msg: String| {
        ing.app.stats.reject(reason);
        ing.log.warn(
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
    match ing.writer.commit(item).await {
        Ok(duplicate) => {
            // Beliefs (belief.rs) learn from the mirror report after the commit, without
            // holding up the ack.
            if let Some(m) = mirror.filter(|_| !duplicate) {
                let (store, agent) = (ing.app.store.clone(), auth.id.clone());
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = crate::profile::belief::on_mirror(&store, &agent, &m) {
                        warn!(%agent, "cannot update the persona beliefs: {e}");
                    }
                });
            }
            CoordMsg::Ack { seq, duplicate }
        }
        Err(e) => CoordMsg::Reject(Reject {
            code: RejectCode::Internal,
            message: e.to_string(),
        }),
    }
}
