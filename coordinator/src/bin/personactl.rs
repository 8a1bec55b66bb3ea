//! `personactl`: the operator's CLI for a running coordinator. Argument parsing and
//! output formatting only; requests go through `persona_coordinator::ctl`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hyper::Method;
use serde_json::{Value, json};

use persona_coordinator::ctl::{Client, CtlError, exit, parse_duration_s};
use persona_coordinator::table::{Align, Table};

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
        command: TokenCmd,
    },
    /// Enrolled agents.
    #[command(
        after_help = "Examples:\n  personactl agents list\n  personactl agents show a-1f2e3d4c5b6a7980\n  personactl agents revoke a-1f2e3d4c5b6a7980"
    )]
    Agents {
        #[command(subcommand)]
        command: AgentsCmd,
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
    Events(persona_coordinator::events_cli::EventsArgs),
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
        command: persona_coordinator::profile_cli::PersonasCmd,
    },
    /// Profile a VM request: persona distribution, size, instance, install plan.
    #[command(
        after_help = "Examples:\n  personactl profile --offline --description 'fine-tuning a 7B model with LoRA' --software pytorch --data-gb 80\n  echo 'postgres primary, 2 TB NVMe' | personactl profile --description-file - --json"
    )]
    Profile(persona_coordinator::profile_cli::ProfileArgs),
    /// The profiler and mirror models: `personactl model train [--offline --out FILE] [--seed N] [--only mirror]`.
    Model {
        #[command(subcommand)]
        command: persona_coordinator::profile_cli::ModelCmd,
    },
    /// Commands sent to agents (resize, preload, config and model updates): list, show, cancel, send.
    #[command(
        after_help = "Examples:\n  personactl commands list --agent a-1f2e3d4c5b6a7980\n  personactl commands show c-0123456789abcdef --json\n  personactl commands cancel c-0123456789abcdef"
    )]
    Commands {
        #[command(subcommand)]
        command: persona_coordinator::commands_cli::CommandsCmd,
    },
    /// Send an agent the install plan of its persona (packages, pip, images, files).
    #[command(
        after_help = "Examples:\n  personactl preload a-1f2e3d4c5b6a7980 --dry-run\n  personactl preload a-1f2e3d4c5b6a7980 --persona web-server\n  personactl preload a-1f2e3d4c5b6a7980 --file https://data.example.com/x.bin,SHA256,SIZE,/srv/data/x.bin"
    )]
    Preload(persona_coordinator::commands_cli::PreloadArgs),
    /// Replay trace files under sizing policies (local; no coordinator needed).
    #[command(
        after_help = "Examples:\n  personactl replay --format bitbrains ../shared/data/traces/bitbrains-gwa-t-12-rnd/rnd --json\n  personactl replay --policy persona,vpa --per-vm rnd/2013-7/1.csv.gz"
    )]
    Replay(persona_coordinator::replay_cli::ReplayArgs),
    /// A VM's recommended size, reasons and cost; per-VM mode, platform and bounds.
    #[command(
        after_help = "Examples:\n  personactl recommend a-1f2e3d4c5b6a7980\n  personactl recommend a-1f2e3d4c5b6a7980 --mode auto --min-vcpus 2 --max-memory-gib 64\n  personactl recommend a-1f2e3d4c5b6a7980 --apply --json"
    )]
    Recommend(persona_coordinator::recommend_cli::RecommendArgs),
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

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a join token and print the agent's enroll command line.
    Create {
        /// How long the token is valid: 90s, 10m, 1h, 2d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// How many agents may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: i64,
    },
    /// List tokens with their expiry and remaining uses.
    List,
    /// Revoke a token so no further agent can enroll with it.
    Revoke {
        /// Token id (the part before the dot).
        id: String,
    },
}

#[derive(Subcommand)]
enum AgentsCmd {
    /// Enrolled agents with their connection state and last contact.
    List,
    /// Facts, declared purpose, latest values and top processes of one agent.
    Show {
        /// Agent id.
        id: String,
    },
    /// Cut an agent off at once and refuse it from then on.
    Revoke {
        /// Agent id.
        id: String,
    },
}

/// Renders an API answer for humans.
type Formatter = Box<dyn Fn(&Value) -> String>;

fn ts(ms: Option<i64>) -> String {
    match ms {
        Some(ms) => {
            let age = (persona_coordinator::store::now_ms() - ms) / 1000;
            if age < 0 {
                "just now".into()
            } else {
                format!("{age}s ago")
            }
        }
        None => "never".into(),
    }
}

