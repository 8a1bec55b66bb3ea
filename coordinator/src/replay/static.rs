//! The `static` replay policy: the size the VM was provisioned with, as the trace records
//! it at each sample (an operator's manual resize shows up as a change).
//!
//! What it is for: the baseline every right-sizer is measured against. What it is not: a
//! policy anyone should run.

use super::Policy;
use super::bitbrains::Sample;
use crate::engine::Size;

/// The provisioned size.
#[derive(Debug, Clone, Default)]
pub struct Static;

impl Policy for Static {
    fn initial(&mut self, first: &Sample) -> Size {
        Size {
            cpu_cores: first.prov_cores,
            memory_gib: first.prov_memory_gib,
        }
    }

    fn step(&mut self, s: &Sample, _alloc: Size) -> Size {
        // The size configured for the next interval is the one recorded now: a
        // provisioning change is known when it is made, not learned from usage.
        Size {
            cpu_cores: s.prov_cores,
            memory_gib: s.prov_memory_gib,
        }
    }
}
