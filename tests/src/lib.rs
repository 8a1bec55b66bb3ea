//! Harness for the end-to-end tests: starts the real `persona-coordinator`,
//! `persona-agent` and `personactl` binaries on loopback, on ports chosen at run time,
//! and waits on observable events (files appearing, API answers) with bounded
//! deadlines rather than fixed sleeps. It is test support only, not a product API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod fileserver;
pub mod layers;
pub mod load;
pub mod rawquic;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Path of a workspace binary built next to the running test executable.
pub fn bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("PERSONA_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built; run `cargo build --workspace` first (cargo test --workspace does)",
        p.display()
    );
    p
}

/// Polls `f` every 100 ms until it returns Some, or panics after `limit` with `what`.
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kills a child with SIGKILL (no chance to flush anything) and reaps it.
pub fn kill9(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
}

/// Sends SIGTERM and waits (bounded) for a clean exit; returns the exit status success.
pub fn terminate(child: &mut Child, limit: Duration) -> bool {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let end = Instant::now() + limit;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return st.success();
        }
        if Instant::now() > end {
            kill9(child);
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A coordinator process.
pub struct Coord {
    pub child: Child,
    pub data_dir: PathBuf,
    pub quic: SocketAddr,
    pub http: SocketAddr,
}

impl Coord {
    /// Starts `persona-coordinator serve` on 127.0.0.1 (port 0 = any free port) and waits
    /// until it has written its serving.json.
    pub fn start(data_dir: &Path, quic_port: u16, http_port: u16, extra: &[&str]) -> Coord {
        let serving = data_dir.join("serving.json");
        let _ = std::fs::remove_file(&serving);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("coordinator.log"))
            .unwrap();
        let child = Command::new(bin("persona-coordinator"))
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args([
                "--listen",
                &format!("127.0.0.1:{quic_port}"),
                "--http",
                &format!("127.0.0.1:{http_port}"),
            ])
            .args(extra)
            .env("PERSONA_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let v: Value = wait_for(Duration::from_secs(60), "coordinator serving.json", || {
            std::fs::read_to_string(&serving)
                .ok()
                .and_then(|s| serde_json::from_str(&s).ok())
        });
        Coord {
            child,
            data_dir: data_dir.to_owned(),
            quic: v["quic"].as_str().unwrap().parse().unwrap(),
            http: v["http"].as_str().unwrap().parse().unwrap(),
        }
    }

    /// Runs personactl against this coordinator; returns its raw output.
    pub fn ctl_output(&self, args: &[&str]) -> Output {
        Command::new(bin("personactl"))
            .args(["--api", &self.http.to_string(), "--data-dir"])
            .arg(&self.data_dir)
            .args(args)
            .env_remove("PERSONA_TOKEN")
            .env_remove("PERSONA_API")
            .output()
            .unwrap()
    }

    /// Runs `personactl ARGS --json` and parses the document; panics on failure.
    pub fn ctl(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.ctl_output(&a);
        assert!(
            out.status.success(),
            "personactl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Creates a join token and returns (token, ca_hash).
    pub fn token(&self, extra: &[&str]) -> (String, String) {
        let mut args = vec!["token", "create"];
        args.extend_from_slice(extra);
        let v = self.ctl(&args);
        (
            v["token"].as_str().unwrap().to_owned(),
            v["ca_hash"].as_str().unwrap().to_owned(),
        )
    }

    /// Points of a series as (unix seconds, value).
    pub fn series(&self, agent: &str, metric: &str, since: &str) -> Vec<(f64, f64)> {
        let v = self.ctl(&["series", agent, metric, "--since", since]);
        v["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap_or(f64::NAN)))
            .collect()
    }

    pub fn status(&self) -> Value {
        self.ctl(&["status"])
    }

    /// `persona-agent enroll` against this coordinator into `state_dir`, not yet run:
    /// the caller adds flags (`--json`) and runs it.
    pub fn enroll_command(&self, state_dir: &Path, token: &str, ca_hash: &str) -> Command {
        let mut c = Command::new(bin("persona-agent"));
        c.args([
            "enroll",
            "--coordinator",
            &self.quic.to_string(),
            "--token",
            token,
            "--ca-hash",
            ca_hash,
        ])
        .arg("--state-dir")
        .arg(state_dir);
        c
    }

    /// Waits (60 s at most) until `personactl agents list` shows `agent` connected.
    pub fn wait_connected(&self, agent: &str) {
        wait_for(Duration::from_secs(60), "agent connected", || {
            let v = self.ctl(&["agents", "list"]);
            v["agents"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["id"] == agent && a["state"] == "connected")
                .then_some(())
        });
    }

    /// `personactl commands send --agent AGENT --action ACTION [--ttl TTL]`; returns the
    /// command id.
    pub fn send_command(&self, agent: &str, action: &Value, ttl: Option<&str>) -> String {
        let action = action.to_string();
        let mut args = vec!["commands", "send", "--agent", agent, "--action", &action];
        if let Some(ttl) = ttl {
            args.extend(["--ttl", ttl]);
        }
        let v = self.ctl(&args);
        v["id"].as_str().unwrap().to_owned()
    }

    /// `personactl commands show ID`.
    pub fn command(&self, id: &str) -> Value {
        self.ctl(&["commands", "show", id])
    }

    /// Waits (60 s at most) until command `id` is in one of `states`; returns it.
    pub fn wait_command(&self, id: &str, states: &[&str]) -> Value {
        wait_for(
            Duration::from_secs(60),
            &format!("command {id} in {states:?}"),
            || {
                let v = self.command(id);
                states
                    .contains(&v["state"].as_str().unwrap_or(""))
                    .then_some(v)
            },
        )
    }

    /// `personactl model train --only mirror --mirror-windows 15 --seed SEED`: a small
    /// mirror model, trained and stored; returns the command's document.
    pub fn train_mirror(&self, seed: &str) -> Value {
        self.ctl(&[
            "model",
            "train",
            "--only",
            "mirror",
            "--mirror-windows",
            "15",
            "--seed",
            seed,
        ])
    }

    pub fn kill(&mut self) {
        kill9(&mut self.child);
    }
}

impl Drop for Coord {
    fn drop(&mut self) {
        kill9(&mut self.child);
    }
}

/// An agent process with its own state directory.
pub struct Agent {
    pub child: Option<Child>,
    pub state_dir: PathBuf,
    pub config: PathBuf,
    pub id: String,
}

impl Agent {
    /// Runs `persona-agent enroll` and returns the agent (not yet running).
    pub fn enroll(dir: &Path, name: &str, coord: &Coord, token: &str, ca_hash: &str) -> Agent {
        let state_dir = dir.join(name);
        let out = coord
            .enroll_command(&state_dir, token, ca_hash)
            .arg("--json")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "enroll failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "state_dir = {:?}\ncoordinator = \"{}\"\nsample_interval_ms = 1000\nbatch_interval_s = 5\n\n[purpose]\ndescription = \"end-to-end test VM\"\nsoftware = [\"cargo\"]\n",
                state_dir.display().to_string(),
                coord.quic
            ),
        )
        .unwrap();
        Agent {
            child: None,
            state_dir,
            config,
            id: v["agent_id"].as_str().unwrap().to_owned(),
        }
    }

    /// Starts `persona-agent run --config`.
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state_dir.with_extension("agent.log"))
            .unwrap();
        self.child = Some(
            Command::new(bin("persona-agent"))
                .args(["run", "--config"])
                .arg(&self.config)
                .env("PERSONA_LOG", "info,persona_agent=debug")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    /// The agent's local policy file (`<state_dir>.policy.toml`).
    pub fn policy_path(&self) -> PathBuf {
        self.state_dir.with_extension("policy.toml")
    }

    /// Replaces the policy file's text (the agent re-reads it for every command).
    pub fn set_policy(&self, text: &str) {
        std::fs::write(self.policy_path(), text).unwrap();
    }

    /// Writes the policy file and points the agent's config at it (once, before start).
    pub fn write_policy(&self, text: &str) {
        let policy = self.policy_path();
        std::fs::write(&policy, text).unwrap();
        let cfg = std::fs::read_to_string(&self.config).unwrap();
        std::fs::write(
            &self.config,
            format!("policy_file = {:?}\n{cfg}", policy.display().to_string()),
        )
        .unwrap();
    }

    pub fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            kill9(c);
        }
        self.child = None;
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Seconds of the points (rounded to whole seconds, as ticks are aligned) and checks
/// there is no duplicate. Returns the sorted seconds.
pub fn seconds_of(points: &[(f64, f64)]) -> Vec<i64> {
    let secs: Vec<i64> = points.iter().map(|(t, _)| t.round() as i64).collect();
    for w in secs.windows(2) {
        assert!(
            w[1] > w[0],
            "points not strictly increasing (duplicate or disorder) at {} -> {}",
            w[0],
            w[1]
        );
    }
    secs
}

/// The gaps (missing seconds) in a sorted run of seconds, as (last present, next present).
pub fn gaps(secs: &[i64]) -> Vec<(i64, i64)> {
    secs.windows(2)
        .filter(|w| w[1] - w[0] != 1)
        .map(|w| (w[0], w[1]))
        .collect()
}

/// Now as Unix seconds.
pub fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// `GET /metrics` over plain HTTP/1.0 on loopback; returns (status line, body).
pub fn scrape(addr: SocketAddr) -> Option<(String, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_owned(), body.to_owned()))
}

/// The value of an unlabelled sample `name` in a Prometheus text exposition.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
