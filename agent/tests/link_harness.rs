//! UNIT-LEVEL HARNESS, not the project's end-to-end test (that lives in the `tests/`
//! crate and runs the real coordinator binary). It stands up a minimal in-process QUIC
//! server that speaks the agent's side of the protocol just far enough (enroll, Hello /
//! Welcome, Ack) to check the agent's enroll, link, outbox and schedule together over a
//! real QUIC connection with real mutual TLS, including a coordinator restart.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use persona_agent::config::AgentConfig;
use persona_agent::enroll::{EnrollError, EnrollOptions, enroll};
use persona_agent::identity::{Identity, IdentityError};
use persona_shared::protocol::{
    ALPN, AgentMsg, CoordMsg, DEFAULT_MAX_FRAME, EnrollResponse, Reject, RejectCode, SERVER_NAME,
    Welcome, decode_body, encode_frame, frame_len,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    PublicKeyData, SignatureAlgorithm,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const TOKEN: &str = "good-token";

/// The agent's raw P-256 point as rcgen public key data.
struct RawP256(Vec<u8>);
impl PublicKeyData for RawP256 {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

struct Pki {
    ca_der: CertificateDer<'static>,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    server_der: CertificateDer<'static>,
    server_key: Vec<u8>,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "harness CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec![SERVER_NAME.to_owned()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    Pki {
        ca_der: ca.der().clone(),
        ca_pem: ca.pem(),
        issuer,
        server_der: server.der().clone(),
        server_key: server_key.serialize_der(),
    }
}

#[derive(Default)]
struct State {
    /// seq -> timestamps, as a coordinator would have committed them.
    batches: BTreeMap<u64, Vec<i64>>,
    duplicates: u64,
    hellos: u64,
    next_agent: u64,
    /// Like the coordinator's `max_future_ms`: refuse batches dated further ahead of
    /// this server's clock (None: accept any time).
    max_future_ms: Option<i64>,
    /// Batches refused as future-dated.
    future_refused: u64,
}

struct Server {
    endpoint: quinn::Endpoint,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(pki: &Arc<Pki>, state: &Arc<Mutex<State>>, addr: SocketAddr) -> Server {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der.clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .unwrap();
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![pki.server_der.clone(), pki.ca_der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server_key.clone())),
            )
            .unwrap();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
        let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        // The port of a just-closed endpoint may take a moment to free.
        let mut endpoint = None;
        for _ in 0..50 {
            match quinn::Endpoint::server(config.clone(), addr) {
                Ok(e) => {
                    endpoint = Some(e);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let endpoint = endpoint.expect("bind");
        let (ep, pki, state) = (endpoint.clone(), pki.clone(), state.clone());
        let task = tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let (pki, state) = (pki.clone(), state.clone());
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    let authenticated = conn.peer_identity().is_some();
                    while let Ok((send, recv)) = conn.accept_bi().await {
                        tokio::spawn(stream(
                            send,
                            recv,
                            authenticated,
                            pki.clone(),
                            state.clone(),
                        ));
                    }
                });
            }
        });
        Server { endpoint, task }
    }

    fn addr(&self) -> SocketAddr {
        self.endpoint.local_addr().unwrap()
    }

    async fn stop(self) {
        self.endpoint.close(0u32.into(), b"restart");
        self.task.abort();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

async fn read(recv: &mut quinn::RecvStream) -> Option<AgentMsg> {
    let mut h = [0u8; 4];
    recv.read_exact(&mut h).await.ok()?;
    let len = frame_len(h, DEFAULT_MAX_FRAME).ok()?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.ok()?;
    decode_body(&body).ok()
}

async fn write(send: &mut quinn::SendStream, m: &CoordMsg) {
    let mut buf = Vec::new();
    encode_frame(m, &mut buf, DEFAULT_MAX_FRAME).unwrap();
    let _ = send.write_all(&buf).await;
}

async fn stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    authed: bool,
    pki: Arc<Pki>,
    state: Arc<Mutex<State>>,
) {
    let Some(first) = read(&mut recv).await else {
        return;
    };
    match first {
        AgentMsg::Enroll(req) => {
            if req.token != TOKEN {
                let r = Reject {
                    code: RejectCode::BadToken,
                    message: "expired".into(),
                };
                write(&mut send, &CoordMsg::Reject(r)).await;
            } else {
                let id = {
                    let mut s = state.lock().unwrap();
                    s.next_agent += 1;
                    format!("agent-{}", s.next_agent)
                };
                let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
                params
                    .distinguished_name
                    .push(DnType::CommonName, id.clone());
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                let cert = params
                    .signed_by(&RawP256(req.public_key), &pki.issuer)
                    .unwrap();
                let resp = EnrollResponse {
                    agent_id: id,
                    cert_pem: cert.pem(),
                    ca_pem: pki.ca_pem.clone(),
                };
                write(&mut send, &CoordMsg::Enrolled(resp)).await;
            }
            let _ = send.finish();
            let _ = send.stopped().await;
        }
        AgentMsg::Hello(h) => {
            if !authed {
                let r = Reject {
                    code: RejectCode::NotEnrolled,
                    message: "no certificate".into(),
                };
                write(&mut send, &CoordMsg::Reject(r)).await;
                return;
            }
            let committed = {
                let mut s = state.lock().unwrap();
                s.hellos += 1;
                s.batches.keys().next_back().copied().unwrap_or(0)
            };
            assert!(h.last_seq >= committed, "agent forgot sequence numbers");
            let w = Welcome {
                agent_id: "agent-1".into(),
                sample_interval_ms: 0,
                batch_interval_s: 0,
                committed_seq: committed,
                server_time_ms: persona_shared::clock::now_ms(),
            };
            write(&mut send, &CoordMsg::Welcome(w)).await;
            // Keep the control stream open; Facts may follow.
            while read(&mut recv).await.is_some() {}
        }
        AgentMsg::Batch(b) => {
            let max_future = state.lock().unwrap().max_future_ms;
            let latest = max_future.map_or(i64::MAX, |m| persona_shared::clock::now_ms() + m);
            let ts = match b.check_timestamps(100_000, 0, latest) {
                Ok(ts) => ts,
                Err(e) => {
                    assert!(max_future.is_some(), "well-formed batch: {e}");
                    state.lock().unwrap().future_refused += 1;
                    let r = Reject {
                        code: RejectCode::BadTimestamps,
                        message: e.to_string(),
                    };
                    write(&mut send, &CoordMsg::Reject(r)).await;
                    let _ = send.finish();
                    let _ = send.stopped().await;
                    return;
                }
            };
            let dup = {
                let mut s = state.lock().unwrap();
                let dup = s.batches.insert(b.seq, ts).is_some();
                s.duplicates += u64::from(dup);
                dup
            };
            write(
                &mut send,
                &CoordMsg::Ack {
                    seq: b.seq,
                    duplicate: dup,
                },
            )
            .await;
            let _ = send.finish();
            let _ = send.stopped().await;
        }
        AgentMsg::Facts(_)
        | AgentMsg::Event(_)
        | AgentMsg::ModelStatus(_)
        | AgentMsg::CommandUpdate(_) => {}
    }
}

