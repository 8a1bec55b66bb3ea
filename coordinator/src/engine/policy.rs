//! Turning a raw target into a size the platform can run, and deciding when to change:
//! platform steps (whole vCPUs or exact quotas, 128 MiB memory blocks), hard bounds per VM
//! and platform, explicit specs as floors, and hysteresis with cooldown.
//!
//! What it is for: sizes that do not flap. A scale-up is applied at once (a starved VM
//! costs more than an idle core); a scale-down only after the lower target has held,
//! continuously, for `scale_down_after_s` and the last change is at least `cooldown_s`
//! old, and then only to the *highest* target seen while it held (the sustained
//! evidence, not the last dip). A saving below `scale_down_min_saving` is not worth a
//! change at all.
//!
//! What it is not: the estimate itself (`engine::VmState`) or the catalogue (`cost`).

use serde::{Deserialize, Serialize};

use super::Size;
use super::reasons::{Kind, Why, dur};

/// Memory block of memory hotplug (virtio-mem and DIMM hotplug use 128 MiB blocks).
pub const MEMORY_BLOCK_GIB: f64 = 0.125;

/// Granularity the platform resizes in.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Steps {
    /// Cores: 1.0 for vCPU hotplug, 0.001 where a CPU quota (cgroup, container) applies.
    pub cpu_cores: f64,
    pub memory_gib: f64,
}

impl Steps {
    /// Whole vCPUs and 128 MiB memory blocks.
    pub const VM: Steps = Steps {
        cpu_cores: 1.0,
        memory_gib: MEMORY_BLOCK_GIB,
    };
    /// Millicores and MiB, the granularity of a CPU quota and a memory limit.
    pub const QUOTA: Steps = Steps {
        cpu_cores: 0.001,
        memory_gib: 1.0 / 1024.0,
    };
}

fn step_up(v: f64, step: f64) -> f64 {
    // A hair below a step boundary (float noise) stays on it.
    ((v / step) - 1e-9).ceil().max(1.0) * step
}

/// Hard bounds of one VM; `None` = unbounded on that side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Bounds {
    pub min_vcpus: Option<f64>,
    pub max_vcpus: Option<f64>,
    pub min_memory_gib: Option<f64>,
    pub max_memory_gib: Option<f64>,
    /// The platform's `maxcpus` (vCPUs the VM was started with room for).
    pub platform_max_vcpus: Option<f64>,
    /// The platform's `maxmem`.
    pub platform_max_memory_gib: Option<f64>,
}

/// Rounds `raw` to the steps, raises it to the floors, and clamps it to the bounds,
/// adding a reason for every value that moved.
pub fn shape(raw: Size, floors: Size, steps: Steps, b: &Bounds, reasons: &mut Why) -> Size {
    let one = |name: &'static str,
               v: f64,
               floor: f64,
               step: f64,
               lo: Option<f64>,
               hi: [Option<f64>; 2],
               reasons: &mut Why| {
        let mut x = v;
        if floor > x {
            x = floor;
            reasons.add(name, Kind::Floor, Some(x), || {
                "the profiler's explicit spec is a floor".into()
            });
        }
        let stepped = step_up(x, step);
        if (stepped - x).abs() > 1e-9 {
            reasons.add(name, Kind::Step, Some(stepped), || {
                format!("rounded up to the platform step of {step}")
            });
        }
        x = stepped;
        if let Some(lo) = lo
            && x < lo
        {
            x = lo;
            reasons.add(name, Kind::Bound, Some(x), || {
                format!("per-VM minimum {lo}")
            });
        }
        for (i, h) in hi.into_iter().enumerate() {
            if let Some(h) = h
                && x > h
            {
                // A bound that is not on a step boundary rounds down to one.
                x = ((h / step) + 1e-9).floor().max(1.0) * step;
                reasons.add(name, Kind::Bound, Some(x), || {
                    format!(
                        "{} {h}",
                        if i == 0 {
                            "per-VM maximum"
                        } else {
                            "platform maximum"
                        }
                    )
                });
            }
        }
        x
    };
    Size {
        cpu_cores: one(
            "cpu",
            raw.cpu_cores,
            floors.cpu_cores,
            steps.cpu_cores,
            b.min_vcpus,
            [b.max_vcpus, b.platform_max_vcpus],
            reasons,
        ),
        memory_gib: one(
            "memory",
            raw.memory_gib,
            floors.memory_gib,
            steps.memory_gib,
            b.min_memory_gib,
            [b.max_memory_gib, b.platform_max_memory_gib],
            reasons,
        ),
    }
}

