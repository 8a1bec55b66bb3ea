//! The one table that documents every configuration key: name, default, what values are
//! allowed and what the key means. `docs/configuration.md` is rendered from these tables
//! (the agent's here, the coordinator's in `persona_coordinator::config`) by
//! [`render_section`], and tests check both that the document is current and that every
//! documented default is the one the code really uses. Only documentation lives here; the
//! parsing and checking stay in the config modules.

use std::fmt::Write as _;

/// One documented key.
#[derive(Debug, Clone, Copy)]
pub struct KeyDoc {
    /// Dotted TOML path, e.g. `purpose.data_gb`.
    pub key: &'static str,
    /// TOML type as an operator writes it.
    pub ty: &'static str,
    /// The default as a TOML value, or `None` when the key is unset by default.
    pub default: Option<&'static str>,
    /// What values are accepted.
    pub allowed: &'static str,
    pub meaning: &'static str,
}

/// Every key of the agent's config file (`persona-agent run --config FILE`).
pub const AGENT_KEYS: &[KeyDoc] = &[
    KeyDoc {
        key: "coordinator",
        ty: "string",
        default: None,
        allowed: "HOST:PORT",
        meaning: "The coordinator's QUIC address. Unset: the address given at enrollment (kept in the state dir).",
    },
    KeyDoc {
        key: "state_dir",
        ty: "path",
        default: Some("\"/var/lib/persona-agent\""),
        allowed: "a directory the agent can write (created 0700 at enrollment)",
        meaning: "Identity (key.pem, cert.pem, ca.pem, identity.toml) and the outbox (outbox.db).",
    },
    KeyDoc {
        key: "sample_interval_ms",
        ty: "integer",
        default: Some("1000"),
        allowed: "100..=60000",
        meaning: "Sampling interval. The coordinator's Welcome may override it.",
    },
    KeyDoc {
        key: "batch_interval_s",
        ty: "integer",
        default: Some("10"),
        allowed: "1..=600, at least one sample interval and at most 3600 samples",
        meaning: "Seconds of samples per telemetry batch. The coordinator's Welcome may override it.",
    },
    KeyDoc {
        key: "outbox_max_bytes",
        ty: "integer",
        default: Some("67108864"),
        allowed: "at least max_frame_bytes",
        meaning: "Bound of the on-disk outbox while the coordinator is unreachable; beyond it the oldest batches are dropped and counted.",
    },
    KeyDoc {
        key: "top_n",
        ty: "integer",
        default: Some("10"),
        allowed: "0..=1000",
        meaning: "Processes listed by CPU and by memory.",
    },
    KeyDoc {
        key: "process_every",
        ty: "integer",
        default: Some("5"),
        allowed: "1 or more",
        meaning: "Scan processes every this many ticks (a scan costs far more than a tick).",
    },
    KeyDoc {
        key: "max_frame_bytes",
        ty: "integer",
        default: Some("1048576"),
        allowed: "4096..=67108864",
        meaning: "Hard maximum size of one protocol frame, sent or received.",
    },
    KeyDoc {
        key: "proc_root",
        ty: "path",
        default: Some("\"/proc\""),
        allowed: "a procfs mount",
        meaning: "Where procfs is mounted (only changed for tests).",
    },
    KeyDoc {
        key: "sys_root",
        ty: "path",
        default: Some("\"/sys\""),
        allowed: "a sysfs mount",
        meaning: "Where sysfs is mounted (only changed for tests).",
    },
    KeyDoc {
        key: "metrics_listen",
        ty: "string",
        default: None,
        allowed: "a loopback IP:PORT, e.g. \"127.0.0.1:9464\"",
        meaning: "Serve the agent's own health (outbox depth, dropped batches, collector errors, CPU, RSS, link state) as Prometheus text on http://ADDR/metrics. Unset: off.",
    },
    KeyDoc {
        key: "purpose.description",
        ty: "string",
        default: Some("\"\""),
        allowed: "free text",
        meaning: "What the VM is for, as its owner declared it, e.g. \"fine-tuning a 7B model with LoRA\".",
    },
    KeyDoc {
        key: "purpose.software",
        ty: "array of strings",
        default: Some("[]"),
        allowed: "package or tool names",
        meaning: "Software the owner means to run, e.g. [\"pytorch\", \"cuda\"].",
    },
    KeyDoc {
        key: "purpose.data_gb",
        ty: "float",
        default: None,
        allowed: "a number of GB, 0 or more",
        meaning: "Size of the working data set. The whole [purpose] table is optional; when present it is sent to the coordinator in Hello.",
    },
];

fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// Renders one markdown section: a heading, an intro paragraph and the key table.
pub fn render_section(title: &str, intro: &str, keys: &[KeyDoc]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## {title}\n\n{intro}\n");
    let _ = writeln!(out, "| key | type | default | allowed | meaning |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    for k in keys {
        let default = k.default.map_or("unset".to_owned(), |d| format!("`{d}`"));
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} |",
            k.key,
            k.ty,
            cell(&default),
            cell(k.allowed),
            cell(k.meaning)
        );
    }
    out
}

/// A TOML document that sets `key` (dotted, at most one table level) to `value`.
pub fn toml_setting(key: &str, value: &str) -> String {
    match key.split_once('.') {
        Some((table, k)) => format!("[{table}]\n{k} = {value}\n"),
        None => format!("{key} = {value}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentConfig;
    use std::path::Path;

    /// Every documented default is the real default: setting a key to its documented
    /// default gives the same configuration as not setting it.
    #[test]
    fn documented_defaults_are_the_real_ones() {
        let p = Path::new("doc.toml");
        for k in AGENT_KEYS {
            let Some(d) = k.default else { continue };
            let text = toml_setting(k.key, d);
            let mut parsed =
                AgentConfig::parse(&text, p).unwrap_or_else(|e| panic!("{}: {e}", k.key));
            if k.key.starts_with("purpose.") {
                // Setting any purpose key creates the table; its content must be default.
                assert_eq!(parsed.purpose.take(), Some(Default::default()), "{}", k.key);
            }
            assert_eq!(
                parsed,
                AgentConfig::default(),
                "documented default of {}",
                k.key
            );
        }
    }

    /// Every key the parser accepts is documented, and nothing else: unknown keys are
    /// refused, so a documented key that parses exists.
    #[test]
    fn every_documented_key_exists_and_the_example_mentions_it() {
        let example = include_str!("../../packaging/agent.toml");
        for k in AGENT_KEYS {
            let leaf = k.key.rsplit('.').next().unwrap_or(k.key);
            assert!(
                example.contains(leaf),
                "packaging/agent.toml does not mention {}",
                k.key
            );
        }
        // Count the fields the struct has: the parser refuses unknown keys, and a key that
        // is not in the table would not be caught above, so check the struct's field count
        // through its Debug output.
        let dbg = format!("{:?}", AgentConfig::default());
        let top = AGENT_KEYS.iter().filter(|k| !k.key.contains('.')).count() + 1; // + purpose
        assert_eq!(
            dbg.matches(": ").count(),
            top,
            "AgentConfig fields vs documented keys: {dbg}"
        );
    }
}
