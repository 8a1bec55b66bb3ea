//! From a persona distribution to a size, an instance, an install plan and suggestions.
//!
//! What it is for: the seed's AdjustInstance rule. Each resource's requirement is the
//! probability-weighted sum of the personas' p95-based requirement summaries,
//! `Σ p_i × requirement_i`, plus [`HEADROOM`]; explicit specifications from the text are
//! hard floors applied after that (a user who says "16 vCPUs" gets at least 16, never
//! 16 + headroom). Storage is the weighted OS/software base plus the declared data size;
//! the storage class is the one with the most probability mass unless the text names one.
//! The instance is the cheapest catalogue shape that holds the result. The preload plan is
//! the union of the manifests of every persona with probability ≥ [`PRELOAD_THRESHOLD`],
//! each item weighted by the probability of the personas that list it, plus the user's
//! declared software; suggestions are the recommended extras of those personas that are not
//! already in the plan.
//!
//! The configuration engine (`engine`) starts from the same rule: its prior for a running
//! VM is [`size`]'s weighted requirement plus [`HEADROOM`] over the VM's combined persona
//! distribution, which observed usage then replaces as history grows.
//!
//! What it is not: the classifier (profiler model), spec extraction (`specs`), the
//! catalogue search itself (`catalogue`) or the sizing of running VMs (`engine`).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::profile::catalogue::{Catalogue, HOURS_PER_MONTH, Target};
use crate::profile::personas::{Persona, STORAGE_CLASSES};
use crate::profile::specs::{self, ExplicitSpecs};

/// Margin above the weighted p95 requirement for CPU, memory, network, IOPS and storage.
/// A policy choice, not a measured number: p95 leaves the busiest 5% of hours above it,
/// and 20% covers the gap to a typical p99 in the Bitbrains shapes of derive/shapes.json.
pub const HEADROOM: f64 = 0.2;
/// Personas below this probability contribute nothing to the preload plan or suggestions
/// (they still contribute their share to the size).
pub const PRELOAD_THRESHOLD: f64 = 0.15;
/// Most suggestions returned.
pub const MAX_SUGGESTIONS: usize = 8;

/// One persona and its probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Weighted {
    pub slug: String,
    pub probability: f64,
}

/// The recommended storage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StorageRec {
    pub class: String,
    pub gib: f64,
    pub iops: f64,
    pub mbps: f64,
    /// Catalogue option used ("EBS gp3", "local NVMe instance store", ...).
    pub option: Option<String>,
    pub monthly_usd: f64,
}

/// The chosen instance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceRec {
    pub name: String,
    pub family: String,
    pub vcpus: u32,
    pub memory_gib: f64,
    pub gpu: Option<String>,
    pub network_gbps: f64,
    pub hourly_usd: f64,
    pub monthly_usd: f64,
}

/// The whole recommendation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommended {
    pub vcpus: u32,
    pub memory_gib: f64,
    pub gpus: u32,
    pub gpu_memory_gib: f64,
    pub gpu_model: Option<String>,
    pub network_mbps: f64,
    pub storage: StorageRec,
    pub instance: Option<InstanceRec>,
    /// Instance + storage per month (730 h).
    pub monthly_usd: Option<f64>,
    /// The raw weighted requirements before headroom and floors.
    pub weighted: BTreeMap<String, f64>,
    /// Which explicit specs raised a value.
    pub floors_applied: Vec<String>,
}

/// One item of the install plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanItem {
    pub kind: String,
    pub name: String,
    pub version: Option<String>,
    /// Σ probability of the personas listing it; 1.0 for what the user declared.
    pub weight: f64,
    /// Where it came from: persona slugs, or "declared".
    pub from: Vec<String>,
}

/// A suggestion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Suggestion {
    pub kind: String,
    pub name: String,
    pub why: String,
    pub persona: String,
    pub weight: f64,
}

fn round_up(v: f64, step: f64) -> f64 {
    (v / step).ceil() * step
}

/// Splits "torch==2.3", "nginx@1.24", "numpy>=2" into (name, version).
pub fn split_version(s: &str) -> (String, Option<String>) {
    let s = s.trim();
    for sep in ["==", ">=", "<=", "~=", "@", "="] {
        if let Some((n, v)) = s.split_once(sep) {
            let v = v.trim();
            return (
                n.trim().to_lowercase(),
                (!v.is_empty()).then(|| v.to_owned()),
            );
        }
    }
    (s.to_lowercase(), None)
}

