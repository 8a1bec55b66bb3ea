//! Smoke test of `persona-loadgen` (issue 9): 50 simulated agents for 20 s against a real
//! coordinator on loopback, and not one batch lost or stored twice, no reconnect, and
//! every agent's command-key pin answered on its control stream as a real agent does.
//!
//! It checks the tool and the ingest path at a small scale on every CI run; the fleet
//! figures themselves (10,000 agents, latency, memory) are benchmarks
//! (`bench/run-all.sh`), never asserted here. Only counts are checked, no timings: the
//! one time bound is a generous limit on the whole run, so a hang fails instead of
//! blocking CI.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use persona_tests::{Coord, bin, kill9};
use serde_json::Value;

const AGENTS: u64 = 50;
const SECONDS: u64 = 20;
const SERIES: u64 = 40;

#[test]
fn fifty_agents_for_twenty_seconds_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(&dir.path().join("coord"), 0, 0, &[]);
    let out_path = dir.path().join("loadgen.json");
    let mut child = Command::new(bin("persona-loadgen"))
        .arg("--data-dir")
        .arg(&coord.data_dir)
        .args(["--agents", &AGENTS.to_string()])
        .args(["--ramp", "50"])
        .args(["--seconds", &SECONDS.to_string()])
        .args(["--source-ips", "5"])
        .arg("--json")
        .env("PERSONA_LOG", "warn")
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // 1 s ramp + 20 s + the final drain and check; a busy 2-core box gets a wide margin.
    let limit = Duration::from_secs(180);
    let end = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > end {
            kill9(&mut child);
            panic!("persona-loadgen did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "persona-loadgen failed: {status}");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&out_path).unwrap())
        .expect("one JSON document on stdout");

    assert_eq!(doc["agents"], AGENTS);
    assert_eq!(doc["agents_unfinished"], 0, "{doc}");
    assert_eq!(doc["lost_batches"], 0, "{doc}");
    assert_eq!(doc["duplicated_or_unexpected_batches"], 0, "{doc}");
    assert_eq!(doc["errors"], 0, "{doc}");
    assert_eq!(doc["reconnects"], 0, "{doc}");
    assert_eq!(doc["rejected"], 0, "{doc}");
    // Each simulated agent read its control stream as a real one does: the command-key
    // pin every agent gets at its first Hello was verified and answered, no model was
    // pushed (Hello names the shipped model) and no command failed to verify.
    assert_eq!(doc["control"]["key_pins_acked"], AGENTS, "{doc}");
    assert_eq!(doc["control"]["model_pushes"], 0, "{doc}");
    assert_eq!(doc["control"]["commands_bad"], 0, "{doc}");
    let pins = coord.ctl(&["commands", "list", "--limit", "500"]);
    let done = pins["commands"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "pin_command_key" && c["state"] == "succeeded")
        .count() as u64;
    assert_eq!(
        done, AGENTS,
        "the coordinator saw every pin succeed: {pins}"
    );
    // Every agent delivers at least one full 10 s batch in 20 s, and the coordinator's
    // own counters saw those values.
    let acked = doc["batches_acked"].as_u64().unwrap();
    assert!(acked >= AGENTS, "only {acked} batches acknowledged: {doc}");
    let status = coord.status();
    let samples = status["samples"].as_u64().unwrap();
    assert!(
        samples >= AGENTS * SERIES * 10,
        "coordinator stored {samples} values: {status}"
    );
    assert!(
        doc["ack_latency_ms"]["p99"].is_number(),
        "no ack latency measured: {doc}"
    );
}
