//! `persona-loadgen`: N simulated agents in one process against a real coordinator over
//! loopback QUIC, to find out how many VMs one coordinator holds.
//!
//! Each simulated agent has its own enrolled identity (real enrollment, cached in a file
//! so reruns skip it), its own mutual-TLS connection, streams a persona-like shape of 40
//! series at 1 Hz in 10 s batches with its own in-memory outbox (resend everything
//! unacknowledged after a reconnect), and measures ack latency. On its control stream it
//! behaves as `persona-agent` does (see "What a simulated agent does" below). Agents are
//! spread over
//! many loopback source addresses (127.0.x.y), as a fleet would be, so the coordinator's
//! per-address connection limit applies as in production. At the end the tool checks
//! with the coordinator's API that every acknowledged batch is stored exactly once, and
//! reports the coordinator's CPU and RSS from /proc/PID.
//!
//! What a simulated agent does, compared with `persona-agent`:
//! - the same frames on the wire: Hello (with the shipped mirror model's version, as a
//!   fresh agent reports it), batches one stream each, and on the control stream every
//!   pushed command verified (signature against the CA or the pinned command key, agent
//!   id, expiry), answered `delivered` and then with its result; a command-key pin is
//!   pinned in memory and answered `succeeded`, as the agent pins it on disk;
//! - it runs no other command: a resize, pre-load, config update or model update is
//!   answered `failed` ("the load generator runs no commands"), as an agent whose policy
//!   allows nothing answers; a model push is counted, not loaded;
//! - no sampling, no detectors, no mirror inference, no events, no disk outbox (its
//!   outbox is in memory): the values are a synthetic persona-like shape.
//!
//! It is a benchmark tool, not a product: it trusts its own inputs and panics on set-up
//! errors with a message.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyper::Method;
use persona_agent::commands::verify::{Anchor, ca_der_from_pem, verify};
use persona_coordinator::cli::client::Client;
use persona_shared::codec;
use persona_shared::command::{Action, Command, CommandState, CommandUpdate, SignedCommand};
use persona_shared::metrics::{self, MetricDef};
use persona_shared::protocol::{self, AgentMsg, Batch, CoordMsg, EnrollRequest, Hello};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Mutex;

const SERIES: usize = 40;

struct Opts {
    agents: usize,
    ramp: f64,
    seconds: u64,
    source_ips: usize,
    data_dir: PathBuf,
    json: bool,
    batch_s: u64,
}

fn opts() -> Opts {
    let args: Vec<String> = std::env::args().collect();
    let get = |n: &str| {
        args.iter()
            .position(|a| a == n)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "persona-loadgen --data-dir DIR [--agents N] [--ramp PER_S] [--seconds S] [--source-ips K] [--json]\n\
             DIR is the data dir of a running `persona-coordinator serve` (serving.json, admin.token)."
        );
        std::process::exit(0);
    }
    Opts {
        agents: get("--agents").and_then(|v| v.parse().ok()).unwrap_or(100),
        ramp: get("--ramp").and_then(|v| v.parse().ok()).unwrap_or(200.0),
        seconds: get("--seconds").and_then(|v| v.parse().ok()).unwrap_or(60),
        source_ips: get("--source-ips")
            .and_then(|v| v.parse().ok())
            .unwrap_or(64),
        data_dir: PathBuf::from(
            get("--data-dir").expect("--data-dir DIR of a running coordinator"),
        ),
        json: args.iter().any(|a| a == "--json"),
        batch_s: 10,
    }
}

#[derive(Serialize, Deserialize, Clone)]
struct Ident {
    agent_id: String,
    cert_pem: String,
    key_pem: String,
}