/// Sizes from the distribution (`dist` and `personas` in the same order).
pub fn size(
    dist: &[f64],
    personas: &[Persona],
    explicit: &ExplicitSpecs,
    data_gb: Option<f64>,
    catalogue: &Catalogue,
    notes: &mut Vec<String>,
) -> Recommended {
    let sum = |f: &dyn Fn(&Persona) -> f64| -> f64 {
        dist.iter().zip(personas).map(|(p, q)| p * f(q)).sum()
    };
    let w_cpu = sum(&|q| q.requirements.cpu_cores.value);
    let w_mem = sum(&|q| q.requirements.memory_gib.value);
    let w_iops = sum(&|q| q.requirements.disk_iops.value);
    let w_mbps = sum(&|q| q.requirements.disk_mbps.value);
    let w_net = sum(&|q| q.requirements.network_mbps.value);
    let w_base = sum(&|q| q.requirements.storage_gib.value);
    let w_gpus = sum(&|q| q.requirements.gpus.value);
    // GPU memory: averaged over the GPU personas only, so a 30% chance of a 24 GiB GPU
    // does not turn into a request for a 7 GiB one.
    let gpu_mass: f64 = dist
        .iter()
        .zip(personas)
        .filter(|(_, q)| q.requirements.gpus.value > 0.0)
        .map(|(p, _)| p)
        .sum();
    let w_gpu_mem = if gpu_mass > 0.0 {
        sum(&|q| {
            if q.requirements.gpus.value > 0.0 {
                q.requirements.gpu_memory_gib.value
            } else {
                0.0
            }
        }) / gpu_mass
    } else {
        0.0
    };
    let weighted: BTreeMap<String, f64> = [
        ("cpu_cores", w_cpu),
        ("memory_gib", w_mem),
        ("disk_iops", w_iops),
        ("disk_mbps", w_mbps),
        ("network_mbps", w_net),
        ("storage_base_gib", w_base),
        ("gpus", w_gpus),
        ("gpu_memory_gib", w_gpu_mem),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), (v * 1000.0).round() / 1000.0))
    .collect();

    let h = 1.0 + HEADROOM;
    let mut floors = Vec::new();
    let mut vcpus = ((w_cpu * h).ceil() as u32).max(1);
    if let Some(v) = explicit.vcpus
        && v > vcpus
    {
        vcpus = v;
        floors.push(format!("vcpus >= {v}"));
    }
    let mut memory = round_up(w_mem * h, 0.5).max(0.5);
    if let Some(m) = explicit.memory_gib
        && m > memory
    {
        memory = m;
        floors.push(format!("memory_gib >= {m:.2}"));
    }
    // Half a GPU's worth of probability or more means a GPU.
    let mut gpus = w_gpus.round() as u32;
    let mut gpu_mem = if gpus > 0 { w_gpu_mem } else { 0.0 };
    let gpu_model = explicit.gpu_model.clone();
    if let Some(c) = explicit.gpu_count.or(gpu_model.as_ref().map(|_| 1))
        && c > gpus
    {
        gpus = c;
        floors.push(format!("gpus >= {c}"));
        if gpu_mem == 0.0 {
            gpu_mem = w_gpu_mem;
        }
    }
    if let Some(m) = explicit
        .gpu_memory_gib
        .or(gpu_model.as_deref().and_then(specs::gpu_memory_of))
        && m > gpu_mem
    {
        gpu_mem = m;
        floors.push(format!("gpu_memory_gib >= {m:.1}"));
    }
    let mut network = (w_net * h * 10.0).ceil() / 10.0;
    if let Some(n) = explicit.network_mbps
        && n > network
    {
        network = n;
        floors.push(format!("network_mbps >= {n}"));
    }

    // Storage class: most probability mass, unless the text named one.
    let mut mass: BTreeMap<&str, f64> = BTreeMap::new();
    for (p, q) in dist.iter().zip(personas) {
        *mass.entry(q.os.storage_class.as_str()).or_default() += p;
    }
    let rank = |c: &str| STORAGE_CLASSES.iter().position(|k| *k == c);
    let mut class = mass
        .iter()
        .max_by(|a, b| a.1.total_cmp(b.1).then(rank(a.0).cmp(&rank(b.0))))
        .map_or("ssd", |(c, _)| *c)
        .to_owned();
    if let Some(c) = &explicit.storage_class {
        if *c != class {
            floors.push(format!("storage class {c}"));
        }
        class = c.clone();
    }
    let data_gib = data_gb.or(explicit.data_gb).unwrap_or(0.0) * 1e9 / 1073741824.0;
    let mut gib = round_up((w_base + data_gib) * h, 1.0).max(8.0);
    if let Some(s) = explicit.storage_gib
        && s > gib
    {
        gib = round_up(s, 1.0);
        floors.push(format!("storage_gib >= {s:.1}"));
    }

    let mut target = Target {
        vcpus,
        memory_gib: memory,
        gpus,
        gpu_memory_gib: gpu_mem,
        gpu_model: gpu_model.clone(),
        network_mbps: network,
        local_nvme_gib: if class == "nvme" { gib } else { 0.0 },
    };
    let mut shape = catalogue.pick(&target);
    if shape.is_none() && target.gpu_model.is_some() {
        // The model is not offered (an RTX 4090 in a cloud catalogue): any GPU with at
        // least its memory.
        target.gpu_model = None;
        shape = catalogue.pick(&target);
        if let (Some(s), Some(m)) = (shape, &gpu_model) {
            notes.push(format!(
                "{m} is not in the catalogue; picked {} with {} GiB GPUs instead",
                s.name,
                s.gpu.as_ref().map_or(0.0, |g| g.memory_gib)
            ));
        }
    }
    if shape.is_none() && class == "nvme" {
        // No shape has that much local NVMe: attach the best block storage instead.
        target.local_nvme_gib = 0.0;
        shape = catalogue.pick(&target);
        if shape.is_some() {
            notes.push(format!(
                "no shape has {gib} GiB of local NVMe; using attached SSD block storage"
            ));
            class = "ssd".into();
        }
    }
    if shape.is_none() {
        notes.push(
            "nothing in the catalogue is big enough for this request; no instance picked".into(),
        );
    }
    let local = class == "nvme" && shape.is_some_and(|s| s.local_nvme_gb > 0.0);
    let option = catalogue.storage(&class);
    let cap = |v: f64, max: Option<f64>| max.filter(|m| *m > 0.0).map_or(v, |m| v.min(m));
    let iops = cap(
        (w_iops * h)
            .ceil()
            .max(option.map_or(0.0, |o| o.baseline_iops)),
        option.map(|o| o.max_iops),
    );
    let mbps = cap(
        (w_mbps * h)
            .ceil()
            .max(option.map_or(0.0, |o| o.baseline_mbps)),
        option.map(|o| o.max_mbps),
    );
    let storage_monthly = if local {
        0.0
    } else {
        option.map_or(0.0, |o| gib * o.price_gb_month)
    };
    let instance = shape.map(|s| InstanceRec {
        name: s.name.clone(),
        family: s.family.clone(),
        vcpus: s.vcpus,
        memory_gib: s.memory_gib,
        gpu: s
            .gpu
            .as_ref()
            .map(|g| format!("{}x {} ({} GiB)", g.count, g.model, g.memory_gib)),
        network_gbps: s.network_gbps,
        hourly_usd: s.hourly_usd,
        monthly_usd: (s.hourly_usd * HOURS_PER_MONTH * 100.0).round() / 100.0,
    });
    let monthly_usd = instance
        .as_ref()
        .map(|i| ((i.monthly_usd + storage_monthly) * 100.0).round() / 100.0);
    Recommended {
        vcpus,
        memory_gib: (memory * 100.0).round() / 100.0,
        gpus,
        gpu_memory_gib: (gpu_mem * 10.0).round() / 10.0,
        gpu_model,
        network_mbps: network,
        storage: StorageRec {
            class,
            gib,
            iops,
            mbps,
            option: option.map(|o| o.name.clone()),
            monthly_usd: (storage_monthly * 100.0).round() / 100.0,
        },
        instance,
        monthly_usd,
        weighted,
        floors_applied: floors,
    }
}

