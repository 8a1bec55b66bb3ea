//! Logging set-up shared by the agent's and the coordinator's commands: human-readable
//! lines on stderr, so stdout stays free for `--json` documents. The level comes from
//! `PERSONA_LOG` (`info` by default; targets syntax such as `warn,persona_agent=debug`).
//!
//! Under systemd (stderr connected to the journal, `JOURNAL_STREAM`, or started as a
//! unit, `INVOCATION_ID`) lines carry no ANSI colours and no timestamp of their own: the
//! journal stamps every line itself, and escape codes would show up as garbage in
//! `journalctl`. Colours are never used (tracing-subscriber's `ansi` feature stays off
//! to keep the guest binary small), so only the timestamp differs between the styles.

use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStyle {
    /// Interactive or plain file: each line starts with its own timestamp.
    Console,
    /// Under systemd: no timestamps, no colours.
    Journal,
}

/// Decides the style from the environment (pure, so it can be tested).
pub fn style_for(journal_stream: bool, invocation_id: bool) -> LogStyle {
    if journal_stream || invocation_id {
        LogStyle::Journal
    } else {
        LogStyle::Console
    }
}

/// The style for this process.
pub fn detect_style() -> LogStyle {
    style_for(
        std::env::var_os("JOURNAL_STREAM").is_some(),
        std::env::var_os("INVOCATION_ID").is_some(),
    )
}

/// Installs the global subscriber once; later calls do nothing.
pub fn init() {
    let filter: Targets = std::env::var("PERSONA_LOG")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false);
    let _ = match detect_style() {
        LogStyle::Journal => tracing_subscriber::registry()
            .with(layer.without_time())
            .with(filter)
            .try_init(),
        LogStyle::Console => tracing_subscriber::registry()
            .with(layer)
            .with(filter)
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_means_journal_style() {
        assert_eq!(style_for(true, false), LogStyle::Journal);
        assert_eq!(style_for(false, true), LogStyle::Journal);
        assert_eq!(style_for(false, false), LogStyle::Console);
    }
}
