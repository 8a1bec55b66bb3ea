//! End to end, the QUIC side against hostile peers (issue 18, items 1 and 5):
//! - one enrolled identity cannot take the coordinator's memory: it keeps at most a few
//!   connections (the oldest are closed), one control stream each (a second Hello is
//!   refused), and frames it stalls in the middle hold at most its connection's budget
//!   until they time out; a real agent keeps streaming through all of it;
//! - Initials from a spoofed source address do not spend that address's allowance, so
//!   a real agent at that address still connects;
//! - a frame stalled mid-body on the control stream itself is refused on that stream;
//! - one agent over its ingest quota is told to retry later, and another is not.
//!
//! All traffic is on loopback (127.0.0.0/8); every loop is bounded in count and time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use persona_shared::facts::HostFacts;
use persona_shared::protocol::{self, AgentMsg, CoordMsg, Hello};
use persona_tests::rawquic::{self, endpoint, frame, identity, read_answer};
use persona_tests::{Agent, Coord, now_s, wait_for};

fn rejected(coord: &Coord, reason: &str) -> u64 {
    coord.status()["rejected"][reason].as_u64().unwrap_or(0)
}

/// Resident memory of a process in MiB, from /proc.
fn rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024.0
}

fn hello() -> AgentMsg {
    AgentMsg::Hello(Hello {
        protocol: protocol::PROTOCOL_VERSION,
        agent_version: "hostile".into(),
        facts: HostFacts::default(),
        purpose: None,
        last_seq: 0,
        model_version: None,
    })
}

/// Opens a stream, sends Hello, and returns the answer with the stream kept open.
async fn open_control(
    conn: &quinn::Connection,
) -> Result<(CoordMsg, quinn::SendStream, quinn::RecvStream), String> {
    let (mut tx, mut rx) = conn.open_bi().await.map_err(|e| e.to_string())?;
    tx.write_all(&frame(&hello()))
        .await
        .map_err(|e| e.to_string())?;
    let answer = read_answer(&mut rx).await?;
    Ok((answer, tx, rx))
}

/// Opens a stream and sends the header of a `len`-byte frame and one byte of it,
/// then stalls; returns the stream so it stays open.
async fn stall(
    conn: &quinn::Connection,
    len: u32,
) -> Option<(quinn::SendStream, quinn::RecvStream)> {
    let (mut tx, rx) = conn.open_bi().await.ok()?;
    let mut b = len.to_be_bytes().to_vec();
    b.push(0);
    tx.write_all(&b).await.ok()?;
    Some((tx, rx))
}

