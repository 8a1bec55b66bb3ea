//! The `persona` replay policy: this project's engine (`crate::engine`) driven causally,
//! one trace sample at a time, exactly as the coordinator drives it for a live VM.
//!
//! What the trace cannot give and how it is stood in for:
//! - *The persona distribution.* Bitbrains has no descriptions, so there is no profile:
//!   the prior size is the size the VM was provisioned with (what its owner asked for),
//!   and it counts less as history grows (the engine's confidence); the forecast's prior
//!   shape is the uniform mixture of the built-in personas' weekly p95 profiles.
//! - *Pressure events.* The agent raises one when a resource is saturated for a
//!   sustained time. A trace sample is a 5-minute average, so a sample whose usage
//!   exceeds the allocation in force is a saturated interval and is fed to the engine as
//!   an open pressure event for that resource.
//! - *Explicit specs and per-VM bounds*: none (no floor, no cap).
//!
//! What it is not: a different algorithm from the live engine; only the inputs differ.

use super::Policy;
use super::bitbrains::Sample;
use crate::engine::policy::{Bounds, Hysteresis, Steps};
use crate::engine::reasons::Why;
use crate::engine::{EngineConfig, Inputs, Pressure, Prior, Size, VmState};
use crate::profile::personas::{Persona, Week};

/// The uniform mixture of the personas' weekly p95 (cpu, memory) shapes.
pub fn mixture_shape(personas: &[Persona]) -> Option<(Week, Week)> {
    if personas.is_empty() {
        return None;
    }
    let n = personas.len() as f64;
    let mut cpu = vec![vec![0.0; 24]; 7];
    let mut mem = vec![vec![0.0; 24]; 7];
    for p in personas {
        for (dst, src) in [
            (&mut cpu, &p.usage.cpu_cores.p95),
            (&mut mem, &p.usage.memory_gib.p95),
        ] {
            // Each persona's shape is normalised first so big personas do not dominate.
            let mean = src.iter().flatten().sum::<f64>() / 168.0;
            if src.len() != 7 || src.iter().any(|r| r.len() != 24) || mean.is_nan() || mean <= 0.0 {
                continue;
            }
            for (d, s) in dst.iter_mut().zip(src) {
                for (x, y) in d.iter_mut().zip(s) {
                    *x += y / mean / n;
                }
            }
        }
    }
    Some((cpu, mem))
}

/// The engine for one VM of the trace.
#[derive(Debug, Clone)]
pub struct PersonaPolicy {
    cfg: EngineConfig,
    state: VmState,
    hyst: Hysteresis,
    prior: Option<Prior>,
    steps: Steps,
}

impl PersonaPolicy {
    pub fn new(cfg: &EngineConfig, shape: Option<&(Week, Week)>, steps: Steps) -> Self {
        Self {
            cfg: cfg.clone(),
            state: VmState::new(cfg, shape.map(|(c, m)| (c.as_slice(), m.as_slice()))),
            hyst: Hysteresis::new(None),
            prior: None,
            steps,
        }
    }
}

impl Policy for PersonaPolicy {
    fn initial(&mut self, first: &Sample) -> Size {
        let size = Size {
            cpu_cores: first.prov_cores,
            memory_gib: first.prov_memory_gib,
        };
        self.prior = Some(Prior {
            size,
            detail: "no profile in the trace: the provisioned size".into(),
        });
        size
    }

    fn step(&mut self, s: &Sample, alloc: Size) -> Size {
        let t = s.t_s as f64;
        let mut pressure = Vec::new();
        for (name, used, have) in [
            ("cpu", s.cpu_cores, alloc.cpu_cores),
            ("memory", s.memory_gib, alloc.memory_gib),
        ] {
            if used > have {
                pressure.push(Pressure {
                    resource: name.into(),
                    since_s: t,
                    at_s: t,
                    severity: "saturated".into(),
                    summary: format!("usage {used:.3} above the allocation {have:.3}"),
                });
            }
        }
        self.state.observe(
            t,
            Size {
                cpu_cores: s.cpu_cores,
                memory_gib: s.memory_gib,
            },
        );
        let est = self.state.estimate(
            t,
            &Inputs {
                prior: self.prior.as_ref(),
                current: alloc,
                pressure: &pressure,
                floors: Size::default(),
                bounds: Bounds::default(),
                steps: self.steps,
                explain: false,
                initial: false,
            },
        );
        self.hyst.decide(
            t,
            alloc,
            est.target,
            est.urgent,
            &self.cfg.timing(),
            &mut Why::off(),
        )
    }
}
