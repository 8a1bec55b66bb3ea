//! Checks of what operators install and run: the systemd units (`systemd-analyze
//! verify`), the cloud-init example (`cloud-init schema`), both daemons' `/metrics` from
//! live processes (`promtool check metrics`), the two .deb files' contents, and the agent
//! .deb unpacked into a scratch root and run from there.
//!
//! The external tools come from Debian packages (systemd, cloud-init, prometheus,
//! dpkg-dev) and the .deb files from `packaging/build-debs.sh`; `.ci/run` provides all of
//! them. Locally a missing tool or package skips its test with a message saying what to
//! install; under CI (`CI=true`) it fails, so CI can never pass by skipping.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use persona_tests::{Agent, Coord, bin, scrape, wait_for};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Skips (locally) or fails (under CI) with `why`.
fn missing(why: &str) {
    assert!(!under_ci(), "required under CI (CI=true): {why}");
    eprintln!("SKIPPED: {why}");
}

/// The tool's path on PATH, or None after [`missing`].
fn require(tool: &str, package: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        missing(&format!(
            "`{tool}` is not installed (apt-get install {package})"
        ));
    }
    found
}

fn deb_dir() -> PathBuf {
    std::env::var_os("PERSONA_DEB_DIR")
        .map_or_else(|| workspace().join("target/debian"), PathBuf::from)
}

/// The newest .deb of `package` built by packaging/build-debs.sh, if any.
fn find_deb(package: &str) -> Option<PathBuf> {
    std::fs::read_dir(deb_dir()).ok().and_then(|entries| {
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
            .max()
    })
}

/// [`find_deb`], or None after [`missing`].
fn deb(package: &str) -> Option<PathBuf> {
    let found = find_deb(package);
    if found.is_none() {
        missing(&format!(
            "no {package}_*.deb in {} (run packaging/build-debs.sh)",
            deb_dir().display()
        ));
    }
    found
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let Some(analyze) = require("systemd-analyze", "systemd") else {
        return;
    };
    // A scratch root with the host's units (targets the ours refer to) plus ours, and the
    // binaries at the paths the units name: from the .debs when built, else the test
    // build's binaries.
    let root = tempfile::tempdir().unwrap();
    let units = root.path().join("lib/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    let (ok, out) = run(Command::new("cp")
        .args(["-a", "/lib/systemd/system/."])
        .arg(&units));
    assert!(ok, "copying the host's units: {out}");
    // Under CI the packaged units and binaries are what is verified.
    let pick = if under_ci() { deb } else { find_deb };
    let debs: Vec<PathBuf> = ["persona-agent", "persona-coordinator"]
        .iter()
        .filter_map(|p| pick(p))
        .collect();
    let debs = if debs.len() == 2 { debs } else { Vec::new() };
    if debs.is_empty() {
        let usr_bin = root.path().join("usr/bin");
        std::fs::create_dir_all(&usr_bin).unwrap();
        for b in ["persona-agent", "persona-actuator", "persona-coordinator"] {
            std::fs::copy(bin(b), usr_bin.join(b)).unwrap();
        }
        for u in std::fs::read_dir(workspace().join("packaging/systemd")).unwrap() {
            let u = u.unwrap().path();
            std::fs::copy(&u, units.join(u.file_name().unwrap())).unwrap();
        }
    } else {
        for d in &debs {
            let (ok, out) = run(Command::new("dpkg-deb").arg("-x").arg(d).arg(root.path()));
            assert!(ok, "dpkg-deb -x {}: {out}", d.display());
        }
    }
    let names = [
        "persona-agent.service",
        "persona-actuator.service",
        "persona-coordinator.service",
    ];
    let (ok, out) = run(Command::new(analyze)
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .args(names));
    // The host units copied in produce notes about themselves; ours must produce none.
    let ours: Vec<&str> = out.lines().filter(|l| l.starts_with("persona-")).collect();
    assert!(
        ok && ours.is_empty(),
        "systemd-analyze verify:\n{}",
        ours.join("\n")
    );
}

#[test]
fn cloud_init_user_data_passes_the_schema() {
    let Some(cloud_init) = require("cloud-init", "cloud-init") else {
        return;
    };
    let file = workspace().join("packaging/cloud-init/user-data.yaml");
    let (ok, out) = run(Command::new(cloud_init)
        .args(["schema", "--config-file"])
        .arg(&file));
    assert!(ok && out.contains("Valid cloud-config"), "{out}");
    // No long-lived secret: the token is a placeholder to replace with a short-lived one.
    let text = std::fs::read_to_string(&file).unwrap();
    for needed in [
        "persona-agent",
        "enroll",
        "--token",
        "--ca-hash",
        "[purpose]",
        "data_gb",
    ] {
        assert!(text.contains(needed), "user-data lacks {needed}");
    }
}

