//! A resize of a VM served by an outside actuator runs in the coordinator, not in the
//! agent: the real coordinator, configured with an `[[actuator]]` entry for an enrolled
//! agent (the `exec` actuator, driving a small cloud-CLI script), takes the command from
//! `personactl commands send`, applies it, reads the new size back and records the
//! command as succeeded. The agent is never started, so nothing but the coordinator can
//! have run it.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use persona_tests::{Agent, Coord, wait_for};

/// A fake cloud CLI keeping the VM's vCPU count in a state file beside it.
const CLI: &str = r#"#!/bin/sh
state="$(dirname "$0")/vcpus"
input=$(cat)
op=$(printf '%s' "$input" | sed -n 's/.*"op":"\([a-z]*\)".*/\1/p')
case "$op" in
  apply)
    v=$(printf '%s' "$input" | sed -n 's/.*"vcpus":\([0-9]*\).*/\1/p')
    printf '%s' "$v" > "$state"
    printf '{"applied":["instance resized to %s vCPUs"],"observed_vcpus":%s}' "$v" "$v"
    ;;
  query)
    printf '{"vcpus":%s,"max_vcpus":64}' "$(cat "$state" 2>/dev/null || echo 2)"
    ;;
  *) echo "unknown op $op" >&2; exit 2 ;;
esac
"#;

#[test]
fn hypervisor_resize_runs_in_the_coordinator_and_is_verified() {
    let dir = tempfile::tempdir().unwrap();
    let cdir = dir.path().join("coord");
    let mut coord = Coord::start(&cdir, 0, 0, &[]);
    let (token, ca_hash) = coord.token(&[]);
    let agent = Agent::enroll(dir.path(), "agent", &coord, &token, &ca_hash);
    coord.kill();

    let cli = dir.path().join("cloud-cli");
    std::fs::write(&cli, CLI).unwrap();
    std::fs::set_permissions(&cli, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = dir.path().join("coordinator.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[actuator]]\nagent = \"{}\"\n[actuator.exec]\nprogram = \"{}\"\nlive = [\"vcpus_up\", \"vcpus_down\"]\nverify_timeout_ms = 10000\n",
            agent.id,
            cli.display()
        ),
    )
    .unwrap();
    let coord = Coord::start(&cdir, 0, 0, &["--config", cfg.to_str().unwrap()]);
    let action = serde_json::json!({"Resize": {"vcpus": 6, "memory_mib": null, "disk": null,
        "net": null, "allow_restart": false}});
    let v = coord.ctl(&[
        "commands",
        "send",
        "--agent",
        &agent.id,
        "--action",
        &action.to_string(),
        "--ttl",
        "5m",
    ]);
    let id = v["id"].as_str().unwrap().to_owned();
    let done = wait_for(Duration::from_secs(60), "resize finished", || {
        let c = coord.ctl(&["commands", "show", &id]);
        let s = c["state"].as_str().unwrap_or("").to_owned();
        matches!(s.as_str(), "succeeded" | "failed" | "expired").then_some(c)
    });
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(
        done["message"].as_str().unwrap_or("").contains("verified"),
        "{done}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("vcpus")).unwrap(),
        "6"
    );
}
