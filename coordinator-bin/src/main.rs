//! `persona-coordinator`: argument parsing, then `serve` (the coordinator library's
//! `start`), `demo` (this crate's `demo`, which runs an agent in-process) or
//! `rotate-command-key` (the command-signing key, on disk).

mod demo;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use persona_coordinator::ServeOptions;
use persona_coordinator::config::{CoordConfig, Overrides};

#[derive(Parser)]
#[command(name = "persona-coordinator", version, about = "Persona coordinator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `serve`'s settings. Each flag overrides the key of the same name in `--config`; a
/// flag not given leaves the file's value (or the default) alone, which is why none of
/// them has a clap default.
#[derive(clap::Args, Clone)]
struct Common {
    /// QUIC address agents connect to [default: 0.0.0.0:7443].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// HTTP admin API and /metrics address; keep it on loopback unless you front it with
    /// TLS [default: 127.0.0.1:7444].
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Address printed in enroll commands [default: the QUIC address, or HOSTNAME:PORT].
    #[arg(long)]
    advertise: Option<String>,
    /// Sampling interval agents are told to use, in ms [default: 1000].
    #[arg(long, value_parser = clap::value_parser!(u32).range(100..=60000))]
    sample_interval_ms: Option<u32>,
    /// Batch interval agents are told to use, in seconds [default: 10].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=600))]
    batch_interval_s: Option<u32>,
    /// Days of telemetry kept [default: 14].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3650))]
    retention_days: Option<u32>,
    /// Hard maximum size of one protocol frame in bytes [default: 1048576].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1024..=64 * 1024 * 1024))]
    max_frame_bytes: Option<u32>,
    /// Instance catalogue (TOML) used for sizing recommendations [default: the built-in
    /// AWS us-east-1 list, coordinator/catalogue/default.toml].
    #[arg(long)]
    catalogue: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the coordinator.
    #[command(after_help = "Examples:\n  \
persona-coordinator serve --config /etc/persona/coordinator.toml\n  \
persona-coordinator serve --data-dir ./persona-data --http 127.0.0.1:7444 --retention-days 30\n\n\
Under systemd it reports READY=1 once both listeners are bound and feeds the watchdog \
while its accept loop, ingest writer and API are healthy.")]
    Serve {
        /// Configuration file (TOML; keys as the flags, see docs/configuration.md).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where the CA, the admin token and the database live
        /// [default: /var/lib/persona-coordinator].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// Retire the command-signing key and make a new one. Restart the coordinator
    /// afterwards: each agent is then re-pinned to the new key by a command signed with
    /// the old one, the next time it connects.
    #[command(after_help = "Example:\n  \
persona-coordinator rotate-command-key --data-dir /var/lib/persona-coordinator && \
systemctl restart persona-coordinator\n\n\
The old key moves to DATA_DIR/command-keys/ and stays loaded so that agents still pinned \
to it can be moved on. Delete it once `personactl agents list --json` shows no agent \
whose command_key is its fingerprint (docs/operations.md, Security model).")]
    RotateCommandKey {
        /// The coordinator's data directory [default: /var/lib/persona-coordinator].
        #[arg(long, default_value = "/var/lib/persona-coordinator")]
        data_dir: PathBuf,
    },
    /// Start a coordinator on loopback, enroll a local agent and show a live view of this
    /// machine (data in ./persona-data). Ctrl-C stops.
    Demo {
        #[arg(long, default_value = "persona-data")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:7444")]
        http: SocketAddr,
        /// Stop after N seconds.
        #[arg(long)]
        seconds: Option<u64>,
        /// Print one JSON summary at the end instead of the live view.
        #[arg(long)]
        json: bool,
        /// What this machine is for, as an agent's `[purpose]` description: the view
        /// then shows the declared persona beside the mirrored one.
        #[arg(long)]
        purpose: Option<String>,
    },
}

/// The file (if any), then the flags on top, then one check of the result.
fn options(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    c: Common,
) -> Result<ServeOptions, String> {
    let mut cfg = match &config {
        Some(path) => CoordConfig::load(path).map_err(|e| e.to_string())?,
        None => CoordConfig::default(),
    };
    cfg.apply(Overrides {
        data_dir,
        listen: c.listen,
        http: c.http,
        advertise: c.advertise,
        sample_interval_ms: c.sample_interval_ms,
        batch_interval_s: c.batch_interval_s,
        retention_days: c.retention_days,
        max_frame_bytes: c.max_frame_bytes,
        catalogue: c.catalogue,
    });
    let source = config.map_or("command line".to_owned(), |p| {
        format!("{} and the command line", p.display())
    });
    cfg.validate(&source).map_err(|e| e.to_string())?;
    Ok(cfg.serve_options())
}

/// Completes on SIGTERM or Ctrl-C. The SIGTERM handler is installed when this is
/// called, not when first polled: a supervisor (or a test) may send SIGTERM as soon as
/// serving.json or READY=1 appears, and the default action would kill the process
/// before in-flight commits finish. Call it inside the runtime.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    async move {
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

async fn serve(opts: ServeOptions) -> Result<(), String> {
    let stop = shutdown_signal();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let coord = persona_coordinator::start(opts, rx.clone())
        .await
        .map_err(|e| e.to_string())?;
    // Both listeners are bound and serving: only now is the unit "started".
    persona_shared::systemd::notify_or_log(&format!(
        "READY=1\nSTATUS=serving QUIC on {}, API on {}",
        coord.quic_addr, coord.http_addr
    ));
    let watchdog = tokio::spawn(persona_coordinator::health::watchdog(
        coord.ingest.clone(),
        coord.http_addr,
        rx,
    ));
    stop.await;
    tracing::info!("shutting down");
    persona_shared::systemd::notify_or_log("STOPPING=1\nSTATUS=finishing in-flight commits");
    let _ = tx.send(true);
    coord.wait().await;
    watchdog.abort();
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    persona_shared::logging::init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("persona-coordinator: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve {
            config,
            data_dir,
            common,
        } => match options(config, data_dir, common) {
            Ok(opts) => rt.block_on(serve(opts)),
            Err(e) => Err(e),
        },
        Command::RotateCommandKey { data_dir } => {
            persona_coordinator::pki::command_keys::rotate(&data_dir)
                .map(|(old, new)| {
                    println!("retired command key {old}\nnew command key     {new}");
                    println!("restart the coordinator to sign with the new key");
                })
                .map_err(|e| e.to_string())
        }
        Command::Demo {
            data_dir,
            listen,
            http,
            seconds,
            json,
            purpose,
        } => rt.block_on(async {
            let opts = demo::DemoOptions {
                data_dir,
                listen,
                http,
                seconds,
                json,
                purpose,
            };
            demo::run(opts, shutdown_signal())
                .await
                .map_err(|e| e.to_string())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("persona-coordinator: {e}");
            ExitCode::FAILURE
        }
    }
}