#[derive(Serialize, Deserialize)]
struct IdentFile {
    ca_hash: String,
    ca_pem: String,
    idents: Vec<Ident>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn source_ip(i: usize, k: usize) -> IpAddr {
    let n = (i % k.max(1)) as u32 + 2;
    IpAddr::V4(Ipv4Addr::new(127, 0, (n >> 8) as u8, (n & 0xff) as u8))
}

fn endpoint(ip: IpAddr) -> quinn::Endpoint {
    quinn::Endpoint::client(SocketAddr::new(ip, 0)).expect("client endpoint")
}

/// Enrolls `n` identities (concurrently, bounded) and returns them with the CA.
async fn enroll_all(
    n: usize,
    quic: SocketAddr,
    client: &Client,
    k: usize,
    have: Vec<Ident>,
) -> (String, String, Vec<Ident>) {
    let status = client
        .call(Method::GET, "/v1/status", None)
        .await
        .expect("status");
    let ca_hash = status["ca_hash"].as_str().expect("ca_hash").to_owned();
    let mut idents = have;
    let need = n.saturating_sub(idents.len());
    let mut ca_pem = String::new();
    if need > 0 {
        let tok = client
            .call(
                Method::POST,
                "/v1/tokens",
                Some(json!({"ttl_s": 3600, "uses": need})),
            )
            .await
            .expect("token");
        let token = tok["token"].as_str().expect("token").to_owned();
        let pin = persona_agent::tls::parse_ca_hash(&ca_hash).expect("pin");
        let endpoints: Vec<quinn::Endpoint> = (0..k).map(|i| endpoint(source_ip(i, k))).collect();
        let sem = Arc::new(tokio::sync::Semaphore::new(64));
        let mut tasks = Vec::new();
        for i in 0..need {
            let ep = endpoints[i % k].clone();
            let token = token.clone();
            let sem = sem.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = sem.acquire_owned().await.expect("semaphore");
                let key = rcgen::KeyPair::generate().expect("key");
                let (cfg, _) = persona_agent::tls::enroll_client_config(pin).expect("tls");
                for attempt in 0..20 {
                    let r: Result<_, String> = async {
                        let conn = ep
                            .connect_with(cfg.clone(), quic, protocol::SERVER_NAME)
                            .map_err(|e| e.to_string())?
                            .await
                            .map_err(|e| e.to_string())?;
                        let (mut tx, mut rx) = conn.open_bi().await.map_err(|e| e.to_string())?;
                        let req = AgentMsg::Enroll(EnrollRequest {
                            token: token.clone(),
                            public_key: key.public_key_raw().to_vec(),
                            hostname: format!("loadgen-{i}"),
                        });
                        persona_shared::wire::write_msg(&mut tx, &req, 1 << 20)
                            .await
                            .map_err(|e| e.to_string())?;
                        let _ = tx.finish();
                        let ans = persona_shared::wire::read_msg::<CoordMsg, _>(
                            &mut rx,
                            1 << 20,
                            "enroll",
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                        conn.close(0u32.into(), b"enrolled");
                        Ok(ans)
                    }
                    .await;
                    match r {
                        Ok(CoordMsg::Enrolled(e)) => {
                            return (
                                Ident {
                                    agent_id: e.agent_id,
                                    cert_pem: e.cert_pem,
                                    key_pem: key.serialize_pem(),
                                },
                                e.ca_pem,
                            );
                        }
                        Ok(other) => panic!("enrollment refused: {other:?}"),
                        Err(e) if attempt < 19 => {
                            // Refused by the per-address limit during a burst: back off.
                            let _ = e;
                            tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
                        }
                        Err(e) => panic!("enrollment failed: {e}"),
                    }
                }
                unreachable!()
            }));
        }
        for t in tasks {
            let (id, ca) = t.await.expect("enroll task");
            ca_pem = ca;
            idents.push(id);
        }
    }
    (ca_hash, ca_pem, idents)
}

#[derive(Default)]
struct Counters {
    acked: AtomicU64,
    sent: AtomicU64,
    values: AtomicU64,
    reconnects: AtomicU64,
    errors: AtomicU64,
    connected: AtomicU64,
    rejected: AtomicU64,
    /// Command-key pins received, verified and answered `succeeded`.
    pins: AtomicU64,
    /// Other commands received (answered `failed`, see the module comment).
    commands_refused: AtomicU64,
    /// Commands that did not verify.
    commands_bad: AtomicU64,
    /// Model pushes received (none expected: Hello names the shipped model).
    model_pushes: AtomicU64,
    /// `errors` by where they happened: the handshake, Hello/Welcome, a batch exchange.
    errors_handshake: AtomicU64,
    errors_welcome: AtomicU64,
    errors_batch: AtomicU64,
    /// Agents welcomed at least once, and when the latest of them was first welcomed
    /// (ms after the ramp started): how long a fleet takes to get in, e.g. through one
    /// NAT address.
    agents_in: AtomicU64,
    last_first_welcome_ms: AtomicU64,
    ramp_started: std::sync::OnceLock<Instant>,
}

