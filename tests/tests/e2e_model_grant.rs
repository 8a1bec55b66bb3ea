//! End to end: a mirror model push needs a signed `model_update` command, and an agent
//! whose local policy denies model updates keeps its model.
//!
//! The real coordinator trains a model and the real agent connects with the built-in
//! one. The coordinator first submits the signed command (visible in `personactl
//! commands`); the agent's policy refuses it, so the coordinator never sends the bytes,
//! `personactl agents show` reports the refusal, and the agent runs the built-in model
//! and has written no model file. (The allowed path is `e2e_mirror`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use persona_tests::{Agent, Coord, wait_for};
use serde_json::Value;

#[test]
fn a_push_the_agent_policy_does_not_grant_is_never_installed() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(&dir.path().join("coord"), 0, 0, &[]);
    let trained = coord.train_mirror("5")["mirror"]["report"]["version"]
        .as_str()
        .unwrap()
        .to_owned();
    let (token, ca) = coord.token(&[]);
    let mut agent = Agent::enroll(dir.path(), "a1", &coord, &token, &ca);
    // A policy that allows something else, but not model updates.
    agent.write_policy("[actions]\nconfig_update = true\n");
    agent.start();

    let cmd = wait_for(
        Duration::from_secs(90),
        "the model_update command to fail",
        || {
            let list = coord.ctl(&["commands", "list", "--agent", &agent.id]);
            list["commands"]
                .as_array()?
                .iter()
                .find(|c| c["kind"] == "model_update" && c["state"] == "failed")
                .cloned()
        },
    );
    assert!(
        cmd["message"]
            .as_str()
            .unwrap_or("")
            .contains("actions.model_update"),
        "{cmd}"
    );
    assert_eq!(
        cmd["action"]["ModelUpdate"]["version"],
        Value::from(trained.clone())
    );
    let m = wait_for(Duration::from_secs(30), "the refusal to be shown", || {
        let m = coord.ctl(&["agents", "show", &agent.id])["mirror_model"].clone();
        (m["accepted"] == Value::Bool(false)).then_some(m)
    });
    assert_eq!(m["offered"], Value::from(trained.clone()), "{m}");
    assert_eq!(m["current"], Value::from(trained.clone()), "{m}");
    assert_ne!(m["running"], Value::from(trained.clone()), "{m}");
    assert!(
        m["message"]
            .as_str()
            .unwrap_or("")
            .contains(cmd["id"].as_str().unwrap()),
        "{m}"
    );
    // Exactly one command for the model, and the agent wrote no model file.
    let list = coord.ctl(&["commands", "list", "--agent", &agent.id]);
    let n = list["commands"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "model_update")
        .count();
    assert_eq!(n, 1, "{list}");
    assert!(!agent.state_dir.join("models/current.bin").exists());
    let log = std::fs::read_to_string(agent.state_dir.with_extension("agent.log")).unwrap();
    assert!(!log.contains("mirror model updated"), "{log}");
}
