//! Persona definitions: the strict schema of a persona file, its full validation, and the
//! built-in catalogue that ships inside the binary (`coordinator/personas/<slug>.toml`).
//!
//! What it is for: one place that says what a persona *is* (software stack by ecosystem,
//! data sets, a week of hourly p50/p95 usage per resource, a requirement summary, preferred
//! OS/configuration, a preload manifest and recommended extras, each number tied to a cited
//! source) and refuses anything else with the field path and the reason. `personactl
//! personas import`, the database seed and the tests all go through [`parse_persona`].
//!
//! What it is not: storage (see `persona_db`), sizing (see `recommend`) or the profiler
//! model. The built-in files are generated from `personas/derive/meta/*.toml` plus real
//! trace shapes by `personas/derive/build_personas.py`; edit the meta files, not the output.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Days in a usage week and hours in a day: every series is 7 rows of 24 values.
pub const DAYS: usize = 7;
/// Hours per day row.
pub const HOURS: usize = 24;
/// Storage classes a persona (and the catalogue) may name, cheapest first.
pub const STORAGE_CLASSES: [&str; 3] = ["hdd", "ssd", "nvme"];
/// Preload item kinds.
pub const PRELOAD_KINDS: [&str; 6] = ["deb", "rpm", "pip", "npm", "container", "dataset"];
/// Largest persona file accepted (a real one is about 17 KB).
pub const MAX_PERSONA_BYTES: usize = 1024 * 1024;

/// Why a persona file was refused. `path` is the field path (e.g.
/// `usage.cpu_cores.p95[3][7]`), so an operator can find the line to fix.
#[derive(Debug, thiserror::Error)]
pub enum PersonaError {
    #[error("persona file is not valid {format}: {message}")]
    Syntax {
        format: &'static str,
        message: String,
    },
    #[error("persona field {path}: {reason}")]
    Field { path: String, reason: String },
    #[error("persona file is {size} bytes, more than the {max} accepted")]
    TooLarge { size: usize, max: usize },
    #[error("persona file is not UTF-8: {0}")]
    NotUtf8(String),
}

fn field(path: impl Into<String>, reason: impl Into<String>) -> PersonaError {
    PersonaError::Field {
        path: path.into(),
        reason: reason.into(),
    }
}

/// A cited source. Every number in a persona refers to one by `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub id: String,
    pub title: String,
    pub url: String,
    pub accessed: String,
    pub used_for: String,
}

/// One package or image; `version` only where it matters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// The typical software stack, by ecosystem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Software {
    pub deb: Vec<Package>,
    pub rpm: Vec<Package>,
    pub pip: Vec<Package>,
    pub npm: Vec<Package>,
    pub containers: Vec<Package>,
}

/// A data set people with this persona commonly use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    pub name: String,
    pub size_gb: f64,
    pub source: String,
    #[serde(rename = "ref")]
    pub reference: String,
}

/// One summarised requirement with its source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    pub value: f64,
    #[serde(rename = "ref")]
    pub reference: String,
    pub note: String,
}

/// The requirement summary per resource (p95-based: what the persona needs at its busy hour).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirements {
    pub cpu_cores: Requirement,
    pub memory_gib: Requirement,
    pub disk_iops: Requirement,
    pub disk_mbps: Requirement,
    pub network_mbps: Requirement,
    /// OS and software; the declared data size is added on top when sizing.
    pub storage_gib: Requirement,
    pub gpus: Requirement,
    pub gpu_memory_gib: Requirement,
}

/// Preferred OS and configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OsConfig {
    pub distribution: String,
    pub kernel_params: Vec<String>,
    pub filesystem: String,
    pub storage_class: String,
    pub refs: Vec<String>,
    pub sysctls: BTreeMap<String, String>,
}

/// Which real trace the weekly shape came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageShape {
    pub family: String,
    pub refs: Vec<String>,
    pub note: String,
}

/// A week of hourly values: 7 day rows (Monday first) of 24 hours.
pub type Week = Vec<Vec<f64>>;

/// p50 and p95 of one resource for every hour of a week.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Series {
    pub p50: Week,
    pub p95: Week,
}

