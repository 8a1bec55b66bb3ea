//! End to end: enroll a real agent with a real coordinator on loopback, stream, and
//! check with `personactl series` that every second arrives exactly once, across a
//! coordinator crash and an agent crash during an outage.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use persona_tests::{Agent, Coord, gaps, now_s, seconds_of, wait_for};

const SINCE: &str = "30m";
/// The coordinator's flags in every test here.
const BATCH_5S: [&str; 2] = ["--batch-interval-s", "5"];

/// A coordinator in `dir/coord` and one agent enrolled with a fresh join token and
/// started; returns them with the token and the CA hash.
fn stream(dir: &Path) -> (Coord, Agent, String, String) {
    let coord = Coord::start(&dir.join("coord"), 0, 0, &BATCH_5S);
    let (token, ca_hash) = coord.token(&[]);
    let mut agent = Agent::enroll(dir, "a1", &coord, &token, &ca_hash);
    agent.start();
    (coord, agent, token, ca_hash)
}

/// Waits until the series holds a point at or after `t` (Unix seconds).
fn wait_until_covered(coord: &Coord, agent: &str, t: f64, limit: Duration) -> Vec<(f64, f64)> {
    wait_for(limit, "telemetry to arrive", || {
        let p = coord.series(agent, "cpu.user_ratio", SINCE);
        (p.last().is_some_and(|(ts, _)| *ts >= t)).then_some(p)
    })
}

#[test]
fn enroll_stream_and_every_second_is_present() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, agent, token, ca_hash) = stream(dir.path());
    let started = now_s();
    // 15 s of streaming, then everything up to that instant must be there.
    let points = wait_until_covered(&coord, &agent.id, started + 15.0, Duration::from_secs(90));
    let secs = seconds_of(&points);
    assert!(secs.len() >= 15, "only {} points", secs.len());
    assert_eq!(gaps(&secs), vec![], "missing seconds");
    for (_, v) in &points {
        assert!((0.0..=1.0).contains(v), "cpu.user_ratio {v} out of range");
    }
    // Other resources arrive too, and the derived per-core metric is computed.
    let mem = coord.series(&agent.id, "mem.available_bytes", SINCE);
    let total = coord.series(&agent.id, "mem.total_bytes", SINCE);
    assert!(!mem.is_empty() && mem.iter().zip(&total).all(|(a, t)| a.1 > 0.0 && a.1 <= t.1));
    let cores = coord.series(&agent.id, "cpu.idle_cores", SINCE);
    assert!(!cores.is_empty() && cores.iter().all(|(_, v)| *v >= 0.0));
    for m in [
        "disk.write_bytes_per_s",
        "net.rx_bytes_per_s",
        "load.avg1_tasks",
    ] {
        let p = coord.series(&agent.id, m, SINCE);
        assert!(
            !p.is_empty() && p.iter().all(|(_, v)| v.is_finite() && *v >= 0.0),
            "{m}: {p:?}"
        );
    }
    // The agent is listed as connected with its facts.
    let shown = coord.ctl(&["agents", "show", &agent.id]);
    assert_eq!(shown["state"], "connected");
    assert!(shown["facts"]["cpus_online"].as_u64().unwrap() >= 1);
    assert_eq!(shown["purpose"]["description"], "end-to-end test VM");
    assert!(
        shown["latest"]["values"]["mem.total_bytes"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    // The join token was single-use.
    let again = coord
        .enroll_command(&dir.path().join("a1-again"), &token, &ca_hash)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("token"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // The line `token create` prints enrolls as it stands (issue 18 item 17): the token
    // travels on stdin, never as an argument that `ps` would show.
    let made = coord.ctl(&["token", "create"]);
    let line = made["command"].as_str().unwrap();
    let token2 = made["token"].as_str().unwrap();
    let (pipe_in, agent_part) = line.split_once(" | ").unwrap();
    assert!(
        pipe_in.starts_with("printf ") && pipe_in.contains(token2),
        "{line}"
    );
    assert!(!agent_part.contains(token2), "{line}");
    assert!(agent_part.contains("--token -"), "{line}");
    let agent_bin = persona_tests::bin("persona-agent");
    let runnable = line.replacen(
        "| persona-agent ",
        &format!("| {} ", agent_bin.display()),
        1,
    );
    let state = dir.path().join("a2");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{runnable} --state-dir {}", state.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(state.join("identity.toml").exists());
}

#[test]
fn coordinator_killed_and_restarted_mid_stream_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut coord, agent, ..) = stream(dir.path());
    let (data, quic_port, http_port) =
        (coord.data_dir.clone(), coord.quic.port(), coord.http.port());
    wait_until_covered(&coord, &agent.id, now_s() + 4.0, Duration::from_secs(60));
    coord.kill();
    // The outage: the agent keeps sampling into its outbox meanwhile.
    std::thread::sleep(Duration::from_secs(6));
    let restarted = now_s();
    let coord = Coord::start(&data, quic_port, http_port, &BATCH_5S);
    let points = wait_until_covered(&coord, &agent.id, restarted + 6.0, Duration::from_secs(120));
    let secs = seconds_of(&points);
    assert_eq!(
        gaps(&secs),
        vec![],
        "missing seconds across the coordinator crash"
    );
    assert!(secs.len() >= 14);
}

#[test]
fn agent_killed_and_restarted_while_coordinator_is_down_delivers_its_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let (mut coord, mut agent, ..) = stream(dir.path());
    let (data, quic_port, http_port) =
        (coord.data_dir.clone(), coord.quic.port(), coord.http.port());
    wait_until_covered(&coord, &agent.id, now_s() + 3.0, Duration::from_secs(60));
    coord.kill();
    std::thread::sleep(Duration::from_secs(4));
    let killed = now_s();
    agent.kill();
    std::thread::sleep(Duration::from_secs(2));
    let restarted = now_s();
    agent.start();
    std::thread::sleep(Duration::from_secs(4));
    let coord = Coord::start(&data, quic_port, http_port, &BATCH_5S);
    let points = wait_until_covered(&coord, &agent.id, now_s() + 3.0, Duration::from_secs(120));
    let secs = seconds_of(&points);
    // The only hole is while the agent process was dead: every sample it took before
    // SIGKILL (including the ones taken during the coordinator outage) was delivered.
    let g = gaps(&secs);
    assert!(g.len() <= 1, "gaps {g:?}");
    if let Some(&(before, after)) = g.first() {
        assert!(
            before as f64 >= killed - 2.5,
            "samples before the agent crash lost: last {before}, killed at {killed:.1}"
        );
        assert!(
            after as f64 <= restarted + 3.5,
            "samples after restart missing: first {after}, restarted at {restarted:.1}"
        );
    }
}
