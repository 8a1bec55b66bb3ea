//! Logging set-up shared by the agent's commands: human-readable lines on stderr, so
//! stdout stays free for `--json` documents. The level comes from `PERSONA_LOG`
//! (`info` by default; targets syntax such as `warn,persona_agent=debug`).

use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

/// Installs the global subscriber once; later calls do nothing.
pub fn init() {
    let filter: Targets = std::env::var("PERSONA_LOG")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false),
        )
        .with(filter)
        .try_init();
}
