//! `persona-actuator`: the root helper that performs the agent's allow-listed privileged
//! actions (see `persona_agent::helper` and docs/operations.md). Argument parsing only.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

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
sysfs and cgroup roots, CPU floor, cgroup slice and policy file come from the agent's \
config file ([guest_actuator], sys_root, policy_file), never from a request; the policy \
is re-read for every install. Run by persona-actuator.service; \
the unprivileged persona-agent is its only client."
)]
struct Cli {
    /// Socket path.
    #[arg(long, default_value = persona_agent::helper::protocol::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// The agent's config file (missing = the defaults).
    #[arg(long, default_value = "/etc/persona/agent.toml")]
    config: PathBuf,
    /// Longest one package install may run; the package manager is killed then.
    #[arg(long, default_value_t = 900, value_parser = clap::value_parser!(u64).range(10..=86_400))]
    install_timeout_s: u64,
    /// Take apt-get and dnf from this directory only, instead of the system directories
    /// (for unusual layouts and tests; set by whoever starts the helper as root).
    #[arg(long)]
    package_program_dir: Option<PathBuf>,
}

fn load(path: &Path) -> Result<(GuestActuatorConfig, PathBuf), String> {
    let agent = if path.exists() {
        AgentConfig::load(path).map_err(|e| e.to_string())?
    } else {
        AgentConfig::default()
    };
    Ok((
        GuestActuatorConfig::from_agent(&agent),
        agent.policy_file.clone(),
    ))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    persona_shared::logging::init();
    let cfg = match load(&cli.config) {
        Ok((guest, policy_file)) => persona_agent::helper::server::HelperConfig {
            guest,
            policy_file,
            install_timeout: Duration::from_secs(cli.install_timeout_s),
            program_dir: cli.package_program_dir,
        },
        Err(e) => {
            eprintln!("persona-actuator: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match persona_agent::helper::server::bind(&cli.socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("persona-actuator: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(socket = %cli.socket.display(), sys_root = %cfg.guest.sys_root.display(),
        cgroup = %cfg.guest.cgroup_root.join(&cfg.guest.cgroup_parent).display(),
        policy = %cfg.policy_file.display(), install_timeout_s = cli.install_timeout_s,
        "actuator listening");
    persona_shared::systemd::notify_or_log("READY=1");
    persona_agent::helper::server::serve_with(&listener, &cfg);
    ExitCode::SUCCESS
}
