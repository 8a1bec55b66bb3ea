//! The privileged half of the agent: `persona-actuator`, a small root helper that accepts
//! a fixed, allow-listed set of requests (`protocol`) on a Unix socket and nothing else.
//!
//! Why a separate process: sampling and streaming need no privilege (everything the
//! collectors read in /proc and /sys is world-readable), and that half talks to the
//! network, parses coordinator messages and links a TLS stack. The few actions that need
//! root (a CPU online/offline write in sysfs, a cgroup limit, a package install) are
//! kept out of it: the unprivileged agent asks, this helper checks the request against
//! the allow-list with strict value checks, and only then acts. A compromised agent can
//! therefore do no more than the allow-list, whose every entry is bounded.
//!
//! The socket is created mode 0660 with the service's group (`persona`), so only the
//! agent's user can talk to it; the line format is `protocol`'s.
//!
//! Implemented: `ping`, `cpu_online`, `memory_online` and `cgroup_limit`, performed by
//! the guest actuator's own checked writes (`crate::actuate::perform`), which it also
//! calls in-process when no helper is configured, so both paths run the same checks. The helper takes its
//! roots, floor and cgroup slice from the agent's own config file (`[guest_actuator]`,
//! root-owned), never from the request.
//!
//! `install_packages` (apt, dnf or pip, for the pre-load orchestrator) is performed only
//! by the helper ([`HelperConfig`]): it checks every name against the package grammars of
//! `preload::validate` again, re-reads the root-owned policy file named in the agent's
//! config for every request (the manager must be on there; pip installs only into the
//! policy's venv), runs the manager by argument list with no shell and its own deadline
//! (`--install-timeout-s`, 15 min by default; the child is killed at the deadline), and
//! answers with the exit code and a bounded tail of the output. The caller chooses
//! nothing but the names and the manager. Connections are served on their own threads so
//! a long install does not hold up CPU or cgroup requests; installs run one at a time.
//! This module does not decide *whether* to act (the coordinator and the agent's policy
//! do); it only decides whether a request is allowed and does it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::protocol::{MAX_REQUEST, Manager, Reply, Request, SHORT_DEADLINE, decode_request};
use crate::actuate::{ActuateError, GuestActuatorConfig, perform};
use crate::policy::Policy;
use crate::preload::packages;

/// Default deadline of one install in the helper.
pub const DEFAULT_INSTALL_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Bytes of an install's output returned in the reply.
const OUTPUT_TAIL: usize = 4000;
/// Connections served at once (the rest wait in the listen backlog).
const MAX_CONNECTIONS: usize = 8;