/// The weekly usage profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    pub cpu_cores: Series,
    pub memory_gib: Series,
    pub disk_iops: Series,
    pub disk_mbps: Series,
    pub network_mbps: Series,
}

/// One thing to install or fetch before the user arrives.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreloadItem {
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Software people with this persona use that the user did not ask for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extra {
    pub kind: String,
    pub name: String,
    pub why: String,
}

/// A persona, as stored, imported and exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Persona {
    pub slug: String,
    pub name: String,
    pub description: String,
    pub sources: Vec<Source>,
    pub software: Software,
    pub datasets: Vec<Dataset>,
    pub requirements: Requirements,
    pub os: OsConfig,
    pub usage_shape: UsageShape,
    pub preload: Vec<PreloadItem>,
    pub extras: Vec<Extra>,
    pub usage: Usage,
}

/// The built-in catalogue, compiled in. The ten fixed slugs of DESIGN.md.
pub const BUILTIN: [(&str, &str); 10] = [
    (
        "data-scientist-ml",
        include_str!("../../personas/data-scientist-ml.toml"),
    ),
    (
        "fullstack-developer",
        include_str!("../../personas/fullstack-developer.toml"),
    ),
    (
        "game-streamer",
        include_str!("../../personas/game-streamer.toml"),
    ),
    (
        "hft-modeler",
        include_str!("../../personas/hft-modeler.toml"),
    ),
    ("web-server", include_str!("../../personas/web-server.toml")),
    (
        "database-oltp",
        include_str!("../../personas/database-oltp.toml"),
    ),
    ("ci-runner", include_str!("../../personas/ci-runner.toml")),
    (
        "etl-analytics",
        include_str!("../../personas/etl-analytics.toml"),
    ),
    ("vdi-office", include_str!("../../personas/vdi-office.toml")),
    (
        "media-render",
        include_str!("../../personas/media-render.toml"),
    ),
];

/// Parses and validates every built-in persona (a failure is a build defect; the unit
/// test `builtins_are_valid` keeps it from shipping).
pub fn builtin() -> Result<Vec<Persona>, PersonaError> {
    BUILTIN
        .iter()
        .map(|(_, text)| parse_persona(text.as_bytes(), Format::Toml))
        .collect()
}

/// File formats a persona can come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Json,
}

impl Format {
    /// JSON if the text starts with `{` (after whitespace), TOML otherwise.
    pub fn sniff(bytes: &[u8]) -> Self {
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') | Some(b'[') => Format::Json,
            _ => Format::Toml,
        }
    }
}

