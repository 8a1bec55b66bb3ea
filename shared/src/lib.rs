//! Code that the agent and the coordinator must agree on: the metric registry, the
//! time-series codec, the wire protocol and its framing, the batch layout, the pre-load
//! grammars and the documentation of the agent's config keys.
//!
//! The default build is pure (no network, no database, no async runtime), so the fuzz
//! targets and the models crate compile only what they decode. The daemons' common I/O
//! helpers sit behind features that the agent and the coordinator switch on:
//! - `wire`: frames over tokio streams (`wire`);
//! - `sqlite`: the one WAL database open (`sqlite`);
//! - `config`: the strict TOML file loader (`config`);
//! - `daemon`: systemd notify and the logging set-up (`systemd`, `logging`).

pub mod addr;
pub mod batch;
pub mod clock;
pub mod codec;
pub mod command;
pub mod confdoc;
pub mod events;
pub mod facts;
pub mod metrics;
pub mod preload;
pub mod protocol;
pub mod resize;
pub mod sample;
pub mod text;
pub mod varint;
pub mod window;

#[cfg(feature = "config")]
pub mod config;
#[cfg(feature = "daemon")]
pub mod logging;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "daemon")]
pub mod systemd;
#[cfg(feature = "wire")]
pub mod wire;
