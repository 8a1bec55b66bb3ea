//! The configuration engine on a live coordinator: per-VM settings, the recommendation
//! for one VM from what the store holds, the HTTP routes, and the loop that applies
//! recommendations to VMs in `initial` and `auto` mode through the command channel.
//!
//! What it is for: wiring `engine` to real inputs. A recommendation reads
//! - the host facts the agent reported (current vCPUs and memory, and `cpus_possible` as
//!   the platform's maxcpus),
//! - the combined persona distribution (`belief::belief`; when nothing is known yet, the
//!   profile of the declared purpose), turned into the prior size by the AdjustInstance
//!   rule (`recommend::size`) and into the forecast's prior shape,
//! - the explicit specs of the declared purpose (floors),
//! - the stored CPU and memory series of the last [`HISTORY_DAYS`] days, folded into
//!   one-minute steps (CPU mean, memory peak; finer when the engine is configured faster),
//! - open pressure events (`events` table: the last `pressure`/`pressure_cleared` per
//!   resource),
//!
//! and replays the engine causally over that history against the current size, so the
//! hysteresis state (how long a scale-down has been due) is the same as if the engine had
//! been watching all along. Settings live in the store (`engine_vms`, `store::engine`).
//!
//! Routes (mounted by `api::handle`):
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/recommend/{agent}` | the recommendation document |
//! | `POST /v1/recommend/{agent}/settings` | body: any of `mode`, `platform`, `min_vcpus`, `max_vcpus`, `min_memory_gib`, `max_memory_gib`, `max_memory_platform_gib` (null clears a bound) |
//! | `POST /v1/recommend/{agent}/apply` | submit the recommended resize now (any mode) |
//!
//! What it is not: the estimator (`engine`), the command channel (`commands`) or the
//! actuators (`actuate`).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

use persona_shared::command::{Action, CommandState};
use persona_shared::metrics::{self, host};
use persona_shared::resize::ResizeRequest;

use crate::commands::delivery::Hub as CommandHub;
use crate::engine::cost::{self, CostReport, Platform};
use crate::engine::policy::{self, Bounds, Hysteresis, MEMORY_BLOCK_GIB, Steps};
use crate::engine::reasons::{Kind, Reason, Why};
use crate::engine::{EngineConfig, Inputs, Pressure, Prior, Size, VmState, forecast};
use crate::profile::ProfilingService;
use crate::profile::catalogue::Catalogue;
use crate::profile::personas::{Persona, Week};
use crate::profile::specs::ExplicitSpecs;
use crate::store::{self, EngineVmBounds, EngineVmSettings, Store, StoreError};

/// Days of stored history a recommendation reads.
pub const HISTORY_DAYS: i64 = 7;
/// Resolution the history is folded to: a minute, or finer when the hysteresis is
/// configured to be faster than half an hour (tests), so it still sees 30 steps.
fn step_s(cfg: &EngineConfig) -> i64 {
    ((cfg.scale_down_after_s / 30.0).floor() as i64).clamp(1, 60)
}
/// How long an auto-mode resize command stays valid.
const RESIZE_TTL: Duration = Duration::from_secs(600);
const GIB: f64 = 1073741824.0;

/// Why a recommendation or a settings change failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineApiError {
    #[error("no agent {0}")]
    UnknownAgent(String),
    #[error(
        "agent {0} has not reported its host facts yet (vCPUs, memory): wait for it to connect"
    )]
    NoFacts(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("invalid setting: {0}")]
    Setting(String),
    #[error("the recommendation for {agent} needs no change (target = current)")]
    NothingToApply { agent: String },
    #[error("cannot submit the resize for {agent}: {source}")]
    Submit {
        agent: String,
        source: Box<crate::commands::CommandError>,
    },
}

/// How a VM's recommendations are used, as VPA's update modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Recommend only.
    #[default]
    Off,
    /// Apply once, when the VM first has a recommendation.
    Initial,
    /// Apply whenever the recommendation changes (hysteresis and cooldown apply).
    Auto,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Self::Off),
            "initial" => Ok(Self::Initial),
            "auto" => Ok(Self::Auto),
            o => Err(format!("unknown mode {o:?} (off, initial, auto)")),
        }
    }
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Initial => "initial",
            Self::Auto => "auto",
        }
    }
}

/// One VM's settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VmSettings {
    pub mode: Mode,
    pub platform: Platform,
    pub bounds: Bounds,
    pub initial_done: bool,
    pub last_applied_ms: Option<i64>,
    pub last_command: Option<String>,
    /// What the platform was found unable to do (see [`LearnedLimit`]).
    pub learned: Vec<LearnedLimit>,
    #[serde(skip)]
    pub learned_from: Option<String>,
}

/// A limit the engine learned from a resize the platform refused: the VM cannot go
/// above (`max`) or below (`min`) `value` for `resource`, because command `command`
/// asking for it failed with `reason`. The engine never asks for it again until the
/// operator clears it (`personactl recommend ID --clear-learned`).
///
/// Why it is learned from the engine's own single-resource commands only: auto mode
/// changes one resource per command (see [`auto_pass`]), so a refusal names its part,
/// and the other part is not blocked by it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearnedLimit {
    /// "cpu" (cores) or "memory" (GiB).
    pub resource: String,
    /// "max" or "min".
    pub side: String,
    pub value: f64,
    pub command: String,
    /// The platform's answer, as the command's message.
    pub reason: String,
    pub at_ms: i64,
}

fn platform_str(p: Platform) -> &'static str {
    match p {
        Platform::Catalogue => "catalogue",
        Platform::Exact => "exact",
    }
}

/// The settings of `agent_id` (defaults when none were set). Platform defaults to
/// `exact`: the actuators hot-plug whole vCPUs and memory blocks.
pub fn settings(store: &Store, agent_id: &str) -> Result<VmSettings, StoreError> {
    let Some(row) = store.engine_vm(agent_id)? else {
        return Ok(VmSettings {
            platform: Platform::Exact,
            ..VmSettings::default()
        });
    };
    let b = row.bounds;
    // Written by this module only; a row it cannot read is treated as nothing learned.
    let learned = row
        .learned
        .as_deref()
        .and_then(|t| serde_json::from_str::<Vec<LearnedLimit>>(t).ok())
        .unwrap_or_default();
    Ok(VmSettings {
        mode: row.mode.parse().unwrap_or_default(),
        platform: row.platform.parse().unwrap_or(Platform::Exact),
        bounds: Bounds {
            min_vcpus: b.min_vcpus,
            max_vcpus: b.max_vcpus,
            min_memory_gib: b.min_memory_gib,
            max_memory_gib: b.max_memory_gib,
            platform_max_vcpus: None,
            platform_max_memory_gib: b.max_memory_platform_gib,
        },
        initial_done: row.initial_done,
        last_applied_ms: row.last_applied_ms,
        last_command: row.last_command,
        learned,
        learned_from: row.learned_from,
    })
}

/// A settings change: absent keys stay, `null` clears a bound.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    pub mode: Option<String>,
    pub platform: Option<String>,
    #[serde(default, with = "double_option")]
    pub min_vcpus: Option<Option<f64>>,
    #[serde(default, with = "double_option")]
    pub max_vcpus: Option<Option<f64>>,
    #[serde(default, with = "double_option")]
    pub min_memory_gib: Option<Option<f64>>,
    #[serde(default, with = "double_option")]
    pub max_memory_gib: Option<Option<f64>>,
    #[serde(default, with = "double_option")]
    pub max_memory_platform_gib: Option<Option<f64>>,
    /// `true` forgets every learned limit (the platform was changed, say).
    pub clear_learned: Option<bool>,
}

/// `Some(None)` for an explicit null, `None` for an absent key.
mod double_option {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<f64>>, D::Error> {
        Option::<f64>::deserialize(d).map(Some)
    }
}

/// Changes the settings of `agent_id` (which must exist) and returns them.
pub fn set_settings(
    store: &Store,
    agent_id: &str,
    p: &SettingsPatch,
) -> Result<VmSettings, EngineApiError> {
    if store.agent_key(agent_id)?.is_none() {
        return Err(EngineApiError::UnknownAgent(agent_id.to_owned()));
    }
    let mut s = settings(store, agent_id)?;
    if let Some(m) = &p.mode {
        let new: Mode = m.parse().map_err(EngineApiError::Setting)?;
        if new != s.mode {
            // Switching to `initial` again means "size it once more".
            s.initial_done = false;
        }
        s.mode = new;
    }
    if let Some(pl) = &p.platform {
        s.platform = pl.parse().map_err(EngineApiError::Setting)?;
    }
    let b = &mut s.bounds;
    for (slot, v, name) in [
        (&mut b.min_vcpus, p.min_vcpus, "min_vcpus"),
        (&mut b.max_vcpus, p.max_vcpus, "max_vcpus"),
        (&mut b.min_memory_gib, p.min_memory_gib, "min_memory_gib"),
        (&mut b.max_memory_gib, p.max_memory_gib, "max_memory_gib"),
        (
            &mut b.platform_max_memory_gib,
            p.max_memory_platform_gib,
            "max_memory_platform_gib",
        ),
    ] {
        if let Some(v) = v {
            if let Some(x) = v
                && !(x.is_finite() && x > 0.0 && x <= 1e6)
            {
                return Err(EngineApiError::Setting(format!(
                    "{name} = {x}: must be a number above 0 (at most 1,000,000)"
                )));
            }
            *slot = v;
        }
    }
    for (lo, hi, what) in [
        (b.min_vcpus, b.max_vcpus, "vcpus"),
        (b.min_memory_gib, b.max_memory_gib, "memory_gib"),
    ] {
        if let (Some(l), Some(h)) = (lo, hi)
            && l > h
        {
            return Err(EngineApiError::Setting(format!(
                "min_{what} {l} is above max_{what} {h}"
            )));
        }
    }
    if p.clear_learned == Some(true) {
        store.put_engine_learned(agent_id, None, None, store::now_ms())?;
        s.learned.clear();
    }
    store.put_engine_settings(
        agent_id,
        &EngineVmSettings {
            mode: s.mode.as_str(),
            platform: platform_str(s.platform),
            bounds: EngineVmBounds {
                min_vcpus: b.min_vcpus,
                max_vcpus: b.max_vcpus,
                min_memory_gib: b.min_memory_gib,
                max_memory_gib: b.max_memory_gib,
                max_memory_platform_gib: b.platform_max_memory_gib,
            },
            initial_done: s.initial_done,
            updated_ms: store::now_ms(),
        },
    )?;
    Ok(s)
}

fn record_applied(
    store: &Store,
    agent_id: &str,
    command: &str,
    initial: bool,
) -> Result<(), StoreError> {
    store.record_engine_applied(agent_id, command, initial, store::now_ms())
}

fn mark_initial_done(store: &Store, agent_id: &str) -> Result<(), StoreError> {
    store.mark_engine_initial_done(agent_id, store::now_ms())
}

/// What a recommendation needs besides the store.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    pub store: &'a Store,
    pub cfg: &'a EngineConfig,
    pub catalogue: &'a Catalogue,
    pub personas: &'a [Persona],
    pub profiler: Option<&'a ProfilingService>,
}

/// A persona and its weight in the distribution used.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Weight {
    pub slug: String,
    pub probability: f64,
}

/// The recommendation document (`personactl recommend --json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendation {
    pub agent: String,
    pub at_ms: i64,
    pub mode: Mode,
    pub platform: Platform,
    pub current: Size,
    /// What the VM should run now (after hysteresis and cooldown).
    pub recommended: Size,
    /// The engine's target before hysteresis (what it would run with no history of
    /// changes to respect).
    pub target: Size,
    /// "none", "scale-up", "scale-down" or "mixed".
    pub change: &'static str,
    pub urgent: bool,
    pub bounds: Bounds,
    pub floors: Size,
    pub confidence: f64,
    pub history_s: f64,
    pub samples: u64,
    /// Where the persona distribution came from ("combined", "profile of the declared
    /// purpose", "none").
    pub personas_source: String,
    pub personas: Vec<Weight>,
    pub prior: Option<Size>,
    /// Storage (class, size, IOPS, throughput) from the persona prior (AdjustInstance
    /// with headroom).
    pub storage_prior: Option<crate::profile::sizing::StorageRec>,
    pub network_mbps_prior: Option<f64>,
    /// Disk IOPS and network bandwidth targets: observed p95 plus a margin, blended with
    /// the prior by confidence. Recommended only: the engine does not resize them.
    pub io: IoTargets,
    pub pressure: Vec<Pressure>,
    pub forecast_cpu: Vec<forecast::Point>,
    pub forecast_memory: Vec<forecast::Point>,
    pub reasons: Vec<Reason>,
    pub cost: CostReport,
    pub settings: VmSettings,
    /// What the `initial`/`auto` loop would apply now, and why (or what it waits for).
    pub auto: AutoGate,
}

