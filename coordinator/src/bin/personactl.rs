//! `personactl`: the operator's CLI for a running coordinator. Argument parsing and
//! output formatting only; requests go through `persona_coordinator::cli::client`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use persona_coordinator::cli::client::{CtlError, exit};

/// Shown at the end of `personactl --help`.
const AFTER_HELP: &str = "\
Environment:
  PERSONA_API       API address HOST:PORT (default 127.0.0.1:7444)
  PERSONA_TOKEN     admin bearer token (default: read DATA_DIR/admin.token)
  PERSONA_DATA_DIR  coordinator data directory holding admin.token
  NO_COLOR          never colour tables

Exit codes:
  0  success
  1  usage error (bad arguments, or a request the coordinator called invalid)
  2  not found (no such agent, token or series)
  3  cannot reach the coordinator (is `persona-coordinator serve` running? set PERSONA_API)
  4  authentication (no admin token, or the token was refused)
  5  the coordinator failed or answered something unreadable

Examples:
  personactl status
  personactl token create --ttl 1h --uses 1
  personactl agents list --json | jq -r '.agents[].id'
  personactl completions bash > /etc/bash_completion.d/personactl";

#[derive(Parser)]
#[command(
    name = "personactl",
    version,
    about = "Admin CLI for the Persona coordinator",
    long_about = "Admin CLI for the Persona coordinator: join tokens, enrolled agents, their \
series and the coordinator's counters, over the coordinator's loopback HTTP API. Every \
command prints a human table, or one JSON document on stdout with --json.",
    after_help = AFTER_HELP
)]
struct Cli {
    /// API address HOST:PORT (default: $PERSONA_API or 127.0.0.1:7444).
    #[arg(long, global = true)]
    api: Option<String>,
    /// Coordinator data directory holding admin.token (default: $PERSONA_DATA_DIR, ./persona-data, /var/lib/persona-coordinator).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Print one JSON document on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Join tokens for enrolling agents.
    #[command(
        after_help = "Examples:\n  personactl token create --ttl 1h --uses 1\n  personactl token list\n  personactl token revoke 3f9a1c"
    )]
    Token {
        #[command(subcommand)]
        command: persona_coordinator::cli::tokens::TokenCmd,
    },
    /// Enrolled agents.
    #[command(
        after_help = "Examples:\n  personactl agents list\n  personactl agents show a-1f2e3d4c5b6a7980\n  personactl agents revoke a-1f2e3d4c5b6a7980"
    )]
    Agents {
        #[command(subcommand)]
        command: persona_coordinator::cli::agents::AgentsCmd,
    },
    /// Points of one series: `personactl series AGENT METRIC[@INSTANCE] --since 10m`.
    #[command(
        after_help = "Metric names and units: docs/metrics.md.\n\nExamples:\n  personactl series a-1f2e3d4c5b6a7980 cpu.user_ratio --since 5m\n  personactl series a-1f2e3d4c5b6a7980 net.rx_bytes_per_s@eth0 --since 1h --json"
    )]
    Series {
        /// Agent id (see `personactl agents list`).
        agent: String,
        /// Metric name, optionally @INSTANCE (a disk or interface).
        metric: String,
        /// How far back: 90s, 10m, 1h, 2d.
        #[arg(long, default_value = "10m")]
        since: String,
    },
    /// Events agents raised (pressure, anomalies), newest first.
    #[command(
        after_help = "Examples:\n  personactl events --since 1h\n  personactl events --agent a-1f2e3d4c5b6a7980 --since 2d --json | jq '.events[] | select(.severity == \"critical\")'"
    )]
    Events(persona_coordinator::cli::events::EventsArgs),
    /// Coordinator status and counters.
    #[command(
        after_help = "Examples:\n  personactl status\n  personactl status --json | jq .rejected"
    )]
    Status,
    /// The persona database: list, show, export, import (see README "Profiling a VM").
    #[command(
        after_help = "Examples:\n  personactl personas list\n  personactl personas show game-streamer\n  personactl personas export --out personas.json\n  personactl personas import my-persona.toml"
    )]
    Personas {
        #[command(subcommand)]
        command: persona_coordinator::cli::profile::PersonasCmd,
    },
    /// Profile a VM request: persona distribution, size, instance, install plan.
    #[command(
        after_help = "Examples:\n  personactl profile --offline --description 'fine-tuning a 7B model with LoRA' --software pytorch --data-gb 80\n  echo 'postgres primary, 2 TB NVMe' | personactl profile --description-file - --json"
    )]
    Profile(persona_coordinator::cli::profile::ProfileArgs),
    /// The profiler and mirror models: `personactl model train [--offline --out FILE] [--seed N] [--only mirror]`.
    Model {
        #[command(subcommand)]
        command: persona_coordinator::cli::profile::ModelCmd,
    },
    /// Commands sent to agents (resize, preload, config and model updates): list, show, cancel, send.
    #[command(
        after_help = "Examples:\n  personactl commands list --agent a-1f2e3d4c5b6a7980\n  personactl commands show c-0123456789abcdef --json\n  personactl commands cancel c-0123456789abcdef"
    )]
    Commands {
        #[command(subcommand)]
        command: persona_coordinator::cli::commands::CommandsCmd,
    },
    /// Send an agent the install plan of its persona (packages, pip, images, files).
    #[command(
        after_help = "Examples:\n  personactl preload a-1f2e3d4c5b6a7980 --dry-run\n  personactl preload a-1f2e3d4c5b6a7980 --persona web-server\n  personactl preload a-1f2e3d4c5b6a7980 --file https://data.example.com/x.bin,SHA256,SIZE,/srv/data/x.bin"
    )]
    Preload(persona_coordinator::cli::commands::PreloadArgs),
    /// Replay trace files under sizing policies (local; no coordinator needed).
    #[command(
        after_help = "Examples:\n  personactl replay --format bitbrains ../shared/data/traces/bitbrains-gwa-t-12-rnd/rnd --json\n  personactl replay --policy persona,vpa --per-vm rnd/2013-7/1.csv.gz"
    )]
    Replay(persona_coordinator::cli::replay::ReplayArgs),
    /// A VM's recommended size, reasons and cost; per-VM mode, platform and bounds.
    #[command(
        after_help = "Examples:\n  personactl recommend a-1f2e3d4c5b6a7980\n  personactl recommend a-1f2e3d4c5b6a7980 --mode auto --min-vcpus 2 --max-memory-gib 64\n  personactl recommend a-1f2e3d4c5b6a7980 --apply --json"
    )]
    Recommend(persona_coordinator::cli::recommend::RecommendArgs),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  personactl completions bash > /etc/bash_completion.d/personactl\n  personactl completions zsh > \"${fpath[1]}/_personactl\"\n  personactl completions fish > ~/.config/fish/completions/personactl.fish"
    )]
    Completions {
        /// bash, zsh or fish.
        shell: Shell,
    },
}

