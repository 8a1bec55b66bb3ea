//! End to end: hostile and broken clients are refused, each for its own reason, while
//! an enrolled agent keeps streaming without a gap. The hostile clients are raw quinn
//! clients built here, so they can do what the real agent never would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use persona_shared::protocol::{self, AgentMsg, CoordMsg, RejectCode};
use persona_tests::rawquic::{connect, exchange, frame, identity};
use persona_tests::{Agent, Coord, gaps, now_s, seconds_of, wait_for};
use rustls::pki_types::PrivateKeyDer;

fn rejected(coord: &Coord, reason: &str) -> u64 {
    coord.status()["rejected"][reason].as_u64().unwrap_or(0)
}

fn enroll_fails(coord: &Coord, dir: &Path, token: &str, ca_hash: &str) -> String {
    let out = coord.enroll_command(dir, token, ca_hash).output().unwrap();
    assert!(!out.status.success(), "enroll with a bad token succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_clients_are_refused_and_an_enrolled_agent_keeps_streaming() {
    let dir = tempfile::tempdir().unwrap();
    // A per-address rate low enough that the flood below (150 connections) passes its
    // burst of 4 s worth; the default (200/s) fits a fleet behind one NAT address.
    let config = dir.path().join("coordinator.toml");
    std::fs::write(&config, "connections_per_address_per_s = 20\n").unwrap();
    let coord = Coord::start(
        &dir.path().join("coord"),
        0,
        0,
        &[
            "--batch-interval-s",
            "5",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let ca_pem = coord.data_dir.join("ca.pem");
    let (token, ca_hash) = coord.token(&["--uses", "2"]);
    let mut good = Agent::enroll(dir.path(), "good", &coord, &token, &ca_hash);
    good.start();
    let t0 = now_s();
    wait_for(Duration::from_secs(60), "first batch", || {
        (!coord.series(&good.id, "cpu.user_ratio", "10m").is_empty()).then_some(())
    });

    // Bad, used-up, expired and revoked tokens; a wrong CA pin.
    let err = enroll_fails(
        &coord,
        &dir.path().join("x1"),
        "abcdef.0123456789abcdef0123456789abcdef",
        &ca_hash,
    );
    assert!(err.contains("unknown token"), "{err}");
    let mut victim = Agent::enroll(dir.path(), "victim", &coord, &token, &ca_hash);
    let err = enroll_fails(&coord, &dir.path().join("x2"), &token, &ca_hash);
    assert!(err.contains("already used"), "{err}");
    let (short, _) = coord.token(&["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    let err = enroll_fails(&coord, &dir.path().join("x3"), &short, &ca_hash);
    assert!(err.contains("expired"), "{err}");
    let (revoked_tok, _) = coord.token(&[]);
    coord.ctl(&["token", "revoke", revoked_tok.split('.').next().unwrap()]);
    let err = enroll_fails(&coord, &dir.path().join("x4"), &revoked_tok, &ca_hash);
    assert!(err.contains("revoked"), "{err}");
    let (tok5, _) = coord.token(&[]);
    let wrong_pin = format!("sha256:{}", "0".repeat(64));
    let err = enroll_fails(&coord, &dir.path().join("x5"), &tok5, &wrong_pin);
    assert!(err.to_lowercase().contains("ca"), "{err}");

    // A revoked agent is cut off and refused from then on.
    victim.start();
    wait_for(Duration::from_secs(60), "victim streaming", || {
        (!coord.series(&victim.id, "cpu.user_ratio", "10m").is_empty()).then_some(())
    });
    coord.ctl(&["agents", "revoke", &victim.id]);
    wait_for(
        Duration::from_secs(90),
        "revoked agent refused on reconnect",
        || (rejected(&coord, "revoked_agent") >= 1).then_some(()),
    );
    assert_eq!(
        coord.ctl(&["agents", "show", &victim.id])["state"],
        "revoked"
    );
    let victim_state = victim.state_dir.clone();
    victim.kill();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // A self-signed client certificate (another CA).
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["intruder".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let id = (
            vec![cert.der().clone()],
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        );
        let r = match connect(coord.quic, &ca_pem, Some(id), protocol::ALPN).await {
            Ok(c) => exchange(&c, &frame(&AgentMsg::Facts(Default::default()))).await,
            Err(e) => Err(e),
        };
        assert!(r.is_err(), "self-signed client got {r:?}");

        // A wrong ALPN.
        let r = connect(coord.quic, &ca_pem, None, b"http/1.1").await;
        if let Ok(c) = r {
            assert!(exchange(&c, b"x").await.is_err());
        }

        // No client certificate and no enrollment: refused with a reason.
        let c = connect(coord.quic, &ca_pem, None, protocol::ALPN)
            .await
            .unwrap();
        match exchange(&c, &frame(&AgentMsg::Facts(Default::default()))).await {
            Ok(CoordMsg::Reject(r)) => assert_eq!(r.code, RejectCode::NotEnrolled),
            other => panic!("no-certificate client got {other:?}"),
        }

        // The revoked agent's own certificate, used directly.
        let c = connect(
            coord.quic,
            &ca_pem,
            Some(identity(&victim_state)),
            protocol::ALPN,
        )
        .await;
        if let Ok(c) = c {
            match exchange(&c, &frame(&AgentMsg::Facts(Default::default()))).await {
                Ok(CoordMsg::Reject(r)) => assert_eq!(r.code, RejectCode::Revoked),
                Ok(other) => panic!("revoked agent got {other:?}"),
                Err(_) => {}
            }
        }

        // With the good agent's identity: an oversized frame, garbage, an unknown
        // message type and timestamps far in the future each close only their stream.
        let c = connect(
            coord.quic,
            &ca_pem,
            Some(identity(&good.state_dir)),
            protocol::ALPN,
        )
        .await
        .unwrap();
        let mut huge = (2u32 << 20).to_be_bytes().to_vec();
        huge.extend_from_slice(&[0u8; 1024]);
        match exchange(&c, &huge).await {
            Ok(CoordMsg::Reject(r)) => assert_eq!(r.code, RejectCode::TooLarge),
            other => panic!("oversized frame got {other:?}"),
        }
        let garbage = [0, 0, 0, 5, 0xc1, 0xff, 0x00, 0x13, 0x37];
        match exchange(&c, &garbage).await {
            Ok(CoordMsg::Reject(r)) => assert_eq!(r.code, RejectCode::BadMessage),
            other => panic!("garbage got {other:?}"),
        }
        let mut wrong_type = Vec::new();
        protocol::encode_frame(
            &CoordMsg::Ack {
                seq: 1,
                duplicate: false,
            },
            &mut wrong_type,
            1 << 20,
        )
        .unwrap();
        match exchange(&c, &wrong_type).await {
            Ok(CoordMsg::Reject(r)) => assert_eq!(r.code, RejectCode::BadMessage),
            other => panic!("unknown message type got {other:?}"),
        }
        let mut ts = Vec::new();
        let future = (now_s() as i64 + 86_400 * 365) * 1000;
        persona_shared::codec::encode_timestamps(&[future, future + 1000], &mut ts);
        let batch = protocol::Batch {
            seq: u64::MAX - 1,
            timestamps: ts,
            instances: vec![],
            index: vec![],
            data: vec![],
            procs: vec![],
            mirror: None,
        };
        match exchange(&c, &frame(&AgentMsg::Batch(batch))).await {
            Ok(CoordMsg::Reject(r)) => assert_eq!(r.code, RejectCode::BadTimestamps),
            other => panic!("future timestamps got {other:?}"),
        }
        // Truncated frame: the stream ends mid-body.
        let _ = exchange(&c, &[0, 0, 1, 0, 1, 2, 3]).await;
        // The same connection still works for a valid message afterwards.
        assert!(c.open_bi().await.is_ok());
        c.close(0u32.into(), b"done");

        // A flood of connections from one address is rate-limited.
        let mut refused = 0;
        for _ in 0..150 {
            if connect(coord.quic, &ca_pem, None, protocol::ALPN)
                .await
                .is_err()
            {
                refused += 1;
            }
        }
        assert!(refused > 0, "no connection of the flood was refused");
    });

    let status = coord.status();
    for reason in [
        "bad_token",
        "token_used",
        "token_expired",
        "token_revoked",
        "revoked_agent",
        "bad_certificate",
        "bad_alpn",
        "no_client_certificate",
        "frame_too_large",
        "bad_message",
        "bad_timestamps",
        "rate_limited",
    ] {
        assert!(
            status["rejected"][reason].as_u64().unwrap_or(0) >= 1,
            "no {reason} counted: {status}"
        );
    }
    // Through all of it, the good agent streamed without a gap.
    let after = now_s() + 6.0;
    let points = wait_for(
        Duration::from_secs(90),
        "good agent still streaming",
        || {
            let p = coord.series(&good.id, "cpu.user_ratio", "30m");
            p.last().is_some_and(|(t, _)| *t >= after).then_some(p)
        },
    );
    let secs = seconds_of(&points);
    assert_eq!(gaps(&secs), vec![]);
    assert!(secs.first().is_some_and(|s| (*s as f64) <= t0 + 3.0));
}
