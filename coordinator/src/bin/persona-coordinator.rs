//! `persona-coordinator`: argument parsing only; `serve` and `demo` live in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use persona_coordinator::{ServeOptions, server::ServerSettings};

#[derive(Parser)]
#[command(name = "persona-coordinator", version, about = "Persona coordinator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// QUIC address agents connect to.
    #[arg(long, default_value = "0.0.0.0:7443")]
    listen: SocketAddr,
    /// HTTP admin API address (keep it on loopback unless you front it with TLS).
    #[arg(long, default_value = "127.0.0.1:7444")]
    http: SocketAddr,
    /// Address printed in enroll commands (default: the QUIC address, or HOSTNAME:PORT).
    #[arg(long)]
    advertise: Option<String>,
    /// Sampling interval agents are told to use, in ms.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(100..=60000))]
    sample_interval_ms: u32,
    /// Batch interval agents are told to use, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=600))]
    batch_interval_s: u32,
    /// Days of telemetry kept.
    #[arg(long, default_value_t = 14, value_parser = clap::value_parser!(u32).range(1..=3650))]
    retention_days: u32,
    /// Hard maximum size of one protocol frame in bytes.
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u32).range(1024..=64 * 1024 * 1024))]
    max_frame_bytes: u32,
}

#[derive(Subcommand)]
enum Command {
    /// Run the coordinator.
    Serve {
        /// Where the CA, the admin token and the database live.
        #[arg(long, default_value = "/var/lib/persona-coordinator")]
        data_dir: PathBuf,
        #[command(flatten)]
        common: Common,
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
    },
}

fn options(data_dir: PathBuf, c: Common) -> ServeOptions {
    ServeOptions {
        data_dir,
        listen: c.listen,
        http: c.http,
        advertise: c.advertise,
        settings: ServerSettings {
            max_frame: c.max_frame_bytes as usize,
            sample_interval_ms: c.sample_interval_ms,
            batch_interval_s: c.batch_interval_s,
            retention_ms: i64::from(c.retention_days) * 86_400_000,
            ..ServerSettings::default()
        },
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
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

async fn serve(opts: ServeOptions) -> Result<(), String> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let coord = persona_coordinator::start(opts, rx)
        .await
        .map_err(|e| e.to_string())?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = tx.send(true);
    coord.wait().await;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    persona_agent::logging::init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("persona-coordinator: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve { data_dir, common } => rt.block_on(serve(options(data_dir, common))),
        Command::Demo {
            data_dir,
            listen,
            http,
            seconds,
            json,
        } => rt.block_on(async {
            let opts = persona_coordinator::demo::DemoOptions {
                data_dir,
                listen,
                http,
                seconds,
                json,
            };
            persona_coordinator::demo::run(opts, shutdown_signal())
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