/// Why the actuator could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ActuatorError {
    #[error("cannot bind the actuator socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set the mode of {path}: {source}")]
    Mode {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the helper serves with: the guest actuator's roots and bounds, where the policy
/// is (re-read for every install), the install deadline and, for unusual layouts and
/// tests, the one directory package managers are taken from. All of it comes from the
/// helper's command line and the root-owned agent config, never from a request.
#[derive(Debug, Clone)]
pub struct HelperConfig {
    pub guest: GuestActuatorConfig,
    pub policy_file: PathBuf,
    pub install_timeout: Duration,
    /// Replaces the system directories when looking up apt-get and dnf.
    pub program_dir: Option<PathBuf>,
}

impl HelperConfig {
    /// The defaults around `guest`: the default policy path and deadline.
    pub fn new(guest: GuestActuatorConfig) -> Self {
        Self {
            guest,
            policy_file: PathBuf::from("/etc/persona/policy.toml"),
            install_timeout: DEFAULT_INSTALL_TIMEOUT,
            program_dir: None,
        }
    }
}

/// Serialises installs (package managers take their own locks, but two at once would
/// only wait on each other while holding the deadline).
static INSTALLS: Mutex<()> = Mutex::new(());

/// Performs a checked `install_packages` request under the policy as it is on disk now.
fn install(manager: Manager, names: &[String], version: Option<&str>, cfg: &HelperConfig) -> Reply {
    let policy = match Policy::load(&cfg.policy_file) {
        Ok(p) => p,
        Err(e) => return Reply::err("refused", format!("no usable policy: {e}")),
    };
    let (on, key) = match manager {
        Manager::Apt => (policy.packages.apt, "packages.apt"),
        Manager::Dnf => (policy.packages.dnf, "packages.dnf"),
        Manager::Pip => (policy.packages.pip_venv.is_some(), "packages.pip_venv"),
    };
    if !on {
        return Reply::err(
            "refused",
            format!(
                "{} is off in the policy ({key} in {})",
                manager.as_str(),
                cfg.policy_file.display()
            ),
        );
    }
    for n in names {
        if let Err(why) = policy.packages.allowed(manager.as_str(), n) {
            return Reply::err("refused", format!("{why} ({})", cfg.policy_file.display()));
        }
    }
    let _one = INSTALLS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let never = AtomicBool::new(false);
    let pip = policy
        .packages
        .pip_venv
        .as_deref()
        .map(|venv| packages::PipTarget {
            venv,
            user: policy.packages.pip_user.as_deref(),
        });
    // apt names are checked to exist exactly (and versions resolved) before apt-get runs.
    let argv = match packages::prepare_install(
        manager,
        cfg.program_dir.as_deref(),
        pip,
        names,
        version,
        &never,
    ) {
        Ok(a) => a,
        Err(
            e @ (packages::ExecError::NotExact { .. }
            | packages::ExecError::NoVersion { .. }
            | packages::ExecError::UnsafeVenv { .. }
            | packages::ExecError::PipUser(_)),
        ) => return Reply::err("refused", e.to_string()),
        Err(e) => return Reply::err("failed", e.to_string()),
    };
    tracing::info!(manager = manager.as_str(), packages = %names.join(" "), "installing");
    let what = format!("{} {}", argv.program.display(), argv.args.join(" "));
    match argv.run_capture(cfg.install_timeout, &never) {
        Ok(f) => {
            let output = format!("{}\n{}", f.stdout.trim(), f.stderr.trim());
            let mut r = if f.success {
                Reply::ok(format!("installed: {what}"))
            } else {
                Reply::err("failed", format!("{what}: {}", f.status))
            };
            r.exit_code = f.code;
            r.output_tail = Some(packages::tail(&output, OUTPUT_TAIL));
            r
        }
        Err(e) => Reply::err("failed", e.to_string()),
    }
}

/// Parses, checks and performs one request line with `cfg` and the default helper
/// settings (see [`handle_helper_line`]).
pub fn handle_line(line: &str, cfg: &GuestActuatorConfig) -> Reply {
    handle_helper_line(line, &HelperConfig::new(cfg.clone()))
}

/// Parses, checks and performs one request line, as the helper does.
pub fn handle_helper_line(line: &str, cfg: &HelperConfig) -> Reply {
    let req: Request = match decode_request(line.as_bytes()) {
        Ok(r) => r,
        Err(why) => return Reply::err("refused", why),
    };
    if let Request::InstallPackages {
        manager,
        packages,
        version,
    } = &req
    {
        return install(*manager, packages, version.as_deref(), cfg);
    }
    // Every resize operation (CPU online, memory online, cgroup limits) needs
    // actions.resize in the policy as it is on disk now, whatever the caller says.
    if !matches!(req, Request::Ping {}) {
        match Policy::load(&cfg.policy_file) {
            Ok(p) if p.actions.resize => {}
            Ok(_) => {
                return Reply::err(
                    "refused",
                    format!(
                        "resize is off in the policy (actions.resize in {})",
                        cfg.policy_file.display()
                    ),
                );
            }
            Err(e) => return Reply::err("refused", format!("no usable policy: {e}")),
        }
    }
    match perform(&req, &cfg.guest) {
        Ok(done) => Reply::ok(done),
        Err(ActuateError::Refused(why)) => Reply::err("refused", why),
        Err(e) => Reply::err("failed", e.to_string()),
    }
}

fn serve_one(stream: UnixStream, cfg: &HelperConfig) -> std::io::Result<()> {
    stream.set_read_timeout(Some(SHORT_DEADLINE))?;
    stream.set_write_timeout(Some(SHORT_DEADLINE))?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_REQUEST)).read_line(&mut line)?;
    let reply = if line.ends_with('\n') {
        handle_helper_line(&line, cfg)
    } else {
        Reply::err("bad_request", "one JSON object per line, at most 16 KiB")
    };
    let mut out = serde_json::to_string(&reply).unwrap_or_else(|_| "{\"ok\":false}".into());
    out.push('\n');
    (&stream).write_all(out.as_bytes())
}