async fn wait_for(state: &Arc<Mutex<State>>, what: &str, mut cond: impl FnMut(&State) -> bool) {
    for _ in 0..200 {
        if cond(&state.lock().unwrap()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_stream_survive_a_coordinator_restart_and_drain() {
    persona_shared::logging::init();
    let pki = Arc::new(pki());
    let state = Arc::new(Mutex::new(State::default()));
    let server = Server::start(&pki, &state, "127.0.0.1:0".parse().unwrap()).await;
    let addr = server.addr();
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("agent");
    let pin = persona_agent::tls::ca_hash(&pki.ca_der);
    let opts = EnrollOptions {
        coordinator: addr.to_string(),
        token: TOKEN.into(),
        ca_hash: pin.clone(),
        state_dir: state_dir.clone(),
    };

    // Wrong pin: refused before the token is ever sent.
    let other = persona_agent::tls::ca_hash(b"another CA");
    let e = enroll(EnrollOptions {
        ca_hash: other,
        ..opts.clone()
    })
    .await
    .unwrap_err();
    assert!(matches!(e, EnrollError::CaMismatch { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("coordinator CA does not match --ca-hash"),
        "{e}"
    );
    // Wrong token: the coordinator's reason is shown.
    let e = enroll(EnrollOptions {
        token: "nope".into(),
        ..opts.clone()
    })
    .await
    .unwrap_err();
    assert_eq!(e.to_string(), "token rejected: expired");
    assert!(matches!(
        Identity::load(&state_dir),
        Err(IdentityError::NotEnrolled { .. })
    ));

    let id = enroll(opts).await.unwrap();
    assert_eq!(id.agent_id, "agent-1");
    assert_eq!(Identity::load(&state_dir).unwrap(), id);
    for f in ["key.pem", "cert.pem", "ca.pem", "identity.toml"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state_dir.join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }

    let config = AgentConfig {
        state_dir: state_dir.clone(),
        sample_interval_ms: 200,
        batch_interval_s: 1,
        ..AgentConfig::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(persona_agent::daemon::run_report(config, async {
        let _ = stop_rx.await;
    }));

    wait_for(&state, "three batches", |s| s.batches.len() >= 3).await;
    server.stop().await;
    let before_restart = state.lock().unwrap().batches.len();
    // The agent keeps sampling into its outbox while the coordinator is away.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let server = Server::start(&pki, &state, addr).await;
    wait_for(&state, "the backlog after the restart", |s| {
        s.hellos >= 2 && s.batches.len() >= before_restart + 4
    })
    .await;
    let _ = stop_tx.send(());
    let report = agent.await.unwrap().unwrap();
    server.stop().await;

    let s = state.lock().unwrap();
    assert_eq!(
        report.outbox.pending_batches, 0,
        "drained on shutdown: {report:?}"
    );
    assert!(
        report.link.reconnects >= 1 && report.link.connections >= 2,
        "{report:?}"
    );
    assert!(report.link.udp_tx_bytes > 0);
    // Every tick present exactly once, aligned, in sequence order.
    let all: Vec<i64> = s.batches.values().flatten().copied().collect();
    assert!(
        all.len() as u64 == report.samples,
        "{} stored of {} sampled",
        all.len(),
        report.samples
    );
    let mut gaps = 0;
    for w in all.windows(2) {
        assert!(w[1] > w[0], "timestamps out of order or duplicated: {w:?}");
        assert_eq!((w[1] - w[0]) % 200, 0);
        gaps += (w[1] - w[0]) / 200 - 1;
    }
    assert!(
        all.iter().all(|t| t % 200 == 0),
        "ticks on the wall-clock grid"
    );
    assert_eq!(
        gaps as u64, report.skipped_ticks,
        "every gap is a counted skip"
    );
    // Every full batch covers exactly one 1-second window.
    for ts in s.batches.values() {
        assert!(ts.len() <= 5);
        assert_eq!(ts[0] / 1000, ts[ts.len() - 1] / 1000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_of_a_run_without_coordinator_is_delivered_by_the_next_run() {
    let pki = Arc::new(pki());
    let state = Arc::new(Mutex::new(State::default()));
    let server = Server::start(&pki, &state, "127.0.0.1:0".parse().unwrap()).await;
    let addr = server.addr();
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("agent");
    let opts = EnrollOptions {
        coordinator: addr.to_string(),
        token: TOKEN.into(),
        ca_hash: persona_agent::tls::ca_hash(&pki.ca_der),
        state_dir: state_dir.clone(),
    };
    enroll(opts).await.unwrap();
    server.stop().await;

    let config = AgentConfig {
        state_dir: state_dir.clone(),
        sample_interval_ms: 200,
        batch_interval_s: 1,
        ..AgentConfig::default()
    };
    // First run: the coordinator is down the whole time.
    let started = std::time::Instant::now();
    let first = persona_agent::daemon::run_report(
        config.clone(),
        tokio::time::sleep(Duration::from_millis(2300)),
    )
    .await
    .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown must not wait for a dead coordinator"
    );
    assert_eq!(first.link.connections, 0);
    assert!(first.samples >= 8, "{first:?}");
    assert!(first.outbox.pending_batches >= 2, "{first:?}");
    {
        let ob = persona_agent::outbox::Outbox::open(
            &persona_agent::daemon::outbox_path(&state_dir),
            1 << 20,
        )
        .unwrap();
        assert_eq!(
            ob.pending(100).unwrap().len() as u64,
            first.outbox.pending_batches
        );
    }

    // Second run with the coordinator back: the first run's batches arrive too.
    let server = Server::start(&pki, &state, addr).await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(persona_agent::daemon::run_report(config, async {
        let _ = stop_rx.await;
    }));
    let want = first.outbox.pending_batches as usize + 2;
    wait_for(&state, "both runs' batches", |s| s.batches.len() >= want).await;
    let _ = stop_tx.send(());
    let second = agent.await.unwrap().unwrap();
    server.stop().await;
    assert_eq!(second.outbox.pending_batches, 0);
    let s = state.lock().unwrap();
    assert_eq!(s.duplicates, 0);
    let all: Vec<i64> = s.batches.values().flatten().copied().collect();
    assert_eq!(all.len() as u64, first.samples + second.samples);
    assert!(
        all.windows(2).all(|w| w[1] > w[0]),
        "seq order is time order, no tick twice"
    );
}

fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Waits for a condition on something other than the server's state, bounded.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..300 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn enrolled_agent(
    pki: &Arc<Pki>,
    state: &Arc<Mutex<State>>,
    state_dir: &std::path::Path,
) -> Server {
    let server = Server::start(pki, state, "127.0.0.1:0".parse().unwrap()).await;
    enroll(EnrollOptions {
        coordinator: server.addr().to_string(),
        token: TOKEN.into(),
        ca_hash: persona_agent::tls::ca_hash(&pki.ca_der),
        state_dir: state_dir.to_owned(),
    })
    .await
    .unwrap();
    server
}

/// Issue 18, item 8: an agent whose clock is ahead of the coordinator's by more than
/// the coordinator's limit has its batches refused as `BadTimestamps`. It reports the
/// skew, keeps the batches (none deleted, none counted as rejected) and delivers every
/// one of them once its clock is fixed. The scripted coordinator's limit is 2 s and the
/// agent's clock 8 s ahead, the 10 min and more, scaled down. Also checks that
/// the state dir is made 0700 and the databases are 0600.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_ahead_keeps_its_batches_and_delivers_them_once_fixed() {
    use std::sync::atomic::Ordering::Relaxed;
    let pki = Arc::new(pki());
    let state = Arc::new(Mutex::new(State {
        max_future_ms: Some(2_000),
        ..State::default()
    }));
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("agent");
    let server = enrolled_agent(&pki, &state, &state_dir).await;
    {
        use std::os::unix::fs::PermissionsExt;
        // As a hand-made or older state dir would be.
        std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let config = AgentConfig {
        state_dir: state_dir.clone(),
        sample_interval_ms: 200,
        batch_interval_s: 1,
        ..AgentConfig::default()
    };
    let clock = Arc::new(persona_shared::clock::OffsetClock::new(8_000));
    let hooks = persona_agent::daemon::RunHooks {
        clock: clock.clone(),
        ..Default::default()
    };
    let health = hooks.health.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(persona_agent::daemon::run_with(config, hooks, async {
        let _ = stop_rx.await;
    }));

    wait_for(&state, "three future-dated refusals", |s| {
        s.future_refused >= 3
    })
    .await;
    let metrics = health.render(None);
    let skew = health.clock_skew_ms().expect("skew measured at Welcome");
    assert!((7_000..=9_000).contains(&skew), "skew {skew} ms\n{metrics}");
    assert!(
        metrics.contains("persona_agent_clock_skew_seconds 7.")
            || metrics.contains("persona_agent_clock_skew_seconds 8"),
        "{metrics}"
    );
    assert!(health.batches_held_future.load(Relaxed) >= 1, "{metrics}");
    assert_eq!(health.batches_rejected.load(Relaxed), 0, "nothing deleted");
    assert!(state.lock().unwrap().batches.is_empty());

    // NTP steps the clock back: the skew goes, and every batch arrives, the held ones
    // as soon as the coordinator's window admits them.
    clock.set_offset_ms(0);
    wait_until("the skew to go", || {
        health.clock_skew_ms().is_some_and(|s| s.abs() < 1_000)
    })
    .await;
    wait_until("the held batches to be delivered", || {
        health.batches_held_future.load(Relaxed) == 0 && state.lock().unwrap().batches.len() >= 6
    })
    .await;
    // While it runs: the state dir is private again, the databases and their WAL files
    // are 0600.
    assert_eq!(mode(&state_dir), 0o700, "state dir");
    for f in [
        "outbox.db",
        "outbox.db-wal",
        "outbox.db-shm",
        "commands.db",
        "commands.db-wal",
        "commands.db-shm",
    ] {
        assert_eq!(mode(&state_dir.join(f)), 0o600, "{f}");
    }
    let _ = stop_tx.send(());
    let report = agent.await.unwrap().unwrap();
    server.stop().await;

    assert_eq!(report.outbox.rejected_batches, 0, "{report:?}");
    assert_eq!(report.outbox.dropped_batches, 0, "{report:?}");
    assert_eq!(report.outbox.pending_batches, 0, "{report:?}");
    assert!(report.link.batches_future >= 3, "{report:?}");
    let s = state.lock().unwrap();
    let seqs: Vec<u64> = s.batches.keys().copied().collect();
    let want: Vec<u64> = (1..=report.batches_sealed).collect();
    assert_eq!(seqs, want, "every sealed batch delivered, none lost");
    let points: usize = s.batches.values().map(Vec::len).sum();
    assert_eq!(points as u64, report.samples);
}

/// Issue 18, item 17: `persona-agent enroll` takes the join token from a private file
/// or from stdin, so it never shows in `ps`, and refuses a token file open to others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_cli_reads_the_token_from_a_private_file_or_stdin() {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let pki = Arc::new(pki());
    let state = Arc::new(Mutex::new(State::default()));
    let server = Server::start(&pki, &state, "127.0.0.1:0".parse().unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    let pin = persona_agent::tls::ca_hash(&pki.ca_der);
    let token_file = dir.path().join("join-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = |args: Vec<String>, stdin: Option<String>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_persona-agent"));
        cmd.arg("enroll").args(args);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        input
            .write_all(stdin.unwrap_or_default().as_bytes())
            .unwrap();
        drop(input);
        child.wait_with_output().unwrap()
    };
    let common = |state_dir: &str| {
        vec![
            "--coordinator".to_owned(),
            server.addr().to_string(),
            "--ca-hash".to_owned(),
            pin.clone(),
            "--state-dir".to_owned(),
            dir.path().join(state_dir).display().to_string(),
        ]
    };
    let file_args = |state_dir: &str| {
        let mut a = common(state_dir);
        a.extend(["--token-file".to_owned(), token_file.display().to_string()]);
        a
    };

    let world = tokio::task::spawn_blocking({
        let a = file_args("a");
        move || run(a, None)
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&world.stderr).into_owned();
    assert!(!world.status.success(), "a 0644 token file is refused");
    assert!(
        err.contains("mode 644") && err.contains("join-token"),
        "{err}"
    );
    assert_eq!(
        state.lock().unwrap().next_agent,
        0,
        "refused before connecting"
    );

    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let ok = tokio::task::spawn_blocking({
        let a = file_args("a");
        move || run(a, None)
    })
    .await
    .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "agent-1");

    let mut stdin_args = common("b");
    stdin_args.extend(["--token".to_owned(), "-".to_owned()]);
    let piped = tokio::task::spawn_blocking(move || run(stdin_args, Some(format!("{TOKEN}\n"))))
        .await
        .unwrap();
    assert!(
        piped.status.success(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&piped.stdout).trim(), "agent-2");
    server.stop().await;
}
