//! The Dynamic Configuration Engine: from a VM's persona distribution and its observed
//! usage to a size, a shape and the reasons for both.
//!
//! What it is for: one estimator that the live coordinator (`engine_api`, `personactl
//! recommend`) and the trace replay (`replay::persona`) drive the same way, causally,
//! sample by sample. It starts where the seed's AdjustInstance starts, the
//! probability-weighted requirement `Σ p_i × requirement_i` over the combined persona
//! distribution ([`adjust_instance`]), and lets evidence take over as history grows:
//!
//! - **CPU**: a decaying histogram ([`histogram`]) with a 12 h half-life (Autopilot's CPU
//!   constant; VPA uses 24 h for both). CPU demand follows the working day, and a VM whose
//!   batch job ended yesterday should not pay for it all of today. Target: the
//!   [`EngineConfig::cpu_percentile`] plus [`EngineConfig::cpu_margin`].
//! - **Memory**: by peaks, as Autopilot does: one sample per hour
//!   ([`EngineConfig::memory_peak_window_s`]) holding that hour's peak, with a 48 h
//!   half-life and the p95: a memory shortfall kills processes, a CPU shortfall only
//!   slows them, so memory remembers longer. The maximum over the last hour
//!   ([`EngineConfig::peak_window_s`]) is a floor for both resources.
//! - **Confidence** `c = min(1, history / full_confidence_s)`: the estimate is
//!   `c·evidence + (1−c)·prior`, so a young VM is sized mostly by its personas; it is
//!   not scaled down before `c` reaches 1 (except when sized at creation).
//! - **Pressure** events scale the resource up at once by
//!   [`EngineConfig::pressure_scale_up`], outside any schedule or cooldown.
//! - **Forecast** ([`forecast`]): the highest hourly mean of the next
//!   [`EngineConfig::forecast_hours`] hours, plus the margin, raises the target ahead of
//!   time; a forecast never lowers it.
//! - **Policy** ([`policy`]): steps, floors, bounds, hysteresis, cooldown and the
//!   smallest change worth making.
//! - **Cost** ([`cost`]): the cheapest catalogue shape, or exact sizes, with monthly
//!   cost and saving.
//!
//! The constants and why they differ from VPA's are in docs/EVALUATION.md ("Trace
//! replay"), which measures them against VPA on the Bitbrains traces.
//!
//! What it is not: storage, HTTP or actuation (`engine_api` does the I/O and submits
//! resizes through the command channel).

pub mod cost;
pub mod forecast;
pub mod histogram;
pub mod policy;
pub mod reasons;

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use histogram::{Buckets, DecayingHistogram};
use reasons::{Kind, Reason, Why, dur};

/// CPU cores and memory GiB: a size, a usage or a target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Size {
    pub cpu_cores: f64,
    pub memory_gib: f64,
}

/// Why an engine configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("engine setting `{key}` = {value}: {allowed}")]
    Invalid {
        key: &'static str,
        value: String,
        allowed: &'static str,
    },
}

