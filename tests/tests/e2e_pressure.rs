//! Real load against a real agent and coordinator: CPU burners, a memory hog, fsync-heavy
//! writes and a loopback TCP flood each raise the matching pressure event, which reaches
//! the coordinator (stored, listed by `personactl events` and `agents show`), and raise
//! no pressure event for another resource.
//!
//! The machine is shared (2 cores, other builds and tests running), so:
//! - the loads run one at a time (a process-wide lock);
//! - a resource already under pressure before the load starts ("ambient", seen during a
//!   quiet phase) is not held against the load;
//! - the memory and network thresholds are set through the agent's `[detect]` config to
//!   lines the load crosses for sure (1 GiB under MemAvailable, with a hog that grows until
//!   it is under that line whatever the VM's balloon does; a 400 Mbit/s speed
//!   for `lo`; the run queue above what the machine showed just before, since other
//!   builds keep its CPUs busy), and in the memory, I/O and network cases CPU pressure
//!   is switched off (`ignore = ["cpu"]`), because a parallel compile saturates this
//!   machine's two cores at any time. The CPU case checks that a CPU load raises no memory, I/O or network
//!   pressure.
//!
//! It also prints (does not assert) how long each event took from the first sample that
//! showed the condition, and from the sample that raised it, to being stored by the
//! coordinator: `cargo test -p persona-tests --test e2e_pressure -- --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use persona_tests::load::Load;
use persona_tests::{Agent, Coord, wait_for};
use serde_json::Value;

/// One load at a time in this process.
static SERIAL: Mutex<()> = Mutex::new(());

const QUIET: Duration = Duration::from_secs(6);
const LOAD_MAX: Duration = Duration::from_secs(90);
const EVENT_WAIT: Duration = Duration::from_secs(60);
/// CPU pressure off (for the non-CPU cases, see the module docs).
const CPU_OFF: &str = "ignore = [\"cpu\"]\n";

struct Rig {
    _dir: tempfile::TempDir,
    coord: Coord,
    agent: Agent,
}

fn rig(name: &str, detect: &str) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(&dir.path().join("coord"), 0, 0, &[]);
    let (token, ca) = coord.token(&[]);
    let mut agent = Agent::enroll(dir.path(), name, &coord, &token, &ca);
    let mut cfg = std::fs::read_to_string(&agent.config).unwrap();
    cfg.push_str("\n[detect]\n");
    cfg.push_str(detect);
    std::fs::write(&agent.config, cfg).unwrap();
    agent.start();
    let id = agent.id.clone();
    wait_for(Duration::from_secs(60), "the agent's first batch", || {
        let v = coord.ctl(&["agents", "show", &id]);
        (v["batches"].as_i64().unwrap_or(0) >= 1).then_some(())
    });
    Rig {
        _dir: dir,
        coord,
        agent,
    }
}

fn events(r: &Rig) -> Vec<Value> {
    let v = r
        .coord
        .ctl(&["events", "--agent", &r.agent.id, "--since", "1h"]);
    v["events"].as_array().cloned().unwrap_or_default()
}

/// Resources with a pressure event in `evs`.
fn pressured(evs: &[Value]) -> BTreeSet<String> {
    evs.iter()
        .filter(|e| e["kind"] == "pressure")
        .filter_map(|e| e["resource"].as_str().map(str::to_owned))
        .collect()
}

fn now_ms() -> i64 {
    (persona_tests::now_s() * 1000.0) as i64
}

