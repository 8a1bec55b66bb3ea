//! Pre-load with real parts: files fetched from an HTTP server on loopback (right and
//! wrong checksums, a download interrupted midway and resumed), policy and grammar
//! refusals, a real `pip install` when this machine allows it, and a plan sent by
//! `personactl preload` through a real coordinator to a real agent over QUIC, and a plan
//! that resumes by itself after the real agent is restarted in the middle of it. (The real
//! `apt-get install` of a plan is in `agent/tests/actuator_install.rs`, beside the one
//! through the root helper, which shares its preparation.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use persona_agent::policy::Policy;
use persona_agent::preload::{self, Outcome, PreloadError};
use persona_shared::command::{PackageManager, PreloadPlan, PreloadStep};
use persona_tests::fileserver::{FileServer, Mode, sha256_hex};
use persona_tests::{Agent, Coord, wait_for};
use serde_json::Value;
use tempfile::TempDir;

fn body(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

fn policy(srv: &FileServer, dest: &Path) -> Policy {
    let text = format!(
        "[files]\nurl_prefixes = [\"http://{}/data/\"]\ndestinations = [{:?}]\nmax_bytes = 10000000\n",
        srv.addr,
        dest.display().to_string()
    );
    Policy::parse(&text, Path::new("test-policy.toml")).unwrap()
}

/// A file server holding `n` bytes at `path`, a temporary directory, the bytes, and a
/// policy that allows files from the server into the directory.
fn served(path: &str, n: usize, mode: Mode) -> (FileServer, TempDir, Vec<u8>, Policy) {
    let srv = FileServer::start();
    let dir = tempfile::tempdir().unwrap();
    let data = body(n);
    srv.add(path, data.clone(), mode);
    let pol = policy(&srv, dir.path());
    (srv, dir, data, pol)
}

fn file_step(srv: &FileServer, path: &str, data: &[u8], sha: &str, dest: &Path) -> PreloadStep {
    PreloadStep::File {
        url: srv.url(path),
        sha256: sha.to_owned(),
        size: data.len() as u64,
        dest: dest.display().to_string(),
    }
}

fn run(plan_steps: Vec<PreloadStep>, pol: &Policy) -> Result<preload::PlanReport, PreloadError> {
    let plan = PreloadPlan {
        persona: None,
        steps: plan_steps,
    };
    let never = AtomicBool::new(false);
    preload::run(&plan, pol, &mut |_| {}, &never)
}

#[test]
fn a_file_with_the_right_checksum_is_fetched_once_and_then_skipped() {
    let (srv, dir, data, pol) = served("/data/set.bin", 300_000, Mode::Normal);
    let dest = dir.path().join("sets/set.bin");
    let step = file_step(&srv, "/data/set.bin", &data, &sha256_hex(&data), &dest);
    let r = run(vec![step.clone()], &pol).unwrap();
    assert_eq!(
        r.steps[0].1,
        Outcome::Downloaded {
            bytes: data.len() as u64,
            resumed: false
        }
    );
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert!(!preload::download::partial_path(&dest).exists());
    // Again: present, skipped, and the server is not asked.
    let r = run(vec![step], &pol).unwrap();
    assert_eq!(r.steps[0].1, Outcome::Skipped);
    assert_eq!(srv.hits_of("/data/set.bin").len(), 1);
}

#[test]
fn a_wrong_checksum_fails_and_leaves_nothing_behind() {
    let (srv, dir, data, pol) = served("/data/bad.bin", 100_000, Mode::Normal);
    let dest = dir.path().join("bad.bin");
    let wrong = sha256_hex(b"something else");
    let e = run(
        vec![file_step(&srv, "/data/bad.bin", &data, &wrong, &dest)],
        &pol,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("checksum mismatch") && e.contains(&wrong), "{e}");
    assert!(!dest.exists(), "the destination must not exist");
    assert!(
        !preload::download::partial_path(&dest).exists(),
        "the partial file must be gone"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing left in the directory"
    );
}

#[test]
fn an_interrupted_download_resumes_where_it_stopped() {
    let (srv, dir, data, pol) = served(
        "/data/big.bin",
        1_000_000,
        Mode::DropFirst { after: 400_000 },
    );
    let dest = dir.path().join("big.bin");
    let mut seen = Vec::new();
    let plan = PreloadPlan {
        persona: None,
        steps: vec![file_step(
            &srv,
            "/data/big.bin",
            &data,
            &sha256_hex(&data),
            &dest,
        )],
    };
    let never = AtomicBool::new(false);
    let r = preload::run(&plan, &pol, &mut |p| seen.push(p.bytes), &never).unwrap();
    assert_eq!(
        r.steps[0].1,
        Outcome::Downloaded {
            bytes: 1_000_000,
            resumed: true
        }
    );
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    let hits = srv.hits_of("/data/big.bin");
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert_eq!(hits[0].range, None);
    // The second request asks only for the rest.
    let range = hits[1].range.clone().unwrap();
    let from: u64 = range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .unwrap()
        .parse()
        .unwrap();
    assert!(from > 0 && from <= 400_000, "{range}");
    assert!(seen.iter().flatten().any(|b| *b == 1_000_000));
}

#[test]
fn disallowed_urls_and_injection_attempts_are_refused_before_anything_runs() {
    let (srv, dir, data, mut pol) = served("/data/x.bin", 10, Mode::Normal);
    srv.add("/elsewhere/x.bin", data.clone(), Mode::Normal);
    let sha = sha256_hex(&data);
    let ok_dest = dir.path().join("x.bin");
    pol.packages.apt = true;
    pol.images.engines = vec!["docker".into(), "podman".into()];
    pol.images.registries = vec!["docker.io/library/".into()];
    let good = file_step(&srv, "/data/x.bin", &data, &sha, &ok_dest);
    let apt = |name: &str| PreloadStep::Package {
        manager: PackageManager::Apt,
        name: name.into(),
        version: None,
    };
    let file = |url: &str, dest: &str| PreloadStep::File {
        url: url.into(),
        sha256: sha.clone(),
        size: 10,
        dest: dest.into(),
    };
    let cases = [
        (apt("foo; rm -rf /"), "Debian package name"),
        (apt("--option-injection"), "Debian package name"),
        (
            PreloadStep::Pip {
                name: "torch".into(),
                version: None,
            },
            "pip is off",
        ),
        (
            PreloadStep::Image {
                reference: "--privileged".into(),
            },
            "image reference",
        ),
        (
            PreloadStep::Image {
                reference: "quay.io/evil/miner".into(),
            },
            "images.registries",
        ),
        (
            file(&srv.url("/data/x.bin"), "../../etc/passwd"),
            "not an absolute path",
        ),
        (
            file(
                &srv.url("/data/x.bin"),
                &format!("{}/../../etc/passwd", dir.path().display()),
            ),
            "`..`",
        ),
        (
            file(&srv.url("/data/x.bin"), "/etc/passwd"),
            "files.destinations",
        ),
        (
            file("file:///etc/passwd", &ok_dest.display().to_string()),
            "only http:// and https://",
        ),
        (
            file(&srv.url("/elsewhere/x.bin"), &ok_dest.display().to_string()),
            "files.url_prefixes",
        ),
    ];
    for (bad, why) in cases {
        let desc = bad.describe();
        // The good step first: a refused step anywhere means nothing runs at all.
        let e = run(vec![good.clone(), bad], &pol).unwrap_err();
        assert!(
            matches!(e, PreloadError::Refused { index: 1, .. }),
            "{desc}: {e}"
        );
        assert!(e.to_string().contains(why), "{desc}: {e}");
    }
    assert!(
        srv.hits().is_empty(),
        "nothing was fetched: {:?}",
        srv.hits()
    );
    assert!(!ok_dest.exists());
    // The deny-all policy refuses even the good step.
    let e = run(vec![good], &Policy::deny_all())
        .unwrap_err()
        .to_string();
    assert!(e.contains("files.url_prefixes"), "{e}");
}

/// A coordinator, a file server on loopback and a started, connected agent whose policy
/// allows files from the server's `/data/` into the returned directory.
fn agent_fetching_files(dir: &Path) -> (Coord, Agent, FileServer, PathBuf) {
    let coord = Coord::start(&dir.join("coord"), 0, 0, &[]);
    let (token, ca_hash) = coord.token(&[]);
    let mut agent = Agent::enroll(dir, "agent", &coord, &token, &ca_hash);
    let srv = FileServer::start();
    let dest_dir = dir.join("dest");
    std::fs::create_dir(&dest_dir).unwrap();
    agent.write_policy(&format!(
        "[files]\nurl_prefixes = [\"http://{}/data/\"]\ndestinations = [{:?}]\nmax_bytes = 1000000\n",
        srv.addr,
        dest_dir.display().to_string()
    ));
    agent.start();
    coord.wait_connected(&agent.id);
    (coord, agent, srv, dest_dir)
}

/// A plan's file step, as `personactl commands send` takes it.
fn file_json(srv: &FileServer, path: &str, data: &[u8], dest: &Path) -> Value {
    serde_json::json!({"File": {"url": srv.url(path), "sha256": sha256_hex(data),
        "size": data.len(), "dest": dest.display().to_string()}})
}

/// `personactl preload` plans from a persona and sends the plan; the agent's local
/// policy refuses what it does not allow; a file plan is fetched by the real agent and
/// shows in `personactl commands`.
#[test]
fn plans_go_from_personactl_through_the_coordinator_to_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, mut agent, srv, dest_dir) = agent_fetching_files(dir.path());
    let data = body(200_000);
    srv.add("/data/model.bin", data.clone(), Mode::Normal);

    // A dry run plans from the persona without sending anything.
    let dest = dest_dir.join("model.bin");
    let file_arg = format!(
        "{},{},{},{}",
        srv.url("/data/model.bin"),
        sha256_hex(&data),
        data.len(),
        dest.display()
    );
    // One plan request, asked as a dry run here and sent for real below.
    let request = [
        "preload",
        agent.id.as_str(),
        "--persona",
        "web-server",
        "--file",
        file_arg.as_str(),
    ];
    let v = coord.ctl(&[&request[..], &["--dry-run"]].concat());
    assert_eq!(v["source"], "persona");
    assert_eq!(v["personas"][0], "web-server");
    assert!(v["command"].is_null());
    let steps: Vec<&str> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(steps.iter().any(|s| s.starts_with("apt ")), "{steps:?}");
    assert!(
        steps.last().unwrap().starts_with("file http://"),
        "{steps:?}"
    );
    // Without --persona: from what the coordinator believes the VM is (its declared
    // purpose, "end-to-end test VM" with cargo, and whatever it observed).
    let v = coord.ctl(&["preload", &agent.id, "--dry-run"]);
    assert!(
        ["combined", "profiler"].contains(&v["source"].as_str().unwrap()),
        "{v}"
    );
    assert!(!v["personas"].as_array().unwrap().is_empty(), "{v}");
    eprintln!("plan from the belief: {v}");
    // Nothing but the coordinator's own key pin (sent on the agent's first connect).
    let operator_commands = |c: &Coord| {
        c.ctl(&["commands", "list", "--agent", &agent.id])["commands"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["kind"] != "pin_command_key")
            .count()
    };
    assert_eq!(operator_commands(&coord), 0);

    // Sent: the agent's policy has apt off, so the whole plan is refused, nothing runs.
    let v = coord.ctl(&request);
    let id = v["command"].as_str().unwrap().to_owned();
    let done = coord.wait_command(&id, &["failed", "succeeded"]);
    assert_eq!(done["state"], "failed", "{done}");
    assert!(
        done["message"].as_str().unwrap().contains("apt is off"),
        "{done}"
    );
    assert!(srv.hits().is_empty());

    // A plan of the file alone runs, with progress and the result in `commands show`.
    let action = serde_json::json!({"Preload": {"persona": null, "steps": [{"File": {
        "url": srv.url("/data/model.bin"), "sha256": sha256_hex(&data),
        "size": data.len(), "dest": dest.display().to_string()}}]}});
    let id = coord.send_command(&agent.id, &action, None);
    let done = coord.wait_command(&id, &["failed", "succeeded"]);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(
        done["message"]
            .as_str()
            .unwrap()
            .contains("1 downloaded (200000 bytes)"),
        "{done}"
    );
    assert_eq!(done["percent"], 100.0);
    assert!(
        done["delivered_ms"].is_i64()
            && done["started_ms"].is_i64()
            && done["finished_ms"].is_i64()
    );
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(operator_commands(&coord), 2);

    // A plan whose second file is served wrong fails at that step; a retry sends only
    // that step, and once the server is fixed it succeeds.
    let late = body(50_000);
    srv.add("/data/late.bin", body(49_999), Mode::Normal);
    let late_dest = dest_dir.join("late.bin");
    let step = |path: &str, data: &[u8], dest: &Path| file_json(&srv, path, data, dest);
    let action = serde_json::json!({"Preload": {"persona": null, "steps": [
        step("/data/model.bin", &data, &dest),
        step("/data/late.bin", &late, &late_dest),
    ]}});
    let first = coord.send_command(&agent.id, &action, None);
    let done = coord.wait_command(&first, &["failed", "succeeded"]);
    assert_eq!(done["state"], "failed", "{done}");
    let msg = done["message"].as_str().unwrap();
    assert!(msg.contains("step 0 present"), "{msg}");
    assert!(msg.contains("step 1 failed"), "{msg}");
    let retry = ["preload", agent.id.as_str(), "--retry", first.as_str()];
    let v = coord.ctl(&[&retry[..], &["--dry-run"]].concat());
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 1, "{v}");
    assert!(steps[0].as_str().unwrap().contains("/data/late.bin"), "{v}");
    assert!(v["source"].as_str().unwrap().contains(&first), "{v}");
    srv.add("/data/late.bin", late.clone(), Mode::Normal);
    let v = coord.ctl(&retry);
    let again = v["command"].as_str().unwrap().to_owned();
    let done = coord.wait_command(&again, &["failed", "succeeded"]);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(std::fs::read(&late_dest).unwrap(), late);
    // A command that fully succeeded leaves nothing to retry, and says so.
    let out = coord.ctl_output(&["preload", &agent.id, "--retry", &again]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("nothing to retry"),
        "{err}"
    );
    agent.kill();
}

