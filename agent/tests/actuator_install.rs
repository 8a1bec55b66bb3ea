//! The root helper's `install_packages` over a real Unix socket
//! (`persona_agent::helper::server::serve_with`):
//! - names that are not package names (shell injection, options, URLs, paths) and
//!   managers the helper's own policy file turns off are refused, and nothing runs;
//! - the install runs the manager by argument list with no shell, with
//!   DEBIAN_FRONTEND=noninteractive, and the reply carries the exit code and the tail of
//!   the output; a manager that hangs is killed at the helper's deadline. These use
//!   stand-in `apt-get` scripts from a directory given to the helper the way its
//!   `--package-program-dir` flag does (the caller can never choose a program);
//! - the agent's pre-load goes through the helper (`Installer::Helper`);
//! - a real `apt-get install` of GNU hello through the helper, and one by the agent's
//!   own pre-load (no helper), when root and the Debian registry are available (otherwise
//!   they say why and skip).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use persona_agent::actuate::GuestActuatorConfig;
use persona_agent::helper::protocol::{self, Reply, Request};
use persona_agent::helper::server::{self, HelperConfig};
use persona_agent::policy::Policy;
use persona_agent::preload::packages::{Installer, Manager};
use persona_agent::preload::{self, packages};
use persona_shared::command::{PackageManager, PreloadPlan, PreloadStep};

#[path = "support/real_apt.rs"]
mod real_apt;

/// Starts a helper on a socket in `dir` with this policy text, deadline and program dir.
fn helper(dir: &Path, policy: &str, timeout: Duration, programs: Option<PathBuf>) -> PathBuf {
    std::fs::create_dir_all(dir).expect("mkdir");
    let policy_file = dir.join("policy.toml");
    std::fs::write(&policy_file, policy).expect("policy");
    let socket = dir.join("actuator.sock");
    let listener = server::bind(&socket).expect("bind");
    let cfg = HelperConfig {
        guest: GuestActuatorConfig {
            sys_root: dir.join("sys"),
            cgroup_root: dir.join("cgroup"),
            helper_socket: None,
            ..GuestActuatorConfig::default()
        },
        policy_file,
        install_timeout: timeout,
        program_dir: programs,
    };
    // The accept loop never returns; the thread ends with the test process.
    std::thread::spawn(move || server::serve_with(&listener, &cfg));
    socket
}

fn install(socket: &Path, manager: Manager, names: &[&str], version: Option<&str>) -> Reply {
    let never = AtomicBool::new(false);
    protocol::call_until(
        socket,
        &Request::InstallPackages {
            manager,
            packages: names.iter().map(|s| (*s).to_owned()).collect(),
            version: version.map(str::to_owned),
        },
        Duration::from_secs(900),
        &never,
    )
    .expect("reply")
}

/// Sends one raw line and reads the reply.
fn raw(socket: &Path, line: &str) -> Reply {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.write_all(format!("{line}\n").as_bytes()).expect("write");
    let mut out = String::new();
    BufReader::new(&s).read_line(&mut out).expect("read");
    serde_json::from_str(&out).expect("reply")
}

/// Writes an executable stand-in program.
fn script(dir: &Path, name: &str, body: &str) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    if name == "apt-get" && !dir.join("apt-cache").exists() {
        // The helper asks apt-cache first whether the name exists exactly
        // (`apt-cache show -- NAME`): the stand-in knows every name, at 2.10-3 and 1.0.
        script(
            dir,
            "apt-cache",
            "printf 'Package: %s\\nVersion: 2.10-3\\n\\nPackage: %s\\nVersion: 1.0\\n' \"$3\" \"$3\"",
        );
    }
}

