//! Commands from the coordinator to an agent (resize, preload, model and config
//! updates) and the agent's reports on them. Each command is signed by the
//! coordinator's CA key over its MessagePack body, bound to one agent id and an
//! expiry, so the agent acts on it only when the signature, the id and the clock
//! agree, whatever the TLS session says. This module holds only the message types.

use serde::{Deserialize, Serialize};

/// A command as sent: the MessagePack bytes of a [`Command`] and the CA's signature
/// over exactly those bytes. The agent verifies before it decodes what to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedCommand {
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// The signed content of a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub id: String,
    pub agent_id: String,
    pub issued_ms: i64,
    pub expires_ms: i64,
    pub action: Action,
}

/// What a command asks for. Each variant's payload is defined with the feature that
/// executes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// Placeholder until the command channel lands; refused by every agent.
    Noop,
}

/// Where a command is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandState {
    Pending,
    Delivered,
    Running,
    Succeeded,
    Failed,
    Expired,
    Cancelled,
}

/// The agent's report on a command: a state change or progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandUpdate {
    pub id: String,
    pub state: CommandState,
    pub at_ms: i64,
    /// Current step, for people.
    pub step: Option<String>,
    pub bytes: Option<u64>,
    pub percent: Option<f32>,
    /// The result or the error, when the command has finished.
    pub message: Option<String>,
}
