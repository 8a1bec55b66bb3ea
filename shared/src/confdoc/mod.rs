//! The tables that document every configuration key the agent reads (its config file
//! and its policy file) and the renderer that turns a table into a section of
//! `docs/configuration.md`. They live here, beside neither daemon, because the
//! coordinator renders the whole document (`persona_coordinator::config`) and the agent's
//! tests check every documented default against its real parser. Only documentation
//! lives here; parsing and checking stay in the config modules.

mod agent;
mod key;
mod policy;

pub use agent::AGENT_KEYS;
pub use key::{KeyDoc, render_section, toml_setting};
pub use policy::POLICY_KEYS;
