//! `persona-agent`: argument parsing only; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use persona_agent::config::AgentConfig;

#[derive(Parser)]
#[command(name = "persona-agent", version, about = "Persona in-guest agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the collectors standalone and print what the agent sees (no coordinator needed).
    Observe {
        /// How many samples to take.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Sampling interval in milliseconds (100 to 60000).
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Print one JSON document with `samples` and `summary` on stdout.
        #[arg(long)]
        json: bool,
        /// How many processes to list by CPU and by memory.
        #[arg(long, default_value_t = 10)]
        top: usize,
        /// Root of the proc filesystem (for tests against fixture trees).
        #[arg(long, default_value = "/proc", hide = true)]
        proc_root: PathBuf,
        /// Root of the sys filesystem.
        #[arg(long, default_value = "/sys", hide = true)]
        sys_root: PathBuf,
    },
    /// Enroll this machine with a coordinator (the command `personactl token create` prints).
    Enroll {
        /// The coordinator's QUIC address, HOST:PORT.
        #[arg(long)]
        coordinator: String,
        /// The join token, or `-` to read it from standard input. A token given here is
        /// visible to every user of the machine (`ps`): prefer --token-file or `-`.
        #[arg(
            long,
            required_unless_present = "token_file",
            conflicts_with = "token_file"
        )]
        token: Option<String>,
        /// A file holding the join token, readable by its owner only (mode 0600).
        #[arg(long, value_name = "PATH")]
        token_file: Option<PathBuf>,
        /// The coordinator CA's pin, sha256:HEX.
        #[arg(long)]
        ca_hash: String,
        /// Where to keep the key, certificates and outbox.
        #[arg(long, default_value = "/var/lib/persona-agent")]
        state_dir: PathBuf,
        /// Print `{"agent_id":..,"state_dir":..}` on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Run the agent: sample, keep the outbox, stream to the coordinator until SIGTERM/Ctrl-C.
    Run {
        /// Configuration file (TOML; see packaging/agent.toml). Without it, the defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides `state_dir` of the configuration.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Overrides `coordinator` of the configuration (HOST:PORT).
        #[arg(long)]
        coordinator: Option<String>,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    // One thread is plenty for one QUIC connection; sampling has its own thread.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// Completes on the first SIGTERM or SIGINT (Ctrl-C). The handlers are installed when
/// this is called (inside the runtime), before the daemon reports READY=1, so a SIGTERM
/// that follows READY at once still gets the graceful path (outbox flushed).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        match handlers {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                tracing::warn!("cannot install signal handlers; only Ctrl-C stops the agent");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

fn enroll(opts: persona_agent::enroll::EnrollOptions, json: bool) -> Result<(), String> {
    let state_dir = opts.state_dir.clone();
    let identity = runtime()?
        .block_on(persona_agent::enroll::enroll(opts))
        .map_err(|e| e.to_string())?;
    if json {
        let doc = serde_json::json!({ "agent_id": identity.agent_id, "state_dir": state_dir });
        println!("{doc}");
    } else {
        println!("{}", identity.agent_id);
    }
    Ok(())
}

fn run(
    config: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    coordinator: Option<String>,
) -> Result<(), String> {
    let mut cfg = match &config {
        Some(path) => AgentConfig::load(path).map_err(|e| e.to_string())?,
        None => AgentConfig::default(),
    };
    if let Some(d) = state_dir {
        cfg.state_dir = d;
    }
    if let Some(c) = coordinator {
        cfg.coordinator = Some(c);
    }
    let source = config
        .as_ref()
        .map_or("command line".to_owned(), |p| p.display().to_string());
    cfg.validate().map_err(|(key, message)| {
        format!("invalid configuration ({source}): key `{key}`: {message}")
    })?;
    let rt = runtime()?;
    let r = rt.block_on(async { persona_agent::daemon::run(cfg, shutdown_signal()).await });
    // A command still running on a blocking thread (a download waiting on a slow server,
    // an install) must not hold up the exit: dropping the runtime would wait for it, so
    // `systemctl restart` would hang until systemd's stop timeout. Its plan stays in the
    // command log as running, with its partial file, and resumes at the next start.
    rt.shutdown_timeout(BLOCKING_EXIT_GRACE);
    r.map_err(|e| e.to_string())
}

/// How long the exit waits for a command still running on a blocking thread.
const BLOCKING_EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

fn main() -> ExitCode {
    let cli = Cli::parse();
    persona_shared::logging::init();
    let result = match cli.command {
        Command::Observe {
            seconds,
            interval_ms,
            json,
            top,
            proc_root,
            sys_root,
        } => persona_agent::observe::run(persona_agent::observe::ObserveOptions {
            seconds,
            interval_ms,
            json,
            top_n: top,
            proc_root,
            sys_root,
        })
        .map_err(|e| e.to_string()),
        Command::Enroll {
            coordinator,
            token,
            token_file,
            ca_hash,
            state_dir,
            json,
        } => {
            use persona_agent::enroll::{TokenSource, read_token};
            let source = match (token, token_file) {
                (_, Some(path)) => TokenSource::File(path),
                (Some(t), None) if t == "-" => TokenSource::Stdin,
                (Some(t), None) => {
                    tracing::warn!(
                        "the join token on the command line is visible to other users (ps); use --token-file PATH or --token -"
                    );
                    TokenSource::Value(t)
                }
                (None, None) => TokenSource::Stdin, // clap requires one of them
            };
            read_token(&source, &mut std::io::stdin().lock())
                .map_err(|e| e.to_string())
                .and_then(|token| {
                    enroll(
                        persona_agent::enroll::EnrollOptions {
                            coordinator,
                            token,
                            ca_hash,
                            state_dir,
                        },
                        json,
                    )
                })
        }
        Command::Run {
            config,
            state_dir,
            coordinator,
        } => run(config, state_dir, coordinator),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("persona-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