/// Parses one persona (strict: unknown or missing fields are refused) and validates it.
pub fn parse_persona(bytes: &[u8], format: Format) -> Result<Persona, PersonaError> {
    if bytes.len() > MAX_PERSONA_BYTES {
        return Err(PersonaError::TooLarge {
            size: bytes.len(),
            max: MAX_PERSONA_BYTES,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| PersonaError::NotUtf8(e.to_string()))?;
    let p: Persona = match format {
        Format::Toml => toml::from_str(text).map_err(|e| PersonaError::Syntax {
            format: "TOML",
            message: e.to_string().trim().replace('\n', " "),
        })?,
        Format::Json => serde_json::from_str(text).map_err(|e| PersonaError::Syntax {
            format: "JSON",
            message: e.to_string(),
        })?,
    };
    validate(&p)?;
    Ok(p)
}

/// Parses a file holding either one persona or a list of them (`personactl personas
/// export` writes `{"personas": [...]}`; a single persona file is also accepted).
pub fn parse_many(bytes: &[u8]) -> Result<Vec<Persona>, PersonaError> {
    if bytes.len() > 16 * MAX_PERSONA_BYTES {
        return Err(PersonaError::TooLarge {
            size: bytes.len(),
            max: 16 * MAX_PERSONA_BYTES,
        });
    }
    if Format::sniff(bytes) == Format::Json {
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| PersonaError::Syntax {
                format: "JSON",
                message: e.to_string(),
            })?;
        let list = match v {
            serde_json::Value::Object(mut m) if m.contains_key("personas") && m.len() == 1 => {
                m.remove("personas").unwrap_or_default()
            }
            serde_json::Value::Array(_) => v,
            other => serde_json::Value::Array(vec![other]),
        };
        let serde_json::Value::Array(items) = list else {
            return Err(field("personas", "must be a list of personas"));
        };
        let mut out = Vec::with_capacity(items.len());
        let mut seen = BTreeSet::new();
        for (i, item) in items.into_iter().enumerate() {
            let text = item.to_string();
            let p = parse_persona(text.as_bytes(), Format::Json).map_err(|e| match e {
                PersonaError::Field { path, reason } => PersonaError::Field {
                    path: format!("personas[{i}].{path}"),
                    reason,
                },
                PersonaError::Syntax { format, message } => PersonaError::Syntax {
                    format,
                    message: format!("personas[{i}]: {message}"),
                },
                other => other,
            })?;
            if !seen.insert(p.slug.clone()) {
                return Err(field(
                    format!("personas[{i}].slug"),
                    format!("{} appears twice in the file", p.slug),
                ));
            }
            out.push(p);
        }
        if out.is_empty() {
            return Err(field("personas", "the file holds no persona"));
        }
        Ok(out)
    } else {
        Ok(vec![parse_persona(bytes, Format::Toml)?])
    }
}

/// Slug syntax: 2..=64 chars of `a-z`, `0-9` and `-`, starting with a letter, no `--`, no
/// trailing `-` (it is used in URLs and file names).
pub fn valid_slug(s: &str) -> bool {
    let b = s.as_bytes();
    (2..=64).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && !s.contains("--")
        && !s.ends_with('-')
}

fn text(path: &str, s: &str, max: usize) -> Result<(), PersonaError> {
    if s.trim().is_empty() {
        return Err(field(path, "must not be empty"));
    }
    if s.len() > max {
        return Err(field(path, format!("longer than {max} bytes")));
    }
    if s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(field(path, "contains control characters"));
    }
    Ok(())
}

fn number(path: &str, v: f64, max: f64) -> Result<(), PersonaError> {
    if !v.is_finite() {
        return Err(field(path, "must be a finite number"));
    }
    if !(0.0..=max).contains(&v) {
        return Err(field(path, format!("{v} is out of range 0..={max}")));
    }
    Ok(())
}

/// Upper bounds per resource: far beyond any single VM today, so only nonsense is refused.
const MAX_CPU: f64 = 1024.0;
const MAX_MEM_GIB: f64 = 32768.0;
const MAX_IOPS: f64 = 10_000_000.0;
const MAX_MBPS_DISK: f64 = 200_000.0;
const MAX_NET_MBPS: f64 = 1_600_000.0;
const MAX_STORAGE_GIB: f64 = 1_048_576.0;
const MAX_GPUS: f64 = 64.0;
const MAX_GPU_MEM: f64 = 4096.0;

fn week(path: &str, w: &Week, max: f64) -> Result<(), PersonaError> {
    if w.len() != DAYS {
        return Err(field(
            path,
            format!("expected {DAYS} day rows, found {}", w.len()),
        ));
    }
    for (d, row) in w.iter().enumerate() {
        if row.len() != HOURS {
            return Err(field(
                format!("{path}[{d}]"),
                format!("expected {HOURS} hourly values, found {}", row.len()),
            ));
        }
        for (h, v) in row.iter().enumerate() {
            number(&format!("{path}[{d}][{h}]"), *v, max)?;
        }
    }
    Ok(())
}

fn series(path: &str, s: &Series, max: f64) -> Result<(), PersonaError> {
    week(&format!("{path}.p50"), &s.p50, max)?;
    week(&format!("{path}.p95"), &s.p95, max)?;
    for d in 0..DAYS {
        for h in 0..HOURS {
            let (a, b) = (s.p50[d][h], s.p95[d][h]);
            if b < a {
                return Err(field(
                    format!("{path}.p95[{d}][{h}]"),
                    format!("p95 {b} is below p50 {a}"),
                ));
            }
        }
    }
    Ok(())
}

