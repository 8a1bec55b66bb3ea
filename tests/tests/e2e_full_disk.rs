//! Issue 18 item 9 on a real full disk: the agent's state directory on a tmpfs of a
//! few pages, the coordinator away, so the outbox fills the file system. The agent must
//! keep sampling and answering its metrics endpoint, drop the oldest batches and count
//! them, and leave no batch unsealed: once the coordinator is back, with the disk
//! still full, the outbox drains and every sequence number up to the last one committed
//! is either stored there or counted as dropped (the bug was a batch left unsealed and
//! never sent, a gap nobody counted; then, acknowledged batches that could not be
//! deleted on the full disk, so the link went round resending them until an operator
//! made room). Written against the real thing, this test also found the agent dropping
//! the same batch forever at 100% CPU once the disk was truly full (a delete whose
//! commit failed unseen), which SQLite's `max_page_count` in the unit test cannot show.
//!
//! Mounting needs root (CI runs as root). Without it the test says so and passes only
//! outside CI; with `CI=true` it fails, like the packaging tests with a missing tool.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use persona_tests::{Agent, Coord, metric, scrape};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .ok()?;
        if out.status.success() {
            return Some(Tmpfs(at.to_owned()));
        }
        let why = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            std::env::var_os("CI").is_none_or(|v| v != "true"),
            "cannot mount a tmpfs in CI: {why}"
        );
        eprintln!("skipped: cannot mount a tmpfs here (not root?): {why}");
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Like `wait_for`, but a timeout panics with the agent's newest log lines and the disk.
fn wait_or_explain<T>(
    limit: Duration,
    what: &str,
    agent: &Agent,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if std::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(agent.state_dir.with_extension("agent.log"))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            let df = Command::new("df")
                .arg("-k")
                .arg(&agent.state_dir)
                .output()
                .unwrap();
            panic!(
                "timed out after {limit:?} waiting for {what}\n{}\nagent log, newest first:\n{}",
                String::from_utf8_lossy(&df.stdout),
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn agent_metrics(addr: std::net::SocketAddr) -> Option<String> {
    let (status, body) = scrape(addr)?;
    status.contains("200").then_some(body)
}

#[test]
fn a_full_disk_drops_the_oldest_batches_counts_them_and_leaves_none_unsealed() {
    let dir = tempfile::tempdir().unwrap();
    let cdir = dir.path().join("coord");
    let mut coord = Coord::start(&cdir, 0, 0, &[]);
    let quic_port = coord.quic.port();
    let (token, ca_hash) = coord.token(&[]);
    // The state dir is the mount point: identity, command log and outbox share 320 KiB
    // (the two databases' WAL and shared-memory files take about 180 KiB of it at start).
    let Some(disk) = Tmpfs::mount(&dir.path().join("agent"), "320k") else {
        return;
    };
    let mut agent = Agent::enroll(dir.path(), "agent", &coord, &token, &ca_hash);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let maddr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let cfg = std::fs::read_to_string(&agent.config)
        .unwrap()
        .replace("sample_interval_ms = 1000", "sample_interval_ms = 100")
        .replace("batch_interval_s = 5", "batch_interval_s = 1");
    std::fs::write(
        &agent.config,
        format!("metrics_listen = \"{maddr}\"\n{cfg}"),
    )
    .unwrap();

    // The coordinator is away: everything stays in the outbox until the disk is full.
    coord.kill();
    agent.start();
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    let full = loop {
        let m = agent_metrics(maddr);
        if let Some(m) = &m
            && metric(m, "persona_agent_outbox_dropped_batches_total").is_some_and(|d| d >= 3.0)
        {
            break m.clone();
        }
        if std::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(agent.state_dir.with_extension("agent.log"))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let df = Command::new("df")
                .arg("-k")
                .arg(&agent.state_dir)
                .output()
                .unwrap();
            panic!(
                "no batches dropped in 240 s\nmetrics: {}\n{}\nlog (newest first):\n{}",
                m.unwrap_or_default()
                    .lines()
                    .filter(|l| l.starts_with("persona_agent_outbox"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                String::from_utf8_lossy(&df.stdout),
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!(
        "full disk: dropped {:?}, pending {:?}, write errors {:?}",
        metric(&full, "persona_agent_outbox_dropped_batches_total"),
        metric(&full, "persona_agent_outbox_pending_batches"),
        metric(&full, "persona_agent_outbox_write_errors_total"),
    );
    // Still sampling and sealing: new batches keep replacing the oldest.
    let before = metric(&full, "persona_agent_outbox_dropped_batches_total").unwrap();
    wait_or_explain(
        Duration::from_secs(60),
        "more batches dropped",
        &agent,
        || {
            let m = agent_metrics(maddr)?;
            (metric(&m, "persona_agent_outbox_dropped_batches_total")? > before + 2.0).then_some(())
        },
    );

    // The coordinator is back and the disk stays full: the outbox still drains (an
    // acknowledged batch whose delete does not fit is settled in memory, not resent,
    // and its row is what makes room for the next batch), and every sequence number is
    // then stored at the coordinator or counted as dropped. Before, the deletes of
    // acknowledged batches failed here and the link went round resending them.
    let coord = Coord::start(&cdir, quic_port, 0, &[]);
    wait_or_explain(
        Duration::from_secs(90),
        "the agent to reconnect",
        &agent,
        || {
            let v = coord.ctl(&["agents", "show", &agent.id]);
            (v["state"] == "connected").then_some(())
        },
    );
    let (stored, dropped, committed) = wait_or_explain(
        Duration::from_secs(120),
        "the outbox drained without a gap",
        &agent,
        || {
            let m = agent_metrics(maddr)?;
            let dropped = metric(&m, "persona_agent_outbox_dropped_batches_total")?;
            let pending = metric(&m, "persona_agent_outbox_pending_batches")?;
            let a = coord.ctl(&["agents", "show", &agent.id]);
            let (stored, committed) = (a["batches"].as_f64()?, a["committed_seq"].as_f64()?);
            (pending <= 2.0 && stored + dropped == committed)
                .then_some((stored, dropped, committed))
        },
    );
    eprintln!(
        "on the full disk, coordinator back: {stored} stored + {dropped} dropped = seq {committed}"
    );
    assert!(dropped >= 3.0 && stored > 0.0);
    // Nothing was dropped for the deletes: new batches keep coming and are stored.
    let m = agent_metrics(maddr).unwrap();
    let dropped_then = metric(&m, "persona_agent_outbox_dropped_batches_total").unwrap();
    // The coordinator tells the agent its own batch interval (10 s): three more batches.
    wait_or_explain(
        Duration::from_secs(90),
        "three more batches stored with the disk full",
        &agent,
        || {
            let a = coord.ctl(&["agents", "show", &agent.id]);
            (a["batches"].as_f64()? >= stored + 3.0).then_some(())
        },
    );
    let m = agent_metrics(maddr).unwrap();
    let dropped_now = metric(&m, "persona_agent_outbox_dropped_batches_total").unwrap();
    assert!(
        dropped_now <= dropped_then + 1.0,
        "batches dropped while the link drained: {dropped_then} -> {dropped_now}"
    );
    drop(disk);
    agent.kill();
}
