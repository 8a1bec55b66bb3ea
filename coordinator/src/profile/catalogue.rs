//! The instance catalogue: which VM shapes exist, what each offers and what it costs, and
//! the picker that finds the cheapest shape meeting a sizing target.
//!
//! What it is for: the profiler's recommendation and the configuration engine
//! (`engine::cost`) both ask "what is the cheapest shape that holds this?". A default
//! catalogue ships in the binary (`coordinator/catalogue/default.toml`, AWS us-east-1
//! On-Demand list prices with the date and URL in the file); operators replace it with
//! `--catalogue FILE`. The file is strict: unknown keys, duplicate names, unknown families
//! or storage classes, and non-finite or non-positive numbers are refused.
//!
//! What it is not: sizing policy. The target (including any headroom) is computed by the
//! caller (`recommend`); this module only compares numbers and prices.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::profile::personas::STORAGE_CLASSES;

/// Hours in the month used for monthly costs (the 730 h convention of cloud price lists).
pub const HOURS_PER_MONTH: f64 = 730.0;
/// Shape families a catalogue may use.
pub const FAMILIES: [&str; 5] = ["general", "compute", "memory", "storage", "gpu"];
/// The default catalogue, compiled in.
pub const DEFAULT_CATALOGUE: &str = include_str!("../../catalogue/default.toml");

/// Why a catalogue could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("cannot read catalogue {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("catalogue {origin} is not valid TOML: {message}")]
    Syntax { origin: String, message: String },
    #[error("catalogue {origin}, {path}: {reason}")]
    Invalid {
        origin: String,
        path: String,
        reason: String,
    },
}

/// Where the prices come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogueSource {
    pub provider: String,
    pub region: String,
    pub price_list_url: String,
    pub retrieved: String,
    pub note: String,
}

/// A block or local storage option.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageOption {
    pub class: String,
    pub name: String,
    pub price_gb_month: f64,
    pub baseline_iops: f64,
    pub max_iops: f64,
    pub baseline_mbps: f64,
    pub max_mbps: f64,
    /// Largest single volume (0 = bounded by the shape's local disks instead).
    pub max_gib: f64,
}

/// GPUs of a shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gpu {
    pub model: String,
    pub count: u32,
    /// Memory of one GPU.
    pub memory_gib: f64,
}

/// One VM shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shape {
    pub name: String,
    pub family: String,
    pub vcpus: u32,
    pub memory_gib: f64,
    pub network_gbps: f64,
    /// Local NVMe instance store in GB (0 = none).
    pub local_nvme_gb: f64,
    pub hourly_usd: f64,
    #[serde(default)]
    pub gpu: Option<Gpu>,
}

impl Shape {
    /// Hourly price times 730.
    pub fn monthly_usd(&self) -> f64 {
        self.hourly_usd * HOURS_PER_MONTH
    }
}

/// A whole catalogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalogue {
    pub source: CatalogueSource,
    pub storage: Vec<StorageOption>,
    pub shapes: Vec<Shape>,
}

/// What a shape must offer. Everything is a floor; `gpu_model` (case-insensitive substring
/// match, e.g. "a100") is only set when the user named a model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Target {
    pub vcpus: u32,
    pub memory_gib: f64,
    pub gpus: u32,
    /// Per-GPU memory.
    pub gpu_memory_gib: f64,
    pub gpu_model: Option<String>,
    pub network_mbps: f64,
    /// Local NVMe needed (GiB); 0 when storage is attached block storage.
    pub local_nvme_gib: f64,
}

const GIB_PER_GB: f64 = 1e9 / 1073741824.0;

impl Catalogue {
    /// The compiled-in default.
    pub fn builtin() -> Result<Self, CatalogueError> {
        Self::parse(DEFAULT_CATALOGUE, "(built-in)")
    }

