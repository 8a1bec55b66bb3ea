//! `personactl`'s side of the coordinator crate: the HTTP client (`client`), the global
//! options ([`Global`]), human tables (`table`) and one file per command group (`agents`,
//! `tokens`, `commands`, `events`, `profile`, `recommend`, `replay`) and terminal-safe
//! text (`text`: every human rendering gets a document whose strings have no escape
//! sequences or control characters left, see [`human`]). It talks to a
//! running coordinator only over the HTTP API; it never opens the store. The binary
//! (`src/bin/personactl.rs`) parses the command line and calls one of these.

pub mod agents;
pub mod client;
pub mod commands;
pub mod events;
pub mod profile;
pub mod recommend;
pub mod replay;
pub mod table;
pub mod text;
pub mod tokens;

use std::path::PathBuf;

use serde_json::Value;

use client::{Client, CtlError};

/// Global options of personactl: where the API is, where the data dir (and its admin
/// token) is, and whether to print one JSON document instead of text.
#[derive(Debug, Clone)]
pub struct Global {
    pub api: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub json: bool,
}

impl Global {
    /// The admin API client these options point at.
    pub fn client(&self) -> Result<Client, CtlError> {
        Client::discover(self.api.clone(), self.data_dir.clone())
    }
}

/// Prints `doc` as JSON with `--json`, else as `render` renders it (through [`human`]).
pub fn emit(g: &Global, doc: &Value, render: impl FnOnce(&Value) -> String) {
    if g.json {
        println!("{doc}");
    } else {
        print!("{}", human(doc, render));
    }
}

/// The human rendering of `doc`: `render` sees a copy whose every string went through
/// [`text::clean_text`], so agent-supplied text cannot carry terminal escapes into the
/// output whichever renderer prints it (tables also flatten newlines per cell).
pub fn human(doc: &Value, render: impl FnOnce(&Value) -> String) -> String {
    render(&text::clean_value(doc))
}

/// "12s ago" for a time in ms, "never" when absent.
pub fn ago(ms: Option<i64>) -> String {
    match ms {
        Some(ms) => {
            let age = (persona_shared::clock::now_ms() - ms) / 1000;
            if age < 0 {
                "just now".into()
            } else {
                format!("{age}s ago")
            }
        }
        None => "never".into(),
    }
}