/// The engine's constants (coordinator config `[engine]`). Defaults are the values
/// measured in docs/EVALUATION.md; tests shorten the time constants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Half-life of the CPU histogram.
    pub cpu_half_life_s: f64,
    /// Half-life of the memory histogram.
    pub memory_half_life_s: f64,
    /// CPU target percentile (0..1).
    pub cpu_percentile: f64,
    /// Memory target percentile (0..1).
    pub memory_percentile: f64,
    /// Safety margin on the CPU percentile (0.1 = +10%).
    pub cpu_margin: f64,
    /// Safety margin on the memory percentile.
    pub memory_margin: f64,
    /// Memory enters its histogram as one peak per window of this length (0 = every
    /// sample), so a short spike counts as much as the window it happened in.
    pub memory_peak_window_s: f64,
    /// The maximum usage over this window is a floor for the target.
    pub peak_window_s: f64,
    /// History after which observed usage fully replaces the persona prior.
    pub full_confidence_s: f64,
    /// A scale-down needs the lower target to hold this long.
    pub scale_down_after_s: f64,
    /// Scale-downs saving less than this fraction are not made.
    pub scale_down_min_saving: f64,
    /// Scale-ups smaller than this fraction wait, unless a pressure event asks for them.
    pub scale_up_min_increase: f64,
    /// Smallest CPU change worth making (cores), pressure excepted; matters where the
    /// platform's steps are finer than a vCPU (quotas).
    pub min_change_cores: f64,
    /// Smallest memory change worth making (GiB), pressure excepted.
    pub min_change_gib: f64,
    /// Least time between a change and a following scale-down.
    pub cooldown_s: f64,
    /// Factor applied to the current size of a resource under pressure.
    pub pressure_scale_up: f64,
    /// Hours of forecast considered for a predictive scale-up (0 = off, at most 24).
    pub forecast_hours: u32,
    /// How often the coordinator re-evaluates VMs in `auto` mode.
    pub evaluate_every_s: f64,
    /// Confidence (the evidence's weight against the persona prior) below which auto mode
    /// does not resize, unless a pressure event or an operator's bound asks for it.
    pub auto_min_confidence: f64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            cpu_half_life_s: 12.0 * 3600.0,
            memory_half_life_s: 48.0 * 3600.0,
            cpu_percentile: 0.75,
            memory_percentile: 0.95,
            cpu_margin: 0.0,
            memory_margin: 0.10,
            memory_peak_window_s: 3600.0,
            peak_window_s: 3600.0,
            full_confidence_s: 12.0 * 3600.0,
            scale_down_after_s: 3.0 * 3600.0,
            scale_down_min_saving: 0.30,
            scale_up_min_increase: 0.20,
            min_change_cores: 0.2,
            min_change_gib: 0.5,
            cooldown_s: 3600.0,
            pressure_scale_up: 1.5,
            forecast_hours: 2,
            evaluate_every_s: 60.0,
            // From one half on, the observed history outweighs the prior in the target
            // (`c·evidence + (1−c)·prior`): the size is then mostly the VM's own.
            auto_min_confidence: 0.5,
        }
    }
}

impl Eq for EngineConfig {}

impl EngineConfig {
    /// Checks every value's range.
    pub fn validate(&self) -> Result<(), EngineError> {
        let check = |key: &'static str, v: f64, ok: bool, allowed: &'static str| {
            if v.is_finite() && ok {
                Ok(())
            } else {
                Err(EngineError::Invalid {
                    key,
                    value: v.to_string(),
                    allowed,
                })
            }
        };
        let pos = "a number of seconds above 0";
        check(
            "cpu_half_life_s",
            self.cpu_half_life_s,
            self.cpu_half_life_s > 0.0,
            pos,
        )?;
        check(
            "memory_half_life_s",
            self.memory_half_life_s,
            self.memory_half_life_s > 0.0,
            pos,
        )?;
        let pct = "a fraction in (0, 1]";
        check(
            "cpu_percentile",
            self.cpu_percentile,
            self.cpu_percentile > 0.0 && self.cpu_percentile <= 1.0,
            pct,
        )?;
        check(
            "memory_percentile",
            self.memory_percentile,
            self.memory_percentile > 0.0 && self.memory_percentile <= 1.0,
            pct,
        )?;
        let margin = "a fraction in [0, 2]";
        check(
            "cpu_margin",
            self.cpu_margin,
            (0.0..=2.0).contains(&self.cpu_margin),
            margin,
        )?;
        check(
            "memory_margin",
            self.memory_margin,
            (0.0..=2.0).contains(&self.memory_margin),
            margin,
        )?;
        let nonneg = "a number of seconds >= 0";
        for (k, v) in [
            ("peak_window_s", self.peak_window_s),
            ("memory_peak_window_s", self.memory_peak_window_s),
            ("full_confidence_s", self.full_confidence_s),
            ("scale_down_after_s", self.scale_down_after_s),
            ("cooldown_s", self.cooldown_s),
            ("min_change_cores", self.min_change_cores),
            ("min_change_gib", self.min_change_gib),
        ] {
            check(k, v, v >= 0.0, nonneg)?;
        }
        check(
            "scale_down_min_saving",
            self.scale_down_min_saving,
            (0.0..1.0).contains(&self.scale_down_min_saving),
            "a fraction in [0, 1)",
        )?;
        check(
            "scale_up_min_increase",
            self.scale_up_min_increase,
            (0.0..=1.0).contains(&self.scale_up_min_increase),
            "a fraction in [0, 1]",
        )?;
        check(
            "pressure_scale_up",
            self.pressure_scale_up,
            (1.0..=4.0).contains(&self.pressure_scale_up),
            "a factor in [1, 4]",
        )?;
        check(
            "forecast_hours",
            f64::from(self.forecast_hours),
            self.forecast_hours <= 24,
            "0 (off) to 24",
        )?;
        check(
            "evaluate_every_s",
            self.evaluate_every_s,
            self.evaluate_every_s >= 1.0,
            "a number of seconds >= 1",
        )?;
        check(
            "auto_min_confidence",
            self.auto_min_confidence,
            (0.0..=1.0).contains(&self.auto_min_confidence),
            "a fraction in [0, 1]",
        )?;
        Ok(())
    }

