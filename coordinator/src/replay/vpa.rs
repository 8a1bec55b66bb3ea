//! The Kubernetes Vertical Pod Autoscaler's recommender and updater, re-implemented
//! faithfully for one VM treated as a one-container pod whose limits equal its requests.
//!
//! Matched (VPA 1.x, `pkg/recommender/model` and `logic`, `pkg/updater/priority`):
//! - CPU histogram: exponential buckets, first 0.01 cores, ratio 1.05, max 1000 cores;
//!   each usage sample weighted by `max(request, 0.1 cores)` (`minSampleWeight`).
//! - Memory histogram: first bucket 10^7 bytes, ratio 1.05, max 10^12; one sample per
//!   24 h aggregation window holding the window's peak (a higher sample in the same
//!   window replaces the old peak: subtract, add), weight 1, stamped at the window end.
//! - Both decay with a 24 h half-life; percentiles are bucket ends (see
//!   `engine::histogram`, which is VPA's structure).
//! - Target = p90 × 1.15, lower bound = p50 × 1.15 × (1 + 0.001/c)^−2, upper bound =
//!   p95 × 1.15 × (1 + 1/c), with confidence c = min(lifespan in days, samples / 1440);
//!   all three at least 25 millicores and 250 MiB (`podMinCPUMillicores`,
//!   `podMinMemoryMb`).
//! - OOM: usage above the memory request is an OOM kill (limits = requests); VPA records
//!   a memory sample of max(request, window peak) bumped by max(×1.2, +100 MiB).
//! - Updater: the pod is re-created with the target when a request lies outside
//!   [lower, upper], or after a "quick OOM" (within 10 min of start), or when the pod is
//!   at least 12 h old and Σ|request − target| / request ≥ 10% over CPU and memory.
//!
//! Not matched, on purpose: the `--min-replicas=2` eviction guard (it would never update
//! a single VM), eviction rate limits, the 1-minute recommender loop (here: every trace
//! sample, i.e. every 5 minutes or less), LimitRange and per-policy min/max caps, and the
//! sample-count term of the confidence still assumes VPA's one sample per minute, which
//! makes the bounds wider on 5-minute traces (as VPA itself would be fed them).
//!
//! What it is not: this project's engine (`replay::persona`).

use super::Policy;
use super::bitbrains::Sample;
use crate::engine::Size;
use crate::engine::histogram::{Buckets, DecayingHistogram};

const HALF_LIFE_S: f64 = 24.0 * 3600.0;
const AGGREGATION_S: f64 = 24.0 * 3600.0;
const TARGET_PCT: f64 = 0.9;
const LOWER_PCT: f64 = 0.5;
const UPPER_PCT: f64 = 0.95;
const SAFETY_MARGIN: f64 = 0.15;
const MIN_CPU_CORES: f64 = 0.025;
const MIN_MEMORY_BYTES: f64 = 250.0 * 1024.0 * 1024.0;
const MIN_SAMPLE_WEIGHT: f64 = 0.1;
const OOM_BUMP_RATIO: f64 = 1.2;
const OOM_MIN_BUMP_BYTES: f64 = 100.0 * 1024.0 * 1024.0;
const POD_LIFETIME_UPDATE_S: f64 = 12.0 * 3600.0;
const MIN_CHANGE_PRIORITY: f64 = 0.1;
const QUICK_OOM_S: f64 = 600.0;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// A recommendation: target and bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recommendation {
    pub target: Size,
    pub lower: Size,
    pub upper: Size,
}

/// The VPA state of one VM.
#[derive(Debug, Clone)]
pub struct Vpa {
    cpu: DecayingHistogram,
    mem: DecayingHistogram,
    first_s: Option<f64>,
    last_s: f64,
    cpu_samples: u64,
    window_end_s: Option<f64>,
    memory_peak: f64,
    pod_start_s: f64,
}

impl Default for Vpa {
    fn default() -> Self {
        Self {
            cpu: DecayingHistogram::new(Buckets::VPA_CPU, HALF_LIFE_S),
            mem: DecayingHistogram::new(Buckets::VPA_MEMORY_BYTES, HALF_LIFE_S),
            first_s: None,
            last_s: 0.0,
            cpu_samples: 0,
            window_end_s: None,
            memory_peak: 0.0,
            pod_start_s: 0.0,
        }
    }
}

impl Vpa {
    /// VPA's `addMemorySample`: one peak per aggregation window.
    fn add_memory(&mut self, t_s: f64, bytes: f64) {
        let end = *self.window_end_s.get_or_insert(t_s);
        if t_s < end {
            if self.memory_peak != 0.0 && bytes > self.memory_peak {
                self.mem.subtract(self.memory_peak, 1.0, end);
                self.mem.add(bytes, 1.0, end);
                self.memory_peak = bytes;
            }
        } else {
            let shift = ((t_s - end) / AGGREGATION_S).floor() * AGGREGATION_S + AGGREGATION_S;
            let end = end + shift;
            self.window_end_s = Some(end);
            self.mem.add(bytes, 1.0, end);
            self.memory_peak = bytes;
        }
    }

    /// VPA's `RecordOOM` with the request in force.
    fn record_oom(&mut self, t_s: f64, request_bytes: f64) {
        let used = request_bytes.max(self.memory_peak);
        let needed = (used + OOM_MIN_BUMP_BYTES).max(used * OOM_BUMP_RATIO);
        self.add_memory(t_s, needed);
    }