/// Full validation: everything a serde derive cannot say.
pub fn validate(p: &Persona) -> Result<(), PersonaError> {
    if !valid_slug(&p.slug) {
        return Err(field(
            "slug",
            format!(
                "{:?} is not a valid slug (2-64 chars of a-z, 0-9 and '-', starting with a letter)",
                p.slug
            ),
        ));
    }
    text("name", &p.name, 200)?;
    text("description", &p.description, 4000)?;
    if p.sources.is_empty() {
        return Err(field("sources", "at least one source must be cited"));
    }
    let mut ids = BTreeSet::new();
    for (i, s) in p.sources.iter().enumerate() {
        text(&format!("sources[{i}].id"), &s.id, 100)?;
        text(&format!("sources[{i}].title"), &s.title, 1000)?;
        text(&format!("sources[{i}].url"), &s.url, 1000)?;
        text(&format!("sources[{i}].accessed"), &s.accessed, 40)?;
        text(&format!("sources[{i}].used_for"), &s.used_for, 1000)?;
        if !ids.insert(s.id.as_str()) {
            return Err(field(
                format!("sources[{i}].id"),
                format!("duplicate source id {:?}", s.id),
            ));
        }
    }
    let cited = |path: String, r: &str| -> Result<(), PersonaError> {
        if ids.contains(r) {
            Ok(())
        } else {
            Err(field(path, format!("refers to unknown source {r:?}")))
        }
    };
    for (eco, list) in [
        ("deb", &p.software.deb),
        ("rpm", &p.software.rpm),
        ("pip", &p.software.pip),
        ("npm", &p.software.npm),
        ("containers", &p.software.containers),
    ] {
        for (i, pkg) in list.iter().enumerate() {
            text(&format!("software.{eco}[{i}].name"), &pkg.name, 200)?;
            if let Some(v) = &pkg.version {
                text(&format!("software.{eco}[{i}].version"), v, 100)?;
            }
        }
    }
    for (i, d) in p.datasets.iter().enumerate() {
        text(&format!("datasets[{i}].name"), &d.name, 300)?;
        text(&format!("datasets[{i}].source"), &d.source, 1000)?;
        number(&format!("datasets[{i}].size_gb"), d.size_gb, 10_000_000.0)?;
        cited(format!("datasets[{i}].ref"), &d.reference)?;
    }
    let r = &p.requirements;
    for (name, req, max) in [
        ("cpu_cores", &r.cpu_cores, MAX_CPU),
        ("memory_gib", &r.memory_gib, MAX_MEM_GIB),
        ("disk_iops", &r.disk_iops, MAX_IOPS),
        ("disk_mbps", &r.disk_mbps, MAX_MBPS_DISK),
        ("network_mbps", &r.network_mbps, MAX_NET_MBPS),
        ("storage_gib", &r.storage_gib, MAX_STORAGE_GIB),
        ("gpus", &r.gpus, MAX_GPUS),
        ("gpu_memory_gib", &r.gpu_memory_gib, MAX_GPU_MEM),
    ] {
        let path = format!("requirements.{name}");
        number(&format!("{path}.value"), req.value, max)?;
        cited(format!("{path}.ref"), &req.reference)?;
        text(&format!("{path}.note"), &req.note, 1000)?;
    }
    if r.cpu_cores.value <= 0.0 || r.memory_gib.value <= 0.0 || r.storage_gib.value <= 0.0 {
        return Err(field(
            "requirements",
            "cpu_cores, memory_gib and storage_gib must be above 0",
        ));
    }
    if r.gpus.value.fract() != 0.0 {
        return Err(field(
            "requirements.gpus.value",
            "must be a whole number of GPUs",
        ));
    }
    text("os.distribution", &p.os.distribution, 100)?;
    text("os.filesystem", &p.os.filesystem, 40)?;
    if !STORAGE_CLASSES.contains(&p.os.storage_class.as_str()) {
        return Err(field(
            "os.storage_class",
            format!(
                "unknown storage class {:?} (known: {})",
                p.os.storage_class,
                STORAGE_CLASSES.join(", ")
            ),
        ));
    }
    for (i, k) in p.os.kernel_params.iter().enumerate() {
        text(&format!("os.kernel_params[{i}]"), k, 200)?;
        if k.contains(char::is_whitespace) {
            return Err(field(
                format!("os.kernel_params[{i}]"),
                "one parameter per entry, no spaces",
            ));
        }
    }
    for (k, v) in &p.os.sysctls {
        let ok = !k.is_empty()
            && k.len() <= 200
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
        if !ok {
            return Err(field(
                format!("os.sysctls.{k}"),
                "not a sysctl name (letters, digits, '.', '_', '-', '/')",
            ));
        }
        text(&format!("os.sysctls.{k}"), v, 200)?;
    }
    for (i, r) in p.os.refs.iter().enumerate() {
        cited(format!("os.refs[{i}]"), r)?;
    }
    text("usage_shape.family", &p.usage_shape.family, 100)?;
    text("usage_shape.note", &p.usage_shape.note, 1000)?;
    for (i, r) in p.usage_shape.refs.iter().enumerate() {
        cited(format!("usage_shape.refs[{i}]"), r)?;
    }
    let dataset_names: BTreeSet<&str> = p.datasets.iter().map(|d| d.name.as_str()).collect();
    for (i, item) in p.preload.iter().enumerate() {
        if !PRELOAD_KINDS.contains(&item.kind.as_str()) {
            return Err(field(
                format!("preload[{i}].kind"),
                format!(
                    "unknown kind {:?} (known: {})",
                    item.kind,
                    PRELOAD_KINDS.join(", ")
                ),
            ));
        }
        text(&format!("preload[{i}].name"), &item.name, 300)?;
        if item.kind == "dataset" && !dataset_names.contains(item.name.as_str()) {
            return Err(field(
                format!("preload[{i}].name"),
                format!("dataset {:?} is not in datasets", item.name),
            ));
        }
    }
    for (i, e) in p.extras.iter().enumerate() {
        if !PRELOAD_KINDS.contains(&e.kind.as_str()) {
            return Err(field(
                format!("extras[{i}].kind"),
                format!("unknown kind {:?}", e.kind),
            ));
        }
        text(&format!("extras[{i}].name"), &e.name, 200)?;
        text(&format!("extras[{i}].why"), &e.why, 1000)?;
    }
    let u = &p.usage;
    series("usage.cpu_cores", &u.cpu_cores, MAX_CPU)?;
    series("usage.memory_gib", &u.memory_gib, MAX_MEM_GIB)?;
    series("usage.disk_iops", &u.disk_iops, MAX_IOPS)?;
    series("usage.disk_mbps", &u.disk_mbps, MAX_MBPS_DISK)?;
    series("usage.network_mbps", &u.network_mbps, MAX_NET_MBPS)?;
    Ok(())
}

