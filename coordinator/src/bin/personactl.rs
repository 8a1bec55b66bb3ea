//! `personactl`: the operator's CLI for a running coordinator. Argument parsing and
//! output formatting only; requests go through `persona_coordinator::ctl`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hyper::Method;
use serde_json::{Value, json};

use persona_coordinator::ctl::{Client, CtlError, parse_duration_s};

#[derive(Parser)]
#[command(
    name = "personactl",
    version,
    about = "Admin CLI for the Persona coordinator"
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
    Token {
        #[command(subcommand)]
        command: TokenCmd,
    },
    /// Enrolled agents.
    Agents {
        #[command(subcommand)]
        command: AgentsCmd,
    },
    /// Points of one series: `personactl series AGENT METRIC[@INSTANCE] --since 10m`.
    Series {
        agent: String,
        metric: String,
        #[arg(long, default_value = "10m")]
        since: String,
    },
    /// Coordinator status and counters.
    Status,
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a join token and print the agent's enroll command line.
    Create {
        #[arg(long, default_value = "1h")]
        ttl: String,
        #[arg(long, default_value_t = 1)]
        uses: i64,
    },
    List,
    Revoke {
        id: String,
    },
}

#[derive(Subcommand)]
enum AgentsCmd {
    List,
    Show { id: String },
    Revoke { id: String },
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

fn run(cli: Cli) -> Result<(), CtlError> {
    let client = Client::discover(cli.api, cli.data_dir)?;
    let call = |m: Method, p: &str, b: Option<Value>| client.call_blocking(m, p, b);
    let (doc, human): (Value, Formatter) = match cli.command {
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
                    let mut s = format!(
                        "{:<8} {:>10} {:>6} {:>5} {}\n",
                        "ID", "EXPIRES", "LEFT", "USED", "STATE"
                    );
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
                        s += &format!(
                            "{:<8} {:>9}s {:>6} {:>5} {}\n",
                            t["id"].as_str().unwrap_or(""),
                            exp.max(0),
                            t["uses_left"].to_string(),
                            t["used"].to_string(),
                            state
                        );
                    }
                    s
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
                    let mut s = format!(
                        "{:<20} {:<20} {:<13} {:>9} {:>12}\n",
                        "ID", "HOSTNAME", "STATE", "BATCHES", "LAST SEEN"
                    );
                    for a in v["agents"].as_array().into_iter().flatten() {
                        s += &format!(
                            "{:<20} {:<20} {:<13} {:>9} {:>12}\n",
                            a["id"].as_str().unwrap_or(""),
                            a["hostname"].as_str().unwrap_or(""),
                            a["state"].as_str().unwrap_or(""),
                            a["batches"].to_string(),
                            ts(a["last_seen_ms"].as_i64())
                        );
                    }
                    s
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
            (
                v,
                Box::new(|v| serde_json::to_string_pretty(v).unwrap_or_default() + "\n"),
            )
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
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("personactl: {e}");
            ExitCode::FAILURE
        }
    }
}