/// `status` for humans: counters as aligned name/value pairs, rejections by reason.
fn status_table(v: &Value) -> String {
    let mut t = Table::new(&[("COUNTER", Align::Left), ("VALUE", Align::Left)]);
    let mut rejected = Table::new(&[("REJECTED BY REASON", Align::Left), ("COUNT", Align::Right)]);
    for (k, x) in v.as_object().into_iter().flatten() {
        match x {
            Value::Object(m) if k == "rejected" => {
                for (reason, n) in m {
                    rejected.row(vec![reason.clone(), n.to_string()]);
                }
            }
            Value::String(s) => t.row(vec![k.clone(), s.clone()]),
            other => t.row(vec![k.clone(), other.to_string()]),
        }
    }
    let mut out = t.render();
    if v["rejected"].as_object().is_some_and(|m| !m.is_empty()) {
        out += "\n";
        out += &rejected.render();
    }
    out
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
    // Persona, profile and model commands live in the library (and may run offline).
    let g = persona_coordinator::profile_cli::Global {
        api: cli.api.clone(),
        data_dir: cli.data_dir.clone(),
        json: cli.json,
    };
    let command = match cli.command {
        Command::Personas { command } => {
            return persona_coordinator::profile_cli::personas(command, &g);
        }
        Command::Profile(a) => return persona_coordinator::profile_cli::profile(a, &g),
        Command::Model { command } => return persona_coordinator::profile_cli::model(command, &g),
        Command::Commands { command } => {
            return persona_coordinator::commands_cli::commands(command, &g);
        }
        Command::Preload(a) => return persona_coordinator::commands_cli::preload(a, &g),
        Command::Events(a) => return persona_coordinator::events_cli::run(a, &g),
        Command::Replay(a) => return persona_coordinator::replay_cli::replay(a, &g),
        Command::Recommend(a) => return persona_coordinator::recommend_cli::recommend(a, &g),
        other => other,
    };
    let client = Client::discover(cli.api, cli.data_dir)?;
    let call = |m: Method, p: &str, b: Option<Value>| client.call_blocking(m, p, b);
    let (doc, human): (Value, Formatter) = match command {
        Command::Token {
            command: TokenCmd::Create { ttl, uses },
        } => {
            let ttl_s = parse_duration_s(&ttl)?;
            let v = call(
                Method::POST,
                "/v1/tokens",
                Some(json!({"ttl_s": ttl_s, "uses": uses})),
            )?;
            (
                v,
                Box::new(|v| {
                    format!(
                        "token: {}\nexpires in: {} s\nrun on the VM:\n  {}\n",
                        v["token"].as_str().unwrap_or(""),
                        (v["expires_ms"].as_i64().unwrap_or(0)
                            - persona_coordinator::store::now_ms())
                            / 1000,
                        v["command"].as_str().unwrap_or("")
                    )
                }),
            )
        }
        Command::Token {
            command: TokenCmd::List,
        } => {
            let v = call(Method::GET, "/v1/tokens", None)?;
            (
                v,
                Box::new(|v| {
                    let mut table = Table::new(&[
                        ("ID", Align::Left),
                        ("EXPIRES IN", Align::Right),
                        ("LEFT", Align::Right),
                        ("USED", Align::Right),
                        ("STATE", Align::Left),
                    ]);
                    for t in v["tokens"].as_array().into_iter().flatten() {
                        let exp = (t["expires_ms"].as_i64().unwrap_or(0)
                            - persona_coordinator::store::now_ms())
                            / 1000;
                        let state = if t["revoked"].as_bool() == Some(true) {
                            "revoked"
                        } else if exp <= 0 {
                            "expired"
                        } else if t["uses_left"].as_i64() == Some(0) {
                            "used"
                        } else {
                            "active"
                        };
                        table.row(vec![
                            t["id"].as_str().unwrap_or("").to_owned(),
                            format!("{}s", exp.max(0)),
                            t["uses_left"].to_string(),
                            t["used"].to_string(),
                            state.to_owned(),
                        ]);
                    }
                    table.render()
                }),
            )
        }
        Command::Token {
            command: TokenCmd::Revoke { id },
        } => {
            let v = call(Method::POST, &format!("/v1/tokens/{id}/revoke"), None)?;
            (
                v,
                Box::new(|v| format!("revoked token {}\n", v["revoked"].as_str().unwrap_or(""))),
            )
        }
        Command::Agents {
            command: AgentsCmd::List,
        } => {
            let v = call(Method::GET, "/v1/agents", None)?;
            (
                v,
                Box::new(|v| {
                    let mut table = Table::new(&[
                        ("ID", Align::Left),
                        ("HOSTNAME", Align::Left),
                        ("STATE", Align::Left),
                        ("BATCHES", Align::Right),
                        ("LAST SEEN", Align::Right),
                    ]);
                    for a in v["agents"].as_array().into_iter().flatten() {
                        table.row(vec![
                            a["id"].as_str().unwrap_or("").to_owned(),
                            a["hostname"].as_str().unwrap_or("").to_owned(),
                            a["state"].as_str().unwrap_or("").to_owned(),
                            a["batches"].to_string(),
                            ts(a["last_seen_ms"].as_i64()),
                        ]);
                    }
                    table.render()
                }),
            )
        }
        Command::Agents {
            command: AgentsCmd::Show { id },
        } => {
            let v = call(Method::GET, &format!("/v1/agents/{id}"), None)?;
            (
                v,
                Box::new(|v| {
                    let f = &v["facts"];
                    let mut s = format!(
                        "agent:      {}\nhostname:   {}\nstate:      {}\nlast seen:  {}\nbatches:    {} (last seq {})\nos:         {}\nkernel:     {}\nvCPUs:      {} online / {} possible\nmemory:     {:.1} GiB\nvirt:       {}\n",
                        v["id"].as_str().unwrap_or(""),
                        v["hostname"].as_str().unwrap_or(""),
                        v["state"].as_str().unwrap_or(""),
                        ts(v["last_seen_ms"].as_i64()),
                        v["batches"],
                        v["committed_seq"],
                        f["os_release"].as_str().unwrap_or("?"),
                        f["kernel"].as_str().unwrap_or("?"),
                        f["cpus_online"],
                        f["cpus_possible"],
                        f["mem_total_bytes"].as_f64().unwrap_or(0.0) / 1073741824.0,
                        f["virtualization"].as_str().unwrap_or("?")
                    );
                    if let Some(p) = v["purpose"].as_object() {
                        s += &format!(
                            "purpose:    {}\n",
                            p.get("description").and_then(Value::as_str).unwrap_or("")
                        );
                    }
                    if let Some(vals) = v["latest"]["values"].as_object() {
                        s += "latest values:\n";
                        for (k, x) in vals {
                            s += &format!("  {k:<34} {x}\n");
                        }
                    }
                    s += &persona_coordinator::belief::human_lines(v);
                    if let Some(p) = v["top_processes"].as_array() {
                        s += "top processes:\n";
                        for p in p {
                            s += &format!(
                                "  {:<16} {:>7.1}% {:>8.1} MiB\n",
                                p["comm"].as_str().unwrap_or(""),
                                p["cpu_pct"].as_f64().unwrap_or(0.0),
                                p["rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
                            );
                        }
                    }
                    s
                }),
            )
        }
        Command::Agents {
            command: AgentsCmd::Revoke { id },
        } => {
            let v = call(Method::POST, &format!("/v1/agents/{id}/revoke"), None)?;
            (
                v,
                Box::new(|v| {
                    format!(
                        "revoked agent {}; its connections are closed and refused from now on\n",
                        v["revoked"].as_str().unwrap_or("")
                    )
                }),
            )
        }
        Command::Series {
            agent,
            metric,
            since,
        } => {
            let since_ms = persona_coordinator::store::now_ms() - parse_duration_s(&since)? * 1000;
            let v = call(
                Method::GET,
                &format!("/v1/series/{agent}/{metric}?since_ms={since_ms}"),
                None,
            )?;
            (
                v,
                Box::new(|v| {
                    let mut s = format!(
                        "# {} {} ({})\n",
                        v["agent"].as_str().unwrap_or(""),
                        v["metric"].as_str().unwrap_or(""),
                        v["unit"].as_str().unwrap_or("")
                    );
                    for p in v["points"].as_array().into_iter().flatten() {
                        s += &format!("{:.3} {}\n", p[0].as_f64().unwrap_or(0.0), p[1]);
                    }
                    s
                }),
            )
        }
        Command::Status => {
            let v = call(Method::GET, "/v1/status", None)?;
            (v, Box::new(status_table))
        }
        Command::Completions { .. } => {
            return Err(CtlError::Arg(
                "completions are printed before any request".into(),
            ));
        }
        Command::Personas { .. }
        | Command::Profile(_)
        | Command::Model { .. }
        | Command::Events(_)
        | Command::Commands { .. }
        | Command::Preload(_)
        | Command::Replay(_)
        | Command::Recommend(_) => {
            return Err(CtlError::Arg("handled before any request".into()));
        }
    };
    if cli.json {
        println!("{doc}");
    } else {
        print!("{}", human(&doc));
    }
    Ok(())
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
            eprintln!("personactl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
