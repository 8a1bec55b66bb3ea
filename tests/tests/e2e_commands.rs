//! The command channel with real parts: the real coordinator and agent binaries over
//! QUIC, `personactl commands` to drive them, and a file server on loopback whose held
//! responses keep a command running for as long as a test needs.
//!
//! It shows that a config update is applied and reported; that a command resent after a
//! reconnect runs once; that a command cancelled before delivery is never delivered and
//! a running one stops; that an expired command never runs (on either side); and that a
//! coordinator holding the TLS keys but not the CA key cannot get a command executed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use persona_tests::fileserver::{FileServer, Mode, sha256_hex};
use persona_tests::{Agent, Coord, terminate, wait_for};
use serde_json::{Value, json};
use tempfile::TempDir;

fn files_policy(srv: &FileServer, dest: &Path) -> String {
    format!(
        "[actions]\nconfig_update = true\n[files]\nurl_prefixes = [\"http://{}/data/\"]\ndestinations = [{:?}]\nmax_bytes = 10000000\n",
        srv.addr,
        dest.display().to_string()
    )
}

/// A temporary directory holding a coordinator (in `coord/`) and one enrolled agent, not
/// started, whose policy allows config updates, and files from the returned server into
/// the returned `dest/` directory.
fn rig() -> (TempDir, Coord, Agent, FileServer, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(&dir.path().join("coord"), 0, 0, &[]);
    let (token, ca_hash) = coord.token(&[]);
    let agent = Agent::enroll(dir.path(), "agent", &coord, &token, &ca_hash);
    let srv = FileServer::start();
    let dest_dir = dir.path().join("dest");
    std::fs::create_dir(&dest_dir).unwrap();
    agent.write_policy(&files_policy(&srv, &dest_dir));
    (dir, coord, agent, srv, dest_dir)
}

/// Kills the agent and waits until the coordinator no longer lists it as connected.
fn stop_and_wait_disconnected(coord: &Coord, agent: &mut Agent) {
    agent.kill();
    wait_for(Duration::from_secs(60), "agent disconnected", || {
        let v = coord.ctl(&["agents", "list"]);
        (v["agents"][0]["state"] != "connected").then_some(())
    });
}

fn send(coord: &Coord, agent: &str, action: &Value, ttl: &str) -> String {
    coord.send_command(agent, action, Some(ttl))
}

/// Sends `action` with 10 minutes to live and waits until it succeeded or failed.
fn outcome(coord: &Coord, agent: &str, action: &Value) -> Value {
    let id = send(coord, agent, action, "10m");
    coord.wait_command(&id, &["succeeded", "failed"])
}

