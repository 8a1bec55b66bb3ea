//! Cost of a size: the cheapest catalogue shape that holds a target with headroom, or,
//! where the platform resizes freely, the exact size priced per core-hour and
//! GiB-hour; monthly cost and the saving against the current size.
//!
//! What it is for: the engine's cost optimisation. On a cloud the VM must be one of the
//! catalogue's shapes, so the target is rounded up to the cheapest shape (any family:
//! general, compute, memory or storage-optimised; with a GPU only when the VM needs
//! one). On a platform that hot-plugs vCPUs and memory (QEMU/libvirt), the target itself
//! is the size, and its price comes from unit prices fitted to the catalogue's non-GPU
//! shapes by least squares (`hourly ≈ a·vCPUs + b·GiB`), so both answers use the same
//! price list.
//!
//! What it is not: the catalogue file format or its validation (`catalogue`).

use serde::{Deserialize, Serialize};

use super::Size;
use crate::profile::catalogue::{Catalogue, HOURS_PER_MONTH, Shape, Target};

/// How a VM can be resized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    /// A cloud: only the catalogue's shapes exist.
    #[default]
    Catalogue,
    /// A hypervisor that resizes freely (whole vCPUs, 128 MiB blocks).
    Exact,
}

impl std::str::FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "catalogue" => Ok(Self::Catalogue),
            "exact" => Ok(Self::Exact),
            o => Err(format!("unknown platform {o:?} (catalogue, exact)")),
        }
    }
}

/// Price per vCPU-hour and GiB-hour.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct UnitPrices {
    pub vcpu_hour_usd: f64,
    pub gib_hour_usd: f64,
}

/// Fits `hourly = a·vcpus + b·gib` over the catalogue's shapes without GPUs. `None`
/// when the catalogue cannot separate the two (every shape has the same ratio).
pub fn unit_prices(c: &Catalogue) -> Option<UnitPrices> {
    let (mut sxx, mut sxy, mut syy, mut sxp, mut syp) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for s in c.shapes.iter().filter(|s| s.gpu.is_none()) {
        let (x, y, p) = (f64::from(s.vcpus), s.memory_gib, s.hourly_usd);
        sxx += x * x;
        sxy += x * y;
        syy += y * y;
        sxp += x * p;
        syp += y * p;
    }
    let det = sxx * syy - sxy * sxy;
    if det.abs() < 1e-9 * sxx.max(1.0) * syy.max(1.0) {
        return None;
    }
    let a = (sxp * syy - syp * sxy) / det;
    let b = (syp * sxx - sxp * sxy) / det;
    (a > 0.0 && b > 0.0).then_some(UnitPrices {
        vcpu_hour_usd: a,
        gib_hour_usd: b,
    })
}

/// A priced size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Priced {
    /// The shape, on a catalogue platform.
    pub shape: Option<String>,
    pub family: Option<String>,
    pub vcpus: f64,
    pub memory_gib: f64,
    pub hourly_usd: f64,
    pub monthly_usd: f64,
}

/// The cost part of a recommendation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostReport {
    pub platform: Platform,
    pub current: Option<Priced>,
    pub target: Option<Priced>,
    /// current − target per month (negative: the target costs more).
    pub monthly_saving_usd: Option<f64>,
    pub notes: Vec<String>,
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn of_shape(s: &Shape) -> Priced {
    Priced {
        shape: Some(s.name.clone()),
        family: Some(s.family.clone()),
        vcpus: f64::from(s.vcpus),
        memory_gib: s.memory_gib,
        hourly_usd: s.hourly_usd,
        monthly_usd: round2(s.monthly_usd()),
    }
}

