//! One link session after another: connect, Hello and Welcome, then the outbox's
//! batches (up to [`MAX_IN_FLIGHT`] streams at once), events, command updates and model
//! answers on the control stream, until the connection fails or shutdown drains it.
//! Between sessions it waits out the `backoff`. What this is not: TLS set-up (`tls`),
//! the outbox's storage (`outbox`) or what a command does (`commands`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use persona_shared::facts::HostFacts;
use persona_shared::protocol::{
    AgentMsg, CoordMsg, Hello, PROTOCOL_VERSION, Purpose, RejectCode, SERVER_NAME, decode_body,
};
use persona_shared::wire::{WireError, read_frame, read_msg, write_frame, write_msg};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use super::backoff::Backoff;
use super::connect::{client_endpoint, resolve};
use super::error::{LinkError, kind, wire};
use super::skew::{Held, SKEW_WARN_MS, ServerClock, stepped};
use crate::identity::{CA_FILE, CERT_FILE, KEY_FILE};
use crate::outbox::{Outbox, lock};
use crate::settings::Settings;
use crate::tls;

/// Batches sent and not yet answered, at most.
pub const MAX_IN_FLIGHT: usize = 8;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// After a connection that stayed up this long, the backoff starts again from the base.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);
const STATS_EVERY: Duration = Duration::from_secs(60);
/// On shutdown, how long the outbox may take to drain before the connection is closed.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// What the link has done, for logs, benchmarks and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Connections that got a Welcome.
    pub connections: u64,
    /// Connection attempts after the first.
    pub reconnects: u64,
    pub batches_sent: u64,
    pub batches_acked: u64,
    /// Acks that said the coordinator already had the batch.
    pub batches_duplicate: u64,
    pub batches_rejected: u64,
    /// Refusals of batches dated in the coordinator's future (kept and retried, never
    /// deleted).
    pub batches_future: u64,
    /// Bytes of batch frames written (payload, before QUIC framing).
    pub batch_bytes: u64,
    /// UDP bytes sent and received by QUIC, all connections together.
    pub udp_tx_bytes: u64,
    pub udp_rx_bytes: u64,
}

/// Static settings of the link.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// HOST:PORT.
    pub coordinator: String,
    /// Where cert.pem, key.pem and ca.pem are.
    pub state_dir: PathBuf,
    pub max_frame_bytes: usize,
    pub purpose: Option<Purpose>,
}

/// What the link shares with the rest of the daemon.
#[derive(Debug, Clone)]
pub struct LinkContext {
    pub outbox: Arc<Mutex<Outbox>>,
    /// Notified by the sampling thread whenever a batch is sealed.
    pub sealed: Arc<Notify>,
    /// Current host facts, updated by the sampling thread.
    pub facts: watch::Receiver<HostFacts>,
    /// Where Welcome's settings go (the sampling thread watches it).
    pub settings: watch::Sender<Settings>,
    /// Counters for the agent's `/metrics`.
    pub health: Arc<crate::health::Health>,
    /// The command runner's ends (received commands in, updates out); None = commands off.
    pub commands: Option<crate::commands::LinkHooks>,
    /// Detected events to send on the control stream; None = detection off.
    pub events: Option<crate::detect::EventHooks>,
    /// The running mirror model: its version goes in Hello, pushes are offered to it and
    /// its answers go out on the control stream. None = no model updates.
    pub models: Option<crate::model_store::ModelHandle>,
    /// The agent's wall clock (the system clock but in tests), compared with the
    /// coordinator's at Welcome.
    pub clock: Arc<dyn persona_shared::clock::WallClock>,
}

/// The link. Build it with [`Link::new`] (which reads the TLS files, so configuration
/// errors show at start-up) and drive it with [`Link::run`].
#[derive(Debug)]
pub struct Link {
    cfg: LinkConfig,
    ctx: LinkContext,
    client: quinn::ClientConfig,
    stats: LinkStats,
    /// Set during a session when it proved healthy (acked a batch or lasted long).
    healthy: bool,
    /// The coordinator's clock, from this session's Welcome.
    server_clock: Option<ServerClock>,
    /// Batches of this session refused as future-dated.
    held: Held,
}

/// How a session ended without error.
enum SessionEnd {
    /// Shut down: drained or timed out.
    Shutdown,
}

