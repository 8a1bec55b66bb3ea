//! End to end: behavioural mirroring with the real binaries.
//!
//! - Real load moves the mirror distribution the right way: `persona-agent observe` (the
//!   shipped model, no coordinator) watches this machine at rest and then under each of
//!   the load generators of `persona_tests::load`; the share of the personas that load
//!   stands for must grow. The comparison is relative (rest, then load, back to back),
//!   because other work on a shared test machine shows up in both.
//! - A model trained on the coordinator (`personactl model train --only mirror`) is pushed
//!   to a running agent, which takes it, persists it and announces it in Hello after a
//!   restart; a second model reaches the still-connected agent at once; when the agent's
//!   current model file is damaged, it rolls back to the previous one at start and the
//!   coordinator brings it up to date again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use persona_tests::load::Load;
use persona_tests::{Agent, Coord, bin, wait_for};
use serde_json::Value;

/// Runs `persona-agent observe --seconds N --json` and returns the mirror distribution.
fn observe(seconds: u64) -> Vec<(String, f64)> {
    let out = Command::new(bin("persona-agent"))
        .args(["observe", "--seconds", &seconds.to_string(), "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "observe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let list: Vec<(String, f64)> = v["mirror"]
        .as_array()
        .expect("mirror list")
        .iter()
        .map(|p| {
            (
                p["slug"].as_str().unwrap().to_owned(),
                p["probability"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(list.len(), 10, "{v}");
    assert!(
        list.windows(2).all(|w| w[0].1 >= w[1].1),
        "not sorted: {list:?}"
    );
    let sum: f64 = list.iter().map(|p| p.1).sum();
    assert!((sum - 1.0).abs() < 1e-3, "sum {sum}");
    assert!(v["mirror_model"].as_str().unwrap().starts_with("mirror-"));
    list
}

fn share(d: &[(String, f64)], set: &[&str]) -> f64 {
    d.iter()
        .filter(|(s, _)| set.contains(&s.as_str()))
        .map(|p| p.1)
        .sum()
}

/// One load against rest: observe at rest, then under load, and compare the share of
/// `set`. Retried (bounded) because a neighbour's burst can land in either window.
fn moves_towards(what: &str, set: &[&str], start: &dyn Fn() -> Load) {
    let mut seen = Vec::new();
    for _ in 0..3 {
        let rest = observe(12);
        let load = start();
        // Let the load ramp up before the window starts.
        std::thread::sleep(Duration::from_secs(2));
        let busy = observe(12);
        let report = load.stop();
        assert!(report.work > 0, "{what}: the load did nothing");
        let (a, b) = (share(&rest, set), share(&busy, set));
        eprintln!("{what}: share of {set:?} at rest {a:.3}, under load {b:.3}");
        if b > a + 0.02 {
            return;
        }
        seen.push((a, b, rest, busy));
    }
    panic!("{what}: the share of {set:?} did not grow under load: {seen:?}");
}

#[test]
fn real_load_moves_the_mirror_distribution() {
    let dir = tempfile::tempdir().unwrap();
    let cpus = std::thread::available_parallelism().map_or(2, usize::from);
    let max = Duration::from_secs(40);
    moves_towards(
        "cpu burner",
        &[
            "media-render",
            "ci-runner",
            "etl-analytics",
            "data-scientist-ml",
            "hft-modeler",
        ],
        &|| Load::cpu(cpus, max),
    );
    moves_towards("fsync writer", &["database-oltp", "etl-analytics"], &|| {
        Load::fsync_writes(dir.path(), 2, 4096, max)
    });
    moves_towards(
        "loopback flood",
        &["web-server", "database-oltp", "fullstack-developer"],
        &|| Load::loopback_flood(None, max),
    );
    // Half of the memory available now, at most 12 GiB: the persona levels are in GiB,
    // so a small hog on a large machine hardly moves them.
    let available = persona_tests::load::meminfo().map_or(2 << 30, |(a, _)| a as usize);
    moves_towards(
        "memory hog",
        &[
            "data-scientist-ml",
            "etl-analytics",
            "database-oltp",
            "media-render",
        ],
        &|| Load::memory((available / 2).min(12 << 30), max),
    );
}

fn agent_model(coord: &Coord, id: &str) -> Value {
    coord.ctl(&["agents", "show", id])["mirror_model"].clone()
}

fn train(coord: &Coord, seed: &str) -> String {
    let v = coord.train_mirror(seed);
    let version = v["mirror"]["report"]["version"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(version.starts_with("mirror-"), "{v}");
    assert_eq!(
        v["mirror"]["model"]["version"],
        Value::from(version.clone())
    );
    assert_eq!(
        v["mirror"]["model"]["sha256"].as_str().unwrap().len(),
        64,
        "{v}"
    );
    version
}

fn log_of(agent: &Agent) -> String {
    std::fs::read_to_string(agent.state_dir.with_extension("agent.log")).unwrap_or_default()
}

fn damage(path: &Path) {
    let mut b = std::fs::read(path).unwrap();
    let n = b.len();
    b.truncate(n / 2);
    std::fs::write(path, b).unwrap();
}

#[test]
fn pushed_models_are_used_persisted_and_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(&dir.path().join("coord"), 0, 0, &[]);
    let first = train(&coord, "7");
    let (token, ca) = coord.token(&[]);
    let mut agent = Agent::enroll(dir.path(), "a1", &coord, &token, &ca);
    // A policy that allows signed model updates (the default denies them, and a push is
    // installed only after its signed `model_update` command ran).
    agent.write_policy("[actions]\nmodel_update = true\n");
    agent.start();

    // The agent says Hello with the built-in model, gets the trained one and takes it
    // after the signed model_update command that authorises it succeeded.
    let m = wait_for(
        Duration::from_secs(90),
        "the agent to run the first model",
        || {
            let m = agent_model(&coord, &agent.id);
            (m["running"].as_str() == Some(first.as_str()) && m["accepted"] == Value::Bool(true))
                .then_some(m)
        },
    );
    assert_eq!(m["current"], Value::from(first.clone()));
    let grants = coord.ctl(&["commands", "list", "--agent", &agent.id]);
    let grants: Vec<&Value> = grants["commands"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "model_update")
        .collect();
    assert_eq!(grants.len(), 1, "one signed command per model: {grants:?}");
    assert_eq!(grants[0]["state"], "succeeded", "{grants:?}");
    let current = agent.state_dir.join("models/current.bin");
    assert!(current.exists());

    // A new model reaches the connected agent without a reconnect.
    let second = train(&coord, "8");
    assert_ne!(first, second);
    wait_for(
        Duration::from_secs(60),
        "the agent to run the second model",
        || {
            let m = agent_model(&coord, &agent.id);
            (m["running"].as_str() == Some(second.as_str())
                && m["offered"].as_str() == Some(second.as_str()))
            .then_some(())
        },
    );
    assert!(agent.state_dir.join("models/previous.bin").exists());

    // Restart: the agent starts with the model it kept and announces it in Hello.
    agent.kill();
    agent.start();
    wait_for(Duration::from_secs(60), "Hello with the kept model", || {
        log_of(&agent)
            .matches("mirror model loaded")
            .count()
            .ge(&2)
            .then_some(())
    });
    let log = log_of(&agent);
    assert!(log.contains(&second), "{log}");

    // Damage the current model file: at start the agent rolls back to the previous one,
    // and the coordinator (which serves the second) brings it up to date again.
    agent.kill();
    damage(&current);
    agent.start();
    wait_for(Duration::from_secs(60), "the roll-back", || {
        log_of(&agent)
            .contains("rolled back to the previous one")
            .then_some(())
    });
    wait_for(
        Duration::from_secs(90),
        "the agent to be brought up to date",
        || {
            let m = agent_model(&coord, &agent.id);
            (m["running"].as_str() == Some(second.as_str()) && m["accepted"] == Value::Bool(true))
                .then_some(())
        },
    );
    let log = log_of(&agent);
    assert!(
        log.contains(&first),
        "the roll-back ran the first model: {log}"
    );
}