/// Asserts a finished command's state, and that its message says `text`.
#[track_caller]
fn assert_finished(v: &Value, state: &str, text: &str) {
    assert_eq!(v["state"], state, "{v}");
    assert!(v["message"].as_str().unwrap().contains(text), "{v}");
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
    let (_dir, mut coord, mut agent, srv, dest_dir) = rig();
    let cdir = coord.data_dir.clone();
    agent.start();
    coord.wait_connected(&agent.id);

    // A live config update, applied and reported.
    let v = outcome(
        &coord,
        &agent.id,
        &json!({"ConfigUpdate": {"sample_interval_ms": 500, "batch_interval_s": 5}}),
    );
    assert_finished(&v, "succeeded", "sample_interval_ms = 500");
    assert_eq!(v["kind"], "config_update");
    // Out of range: refused by the agent's checks.
    let v = outcome(
        &coord,
        &agent.id,
        &json!({"ConfigUpdate": {"sample_interval_ms": 5, "batch_interval_s": null}}),
    );
    assert_finished(&v, "failed", "outside");
    // A genuine resize that the VM's policy does not allow: refused, nothing changes.
    let v = outcome(
        &coord,
        &agent.id,
        &json!({"Resize": {"vcpus": 1, "memory_mib": null, "disk": null, "net": null, "allow_restart": false}}),
    );
    assert_finished(&v, "failed", "actions.resize");

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
    let v = coord.wait_command(&id, &["running"]);
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
    coord.wait_connected(&agent.id);
    // Resent on the new connection (at least once), acknowledged, not run again.
    wait_for(Duration::from_secs(30), "the resend", || {
        (coord.command(&id)["attempts"].as_i64().unwrap_or(0) >= 2).then_some(())
    });
    srv.release();
    let v = coord.wait_command(&id, &["succeeded", "failed"]);
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
    agent.set_policy(&files_policy(&srv2, &dest_dir));
    let dest2 = dest_dir.join("held.bin");
    let id = send(
        &coord,
        &agent.id,
        &file_action(&srv2, "/data/held.bin", &data2, &dest2),
        "30m",
    );
    coord.wait_command(&id, &["running"]);
    wait_for(Duration::from_secs(30), "the held download", || {
        (!srv2.hits_of("/data/held.bin").is_empty()).then_some(())
    });
    let c = coord.ctl(&["commands", "cancel", &id]);
    assert_eq!(c["cancel"], "requested", "{c}");
    let cancel_id = c["cancel_command"].as_str().unwrap().to_owned();
    coord.wait_command(&cancel_id, &["succeeded"]);
    srv2.release();
    let v = coord.wait_command(&id, &["cancelled", "succeeded", "failed"]);
    assert_eq!(v["state"], "cancelled", "{v}");
    assert!(!dest2.exists());

    // Cancelled before delivery: never delivered, even once the agent is back.
    stop_and_wait_disconnected(&coord, &mut agent);
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
    coord.wait_connected(&agent.id);
    let before = coord.command(&id);
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
    let (_dir, coord, mut agent, srv, dest_dir) = rig();
    agent.start();
    coord.wait_connected(&agent.id);

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
    coord.wait_command(&id1, &["running"]);
    let late_dest = dest_dir.join("late.bin");
    let id2 = send(
        &coord,
        &agent.id,
        &file_action(&srv, "/data/late.bin", &late, &late_dest),
        "2s",
    );
    let expires = coord.command(&id2)["expires_ms"].as_i64().unwrap();
    wait_for(
        Duration::from_secs(30),
        "the second command's expiry",
        || (persona_coordinator::store::now_ms() > expires + 500).then_some(()),
    );
    srv.release();
    coord.wait_command(&id1, &["succeeded"]);
    let v = coord.wait_command(&id2, &["expired", "succeeded", "failed"]);
    assert_eq!(v["state"], "expired", "{v}");
    assert!(srv.hits_of("/data/late.bin").is_empty());
    assert!(!late_dest.exists());

    // Expired while the agent is away: never sent.
    stop_and_wait_disconnected(&coord, &mut agent);
    let id3 = send(
        &coord,
        &agent.id,
        &file_action(&srv, "/data/late.bin", &late, &late_dest),
        "1s",
    );
    coord.wait_command(&id3, &["expired"]);
    agent.start();
    coord.wait_connected(&agent.id);
    // Give the delivery task a few polls to (wrongly) send it.
    let settle = std::time::Instant::now() + Duration::from_secs(3);
    wait_for(Duration::from_secs(10), "delivery polls", || {
        (std::time::Instant::now() > settle).then_some(())
    });
    let v = coord.command(&id3);
    assert_eq!(v["state"], "expired");
    assert_eq!(v["attempts"], 0, "{v}");
    assert!(srv.hits_of("/data/late.bin").is_empty());
    agent.kill();
}

/// Copies the files of a coordinator's data dir into a new private (0700) one.
fn copy_dir(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700)).unwrap();
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
    let (_dir, mut real, mut agent, srv, dest_dir) = rig();
    let real_dir = real.data_dir.clone();
    let data = body(5000);
    srv.add("/data/x.bin", data.clone(), Mode::Normal);
    let quic_port = real.quic.port();
    assert!(terminate(&mut real.child, Duration::from_secs(20)));

    // The impostor: the same database, server certificate and key, CA certificate, but
    // a CA private key of its own.
    let fake_dir = real_dir.with_file_name("impostor");
    copy_dir(&real_dir, &fake_dir);
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(fake_dir.join("ca.key"), other.serialize_pem()).unwrap();
    let fake = Coord::start(&fake_dir, quic_port, 0, &[]);
    agent.start();
    fake.wait_connected(&agent.id);
    let dest = dest_dir.join("x.bin");
    let v = outcome(
        &fake,
        &agent.id,
        &file_action(&srv, "/data/x.bin", &data, &dest),
    );
    assert_finished(
        &v,
        "failed",
        "signature does not verify against the key this agent trusts for commands",
    );
    assert!(v["started_ms"].is_null(), "it never ran: {v}");
    assert!(srv.hits().is_empty());
    assert!(!dest.exists());
    agent.kill();
}