/// Moves a decided size inside the operator's own bounds (`min_*`/`max_*`, not the
/// platform's) at once, in either direction, with a reason for each move.
///
/// Why: the target is already shaped inside the bounds, but the hysteresis holds a
/// scale-down for `scale_down_after_s` and lets a small rise wait. An operator who sets
/// `max_vcpus 1` on a 2-vCPU VM means now, not in three hours. Only the move to the
/// bound is immediate; anything beyond it follows the usual rules. Returns the size and,
/// per resource (cpu, memory), whether a bound moved it.
pub fn enforce_bounds(
    decided: Size,
    steps: Steps,
    b: &Bounds,
    reasons: &mut Why,
) -> (Size, [bool; 2]) {
    let one = |name: &'static str,
               v: f64,
               step: f64,
               lo: Option<f64>,
               hi: Option<f64>,
               reasons: &mut Why| {
        if let Some(h) = hi {
            let h_stepped = ((h / step) + 1e-9).floor().max(1.0) * step;
            if v > h_stepped + 1e-9 {
                reasons.add(name, Kind::Bound, Some(h_stepped), || {
                    format!("the operator's maximum {h} takes effect at once (no hysteresis)")
                });
                return (h_stepped, true);
            }
        }
        if let Some(l) = lo {
            let l_stepped = step_up(l, step);
            if v < l_stepped - 1e-9 {
                reasons.add(name, Kind::Bound, Some(l_stepped), || {
                    format!("the operator's minimum {l} takes effect at once")
                });
                return (l_stepped, true);
            }
        }
        (v, false)
    };
    let (cpu, fc) = one(
        "cpu",
        decided.cpu_cores,
        steps.cpu_cores,
        b.min_vcpus,
        b.max_vcpus,
        reasons,
    );
    let (mem, fm) = one(
        "memory",
        decided.memory_gib,
        steps.memory_gib,
        b.min_memory_gib,
        b.max_memory_gib,
        reasons,
    );
    (
        Size {
            cpu_cores: cpu,
            memory_gib: mem,
        },
        [fc, fm],
    )
}

/// The timing constants of [`Hysteresis`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// A scale-up smaller than this fraction waits (unless urgent: pressure).
    pub scale_up_min_increase: f64,
    /// Smallest change worth making, in cores and GiB (pressure-driven scale-ups
    /// excepted): on a platform with fine steps, a 20% move of a tiny VM is noise.
    pub min_change: [f64; 2],
    pub scale_down_after_s: f64,
    pub scale_down_min_saving: f64,
    pub cooldown_s: f64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Pending {
    since_s: Option<f64>,
    /// Highest (stepped) target seen while the scale-down was pending.
    highest: f64,
}

/// Change decisions for one VM over time.
#[derive(Debug, Clone, Default)]
pub struct Hysteresis {
    last_change_s: Option<f64>,
    pending: [Pending; 2],
}

impl Hysteresis {
    /// Starts with the last change made at `at_s` (None: never changed).
    pub fn new(last_change_s: Option<f64>) -> Self {
        Self {
            last_change_s,
            pending: [Pending::default(); 2],
        }
    }

    pub fn last_change_s(&self) -> Option<f64> {
        self.last_change_s
    }

    /// Follows the target over time without deciding anything: how long a scale-down
    /// has been due against `current`, and the highest target meanwhile. Used to
    /// rebuild the state from stored history.
    pub fn track(&mut self, now_s: f64, current: Size, target: Size, t: &Timing) {
        let cur = [current.cpu_cores, current.memory_gib];
        let tgt = [target.cpu_cores, target.memory_gib];
        for i in 0..2 {
            if tgt[i] < cur[i] * (1.0 - t.scale_down_min_saving) - 1e-9
                && cur[i] - tgt[i] >= t.min_change[i] - 1e-9
            {
                let p = &mut self.pending[i];
                p.since_s.get_or_insert(now_s);
                p.highest = p.highest.max(tgt[i]);
            } else {
                self.pending[i] = Pending::default();
            }
        }
    }