impl Link {
    pub fn new(cfg: LinkConfig, ctx: LinkContext) -> Result<Link, LinkError> {
        let client = tls::mtls_client_config(
            &cfg.state_dir.join(CERT_FILE),
            &cfg.state_dir.join(KEY_FILE),
            &cfg.state_dir.join(CA_FILE),
        )?;
        Ok(Link {
            cfg,
            ctx,
            client,
            stats: LinkStats::default(),
            healthy: false,
            server_clock: None,
            held: Held::default(),
        })
    }

    /// Runs until `shutdown` becomes true, then drains the outbox for up to
    /// [`DRAIN_TIMEOUT`] if connected, closes the connection and returns the statistics.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> LinkStats {
        let mut backoff = Backoff::standard();
        let mut attempts = 0u64;
        loop {
            if *shutdown.borrow() {
                break;
            }
            if attempts > 0 {
                self.stats.reconnects += 1;
            }
            attempts += 1;
            self.healthy = false;
            let started = Instant::now();
            let ended = self.session(&mut shutdown).await;
            self.publish(false);
            match ended {
                Ok(SessionEnd::Shutdown) => break,
                Err(e) => {
                    if self.healthy || started.elapsed() >= HEALTHY_AFTER {
                        backoff.reset();
                    }
                    match &e {
                        LinkError::Rejected {
                            code: RejectCode::Revoked,
                            ..
                        } => {
                            tracing::error!(
                                "{e}; this agent was revoked: enroll it again to resume streaming"
                            );
                            backoff.exhaust();
                        }
                        LinkError::Rejected {
                            code: RejectCode::NotEnrolled,
                            ..
                        } => {
                            tracing::error!(
                                "{e}; the coordinator does not know this agent: enroll it again"
                            );
                            backoff.exhaust();
                        }
                        _ => tracing::warn!("link: {e}"),
                    }
                }
            }
            let delay = backoff.next_delay();
            tracing::debug!(
                delay_ms = delay.as_millis() as u64,
                "reconnecting after backoff"
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = until_true(&mut shutdown) => {}
            }
        }
        self.log_stats("link stopped", None);
        self.stats
    }

    /// Copies the counters into the shared health (for `/metrics`).
    fn publish(&self, connected: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let h = &self.ctx.health;
        h.link_connected.store(connected, Relaxed);
        h.link_reconnects.store(self.stats.reconnects, Relaxed);
        h.batches_sent.store(self.stats.batches_sent, Relaxed);
        h.batches_acked.store(self.stats.batches_acked, Relaxed);
        h.batches_rejected
            .store(self.stats.batches_rejected, Relaxed);
        h.batches_held_future.store(self.held.len() as u64, Relaxed);
    }

    /// The skew now (agent minus coordinator), published for `/metrics`; None before
    /// the first Welcome with a time.
    fn measure_skew(&self) -> Option<i64> {
        let skew = self.server_clock?.skew_ms(self.ctx.clock.now_ms());
        self.ctx.health.set_clock_skew_ms(skew);
        Some(skew)
    }

    fn log_stats(&self, what: &str, live: Option<&quinn::Connection>) {
        let (tx, rx) = live.map_or((0, 0), |c| {
            let s = c.stats();
            (s.udp_tx.bytes, s.udp_rx.bytes)
        });
        let s = &self.stats;
        let pending = lock(&self.ctx.outbox)
            .stats()
            .map(|o| o.pending_batches)
            .unwrap_or(0);
        tracing::info!(
            connections = s.connections,
            reconnects = s.reconnects,
            batches_sent = s.batches_sent,
            batches_acked = s.batches_acked,
            batches_duplicate = s.batches_duplicate,
            batches_rejected = s.batches_rejected,
            batches_future = s.batches_future,
            batch_bytes = s.batch_bytes,
            udp_tx_bytes = s.udp_tx_bytes + tx,
            udp_rx_bytes = s.udp_rx_bytes + rx,
            outbox_pending = pending,
            "{what}"
        );
    }

    /// One connection, from connect to close.
    async fn session(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<SessionEnd, LinkError> {
        let addr = resolve(&self.cfg.coordinator).await?;
        let endpoint = client_endpoint(addr)?;
        let connecting = endpoint
            .connect_with(self.client.clone(), addr, SERVER_NAME)
            .map_err(|source| LinkError::Connect { addr, source })?;
        // A coordinator that is down leaves the handshake pending until the timeout;
        // shutdown must not wait for it.
        let connected = tokio::select! {
            r = tokio::time::timeout(CONNECT_TIMEOUT, connecting) => r,
            () = until_true(shutdown) => return Ok(SessionEnd::Shutdown),
        };
        let conn = match connected {
            Ok(r) => r.map_err(|source| LinkError::Handshake { addr, source })?,
            Err(_) => {
                return Err(LinkError::Wire {
                    context: "handshake",
                    source: WireError::Timeout {
                        what: "the handshake",
                        secs: CONNECT_TIMEOUT.as_secs(),
                    },
                });
            }
        };
        let result = self.serve(&conn, shutdown).await;
        let s = conn.stats();
        self.stats.udp_tx_bytes += s.udp_tx.bytes;
        self.stats.udp_rx_bytes += s.udp_rx.bytes;
        let (code, reason): (u32, &[u8]) = match &result {
            Ok(_) => (0, b"shutdown"),
            Err(_) => (1, b"error"),
        };
        conn.close(code.into(), reason);
        // Let the close reach the coordinator (bounded: it may be gone).
        let _ = tokio::time::timeout(Duration::from_millis(500), endpoint.wait_idle()).await;
        result
    }

    /// The protocol on an established connection.
    async fn serve(
        &mut self,
        conn: &quinn::Connection,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<SessionEnd, LinkError> {
        let max = self.cfg.max_frame_bytes;
        // A client refused in the handshake only finds out on its first stream: the
        // Hello exchange is where a revoked or unknown certificate shows.
        let (mut ctl_send, mut ctl_recv) = conn.open_bi().await.map_err(|e| LinkError::Wire {
            context: "control stream",
            source: WireError::Connection(e.into()),
        })?;
        let facts = self.ctx.facts.borrow_and_update().clone();
        let last_seq = lock(&self.ctx.outbox).last_seq();
        let hello = AgentMsg::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            facts,
            purpose: self.cfg.purpose.clone(),
            last_seq,
            model_version: self.ctx.models.as_ref().map(|m| m.version()),
        });
        write_msg(&mut ctl_send, &hello, max)
            .await
            .map_err(wire("sending Hello"))?;
        let answer = tokio::select! {
            r = read_msg::<CoordMsg, _>(&mut ctl_recv, max, "Hello") => r,
            () = until_true(shutdown) => return Ok(SessionEnd::Shutdown),
        };
        let welcome = match answer.map_err(wire("waiting for Welcome"))? {
            CoordMsg::Welcome(w) => w,
            CoordMsg::Reject(r) => {
                return Err(LinkError::Rejected {
                    what: "Hello",
                    code: r.code,
                    message: r.message,
                });
            }
            other => {
                return Err(LinkError::Unexpected {
                    what: "Hello",
                    got: kind(&other),
                });
            }
        };
        self.stats.connections += 1;
        self.held = Held::default();
        self.server_clock = ServerClock::from_welcome(welcome.server_time_ms, conn.rtt());
        let skew = self.measure_skew();
        tracing::info!(
            coordinator = %self.cfg.coordinator,
            agent_id = %welcome.agent_id,
            committed_seq = welcome.committed_seq,
            clock_skew_ms = skew,
            "connected"
        );
        if let Some(skew) = skew.filter(|s| s.abs() > SKEW_WARN_MS) {
            warn_skew(skew);
        }
        self.ctx.settings.send_if_modified(|cur| {
            let new = cur.adopt(welcome.sample_interval_ms, welcome.batch_interval_s);
            let changed = new != *cur;
            if changed {
                tracing::info!(
                    sample_interval_ms = new.sample_interval_ms,
                    batch_interval_s = new.batch_interval_s,
                    "adopting the coordinator's sampling settings"
                );
            }
            *cur = new;
            changed
        });
        {
            let mut ob = lock(&self.ctx.outbox);
            if welcome.committed_seq > ob.last_seq() {
                // The coordinator has seen numbers this outbox never handed out (restored
                // disk image, cloned VM): jump past them so no new batch is taken for a
                // duplicate.
                tracing::warn!(
                    committed_seq = welcome.committed_seq,
                    last_seq = ob.last_seq(),
                    "coordinator is ahead of the outbox; skipping sequence numbers"
                );
                ob.bump_next_seq(welcome.committed_seq + 1)?;
            }
        }

        // Coordinator messages on the control stream (Reject before a close; commands
        // later) are read by a task of their own: a read is not cancellation-safe.
        let hooks = self.ctx.commands.clone();
        let event_hooks = self.ctx.events.clone();
        let models = self.ctx.models.clone();
        let mut control = tokio::spawn(async move {
            loop {
                match read_frame(&mut ctl_recv, max).await {
                    Ok(body) => match decode_body::<CoordMsg>(&body) {
                        Ok(CoordMsg::Reject(r)) => {
                            return LinkError::Rejected {
                                what: "the connection",
                                code: r.code,
                                message: r.message,
                            };
                        }
                        Ok(CoordMsg::EventAck { id }) => {
                            if let Some(e) = &event_hooks {
                                e.acked(id);
                            }
                        }
                        Ok(CoordMsg::Model(p)) => match &models {
                            Some(m) => m.offer(p),
                            None => tracing::warn!("a model was pushed but updates are off"),
                        },
                        Ok(CoordMsg::Command(c)) => match &hooks {
                            Some(h) => h.received(c),
                            None => tracing::warn!("a command arrived but commands are off"),
                        },
                        Ok(other) => {
                            tracing::debug!(kind = kind(&other), "ignoring a control message")
                        }
                        Err(source) => {
                            return wire("control stream")(WireError::Decode {
                                what: "a control message",
                                source,
                            });
                        }
                    },
                    Err(e) => return wire("control stream")(e),
                }
            }
        });
        let result = self
            .deliver(conn, &mut ctl_send, &mut control, shutdown)
            .await;
        control.abort();
        result
    }

    /// Sends the outbox and answers events until the connection fails or shutdown.
    async fn deliver(
        &mut self,
        conn: &quinn::Connection,
        ctl_send: &mut quinn::SendStream,
        control: &mut tokio::task::JoinHandle<LinkError>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<SessionEnd, LinkError> {
        let max = self.cfg.max_frame_bytes;
        let mut inflight: JoinSet<(u64, Result<CoordMsg, WireError>)> = JoinSet::new();
        // Highest seq handed to a stream on this connection; a new connection resends
        // everything still in the outbox.
        let mut dispatched = 0u64;
        let mut drain_until: Option<tokio::time::Instant> = None;
        let mut stats_tick = tokio::time::interval(STATS_EVERY);
        stats_tick.reset();
        let mut facts_alive = true;
        let connected_at = Instant::now();
        // Events: everything unacknowledged goes out on a new connection, then each new
        // one as soon as it is queued (ids above `events_sent`).
        let mut events_sent = 0u64;
        let mut events_due = true;
        // Command updates go out on the control stream; the receiver is held for the
        // session, and whatever was queued while disconnected goes out now.
        let mut updates = match &self.ctx.commands {
            Some(h) => Some(h.updates.clone().lock_owned().await),
            None => None,
        };
        // Answers to model pushes, likewise.
        let mut model_statuses = match &self.ctx.models {
            Some(m) => Some(m.statuses().lock_owned().await),
            None => None,
        };
        // Held batches offered again (a probe, then all of them once it is taken); they
        // go before new ones.
        let mut again: std::collections::VecDeque<u64> = std::collections::VecDeque::new();
        let mut last_skew = self.measure_skew();
        loop {
            if drain_until.is_none() && *shutdown.borrow() {
                drain_until = Some(tokio::time::Instant::now() + DRAIN_TIMEOUT);
            }
            // A step of the agent's clock (the skew changed without a new Welcome) may
            // be the fix the held batches wait for.
            let skew = self.measure_skew();
            if let (Some(before), Some(now)) = (last_skew, skew)
                && stepped(before, now)
            {
                tracing::info!(
                    clock_skew_ms = now,
                    was_ms = before,
                    "the agent's clock stepped"
                );
                if now.abs() > SKEW_WARN_MS {
                    warn_skew(now);
                }
                self.held.probe_now(tokio::time::Instant::now());
            }
            last_skew = skew;
            if let Some(seq) = self.held.due(tokio::time::Instant::now()) {
                tracing::debug!(seq, "offering a future-dated batch again");
                again.push_back(seq);
            }
            while inflight.len() < MAX_IN_FLIGHT
                && let Some(seq) = again.pop_front()
            {
                // Gone if the outbox bound dropped it meanwhile.
                if let Some(body) = lock(&self.ctx.outbox).get(seq)? {
                    self.stats.batches_sent += 1;
                    self.stats.batch_bytes += body.len() as u64 + 4;
                    inflight.spawn(send_batch(conn.clone(), seq, body, max));
                }
            }
            if inflight.len() < MAX_IN_FLIGHT {
                let batches = lock(&self.ctx.outbox)
                    .pending_after(dispatched, MAX_IN_FLIGHT - inflight.len())?;
                for (seq, body) in batches {
                    dispatched = seq;
                    self.stats.batches_sent += 1;
                    self.stats.batch_bytes += body.len() as u64 + 4;
                    inflight.spawn(send_batch(conn.clone(), seq, body, max));
                }
            }
            if events_due {
                events_due = false;
                self.send_events(ctl_send, &mut events_sent).await?;
            }
            if drain_until.is_some() && inflight.is_empty() {
                tracing::debug!("outbox drained");
                return Ok(SessionEnd::Shutdown);
            }
            if connected_at.elapsed() >= HEALTHY_AFTER {
                self.healthy = true;
            }
            self.publish(true);
            tokio::select! {
                Some(joined) = inflight.join_next(), if !inflight.is_empty() => {
                    let (seq, answer) = joined.map_err(|e| LinkError::Task(e.to_string()))?;
                    if self.answer(seq, answer)? {
                        again.extend(self.held.acked(seq));
                    }
                }
                () = sleep_until_opt(self.held.deadline()) => {}
                () = self.ctx.sealed.notified() => {}
                changed = self.ctx.facts.changed(), if facts_alive => match changed {
                    Ok(()) => {
                        let facts = self.ctx.facts.borrow_and_update().clone();
                        tracing::info!("host facts changed; sending them");
                        write_msg(ctl_send, &AgentMsg::Facts(facts), max).await.map_err(wire("sending Facts"))?;
                    }
                    Err(_) => facts_alive = false,
                },
                () = event_raised(&self.ctx.events) => events_due = true,
                Some(st) = crate::model_store::next_status(&mut model_statuses) => {
                    write_msg(ctl_send, &AgentMsg::ModelStatus(st), max).await.map_err(wire("sending a model status"))?;
                }
                Some(u) = next_update(&mut updates) => {
                    write_msg(ctl_send, &AgentMsg::CommandUpdate(u), max).await.map_err(wire("sending a command update"))?;
                }
                ended = &mut *control => return Err(ended.unwrap_or_else(|e| LinkError::Task(e.to_string()))),
                e = conn.closed() => return Err(LinkError::Wire { context: "connection", source: WireError::Connection(e.into()) }),
                () = until_true(shutdown), if drain_until.is_none() => {
                    drain_until = Some(tokio::time::Instant::now() + DRAIN_TIMEOUT);
                }
                () = sleep_until_opt(drain_until) => {
                    let pending = lock(&self.ctx.outbox).stats().map(|s| s.pending_batches).unwrap_or(0);
                    tracing::warn!(pending, "shutdown: outbox not drained in time; the rest is sent on the next start");
                    return Ok(SessionEnd::Shutdown);
                }
                _ = stats_tick.tick() => self.log_stats("link stats", Some(conn)),
            }
        }
    }

    /// Sends the queued events above `sent` on the control stream (the coordinator answers
    /// each with `EventAck`, read by the control task).
    async fn send_events(
        &mut self,
        ctl_send: &mut quinn::SendStream,
        sent: &mut u64,
    ) -> Result<(), LinkError> {
        let Some(hooks) = self.ctx.events.clone() else {
            return Ok(());
        };
        let max = self.cfg.max_frame_bytes;
        loop {
            let batch = hooks.pending_after(*sent, 64);
            if batch.is_empty() {
                return Ok(());
            }
            for ev in batch {
                *sent = ev.id;
                tracing::debug!(id = ev.id, kind = ev.kind.name(), "sending an event");
                write_msg(ctl_send, &AgentMsg::Event(ev), max)
                    .await
                    .map_err(wire("sending an event"))?;
            }
        }
    }

    /// Handles the coordinator's answer to batch `seq`; true when it was acknowledged.
    fn answer(&mut self, seq: u64, answer: Result<CoordMsg, WireError>) -> Result<bool, LinkError> {
        match answer.map_err(wire("sending a batch"))? {
            CoordMsg::Ack {
                seq: got,
                duplicate,
            } => {
                if got != seq {
                    return Err(LinkError::WrongAck { sent: seq, got });
                }
                lock(&self.ctx.outbox).ack(seq)?;
                self.stats.batches_acked += 1;
                if duplicate {
                    self.stats.batches_duplicate += 1;
                }
                self.healthy = true;
                tracing::debug!(seq, duplicate, "batch {seq} acked");
                Ok(true)
            }
            CoordMsg::Reject(r)
                if r.code == RejectCode::BadTimestamps && self.future_dated(seq)? =>
            {
                self.stats.batches_future += 1;
                let first = self.held.len() == 0;
                self.held.hold(seq, tokio::time::Instant::now());
                if first {
                    tracing::warn!(
                        seq,
                        clock_skew_ms = self.measure_skew(),
                        "coordinator refused batch {seq} as dated in its future ({}); kept, and offered again until it is taken: check this VM's clock (NTP)",
                        r.message
                    );
                } else {
                    tracing::debug!(seq, "batch {seq} refused as future-dated; kept");
                }
                Ok(false)
            }
            CoordMsg::Reject(r) if is_permanent(r.code) => {
                lock(&self.ctx.outbox).reject(seq)?;
                self.stats.batches_rejected += 1;
                tracing::warn!(seq, code = ?r.code, "coordinator refused batch {seq} for good: {}; dropped", r.message);
                Ok(false)
            }
            CoordMsg::Reject(r) => Err(LinkError::Rejected {
                what: "a batch",
                code: r.code,
                message: r.message,
            }),
            other => Err(LinkError::Unexpected {
                what: "a batch",
                got: kind(&other),
            }),
        }
    }
}