/// Evidence before action: what auto mode may apply of a recommendation.
///
/// A recommendation on little history is mostly the persona prior's (`c·evidence +
/// (1−c)·prior`). Auto mode applies a resource's change only once the confidence has
/// reached `auto_min_confidence`, or when a pressure event on that resource asks for it,
/// or when the operator's bound forces it. Sizing at creation (`initial` mode, not yet
/// applied) is the one place where the prior alone decides. What is held stays at the
/// current size here, while `recommended` still shows the prior's suggestion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AutoGate {
    /// Whether the loop would submit a resize now (in `initial` or `auto` mode).
    pub applies: bool,
    /// The size the loop would run the VM at: `recommended` where allowed, else current.
    pub size: Size,
    /// The confidence auto mode waits for (`[engine] auto_min_confidence`).
    pub min_confidence: f64,
    /// Resources held at their current size for lack of evidence ("cpu", "memory").
    pub held: Vec<&'static str>,
    /// One line for people: what decides, or what it waits for.
    pub detail: String,
}

fn facts_size(facts: &Value) -> Option<(Size, Option<f64>)> {
    let cpus = facts.get("cpus_online")?.as_f64()?;
    let mem = facts.get("mem_total_bytes")?.as_f64()?;
    if !(cpus > 0.0 && mem > 0.0) {
        return None;
    }
    let possible = facts
        .get("cpus_possible")
        .and_then(Value::as_f64)
        .filter(|p| *p >= cpus);
    Some((
        Size {
            cpu_cores: cpus,
            memory_gib: mem / GIB,
        },
        possible,
    ))
}