    /// The size to run from `now_s` on, given what runs now and the shaped target.
    /// Scale-ups are immediate; scale-downs wait as described in the module docs.
    pub fn decide(
        &mut self,
        now_s: f64,
        current: Size,
        target: Size,
        urgent: bool,
        t: &Timing,
        reasons: &mut Why,
    ) -> Size {
        let cur = [current.cpu_cores, current.memory_gib];
        let tgt = [target.cpu_cores, target.memory_gib];
        let mut next = cur;
        for i in 0..2 {
            let name = if i == 0 { "cpu" } else { "memory" };
            if (tgt[i] > cur[i] * (1.0 + t.scale_up_min_increase) + 1e-9
                && tgt[i] - cur[i] >= t.min_change[i] - 1e-9)
                || (urgent && tgt[i] > cur[i] + 1e-9)
            {
                next[i] = tgt[i];
                self.pending[i] = Pending::default();
            } else if tgt[i] > cur[i] + 1e-9 {
                // A small rise: not worth a change, but no reason to shrink either.
                self.pending[i] = Pending::default();
                reasons.add(name, Kind::Hysteresis, Some(cur[i]), || {
                    format!(
                        "scale-up to {:.3} is less than +{:.0}% (or {}): \
                         not worth a change without pressure",
                        tgt[i],
                        t.scale_up_min_increase * 100.0,
                        t.min_change[i]
                    )
                });
            } else if tgt[i] < cur[i] * (1.0 - t.scale_down_min_saving) - 1e-9
                && cur[i] - tgt[i] >= t.min_change[i] - 1e-9
            {
                let p = &mut self.pending[i];
                let since = *p.since_s.get_or_insert(now_s);
                p.highest = p.highest.max(tgt[i]);
                let held = now_s - since;
                let cooled = self.last_change_s.is_none_or(|c| now_s - c >= t.cooldown_s);
                if held >= t.scale_down_after_s && cooled {
                    next[i] = p.highest;
                    *p = Pending::default();
                } else if held < t.scale_down_after_s {
                    let highest = p.highest;
                    reasons.add(name, Kind::Hysteresis, Some(cur[i]), || {
                        format!(
                            "scale-down to {highest:.3} waits for sustained evidence: \
                             below the current size for {} of {}",
                            dur(held.floor()),
                            dur(t.scale_down_after_s)
                        )
                    });
                } else {
                    reasons.add(name, Kind::Cooldown, Some(cur[i]), || {
                        format!(
                            "scale-down held by the {} cooldown since the last change",
                            dur(t.cooldown_s)
                        )
                    });
                }
            } else {
                // Close enough: keep the size and forget any pending scale-down.
                self.pending[i] = Pending::default();
            }
        }
        let out = Size {
            cpu_cores: next[0],
            memory_gib: next[1],
        };
        if out != current {
            self.last_change_s = Some(now_s);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        scale_up_min_increase: 0.0,
        min_change: [0.0, 0.0],
        scale_down_after_s: 3600.0,
        scale_down_min_saving: 0.1,
        cooldown_s: 1800.0,
    };

    fn sz(c: f64, m: f64) -> Size {
        Size {
            cpu_cores: c,
            memory_gib: m,
        }
    }

    #[test]
    fn operator_bounds_take_effect_at_once_in_both_directions() {
        let b = Bounds {
            max_vcpus: Some(1.0),
            min_memory_gib: Some(6.1),
            ..Bounds::default()
        };
        let mut why = Why::on();
        let (out, forced) = enforce_bounds(sz(2.0, 4.0), Steps::VM, &b, &mut why);
        // 6.1 GiB rounds up to whole 128 MiB blocks.
        assert_eq!(out, sz(1.0, 6.125));
        assert_eq!(forced, [true, true]);
        let v = why.into_vec();
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v.iter().all(|r| r.kind == Kind::Bound), "{v:?}");
        assert!(v[0].detail.contains("maximum 1") && v[0].detail.contains("at once"));
        // Inside the bounds nothing moves and nothing is said.
        let mut why = Why::on();
        let (out, forced) = enforce_bounds(sz(1.0, 8.0), Steps::VM, &b, &mut why);
        assert_eq!((out, forced), (sz(1.0, 8.0), [false, false]));
        assert!(why.into_vec().is_empty());
    }