#[test]
fn one_identity_cannot_take_the_coordinators_memory() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(
        &dir.path().join("coord"),
        0,
        0,
        &["--batch-interval-s", "2"],
    );
    let pid = coord.child.id();
    let ca_pem = coord.data_dir.join("ca.pem");
    let (token, ca_hash) = coord.token(&["--uses", "2"]);
    let mut good = Agent::enroll(dir.path(), "good", &coord, &token, &ca_hash);
    let thief = Agent::enroll(dir.path(), "thief", &coord, &token, &ca_hash);
    good.start();
    wait_for(
        Duration::from_secs(60),
        "the good agent's first batch",
        || (!coord.series(&good.id, "cpu.user_ratio", "10m").is_empty()).then_some(()),
    );
    let before = rss_mib(pid);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let max_frame = u32::try_from(protocol::DEFAULT_MAX_FRAME).unwrap();
    let (live, held) = rt.block_on(async {
        // Ten connections of one identity: the coordinator keeps the newest four.
        let mut conns = Vec::new();
        for _ in 0..10 {
            let ep = endpoint(
                "127.0.0.1:0".parse().unwrap(),
                &ca_pem,
                Some(identity(&thief.state_dir)),
                protocol::ALPN,
            );
            let c = rawquic::connect_with(&ep, coord.quic).await.unwrap();
            // The server learns who it is on its first stream: prove it with a Hello.
            let (answer, tx, rx) = open_control(&c).await.unwrap();
            assert!(matches!(answer, CoordMsg::Welcome(_)), "{answer:?}");
            conns.push((ep, c, tx, rx));
        }
        let closed = tokio::time::timeout(Duration::from_secs(20), async {
            for (_, c, _, _) in &conns[..6] {
                c.closed().await;
            }
        })
        .await;
        assert!(closed.is_ok(), "the six oldest connections were not closed");
        let live: Vec<_> = conns.split_off(6);
        for (_, c, _, _) in &live {
            assert!(c.close_reason().is_none(), "a newest connection was closed");
        }
        // A second control stream on a connection is refused.
        let (answer, _tx, _rx) = open_control(&live[0].1).await.unwrap();
        assert!(
            matches!(&answer, CoordMsg::Reject(r) if r.message.contains("already has a control stream")),
            "{answer:?}"
        );
        // Stalled maximum-size frames on every live connection, as many streams as
        // QUIC allows: each connection's budget (4 MiB) holds a few, the rest are
        // refused before anything is allocated for them.
        let mut held = Vec::new();
        for (_, c, _, _) in &live {
            for _ in 0..30 {
                if let Some(s) = stall(c, max_frame).await {
                    held.push(s);
                }
            }
        }
        (live, held)
    });
    // Four 1 MiB frames fit a connection's 4 MiB: the other 26 of each connection are
    // refused as they arrive (the count also proves every stall reached the server).
    wait_for(
        Duration::from_secs(30),
        "frames refused for the budget",
        || (rejected(&coord, "frame_budget") >= 100).then_some(()),
    );
    let grown = rss_mib(pid) - before;
    assert!(
        grown < 96.0,
        "the coordinator grew by {grown:.0} MiB for one identity's stalled frames"
    );
    assert!(rejected(&coord, "connection_superseded") >= 6);
    assert!(rejected(&coord, "second_hello") >= 1);
    // A stalled frame times out (30 s), control streams included, and frees its bytes.
    wait_for(Duration::from_secs(60), "stalled frames timed out", || {
        (rejected(&coord, "frame_stalled") >= 1).then_some(())
    });
    drop(held);
    drop(live);
    // Through all of it the good agent kept streaming.
    let after = now_s() + 3.0;
    wait_for(
        Duration::from_secs(60),
        "good agent still streaming",
        || {
            let p = coord.series(&good.id, "cpu.user_ratio", "10m");
            p.last().is_some_and(|(t, _)| *t >= after).then_some(())
        },
    );
    drop(rt);
}

/// Forwards UDP datagrams from a local socket to `to`, sending them from `from` (an
/// address of our own in 127.0.0.0/8), and drops whatever comes back: to the
/// coordinator the sender looks like `from`, which never answers, as a spoofed
/// source would not.
async fn spoofing_relay(from: SocketAddr, to: SocketAddr) -> SocketAddr {
    let inbound = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let outbound = tokio::net::UdpSocket::bind(from).await.unwrap();
    let local = inbound.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let Ok(Ok((n, _))) =
                tokio::time::timeout(Duration::from_secs(1), inbound.recv_from(&mut buf)).await
            else {
                continue;
            };
            let _ = outbound.send_to(&buf[..n], to).await;
        }
    });
    local
}