#[test]
fn bad_names_and_managers_off_in_the_policy_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A stand-in that would leave a mark if it ever ran.
    let programs = dir.path().join("bin");
    let mark = dir.path().join("ran");
    script(&programs, "apt-get", &format!("touch {}", mark.display()));
    script(&programs, "dnf", &format!("touch {}", mark.display()));
    let socket = helper(
        dir.path(),
        "[packages]\napt = true\n",
        Duration::from_secs(60),
        Some(programs),
    );
    for (manager, names, version) in [
        (Manager::Apt, vec!["curl; rm -rf /"], None),
        (Manager::Apt, vec!["--option-injection"], None),
        (Manager::Apt, vec!["-o=APT::Foo"], None),
        (Manager::Apt, vec!["http://x/y.deb"], None),
        (Manager::Apt, vec!["../../etc/passwd"], None),
        (Manager::Apt, vec!["$(id)"], None),
        (Manager::Apt, vec!["hello", "`id`"], None),
        (Manager::Apt, vec![], None),
        (Manager::Apt, vec!["hello", "curl"], Some("1.0")),
        (Manager::Apt, vec!["hello"], Some("1.0; id")),
        (Manager::Pip, vec!["torch; id"], None),
    ] {
        let r = install(&socket, manager, &names, version);
        assert_eq!(r.error.as_deref(), Some("refused"), "{names:?}: {r:?}");
    }
    // Well-formed, but dnf and pip are off in the helper's policy.
    let r = install(&socket, Manager::Dnf, &["hello"], None);
    assert_eq!(r.error.as_deref(), Some("refused"), "{r:?}");
    assert!(r.detail.contains("packages.dnf"), "{r:?}");
    let r = install(&socket, Manager::Pip, &["requests"], None);
    assert_eq!(r.error.as_deref(), Some("refused"), "{r:?}");
    assert!(r.detail.contains("packages.pip_venv"), "{r:?}");
    // Unknown fields (a caller trying to choose the program) are not on the list.
    let r = raw(
        &socket,
        "{\"op\":\"install_packages\",\"packages\":[\"hello\"],\"program\":\"/bin/sh\"}",
    );
    assert_eq!(r.error.as_deref(), Some("refused"), "{r:?}");
    assert!(!mark.exists(), "a refused request ran the manager");
}

#[test]
fn installs_run_without_a_shell_report_their_exit_and_are_killed_at_the_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ok_dir = dir.path().join("ok");
    let fail_dir = dir.path().join("fail");
    let hang_dir = dir.path().join("hang");
    // Prints its arguments one per line and its environment switch.
    script(
        &ok_dir,
        "apt-get",
        "for a in \"$@\"; do echo \"arg:$a\"; done; echo \"frontend:$DEBIAN_FRONTEND\"",
    );
    script(
        &fail_dir,
        "apt-get",
        "echo 'E: Unable to locate package' >&2; exit 100",
    );
    script(&hang_dir, "apt-get", "exec sleep 60");

    let ok = helper(
        &dir.path().join("h1"),
        "[packages]\napt = true\n",
        Duration::from_secs(60),
        Some(ok_dir),
    );
    let r = install(&ok, Manager::Apt, &["hello", "g++"], None);
    assert!(r.ok, "{r:?}");
    assert_eq!(r.exit_code, Some(0));
    let out = r.output_tail.unwrap_or_default();
    let args: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("arg:")).collect();
    assert_eq!(
        args,
        [
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "-o",
            "Dpkg::Options::=--force-confold",
            "-o",
            "DPkg::Lock::Timeout=600",
            "--",
            "hello",
            "g++"
        ]
    );
    assert!(out.contains("frontend:noninteractive"), "{out}");
    let r = install(&ok, Manager::Apt, &["hello"], Some("2.10-3"));
    assert!(
        r.output_tail
            .unwrap_or_default()
            .contains("arg:hello=2.10-3"),
        "a version is passed as NAME=VERSION"
    );

    let fail = helper(
        &dir.path().join("h2"),
        "[packages]\napt = true\n",
        Duration::from_secs(60),
        Some(fail_dir),
    );
    let r = install(&fail, Manager::Apt, &["hello"], None);
    assert_eq!(r.error.as_deref(), Some("failed"), "{r:?}");
    assert_eq!(r.exit_code, Some(100));
    assert!(
        r.output_tail
            .unwrap_or_default()
            .contains("Unable to locate package")
    );

    let hang = helper(
        &dir.path().join("h3"),
        "[packages]\napt = true\n",
        Duration::from_secs(1),
        Some(hang_dir),
    );
    let r = install(&hang, Manager::Apt, &["hello"], None);
    assert_eq!(r.error.as_deref(), Some("failed"), "{r:?}");
    assert!(r.detail.contains("killed"), "{r:?}");
}

