//! `persona-coordinator demo`: the whole loop on one machine, for a first look. It
//! starts a coordinator on loopback with its data in `./persona-data`, enrolls an
//! in-process agent with a fresh join token (the same QUIC, mTLS and SQLite path a fleet
//! uses), streams, and redraws a live view of this machine from what the coordinator
//! stored: the machine's figures, the persona the coordinator holds for it (declared with
//! `--purpose`, mirrored from the agent's own reports, and the two combined) and the
//! configuration engine's current recommendation. It is a showcase over the real parts,
//! not a separate code path.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::watch;

use persona_agent::config::{AgentConfig, PurposeConfig};
use persona_agent::enroll::{EnrollOptions, enroll};
use persona_agent::identity::Identity;

use persona_coordinator::ServerSettings;
use persona_coordinator::app::App;
use persona_coordinator::recommend;
use persona_coordinator::{CoordError, ServeOptions, start};
use persona_shared::protocol::PersonaProb;

/// Errors of the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("coordinator: {0}")]
    Coordinator(#[from] CoordError),
    #[error("enrolling the local agent: {0}")]
    Enroll(#[from] persona_agent::enroll::EnrollError),
    #[error("store: {0}")]
    Store(#[from] persona_coordinator::store::StoreError),
    #[error("agent: {0}")]
    Agent(String),
}

/// Options of the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub http: SocketAddr,
    /// Stop after this many seconds (None: until Ctrl-C).
    pub seconds: Option<u64>,
    pub json: bool,
    /// What this machine is for (the agent's `[purpose]` description), if given.
    pub purpose: Option<String>,
}

/// Runs the demo until Ctrl-C (`stop`) or `seconds`.
pub async fn run(
    opts: DemoOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), DemoError> {
    let (tx, rx) = watch::channel(false);
    let coord = start(
        ServeOptions {
            data_dir: opts.data_dir.clone(),
            listen: opts.listen,
            http: opts.http,
            advertise: None,
            // Short batches so the view follows the machine closely.
            settings: ServerSettings {
                batch_interval_s: 2,
                ..ServerSettings::default()
            },
        },
        rx.clone(),
    )
    .await?;
    let agent_dir = opts.data_dir.join("agent");
    let known = Identity::load(&agent_dir).ok().and_then(|id| {
        coord
            .app
            .store
            .agent_key(&id.agent_id)
            .ok()
            .flatten()
            .map(|_| id)
    });
    let identity = match known {
        Some(id) => id,
        None => {
            let (token, _) = coord.app.store.create_token(600_000, 1)?;
            enroll(EnrollOptions {
                coordinator: coord.quic_addr.to_string(),
                token,
                ca_hash: coord.ca_hash.clone(),
                state_dir: agent_dir.clone(),
            })
            .await?
        }
    };
    let key = coord
        .app
        .store
        .agent_key(&identity.agent_id)?
        .ok_or_else(|| DemoError::Agent("enrolled agent missing from the database".into()))?;
    let config = AgentConfig {
        coordinator: Some(coord.quic_addr.to_string()),
        state_dir: agent_dir,
        batch_interval_s: 2,
        process_every: 2,
        purpose: opts.purpose.clone().map(|description| PurposeConfig {
            description,
            ..PurposeConfig::default()
        }),
        ..AgentConfig::default()
    };
    // The agent stops first, so it can deliver its last batch before the coordinator goes.
    let (agent_tx, mut agent_stop) = watch::channel(false);
    let agent = tokio::spawn(async move {
        persona_agent::daemon::run(config, async move {
            let _ = agent_stop.changed().await;
        })
        .await
    });

    if !opts.json {
        eprintln!(
            "Persona demo: coordinator on {} (QUIC) and http://{} (API), data in {}\nagent {} enrolled; try `personactl agents show {}` in another terminal. Ctrl-C stops.",
            coord.quic_addr,
            coord.http_addr,
            opts.data_dir.display(),
            identity.agent_id,
            identity.agent_id
        );
    }
    let tty = std::io::stdout().is_terminal();
    let started = Instant::now();
    let deadline = opts.seconds.map(|s| started + Duration::from_secs(s));
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if agent.is_finished() {
            break;
        }
        if !opts.json {
            let app = coord.app.clone();
            let id = identity.agent_id.clone();
            let view = tokio::task::spawn_blocking(move || {
                render(&app.store, key, &id, started.elapsed()).map(|mut text| {
                    text += &decisions(&app, &id).0;
                    text
                })
            })
            .await;
            if let Ok(Ok(text)) = view {
                let mut out = std::io::stdout().lock();
                if tty {
                    let _ = write!(out, "\x1b[H\x1b[2J");
                }
                let _ = writeln!(out, "{text}");
                let _ = out.flush();
            }
        }
    }
    let _ = agent_tx.send(true);
    let agent_result = agent.await.map_err(|e| DemoError::Agent(e.to_string()))?;
    let summary = summary(&coord, key, &identity.agent_id)?;
    let _ = tx.send(true);
    coord.wait().await;
    agent_result.map_err(|e| DemoError::Agent(e.to_string()))?;
    if opts.json {
        println!("{summary}");
    } else {
        eprintln!("stopped; data kept in {}", opts.data_dir.display());
    }
    Ok(())
}