/// Every software name any persona knows (lower-cased), used to flag unknown software in
/// a profile request.
pub fn known_software(personas: &[Persona]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for p in personas {
        let s = &p.software;
        for pkg in s
            .deb
            .iter()
            .chain(&s.rpm)
            .chain(&s.pip)
            .chain(&s.npm)
            .chain(&s.containers)
        {
            out.insert(pkg.name.to_lowercase());
        }
        for e in &p.extras {
            out.insert(e.name.to_lowercase());
        }
        for i in &p.preload {
            out.insert(i.name.to_lowercase());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> String {
        BUILTIN[0].1.to_owned()
    }

    fn err_of(text: &str) -> String {
        match parse_persona(text.as_bytes(), Format::Toml) {
            Ok(_) => "accepted".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn builtins_are_valid() {
        let all = builtin().expect("built-in personas must validate");
        assert_eq!(all.len(), 10);
        for ((slug, _), p) in BUILTIN.iter().zip(&all) {
            assert_eq!(*slug, p.slug);
        }
    }

    #[test]
    fn json_round_trip() {
        let p = parse_persona(good().as_bytes(), Format::Toml).expect("parse");
        let j = serde_json::to_string(&p).expect("json");
        let q = parse_persona(j.as_bytes(), Format::Json).expect("reparse");
        assert_eq!(p, q);
    }

    #[test]
    fn missing_field_is_named() {
        let t = good().replacen("name = \"Data scientist / ML engineer\"\n", "", 1);
        let e = err_of(&t);
        assert!(e.contains("missing field `name`"), "{e}");
    }

    #[test]
    fn unknown_field_is_refused() {
        let t = good().replacen("slug = ", "colour = \"red\"\nslug = ", 1);
        let e = err_of(&t);
        assert!(e.contains("unknown field `colour`"), "{e}");
    }

    #[test]
    fn short_week_row_is_refused_with_path() {
        let p = parse_persona(good().as_bytes(), Format::Toml).expect("parse");
        let mut bad = p.clone();
        bad.usage.cpu_cores.p95[3].pop();
        let e = validate(&bad).expect_err("short row").to_string();
        assert!(e.contains("usage.cpu_cores.p95[3]"), "{e}");
        let mut bad = p.clone();
        bad.usage.memory_gib.p50.pop();
        let e = validate(&bad).expect_err("six days").to_string();
        assert!(
            e.contains("usage.memory_gib.p50") && e.contains("7 day rows"),
            "{e}"
        );
    }

    #[test]
    fn out_of_range_and_non_finite() {
        let p = parse_persona(good().as_bytes(), Format::Toml).expect("parse");
        let mut bad = p.clone();
        bad.requirements.memory_gib.value = -1.0;
        let e = validate(&bad).expect_err("negative").to_string();
        assert!(e.contains("requirements.memory_gib.value"), "{e}");
        let mut bad = p.clone();
        bad.usage.network_mbps.p50[0][0] = f64::NAN;
        let e = validate(&bad).expect_err("nan").to_string();
        assert!(
            e.contains("usage.network_mbps.p50[0][0]") && e.contains("finite"),
            "{e}"
        );
        let mut bad = p.clone();
        bad.requirements.cpu_cores.value = 5000.0;
        assert!(validate(&bad).is_err());
    }

    #[test]
    fn p95_below_p50_is_refused() {
        let p = parse_persona(good().as_bytes(), Format::Toml).expect("parse");
        let mut bad = p;
        bad.usage.disk_iops.p50[2][5] = bad.usage.disk_iops.p95[2][5] + 1.0;
        let e = validate(&bad).expect_err("p95<p50").to_string();
        assert!(
            e.contains("usage.disk_iops.p95[2][5]") && e.contains("below p50"),
            "{e}"
        );
    }

    #[test]
    fn storage_class_slug_and_refs() {
        let p = parse_persona(good().as_bytes(), Format::Toml).expect("parse");
        let mut bad = p.clone();
        bad.os.storage_class = "floppy".into();
        assert!(
            validate(&bad)
                .expect_err("class")
                .to_string()
                .contains("os.storage_class")
        );
        for s in ["A-b", "a", "-ab", "ab-", "a--b", "a b", "ab/c", ""] {
            let mut bad = p.clone();
            bad.slug = s.into();
            assert!(validate(&bad).is_err(), "slug {s:?} accepted");
        }
        let mut bad = p.clone();
        bad.requirements.gpus.reference = "nowhere".into();
        let e = validate(&bad).expect_err("ref").to_string();
        assert!(
            e.contains("requirements.gpus.ref") && e.contains("unknown source"),
            "{e}"
        );
        let mut bad = p;
        bad.preload.push(PreloadItem {
            kind: "snap".into(),
            name: "x".into(),
            version: None,
        });
        assert!(
            validate(&bad)
                .expect_err("kind")
                .to_string()
                .contains("preload[")
        );
    }

    #[test]
    fn export_document_and_bad_bytes() {
        let all = builtin().expect("builtin");
        let doc = serde_json::json!({ "personas": all }).to_string();
        assert_eq!(parse_many(doc.as_bytes()).expect("many").len(), 10);
        let dup = serde_json::json!({ "personas": [all[0].clone(), all[0].clone()] }).to_string();
        assert!(
            parse_many(dup.as_bytes())
                .expect_err("dup")
                .to_string()
                .contains("twice")
        );
        assert!(matches!(
            parse_persona(b"slug = \"\xff\"", Format::Toml),
            Err(PersonaError::NotUtf8(_))
        ));
        let mut one = serde_json::to_value(&all[1]).expect("value");
        one["usage"]["cpu_cores"]["p50"][0] = serde_json::json!([1.0]);
        let e = parse_many(
            serde_json::json!({ "personas": [one] })
                .to_string()
                .as_bytes(),
        )
        .expect_err("short")
        .to_string();
        assert!(e.contains("personas[0].usage.cpu_cores.p50[0]"), "{e}");
    }
}