/// The persona distribution, where it came from, and the purpose's explicit specs.
fn distribution(
    ctx: &Ctx<'_>,
    agent_id: &str,
    purpose: Option<&Value>,
) -> Result<(Vec<Weight>, String, ExplicitSpecs), EngineApiError> {
    let request = purpose
        .and_then(|p| serde_json::from_value::<crate::profile::ProfileRequest>(p.clone()).ok());
    let explicit = request
        .as_ref()
        .map(|r| crate::profile::specs::extract(&r.description))
        .unwrap_or_default();
    let combined = crate::profile::belief::combined(ctx.store, agent_id)?;
    if !combined.is_empty() {
        let w = combined
            .into_iter()
            .map(|p| Weight {
                slug: p.slug,
                probability: f64::from(p.probability),
            })
            .collect();
        return Ok((
            w,
            "combined prior and observed (mirroring)".into(),
            explicit,
        ));
    }
    if let (Some(req), Some(svc)) = (request, ctx.profiler)
        && let Ok(doc) = svc.profile(&req)
    {
        let w = doc
            .personas
            .into_iter()
            .map(|p| Weight {
                slug: p.slug,
                probability: p.probability,
            })
            .collect();
        return Ok((w, "profile of the declared purpose".into(), explicit));
    }
    Ok((
        Vec::new(),
        "none (no purpose declared, no mirroring yet)".into(),
        explicit,
    ))
}

/// Prior size (AdjustInstance + headroom) and the weighted weekly shapes.
fn prior_of(
    ctx: &Ctx<'_>,
    weights: &[Weight],
    explicit: &ExplicitSpecs,
) -> Option<(
    Prior,
    Size,
    (Week, Week),
    crate::profile::sizing::Recommended,
)> {
    let dist: Vec<f64> = ctx
        .personas
        .iter()
        .map(|p| {
            weights
                .iter()
                .find(|w| w.slug == p.slug)
                .map_or(0.0, |w| w.probability.max(0.0))
        })
        .collect();
    let total: f64 = dist.iter().sum();
    if total.is_nan() || total <= 0.0 {
        return None;
    }
    let dist: Vec<f64> = dist.iter().map(|p| p / total).collect();
    let rec = crate::profile::sizing::size(
        &dist,
        ctx.personas,
        &ExplicitSpecs::default(),
        None,
        ctx.catalogue,
        &mut Vec::new(),
    );
    // AdjustInstance over CPU and memory, then the profiler's headroom; storage and
    // network come from `recommend::size` (the same rule, with its storage-class logic).
    let pairs: Vec<(f64, Size)> = dist
        .iter()
        .zip(ctx.personas)
        .map(|(p, q)| {
            (
                *p,
                Size {
                    cpu_cores: q.requirements.cpu_cores.value,
                    memory_gib: q.requirements.memory_gib.value,
                },
            )
        })
        .collect();
    let w = crate::engine::adjust_instance(&pairs);
    let h = 1.0 + crate::profile::sizing::HEADROOM;
    let size = Size {
        cpu_cores: w.cpu_cores * h,
        memory_gib: w.memory_gib * h,
    };
    let top: Vec<String> = weights
        .iter()
        .filter(|w| w.probability >= 0.05)
        .take(4)
        .map(|w| format!("{} {:.2}", w.slug, w.probability))
        .collect();
    let floors = Size {
        cpu_cores: explicit.vcpus.map_or(0.0, f64::from),
        memory_gib: explicit.memory_gib.unwrap_or(0.0),
    };
    let mut cpu = vec![vec![0.0; 24]; 7];
    let mut mem = vec![vec![0.0; 24]; 7];
    for (p, persona) in dist.iter().zip(ctx.personas) {
        for (dst, src) in [
            (&mut cpu, &persona.usage.cpu_cores.p95),
            (&mut mem, &persona.usage.memory_gib.p95),
        ] {
            for (d, s) in dst.iter_mut().zip(src) {
                for (x, y) in d.iter_mut().zip(s) {
                    *x += p * y;
                }
            }
        }
    }
    Some((
        Prior {
            size,
            detail: format!(
                "AdjustInstance Σ p·requirement over {} (+{:.0}% headroom)",
                top.join(", "),
                crate::profile::sizing::HEADROOM * 100.0
            ),
        },
        floors,
        (cpu, mem),
        rec,
    ))
}

/// Margin on the observed p95 of disk IOPS and network bandwidth (the profiler's
/// headroom: both are limits a VM hits hard, like memory).
const IO_MARGIN: f64 = 0.2;

/// Disk and network targets.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct IoTargets {
    /// Read + write IOPS over all disks.
    pub disk_iops: Option<f64>,
    pub disk_iops_observed_p95: Option<f64>,
    /// Receive + transmit over all interfaces but `lo`, in Mbit/s.
    pub network_mbps: Option<f64>,
    pub network_mbps_observed_p95: Option<f64>,
}

/// The p95 of a per-timestamp sum over instances.
fn summed_p95(per_instance: Vec<Vec<(i64, f64)>>, scale: f64) -> Option<f64> {
    let mut by_t: std::collections::BTreeMap<i64, f64> = std::collections::BTreeMap::new();
    for series in per_instance {
        for (t, v) in series {
            *by_t.entry(t).or_default() += v * scale;
        }
    }
    let mut v: Vec<f64> = by_t.into_values().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    let k = ((v.len() as f64 * 0.95).ceil() as usize).clamp(1, v.len()) - 1;
    Some(*v.select_nth_unstable_by(k, f64::total_cmp).1)
}

fn names(facts: &Value, key: &str) -> Vec<String> {
    facts[key]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["name"].as_str().map(str::to_owned))
        .filter(|n| n != "lo")
        .collect()
}

/// Disk IOPS and network targets from the stored per-disk and per-interface series.
#[allow(clippy::too_many_arguments)]
fn io_targets(
    store: &Store,
    key: i64,
    agent_id: &str,
    facts: &Value,
    since_ms: i64,
    confidence: f64,
    prior: Option<&crate::profile::sizing::Recommended>,
    why: &mut Why,
) -> Result<IoTargets, StoreError> {
    let mut per_disk = Vec::new();
    for d in names(facts, "disks") {
        for idx in [metrics::disk::READ_IOPS, metrics::disk::WRITE_IOPS] {
            per_disk.push(store.series(key, agent_id, &metrics::DISK[idx], Some(&d), since_ms)?);
        }
    }
    let mut per_nic = Vec::new();
    for n in names(facts, "nics") {
        for idx in [metrics::nic::RX_BYTES_PER_S, metrics::nic::TX_BYTES_PER_S] {
            per_nic.push(store.series(key, agent_id, &metrics::NIC[idx], Some(&n), since_ms)?);
        }
    }
    let iops = summed_p95(per_disk, 1.0);
    let mbps = summed_p95(per_nic, 8.0 / 1e6);
    let blend = |name: &'static str, obs: Option<f64>, pr: Option<f64>, why: &mut Why| {
        let e = obs.map(|o| o * (1.0 + IO_MARGIN));
        let v = match (e, pr) {
            (Some(e), Some(p)) => Some(confidence * e + (1.0 - confidence) * p),
            (Some(e), None) => Some(e),
            (None, p) => p,
        };
        if let Some(o) = obs {
            why.add(name, Kind::Percentile, v, || {
                format!(
                    "p95 over the last {HISTORY_DAYS} days = {o:.1}, +{:.0}% margin, evidence \
                     weight {confidence:.2} against the prior",
                    IO_MARGIN * 100.0
                )
            });
        }
        v.map(|x| (x * 10.0).ceil() / 10.0)
    };
    Ok(IoTargets {
        disk_iops: blend("disk", iops, prior.map(|r| r.storage.iops), why),
        disk_iops_observed_p95: iops,
        network_mbps: blend("network", mbps, prior.map(|r| r.network_mbps), why),
        network_mbps_observed_p95: mbps,
    })
}

