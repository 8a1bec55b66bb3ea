//! Coordinator commands on the agent's side: signature checks (`verify`), the durable
//! record of accepted ids and model grants (`log`) and the runner that carries them out
//! (`runner`). The link hands received commands to the runner and sends its updates
//! back; nothing here speaks QUIC. What this is not: the policy file (`policy`), the
//! pre-load steps (`preload`) or the resize itself (`actuate`).

pub mod log;
pub mod runner;
pub mod verify;

pub use log::{COMMANDS_FILE, Claim, CommandError, CommandLog, model_granted_in};
pub use runner::{LinkHooks, RunnerConfig, start};
pub use verify::{Anchor, Refusal, Trust, TrustError, ca_der_from_pem, key_fingerprint, verify};