    #[test]
    fn scale_up_is_immediate_scale_down_needs_sustained_evidence() {
        let mut h = Hysteresis::new(None);
        let mut r = Why::on();
        // Up at once, even right after a change.
        let s = h.decide(0.0, sz(2.0, 4.0), sz(4.0, 4.0), false, &T, &mut r);
        assert_eq!(s, sz(4.0, 4.0));
        let s = h.decide(60.0, s, sz(6.0, 8.0), false, &T, &mut r);
        assert_eq!(s, sz(6.0, 8.0));
        // Down: nothing for an hour of lower targets...
        let mut cur = s;
        for k in 0..60 {
            let t = 120.0 + f64::from(k) * 60.0;
            let target = sz(if k == 30 { 3.0 } else { 2.0 }, 8.0);
            cur = h.decide(t, cur, target, false, &T, &mut r);
            assert_eq!(cur, sz(6.0, 8.0), "at {t}");
        }
        assert!(r.has(Kind::Hysteresis));
        // ...then down to the highest target seen while it held (3, not 2).
        cur = h.decide(120.0 + 3600.0, cur, sz(2.0, 8.0), false, &T, &mut r);
        assert_eq!(cur, sz(3.0, 8.0));
    }

    #[test]
    fn a_rise_resets_the_pending_scale_down_and_small_savings_are_ignored() {
        let mut h = Hysteresis::new(None);
        let mut r = Why::on();
        let cur = sz(4.0, 8.0);
        h.decide(0.0, cur, sz(2.0, 8.0), false, &T, &mut r);
        // Back at the current size for one evaluation: the clock restarts.
        h.decide(1800.0, cur, sz(4.0, 8.0), false, &T, &mut r);
        assert_eq!(h.decide(3700.0, cur, sz(2.0, 8.0), false, &T, &mut r), cur);
        assert_eq!(
            h.decide(3700.0 + 3599.0, cur, sz(2.0, 8.0), false, &T, &mut r),
            cur
        );
        assert_eq!(
            h.decide(3700.0 + 3600.0, cur, sz(2.0, 8.0), false, &T, &mut r),
            sz(2.0, 8.0)
        );
        // 8 -> 7.5 GiB saves 6%: not worth a change, ever.
        let mut h = Hysteresis::new(None);
        for k in 0..10 {
            let s = h.decide(f64::from(k) * 3600.0, cur, sz(4.0, 7.5), false, &T, &mut r);
            assert_eq!(s, cur);
        }
    }

    #[test]
    fn cooldown_holds_a_due_scale_down() {
        let mut h = Hysteresis::new(Some(0.0));
        let mut r = Why::on();
        let t = Timing {
            cooldown_s: 7200.0,
            ..T
        };
        let cur = sz(4.0, 8.0);
        h.decide(100.0, cur, sz(2.0, 8.0), false, &t, &mut r);
        assert_eq!(h.decide(3800.0, cur, sz(2.0, 8.0), false, &t, &mut r), cur);
        assert!(r.has(Kind::Cooldown));
        assert_eq!(
            h.decide(7300.0, cur, sz(2.0, 8.0), false, &t, &mut r),
            sz(2.0, 8.0)
        );
    }

    #[test]
    fn steps_floors_and_bounds() {
        let mut r = Why::on();
        let b = Bounds {
            min_vcpus: Some(2.0),
            max_vcpus: Some(16.0),
            max_memory_gib: Some(100.0),
            platform_max_memory_gib: Some(24.1),
            ..Bounds::default()
        };
        let s = shape(sz(0.3, 3.01), sz(0.0, 0.0), Steps::VM, &b, &mut r);
        assert_eq!(s, sz(2.0, 3.125), "whole vCPUs, 128 MiB blocks, min 2");
        assert!(r.has(Kind::Bound));
        let s = shape(sz(40.0, 64.0), sz(0.0, 0.0), Steps::VM, &b, &mut r);
        assert_eq!(
            s,
            sz(16.0, 24.0),
            "max vCPUs; platform maxmem rounded down to a block"
        );
        let mut r = Why::on();
        let s = shape(
            sz(1.2, 1.0),
            sz(4.0, 8.0),
            Steps::VM,
            &Bounds::default(),
            &mut r,
        );
        assert_eq!(s, sz(4.0, 8.0));
        assert_eq!(r.count(Kind::Floor), 2);
        let s = shape(
            sz(0.2501, 0.3),
            sz(0.0, 0.0),
            Steps::QUOTA,
            &Bounds::default(),
            &mut r,
        );
        assert!((s.cpu_cores - 0.251).abs() < 1e-9);
        // Exactly on a step stays there.
        let s = shape(
            sz(3.0, 2.0),
            sz(0.0, 0.0),
            Steps::VM,
            &Bounds::default(),
            &mut r,
        );
        assert_eq!(s, sz(3.0, 2.0));
    }
}
