//! The limits and grammars of a pre-load plan that the coordinator (which builds and
//! submits plans) and the agent (which refuses anything outside them) must apply alike,
//! so a plan the coordinator accepts is never refused by the agent for its shape. What
//! this is not: policy (the agent's `policy` decides what a VM allows) or running steps
//! (the agent's `preload`).

pub mod validate;

/// Most steps in one plan.
pub const MAX_STEPS: usize = 256;