    fn confidence(&self) -> f64 {
        let life_days = self.first_s.map_or(0.0, |f| (self.last_s - f) / 86400.0);
        life_days.min(self.cpu_samples as f64 / 1440.0)
    }

    /// The recommender's output now.
    pub fn recommend(&self) -> Recommendation {
        let c = self.confidence();
        let est = |p: f64| {
            (
                self.cpu.percentile(p) * (1.0 + SAFETY_MARGIN),
                self.mem.percentile(p) * (1.0 + SAFETY_MARGIN),
            )
        };
        let floor = |(cpu, mem): (f64, f64)| Size {
            cpu_cores: cpu.max(MIN_CPU_CORES),
            memory_gib: mem.max(MIN_MEMORY_BYTES) / GIB,
        };
        let (tc, tm) = est(TARGET_PCT);
        let (lc, lm) = est(LOWER_PCT);
        let (uc, um) = est(UPPER_PCT);
        let lower_mult = if c > 0.0 {
            (1.0 + 0.001 / c).powf(-2.0)
        } else {
            0.0
        };
        let upper_mult = if c > 0.0 {
            1.0 + 1.0 / c
        } else {
            f64::INFINITY
        };
        Recommendation {
            target: floor((tc, tm)),
            lower: floor((lc * lower_mult, lm * lower_mult)),
            upper: floor((uc * upper_mult, um * upper_mult)),
        }
    }
}

impl Policy for Vpa {
    fn initial(&mut self, first: &Sample) -> Size {
        self.pod_start_s = first.t_s as f64;
        Size {
            cpu_cores: first.prov_cores,
            memory_gib: first.prov_memory_gib,
        }
    }

    fn step(&mut self, s: &Sample, alloc: Size) -> Size {
        let t = s.t_s as f64;
        let oom = s.memory_gib > alloc.memory_gib;
        if oom {
            self.record_oom(t, alloc.memory_gib * GIB);
        }
        self.first_s.get_or_insert(t);
        self.last_s = t;
        self.cpu_samples += 1;
        self.cpu
            .add(s.cpu_cores, alloc.cpu_cores.max(MIN_SAMPLE_WEIGHT), t);
        self.add_memory(t, s.memory_gib * GIB);

        let r = self.recommend();
        let outside = alloc.cpu_cores < r.lower.cpu_cores
            || alloc.cpu_cores > r.upper.cpu_cores
            || alloc.memory_gib < r.lower.memory_gib
            || alloc.memory_gib > r.upper.memory_gib;
        let quick_oom = oom && t - self.pod_start_s < QUICK_OOM_S;
        if !outside && !quick_oom {
            if t - self.pod_start_s < POD_LIFETIME_UPDATE_S {
                return alloc;
            }
            let diff = |req: f64, rec: f64| (req - rec).abs() / req.max(1e-3);
            let d = diff(alloc.cpu_cores, r.target.cpu_cores)
                + diff(alloc.memory_gib, r.target.memory_gib);
            if d < MIN_CHANGE_PRIORITY {
                return alloc;
            }
        }
        if r.target == alloc {
            return alloc;
        }
        // Evicted and re-created with the target as its requests.
        self.pod_start_s = t;
        r.target
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_s: i64, cpu: f64, mem: f64) -> Sample {
        Sample {
            t_s,
            cpu_cores: cpu,
            memory_gib: mem,
            prov_cores: 8.0,
            prov_memory_gib: 8.0,
        }
    }

    #[test]
    fn keeps_the_provisioned_size_for_12_hours_then_applies_p90_plus_margin() {
        let mut v = Vpa::default();
        let s0 = sample(0, 1.0, 2.0);
        let mut alloc = v.initial(&s0);
        let mut changed_at = None;
        for k in 0..(24 * 12) {
            let s = sample(k * 300, 1.0, 2.0);
            let next = v.step(&s, alloc);
            if next != alloc && changed_at.is_none() {
                changed_at = Some(k * 300);
            }
            alloc = next;
        }
        assert_eq!(changed_at, Some(12 * 3600));
        // p90 of a constant 1.0 is the end of its bucket (<= 5% above), + 15%.
        assert!(
            (1.15..=1.15 * 1.051).contains(&alloc.cpu_cores),
            "{alloc:?}"
        );
        assert!((2.3..=2.3 * 1.051).contains(&alloc.memory_gib), "{alloc:?}");
    }

    #[test]
    fn memory_is_one_peak_per_day_and_oom_bumps() {
        let mut v = Vpa::default();
        v.add_memory(0.0, 1e9);
        v.add_memory(100.0, 3e9);
        v.add_memory(200.0, 2e9);
        // One window, its peak 3e9.
        assert!((v.mem.total_weight() - v.mem.total_weight().round()).abs() < 1e-9);
        let p = v.mem.percentile(0.5);
        assert!((3e9..3e9 * 1.06).contains(&p), "{p}");
        v.record_oom(300.0, 4e9);
        let p = v.mem.percentile(0.99);
        assert!(p >= 4.8e9, "{p}");
        // With little history the upper bound is wide and the lower bound tiny.
        let mut v = Vpa::default();
        let first = sample(0, 0.001, 0.01);
        let alloc = v.initial(&first);
        v.step(&sample(300, 0.001, 0.01), alloc);
        let r = v.recommend();
        assert!(r.upper.cpu_cores > 100.0 * r.target.cpu_cores, "{r:?}");
        assert_eq!(r.target.cpu_cores, MIN_CPU_CORES, "min resources");
        assert!((r.target.memory_gib - 250.0 / 1024.0).abs() < 1e-9);
    }
}
