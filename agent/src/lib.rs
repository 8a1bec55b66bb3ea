//! The Persona agent: a small daemon inside the VM. It samples the machine (collect),
//! shows what it sees (observe), and, as the daemon, keeps unacknowledged batches in a
//! durable outbox and streams them to the coordinator over QUIC with mutual TLS after
//! enrolling with a join token. Binaries call into this library.

pub mod actuate;
pub mod collect;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod detect;
pub mod enroll;
pub mod health;
pub mod helper;
pub mod identity;
pub mod link;
pub mod mirror;
pub mod model_store;
pub mod observe;
pub mod outbox;
pub mod policy;
pub mod preload;
pub mod settings;
pub mod tls;