#[test]
fn spoofed_initials_do_not_lock_out_the_real_agent() {
    let dir = tempfile::tempdir().unwrap();
    // A rate low enough that the 150 spoofed Initials would spend the address's burst
    // (4 s worth = 80) if they were counted.
    let coord = coord_with(dir.path(), "connections_per_address_per_s = 20\n");
    let ca_pem = coord.data_dir.join("ca.pem");
    let (token, ca_hash) = coord.token(&[]);
    let agent = Agent::enroll(dir.path(), "real", &coord, &token, &ca_hash);
    let spoofed: std::net::IpAddr = "127.0.5.5".parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let relay = spoofing_relay(SocketAddr::new(spoofed, 0), coord.quic).await;
        // 150 handshakes "from" 127.0.5.5 (past its burst at `connections_per_address_per_s
        // = 20` below): none completes.
        let ep = endpoint(
            "127.0.0.1:0".parse().unwrap(),
            &ca_pem,
            None,
            protocol::ALPN,
        );
        let mut attempts = Vec::new();
        for _ in 0..150 {
            let c = ep.connect(relay, protocol::SERVER_NAME).unwrap();
            attempts.push(tokio::time::timeout(Duration::from_millis(1500), c));
        }
        for a in attempts {
            assert!(a.await.is_err(), "a spoofed handshake completed");
        }
        // The real agent at that address connects and is welcomed.
        let ep = endpoint(
            SocketAddr::new(spoofed, 0),
            &ca_pem,
            Some(identity(&agent.state_dir)),
            protocol::ALPN,
        );
        let c = rawquic::connect_with(&ep, coord.quic).await.unwrap();
        let (answer, _tx, _rx) = open_control(&c).await.unwrap();
        assert!(matches!(answer, CoordMsg::Welcome(_)), "{answer:?}");
    });
    assert_eq!(
        rejected(&coord, "rate_limited"),
        0,
        "spoofed Initials were counted against the address"
    );
}

/// A coordinator whose config file sets the QUIC bounds these tests exercise, so that
/// they take seconds, not the defaults' half minute.
fn coord_with(dir: &std::path::Path, config: &str) -> Coord {
    let file = dir.join("coordinator.toml");
    std::fs::write(&file, config).unwrap();
    Coord::start(
        &dir.join("coord"),
        0,
        0,
        &["--config", file.to_str().unwrap()],
    )
}

/// Reads frames from a control stream (commands pushed to the agent come first) until
/// a `Reject`, at most 16 frames and 30 s.
async fn next_reject(rx: &mut quinn::RecvStream) -> Result<protocol::Reject, String> {
    for _ in 0..16 {
        let read = persona_shared::wire::read_frame(rx, 1 << 20);
        let body = tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .map_err(|_| "nothing within 30 s".to_string())?
            .map_err(|e| e.to_string())?;
        match protocol::decode_body::<CoordMsg>(&body).map_err(|e| e.to_string())? {
            CoordMsg::Reject(r) => return Ok(r),
            _ => continue,
        }
    }
    Err("no Reject among 16 frames".into())
}

/// A control stream (Hello answered by Welcome) that then stalls in the middle of a
/// frame's body is refused on that stream once the frame timeout has passed, and its
/// bytes are counted as stalled; the agent can connect again afterwards.
#[test]
fn a_frame_stalled_on_the_control_stream_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let coord = coord_with(dir.path(), "frame_timeout_s = 2\n");
    let ca_pem = coord.data_dir.join("ca.pem");
    let (token, ca_hash) = coord.token(&[]);
    let agent = Agent::enroll(dir.path(), "staller", &coord, &token, &ca_hash);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let connect = || async {
            let ep = endpoint(
                "127.0.0.1:0".parse().unwrap(),
                &ca_pem,
                Some(identity(&agent.state_dir)),
                protocol::ALPN,
            );
            let c = rawquic::connect_with(&ep, coord.quic).await.unwrap();
            (ep, c)
        };
        let (_ep, c) = connect().await;
        let (answer, mut tx, mut rx) = open_control(&c).await.unwrap();
        assert!(matches!(answer, CoordMsg::Welcome(_)), "{answer:?}");
        // The header of a 64 KiB frame and 100 bytes of its body, then nothing.
        let mut partial = (64u32 << 10).to_be_bytes().to_vec();
        partial.extend_from_slice(&[0u8; 100]);
        tx.write_all(&partial).await.unwrap();
        let r = next_reject(&mut rx).await.unwrap();
        assert!(
            r.message.contains("did not arrive within 2 s"),
            "{}",
            r.message
        );
        assert_eq!(r.code, protocol::RejectCode::BadMessage);
        drop((tx, rx));
        // The identity is not locked out: a new connection is welcomed.
        let (_ep2, c2) = connect().await;
        let (answer, _tx, _rx) = open_control(&c2).await.unwrap();
        assert!(matches!(answer, CoordMsg::Welcome(_)), "{answer:?}");
    });
    assert!(rejected(&coord, "frame_stalled") >= 1);
}