/// Prices `size` on `platform`. On a catalogue, the cheapest shape holding the size (a
/// GPU shape only if `gpus > 0`); exact sizes at the fitted unit prices otherwise.
pub fn price(
    c: &Catalogue,
    platform: Platform,
    size: Size,
    gpus: u32,
    notes: &mut Vec<String>,
) -> Option<Priced> {
    match platform {
        Platform::Catalogue => {
            let t = Target {
                vcpus: size.cpu_cores.ceil().max(1.0) as u32,
                memory_gib: size.memory_gib,
                gpus,
                ..Target::default()
            };
            // Without a GPU need, GPU shapes are never "cheapest that fits" by accident,
            // but exclude them explicitly: a GPU bill for a CPU workload is a bug.
            let pick = c
                .shapes
                .iter()
                .filter(|s| gpus > 0 || s.gpu.is_none())
                .filter(|s| Catalogue::fits(s, &t))
                .min_by(|a, b| {
                    a.hourly_usd
                        .total_cmp(&b.hourly_usd)
                        .then(a.vcpus.cmp(&b.vcpus))
                        .then(a.memory_gib.total_cmp(&b.memory_gib))
                        .then(a.name.cmp(&b.name))
                });
            if pick.is_none() {
                notes.push(format!(
                    "no catalogue shape holds {} vCPUs and {:.2} GiB",
                    t.vcpus, t.memory_gib
                ));
            }
            pick.map(of_shape)
        }
        Platform::Exact => {
            let Some(u) = unit_prices(c) else {
                notes.push("the catalogue cannot separate vCPU and memory prices".into());
                return None;
            };
            let hourly = size.cpu_cores * u.vcpu_hour_usd + size.memory_gib * u.gib_hour_usd;
            Some(Priced {
                shape: None,
                family: None,
                vcpus: size.cpu_cores,
                memory_gib: size.memory_gib,
                hourly_usd: (hourly * 1e5).round() / 1e5,
                monthly_usd: round2(hourly * HOURS_PER_MONTH),
            })
        }
    }
}

/// Cost of the current size and the target, and the monthly saving.
pub fn report(
    c: &Catalogue,
    platform: Platform,
    current: Option<Size>,
    target: Size,
) -> CostReport {
    let mut notes = Vec::new();
    let cur = current.and_then(|s| price(c, platform, s, 0, &mut notes));
    let tgt = price(c, platform, target, 0, &mut notes);
    let saving = match (&cur, &tgt) {
        (Some(a), Some(b)) => Some(round2(a.monthly_usd - b.monthly_usd)),
        _ => None,
    };
    CostReport {
        platform,
        current: cur,
        target: tgt,
        monthly_saving_usd: saving,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sz(c: f64, m: f64) -> Size {
        Size {
            cpu_cores: c,
            memory_gib: m,
        }
    }

    #[test]
    fn cheapest_shape_across_families() {
        let c = Catalogue::builtin().expect("catalogue");
        let mut n = vec![];
        // CPU-heavy: compute family; memory-heavy: memory family; balanced: general.
        let p = price(&c, Platform::Catalogue, sz(3.2, 6.0), 0, &mut n).expect("shape");
        assert_eq!(p.shape.as_deref(), Some("c7i.xlarge"));
        let p = price(&c, Platform::Catalogue, sz(2.0, 12.0), 0, &mut n).expect("shape");
        assert_eq!(p.shape.as_deref(), Some("r7i.large"));
        let p = price(&c, Platform::Catalogue, sz(4.0, 14.0), 0, &mut n).expect("shape");
        assert_eq!(p.shape.as_deref(), Some("m7i.xlarge"));
        // A GPU only when asked for.
        let p = price(&c, Platform::Catalogue, sz(4.0, 14.0), 1, &mut n).expect("shape");
        assert_eq!(p.family.as_deref(), Some("gpu"));
        assert!(price(&c, Platform::Catalogue, sz(1e6, 1.0), 0, &mut n).is_none());
        assert!(!n.is_empty());
    }

    #[test]
    fn exact_sizes_use_fitted_unit_prices_and_saving_is_reported() {
        let c = Catalogue::builtin().expect("catalogue");
        let u = unit_prices(&c).expect("unit prices");
        // AWS prices a 7th-generation vCPU at roughly 3-4 cents and a GiB at 0.3-0.6 cents.
        assert!((0.02..0.06).contains(&u.vcpu_hour_usd), "{u:?}");
        assert!((0.002..0.007).contains(&u.gib_hour_usd), "{u:?}");
        let r = report(&c, Platform::Exact, Some(sz(8.0, 32.0)), sz(2.0, 4.0));
        let s = r.monthly_saving_usd.expect("saving");
        let want = (6.0 * u.vcpu_hour_usd + 28.0 * u.gib_hour_usd) * HOURS_PER_MONTH;
        assert!((s - want).abs() < 0.02, "{s} vs {want}");
        let r = report(&c, Platform::Catalogue, Some(sz(8.0, 32.0)), sz(2.0, 4.0));
        assert_eq!(r.target.and_then(|p| p.shape).as_deref(), Some("c7i.large"));
        assert!(r.monthly_saving_usd.is_some_and(|s| s > 200.0));
    }
}