/// Quiet phase, then `start` the load and wait for `resource`'s pressure event at the
/// coordinator; checks that no other resource came under pressure during the load.
fn case(r: &Rig, resource: &str, start: impl FnOnce() -> Load) {
    std::thread::sleep(QUIET);
    let ambient = pressured(&events(r));
    let started = now_ms();
    let load = start();
    let got = wait_for(EVENT_WAIT, &format!("{resource} pressure event"), || {
        events(r).into_iter().find(|e| {
            e["kind"] == "pressure"
                && e["resource"] == resource
                && e["at_ms"].as_i64().unwrap_or(0) >= started - 1000
        })
    });
    let work = load.work();
    let report = load.stop();
    assert!(work > 0, "the {resource} load did no work: {report:?}");
    // The event says since when and why.
    assert!(got["since_ms"].as_i64().unwrap() <= got["at_ms"].as_i64().unwrap());
    assert!(
        got["evidence"]
            .as_array()
            .is_some_and(|e| !e.is_empty() && e.iter().all(|x| x["value"].is_number())),
        "{got}"
    );
    // Give a cross-talk event the debounce time to show before judging.
    std::thread::sleep(Duration::from_secs(3));
    let during: Vec<Value> = events(r)
        .into_iter()
        .filter(|e| e["at_ms"].as_i64().unwrap_or(0) >= started)
        .collect();
    let others: BTreeSet<String> = pressured(&during)
        .into_iter()
        .filter(|x| x != resource && !ambient.contains(x))
        .collect();
    assert!(
        others.is_empty(),
        "the {resource} load also raised pressure on {others:?}: {during:#?}"
    );
    let received = got["received_ms"].as_i64().unwrap();
    eprintln!(
        "{resource}: event {} ({}) stored {} ms after its first sample, {} ms after the sample that raised it; evidence {}",
        got["id"],
        got["severity"],
        received - got["since_ms"].as_i64().unwrap(),
        received - got["at_ms"].as_i64().unwrap(),
        got["evidence"]
    );
    // `agents show` carries the recent events too, and the persona beliefs: the prior
    // for the purpose the harness declares, and the combined distribution.
    let show = r.coord.ctl(&["agents", "show", &r.agent.id]);
    assert!(
        show["events"]
            .as_array()
            .is_some_and(|v| v.iter().any(|e| e["id"] == got["id"])),
        "{show}"
    );
    for k in ["prior", "observed", "combined"] {
        let list = show[k]
            .as_array()
            .unwrap_or_else(|| panic!("no {k}: {show}"));
        assert!(
            list.iter()
                .all(|p| p["slug"].is_string() && p["probability"].is_number()),
            "{k}: {show}"
        );
    }
    assert!(!show["prior"].as_array().unwrap().is_empty(), "{show}");
    assert!(!show["combined"].as_array().unwrap().is_empty(), "{show}");
    // Their history: at least the snapshot taken when the prior was set at Hello.
    let token = std::fs::read_to_string(r.coord.data_dir.join("admin.token")).unwrap();
    let api = persona_coordinator::cli::client::Client::new(r.coord.http, token.trim());
    let b = api
        .call_blocking(
            hyper::Method::GET,
            &format!("/v1/agents/{}/beliefs", r.agent.id),
            None,
        )
        .unwrap();
    assert!(
        b["history"].as_array().is_some_and(|h| h
            .iter()
            .any(|x| x["prior"].as_array().is_some_and(|p| !p.is_empty()))),
        "{b}"
    );
    // The human table of `personactl events`.
    let out = r.coord.ctl_output(&["events", "--agent", &r.agent.id]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && table.contains("SEVERITY"),
        "{table}"
    );
    assert!(table.contains(&format!("{resource} pressure")), "{table}");
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn cpu_burners_raise_cpu_pressure() {
    let _one = lock();
    // Other builds keep this machine's CPUs busy, so "busy" alone cannot tell the load
    // apart: the case uses the run-queue signal, with a line above the most runnable
    // tasks seen just before, which the burners' own threads cross whatever else runs.
    const BURNERS: usize = 12;
    let vcpus = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
    let ambient = persona_tests::load::runnable_max(Duration::from_secs(3));
    let line = (ambient + BURNERS as f64 / 2.0) / vcpus;
    let r = rig(
        "cpu",
        &format!("cpu_busy_pct = 0.0\ncpu_steal_pct = 0.0\ncpu_runqueue_per_vcpu = {line:.3}\n"),
    );
    case(&r, "cpu", || Load::cpu(BURNERS, LOAD_MAX));
}

#[test]
fn a_memory_hog_raises_memory_pressure() {
    let _one = lock();
    // The line sits 1 GiB below what is available when the agent starts. The hog grows
    // until MemAvailable is 512 MiB under the line and holds it there, whatever the
    // hypervisor's balloon does meanwhile (see `Load::memory_until_available`), and
    // never holds more than 12 GiB or 60% of what was available.
    const MARGIN: u64 = 1 << 30;
    let (avail, total) = persona_tests::load::meminfo().unwrap();
    let line = avail.saturating_sub(MARGIN);
    let pct = line as f64 / total as f64 * 100.0;
    let r = rig(
        "mem",
        &format!("mem_available_pct = {:.3}\n{CPU_OFF}", pct.clamp(0.1, 99.0)),
    );
    let cap = ((avail as f64 * 0.6) as usize).min(12 << 30);
    case(&r, "memory", || {
        Load::memory_until_available(line.saturating_sub(MARGIN / 2), cap, LOAD_MAX)
    });
}

#[test]
fn fsync_writes_raise_io_pressure() {
    let _one = lock();
    let r = rig("io", CPU_OFF);
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    case(&r, "io", || {
        Load::fsync_writes(dir.path(), 4, 4096, LOAD_MAX)
    });
}

#[test]
fn a_loopback_flood_raises_network_pressure() {
    let _one = lock();
    // 60 MB/s is 480 Mbit/s: over 90% of the 400 Mbit/s configured for lo.
    let r = rig(
        "net",
        &format!("nic_speed_mbps = {{ lo = 400 }}\n{CPU_OFF}"),
    );
    let t = Instant::now();
    case(&r, "network", || {
        Load::loopback_flood(Some(60 << 20), LOAD_MAX)
    });
    assert!(t.elapsed() < LOAD_MAX + QUIET + EVENT_WAIT);
}

/// An event raised while the coordinator is down is kept in the agent's outbox and
/// delivered once it is back (same data directory, same ports), and acknowledged.
#[test]
fn an_event_raised_while_the_coordinator_is_down_arrives_when_it_is_back() {
    let _one = lock();
    let mut r = rig(
        "down",
        &format!("nic_speed_mbps = {{ lo = 400 }}\n{CPU_OFF}"),
    );
    std::thread::sleep(QUIET);
    let (quic, http) = (r.coord.quic.port(), r.coord.http.port());
    let data_dir = r.coord.data_dir.clone();
    r.coord.kill();
    let down_at = now_ms();
    let load = Load::loopback_flood(Some(60 << 20), LOAD_MAX);
    let log = r.agent.state_dir.with_extension("agent.log");
    wait_for(EVENT_WAIT, "the agent to raise network pressure", || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.contains("event: network pressure"))
    });
    load.stop();
    r.coord = Coord::start(&data_dir, quic, http, &[]);
    let got = wait_for(Duration::from_secs(120), "the queued event", || {
        events(&r).into_iter().find(|e| {
            e["kind"] == "pressure"
                && e["resource"] == "network"
                && e["at_ms"].as_i64().unwrap_or(0) >= down_at
        })
    });
    assert!(got["received_ms"].as_i64().unwrap() > got["at_ms"].as_i64().unwrap());
    // The coordinator acknowledged it, so the agent dropped it from its queue and will
    // not offer it again (the agent logs acknowledgements at debug level).
    wait_for(
        Duration::from_secs(30),
        "the agent to see the EventAck",
        || {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|t| t.contains("event acked"))
        },
    );
}