/// The install plan: manifests of the likely personas plus the declared software.
pub fn preload(dist: &[f64], personas: &[Persona], declared: &[String]) -> Vec<PlanItem> {
    let mut plan: BTreeMap<(String, String), PlanItem> = BTreeMap::new();
    for (p, q) in dist.iter().zip(personas) {
        if *p < PRELOAD_THRESHOLD {
            continue;
        }
        for item in &q.preload {
            let key = (item.kind.clone(), item.name.to_lowercase());
            let e = plan.entry(key).or_insert_with(|| PlanItem {
                kind: item.kind.clone(),
                name: item.name.clone(),
                version: item.version.clone(),
                weight: 0.0,
                from: Vec::new(),
            });
            e.weight += p;
            if e.version.is_none() {
                e.version = item.version.clone();
            }
            e.from.push(q.slug.clone());
        }
    }
    for d in declared {
        let (name, version) = split_version(d);
        if name.is_empty() {
            continue;
        }
        // The ecosystem is the one a persona lists the name under, if any.
        let kind = ecosystem_of(&name, personas).unwrap_or("declared");
        // Already planned under that name (any kind)? Mark it declared instead of adding.
        // Exact name first; a spelling variant only among non-image names ("pytorch" is
        // the pip package torch, not the nvcr.io/nvidia/pytorch image).
        let exact = plan.values().any(|e| e.name.eq_ignore_ascii_case(&name));
        if let Some(e) = plan.values_mut().find(|e| {
            if exact {
                e.name.eq_ignore_ascii_case(&name)
            } else {
                !e.name.contains('/') && same_software(&e.name, &name)
            }
        }) {
            e.weight = 1.0;
            if version.is_some() {
                e.version = version;
            }
            e.from.push("declared".into());
            continue;
        }
        plan.insert(
            (kind.to_owned(), name.clone()),
            PlanItem {
                kind: kind.to_owned(),
                name,
                version,
                weight: 1.0,
                from: vec!["declared".into()],
            },
        );
    }
    let mut out: Vec<PlanItem> = plan
        .into_values()
        .map(|mut e| {
            e.weight = (e.weight.min(1.0) * 1000.0).round() / 1000.0;
            e
        })
        .collect();
    out.sort_by(|a, b| {
        b.weight
            .total_cmp(&a.weight)
            .then(a.kind.cmp(&b.kind))
            .then(a.name.cmp(&b.name))
    });
    out
}