/// A plan running when the agent restarts (SIGTERM, as `systemctl restart` sends)
/// resumes by itself once the agent is back: the step done before the restart is not
/// run again, the download cut by the restart continues from its partial file, and the
/// command ends `succeeded` with the steps saying so.
#[test]
fn a_preload_resumes_after_a_real_agent_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, mut agent, srv, dest_dir) = agent_fetching_files(dir.path());
    let first = body(100_000);
    let second = body(600_000);
    srv.add("/data/first.bin", first.clone(), Mode::Normal);
    // Half the body, then held until released: the agent is restarted meanwhile.
    srv.add("/data/second.bin", second.clone(), Mode::Hold);

    let (first_dest, second_dest) = (dest_dir.join("first.bin"), dest_dir.join("second.bin"));
    let step = |path: &str, data: &[u8], dest: &Path| file_json(&srv, path, data, dest);
    let action = serde_json::json!({"Preload": {"persona": null, "steps": [
        step("/data/first.bin", &first, &first_dest),
        step("/data/second.bin", &second, &second_dest),
    ]}});
    let id = coord.send_command(&agent.id, &action, None);
    // The first file is in place and half of the second is in its partial file.
    let partial = dest_dir.join(".second.bin.persona-part");
    wait_for(Duration::from_secs(60), "half of the second file", || {
        let len = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        (len >= 300_000).then_some(())
    });
    assert_eq!(std::fs::read(&first_dest).unwrap(), first);
    assert_eq!(coord.command(&id)["state"], "running");

    let child = agent.child.as_mut().unwrap();
    assert!(
        persona_tests::terminate(child, Duration::from_secs(30)),
        "the agent did not stop cleanly on SIGTERM"
    );
    agent.child = None;
    // Whatever the held connection still sends goes to a process that is gone; later
    // requests are served whole.
    srv.add("/data/second.bin", second.clone(), Mode::Normal);
    srv.release();
    assert!(partial.exists(), "the partial file is kept for the resume");
    agent.start();

    let done = coord.wait_command(&id, &["failed", "succeeded", "cancelled"]);
    assert_eq!(done["state"], "succeeded", "{done}");
    let msg = done["message"].as_str().unwrap();
    assert!(msg.contains("1 done before a restart"), "{msg}");
    assert!(msg.contains("resumed"), "{msg}");
    assert_eq!(std::fs::read(&second_dest).unwrap(), second);
    assert!(
        !partial.exists(),
        "the partial file is gone once the file is in place"
    );
    // The first file was fetched once; the second asked only for what it lacked.
    assert_eq!(srv.hits_of("/data/first.bin").len(), 1);
    let hits = srv.hits_of("/data/second.bin");
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert_eq!(hits[0].range, None);
    let from: u64 = hits[1]
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the resumed request names where to start: {hits:?}"));
    assert!((300_000..600_000).contains(&from), "resumed from {from}");
    agent.kill();
}