/// One-minute steps of (t_s, cpu cores used, memory GiB used) since `since_ms`.
fn history(
    store: &Store,
    key: i64,
    agent_id: &str,
    since_ms: i64,
    step: i64,
) -> Result<Vec<(f64, Size)>, StoreError> {
    let series = |idx: usize| store.series(key, agent_id, &metrics::HOST[idx], None, since_ms);
    let idle = series(host::CPU_IDLE_RATIO)?;
    let iowait = series(host::CPU_IOWAIT_RATIO)?;
    let online = series(host::CPU_ONLINE)?;
    let used = series(host::MEM_USED)?;
    // The series come from the same batches, so their timestamps line up; join by time
    // anyway so a missing block in one does not shift the others.
    use std::collections::BTreeMap;
    let iow: BTreeMap<i64, f64> = iowait.into_iter().collect();
    let onl: BTreeMap<i64, f64> = online.into_iter().collect();
    let mut steps: BTreeMap<i64, (f64, u32, f64)> = BTreeMap::new();
    for (t, idle) in idle {
        let (Some(o), w) = (onl.get(&t), iow.get(&t).copied().unwrap_or(0.0)) else {
            continue;
        };
        let cores = (o * (1.0 - idle - w)).max(0.0);
        let e = steps
            .entry(t.div_euclid(step * 1000))
            .or_insert((0.0, 0, 0.0));
        e.0 += cores;
        e.1 += 1;
    }
    for (t, b) in used {
        let e = steps
            .entry(t.div_euclid(step * 1000))
            .or_insert((0.0, 0, 0.0));
        e.2 = e.2.max(b / GIB);
    }
    Ok(steps
        .into_iter()
        .filter(|(_, (_, n, m))| *n > 0 && *m > 0.0)
        .map(|(k, (c, n, m))| {
            (
                ((k + 1) * step) as f64,
                Size {
                    cpu_cores: c / f64::from(n),
                    memory_gib: m,
                },
            )
        })
        .collect())
}

/// Open pressure events: per resource, the newest pressure event not followed by a
/// `pressure_cleared`, and no older than the history window.
fn open_pressure(
    store: &Store,
    agent_id: &str,
    since_ms: i64,
) -> Result<Vec<Pressure>, StoreError> {
    let evs = store.list_events(Some(agent_id), since_ms, 1000)?;
    let mut out: Vec<Pressure> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    // Newest first: the first event per resource decides.
    for e in evs {
        let Some(r) = e.resource.clone() else {
            continue;
        };
        if seen.contains(&r) || !(e.kind == "pressure" || e.kind == "pressure_cleared") {
            continue;
        }
        seen.push(r.clone());
        if e.kind == "pressure" {
            out.push(Pressure {
                resource: r,
                since_s: e.since_ms as f64 / 1000.0,
                at_s: e.at_ms as f64 / 1000.0,
                severity: e.severity,
                summary: e.summary,
            });
        }
    }
    Ok(out)
}

fn change_of(cur: Size, rec: Size) -> &'static str {
    let d = |a: f64, b: f64| (b - a).abs() > 1e-9;
    let up = rec.cpu_cores > cur.cpu_cores + 1e-9 || rec.memory_gib > cur.memory_gib + 1e-9;
    let down = rec.cpu_cores < cur.cpu_cores - 1e-9 || rec.memory_gib < cur.memory_gib - 1e-9;
    match (up, down) {
        _ if !d(cur.cpu_cores, rec.cpu_cores) && !d(cur.memory_gib, rec.memory_gib) => "none",
        (true, false) => "scale-up",
        (false, true) => "scale-down",
        _ => "mixed",
    }
}

/// Computes the recommendation of `agent_id` at `now_ms`.
pub fn recommend(
    ctx: &Ctx<'_>,
    agent_id: &str,
    now_ms: i64,
) -> Result<Recommendation, EngineApiError> {
    let info = ctx
        .store
        .get_agent(agent_id)?
        .ok_or_else(|| EngineApiError::UnknownAgent(agent_id.to_owned()))?;
    let key = ctx
        .store
        .agent_key(agent_id)?
        .ok_or_else(|| EngineApiError::UnknownAgent(agent_id.to_owned()))?;
    let (current, maxcpus) = info
        .facts
        .as_ref()
        .and_then(facts_size)
        .ok_or_else(|| EngineApiError::NoFacts(agent_id.to_owned()))?;
    // The platform adds memory in blocks; the guest sees a little less than it was given
    // (firmware, kernel), so compare with the size rounded up to a block.
    let current = Size {
        cpu_cores: current.cpu_cores,
        memory_gib: (current.memory_gib / MEMORY_BLOCK_GIB).ceil() * MEMORY_BLOCK_GIB,
    };
    let vm = settings(ctx.store, agent_id)?;
    let mut bounds = vm.bounds;
    // The guest's possible CPUs bound a hot-plug platform; on a cloud a bigger shape is a
    // new instance type and the guest's maxcpus says nothing about it.
    bounds.platform_max_vcpus = match vm.platform {
        Platform::Exact => maxcpus,
        Platform::Catalogue => None,
    };
    let (weights, personas_source, explicit) = distribution(ctx, agent_id, info.purpose.as_ref())?;
    let prior = prior_of(ctx, &weights, &explicit);
    let floors = prior.as_ref().map_or(
        Size {
            cpu_cores: explicit.vcpus.map_or(0.0, f64::from),
            memory_gib: explicit.memory_gib.unwrap_or(0.0),
        },
        |p| p.1,
    );
    let sizing_at_creation = vm.mode == Mode::Initial && !vm.initial_done;
    let since_ms = now_ms - HISTORY_DAYS * 86_400_000;
    let hist = history(ctx.store, key, agent_id, since_ms, step_s(ctx.cfg))?;
    let pressure = open_pressure(ctx.store, agent_id, since_ms)?;
    let shape = prior.as_ref().map(|p| (p.2.0.as_slice(), p.2.1.as_slice()));
    let mut state = VmState::new(ctx.cfg, shape);
    let mut hyst = Hysteresis::new(vm.last_applied_ms.map(|ms| ms as f64 / 1000.0));
    let steps = Steps::VM;
    let timing = ctx.cfg.timing();
    // Replay the history causally against the current size: the hysteresis learns how
    // long each scale-down has been due (nothing is applied while replaying: the size
    // that ran is the current one). Pressure is only known for now, not per step.
    for (t, u) in &hist {
        state.observe(*t, *u);
        let inp = Inputs {
            prior: prior.as_ref().map(|p| &p.0),
            current,
            pressure: &[],
            floors,
            bounds,
            steps,
            explain: false,
            initial: false,
        };
        let est = state.estimate(*t, &inp);
        hyst.track(*t, current, est.target, &timing);
    }
    let now_s = now_ms as f64 / 1000.0;
    let inp = Inputs {
        prior: prior.as_ref().map(|p| &p.0),
        current,
        pressure: &pressure,
        floors,
        bounds,
        steps,
        explain: true,
        initial: sizing_at_creation,
    };
    let est = state.estimate(now_s, &inp);
    let mut why = Why::on();
    let recommended = if sizing_at_creation {
        why.add("all", Kind::Hysteresis, None, || {
            "initial mode, not applied yet: the target is the size at creation, no hysteresis"
                .into()
        });
        est.target
    } else {
        // A scale-down has held only as long as there is evidence for it: the seconds
        // since the newest sample (up to a batch interval, or the whole time an agent is
        // away) are not evidence, so the hysteresis is asked at that sample's time.
        let decide_at = state.evidence_until_s().map_or(now_s, |t| t.min(now_s));
        hyst.decide(
            decide_at, current, est.target, est.urgent, &timing, &mut why,
        )
    };
    let (recommended, forced) = policy::enforce_bounds(recommended, steps, &vm.bounds, &mut why);
    // What the platform refused before is never asked again, whatever else says so.
    let recommended = within_learned(recommended, &vm.learned, Some(&mut why));
    // What a held resource stays at: the current size, moved inside the operator's bounds.
    let (held_at, _) = policy::enforce_bounds(current, steps, &vm.bounds, &mut Why::off());
    let held_at = within_learned(held_at, &vm.learned, None);
    let auto = gate(
        ctx.cfg,
        GateIn {
            current,
            held_at,
            recommended,
            confidence: est.confidence,
            history_s: state.history_s(),
            at_creation: sizing_at_creation,
            pressure: &pressure,
            forced,
        },
        &mut why,
    );
    let facts = info.facts.clone().unwrap_or(Value::Null);
    let io = io_targets(
        ctx.store,
        key,
        agent_id,
        &facts,
        since_ms,
        est.confidence,
        prior.as_ref().map(|p| &p.3),
        &mut why,
    )?;
    let mut reasons = est.reasons.clone();
    reasons.extend(why.into_vec());
    let forecast_cpu = est
        .forecast_cpu
        .map(|_| state_forecast(&state, now_s, true))
        .unwrap_or_default();
    let forecast_memory = est
        .forecast_memory
        .map(|_| state_forecast(&state, now_s, false))
        .unwrap_or_default();
    let cost = cost::report(ctx.catalogue, vm.platform, Some(current), recommended);
    Ok(Recommendation {
        agent: agent_id.to_owned(),
        at_ms: now_ms,
        mode: vm.mode,
        platform: vm.platform,
        current,
        recommended,
        target: est.target,
        change: change_of(current, recommended),
        urgent: est.urgent,
        bounds,
        floors,
        confidence: est.confidence,
        history_s: state.history_s(),
        samples: state.samples(),
        personas_source,
        personas: weights
            .into_iter()
            .filter(|w| w.probability >= 0.01)
            .collect(),
        prior: prior.as_ref().map(|p| p.0.size),
        storage_prior: prior.as_ref().map(|p| p.3.storage.clone()),
        network_mbps_prior: prior.as_ref().map(|p| p.3.network_mbps),
        io,
        pressure,
        forecast_cpu,
        forecast_memory,
        reasons,
        cost,
        settings: vm,
        auto,
    })
}