    /// The hysteresis timing part.
    pub fn timing(&self) -> policy::Timing {
        policy::Timing {
            scale_up_min_increase: self.scale_up_min_increase,
            min_change: [self.min_change_cores, self.min_change_gib],
            scale_down_after_s: self.scale_down_after_s,
            scale_down_min_saving: self.scale_down_min_saving,
            cooldown_s: self.cooldown_s,
        }
    }
}

/// The seed's AdjustInstance: the probability-weighted requirement `Σ p_i × r_i` of a
/// persona distribution given as (probability, requirement) pairs. Probabilities are
/// renormalised if they do not sum to 1; an empty or all-zero distribution gives zero.
pub fn adjust_instance(dist: &[(f64, Size)]) -> Size {
    let total: f64 = dist.iter().map(|(p, _)| p.max(0.0)).sum();
    if total.is_nan() || total <= 0.0 {
        return Size::default();
    }
    dist.iter().fold(Size::default(), |acc, (p, r)| {
        let w = p.max(0.0) / total;
        Size {
            cpu_cores: acc.cpu_cores + w * r.cpu_cores,
            memory_gib: acc.memory_gib + w * r.memory_gib,
        }
    })
}

/// A pressure event as the engine sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pressure {
    /// "cpu" or "memory" (others are reported, not sized).
    pub resource: String,
    pub since_s: f64,
    pub at_s: f64,
    pub severity: String,
    pub summary: String,
}

/// The prior: what the personas (or the operator's request) say before any evidence.
#[derive(Debug, Clone, PartialEq)]
pub struct Prior {
    pub size: Size,
    /// How the prior was made ("persona weights: web-server 0.7, ...").
    pub detail: String,
}

/// Everything the target depends on besides the history.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub prior: Option<&'a Prior>,
    /// The size in force now.
    pub current: Size,
    /// Pressure events still open (not cleared) at `now`.
    pub pressure: &'a [Pressure],
    /// Explicit specs (floors).
    pub floors: Size,
    pub bounds: policy::Bounds,
    pub steps: policy::Steps,
    /// Collect reasons (off in the trace replay, where only the numbers matter).
    pub explain: bool,
    /// Sizing a VM at creation (`initial` mode): the prior is applied as it is, down as
    /// well as up, instead of waiting for evidence.
    pub initial: bool,
}

/// The engine's answer for one instant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    /// Before steps, floors and bounds.
    pub raw: Size,
    /// Stepped, floored and bounded: what the VM should run.
    pub target: Size,
    /// Fraction of the estimate that rests on observed history.
    pub confidence: f64,
    /// Whether a pressure event asked for this (bypasses cooldowns).
    pub urgent: bool,
    pub forecast_cpu: Option<forecast::Point>,
    pub forecast_memory: Option<forecast::Point>,
    pub reasons: Vec<Reason>,
}

/// Hour-of-week (cpu, memory) profiles: 7 rows of 24, Monday first.
pub type Shapes<'a> = (&'a [Vec<f64>], &'a [Vec<f64>]);

/// The evidence kept for one VM: histograms, the recent window and seasonality.
#[derive(Debug, Clone)]
pub struct VmState {
    cfg: EngineConfig,
    cpu: DecayingHistogram,
    mem: DecayingHistogram,
    /// End of the memory peak window and the peak recorded for it.
    mem_window: Option<(f64, f64)>,
    recent: VecDeque<(f64, f64, f64)>,
    cpu_season: forecast::Seasonal,
    mem_season: forecast::Seasonal,
    first_s: Option<f64>,
    last_s: f64,
    samples: u64,
}

impl VmState {
    /// A VM with no history; `shape` is a persona's hour-of-week (cpu, memory) profile,
    /// the forecast's prior shape until the VM has seasonality of its own.
    pub fn new(cfg: &EngineConfig, shape: Option<Shapes<'_>>) -> Self {
        let (cpu_season, mem_season) = match shape {
            Some((c, m)) => (
                forecast::Seasonal::with_prior(c),
                forecast::Seasonal::with_prior(m),
            ),
            None => Default::default(),
        };
        Self {
            cfg: cfg.clone(),
            cpu: DecayingHistogram::new(Buckets::VPA_CPU, cfg.cpu_half_life_s),
            mem: DecayingHistogram::new(Buckets::MEMORY_GIB, cfg.memory_half_life_s),
            mem_window: None,
            recent: VecDeque::new(),
            cpu_season,
            mem_season,
            first_s: None,
            last_s: 0.0,
            samples: 0,
        }
    }