/// A real pip install into the venv the policy names (PyPI is one of the registries this
/// machine reaches), then the same package found present.
#[test]
fn a_real_pip_install_goes_into_the_policy_venv() {
    let dir = tempfile::tempdir().unwrap();
    let venv = dir.path().join("venv");
    let never = AtomicBool::new(false);
    let Ok(python) = preload::packages::find_program("python3") else {
        eprintln!("skipped: no python3 on this machine");
        return;
    };
    let venv_s = venv.display().to_string();
    if let Err(e) = preload::packages::run(
        &python,
        &["-m", "venv", "--", &venv_s],
        &[],
        Duration::from_secs(120),
        &never,
    ) {
        eprintln!("skipped: cannot create a venv (python3-venv missing?): {e}");
        return;
    }
    let mut pol = Policy::deny_all();
    pol.packages.pip_venv = Some(venv.clone());
    if preload::packages::is_root() {
        // pip never runs as root: the venv stays root's, its packages and scripts are
        // the pip user's (docs/operations.md, "pip").
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let chown = preload::packages::find_program("chown").unwrap();
        let lib = venv.join("lib").display().to_string();
        let bin = venv.join("bin").display().to_string();
        for args in [["-R", "nobody", lib.as_str()], ["nobody", bin.as_str(), ""]] {
            let args: Vec<&str> = args.into_iter().filter(|a| !a.is_empty()).collect();
            preload::packages::run(&chown, &args, &[], Duration::from_secs(60), &never).unwrap();
        }
        pol.packages.pip_user = Some("nobody".into());
    }
    let step = PreloadStep::Pip {
        name: "six".into(),
        version: Some("1".into()),
    };
    match run(vec![step], &pol) {
        Ok(r) => assert_eq!(r.steps[0].1, Outcome::Installed),
        Err(e) => {
            let m = e.to_string();
            if m.contains("Could not find a version")
                || m.contains("connection")
                || m.contains("Network is unreachable")
                || m.contains("Temporary failure in name resolution")
            {
                eprintln!("skipped: PyPI is not reachable: {m}");
                return;
            }
            panic!("pip install six failed: {m}");
        }
    }
    let pip = venv.join("bin/pip");
    assert!(preload::packages::pip_present(&pip, "six", &never));
    // Installed in the venv, not in the system's Python.
    let site = std::fs::read_dir(venv.join("lib"))
        .unwrap()
        .filter_map(Result::ok)
        .any(|py| py.path().join("site-packages/six.py").exists());
    assert!(site, "six.py is in the venv's site-packages");
    let again = PreloadStep::Pip {
        name: "six".into(),
        version: None,
    };
    assert_eq!(run(vec![again], &pol).unwrap().steps[0].1, Outcome::Skipped);
}
