//! The command channel with real parts: the real coordinator and agent binaries over
//! QUIC, `personactl commands` to drive them, and a file server on loopback whose held
//! responses keep a command running for as long as a test needs.
//!
//! It shows that a config update is applied and reported; that a command resent after a
//! reconnect runs once; that a command cancelled before delivery is never delivered and
//! a running one stops; that an expired command never runs (on either side); and that a
//! coordinator holding the TLS keys but not the CA key cannot get a command executed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use persona_tests::fileserver::{FileServer, Mode, sha256_hex};
use persona_tests::{Agent, Coord, terminate, wait_for};
use serde_json::{Value, json};

/// Replaces the policy file's text (the agent re-reads it for every command).
fn set_policy(agent: &Agent, text: &str) {
    std::fs::write(agent.state_dir.with_extension("policy.toml"), text).unwrap();
}

/// Writes the policy file and points the agent's config at it (once, before start).
fn write_policy(agent: &Agent, text: &str) {
    let policy = agent.state_dir.with_extension("policy.toml");
    std::fs::write(&policy, text).unwrap();
    let cfg = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(
        &agent.config,
        format!("policy_file = {:?}\n{cfg}", policy.display().to_string()),
    )
    .unwrap();
}

fn files_policy(srv: &FileServer, dest: &Path) -> String {
    format!(
        "[actions]\nconfig_update = true\n[files]\nurl_prefixes = [\"http://{}/data/\"]\ndestinations = [{:?}]\nmax_bytes = 10000000\n",
        srv.addr,
        dest.display().to_string()
    )
}

fn show(coord: &Coord, id: &str) -> Value {
    coord.ctl(&["commands", "show", id])
}

fn wait_state(coord: &Coord, id: &str, states: &[&str]) -> Value {
    wait_for(
        Duration::from_secs(60),
        &format!("command {id} in {states:?}"),
        || {
            let v = show(coord, id);
            states
                .contains(&v["state"].as_str().unwrap_or(""))
                .then_some(v)
        },
    )
}

fn wait_connected(coord: &Coord, agent: &str) {
    wait_for(Duration::from_secs(60), "agent connected", || {
        let v = coord.ctl(&["agents", "list"]);
        v["agents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == agent && a["state"] == "connected")
            .then_some(())
    });
}

fn send(coord: &Coord, agent: &str, action: &Value, ttl: &str) -> String {
    let v = coord.ctl(&[
        "commands",
        "send",
        "--agent",
        agent,
        "--action",
        &action.to_string(),
        "--ttl",
        ttl,
    ]);
    v["id"].as_str().unwrap().to_owned()
}

fn file_action(srv: &FileServer, path: &str, data: &[u8], dest: &Path) -> Value {
    json!({"Preload": {"persona": null, "steps": [{"File": {
        "url": srv.url(path), "sha256": sha256_hex(data),
        "size": data.len(), "dest": dest.display().to_string()}}]}})
}

fn body(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 13 % 256) as u8).collect()
}