fn promtool_check(promtool: &Path, what: &str, text: &str) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics on the {what}'s /metrics:\n{}{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn live_metrics_pass_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(&dir.path().join("coord"), 0, 0, &[]);
    let (token, ca_hash) = coord.token(&[]);
    let mut agent = Agent::enroll(dir.path(), "vm1", &coord, &token, &ca_hash);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let agent_metrics: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let cfg = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(
        &agent.config,
        format!("metrics_listen = \"{agent_metrics}\"\n{cfg}"),
    )
    .unwrap();
    agent.start();
    // Wait for a committed batch, so the per-VM and ingest families have series.
    let coord_text = wait_for(
        Duration::from_secs(60),
        "an ingested batch in /metrics",
        || {
            let (status, body) = scrape(coord.http)?;
            (status.contains("200")
                && body.contains("persona_vm_vcpus{")
                && !body.contains("persona_batches_ingested_total 0\n"))
            .then_some(body)
        },
    );
    let agent_text = wait_for(Duration::from_secs(30), "the agent's /metrics", || {
        let (status, body) = scrape(agent_metrics)?;
        (status.contains("200") && body.contains("persona_agent_batches_acked_total 1"))
            .then_some(body)
    });
    for family in [
        "persona_agents_connected 1",
        "persona_samples_ingested_total",
        "persona_rejected_total",
        "persona_commands",
        "persona_vm_memory_bytes{",
    ] {
        assert!(
            coord_text.contains(family),
            "coordinator lacks {family}:\n{coord_text}"
        );
    }
    for family in [
        "persona_agent_outbox_pending_batches",
        "persona_agent_outbox_dropped_batches_total",
        "persona_agent_collector_errors_total{collector=\"cpu\"}",
        "persona_agent_link_connected 1",
        "process_resident_memory_bytes",
    ] {
        assert!(
            agent_text.contains(family),
            "agent lacks {family}:\n{agent_text}"
        );
    }
    let Some(promtool) = require("promtool", "prometheus") else {
        return;
    };
    promtool_check(&promtool, "coordinator", &coord_text);
    promtool_check(&promtool, "agent", &agent_text);
}

fn deb_listing(deb: &Path) -> (String, String) {
    let (ok, info) = run(Command::new("dpkg-deb").arg("--info").arg(deb));
    assert!(ok, "{info}");
    let (ok, contents) = run(Command::new("dpkg-deb").arg("--contents").arg(deb));
    assert!(ok, "{contents}");
    (info, contents)
}

#[test]
fn debs_hold_binaries_conffiles_units_and_scripts() {
    if require("dpkg-deb", "dpkg").is_none() {
        return;
    }
    let (Some(agent), Some(coord)) = (deb("persona-agent"), deb("persona-coordinator")) else {
        return;
    };
    let (info, contents) = deb_listing(&agent);
    for f in [
        "./usr/bin/persona-agent",
        "./usr/bin/persona-actuator",
        "./etc/persona/agent.toml",
        "./etc/persona/policy.toml",
        "./lib/systemd/system/persona-agent.service",
        "./lib/systemd/system/persona-actuator.service",
        "./usr/share/doc/persona-agent/operations.md",
        "./usr/share/doc/persona-agent/configuration.md",
    ] {
        assert!(contents.contains(f), "agent .deb lacks {f}:\n{contents}");
    }
    for f in [
        "conffiles",
        "postinst",
        "postrm",
        "prerm",
        "Depends:",
        "adduser",
    ] {
        assert!(info.contains(f), "agent .deb info lacks {f}:\n{info}");
    }
    assert!(
        contents
            .lines()
            .any(|l| l.starts_with("-rwxr-xr-x 0/0") && l.ends_with("./usr/bin/persona-agent")),
        "{contents}"
    );
    let (info, contents) = deb_listing(&coord);
    for f in [
        "./usr/bin/persona-coordinator",
        "./usr/bin/personactl",
        "./etc/persona/coordinator.toml",
        "./lib/systemd/system/persona-coordinator.service",
        "./usr/lib/sysctl.d/60-persona-coordinator.conf",
    ] {
        assert!(
            contents.contains(f),
            "coordinator .deb lacks {f}:\n{contents}"
        );
    }
    for f in ["conffiles", "postinst", "postrm"] {
        assert!(info.contains(f), "coordinator .deb info lacks {f}:\n{info}");
    }
    // The conffiles really are the /etc files, and the state dir gets its owner and mode.
    let scratch = tempfile::tempdir().unwrap();
    let (ok, out) = run(Command::new("dpkg-deb")
        .arg("-e")
        .arg(&agent)
        .arg(scratch.path()));
    assert!(ok, "{out}");
    let conffiles = std::fs::read_to_string(scratch.path().join("conffiles")).unwrap();
    let mut conf: Vec<&str> = conffiles.lines().map(str::trim).collect();
    conf.sort_unstable();
    assert_eq!(
        conf,
        ["/etc/persona/agent.toml", "/etc/persona/policy.toml"]
    );
    let postinst = std::fs::read_to_string(scratch.path().join("postinst")).unwrap();
    assert!(postinst.contains("install -d -o persona -g persona -m 0700 /var/lib/persona-agent"));
}

#[test]
fn agent_deb_runs_from_a_scratch_root() {
    if require("dpkg-deb", "dpkg").is_none() {
        return;
    }
    let Some(agent) = deb("persona-agent") else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let (ok, out) = run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&agent)
        .arg(root.path()));
    assert!(ok, "dpkg-deb -x: {out}");
    let exe = root.path().join("usr/bin/persona-agent");
    let (ok, out) = run(Command::new(&exe).arg("--version"));
    assert!(ok && out.starts_with("persona-agent "), "--version: {out}");
    let out = Command::new(&exe)
        .args(["observe", "--seconds", "1", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "observe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        doc["samples"].as_array().is_some_and(|s| !s.is_empty()),
        "{doc}"
    );
    // The packaged default config is valid for the packaged binary.
    let (ok, out) =
        run(Command::new(root.path().join("usr/bin/persona-actuator")).arg("--version"));
    assert!(ok, "{out}");
    let cfg = std::fs::read_to_string(root.path().join("etc/persona/agent.toml")).unwrap();
    persona_agent::config::AgentConfig::parse(&cfg, Path::new("etc/persona/agent.toml")).unwrap();
    // The packaged policy parses and denies everything.
    let pol = std::fs::read_to_string(root.path().join("etc/persona/policy.toml")).unwrap();
    assert_eq!(
        persona_agent::policy::Policy::parse(&pol, Path::new("etc/persona/policy.toml")).unwrap(),
        persona_agent::policy::Policy::deny_all()
    );
}