impl Link {
    /// Whether stored batch `seq` ends later than the coordinator's clock (estimated
    /// from Welcome; the agent's own clock without one): a `BadTimestamps` for it means
    /// "too early", which time cures. A batch that is gone, does not decode or has
    /// unordered or no timestamps is not future-dated.
    fn future_dated(&self, seq: u64) -> Result<bool, LinkError> {
        let Some(body) = lock(&self.ctx.outbox).get(seq)? else {
            return Ok(false);
        };
        let Ok(AgentMsg::Batch(b)) = decode_body::<AgentMsg>(&body) else {
            return Ok(false);
        };
        let Ok(ts) = b.check_timestamps(MAX_POINTS_CHECKED, i64::MIN, i64::MAX) else {
            return Ok(false);
        };
        let coordinator_now = self
            .server_clock
            .map_or_else(|| self.ctx.clock.now_ms(), |c| c.now_ms());
        Ok(ts.last().is_some_and(|&last| last > coordinator_now))
    }
}

/// Most timestamps decoded from a refused batch (far more than a batch holds).
const MAX_POINTS_CHECKED: usize = 1 << 20;

fn warn_skew(skew_ms: i64) {
    let (how, by) = if skew_ms > 0 {
        ("ahead of", skew_ms)
    } else {
        ("behind", -skew_ms)
    };
    tracing::warn!(
        clock_skew_ms = skew_ms,
        "this VM's clock is {how} the coordinator's by {:.1} s; batches dated beyond the coordinator's limit are refused and kept until it takes them: fix the clock (NTP)",
        by as f64 / 1000.0
    );
}

