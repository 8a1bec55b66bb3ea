//! Mirror models on the coordinator: the registry and the push to agents (`push`), and
//! training both models from what the store holds (`train`). What it is not: the model
//! definitions themselves, which live in the persona-models crate.

pub mod push;
pub mod train;
