//! `persona-actuator`: the root helper that performs the agent's allow-listed privileged
//! actions (see `persona_agent::actuator` and docs/operations.md). Argument parsing only.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use persona_agent::actuate::GuestActuatorConfig;
use persona_agent::config::AgentConfig;

#[derive(Parser)]
#[command(
    name = "persona-actuator",
    version,
    about = "Persona's privileged helper: performs allow-listed actions for the agent",
    long_about = "Persona's privileged helper. Listens on a Unix socket (mode 0660, the \
service's group) and accepts only the allow-listed requests documented in \
docs/operations.md: ping, cpu_online, memory_online, cgroup_limit, install_packages. Its \
sysfs and cgroup roots, CPU floor and cgroup slice come from the agent's config file \
([guest_actuator] and sys_root), never from a request. Run by persona-actuator.service; \
the unprivileged persona-agent is its only client."
)]
struct Cli {
    /// Socket path.
    #[arg(long, default_value = persona_agent::actuator::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// The agent's config file (missing = the defaults).
    #[arg(long, default_value = "/etc/persona/agent.toml")]
    config: PathBuf,
}

fn load(path: &Path) -> Result<GuestActuatorConfig, String> {
    if !path.exists() {
        return Ok(GuestActuatorConfig::from_agent(&AgentConfig::default()));
    }
    AgentConfig::load(path)
        .map(|c| GuestActuatorConfig::from_agent(&c))
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    persona_agent::logging::init();
    let cfg = match load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("persona-actuator: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match persona_agent::actuator::bind(&cli.socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("persona-actuator: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(socket = %cli.socket.display(), sys_root = %cfg.sys_root.display(), cgroup = %cfg.cgroup_root.join(&cfg.cgroup_parent).display(), "actuator listening");
    persona_agent::systemd::notify_or_log("READY=1");
    persona_agent::actuator::serve(&listener, &cfg);
    ExitCode::SUCCESS
}