/// Shells `completions` knows.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// Writes the completion script for `shell` on stdout.
fn completions(shell: Shell) {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let out = &mut std::io::stdout();
    match shell {
        Shell::Bash => {
            clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, "personactl", out)
        }
        Shell::Zsh => {
            clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, "personactl", out)
        }
        Shell::Fish => {
            clap_complete::generate(clap_complete::Shell::Fish, &mut cmd, "personactl", out)
        }
    }
}

fn run(cli: Cli) -> Result<(), CtlError> {
    use persona_coordinator::cli;
    let g = cli::Global {
        api: cli.api,
        data_dir: cli.data_dir,
        json: cli.json,
    };
    match cli.command {
        Command::Token { command } => cli::tokens::token(command, &g),
        Command::Agents { command } => cli::agents::agents(command, &g),
        Command::Series {
            agent,
            metric,
            since,
        } => cli::agents::series(&agent, &metric, &since, &g),
        Command::Status => cli::agents::status(&g),
        Command::Personas { command } => cli::profile::personas(command, &g),
        Command::Profile(a) => cli::profile::profile(a, &g),
        Command::Model { command } => cli::profile::model(command, &g),
        Command::Commands { command } => cli::commands::commands(command, &g),
        Command::Preload(a) => cli::commands::preload(a, &g),
        Command::Events(a) => cli::events::run(a, &g),
        Command::Replay(a) => cli::replay::replay(a, &g),
        Command::Recommend(a) => cli::recommend::recommend(a, &g),
        Command::Completions { .. } => Err(CtlError::Arg(
            "completions are printed before any request".into(),
        )),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // --help and --version are not errors; everything else is a usage error (1,
            // not clap's default 2, which means "not found" here).
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    if let Command::Completions { shell } = cli.command {
        completions(shell);
        return ExitCode::SUCCESS;
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The message may quote the coordinator's answer: terminal-safe like stdout.
            let msg = e.to_string();
            eprintln!(
                "personactl: {}",
                persona_coordinator::cli::text::clean_text(&msg)
            );
            ExitCode::from(e.exit_code())
        }
    }
}
