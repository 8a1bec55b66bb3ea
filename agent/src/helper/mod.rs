//! The root helper `persona-actuator`: its request protocol (`protocol`, used by both
//! the agent and the helper) and the helper's server (`server`). The agent reaches the
//! helper only through `protocol::call`; the server runs only in the helper's process.
//! What this is not: deciding whether to act (the coordinator and `policy` do) or the
//! guest resize logic (`actuate`).

pub mod protocol;
pub mod server;