/// Clamps `size` into the learned limits, with a `bound` reason for each that moved it.
fn within_learned(size: Size, learned: &[LearnedLimit], mut why: Option<&mut Why>) -> Size {
    let mut v = [size.cpu_cores, size.memory_gib];
    for l in learned {
        let (i, name) = match l.resource.as_str() {
            "cpu" => (0, "cpu"),
            "memory" => (1, "memory"),
            _ => continue,
        };
        let moved = match l.side.as_str() {
            "max" if v[i] > l.value + 1e-9 => true,
            "min" if v[i] < l.value - 1e-9 => true,
            _ => false,
        };
        if moved {
            v[i] = l.value;
            if let Some(w) = why.as_deref_mut() {
                w.add(name, Kind::Bound, Some(l.value), || {
                    format!(
                        "learned: the platform refused {name} {} {} (command {}: {}); \
                         `personactl recommend AGENT --clear-learned` forgets it",
                        if l.side == "max" { "above" } else { "below" },
                        l.value,
                        l.command,
                        l.reason
                    )
                });
            }
        }
    }
    Size {
        cpu_cores: v[0],
        memory_gib: v[1],
    }
}

/// Learns from the engine's last resize of `r`'s VM if the platform refused it: a
/// single-resource request that failed becomes a [`LearnedLimit`] at the current size
/// on that side. Returns the limit when one was learned now. A command that expired or
/// was cancelled teaches nothing (the agent was away, or an operator stopped it).
pub fn learn_from_last_command(
    store: &Store,
    r: &Recommendation,
) -> Result<Option<LearnedLimit>, EngineApiError> {
    let Some(id) = r.settings.last_command.as_deref() else {
        return Ok(None);
    };
    if r.settings.learned_from.as_deref() == Some(id) {
        return Ok(None);
    }
    let Some(cmd) = store.get_command(id)? else {
        return Ok(None);
    };
    if cmd.state != CommandState::Failed.as_str() {
        return Ok(None);
    }
    let Ok(Action::Resize(req)) = serde_json::from_value::<Action>(cmd.action) else {
        return Ok(None);
    };
    let part = match (req.vcpus, req.memory_mib) {
        (Some(v), None) => ("cpu", f64::from(v), r.current.cpu_cores),
        (None, Some(m)) => ("memory", m as f64 / 1024.0, r.current.memory_gib),
        // A request of several parts (an operator's --apply) does not say which failed.
        _ => return Ok(None),
    };
    let (resource, asked, now) = part;
    if (asked - now).abs() < 1e-9 {
        return Ok(None);
    }
    let limit = LearnedLimit {
        resource: resource.to_owned(),
        side: if asked > now { "max" } else { "min" }.to_owned(),
        value: now,
        command: id.to_owned(),
        reason: cmd
            .message
            .unwrap_or_else(|| "failed without a message".into()),
        at_ms: store::now_ms(),
    };
    let mut learned: Vec<LearnedLimit> = r
        .settings
        .learned
        .iter()
        .filter(|l| !(l.resource == limit.resource && l.side == limit.side))
        .cloned()
        .collect();
    learned.push(limit.clone());
    let text =
        serde_json::to_string(&learned).map_err(|e| EngineApiError::Setting(e.to_string()))?;
    store.put_engine_learned(&r.agent, Some(&text), Some(id), store::now_ms())?;
    tracing::info!(agent = %r.agent, command = id, resource, side = %limit.side, value = now,
        "engine: learned a platform limit from a refused resize: {}", limit.reason);
    Ok(Some(limit))
}

/// What auto mode submits of `r` this pass: one resource at a time, so that a part the
/// platform refuses never blocks the other and is learned on its own. A resource under
/// pressure goes first, then CPU.
fn one_part(r: &Recommendation) -> Size {
    let to = r.auto.size;
    let cpu = (to.cpu_cores - r.current.cpu_cores).abs() > 1e-9;
    let mem = (to.memory_gib - r.current.memory_gib).abs() > 1e-9;
    if !(cpu && mem) {
        return to;
    }
    let memory_first = r.pressure.iter().any(|p| p.resource == "memory")
        && !r.pressure.iter().any(|p| p.resource == "cpu");
    if memory_first {
        Size {
            cpu_cores: r.current.cpu_cores,
            ..to
        }
    } else {
        Size {
            memory_gib: r.current.memory_gib,
            ..to
        }
    }
}

/// What [`gate`] decides on.
struct GateIn<'a> {
    current: Size,
    /// The current size inside the operator's bounds: where a held resource stays.
    held_at: Size,
    recommended: Size,
    confidence: f64,
    history_s: f64,
    at_creation: bool,
    pressure: &'a [Pressure],
    /// Per resource (cpu, memory): moved by an operator's bound.
    forced: [bool; 2],
}