/// The agent's pinned command key, as `persona-agent` wrote it (hex of the SEC1 point).
fn pinned_key(agent: &Agent) -> Option<String> {
    std::fs::read_to_string(agent.state_dir.join("command-key.pub"))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Waits until the coordinator records that `agent` pinned a key other than `not`, and
/// returns that fingerprint.
fn wait_pinned(coord: &Coord, agent: &str, not: Option<&str>) -> String {
    wait_for(Duration::from_secs(60), "the command key pinned", || {
        let v = coord.ctl(&["agents", "show", agent]);
        v["command_key"]
            .as_str()
            .filter(|fp| Some(*fp) != not)
            .map(str::to_owned)
    })
}

/// Issue 18 item 17: commands are signed by a key of their own, not the TLS CA. The
/// agent pins it on first contact; a coordinator holding the CA key (stolen) but not
/// the command key gets nothing run; a rotation re-pins the agent with a command signed
/// by the old key; and with `ca.key` taken offline, commands still work while
/// enrollment is refused without using up the token.
#[test]
fn the_command_key_is_pinned_rotated_and_outlives_a_stolen_ca_key() {
    let (_dir, mut real, mut agent, srv, dest_dir) = rig();
    let real_dir = real.data_dir.clone();
    let quic_port = real.quic.port();
    // The thief's copy, taken before the agent first connected: the CA key, the TLS
    // keys and the database, but not the command key (it will make its own).
    assert!(terminate(&mut real.child, Duration::from_secs(20)));
    let thief_dir = real_dir.with_file_name("thief");
    copy_dir(&real_dir, &thief_dir);
    std::fs::remove_file(thief_dir.join("command.key")).unwrap();
    let mut real = Coord::start(&real_dir, quic_port, 0, &[]);

    // First contact: the agent pins the command key, signed by the CA it trusts.
    agent.start();
    real.wait_connected(&agent.id);
    let first = wait_pinned(&real, &agent.id, None);
    assert!(first.starts_with("sha256:") && first.len() == 71, "{first}");
    let on_disk = pinned_key(&agent).expect("command-key.pub written");
    assert_eq!(on_disk.len(), 130);
    let pins = real.ctl(&["commands", "list", "--agent", &agent.id]);
    let pin = pins["commands"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "pin_command_key")
        .cloned()
        .expect("a pin command");
    assert_eq!(pin["state"], "succeeded", "{pin}");
    assert!(pin["message"].as_str().unwrap().contains(&first), "{pin}");
    // Commands after the pin are signed with the command key and run.
    let v = outcome(
        &real,
        &agent.id,
        &json!({"ConfigUpdate": {"sample_interval_ms": 500, "batch_interval_s": null}}),
    );
    assert_finished(&v, "succeeded", "sample_interval_ms = 500");
    // personactl cannot pin a key of its own choosing.
    let out = real.ctl_output(&[
        "commands",
        "send",
        "--agent",
        &agent.id,
        "--action",
        &json!({"PinCommandKey": {"public_key": vec![4u8; 65]}}).to_string(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sent by the coordinator itself"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The thief answers on the coordinator's address with the CA key: its pin and its
    // commands are signed by the CA, which the agent no longer accepts.
    assert!(terminate(&mut real.child, Duration::from_secs(20)));
    let thief = Coord::start(&thief_dir, quic_port, 0, &[]);
    thief.wait_connected(&agent.id);
    let data = body(5000);
    srv.add("/data/x.bin", data.clone(), Mode::Normal);
    let dest = dest_dir.join("x.bin");
    let v = outcome(
        &thief,
        &agent.id,
        &file_action(&srv, "/data/x.bin", &data, &dest),
    );
    assert_finished(&v, "failed", "does not verify");
    assert!(v["started_ms"].is_null(), "it never ran: {v}");
    assert!(srv.hits().is_empty() && !dest.exists());
    let thief_pin = thief.ctl(&["commands", "list", "--agent", &agent.id])["commands"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "pin_command_key")
        .cloned()
        .expect("the thief tried to pin its key");
    let thief_pin = thief.wait_command(thief_pin["id"].as_str().unwrap(), &["failed"]);
    assert!(
        thief_pin["message"]
            .as_str()
            .unwrap()
            .contains("does not verify"),
        "{thief_pin}"
    );
    assert_eq!(pinned_key(&agent).as_deref(), Some(on_disk.as_str()));
    drop(thief);

    // Rotation, with the CA key offline from now on.
    let out = std::process::Command::new(persona_tests::bin("persona-coordinator"))
        .args(["rotate-command-key", "--data-dir"])
        .arg(&real_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(printed.contains(&first), "{printed}");
    std::fs::rename(
        real_dir.join("ca.key"),
        real_dir.with_file_name("ca.key.offline"),
    )
    .unwrap();
    real = Coord::start(&real_dir, quic_port, 0, &[]);
    real.wait_connected(&agent.id);
    let second = wait_pinned(&real, &agent.id, Some(&first));
    assert!(printed.contains(&second), "{printed}");
    assert_ne!(pinned_key(&agent).as_deref(), Some(on_disk.as_str()));
    let v = outcome(
        &real,
        &agent.id,
        &json!({"ConfigUpdate": {"sample_interval_ms": 1000, "batch_interval_s": null}}),
    );
    assert_finished(&v, "succeeded", "sample_interval_ms = 1000");

    // Enrollment needs the CA key: refused, and the token is not used up.
    let (token, ca_hash) = real.token(&[]);
    let out = real
        .enroll_command(&real_dir.with_file_name("late-agent"), &token, &ca_hash)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("offline"), "{err}");
    let tokens = real.ctl(&["token", "list"]);
    let newest = &tokens["tokens"][0];
    assert_eq!(newest["used"], 0, "{tokens}");
    assert_eq!(real.status()["rejected"]["enrollment_offline"], 1);
    agent.kill();
}