    /// Feeds one observation (cores and GiB used at `t_s`), in time order.
    pub fn observe(&mut self, t_s: f64, usage: Size) {
        if !usage.cpu_cores.is_finite() || !usage.memory_gib.is_finite() || t_s < self.last_s {
            return;
        }
        self.first_s.get_or_insert(t_s);
        self.last_s = t_s;
        self.samples += 1;
        self.cpu.add(usage.cpu_cores.max(0.0), 1.0, t_s);
        self.add_memory(t_s, usage.memory_gib.max(0.0));
        self.recent
            .push_back((t_s, usage.cpu_cores, usage.memory_gib));
        while self
            .recent
            .front()
            .is_some_and(|(t, _, _)| *t < t_s - self.cfg.peak_window_s)
        {
            self.recent.pop_front();
        }
        self.cpu_season.observe(t_s as i64, usage.cpu_cores);
        self.mem_season.observe(t_s as i64, usage.memory_gib);
    }

    /// One peak per window, replaced in place when the window sees a higher value (the
    /// way VPA aggregates memory, with a configurable window).
    fn add_memory(&mut self, t_s: f64, v: f64) {
        let w = self.cfg.memory_peak_window_s;
        if w <= 0.0 {
            self.mem.add(v, 1.0, t_s);
            return;
        }
        match self.mem_window {
            Some((end, peak)) if t_s < end => {
                if v > peak {
                    self.mem.subtract(peak, 1.0, end);
                    self.mem.add(v, 1.0, end);
                    self.mem_window = Some((end, v));
                }
            }
            _ => {
                let end = (t_s / w).floor() * w + w;
                self.mem.add(v, 1.0, end);
                self.mem_window = Some((end, v));
            }
        }
    }

    /// The forecast of the next `hours` hours of CPU (`cpu`) or memory.
    pub fn forecast(&self, now_s: i64, hours: u32, cpu: bool) -> Vec<forecast::Point> {
        if cpu {
            self.cpu_season.forecast(now_s, hours)
        } else {
            self.mem_season.forecast(now_s, hours)
        }
    }

    /// The time of the newest observation (None before the first).
    pub fn evidence_until_s(&self) -> Option<f64> {
        self.first_s.map(|_| self.last_s)
    }

    /// Seconds of history.
    pub fn history_s(&self) -> f64 {
        self.first_s.map_or(0.0, |f| self.last_s - f)
    }

    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// How much the evidence counts: grows linearly to 1 over `full_confidence_s`.
    pub fn confidence(&self) -> f64 {
        if self.samples == 0 {
            return 0.0;
        }
        if self.cfg.full_confidence_s <= 0.0 {
            return 1.0;
        }
        (self.history_s() / self.cfg.full_confidence_s).clamp(0.0, 1.0)
    }

    /// The highest (cpu, memory) usage in the recent window.
    pub fn recent_peak(&self) -> Size {
        self.recent
            .iter()
            .fold(Size::default(), |a, (_, c, m)| Size {
                cpu_cores: a.cpu_cores.max(*c),
                memory_gib: a.memory_gib.max(*m),
            })
    }