/// A batch of about `kib` KiB with a current timestamp and no series (the bytes are in
/// the instance names, which nothing references).
fn padded_batch(seq: u64, kib: usize) -> AgentMsg {
    let mut ts = Vec::new();
    let now_ms = (now_s() * 1000.0) as i64;
    persona_shared::codec::encode_timestamps(&[now_ms], &mut ts);
    AgentMsg::Batch(protocol::Batch {
        seq,
        timestamps: ts,
        instances: (0..kib)
            .map(|i| format!("{i:04}{}", "x".repeat(1020)))
            .collect(),
        index: vec![],
        data: vec![],
        procs: vec![],
        mirror: None,
    })
}

/// One agent that sends faster than its ingest quota is answered retry-later (its
/// batches stay its own to resend) while another agent's batch is acknowledged at the
/// same moment; once the quota has refilled, the refused batch is acknowledged.
#[test]
fn an_agent_over_its_ingest_quota_is_told_to_retry_and_others_are_not() {
    let dir = tempfile::tempdir().unwrap();
    // 16 KiB/s with a 128 KiB burst; frames up to 128 KiB.
    let coord = coord_with(
        dir.path(),
        "agent_ingest_bytes_per_s = 16384\nmax_frame_bytes = 131072\n",
    );
    let ca_pem = coord.data_dir.join("ca.pem");
    let (token, ca_hash) = coord.token(&["--uses", "2"]);
    let greedy = Agent::enroll(dir.path(), "greedy", &coord, &token, &ca_hash);
    let other = Agent::enroll(dir.path(), "other", &coord, &token, &ca_hash);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = rawquic::connect(
            coord.quic,
            &ca_pem,
            Some(identity(&greedy.state_dir)),
            protocol::ALPN,
        )
        .await
        .unwrap();
        // Twelve 20 KiB batches at once: about six fit the burst.
        let (mut acked, mut refused) = (Vec::new(), Vec::new());
        for seq in 1..=12u64 {
            match rawquic::exchange(&c, &frame(&padded_batch(seq, 20))).await {
                Ok(CoordMsg::Ack { seq: s, .. }) if s == seq => acked.push(seq),
                Ok(CoordMsg::Reject(r)) if r.message.contains("ingest quota") => {
                    // Retryable: the agent keeps the batch (a permanent code would
                    // make it delete the batch).
                    assert_eq!(r.code, protocol::RejectCode::Internal, "{r:?}");
                    refused.push(seq);
                }
                other => panic!("batch {seq}: {other:?}"),
            }
        }
        assert!(!acked.is_empty() && acked[0] == 1, "acked {acked:?}");
        assert!(refused.len() >= 3, "refused {refused:?}, acked {acked:?}");

        // Another agent is not held back by the first one's quota.
        let o = rawquic::connect(
            coord.quic,
            &ca_pem,
            Some(identity(&other.state_dir)),
            protocol::ALPN,
        )
        .await
        .unwrap();
        let answer = rawquic::exchange(&o, &frame(&padded_batch(1, 20))).await;
        assert!(
            matches!(answer, Ok(CoordMsg::Ack { seq: 1, .. })),
            "{answer:?}"
        );

        // The first refused batch, sent again as the agent would, once 20 KiB have
        // refilled (16 KiB/s): bounded to 20 attempts a second apart.
        let again = refused[0];
        let mut ok = false;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match rawquic::exchange(&c, &frame(&padded_batch(again, 20))).await {
                Ok(CoordMsg::Ack { seq, .. }) if seq == again => {
                    ok = true;
                    break;
                }
                Ok(CoordMsg::Reject(r)) if r.message.contains("ingest quota") => continue,
                other => panic!("batch {again} sent again: {other:?}"),
            }
        }
        assert!(
            ok,
            "batch {again} was never acknowledged after the quota refilled"
        );
    });
    assert!(rejected(&coord, "agent_quota") >= 3);
}