impl Counters {
    /// Counts an error of one kind; the first few of each are printed, to say why.
    fn error(&self, kind: &AtomicU64, what: &str, detail: &dyn std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if kind.fetch_add(1, Ordering::Relaxed) < 3 {
            eprintln!("loadgen: {what}: {detail}");
        }
    }
}

/// What a simulated agent trusts to sign its commands: the CA until a pin, then the
/// pinned key (and the anchor before it, for a repeated pin), as the agent's `Trust`.
struct Trust {
    current: Anchor,
    previous: Option<Anchor>,
}

/// The answer to one pushed command, as the agent's runner gives it.
fn on_command(
    signed: &SignedCommand,
    agent_id: &str,
    trust: &mut Trust,
    c: &Counters,
) -> (String, CommandState, String) {
    let now = now_ms();
    let checked = match verify(&trust.current, signed, agent_id, now) {
        Err(persona_agent::commands::verify::Refusal::BadSignature) => match &trust.previous {
            Some(prev) => verify(prev, signed, agent_id, now).and_then(|cmd| match &cmd.action {
                Action::PinCommandKey { public_key }
                    if trust.current == Anchor::Key(public_key.clone()) =>
                {
                    Ok(cmd)
                }
                _ => Err(persona_agent::commands::verify::Refusal::BadSignature),
            }),
            None => Err(persona_agent::commands::verify::Refusal::BadSignature),
        },
        r => r,
    };
    match checked {
        Ok(cmd) => match &cmd.action {
            Action::PinCommandKey { public_key } => {
                let key = Anchor::Key(public_key.clone());
                if trust.current != key {
                    trust.previous = Some(std::mem::replace(&mut trust.current, key));
                }
                c.pins.fetch_add(1, Ordering::Relaxed);
                (cmd.id, CommandState::Succeeded, "pinned command key".into())
            }
            _ => {
                c.commands_refused.fetch_add(1, Ordering::Relaxed);
                (
                    cmd.id,
                    CommandState::Failed,
                    "the load generator runs no commands".into(),
                )
            }
        },
        Err(refusal) => {
            c.commands_bad.fetch_add(1, Ordering::Relaxed);
            let id = Command::decode(&signed.body)
                .map(|c| c.id)
                .unwrap_or_default();
            (id, CommandState::Failed, format!("refused: {refusal}"))
        }
    }
}

