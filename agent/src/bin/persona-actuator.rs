//! `persona-actuator`: the root helper that performs the agent's allow-listed privileged
//! actions (see `persona_agent::actuator` and docs/operations.md). Argument parsing only.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "persona-actuator",
    version,
    about = "Persona's privileged helper: performs allow-listed actions for the agent",
    long_about = "Persona's privileged helper. Listens on a Unix socket (mode 0660, the \
service's group) and accepts only the allow-listed requests documented in \
docs/operations.md: ping, cpu_online, cgroup_limit, install_packages. Run by \
persona-actuator.service; the unprivileged persona-agent is its only client."
)]
struct Cli {
    /// Socket path.
    #[arg(long, default_value = persona_agent::actuator::DEFAULT_SOCKET)]
    socket: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    persona_agent::logging::init();
    let listener = match persona_agent::actuator::bind(&cli.socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("persona-actuator: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(socket = %cli.socket.display(), "actuator listening");
    persona_agent::systemd::notify_or_log("READY=1");
    persona_agent::actuator::serve(&listener);
    ExitCode::SUCCESS
}