/// Config update; a running command resent after the coordinator restarts runs once;
/// cancel before delivery and while running.
#[test]
fn commands_are_delivered_run_once_and_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let cdir = dir.path().join("coord");
    let mut coord = Coord::start(&cdir, 0, 0, &[]);
    let (token, ca_hash) = coord.token(&[]);
    let mut agent = Agent::enroll(dir.path(), "agent", &coord, &token, &ca_hash);
    let srv = FileServer::start();
    let dest_dir = dir.path().join("dest");
    std::fs::create_dir(&dest_dir).unwrap();
    write_policy(&agent, &files_policy(&srv, &dest_dir));
    agent.start();
    wait_connected(&coord, &agent.id);

    // A live config update, applied and reported.
    let id = send(
        &coord,
        &agent.id,
        &json!({"ConfigUpdate": {"sample_interval_ms": 500, "batch_interval_s": 5}}),
        "10m",
    );
    let v = wait_state(&coord, &id, &["succeeded", "failed"]);
    assert_eq!(v["state"], "succeeded", "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("sample_interval_ms = 500"),
        "{v}"
    );
    assert_eq!(v["kind"], "config_update");
    // Out of range: refused by the agent's checks.
    let id = send(
        &coord,
        &agent.id,
        &json!({"ConfigUpdate": {"sample_interval_ms": 5, "batch_interval_s": null}}),
        "10m",
    );
    let v = wait_state(&coord, &id, &["succeeded", "failed"]);
    assert_eq!(v["state"], "failed", "{v}");
    assert!(v["message"].as_str().unwrap().contains("outside"), "{v}");
    // A genuine resize that the VM's policy does not allow: refused, nothing changes.
    let id = send(
        &coord,
        &agent.id,
        &json!({"Resize": {"vcpus": 1, "memory_mib": null, "disk": null, "net": null, "allow_restart": false}}),
        "10m",
    );
    let v = wait_state(&coord, &id, &["succeeded", "failed"]);
    assert_eq!(v["state"], "failed", "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("actions.resize"),
        "{v}"
    );

    // A download held half-way keeps the command running across a coordinator restart.
    let data = body(300_000);
    srv.add("/data/slow.bin", data.clone(), Mode::Hold);
    let dest = dest_dir.join("slow.bin");
    let id = send(
        &coord,
        &agent.id,
        &file_action(&srv, "/data/slow.bin", &data, &dest),
        "30m",
    );
    let v = wait_state(&coord, &id, &["running"]);
    assert!(
        v["delivered_ms"].is_i64() && v["started_ms"].is_i64(),
        "{v}"
    );
    wait_for(Duration::from_secs(30), "the download to start", || {
        (!srv.hits_of("/data/slow.bin").is_empty()).then_some(())
    });
    let quic_port = coord.quic.port();
    coord.kill();
    let coord = Coord::start(&cdir, quic_port, 0, &[]);
    wait_connected(&coord, &agent.id);
    // Resent on the new connection (at least once), acknowledged, not run again.
    wait_for(Duration::from_secs(30), "the resend", || {
        (show(&coord, &id)["attempts"].as_i64().unwrap_or(0) >= 2).then_some(())
    });
    srv.release();
    let v = wait_state(&coord, &id, &["succeeded", "failed"]);
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(
        srv.hits_of("/data/slow.bin").len(),
        1,
        "the resent command must not run twice"
    );
    let log = std::fs::read_to_string(agent.state_dir.with_extension("agent.log")).unwrap();
    assert!(
        log.contains("repeated command acknowledged, not run again") && log.contains(&id),
        "the agent saw the repeat and acknowledged it"
    );

    // Cancelled while running: the download stops between chunks, nothing is kept.
    let data2 = body(200_000);
    // A fresh server: the gate of the first one is open for good.
    let srv2 = FileServer::start();
    srv2.add("/data/held.bin", data2.clone(), Mode::Hold);
    set_policy(&agent, &files_policy(&srv2, &dest_dir));
    let dest2 = dest_dir.join("held.bin");
    let id = send(
        &coord,
        &agent.id,
        &file_action(&srv2, "/data/held.bin", &data2, &dest2),
        "30m",
    );
    wait_state(&coord, &id, &["running"]);
    wait_for(Duration::from_secs(30), "the held download", || {
        (!srv2.hits_of("/data/held.bin").is_empty()).then_some(())
    });
    let c = coord.ctl(&["commands", "cancel", &id]);
    assert_eq!(c["cancel"], "requested", "{c}");
    let cancel_id = c["cancel_command"].as_str().unwrap().to_owned();
    wait_state(&coord, &cancel_id, &["succeeded"]);
    srv2.release();
    let v = wait_state(&coord, &id, &["cancelled", "succeeded", "failed"]);
    assert_eq!(v["state"], "cancelled", "{v}");
    assert!(!dest2.exists());

    // Cancelled before delivery: never delivered, even once the agent is back.
    agent.kill();
    wait_for(Duration::from_secs(60), "agent disconnected", || {
        let v = coord.ctl(&["agents", "list"]);
        (v["agents"][0]["state"] != "connected").then_some(())
    });
    let id = send(
        &coord,
        &agent.id,
        &json!({"ConfigUpdate": {"sample_interval_ms": 1000, "batch_interval_s": null}}),
        "10m",
    );
    let c = coord.ctl(&["commands", "cancel", &id]);
    assert_eq!(c["cancel"], "cancelled", "{c}");
    let out = coord.ctl_output(&["commands", "cancel", &id]);
    assert!(
        !out.status.success(),
        "a final command cannot be cancelled again"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("already cancelled"));
    agent.start();
    wait_connected(&coord, &agent.id);
    let before = show(&coord, &id);
    assert_eq!(before["state"], "cancelled");
    assert_eq!(before["attempts"], 0);
    assert!(before["sent_ms"].is_null());

    // The list shows them all, newest first; --agent filters; unknown ids are not found.
    let list = coord.ctl(&["commands", "list", "--agent", &agent.id]);
    let rows = list["commands"].as_array().unwrap();
    assert!(rows.len() >= 5, "{list}");
    assert_eq!(rows[0]["id"], id);
    let out = coord.ctl_output(&["commands", "show", "c-0000000000000000"]);
    assert_eq!(out.status.code(), Some(2));
    let human = coord.ctl_output(&["commands", "list"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("cancelled"));
    agent.kill();
}