    /// Loads an operator's catalogue file.
    pub fn load(path: &Path) -> Result<Self, CatalogueError> {
        let text = std::fs::read_to_string(path).map_err(|source| CatalogueError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// `load(path)` when given, the built-in otherwise.
    pub fn load_or_builtin(path: Option<&Path>) -> Result<Self, CatalogueError> {
        match path {
            Some(p) => Self::load(p),
            None => Self::builtin(),
        }
    }

    /// Parses and validates catalogue text.
    pub fn parse(text: &str, origin: &str) -> Result<Self, CatalogueError> {
        let c: Catalogue = toml::from_str(text).map_err(|e| CatalogueError::Syntax {
            origin: origin.to_owned(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        c.validate(origin)?;
        Ok(c)
    }

    fn validate(&self, origin: &str) -> Result<(), CatalogueError> {
        let bad = |path: String, reason: String| CatalogueError::Invalid {
            origin: origin.to_owned(),
            path,
            reason,
        };
        let num = |path: String, v: f64, positive: bool| {
            if !v.is_finite() || v < 0.0 || (positive && v == 0.0) {
                Err(bad(
                    path,
                    format!(
                        "{v} must be a finite number {}",
                        if positive { "above 0" } else { ">= 0" }
                    ),
                ))
            } else {
                Ok(())
            }
        };
        if self.shapes.is_empty() {
            return Err(bad("shapes".into(), "no shapes".into()));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, s) in self.shapes.iter().enumerate() {
            let p = format!("shapes[{i}]");
            if s.name.trim().is_empty() || !names.insert(s.name.as_str()) {
                return Err(bad(
                    format!("{p}.name"),
                    format!("empty or duplicate name {:?}", s.name),
                ));
            }
            if !FAMILIES.contains(&s.family.as_str()) {
                return Err(bad(
                    format!("{p}.family"),
                    format!(
                        "unknown family {:?} (known: {})",
                        s.family,
                        FAMILIES.join(", ")
                    ),
                ));
            }
            if s.vcpus == 0 {
                return Err(bad(format!("{p}.vcpus"), "must be above 0".into()));
            }
            num(format!("{p}.memory_gib"), s.memory_gib, true)?;
            num(format!("{p}.network_gbps"), s.network_gbps, true)?;
            num(format!("{p}.local_nvme_gb"), s.local_nvme_gb, false)?;
            num(format!("{p}.hourly_usd"), s.hourly_usd, true)?;
            if let Some(g) = &s.gpu {
                if g.count == 0 || g.model.trim().is_empty() {
                    return Err(bad(
                        format!("{p}.gpu"),
                        "needs a model and a count above 0".into(),
                    ));
                }
                num(format!("{p}.gpu.memory_gib"), g.memory_gib, true)?;
            }
        }
        for (i, o) in self.storage.iter().enumerate() {
            let p = format!("storage[{i}]");
            if !STORAGE_CLASSES.contains(&o.class.as_str()) {
                return Err(bad(
                    format!("{p}.class"),
                    format!(
                        "unknown storage class {:?} (known: {})",
                        o.class,
                        STORAGE_CLASSES.join(", ")
                    ),
                ));
            }
            for (k, v) in [
                ("price_gb_month", o.price_gb_month),
                ("baseline_iops", o.baseline_iops),
                ("max_iops", o.max_iops),
                ("baseline_mbps", o.baseline_mbps),
                ("max_mbps", o.max_mbps),
                ("max_gib", o.max_gib),
            ] {
                num(format!("{p}.{k}"), v, false)?;
            }
        }
        Ok(())
    }

    /// The storage option of a class, if the catalogue has one.
    pub fn storage(&self, class: &str) -> Option<&StorageOption> {
        self.storage.iter().find(|o| o.class == class)
    }

    /// Whether `shape` meets every floor of `t`.
    pub fn fits(shape: &Shape, t: &Target) -> bool {
        if shape.vcpus < t.vcpus
            || shape.memory_gib + 1e-9 < t.memory_gib
            || shape.network_gbps * 1000.0 + 1e-9 < t.network_mbps
            || shape.local_nvme_gb * GIB_PER_GB + 1e-9 < t.local_nvme_gib
        {
            return false;
        }
        if t.gpus == 0 {
            return true;
        }
        let Some(g) = &shape.gpu else { return false };
        let model_ok = t.gpu_model.as_deref().is_none_or(|m| {
            g.model
                .to_ascii_lowercase()
                .contains(&m.to_ascii_lowercase())
        });
        g.count >= t.gpus && g.memory_gib + 1e-9 >= t.gpu_memory_gib && model_ok
    }

    /// The cheapest shape meeting `t` (ties: fewer vCPUs, then less memory, then name, so
    /// the answer is deterministic). `None` when nothing in the catalogue is big enough.
    pub fn pick(&self, t: &Target) -> Option<&Shape> {
        self.shapes
            .iter()
            .filter(|s| Self::fits(s, t))
            .min_by(|a, b| {
                a.hourly_usd
                    .total_cmp(&b.hourly_usd)
                    .then(a.vcpus.cmp(&b.vcpus))
                    .then(a.memory_gib.total_cmp(&b.memory_gib))
                    .then(a.name.cmp(&b.name))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cat() -> Catalogue {
        Catalogue::builtin().expect("built-in catalogue")
    }

    #[test]
    fn builtin_parses() {
        let c = cat();
        assert!(c.shapes.len() >= 30);
        assert!(c.storage("ssd").is_some());
    }

    #[test]
    fn picks_cheapest_that_fits() {
        let c = cat();
        let t = Target {
            vcpus: 2,
            memory_gib: 4.0,
            ..Target::default()
        };
        assert_eq!(c.pick(&t).map(|s| s.name.as_str()), Some("c7i.large"));
        let t = Target {
            vcpus: 4,
            memory_gib: 16.0,
            ..Target::default()
        };
        assert_eq!(c.pick(&t).map(|s| s.name.as_str()), Some("m7i.xlarge"));
        let t = Target {
            vcpus: 8,
            memory_gib: 60.0,
            ..Target::default()
        };
        assert_eq!(c.pick(&t).map(|s| s.name.as_str()), Some("r7i.2xlarge"));
    }

    #[test]
    fn gpu_nvme_and_network_floors() {
        let c = cat();
        let t = Target {
            vcpus: 4,
            memory_gib: 16.0,
            gpus: 1,
            gpu_memory_gib: 24.0,
            ..Target::default()
        };
        assert_eq!(c.pick(&t).map(|s| s.name.as_str()), Some("g5.xlarge"));
        let t = Target {
            vcpus: 8,
            memory_gib: 32.0,
            gpus: 2,
            gpu_model: Some("a100".into()),
            ..Target::default()
        };
        assert_eq!(c.pick(&t).map(|s| s.name.as_str()), Some("p4d.24xlarge"));
        let t = Target {
            vcpus: 2,
            memory_gib: 8.0,
            local_nvme_gib: 1000.0,
            ..Target::default()
        };
        assert_eq!(c.pick(&t).map(|s| s.name.as_str()), Some("i4i.2xlarge"));
        let t = Target {
            vcpus: 2,
            memory_gib: 4.0,
            network_mbps: 20_000.0,
            ..Target::default()
        };
        let s = c.pick(&t).expect("a 20 Gbps shape");
        assert!(s.network_gbps >= 20.0);
        let t = Target {
            vcpus: 100_000,
            ..Target::default()
        };
        assert!(c.pick(&t).is_none());
    }

    #[test]
    fn bad_catalogues_are_refused() {
        let base = DEFAULT_CATALOGUE;
        let e = Catalogue::parse(
            &base.replacen("family = \"general\"", "family = \"huge\"", 1),
            "t",
        )
        .expect_err("family");
        assert!(e.to_string().contains("shapes[0].family"), "{e}");
        let e = Catalogue::parse(
            &base.replacen("hourly_usd = 0.1008", "hourly_usd = -1.0", 1),
            "t",
        )
        .expect_err("price");
        assert!(e.to_string().contains("shapes[0].hourly_usd"), "{e}");
        let e = Catalogue::parse(&base.replacen("vcpus = 2", "vcpus = 2\ncolour = 1", 1), "t")
            .expect_err("unknown key");
        assert!(e.to_string().contains("colour"), "{e}");
        let e = Catalogue::parse(
            &base.replacen("name = \"c7i.large\"", "name = \"m7i.large\"", 1),
            "t",
        )
        .expect_err("dup");
        assert!(e.to_string().contains("duplicate"), "{e}");
    }
}