    /// The target at `now_s` from the history so far and `inp`.
    pub fn estimate(&self, now_s: f64, inp: &Inputs<'_>) -> Estimate {
        let cfg = &self.cfg;
        let mut reasons = if inp.explain { Why::on() } else { Why::off() };
        if let Some(p) = inp.prior {
            reasons.add("all", Kind::PersonaWeights, None, || {
                format!(
                    "prior {:.3} cores, {:.3} GiB: {}",
                    p.size.cpu_cores, p.size.memory_gib, p.detail
                )
            });
        }
        let c = if inp.prior.is_some() {
            self.confidence()
        } else if self.samples > 0 {
            1.0
        } else {
            0.0
        };
        reasons.add("all", Kind::Confidence, Some(c), || {
            format!(
                "{} of history ({} samples); evidence weight {:.2} (full after {})",
                dur(self.history_s().round()),
                self.samples,
                c,
                dur(cfg.full_confidence_s)
            )
        });
        let peak = self.recent_peak();
        let mut urgent = false;
        let mut per = |name: &'static str,
                       hist: &DecayingHistogram,
                       pct: f64,
                       margin: f64,
                       half_life: f64,
                       prior: Option<f64>,
                       recent: f64,
                       current: f64,
                       season: &forecast::Seasonal,
                       reasons: &mut Why| {
            let mut v = match prior {
                Some(p) => p,
                None => current,
            };
            if self.samples > 0 {
                let q = hist.percentile(pct);
                let e = q * (1.0 + margin);
                reasons.add(name, Kind::Percentile, Some(e), || {
                    format!(
                        "p{} over a {} half-life = {q:.3}, +{:.0}% margin",
                        pct * 100.0,
                        dur(half_life),
                        margin * 100.0
                    )
                });
                v = c * e + (1.0 - c) * v;
                if recent > v {
                    v = recent;
                    reasons.add(name, Kind::RecentPeak, Some(v), || {
                        format!("maximum over the last {}", dur(cfg.peak_window_s))
                    });
                }
            }
            if let Some(ev) = inp.pressure.iter().find(|e| e.resource == name) {
                let up = current * cfg.pressure_scale_up;
                if up > v {
                    v = up;
                    urgent = true;
                }
                reasons.add(name, Kind::Pressure, Some(up), || {
                    format!(
                        "{} pressure since {:.0} s ago ({}): scale up x{} at once",
                        ev.severity,
                        (now_s - ev.since_s).max(0.0),
                        ev.summary,
                        cfg.pressure_scale_up
                    )
                });
            }
            let mut fc = None;
            if cfg.forecast_hours > 0
                && let Some(p) = season.peak_ahead(now_s as i64, cfg.forecast_hours)
            {
                fc = Some(p);
                // The forecast is of hourly means; the margin covers the spread inside
                // the hour, as it does for the percentile.
                let want = p.value * (1.0 + margin);
                if want > v {
                    v = want;
                    let hours = cfg.forecast_hours;
                    reasons.add(name, Kind::Forecast, Some(v), || {
                        format!(
                            "forecast hourly mean {:.3} within {hours} h ({:?}, hour starting \
                             at {}), +{:.0}% margin: scale up ahead",
                            p.value,
                            p.source,
                            p.at_s,
                            margin * 100.0
                        )
                    });
                }
            }
            (v, fc)
        };
        let (cpu, forecast_cpu) = per(
            "cpu",
            &self.cpu,
            cfg.cpu_percentile,
            cfg.cpu_margin,
            cfg.cpu_half_life_s,
            inp.prior.map(|p| p.size.cpu_cores),
            peak.cpu_cores,
            inp.current.cpu_cores,
            &self.cpu_season,
            &mut reasons,
        );
        let (mem, forecast_memory) = per(
            "memory",
            &self.mem,
            cfg.memory_percentile,
            cfg.memory_margin,
            cfg.memory_half_life_s,
            inp.prior.map(|p| p.size.memory_gib),
            peak.memory_gib,
            inp.current.memory_gib,
            &self.mem_season,
            &mut reasons,
        );
        let raw = Size {
            cpu_cores: cpu,
            memory_gib: mem,
        };
        let mut target = policy::shape(raw, inp.floors, inp.steps, &inp.bounds, &mut reasons);
        // While the prior still counts, the estimate is still moving: shrinking now would
        // shrink again later, one change per step of confidence. Scale-downs wait for
        // full confidence and then happen once; scale-ups do not wait.
        if inp.prior.is_some() && c < 1.0 && !inp.initial {
            for (name, t, cur) in [
                ("cpu", &mut target.cpu_cores, inp.current.cpu_cores),
                ("memory", &mut target.memory_gib, inp.current.memory_gib),
            ] {
                if *t < cur {
                    *t = cur;
                    reasons.add(name, Kind::Confidence, Some(cur), || {
                        format!("scale-down waits for full confidence (now {c:.2})")
                    });
                }
            }
        }
        Estimate {
            raw,
            target,
            confidence: c,
            urgent,
            forecast_cpu,
            forecast_memory,
            reasons: reasons.into_vec(),
        }
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

    /// The seed's AdjustInstance as a worked example: a VM that is 70% a game streamer
    /// (8 cores, 32 GiB) and 30% a web server (2 cores, 4 GiB) needs 0.7·8 + 0.3·2 = 6.2
    /// cores and 0.7·32 + 0.3·4 = 23.6 GiB; with the profiler's 20% headroom and the
    /// platform steps that is 8 vCPUs (7.44 rounded up) and 28.375 GiB (28.32 rounded up
    /// to a 128 MiB block).
    #[test]
    fn adjust_instance_worked_example() {
        let w = adjust_instance(&[(0.7, sz(8.0, 32.0)), (0.3, sz(2.0, 4.0))]);
        assert!((w.cpu_cores - 6.2).abs() < 1e-9);
        assert!((w.memory_gib - 23.6).abs() < 1e-9);
        let h = 1.0 + crate::profile::sizing::HEADROOM;
        let mut r = Why::on();
        let s = policy::shape(
            sz(w.cpu_cores * h, w.memory_gib * h),
            Size::default(),
            policy::Steps::VM,
            &policy::Bounds::default(),
            &mut r,
        );
        assert_eq!(s, sz(8.0, 28.375));
        // Unnormalised weights are renormalised; nothing gives nothing.
        let w2 = adjust_instance(&[(7.0, sz(8.0, 32.0)), (3.0, sz(2.0, 4.0))]);
        assert!((w2.cpu_cores - 6.2).abs() < 1e-9);
        assert_eq!(adjust_instance(&[]), Size::default());
    }

    fn cfg() -> EngineConfig {
        EngineConfig {
            forecast_hours: 0,
            ..EngineConfig::default()
        }
    }

    fn inputs<'a>(prior: Option<&'a Prior>, current: Size, p: &'a [Pressure]) -> Inputs<'a> {
        Inputs {
            prior,
            current,
            pressure: p,
            floors: Size::default(),
            bounds: policy::Bounds::default(),
            steps: policy::Steps::VM,
            explain: true,
            initial: false,
        }
    }

    #[test]
    fn prior_dominates_a_young_vm_and_evidence_takes_over() {
        let cfg = cfg();
        let prior = Prior {
            size: sz(8.0, 32.0),
            detail: "test".into(),
        };
        let mut s = VmState::new(&cfg, None);
        let now = 1_700_000_000.0;
        s.observe(now, sz(0.5, 2.0));
        let e = s.estimate(now, &inputs(Some(&prior), sz(8.0, 32.0), &[]));
        assert_eq!(e.target, sz(8.0, 32.0), "no history: the prior");
        // Two days of a steady 0.5 cores / 2 GiB.
        let mut t = now;
        while t < now + 2.0 * 86400.0 {
            t += 300.0;
            s.observe(t, sz(0.5, 2.0));
        }
        let e = s.estimate(t, &inputs(Some(&prior), sz(8.0, 32.0), &[]));
        assert_eq!(e.confidence, 1.0);
        // p75 of 0.5 cores (+0%) rounds up to 1 vCPU; p95 of 2 GiB + 10% to 2.375 GiB.
        assert_eq!(e.target, sz(1.0, 2.375), "{:?}", e.reasons);
        assert!(e.reasons.iter().any(|r| r.kind == Kind::Percentile));
    }

    #[test]
    fn scale_down_waits_for_confidence_except_at_creation() {
        let cfg = cfg();
        let prior = Prior {
            size: sz(2.0, 4.0),
            detail: "test".into(),
        };
        let mut s = VmState::new(&cfg, None);
        s.observe(1000.0, sz(0.5, 1.0));
        let held = s.estimate(1000.0, &inputs(Some(&prior), sz(8.0, 32.0), &[]));
        assert_eq!(held.target, sz(8.0, 32.0));
        assert!(
            held.reasons
                .iter()
                .any(|r| r.kind == Kind::Confidence && r.resource == "cpu")
        );
        let mut at_creation = inputs(Some(&prior), sz(8.0, 32.0), &[]);
        at_creation.initial = true;
        assert_eq!(s.estimate(1000.0, &at_creation).target, sz(2.0, 4.0));
    }

    #[test]
    fn pressure_scales_up_at_once() {
        let cfg = cfg();
        let mut s = VmState::new(&cfg, None);
        for k in 0..100 {
            s.observe(f64::from(k) * 60.0, sz(1.0, 1.0));
        }
        let ev = [Pressure {
            resource: "cpu".into(),
            since_s: 5000.0,
            at_s: 5900.0,
            severity: "high".into(),
            summary: "runqueue".into(),
        }];
        let e = s.estimate(6000.0, &inputs(None, sz(2.0, 2.0), &ev));
        assert!(e.urgent);
        assert_eq!(e.target.cpu_cores, 3.0);
        assert!(e.reasons.iter().any(|r| r.kind == Kind::Pressure));
    }
}
