//! The Persona coordinator: it holds the CA that enrolls agents, receives their
//! telemetry over QUIC into SQLite, and serves the admin API that `personactl` drives.
//! `start` brings everything up from a data directory and returns the bound addresses,
//! so the binary, the demo and the tests all run the same code. It is the one place that
//! spawns the long-running tasks; docs/architecture.md draws the layers below it.

pub mod actuate;
pub mod api;
pub mod app;
pub mod cli;
pub mod commands;
pub mod config;
pub mod engine;
pub mod health;
pub mod ingest;
pub mod model;
pub mod pki;
pub mod profile;
pub mod recommend;
pub mod replay;
pub mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;
use tracing::info;

pub use config::{ServeOptions, ServerSettings};

/// Errors while starting the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Pki(#[from] pki::PkiError),
    #[error("{0}")]
    Store(#[from] store::StoreError),
    #[error("{0}")]
    Serve(#[from] ingest::ServeError),
    #[error("cannot bind the HTTP API on {addr}: {source}")]
    BindHttp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Profiling(#[from] profile::ProfileError),
    #[error(
        "{} is {why}: the admin API would have no usable secret, so the coordinator refuses to start. Fix: delete it (a new token is generated at the next start) or write a token of at least {MIN_ADMIN_TOKEN} characters into it",
        path.display()
    )]
    WeakAdminToken { path: PathBuf, why: &'static str },
}

/// Shortest admin token accepted (a generated one has 48 hex digits).
pub const MIN_ADMIN_TOKEN: usize = 16;

/// A running coordinator.
#[derive(Debug)]
pub struct Coordinator {
    pub quic_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub ca_hash: String,
    pub admin_token: String,
    pub app: Arc<app::App>,
    /// The QUIC side (its writer's health is the watchdog's business).
    pub ingest: Arc<ingest::Ingest>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Coordinator {
    /// Waits until the servers have stopped (after shutdown).
    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Reads the admin token of a data directory, creating it on first start. Refuses a
/// token file others can read (mode) and an empty or short token.
pub fn admin_token(data_dir: &Path) -> Result<String, CoordError> {
    let path = data_dir.join("admin.token");
    if !path.exists() {
        let t = pki::random_hex(24)?;
        pki::write_private(&path, format!("{t}\n").as_bytes())?;
    }
    pki::check_private(&path)?;
    let token = std::fs::read_to_string(&path)
        .map(|s| s.trim().to_owned())
        .map_err(|source| CoordError::DataDir {
            path: path.clone(),
            source,
        })?;
    if token.is_empty() {
        return Err(CoordError::WeakAdminToken { path, why: "empty" });
    }
    if token.chars().count() < MIN_ADMIN_TOKEN {
        return Err(CoordError::WeakAdminToken {
            path,
            why: "shorter than 16 characters",
        });
    }
    Ok(token)
}

/// Creates the data directory (0700) and everything in it on first start, binds the
/// QUIC and HTTP listeners, and serves until `shutdown` turns true. Refuses to start
/// when the data directory, a private key or the admin token is open to other users, or
/// the admin token is empty (the error names the file, its mode and the `chmod`).
pub async fn start(
    opts: ServeOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<Coordinator, CoordError> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = &opts.data_dir;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| CoordError::DataDir {
            path: dir.clone(),
            source,
        })?;
    pki::check_private(dir)?;
    let pki = Arc::new(pki::Pki::load_or_create(dir)?);
    let token = admin_token(dir)?;
    let store = Arc::new(store::Store::open(&dir.join("persona.db"))?);
    let listener = tokio::net::TcpListener::bind(opts.http)
        .await
        .map_err(|source| CoordError::BindHttp {
            addr: opts.http,
            source,
        })?;
    let http_addr = listener
        .local_addr()
        .map_err(|source| CoordError::BindHttp {
            addr: opts.http,
            source,
        })?;
    // Persona database, catalogue and profiler model, on the coordinator's connections.
    let profiling = Arc::new(profile::ProfilingService::with_store(
        store.clone(),
        dir,
        opts.settings.catalogue.as_deref(),
    )?);
    // The QUIC address is known only once bound, and the enroll line needs it: bind
    // first with a provisional App, then fix the advertised address.
    let quic_socket = std::net::UdpSocket::bind(opts.listen).map_err(|source| {
        CoordError::Serve(ingest::ServeError::Bind {
            addr: opts.listen,
            source,
        })
    })?;
    ingest::grow_receive_buffer(&quic_socket, opts.settings.udp_receive_buffer_bytes);
    let quic_addr = quic_socket
        .local_addr()
        .map_err(|source| CoordError::DataDir {
            path: dir.clone(),
            source,
        })?;
    let advertise = opts.advertise.clone().unwrap_or_else(|| {
        if quic_addr.ip().is_unspecified() {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_else(|_| "localhost".into());
            format!("{}:{}", host.trim(), quic_addr.port())
        } else {
            quic_addr.to_string()
        }
    });
    let app = Arc::new(app::App {
        models: model::push::ModelHub::open(&store),
        store,
        pki: pki.clone(),
        settings: opts.settings.clone(),
        stats: app::Stats::default(),
        live: app::Live::default(),
        commands: Arc::new(commands::delivery::Hub::default()),
        profiling: profiling.clone(),
        advertise,
    });
    let (endpoint, ingest) = ingest::bind(quic_socket, app.clone())?;
    // Tools and tests that start the coordinator on port 0 learn the bound addresses here.
    let serving = format!(
        "{{\"quic\":\"{quic_addr}\",\"http\":\"{http_addr}\",\"pid\":{}}}\n",
        std::process::id()
    );
    pki::write_private(&dir.join("serving.json"), serving.as_bytes())?;
    // The configuration engine applies recommendations to VMs in initial/auto mode.
    let t_engine = tokio::spawn(recommend::auto_loop(
        app.store.clone(),
        app.commands.clone(),
        app.settings.engine.clone(),
        Some(profiling),
        app.stats.engine_passes.clone(),
        shutdown.clone(),
    ));
    // Resizes of VMs that a hypervisor actuator serves run here, not in the agent.
    let t_resize = tokio::spawn(commands::dispatch::run(
        app.store.clone(),
        app.settings.actuators.clone(),
        shutdown.clone(),
    ));
    let api_state = Arc::new(api::ApiState::new(app.clone(), &token));
    let t1 = tokio::spawn(ingest::run(endpoint, ingest.clone(), shutdown.clone()));
    let t2 = tokio::spawn(api::run(listener, api_state, shutdown));
    info!(quic = %quic_addr, http = %http_addr, ca_hash = %pki.ca_hash(), data_dir = %dir.display(), "coordinator serving");
    Ok(Coordinator {
        quic_addr,
        http_addr,
        ca_hash: pki.ca_hash(),
        admin_token: token,
        app,
        ingest,
        tasks: vec![t1, t2, t_engine, t_resize],
    })
}