/// Evidence before action (see [`AutoGate`]).
fn gate(cfg: &EngineConfig, g: GateIn<'_>, why: &mut Why) -> AutoGate {
    let min = cfg.auto_min_confidence;
    let confident = g.confidence + 1e-9 >= min;
    let cur = [g.current.cpu_cores, g.current.memory_gib];
    let rec = [g.recommended.cpu_cores, g.recommended.memory_gib];
    let held_at = [g.held_at.cpu_cores, g.held_at.memory_gib];
    let mut size = cur;
    let mut held = Vec::new();
    let mut by = Vec::new();
    for (i, name) in ["cpu", "memory"].into_iter().enumerate() {
        if (rec[i] - cur[i]).abs() <= 1e-9 {
            continue;
        }
        let pressed = g.pressure.iter().any(|p| p.resource == name);
        if g.at_creation || confident || pressed || g.forced[i] {
            size[i] = rec[i];
            if !(g.at_creation || confident) {
                by.push(format!(
                    "{name}: {}",
                    if g.forced[i] {
                        "the operator's bound"
                    } else {
                        "a pressure event"
                    }
                ));
            }
        } else if (held_at[i] - cur[i]).abs() > 1e-9 {
            // The evidence does not back the whole change, but the operator's bound
            // does: move to the bound now, the rest waits.
            size[i] = held_at[i];
            by.push(format!(
                "{name}: the operator's bound (the rest of the change waits)"
            ));
        } else {
            held.push(name);
        }
    }
    // The prior's weight falls linearly with history: confidence = history / full.
    let more_s = (min * cfg.full_confidence_s - g.history_s).max(0.0);
    let wait = || {
        format!(
            "confidence {:.2} < {min:.2} (about {} more of history) or a pressure event",
            g.confidence,
            if more_s >= 3600.0 {
                format!("{:.1} h", more_s / 3600.0)
            } else {
                format!("{:.0} min", (more_s / 60.0).ceil())
            }
        )
    };
    for name in &held {
        why.add(name, Kind::Confidence, None, || {
            format!(
                "auto mode holds the current size until {}: the recommendation is the \
                 persona prior's suggestion",
                wait()
            )
        });
    }
    let size = Size {
        cpu_cores: size[0],
        memory_gib: size[1],
    };
    let detail = if g.at_creation {
        "sizing at creation (initial mode): the persona prior decides alone, once".to_owned()
    } else if confident {
        format!(
            "confidence {:.2} >= {min:.2}: the VM's own history decides",
            g.confidence
        )
    } else if held.is_empty() && by.is_empty() {
        format!("nothing to change; a change would wait for {}", wait())
    } else {
        let mut parts = by;
        if !held.is_empty() {
            parts.push(format!("{} held until {}", held.join(" and "), wait()));
        }
        parts.join("; ")
    };
    AutoGate {
        applies: size != g.current,
        size,
        min_confidence: min,
        held,
        detail,
    }
}

fn state_forecast(state: &VmState, now_s: f64, cpu: bool) -> Vec<forecast::Point> {
    state.forecast(now_s as i64, 24, cpu)
}

/// The resize request that takes a VM from `current` to `rec`.
pub fn resize_request(current: Size, rec: Size) -> Option<ResizeRequest> {
    let vcpus = ((rec.cpu_cores - current.cpu_cores).abs() > 1e-9)
        .then(|| rec.cpu_cores.round().max(1.0) as u32);
    let memory_mib = ((rec.memory_gib - current.memory_gib).abs() > 1e-9)
        .then(|| (rec.memory_gib * 1024.0).round() as u64);
    (vcpus.is_some() || memory_mib.is_some()).then_some(ResizeRequest {
        vcpus,
        memory_mib,
        ..ResizeRequest::default()
    })
}

/// Submits a resize to `to` (the recommendation, or what auto mode may apply of it)
/// through the command channel and remembers when.
pub fn apply(
    store: &Store,
    hub: &CommandHub,
    r: &Recommendation,
    to: Size,
    initial: bool,
) -> Result<String, EngineApiError> {
    let req = resize_request(r.current, to).ok_or_else(|| EngineApiError::NothingToApply {
        agent: r.agent.clone(),
    })?;
    let id = crate::commands::submit(store, &r.agent, Action::Resize(req), RESIZE_TTL).map_err(
        |source| EngineApiError::Submit {
            agent: r.agent.clone(),
            source: Box::new(source),
        },
    )?;
    hub.wake_agent(store, &r.agent);
    record_applied(store, &r.agent, &id, initial)?;
    tracing::info!(agent = %r.agent, command = %id, change = r.change, "engine: resize submitted");
    Ok(id)
}

pub fn ctx_parts(svc: Option<&Arc<ProfilingService>>) -> Result<(Catalogue, Vec<Persona>), String> {
    match svc {
        Some(s) => {
            let ps =
                s.db.all()
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .map(|p| p.persona)
                    .collect();
            Ok((s.catalogue.clone(), ps))
        }
        None => Ok((
            Catalogue::builtin().map_err(|e| e.to_string())?,
            crate::profile::personas::builtin().map_err(|e| e.to_string())?,
        )),
    }
}

/// One pass over the VMs in `initial` and `auto` mode: applies what is due.
pub fn auto_pass(
    store: &Store,
    hub: &CommandHub,
    cfg: &EngineConfig,
    svc: Option<&Arc<ProfilingService>>,
) -> Result<usize, EngineApiError> {
    let agents = store.engine_vms_enabled()?;
    if agents.is_empty() {
        return Ok(0);
    }
    let (catalogue, personas) = ctx_parts(svc).map_err(EngineApiError::Setting)?;
    let ctx = Ctx {
        store,
        cfg,
        catalogue: &catalogue,
        personas: &personas,
        profiler: svc.map(Arc::as_ref),
    };
    let mut applied = 0;
    for vm in agents {
        let (agent, initial_done, last) = (vm.agent_id, vm.initial_done, vm.last_applied_ms);
        let mode: Mode = vm.mode.parse().unwrap_or_default();
        if mode == Mode::Initial && initial_done {
            continue;
        }
        let now = store::now_ms();
        let r = match recommend(&ctx, &agent, now) {
            Ok(r) => r,
            Err(EngineApiError::NoFacts(_)) => continue,
            Err(e) => {
                tracing::warn!(%agent, "engine: no recommendation: {e}");
                continue;
            }
        };
        match learn_from_last_command(store, &r) {
            // The next pass sizes with the new limit; this one must not re-send the
            // refused part.
            Ok(Some(_)) => continue,
            Ok(None) => {}
            Err(e) => tracing::warn!(%agent, "engine: {e}"),
        }
        if !r.auto.applies {
            // Held for lack of evidence, or nothing to change.
            if r.change != "none" {
                tracing::debug!(%agent, "engine: not applied: {}", r.auto.detail);
            }
            if r.change == "none" && mode == Mode::Initial {
                // Already the right size at creation: nothing to apply, ever.
                if let Err(e) = mark_initial_done(store, &agent) {
                    tracing::warn!(%agent, "engine: {e}");
                }
            }
            continue;
        }
        // One resize at a time: while the engine's last command has not finished
        // (pending for an agent that is away, delivered, running), another would only
        // queue behind it, and the facts do not show its effect yet.
        if let Some(last_cmd) = r.settings.last_command.as_deref()
            && let Ok(Some(c)) = crate::commands::get(store, last_cmd)
            && !CommandState::parse(&c.state).is_some_and(CommandState::is_final)
        {
            continue;
        }
        // A resize just made must show in the facts before the next one; the cooldown
        // covers scale-downs, this covers everything else.
        if !r.urgent
            && last.is_some_and(|l| (now - l) as f64 / 1000.0 < cfg.evaluate_every_s.max(30.0))
        {
            continue;
        }
        // Initial sizing is done once its last part is submitted.
        let to = one_part(&r);
        let initial_done = mode == Mode::Initial && to == r.auto.size;
        match apply(store, hub, &r, to, initial_done) {
            Ok(_) => applied += 1,
            Err(e) => tracing::warn!(%agent, "engine: {e}"),
        }
    }
    Ok(applied)
}

