//! The `exec` actuator against real programs (small sh scripts written to a temp dir):
//! success with verification through the program's `query`, failure with its stderr in
//! the error, a timeout that kills the program's whole process group, and a change that
//! needs a restart held back without the operator's opt-in.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use persona_coordinator::actuate::exec::ExecConfig;
use persona_coordinator::actuate::{ActuateError, ActuatorConfig, apply_resize};
use persona_shared::resize::{ChangeKind, ResizeRequest};

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// A fake cloud CLI that keeps the VM's vCPU count in a state file: `apply` writes the
/// requested count, `query` reports it.
const CLI: &str = include_str!("fixtures/cloud-cli.sh");

fn resize(vcpus: u32) -> ResizeRequest {
    ResizeRequest {
        vcpus: Some(vcpus),
        ..ResizeRequest::default()
    }
}

fn live_cfg(program: PathBuf) -> ActuatorConfig {
    ActuatorConfig::Exec(ExecConfig {
        live: vec![ChangeKind::VcpusUp, ChangeKind::VcpusDown],
        verify_timeout_ms: 5_000,
        ..ExecConfig::new(program)
    })
}

#[tokio::test]
async fn success_is_verified_through_the_programs_query() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cli = script(dir.path(), "cli", CLI);
    let out = apply_resize(&live_cfg(cli), &resize(4))
        .await
        .expect("apply");
    assert!(out.verified, "{out:?}");
    assert_eq!(out.applied, ["instance resized to 4 vCPUs"]);
    assert_eq!(out.observed_vcpus, Some(4));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("vcpus")).expect("state"),
        "4"
    );
}

#[tokio::test]
async fn failure_carries_the_programs_stderr() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cli = script(
        dir.path(),
        "cli",
        r#"input=$(cat)
case "$input" in
  *'"op":"query"'*) printf '{"vcpus":2}' ;;
  *) echo "InsufficientInstanceCapacity: no m7i.xlarge in us-east-1a" >&2; exit 3 ;;
esac
"#,
    );
    let e = apply_resize(&live_cfg(cli), &resize(4))
        .await
        .expect_err("exit 3");
    assert!(matches!(e, ActuateError::Refused { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("InsufficientInstanceCapacity") && msg.contains("exit status: 3"),
        "{msg}"
    );
    // Bad stdout is a protocol error, not a success.
    let cli = script(dir.path(), "garbage", "cat >/dev/null; echo 'not json'\n");
    let e = apply_resize(&live_cfg(cli), &resize(4))
        .await
        .expect_err("garbage");
    assert!(matches!(e, ActuateError::Protocol { .. }), "{e}");
}

#[tokio::test]
async fn timeout_kills_the_program_and_its_children() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("child.pid");
    let cli = script(
        dir.path(),
        "slow",
        &format!(
            "cat >/dev/null\nsleep 300 &\necho $! > {}\nwait\n",
            pidfile.display()
        ),
    );
    let cfg = ActuatorConfig::Exec(ExecConfig {
        timeout_ms: 1_000,
        ..ExecConfig::new(cli)
    });
    // The first call the actuator makes is `query` (to plan): it is the one that times out.
    let started = Instant::now();
    let e = apply_resize(&cfg, &resize(4)).await.expect_err("timeout");
    assert!(matches!(e, ActuateError::Timeout { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_secs(60), "bounded");
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .expect("the script started its child")
        .trim()
        .parse()
        .expect("pid");
    // The sleep was in the script's process group: it is gone (or a zombie awaiting
    // its reaper) within a bounded wait.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next());
        if stat.is_empty() || state == Some("Z") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "child {pid} still running: {stat}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn restart_changes_wait_for_the_opt_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cli = script(dir.path(), "cli", CLI);
    // By default every change of an exec actuator needs a restart.
    let cfg = ActuatorConfig::Exec(ExecConfig {
        verify_timeout_ms: 2_000,
        ..ExecConfig::new(cli)
    });
    let out = apply_resize(&cfg, &resize(8)).await.expect("held back");
    assert!(!out.verified, "{out:?}");
    assert!(out.applied.is_empty(), "{out:?}");
    assert_eq!(out.needs_restart, ["vcpus 2 -> 8"]);
    assert!(
        !dir.path().join("vcpus").exists(),
        "the program was not asked to apply"
    );
    let allowed = ResizeRequest {
        allow_restart: true,
        ..resize(8)
    };
    let out = apply_resize(&cfg, &allowed).await.expect("with opt-in");
    assert!(out.verified && out.needs_restart.is_empty(), "{out:?}");
    assert_eq!(out.observed_vcpus, Some(8));
}
