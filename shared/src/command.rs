//! Commands from the coordinator to an agent (resize, preload, model and config
//! updates, cancellation, command-key pinning) and the agent's reports on them. Each
//! command is signed over its MessagePack body, bound to one agent id and an expiry, so
//! the agent acts on it only when the signature, the id and the clock agree, whatever
//! the TLS session says. The signer is the coordinator's command key once the agent has
//! pinned it ([`Action::PinCommandKey`]), and the CA key before that. This module holds only the message types and
//! the exact bytes that are signed; signing lives in the coordinator, verification and
//! execution in the agent.

use serde::{Deserialize, Serialize};

use crate::resize::ResizeRequest;

/// Prefix of every signed message: the CA key signs certificates and, for agents that
/// have not pinned a command key yet, commands; this domain separation makes a command
/// signature useless as anything else (and the reverse).
pub const SIGNING_CONTEXT: &[u8] = b"persona-command/1\0";

/// Longest command id accepted (ids are `c-` and 16 hex digits when the coordinator
/// makes them).
pub const MAX_ID_LEN: usize = 64;

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

impl Command {
    /// The MessagePack body that is signed and sent.
    pub fn encode(&self) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        rmp_serde::to_vec(self)
    }

    /// Decodes a body (only after its signature was verified).
    pub fn decode(body: &[u8]) -> Result<Command, rmp_serde::decode::Error> {
        rmp_serde::from_slice(body)
    }
}

/// The bytes the signature covers: [`SIGNING_CONTEXT`] followed by the body.
pub fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_CONTEXT.len() + body.len());
    m.extend_from_slice(SIGNING_CONTEXT);
    m.extend_from_slice(body);
    m
}

/// What a command asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// Change the VM's size in the guest (the agent's `guest` actuator).
    Resize(ResizeRequest),
    /// Install packages and images and fetch files, step by step.
    Preload(PreloadPlan),
    /// Accept the model `kind` at `version` (SHA-256 of its bytes) when the coordinator
    /// pushes it with `CoordMsg::Model`; the push itself carries the bytes.
    ModelUpdate {
        kind: String,
        version: String,
        #[serde(with = "serde_bytes")]
        sha256: Vec<u8>,
    },
    /// Change agent settings that can change live.
    ConfigUpdate(ConfigUpdate),
    /// Stop the command `id`: never start it if it has not started, or stop a running
    /// preload between steps.
    Cancel { id: String },
    /// From now on accept only commands signed by this P-256 key (an uncompressed SEC1
    /// point, 65 bytes). Signed by the key the agent trusts today (its pinned command
    /// key, or the CA before the first pin), so each rotation is vouched for by the
    /// key it replaces.
    PinCommandKey {
        #[serde(with = "serde_bytes")]
        public_key: Vec<u8>,
    },
}

impl Action {
    /// Short name, for tables, logs and the policy.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Resize(_) => "resize",
            Action::Preload(_) => "preload",
            Action::ModelUpdate { .. } => "model_update",
            Action::ConfigUpdate(_) => "config_update",
            Action::Cancel { .. } => "cancel",
            Action::PinCommandKey { .. } => "pin_command_key",
        }
    }
}

/// Length of an uncompressed SEC1 P-256 point: 0x04, X, Y.
pub const P256_POINT_LEN: usize = 65;

/// Agent settings a command may change live. Every field is optional: an update names
/// only what it changes. The agent's policy decides whether config updates are allowed
/// and checks each value against the same ranges as its config file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ConfigUpdate {
    pub sample_interval_ms: Option<u32>,
    pub batch_interval_s: Option<u32>,
}

/// What to install or fetch, in order. Made by the coordinator's pre-load
/// orchestrator from a persona's manifest.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PreloadPlan {
    /// The persona the plan came from, for people.
    pub persona: Option<String>,
    pub steps: Vec<PreloadStep>,
}

/// A system package manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PackageManager {
    Apt,
    Dnf,
}

impl PackageManager {
    pub fn name(self) -> &'static str {
        match self {
            PackageManager::Apt => "apt",
            PackageManager::Dnf => "dnf",
        }
    }
}

/// One step of a pre-load plan. Each is idempotent on the agent: what is already present
/// is reported as skipped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PreloadStep {
    /// A Debian or RPM package.
    Package {
        manager: PackageManager,
        name: String,
        version: Option<String>,
    },
    /// A Python package, installed into the venv the agent's policy names.
    Pip {
        name: String,
        version: Option<String>,
    },
    /// A container image (docker or podman pull).
    Image { reference: String },
    /// A file or data set: fetched, checked against `sha256` (hex) and `size`, then
    /// renamed into `dest`.
    File {
        url: String,
        sha256: String,
        size: u64,
        dest: String,
    },
}

impl PreloadStep {
    /// For progress reports and tables: "apt curl", "file https://... -> /data/x".
    pub fn describe(&self) -> String {
        match self {
            PreloadStep::Package {
                manager,
                name,
                version,
            } => match version {
                Some(v) => format!("{} {name}={v}", manager.name()),
                None => format!("{} {name}", manager.name()),
            },
            PreloadStep::Pip { name, version } => match version {
                Some(v) => format!("pip {name}=={v}"),
                None => format!("pip {name}"),
            },
            PreloadStep::Image { reference } => format!("image {reference}"),
            PreloadStep::File { url, dest, .. } => format!("file {url} -> {dest}"),
        }
    }
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

impl CommandState {
    /// Lower-case name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandState::Pending => "pending",
            CommandState::Delivered => "delivered",
            CommandState::Running => "running",
            CommandState::Succeeded => "succeeded",
            CommandState::Failed => "failed",
            CommandState::Expired => "expired",
            CommandState::Cancelled => "cancelled",
        }
    }

    /// Parses [`CommandState::as_str`].
    pub fn parse(s: &str) -> Option<CommandState> {
        Some(match s {
            "pending" => CommandState::Pending,
            "delivered" => CommandState::Delivered,
            "running" => CommandState::Running,
            "succeeded" => CommandState::Succeeded,
            "failed" => CommandState::Failed,
            "expired" => CommandState::Expired,
            "cancelled" => CommandState::Cancelled,
            _ => return None,
        })
    }

    /// No state follows this one.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            CommandState::Succeeded
                | CommandState::Failed
                | CommandState::Expired
                | CommandState::Cancelled
        )
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_and_states_parse() {
        let c = Command {
            id: "c-1".into(),
            agent_id: "a-1".into(),
            issued_ms: 1,
            expires_ms: 2,
            action: Action::Preload(PreloadPlan {
                persona: Some("web-server".into()),
                steps: vec![
                    PreloadStep::Package {
                        manager: PackageManager::Apt,
                        name: "curl".into(),
                        version: None,
                    },
                    PreloadStep::File {
                        url: "https://x/y".into(),
                        sha256: "00".repeat(32),
                        size: 3,
                        dest: "/data/y".into(),
                    },
                ],
            }),
        };
        let body = c.encode().unwrap();
        assert_eq!(Command::decode(&body).unwrap(), c);
        let m = signed_message(&body);
        assert!(m.starts_with(SIGNING_CONTEXT) && m.ends_with(&body));
        for s in [
            CommandState::Pending,
            CommandState::Delivered,
            CommandState::Running,
            CommandState::Succeeded,
            CommandState::Failed,
            CommandState::Expired,
            CommandState::Cancelled,
        ] {
            assert_eq!(CommandState::parse(s.as_str()), Some(s));
        }
        assert!(CommandState::Cancelled.is_final() && !CommandState::Running.is_final());
        assert_eq!(CommandState::parse("done"), None);
    }
}