/// Re-evaluates VMs in `initial` and `auto` mode every `evaluate_every_s` until shutdown.
pub async fn auto_loop(
    store: Arc<Store>,
    hub: Arc<CommandHub>,
    cfg: EngineConfig,
    svc: Option<Arc<ProfilingService>>,
    passes: Arc<std::sync::atomic::AtomicU64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let every = Duration::from_secs_f64(cfg.evaluate_every_s.max(1.0));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        let (st, hb, cf, sv) = (store.clone(), hub.clone(), cfg.clone(), svc.clone());
        match tokio::task::spawn_blocking(move || auto_pass(&st, &hb, &cf, sv.as_ref())).await {
            Ok(Ok(n)) if n > 0 => tracing::info!(applied = n, "engine: auto pass"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("engine: auto pass failed: {e}"),
            Err(e) => tracing::warn!("engine: auto pass panicked: {e}"),
        }
        passes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn store_with_agent() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("t.db")).expect("store");
        let (token, _) = store.create_token(60_000, 1).expect("token");
        store
            .enroll(&token, "a-1", "host", "fp")
            .expect("enroll")
            .expect("accepted");
        (dir, store)
    }

    #[test]
    fn settings_round_trip_and_bad_values_are_refused() {
        let (_d, store) = store_with_agent();
        let s = settings(&store, "a-1").expect("defaults");
        assert_eq!(s.mode, Mode::Off);
        assert_eq!(s.platform, Platform::Exact);
        let p: SettingsPatch = serde_json::from_value(json!({
            "mode": "auto", "platform": "catalogue", "min_vcpus": 2.0, "max_memory_gib": 64.0
        }))
        .expect("patch");
        let s = set_settings(&store, "a-1", &p).expect("set");
        assert_eq!(s.mode, Mode::Auto);
        assert_eq!(s.bounds.min_vcpus, Some(2.0));
        let again = settings(&store, "a-1").expect("read back");
        assert_eq!(again, s);
        // null clears one bound and leaves the others.
        let p: SettingsPatch = serde_json::from_value(json!({ "min_vcpus": null })).expect("patch");
        let s = set_settings(&store, "a-1", &p).expect("clear");
        assert_eq!(s.bounds.min_vcpus, None);
        assert_eq!(s.bounds.max_memory_gib, Some(64.0));
        for bad in [
            json!({ "mode": "sometimes" }),
            json!({ "platform": "mainframe" }),
            json!({ "min_vcpus": -1.0 }),
            json!({ "min_memory_gib": 128.0 }),
        ] {
            let p: SettingsPatch = serde_json::from_value(bad.clone()).expect("patch");
            let e = set_settings(&store, "a-1", &p).expect_err("refused");
            assert!(matches!(e, EngineApiError::Setting(_)), "{bad}: {e}");
        }
        assert!(serde_json::from_value::<SettingsPatch>(json!({ "colour": 1 })).is_err());
        // `initial` sizes once: done stays done until the mode is set again.
        let p: SettingsPatch = serde_json::from_value(json!({ "mode": "initial" })).expect("p");
        assert!(
            !set_settings(&store, "a-1", &p)
                .expect("initial")
                .initial_done
        );
        mark_initial_done(&store, "a-1").expect("done");
        assert!(settings(&store, "a-1").expect("read").initial_done);
        let p: SettingsPatch = serde_json::from_value(json!({ "mode": "auto" })).expect("p");
        assert!(!set_settings(&store, "a-1", &p).expect("auto").initial_done);
        let p = SettingsPatch::default();
        assert!(matches!(
            set_settings(&store, "a-404", &p),
            Err(EngineApiError::UnknownAgent(_))
        ));
    }

    #[test]
    fn io_p95_sums_instances_per_timestamp() {
        // Two disks: the sum per timestamp is 0..=99 plus 100 (disk b constant).
        let a: Vec<(i64, f64)> = (0..100).map(|t| (t, t as f64)).collect();
        let b: Vec<(i64, f64)> = (0..100).map(|t| (t, 100.0)).collect();
        assert_eq!(summed_p95(vec![a, b], 1.0), Some(194.0));
        assert_eq!(summed_p95(vec![vec![(0, 1e6)]], 8.0 / 1e6), Some(8.0));
        assert_eq!(summed_p95(vec![], 1.0), None);
    }

    #[test]
    fn resize_requests_name_only_what_changes() {
        let cur = Size {
            cpu_cores: 2.0,
            memory_gib: 8.0,
        };
        assert_eq!(resize_request(cur, cur), None);
        let r = resize_request(
            cur,
            Size {
                cpu_cores: 4.0,
                memory_gib: 8.0,
            },
        )
        .expect("a change");
        assert_eq!((r.vcpus, r.memory_mib), (Some(4), None));
        let r = resize_request(
            cur,
            Size {
                cpu_cores: 2.0,
                memory_gib: 6.125,
            },
        )
        .expect("a change");
        assert_eq!((r.vcpus, r.memory_mib), (None, Some(6272)));
    }

    #[test]
    fn recommendation_needs_facts() {
        let (_d, store) = store_with_agent();
        let cat = Catalogue::builtin().expect("catalogue");
        let ps = crate::profile::personas::builtin().expect("personas");
        let cfg = EngineConfig::default();
        let ctx = Ctx {
            store: &store,
            cfg: &cfg,
            catalogue: &cat,
            personas: &ps,
            profiler: None,
        };
        assert!(matches!(
            recommend(&ctx, "a-1", store::now_ms()),
            Err(EngineApiError::NoFacts(_))
        ));
        assert!(matches!(
            recommend(&ctx, "nobody", store::now_ms()),
            Err(EngineApiError::UnknownAgent(_))
        ));
        // With facts and no history, the current size stands and the cost is reported.
        let key = store.agent_key("a-1").expect("key").expect("agent");
        store
            .update_agent(
                key,
                Some(r#"{"cpus_online":4,"cpus_possible":8,"mem_total_bytes":17179869184}"#),
                None,
            )
            .expect("facts");
        let r = recommend(&ctx, "a-1", store::now_ms()).expect("recommendation");
        assert_eq!(r.current.cpu_cores, 4.0);
        assert_eq!(r.current.memory_gib, 16.0);
        assert_eq!(r.recommended, r.current);
        assert_eq!(r.change, "none");
        assert_eq!(r.bounds.platform_max_vcpus, Some(8.0));
        assert!(r.cost.current.is_some());
    }

    /// Plans that apply in part (issue 20, item 2): a refused single-resource resize is
    /// learned once as a limit at the current size, the engine never recommends past it
    /// (not even for an operator's bound), and clearing forgets it; auto mode sends one
    /// resource per command.
    #[test]
    fn a_refused_part_is_learned_once_never_asked_again_and_can_be_cleared() {
        let (_d, store) = store_with_agent();
        let cat = Catalogue::builtin().expect("catalogue");
        let ps = crate::profile::personas::builtin().expect("personas");
        let cfg = EngineConfig::default();
        let ctx = Ctx {
            store: &store,
            cfg: &cfg,
            catalogue: &cat,
            personas: &ps,
            profiler: None,
        };
        let key = store.agent_key("a-1").expect("key").expect("agent");
        store
            .update_agent(
                key,
                Some(r#"{"cpus_online":2,"cpus_possible":8,"mem_total_bytes":4294967296}"#),
                None,
            )
            .expect("facts");
        let req = ResizeRequest {
            memory_mib: Some(8192),
            ..ResizeRequest::default()
        };
        let id = crate::commands::submit(&store, "a-1", Action::Resize(req), RESIZE_TTL)
            .expect("submit");
        store
            .record_engine_applied("a-1", &id, false, store::now_ms())
            .expect("applied");
        let refusal = "8192 MiB wanted but the guest has 4096 MiB of memory blocks: the \
                       hypervisor must hot-add memory first";
        let failed = persona_shared::command::CommandUpdate {
            id: id.clone(),
            state: CommandState::Failed,
            at_ms: store::now_ms(),
            step: None,
            bytes: None,
            percent: None,
            message: Some(refusal.into()),
        };
        assert!(crate::commands::apply_update(&store, key, &failed).expect("update"));
        let r = recommend(&ctx, "a-1", store::now_ms()).expect("recommendation");
        let l = learn_from_last_command(&store, &r)
            .expect("learn")
            .expect("a limit");
        assert_eq!(
            (l.resource.as_str(), l.side.as_str(), l.value),
            ("memory", "max", 4.0)
        );
        assert_eq!(l.command, id);
        assert!(l.reason.contains("hot-add memory first"), "{l:?}");
        // Once only.
        let r = recommend(&ctx, "a-1", store::now_ms()).expect("recommendation");
        assert_eq!(r.settings.learned, vec![l.clone()]);
        assert_eq!(learn_from_last_command(&store, &r).expect("learn"), None);
        // An operator's minimum above it does not make the engine ask again.
        let b: SettingsPatch =
            serde_json::from_value(json!({ "min_memory_gib": 8.0, "mode": "auto" })).expect("p");
        set_settings(&store, "a-1", &b).expect("bound");
        let r = recommend(&ctx, "a-1", store::now_ms()).expect("recommendation");
        assert_eq!(r.recommended.memory_gib, 4.0, "{:?}", r.reasons);
        assert!(!r.auto.applies, "{:?}", r.auto);
        assert!(
            r.reasons
                .iter()
                .any(|x| x.kind == Kind::Bound && x.detail.contains("learned")),
            "{:?}",
            r.reasons
        );
        // Cleared: the bound applies again.
        let c: SettingsPatch = serde_json::from_value(json!({ "clear_learned": true })).expect("p");
        assert!(
            set_settings(&store, "a-1", &c)
                .expect("clear")
                .learned
                .is_empty()
        );
        let r = recommend(&ctx, "a-1", store::now_ms()).expect("recommendation");
        assert_eq!(r.recommended.memory_gib, 8.0);
        assert!(r.auto.applies);
        // And it is not learned again from the same command.
        assert_eq!(learn_from_last_command(&store, &r).expect("learn"), None);
        // One resource per command: CPU first, memory first only under memory pressure.
        let mut both = r.clone();
        both.auto.size = Size {
            cpu_cores: 4.0,
            memory_gib: 8.0,
        };
        assert_eq!(
            one_part(&both),
            Size {
                cpu_cores: 4.0,
                memory_gib: r.current.memory_gib
            }
        );
        both.pressure = vec![Pressure {
            resource: "memory".into(),
            since_s: 0.0,
            at_s: 0.0,
            severity: "warning".into(),
            summary: String::new(),
        }];
        assert_eq!(
            one_part(&both),
            Size {
                cpu_cores: r.current.cpu_cores,
                memory_gib: 8.0
            }
        );
    }

    /// Evidence before action (issue 20, items 1 and 3): with a declared purpose and no
    /// history, the recommendation is the prior's suggestion and auto mode holds it; an
    /// operator's bound moves the VM at once, and only that resource.
    #[test]
    fn auto_mode_holds_the_prior_and_applies_operator_bounds_at_once() {
        let (dir, store) = store_with_agent();
        let svc = ProfilingService::open(dir.path(), None).expect("profiler");
        let cat = Catalogue::builtin().expect("catalogue");
        let ps = crate::profile::personas::builtin().expect("personas");
        let cfg = EngineConfig::default();
        let ctx = Ctx {
            store: &store,
            cfg: &cfg,
            catalogue: &cat,
            personas: &ps,
            profiler: Some(&svc),
        };
        let key = store.agent_key("a-1").expect("key").expect("agent");
        store
            .update_agent(
                key,
                Some(r#"{"cpus_online":2,"cpus_possible":2,"mem_total_bytes":4294967296}"#),
                Some(
                    r#"{"description":"full-stack developer VM: docker, postgres, node, webpack builds"}"#,
                ),
            )
            .expect("facts");
        let auto: SettingsPatch = serde_json::from_value(json!({ "mode": "auto" })).expect("p");
        set_settings(&store, "a-1", &auto).expect("auto");
        let r = recommend(&ctx, "a-1", store::now_ms()).expect("recommendation");
        assert_eq!(r.confidence, 0.0);
        assert!(r.prior.is_some(), "the purpose gives a prior");
        assert_ne!(r.recommended, r.current, "the prior suggests another size");
        assert!(!r.auto.applies, "{:?}", r.auto);
        assert_eq!(r.auto.size, r.current);
        assert!(!r.auto.held.is_empty());
        assert!(
            r.auto.detail.contains("confidence 0.00 < 0.50"),
            "{}",
            r.auto.detail
        );
        assert!(
            r.reasons
                .iter()
                .any(|x| x.kind == Kind::Confidence && x.detail.contains("prior's suggestion")),
            "{:?}",
            r.reasons
        );
        // Bounds: at most 1 vCPU, at least 6 GiB. Both move now, whatever the evidence.
        let b: SettingsPatch =
            serde_json::from_value(json!({ "max_vcpus": 1.0, "min_memory_gib": 6.0 })).expect("p");
        set_settings(&store, "a-1", &b).expect("bounds");
        let r = recommend(&ctx, "a-1", store::now_ms()).expect("recommendation");
        assert_eq!(r.recommended.cpu_cores, 1.0);
        assert!(r.recommended.memory_gib >= 6.0);
        assert!(r.auto.applies, "{:?}", r.auto);
        assert_eq!(r.auto.size.cpu_cores, 1.0);
        assert!(r.auto.size.memory_gib >= 6.0);
        assert!(
            r.auto.detail.contains("operator's bound"),
            "{}",
            r.auto.detail
        );
        let req = resize_request(r.current, r.auto.size).expect("a resize");
        assert_eq!(req.vcpus, Some(1));
        // Only a bound moves memory here: without it, memory is held at the current size.
        let b: SettingsPatch =
            serde_json::from_value(json!({ "min_memory_gib": null })).expect("p");
        set_settings(&store, "a-1", &b).expect("clear");
        let r = recommend(&ctx, "a-1", store::now_ms()).expect("recommendation");
        assert_eq!(r.auto.size.cpu_cores, 1.0);
        assert_eq!(r.auto.size.memory_gib, r.current.memory_gib);
        assert!(
            r.reasons
                .iter()
                .any(|x| x.kind == Kind::Bound && x.detail.contains("at once")),
            "{:?}",
            r.reasons
        );
    }
}