/// Reads the control stream until it ends, answering commands as the agent does:
/// `delivered`, then the result, each a `CommandUpdate` on the same stream.
async fn control_loop(
    mut tx: quinn::SendStream,
    mut rx: quinn::RecvStream,
    agent_id: String,
    trust: Arc<std::sync::Mutex<Trust>>,
    c: Arc<Counters>,
) {
    let update = |id: &str, state, message: Option<String>| {
        AgentMsg::CommandUpdate(CommandUpdate {
            id: id.to_owned(),
            state,
            at_ms: now_ms(),
            step: None,
            bytes: None,
            percent: None,
            message,
        })
    };
    while let Ok(msg) =
        persona_shared::wire::read_msg::<CoordMsg, _>(&mut rx, 1 << 20, "control").await
    {
        match msg {
            CoordMsg::Command(signed) => {
                let (id, state, message) = {
                    let mut t = trust.lock().expect("trust");
                    on_command(&signed, &agent_id, &mut t, &c)
                };
                for m in [
                    update(&id, CommandState::Delivered, None),
                    update(&id, state, Some(message)),
                ] {
                    if persona_shared::wire::write_msg(&mut tx, &m, 1 << 20)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            CoordMsg::Model(_) => {
                c.model_pushes.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// A small persona-like generator: per-agent levels, a daily wave, noise and bursts.
struct Shape {
    rng: u64,
    base: [f64; SERIES],
    amp: [f64; SERIES],
    last: [f64; SERIES],
}

impl Shape {
    fn new(seed: u64) -> Self {
        let mut s = Shape {
            rng: seed | 1,
            base: [0.0; SERIES],
            amp: [0.0; SERIES],
            last: [0.0; SERIES],
        };
        let persona = seed % 10;
        for i in 0..SERIES {
            let r = s.next();
            s.base[i] = (1.0 + persona as f64) * (0.5 + r) * 10f64.powi((i % 5) as i32);
            s.amp[i] = s.base[i] * 0.3;
        }
        s
    }
    fn next(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }
    fn value(&mut self, i: usize, t_ms: i64, def: &MetricDef) -> f64 {
        let day = (t_ms as f64 / 86_400_000.0) * std::f64::consts::TAU;
        let burst = if self.next() < 0.02 {
            self.amp[i] * 3.0
        } else {
            0.0
        };
        let v = self.base[i]
            + self.amp[i] * day.sin()
            + burst
            + (self.next() - 0.5) * self.amp[i] * 0.1;
        let v = if def.unit == "ratio" {
            (v / (self.base[i] * 5.0)).clamp(0.0, 1.0)
        } else {
            v.max(0.0)
        };
        self.last[i] = v;
        v
    }
}

fn series_defs() -> Vec<&'static MetricDef> {
    metrics::HOST
        .iter()
        .enumerate()
        .filter(|(i, _)| metrics::derived_from_ratio(*i).is_none())
        .map(|(_, d)| d)
        .chain(metrics::DISK.iter())
        .take(SERIES)
        .collect()
}

fn build_batch(
    seq: u64,
    start_ms: i64,
    points: usize,
    shape: &mut Shape,
    defs: &[&MetricDef],
) -> Vec<u8> {
    let ts: Vec<i64> = (0..points as i64).map(|k| start_ms + k * 1000).collect();
    let mut b = Batch {
        seq,
        ..Batch::default()
    };
    codec::encode_timestamps(&ts, &mut b.timestamps);
    let mut col = Vec::with_capacity(points);
    for (i, d) in defs.iter().enumerate() {
        col.clear();
        col.extend(ts.iter().map(|t| shape.value(i, *t, d)));
        let start = b.data.len();
        codec::encode_values(&col, d.scale, &mut b.data);
        persona_shared::varint::put(&mut b.index, u64::from(d.id));
        persona_shared::varint::put(&mut b.index, 0);
        persona_shared::varint::put(&mut b.index, (b.data.len() - start) as u64);
    }
    let mut frame = Vec::with_capacity(b.data.len() + 64);
    protocol::encode_batch_frame(&b, &mut frame, 1 << 20).expect("frame");
    frame
}

struct AgentRun {
    last_seq: u64,
    acked: u64,
}

/// Aborts the task when dropped: a control loop lives as long as its connection's turn.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_agent(
    i: usize,
    ident: Ident,
    ca_pem: Arc<String>,
    ep: quinn::Endpoint,
    quic: SocketAddr,
    start_at: Instant,
    stop: Arc<AtomicBool>,
    c: Arc<Counters>,
    lat: Arc<Mutex<Vec<u32>>>,
    batch_s: u64,
    model_version: Arc<String>,
) -> AgentRun {
    tokio::time::sleep_until(start_at.into()).await;
    let p = Path::new("loadgen");
    let cfg = persona_agent::tls::mtls_from_pem(
        (ident.cert_pem.as_bytes(), p),
        (ident.key_pem.as_bytes(), p),
        (ca_pem.as_bytes(), p),
    )
    .expect("mtls config");
    let ca_der = ca_der_from_pem(ca_pem.as_bytes()).expect("CA certificate");
    let trust = Arc::new(std::sync::Mutex::new(Trust {
        current: Anchor::Ca(ca_der),
        previous: None,
    }));
    let defs = series_defs();
    let mut shape = Shape::new(i as u64 * 7919 + 17);
    let mut outbox: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
    let mut seq = 0u64;
    let mut acked = 0u64;
    let batch_ms = (batch_s * 1000) as i64;
    // Spread the fleet over the batch window, as real agents started at random times are.
    let phase = (i as i64 * 7919) % batch_ms;
    let mut next_due = ((now_ms() - phase) / batch_ms + 1) * batch_ms + phase;
    let mut backoff = Duration::from_millis(500);
    let mut first = true;
    let mut welcomed = false;
    'conn: while !stop.load(Ordering::Relaxed) || !outbox.is_empty() {
        if !first {
            c.reconnects.fetch_add(1, Ordering::Relaxed);
            let jitter = (shape.next() * backoff.as_millis() as f64) as u64;
            tokio::time::sleep(Duration::from_millis(jitter)).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
        first = false;
        if stop.load(Ordering::Relaxed) && start_at.elapsed() > Duration::from_secs(3600) {
            break;
        }
        let conn = match ep.connect_with(cfg.clone(), quic, protocol::SERVER_NAME) {
            Ok(c) => c.await,
            Err(_) => continue,
        };
        let conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                c.error(&c.errors_handshake, "handshake", &e);
                continue;
            }
        };
        let Ok((mut ctl_tx, mut ctl_rx)) = conn.open_bi().await else {
            continue;
        };
        let hello = AgentMsg::Hello(Hello {
            protocol: protocol::PROTOCOL_VERSION,
            agent_version: "loadgen".into(),
            facts: Default::default(),
            purpose: None,
            last_seq: seq,
            model_version: Some(model_version.to_string()),
        });
        if persona_shared::wire::write_msg(&mut ctl_tx, &hello, 1 << 20)
            .await
            .is_err()
        {
            continue;
        }
        match persona_shared::wire::read_msg::<CoordMsg, _>(&mut ctl_rx, 1 << 20, "welcome").await {
            Ok(CoordMsg::Welcome(w)) => seq = seq.max(w.committed_seq),
            other => {
                c.error(&c.errors_welcome, "welcome", &format!("{other:?}"));
                continue;
            }
        }
        c.connected.fetch_add(1, Ordering::Relaxed);
        if !welcomed {
            welcomed = true;
            c.agents_in.fetch_add(1, Ordering::Relaxed);
            if let Some(t0) = c.ramp_started.get() {
                let ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
                c.last_first_welcome_ms.fetch_max(ms, Ordering::Relaxed);
            }
        }
        backoff = Duration::from_millis(500);
        // Ends with the connection (its streams fail), or is aborted below.
        let control = tokio::spawn(control_loop(
            ctl_tx,
            ctl_rx,
            ident.agent_id.clone(),
            trust.clone(),
            c.clone(),
        ));
        let _control = AbortOnDrop(control);
        loop {
            // Deliver everything waiting, oldest first, one stream per batch.
            while let Some((s, frame)) = outbox.front() {
                let t = Instant::now();
                c.sent.fetch_add(1, Ordering::Relaxed);
                let r: Result<CoordMsg, String> = async {
                    let (mut tx, mut rx) = conn.open_bi().await.map_err(|e| e.to_string())?;
                    tx.write_all(frame).await.map_err(|e| e.to_string())?;
                    let _ = tx.finish();
                    persona_shared::wire::read_msg::<CoordMsg, _>(&mut rx, 1 << 20, "ack")
                        .await
                        .map_err(|e| e.to_string())
                }
                .await;
                match r {
                    Ok(CoordMsg::Ack { seq: a, .. }) if a == *s => {
                        let us = t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                        lat.lock().await.push(us);
                        c.acked.fetch_add(1, Ordering::Relaxed);
                        c.values.fetch_add((SERIES * 10) as u64, Ordering::Relaxed);
                        acked += 1;
                        outbox.pop_front();
                    }
                    Ok(CoordMsg::Reject(_)) => {
                        c.rejected.fetch_add(1, Ordering::Relaxed);
                        outbox.pop_front();
                    }
                    other => {
                        c.error(&c.errors_batch, "batch", &format!("{other:?}"));
                        c.connected.fetch_sub(1, Ordering::Relaxed);
                        continue 'conn;
                    }
                }
            }
            if stop.load(Ordering::Relaxed) {
                c.connected.fetch_sub(1, Ordering::Relaxed);
                conn.close(0u32.into(), b"done");
                break 'conn;
            }
            let wait = (next_due - now_ms()).max(0) as u64;
            tokio::time::sleep(Duration::from_millis(wait)).await;
            if stop.load(Ordering::Relaxed) {
                continue;
            }
            seq += 1;
            let start = next_due - batch_ms + 1000;
            outbox.push_back((
                seq,
                build_batch(seq, start, batch_s as usize, &mut shape, &defs),
            ));
            next_due += batch_ms;
        }
    }
    AgentRun {
        last_seq: seq,
        acked,
    }
}

fn proc_stat(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|x| x.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    (ticks / 100.0, hwm)
}

fn pct(v: &mut [u32], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    f64::from(v[i]) / 1000.0
}

fn main() {
    let o = opts();
    let serving: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(o.data_dir.join("serving.json")).expect("serving.json"),
    )
    .expect("json");
    let quic: SocketAddr = serving["quic"]
        .as_str()
        .expect("quic")
        .parse()
        .expect("addr");
    let http: SocketAddr = serving["http"]
        .as_str()
        .expect("http")
        .parse()
        .expect("addr");
    let pid = serving["pid"].as_u64().expect("pid") as u32;
    let token = std::fs::read_to_string(o.data_dir.join("admin.token")).expect("admin.token");
    let client = Client::new(http, token.trim());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let cache = o.data_dir.join("loadgen-identities.mpk");
        let cached: Option<IdentFile> = std::fs::read(&cache).ok().and_then(|b| rmp_serde::from_slice(&b).ok());
        let t_enroll = Instant::now();
        let (ca_hash, mut ca_pem, idents) = enroll_all(o.agents, quic, &client, o.source_ips, cached.as_ref().map(|c| c.idents.clone()).unwrap_or_default()).await;
        if ca_pem.is_empty() {
            ca_pem = cached.as_ref().map(|c| c.ca_pem.clone()).unwrap_or_default();
        }
        let enroll_s = t_enroll.elapsed().as_secs_f64();
        let file = IdentFile { ca_hash, ca_pem: ca_pem.clone(), idents: idents.clone() };
        std::fs::write(&cache, rmp_serde::to_vec(&file).expect("encode")).expect("write cache");
        eprintln!("{} identities ready ({enroll_s:.1} s enrolling)", idents.len());

        let endpoints: Vec<quinn::Endpoint> = (0..o.source_ips).map(|i| endpoint(source_ip(i, o.source_ips))).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let c = Arc::new(Counters::default());
        let lat = Arc::new(Mutex::new(Vec::<u32>::with_capacity(o.agents * (o.seconds as usize / 10 + 2))));
        let ca = Arc::new(ca_pem);
        // What a freshly installed agent reports: the mirror model built into it.
        let model_version = Arc::new(persona_agent::model_store::ModelHandle::open(None).expect("shipped mirror model").version());
        let t0 = Instant::now();
        let _ = c.ramp_started.set(t0);
        let (cpu0, _) = proc_stat(pid);
        let (self0, _) = proc_stat(std::process::id());
        let mut tasks = Vec::new();
        for (i, ident) in idents.into_iter().take(o.agents).enumerate() {
            let start_at = t0 + Duration::from_secs_f64(i as f64 / o.ramp);
            tasks.push(tokio::spawn(run_agent(
                i, ident, ca.clone(), endpoints[i % o.source_ips].clone(), quic, start_at, stop.clone(), c.clone(), lat.clone(), o.batch_s, model_version.clone(),
            )));
        }
        let ramp_s = o.agents as f64 / o.ramp;
        let total = Duration::from_secs_f64(ramp_s) + Duration::from_secs(o.seconds);
        // Steady-state window: after the ramp plus one batch interval.
        let steady_from = Duration::from_secs_f64(ramp_s) + Duration::from_secs(o.batch_s);
        let mut steady: Option<(Instant, u64, usize, f64)> = None;
        let mut peak_rss = 0;
        while t0.elapsed() < total {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let (cpu, rss) = proc_stat(pid);
            peak_rss = peak_rss.max(rss);
            if steady.is_none() && t0.elapsed() >= steady_from {
                let n = lat.lock().await.len();
                steady = Some((Instant::now(), c.values.load(Ordering::Relaxed), n, cpu));
            }
            eprintln!(
                "t={:>4.0}s agents_in={} connected={} acked={} values={} reconnects={} errors={} coordinator cpu={:.1}s rss={} MiB",
                t0.elapsed().as_secs_f64(),
                c.agents_in.load(Ordering::Relaxed),
                c.connected.load(Ordering::Relaxed),
                c.acked.load(Ordering::Relaxed),
                c.values.load(Ordering::Relaxed),
                c.reconnects.load(Ordering::Relaxed),
                c.errors.load(Ordering::Relaxed),
                cpu - cpu0,
                rss >> 20
            );
        }
        let (cpu_end, rss_end) = proc_stat(pid);
        peak_rss = peak_rss.max(rss_end);
        let values_end = c.values.load(Ordering::Relaxed);
        let lat_n_end = lat.lock().await.len();
        let steady_end = Instant::now();
        stop.store(true, Ordering::Relaxed);
        // One slot per agent, so a task that did not finish cannot shift the others'
        // figures onto the wrong identity; such an agent counts as unfinished.
        let mut runs: Vec<Option<AgentRun>> = Vec::with_capacity(tasks.len());
        for t in tasks {
            runs.push(tokio::time::timeout(Duration::from_secs(120), t).await.ok().and_then(Result::ok));
        }
        let unfinished = runs.iter().filter(|r| r.is_none()).count();
        let (self_end, self_rss) = proc_stat(std::process::id());
        // Every acknowledged batch must be stored exactly once.
        let list = client.call(Method::GET, "/v1/agents", None).await.expect("agents");
        let stored: HashMap<String, (i64, i64)> = list["agents"]
            .as_array()
            .expect("agents")
            .iter()
            .map(|a| (a["id"].as_str().unwrap_or("").to_owned(), (a["batches"].as_i64().unwrap_or(0), a["committed_seq"].as_i64().unwrap_or(0))))
            .collect();
        let ids: Vec<String> = file.idents.iter().take(o.agents).map(|i| i.agent_id.clone()).collect();
        let mut lost = 0i64;
        let mut extra = 0i64;
        let mut acked_total = 0u64;
        for (id, r) in ids.iter().zip(&runs) {
            let Some(r) = r else { continue };
            acked_total += r.acked;
            let (batches, committed) = stored.get(id).copied().unwrap_or((0, 0));
            // Cached identities carry batches from earlier runs; compare this run's seqs.
            let expected = r.last_seq as i64;
            lost += (expected - batches).max(0);
            extra += (batches - committed).max(0) + (committed - expected).max(0);
        }
        let (st_t, st_values, st_n, st_cpu) = steady.unwrap_or((t0, 0, 0, cpu0));
        let window = steady_end.duration_since(st_t).as_secs_f64().max(1e-9);
        let mut steady_lat: Vec<u32> = lat.lock().await[st_n..lat_n_end].to_vec();
        let mut all_lat = lat.lock().await.clone();
        let agents_in = c.agents_in.load(Ordering::Relaxed);
        let all_in_s = (agents_in == o.agents as u64)
            .then(|| c.last_first_welcome_ms.load(Ordering::Relaxed) as f64 / 1000.0);
        let doc = json!({
            "agents": o.agents,
            "series_per_agent": SERIES,
            "ramp_per_s": o.ramp,
            "source_addresses": o.source_ips,
            "steady_window_s": window,
            "accepted_values_per_s": (values_end - st_values) as f64 / window,
            "ack_latency_ms": {"p50": pct(&mut steady_lat, 0.5), "p99": pct(&mut steady_lat, 0.99), "max": pct(&mut steady_lat, 1.0),
                               "all_p99": pct(&mut all_lat, 0.99)},
            "batches_acked": acked_total,
            "reconnects": c.reconnects.load(Ordering::Relaxed),
            "agents_in": agents_in,
            // When the last agent was first welcomed, counted from the start of the ramp
            // and from its end; null if some agent never got in.
            "all_in_s": all_in_s,
            "all_in_after_ramp_s": all_in_s.map(|s| s - ramp_s),
            "errors": c.errors.load(Ordering::Relaxed),
            "errors_by_kind": {"handshake": c.errors_handshake.load(Ordering::Relaxed), "welcome": c.errors_welcome.load(Ordering::Relaxed),
                               "batch": c.errors_batch.load(Ordering::Relaxed)},
            "agents_unfinished": unfinished,
            "rejected": c.rejected.load(Ordering::Relaxed),
            "control": {"key_pins_acked": c.pins.load(Ordering::Relaxed), "commands_refused": c.commands_refused.load(Ordering::Relaxed),
                        "commands_bad": c.commands_bad.load(Ordering::Relaxed), "model_pushes": c.model_pushes.load(Ordering::Relaxed)},
            "lost_batches": lost,
            "duplicated_or_unexpected_batches": extra,
            "coordinator": {"pid": pid, "cpu_pct_of_one_core": (cpu_end - st_cpu) / window * 100.0, "peak_rss_mib": peak_rss as f64 / 1048576.0},
            "loadgen": {"cpu_pct_of_one_core": (self_end - self0) / t0.elapsed().as_secs_f64() * 100.0, "peak_rss_mib": self_rss as f64 / 1048576.0},
            "enroll_seconds": enroll_s,
        });
        if o.json {
            println!("{doc}");
        } else {
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        }
    });
}