/// An expired command never runs: one that expires in the agent's queue is not started,
/// and one that expires before delivery is never sent.
#[test]
fn an_expired_command_never_runs() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(&dir.path().join("coord"), 0, 0, &[]);
    let (token, ca_hash) = coord.token(&[]);
    let mut agent = Agent::enroll(dir.path(), "agent", &coord, &token, &ca_hash);
    let srv = FileServer::start();
    let dest_dir = dir.path().join("dest");
    std::fs::create_dir(&dest_dir).unwrap();
    write_policy(&agent, &files_policy(&srv, &dest_dir));
    agent.start();
    wait_connected(&coord, &agent.id);

    // The agent is busy with a held download; the next command waits in its queue past
    // its expiry and is then refused by the agent.
    let first = body(100_000);
    srv.add("/data/first.bin", first.clone(), Mode::Hold);
    let late = body(1000);
    srv.add("/data/late.bin", late.clone(), Mode::Normal);
    let id1 = send(
        &coord,
        &agent.id,
        &file_action(&srv, "/data/first.bin", &first, &dest_dir.join("first.bin")),
        "30m",
    );
    wait_state(&coord, &id1, &["running"]);
    let late_dest = dest_dir.join("late.bin");
    let id2 = send(
        &coord,
        &agent.id,
        &file_action(&srv, "/data/late.bin", &late, &late_dest),
        "2s",
    );
    let expires = show(&coord, &id2)["expires_ms"].as_i64().unwrap();
    wait_for(
        Duration::from_secs(30),
        "the second command's expiry",
        || (persona_coordinator::store::now_ms() > expires + 500).then_some(()),
    );
    srv.release();
    wait_state(&coord, &id1, &["succeeded"]);
    let v = wait_state(&coord, &id2, &["expired", "succeeded", "failed"]);
    assert_eq!(v["state"], "expired", "{v}");
    assert!(srv.hits_of("/data/late.bin").is_empty());
    assert!(!late_dest.exists());

    // Expired while the agent is away: never sent.
    agent.kill();
    wait_for(Duration::from_secs(60), "agent disconnected", || {
        let v = coord.ctl(&["agents", "list"]);
        (v["agents"][0]["state"] != "connected").then_some(())
    });
    let id3 = send(
        &coord,
        &agent.id,
        &file_action(&srv, "/data/late.bin", &late, &late_dest),
        "1s",
    );
    wait_state(&coord, &id3, &["expired"]);
    agent.start();
    wait_connected(&coord, &agent.id);
    // Give the delivery task a few polls to (wrongly) send it.
    let settle = std::time::Instant::now() + Duration::from_secs(3);
    wait_for(Duration::from_secs(10), "delivery polls", || {
        (std::time::Instant::now() > settle).then_some(())
    });
    let v = show(&coord, &id3);
    assert_eq!(v["state"], "expired");
    assert_eq!(v["attempts"], 0, "{v}");
    assert!(srv.hits_of("/data/late.bin").is_empty());
    agent.kill();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A coordinator that has the TLS keys (a stolen session) but not the CA key signs with
/// another key: the agent connects, and refuses every command it sends.
#[test]
fn a_forged_signature_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let real_dir = dir.path().join("coord");
    let mut real = Coord::start(&real_dir, 0, 0, &[]);
    let (token, ca_hash) = real.token(&[]);
    let mut agent = Agent::enroll(dir.path(), "agent", &real, &token, &ca_hash);
    let srv = FileServer::start();
    let data = body(5000);
    srv.add("/data/x.bin", data.clone(), Mode::Normal);
    let dest_dir = dir.path().join("dest");
    std::fs::create_dir(&dest_dir).unwrap();
    write_policy(&agent, &files_policy(&srv, &dest_dir));
    let quic_port = real.quic.port();
    assert!(terminate(&mut real.child, Duration::from_secs(20)));

    // The impostor: the same database, server certificate and key, CA certificate, but
    // a CA private key of its own.
    let fake_dir = dir.path().join("impostor");
    copy_dir(&real_dir, &fake_dir);
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(fake_dir.join("ca.key"), other.serialize_pem()).unwrap();
    let fake = Coord::start(&fake_dir, quic_port, 0, &[]);
    agent.start();
    wait_connected(&fake, &agent.id);
    let dest = dest_dir.join("x.bin");
    let id = send(
        &fake,
        &agent.id,
        &file_action(&srv, "/data/x.bin", &data, &dest),
        "10m",
    );
    let v = wait_state(&fake, &id, &["failed", "succeeded"]);
    assert_eq!(v["state"], "failed", "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("signature does not verify against the pinned coordinator CA"),
        "{v}"
    );
    assert!(v["started_ms"].is_null(), "it never ran: {v}");
    assert!(srv.hits().is_empty());
    assert!(!dest.exists());
    agent.kill();
}
