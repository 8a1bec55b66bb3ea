//! `personactl` as a user meets it: bad arguments and a missing token give clear errors
//! and a non-zero exit. (`persona-coordinator serve` is tested in coordinator-bin.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn personactl_without_a_token_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_personactl"))
        .args(["agents", "list", "--data-dir"])
        .arg(dir.path())
        .env_remove("PERSONA_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("admin.token") && err.contains("PERSONA_TOKEN"),
        "{err}"
    );
}

#[test]
fn personactl_rejects_a_bad_duration() {
    let out = Command::new(env!("CARGO_BIN_EXE_personactl"))
        .args(["series", "a-1", "cpu.user_ratio", "--since", "ten minutes"])
        .env("PERSONA_TOKEN", "x")
        .env("PERSONA_API", "127.0.0.1:9")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad duration"));
}
