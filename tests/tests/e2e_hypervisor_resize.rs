//! A resize of a VM served by an outside actuator runs in the coordinator, not in the
//! agent: the real coordinator, configured with an `[[actuator]]` entry for an enrolled
//! agent (the `exec` actuator, driving a small cloud-CLI script), takes the command from
//! `personactl commands send`, applies it, reads the new size back and records the
//! command as succeeded. The agent is never started, so nothing but the coordinator can
//! have run it.

use std::os::unix::fs::PermissionsExt;

use persona_tests::{Agent, Coord};

/// A fake cloud CLI keeping the VM's vCPU count in a state file beside it (the one
/// coordinator/tests/actuate_exec.rs drives directly).
const CLI: &str = include_str!("../../coordinator/tests/fixtures/cloud-cli.sh");

#[test]
fn hypervisor_resize_runs_in_the_coordinator_and_is_verified() {
    let dir = tempfile::tempdir().unwrap();
    let cdir = dir.path().join("coord");
    let mut coord = Coord::start(&cdir, 0, 0, &[]);
    let (token, ca_hash) = coord.token(&[]);
    let agent = Agent::enroll(dir.path(), "agent", &coord, &token, &ca_hash);
    coord.kill();

    let cli = dir.path().join("cloud-cli");
    std::fs::write(&cli, format!("#!/bin/sh\n{CLI}")).unwrap();
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
    let id = coord.send_command(&agent.id, &action, Some("5m"));
    let done = coord.wait_command(&id, &["succeeded", "failed", "expired"]);
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