/// Refusals that resending the same bytes cannot cure (a `BadTimestamps` for a batch
/// dated in the coordinator's future excepted, see [`Link::future_dated`]).
fn is_permanent(code: RejectCode) -> bool {
    matches!(
        code,
        RejectCode::BadMessage | RejectCode::BadTimestamps | RejectCode::TooLarge
    )
}

/// Completes once shutdown is requested (or its sender is gone).
async fn until_true(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Completes when an event was queued, or never when detection is off.
async fn event_raised(events: &Option<crate::detect::EventHooks>) {
    match events {
        Some(e) => e.raised.notified().await,
        None => std::future::pending().await,
    }
}

/// The next command update, or never when commands are off.
async fn next_update(
    updates: &mut Option<
        tokio::sync::OwnedMutexGuard<
            tokio::sync::mpsc::Receiver<persona_shared::command::CommandUpdate>,
        >,
    >,
) -> Option<persona_shared::command::CommandUpdate> {
    match updates {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// One batch on its own stream: the frame out, one answer back.
async fn send_batch(
    conn: quinn::Connection,
    seq: u64,
    body: Vec<u8>,
    max: usize,
) -> (u64, Result<CoordMsg, WireError>) {
    let r = async {
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| WireError::Connection(e.into()))?;
        write_frame(&mut send, &body).await?;
        send.finish().map_err(|e| WireError::Write(e.into()))?;
        read_msg(&mut recv, max, "a batch").await
    }
    .await;
    (seq, r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_refusals() {
        assert!(is_permanent(RejectCode::BadTimestamps));
        assert!(is_permanent(RejectCode::TooLarge));
        assert!(!is_permanent(RejectCode::Internal));
        assert!(!is_permanent(RejectCode::Revoked));
    }
}