fn summary(
    coord: &persona_coordinator::Coordinator,
    key: i64,
    agent_id: &str,
) -> Result<Value, DemoError> {
    let store = &coord.app.store;
    let info = store.get_agent(agent_id)?;
    let latest = store.latest(key)?;
    let (_, decided) = decisions(&coord.app, agent_id);
    Ok(json!({
        "persona": decided["persona"],
        "recommendation": decided["recommendation"],
        "agent_id": agent_id,
        "quic": coord.quic_addr.to_string(),
        "api": coord.http_addr.to_string(),
        "ca_hash": coord.ca_hash,
        "batches": info.as_ref().map(|i| i.batches),
        "latest": latest.map(|(ts, v)| json!({
            "ts": ts as f64 / 1000.0,
            "values": v.into_iter().map(|(k, x)| (k, serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number))).collect::<serde_json::Map<_, _>>(),
        })),
    }))
}

/// The top of a distribution, for one line: "slug 0.62, slug 0.20, slug 0.10".
fn top(v: &[PersonaProb]) -> String {
    v.iter()
        .take(3)
        .map(|p| format!("{} {:.2}", p.slug, p.probability))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The persona the coordinator holds for the agent (declared, mirrored, combined) and the
/// engine's recommendation now, as text for the view and as JSON for `--json`. Each part
/// says what it waits for when it has nothing yet, rather than failing the view.
fn decisions(app: &App, agent_id: &str) -> (String, Value) {
    let mut s = String::from("\n");
    let belief = persona_coordinator::profile::belief::belief(&app.store, agent_id);
    let persona = match &belief {
        Ok(Some(b)) => {
            let or = |v: &[PersonaProb], none: &str| {
                if v.is_empty() {
                    none.to_owned()
                } else {
                    top(v)
                }
            };
            s += &format!(
                "Persona   declared  {}\n          mirrored  {}\n          combined  {}\n",
                or(&b.prior, "none (give one with --purpose TEXT)"),
                if b.observed.is_empty() {
                    "none yet (the agent's mirror model reports as windows fill)".to_owned()
                } else {
                    format!(
                        "{}  ({} reports, {:.2} h)",
                        top(&b.observed),
                        b.reports,
                        b.observed_hours
                    )
                },
                if b.combined.is_empty() {
                    "-".to_owned()
                } else {
                    format!(
                        "{}  (declared weight {:.2})",
                        top(&b.combined),
                        b.prior_weight
                    )
                }
            );
            json!({"declared": b.prior, "mirrored": b.observed, "combined": b.combined,
                   "mirror_reports": b.reports, "declared_weight": b.prior_weight})
        }
        Ok(None) => {
            s += "Persona   none yet: no purpose declared (--purpose TEXT) and no mirror report\n";
            Value::Null
        }
        Err(e) => {
            s += &format!("Persona   unavailable: {e}\n");
            Value::Null
        }
    };
    let rec = match recommend::ctx_parts(Some(&app.profiling)) {
        Err(e) => Err(e),
        Ok((catalogue, personas)) => {
            let ctx = recommend::Ctx {
                store: &app.store,
                cfg: &app.settings.engine,
                catalogue: &catalogue,
                personas: &personas,
                profiler: Some(&app.profiling),
            };
            recommend::recommend(&ctx, agent_id, persona_coordinator::store::now_ms())
                .map_err(|e| e.to_string())
        }
    };
    let recommendation = match rec {
        Ok(r) => {
            let size = |z: persona_coordinator::engine::Size| {
                format!("{} vCPU, {:.2} GiB", z.cpu_cores, z.memory_gib)
            };
            s += &format!(
                "Recommend {} now -> {} ({}), confidence {:.2}\n          auto mode: {}{}\n",
                size(r.current),
                size(r.recommended),
                r.change,
                r.confidence,
                if r.auto.applies {
                    "would apply: "
                } else {
                    "would not apply: "
                },
                r.auto.detail
            );
            serde_json::to_value(&r).unwrap_or(Value::Null)
        }
        Err(e) => {
            s += &format!("Recommend not yet: {e}\n");
            Value::Null
        }
    };
    (
        s,
        json!({"persona": persona, "recommendation": recommendation}),
    )
}

fn render(
    store: &persona_coordinator::store::Store,
    key: i64,
    agent_id: &str,
    up: Duration,
) -> Result<String, DemoError> {
    let Some((ts, values)) = store.latest(key)? else {
        return Ok(format!(
            "waiting for the first batch from agent {agent_id} ({} s)...",
            up.as_secs()
        ));
    };
    let v: HashMap<String, f64> = values.into_iter().collect();
    let g = |k: &str| v.get(k).copied().unwrap_or(f64::NAN);
    let pct = |k: &str| g(k) * 100.0;
    let gib = |k: &str| g(k) / 1073741824.0;
    let mb = |k: &str| g(k) / 1e6;
    let age = (persona_coordinator::store::now_ms() - ts) as f64 / 1000.0;
    let mut s = format!(
        "Persona demo  agent {agent_id}  up {}s  newest sample {age:.1}s old\n\n",
        up.as_secs()
    );
    s += &format!(
        "CPU      user {:5.1}%  system {:5.1}%  iowait {:5.1}%  steal {:5.1}%  idle {:5.1}%  ({} vCPUs, load {:.2})\n",
        pct("cpu.user_ratio"),
        pct("cpu.system_ratio"),
        pct("cpu.iowait_ratio"),
        pct("cpu.steal_ratio"),
        pct("cpu.idle_ratio"),
        g("cpu.online_count"),
        g("load.avg1_tasks")
    );
    s += &format!(
        "Memory   used {:6.2} GiB of {:6.2} GiB  available {:6.2} GiB  cached {:6.2} GiB  swap {:5.2} GiB\n",
        gib("mem.used_bytes"),
        gib("mem.total_bytes"),
        gib("mem.available_bytes"),
        gib("mem.cached_bytes"),
        gib("mem.swap_used_bytes")
    );
    s += &format!(
        "Pressure cpu {:5.2}%  memory {:5.2}%  io {:5.2}%  (PSI some avg10)\n",
        g("psi.cpu.some_avg10_pct"),
        g("psi.memory.some_avg10_pct"),
        g("psi.io.some_avg10_pct")
    );
    s += &format!(
        "Disk     read {:8.2} MB/s  write {:8.2} MB/s  {:6.0} r/s {:6.0} w/s  busy {:5.1}%\n",
        mb("disk.read_bytes_per_s"),
        mb("disk.write_bytes_per_s"),
        g("disk.read_iops"),
        g("disk.write_iops"),
        g("disk.busy_pct")
    );
    s += &format!(
        "Network  rx {:8.3} MB/s  tx {:8.3} MB/s  {:6.0} pkt/s in {:6.0} pkt/s out\n",
        mb("net.rx_bytes_per_s"),
        mb("net.tx_bytes_per_s"),
        g("net.rx_packets_per_s"),
        g("net.tx_packets_per_s")
    );
    if let Some(info) = store.get_agent(agent_id)?
        && let Some(procs) = info.top_processes.as_ref().and_then(Value::as_array)
    {
        s += "\nTop processes          CPU%      RSS\n";
        for p in procs.iter().take(10) {
            s += &format!(
                "  {:<18} {:6.1} {:8.1} MiB\n",
                p["comm"].as_str().unwrap_or("?"),
                p["cpu_pct"].as_f64().unwrap_or(0.0),
                p["rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
            );
        }
    }
    Ok(s)
}