#[test]
fn the_agents_preload_installs_through_the_helper() {
    let dir = tempfile::tempdir().expect("tempdir");
    let programs = dir.path().join("bin");
    let mark = dir.path().join("installed");
    script(
        &programs,
        "apt-get",
        &format!("echo \"$@\" > {}", mark.display()),
    );
    let socket = helper(
        dir.path(),
        "[packages]\napt = true\n",
        Duration::from_secs(60),
        Some(programs),
    );
    // The agent's policy allows apt too (both are checked: the agent's before it asks).
    let mut policy = Policy::deny_all();
    policy.packages.apt = true;
    let plan = PreloadPlan {
        persona: None,
        steps: vec![PreloadStep::Package {
            manager: PackageManager::Apt,
            name: "persona-no-such-package".into(),
            version: None,
        }],
    };
    let never = AtomicBool::new(false);
    let mut steps = 0;
    let report = preload::run_with(
        &plan,
        &policy,
        &Installer::Helper(socket),
        &mut |_| steps += 1,
        &never,
    )
    .expect("plan");
    assert_eq!(report.steps.len(), 1);
    assert_eq!(report.steps[0].1, preload::Outcome::Installed);
    assert!(steps >= 1, "progress is reported");
    let args = std::fs::read_to_string(&mark).expect("the helper ran apt-get");
    assert!(
        args.trim().ends_with("-- persona-no-such-package"),
        "{args}"
    );

    // No helper at the configured socket: a clear failure of the step.
    let e = preload::run_with(
        &plan,
        &policy,
        &Installer::Helper(dir.path().join("nobody.sock")),
        &mut |_| {},
        &never,
    )
    .expect_err("no helper");
    assert!(e.to_string().contains("nobody.sock"), "{e}");
}

/// A real `apt-get install` of GNU hello (about 50 KB) through the helper.
#[test]
fn a_real_apt_install_runs_through_the_helper_when_root_and_the_registry_are_available() {
    let never = AtomicBool::new(false);
    let _turn = match real_apt::hello_ready(&never) {
        Ok(turn) => turn,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = helper(
        dir.path(),
        "[packages]\napt = true\n",
        Duration::from_secs(600),
        None,
    );
    let r = install(&socket, Manager::Apt, &["hello"], None);
    assert!(r.ok, "{r:?}");
    assert_eq!(r.exit_code, Some(0), "{r:?}");
    assert!(packages::apt_present("hello", &never));
}

/// A real `apt-get install` of GNU hello through a plan the agent runs itself (no
/// helper), then the same plan again, which finds it present.
#[test]
fn a_real_apt_install_runs_when_root_and_the_registry_are_available() {
    let never = AtomicBool::new(false);
    let _turn = match real_apt::hello_ready(&never) {
        Ok(turn) => turn,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let run = |steps: Vec<PreloadStep>, pol: &Policy| {
        let plan = PreloadPlan {
            persona: None,
            steps,
        };
        preload::run(&plan, pol, &mut |_| {}, &never)
    };
    let mut pol = Policy::deny_all();
    pol.packages.apt = true;
    let step = PreloadStep::Package {
        manager: PackageManager::Apt,
        name: "hello".into(),
        version: None,
    };
    match run(vec![step.clone()], &pol) {
        Ok(r) => assert_eq!(r.steps[0].1, preload::Outcome::Installed),
        Err(e)
            if e.to_string().contains("Could not resolve")
                || e.to_string().contains("Failed to fetch") =>
        {
            eprintln!("skipped: the Debian registry is not reachable: {e}");
            return;
        }
        Err(e) => panic!("apt-get install hello failed: {e}"),
    }
    assert!(Path::new("/usr/bin/hello").exists());
    assert!(packages::apt_present("hello", &never));
    let r = run(vec![step], &pol).expect("the plan again");
    assert_eq!(r.steps[0].1, preload::Outcome::Skipped);
}
