//! `persona-coordinator` as a user meets it: `serve` creates its data directory with
//! private files, then stops cleanly on SIGTERM; a bad argument gives a clear error and a
//! non-zero exit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn serve_creates_a_private_data_dir_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_persona-coordinator"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    while !data.join("serving.json").exists() {
        assert!(Instant::now() < end, "coordinator did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for f in [
        "ca.key",
        "ca.pem",
        "server.key",
        "admin.token",
        "persona.db",
    ] {
        let mode = std::fs::metadata(data.join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{f} is readable by others");
    }
    sigterm(child.id());
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "exit status {st}");
            break;
        }
        assert!(Instant::now() < end, "no clean exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM through the `kill` command, to keep this crate free of a signal dependency.
fn sigterm(pid: u32) {
    let st = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn serve_refuses_a_bad_interval() {
    let out = Command::new(env!("CARGO_BIN_EXE_persona-coordinator"))
        .args(["serve", "--sample-interval-ms", "5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sample-interval-ms"));
}