/// Same package under two spellings: equal ignoring case, or one name contains the other
/// with at least 4 characters ("pytorch" ~ "torch", "postgresql" ~ "postgresql-16").
pub fn same_software(a: &str, b: &str) -> bool {
    let (a, b) = (a.to_lowercase(), b.to_lowercase());
    a == b || (b.len() >= 4 && a.contains(&b)) || (a.len() >= 4 && b.contains(&a))
}

fn ecosystem_of(name: &str, personas: &[Persona]) -> Option<&'static str> {
    for q in personas {
        let s = &q.software;
        for (kind, list) in [
            ("deb", &s.deb),
            ("pip", &s.pip),
            ("npm", &s.npm),
            ("container", &s.containers),
            ("rpm", &s.rpm),
        ] {
            if list.iter().any(|p| p.name.eq_ignore_ascii_case(name)) {
                return Some(kind);
            }
        }
    }
    None
}

/// Extras of the likely personas that are not already planned.
pub fn suggestions(dist: &[f64], personas: &[Persona], plan: &[PlanItem]) -> Vec<Suggestion> {
    let mut out: Vec<Suggestion> = Vec::new();
    for (p, q) in dist.iter().zip(personas) {
        if *p < PRELOAD_THRESHOLD {
            continue;
        }
        for e in &q.extras {
            if plan.iter().any(|i| same_software(&i.name, &e.name)) {
                continue;
            }
            if let Some(s) = out
                .iter_mut()
                .find(|s| s.name.eq_ignore_ascii_case(&e.name))
            {
                s.weight += p;
                continue;
            }
            out.push(Suggestion {
                kind: e.kind.clone(),
                name: e.name.clone(),
                why: e.why.clone(),
                persona: q.slug.clone(),
                weight: *p,
            });
        }
    }
    for s in &mut out {
        s.weight = (s.weight.min(1.0) * 1000.0).round() / 1000.0;
    }
    out.sort_by(|a, b| b.weight.total_cmp(&a.weight).then(a.name.cmp(&b.name)));
    out.truncate(MAX_SUGGESTIONS);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::personas;

    fn setup() -> (Vec<Persona>, Catalogue) {
        (
            personas::builtin().expect("builtin"),
            Catalogue::builtin().expect("catalogue"),
        )
    }

    fn one_hot(ps: &[Persona], slug: &str) -> Vec<f64> {
        ps.iter()
            .map(|p| if p.slug == slug { 1.0 } else { 0.0 })
            .collect()
    }

    #[test]
    fn pure_persona_gets_its_requirement_plus_headroom() {
        let (ps, cat) = setup();
        let d = one_hot(&ps, "ci-runner");
        let r = size(&d, &ps, &ExplicitSpecs::default(), None, &cat, &mut vec![]);
        // 4 vCPUs x 1.2 -> 5, 16 GiB x 1.2 -> 19.5
        assert_eq!(r.vcpus, 5);
        assert!((r.memory_gib - 19.5).abs() < 1e-9);
        assert_eq!(r.gpus, 0);
        let i = r.instance.expect("instance");
        assert!(i.vcpus >= 5 && i.memory_gib >= 19.5);
        assert!((i.monthly_usd - i.hourly_usd * 730.0).abs() < 0.01);
    }

    #[test]
    fn mixture_is_weighted_sum() {
        let (ps, cat) = setup();
        let mut d = vec![0.0; ps.len()];
        let a = ps
            .iter()
            .position(|p| p.slug == "game-streamer")
            .expect("gs");
        let b = ps
            .iter()
            .position(|p| p.slug == "data-scientist-ml")
            .expect("ds");
        d[a] = 0.5;
        d[b] = 0.5;
        let r = size(&d, &ps, &ExplicitSpecs::default(), None, &cat, &mut vec![]);
        let want =
            0.5 * ps[a].requirements.memory_gib.value + 0.5 * ps[b].requirements.memory_gib.value;
        assert!((r.weighted["memory_gib"] - want).abs() < 1e-3);
        assert_eq!(r.gpus, 1, "both halves want a GPU");
        assert!(r.gpu_memory_gib >= 6.0);
    }

    #[test]
    fn explicit_specs_are_floors_never_ceilings() {
        let (ps, cat) = setup();
        let d = one_hot(&ps, "web-server");
        let ex = specs::extract("16 vCPUs, 64 GiB RAM, 2 TB NVMe, an A100, 10 Gbps");
        let r = size(&d, &ps, &ex, None, &cat, &mut vec![]);
        assert!(r.vcpus >= 16 && r.memory_gib >= 64.0 && r.network_mbps >= 10_000.0);
        assert!(r.storage.gib >= 2e12 / 1073741824.0);
        assert_eq!(r.storage.class, "nvme");
        assert_eq!(r.gpus, 1);
        assert!(r.floors_applied.len() >= 4);
        let i = r.instance.expect("instance");
        assert!(
            i.gpu.as_deref().is_some_and(|g| g.contains("A100")),
            "{i:?}"
        );
        // A small explicit value does not lower a bigger persona requirement.
        let d = one_hot(&ps, "database-oltp");
        let r = size(&d, &ps, &specs::extract("2 vCPUs"), None, &cat, &mut vec![]);
        assert!(r.vcpus >= 10);
    }

    #[test]
    fn unavailable_gpu_model_falls_back_by_memory() {
        let (ps, cat) = setup();
        let d = one_hot(&ps, "game-streamer");
        let mut notes = vec![];
        let r = size(
            &d,
            &ps,
            &specs::extract("an RTX 4090"),
            None,
            &cat,
            &mut notes,
        );
        assert!(r.gpu_memory_gib >= 24.0);
        assert!(r.instance.is_some());
        assert!(notes.iter().any(|n| n.contains("RTX 4090")), "{notes:?}");
    }

    #[test]
    fn storage_from_data_size() {
        let (ps, cat) = setup();
        let d = one_hot(&ps, "etl-analytics");
        let r = size(
            &d,
            &ps,
            &ExplicitSpecs::default(),
            Some(1000.0),
            &cat,
            &mut vec![],
        );
        let want: f64 = (32.0 + 1000.0 * 1e9 / 1073741824.0) * 1.2;
        assert!(r.storage.gib >= want.floor(), "{} < {want}", r.storage.gib);
    }

    #[test]
    fn plan_and_suggestions() {
        let (ps, _) = setup();
        let d = one_hot(&ps, "data-scientist-ml");
        let plan = preload(
            &d,
            &ps,
            &["torch==2.3".into(), "my-tool".into(), "PyTorch".into()],
        );
        let torch = plan.iter().find(|i| i.name == "torch").expect("torch");
        let image = plan.iter().find(|i| i.kind == "container").expect("image");
        assert_eq!(image.from, vec!["data-scientist-ml".to_owned()]);
        assert_eq!(torch.version.as_deref(), Some("2.3"));
        assert!(torch.from.contains(&"declared".to_owned()));
        assert_eq!(plan.iter().filter(|i| i.name == "torch").count(), 1);
        assert!(
            plan.iter()
                .any(|i| i.name == "my-tool" && i.kind == "declared")
        );
        let s = suggestions(&d, &ps, &plan);
        assert!(!s.is_empty());
        assert!(s.iter().all(|x| !plan.iter().any(|i| i.name == x.name)));
        // Below the threshold a persona adds nothing.
        let mut d2 = vec![0.0; ps.len()];
        d2[0] = 0.1;
        assert!(preload(&d2, &ps, &[]).is_empty());
    }
}
