//! Persona's machine-learning models, and the one crate that depends on burn.
//!
//! What it is for: the **Usage Profiler** ([`profiler`]): a small burn MLP over hashed text,
//! software and data-size features that turns a VM request into a probability per persona;
//! and the **mirror** model ([`mirror`]) the agent runs on its window features
//! ([`persona_shared::window`]) to say which persona the VM behaves like, with its training
//! data generator ([`mirror_data`]) and training ([`mirror_train`]).
//!
//! What it is not: the persona database, sizing or spec extraction (coordinator), nor I/O.
//!
//! Build notes: burn is built with `default-features = false, features = ["std", "flex"]`:
//! the pure-Rust CPU backend, without `rayon` (single-threaded: small, fast for one-vector
//! inference, and bit-reproducible training) and without `simd`. Training code (autodiff +
//! Adam) sits behind this crate's `train` feature, which turns on `burn/optim`; inference-only
//! users (the agent) leave it off. Cargo unifies features per build, so a workspace build
//! that includes the coordinator compiles `optim` once for everyone; a `-p persona-agent`
//! build does not.

pub mod corpus;
mod envelope;
mod error;
pub mod eval;
pub mod features;
pub mod mirror;
#[cfg(feature = "train")]
pub mod mirror_data;
#[cfg(feature = "train")]
pub mod mirror_train;
mod mlp;
pub mod profiler;
#[cfg(feature = "train")]
pub mod rng;
#[cfg(feature = "train")]
mod train;

pub use error::ModelError;

// The main names at the crate root too, so callers may write either
// `persona_models::profiler::train` or `persona_models::train`.
pub use corpus::{Example, shipped_corpus};
pub use mirror::Mirror;
pub use profiler::{ProfileInput, Profiler, low_confidence};
#[cfg(feature = "train")]
pub use train::{TrainConfig, TrainReport, train, train_with};