/// Binds `path` (replacing a stale socket), mode 0660.
pub fn bind(path: &Path) -> Result<UnixListener, ActuatorError> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|source| ActuatorError::Bind {
        path: path.to_owned(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(|source| {
        ActuatorError::Mode {
            path: path.to_owned(),
            source,
        }
    })?;
    Ok(listener)
}

/// Serves requests with the default helper settings around `cfg` (see [`serve_with`]).
pub fn serve(listener: &UnixListener, cfg: &GuestActuatorConfig) {
    serve_with(listener, &HelperConfig::new(cfg.clone()));
}

/// Serves requests forever, each connection on its own thread, at most
/// [`MAX_CONNECTIONS`] at once (systemd stops it with SIGTERM, which ends the process:
/// there is no state to save).
pub fn serve_with(listener: &UnixListener, cfg: &HelperConfig) {
    let cfg = Arc::new(cfg.clone());
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        match stream {
            Ok(s) => {
                if active.load(Ordering::Acquire) >= MAX_CONNECTIONS {
                    let mut out = serde_json::to_string(&Reply::err(
                        "busy",
                        format!("{MAX_CONNECTIONS} requests in progress"),
                    ))
                    .unwrap_or_default();
                    out.push('\n');
                    let _ = (&s).write_all(out.as_bytes());
                    continue;
                }
                active.fetch_add(1, Ordering::AcqRel);
                let (cfg, active) = (cfg.clone(), active.clone());
                std::thread::spawn(move || {
                    if let Err(e) = serve_one(s, &cfg) {
                        tracing::debug!("actuator connection: {e}");
                    }
                    active.fetch_sub(1, Ordering::AcqRel);
                });
            }
            Err(e) => tracing::warn!("actuator accept: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::helper::protocol::{self, call};

    /// A configuration whose roots are an empty directory: nothing can be written.
    fn nowhere(dir: &Path) -> GuestActuatorConfig {
        GuestActuatorConfig {
            sys_root: dir.join("sys"),
            cgroup_root: dir.join("cgroup"),
            helper_socket: None,
            ..GuestActuatorConfig::default()
        }
    }

    /// A helper whose policy file holds `policy`.
    fn with_policy(dir: &Path, policy: &str) -> HelperConfig {
        let mut h = HelperConfig::new(nowhere(dir));
        h.policy_file = dir.join("policy.toml");
        std::fs::write(&h.policy_file, policy).unwrap();
        h
    }

    #[test]
    fn the_allow_list() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = nowhere(dir.path());
        assert!(handle_line("{\"op\":\"ping\"}\n", &cfg).ok);
        // Allowed, but the (empty) sysfs has no such CPU: a failure, not a refusal.
        let h = with_policy(dir.path(), "[actions]\nresize = true\n");
        let r = handle_helper_line("{\"op\":\"cpu_online\",\"cpu\":1,\"online\":false}", &h);
        assert_eq!(r.error.as_deref(), Some("failed"), "{r:?}");
        for refused in [
            "{\"op\":\"cpu_online\",\"cpu\":0,\"online\":false}",
            "{\"op\":\"cpu_online\",\"cpu\":99999,\"online\":true}",
            "{\"op\":\"memory_online\",\"block\":4294967295}",
            "{\"op\":\"memory_offline\",\"block\":1}",
            "{\"op\":\"exec\",\"cmd\":\"rm -rf /\"}",
            "{\"op\":\"ping\",\"extra\":1}",
            "{\"op\":\"cgroup_limit\",\"group\":\"../../etc\"}",
            "{\"op\":\"cgroup_limit\",\"group\":\"web\",\"memory_max_bytes\":1}",
            "{\"op\":\"cgroup_limit\",\"group\":\"web\",\"io\":{\"device\":\"sda\"}}",
            "{\"op\":\"install_packages\",\"packages\":[\"curl; rm -rf /\"]}",
            "{\"op\":\"install_packages\",\"packages\":[\"http://x/y.deb\"]}",
            "{\"op\":\"install_packages\",\"packages\":[]}",
            "not json",
        ] {
            let r = handle_line(refused, &cfg);
            assert_eq!(r.error.as_deref(), Some("refused"), "{refused}: {r:?}");
        }
        // Well-formed installs are decided by the helper's policy: absent here, so off.
        let mut helper = HelperConfig::new(cfg.clone());
        helper.policy_file = dir.path().join("no-policy.toml");
        let r = handle_helper_line(
            "{\"op\":\"install_packages\",\"packages\":[\"python3-torch\",\"g++\"]}",
            &helper,
        );
        assert_eq!(r.error.as_deref(), Some("refused"), "{r:?}");
        assert!(r.detail.contains("packages.apt"), "{r:?}");
    }

    /// Issue 18 item 13: CPU online, memory online and cgroup limits need
    /// actions.resize in the helper's own reading of the policy.
    #[test]
    fn every_resize_operation_needs_actions_resize() {
        let dir = tempfile::tempdir().unwrap();
        let off = with_policy(dir.path(), "[actions]\nresize = false\n");
        for line in [
            "{\"op\":\"cpu_online\",\"cpu\":1,\"online\":true}",
            "{\"op\":\"memory_online\",\"block\":3}",
            "{\"op\":\"cgroup_limit\",\"group\":\"web\",\"cpu_max_millicores\":500,\"memory_max_bytes\":null}",
        ] {
            let r = handle_helper_line(line, &off);
            assert_eq!(r.error.as_deref(), Some("refused"), "{line}: {r:?}");
            assert!(r.detail.contains("actions.resize"), "{line}: {r:?}");
        }
        // No policy file at all: the same (deny by default); ping needs no policy.
        let mut none = off.clone();
        none.policy_file = dir.path().join("absent.toml");
        let r = handle_helper_line("{\"op\":\"memory_online\",\"block\":3}", &none);
        assert!(r.detail.contains("actions.resize"), "{r:?}");
        assert!(handle_helper_line("{\"op\":\"ping\"}", &none).ok);
    }

    /// Issue 18 item 3: names apt-get reads as a removal or a regular expression are
    /// refused on the socket, and the helper's allow-list is enforced.
    #[test]
    fn apt_patterns_and_unlisted_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let h = with_policy(
            dir.path(),
            "[packages]\napt = true\napt_allow = [\"curl\", \"dpkg\"]\n",
        );
        for name in ["python3.+-", "libcurl.+-", "curl-", "x.+"] {
            let line = format!("{{\"op\":\"install_packages\",\"packages\":[\"{name}\"]}}");
            let r = handle_helper_line(&line, &h);
            assert_eq!(r.error.as_deref(), Some("refused"), "{name}: {r:?}");
            assert!(r.detail.contains("apt package name"), "{name}: {r:?}");
        }
        let r = handle_helper_line("{\"op\":\"install_packages\",\"packages\":[\"nmap\"]}", &h);
        assert_eq!(r.error.as_deref(), Some("refused"), "{r:?}");
        assert!(r.detail.contains("packages.apt_allow"), "{r:?}");
        // A listed name that apt does not know exactly is refused before apt-get runs.
        if packages::find_program("apt-cache").is_err() {
            eprintln!("skipped the apt-cache part: no apt-cache on this machine");
            return;
        }
        let h = with_policy(dir.path(), "[packages]\napt = true\n");
        let r = handle_helper_line(
            "{\"op\":\"install_packages\",\"packages\":[\"persona-no-such-package\"]}",
            &h,
        );
        assert_eq!(r.error.as_deref(), Some("refused"), "{r:?}");
        assert!(
            r.detail.contains("no package of exactly this name"),
            "{r:?}"
        );
    }

    /// Issue 18 item 2: pip never runs as root, only with wheels, only from a root-owned
    /// venv that group and others cannot write, and only for allowed names.
    #[test]
    fn pip_drops_root_and_refuses_a_writable_venv() {
        use std::os::unix::fs::PermissionsExt;
        if !packages::is_root() {
            eprintln!("skipped: needs root to check the privilege drop");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let venv = root.join("venv");
        std::fs::create_dir_all(venv.join("bin")).unwrap();
        let out = root.join("out");
        std::fs::create_dir(&out).unwrap();
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).unwrap();
        let marker = out.join("ran");
        let pip = venv.join("bin/pip");
        std::fs::write(
            &pip,
            format!("#!/bin/sh\necho \"$(id -u) $*\" > {}\n", marker.display()),
        )
        .unwrap();
        std::fs::set_permissions(&pip, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&venv, std::fs::Permissions::from_mode(0o755)).unwrap();
        let policy = |extra: &str| {
            format!(
                "[packages]\npip_venv = {:?}\n{extra}",
                venv.display().to_string()
            )
        };
        let req = "{\"op\":\"install_packages\",\"manager\":\"pip\",\"packages\":[\"six\"]}";
        // No pip_user: refused rather than run as root.
        let r = handle_helper_line(req, &with_policy(root, &policy("")));
        assert_eq!(r.error.as_deref(), Some("refused"), "{r:?}");
        assert!(r.detail.contains("pip_user"), "{r:?}");
        assert!(!marker.exists());
        let r = handle_helper_line(req, &with_policy(root, &policy("pip_user = \"nobody\"\n")));
        assert!(r.ok, "{r:?}");
        let ran = std::fs::read_to_string(&marker).unwrap();
        let (uid, args) = ran.trim().split_once(' ').unwrap();
        assert_ne!(uid, "0", "pip ran as root: {ran}");
        assert!(args.contains("--only-binary :all:"), "{ran}");
        // A venv or bin/pip that group or others can write is refused, naming it.
        std::fs::remove_file(&marker).unwrap();
        for (path, mode) in [(&venv, 0o775), (&pip, 0o757)] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
            let r = handle_helper_line(req, &with_policy(root, &policy("pip_user = \"nobody\"\n")));
            assert_eq!(r.error.as_deref(), Some("refused"), "{r:?}");
            assert!(
                r.detail.contains(&path.display().to_string())
                    && r.detail.contains(&format!("{mode:04o}")),
                "{r:?}"
            );
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        assert!(!marker.exists());
        // The allow-list.
        let r = handle_helper_line(
            req,
            &with_policy(
                root,
                &policy("pip_user = \"nobody\"\npip_allow = [\"torch\"]\n"),
            ),
        );
        assert!(r.detail.contains("packages.pip_allow"), "{r:?}");
        assert!(!marker.exists());
    }

    /// The request decoder never panics, whatever the bytes (the fuzz target's check,
    /// run in CI without nightly).
    #[test]
    fn the_request_decoder_takes_arbitrary_bytes() {
        use proptest::prelude::*;
        let valid = [
            "{\"op\":\"ping\"}",
            "{\"op\":\"cpu_online\",\"cpu\":1,\"online\":true}",
            "{\"op\":\"install_packages\",\"manager\":\"pip\",\"packages\":[\"six\"],\"version\":\"1\"}",
            "{\"op\":\"cgroup_limit\",\"group\":\"web\",\"cpu_max_millicores\":500,\"memory_max_bytes\":null,\"io\":{\"device\":\"8:0\"}}",
        ];
        for v in valid {
            assert!(protocol::decode_request(v.as_bytes()).is_ok(), "{v}");
        }
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        runner
            .run(&proptest::collection::vec(any::<u8>(), 0..512), |bytes| {
                let _ = protocol::decode_request(&bytes);
                Ok(())
            })
            .unwrap();
        // Mutations of valid requests reach deeper than random bytes.
        runner
            .run(
                &(0..valid.len(), any::<usize>(), any::<u8>(), 0..3u8),
                |(which, at, byte, how)| {
                    let mut b = valid[which].as_bytes().to_vec();
                    let i = at % (b.len() + 1);
                    match how {
                        0 => b.insert(i, byte),
                        1 if i < b.len() => b[i] = byte,
                        _ => b.truncate(i),
                    }
                    let _ = protocol::decode_request(&b);
                    Ok(())
                },
            )
            .unwrap();
        assert!(protocol::decode_request(&vec![b' '; 20_000]).is_err());
    }

    #[test]
    fn serves_over_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = nowhere(dir.path());
        let path = dir.path().join("a.sock");
        let l = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            serve_one(s, &HelperConfig::new(cfg)).unwrap();
        });
        let r = call(&path, &Request::Ping {}).unwrap();
        assert!(r.ok, "{r:?}");
        t.join().unwrap();
    }
}
