//! The Persona coordinator: it holds the CA that enrolls agents, receives their
//! telemetry over QUIC into SQLite, and serves the admin API that `personactl` drives.
//! `start` brings everything up from a data directory and returns the bound addresses,
//! so the binary, the demo and the tests all run the same code.

pub mod actuate;
pub mod api;
pub mod belief;
pub mod catalogue;
pub mod commands;
pub mod commands_cli;
pub mod config;
pub mod ctl;
pub mod demo;
pub mod engine;
pub mod engine_api;
pub mod events;
pub mod events_cli;
pub mod health;
pub mod mirror_train;
pub mod model_push;
pub mod persona_db;
pub mod personas;
pub mod pki;
pub mod preload;
pub mod profile_api;
pub mod profile_cli;
pub mod profiling;
pub mod prom;
pub mod recommend;
pub mod recommend_cli;
pub mod replay;
pub mod replay_cli;
pub mod server;
pub mod signing;
pub mod specs;
pub mod store;
pub mod table;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;
use tracing::info;

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
    Serve(#[from] server::ServeError),
    #[error("cannot bind the HTTP API on {addr}: {source}")]
    BindHttp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Profiling(#[from] profiling::ProfileError),
}

/// How to run the coordinator.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub http: SocketAddr,
    /// Address printed in enroll commands; defaults to the bound QUIC address.
    pub advertise: Option<String>,
    pub settings: server::ServerSettings,
}

/// A running coordinator.
#[derive(Debug)]
pub struct Coordinator {
    pub quic_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub ca_hash: String,
    pub admin_token: String,
    pub shared: Arc<server::Shared>,
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

/// Reads the admin token of a data directory, creating it on first start.
pub fn admin_token(data_dir: &Path) -> Result<String, CoordError> {
    let path = data_dir.join("admin.token");
    if !path.exists() {
        let t = pki::random_hex(24)?;
        pki::write_private(&path, format!("{t}\n").as_bytes())?;
    }
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_owned())
        .map_err(|source| CoordError::DataDir { path, source })
}

/// Creates the data directory (0700) and everything in it on first start, binds the
/// QUIC and HTTP listeners, and serves until `shutdown` turns true.
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
    let pki = Arc::new(pki::Pki::load_or_create(dir)?);
    let token = admin_token(dir)?;
    let store = Arc::new(store::Store::open(&dir.join("persona.db"))?);
    let (endpoint, shared) = server::bind(opts.listen, store, pki.clone(), opts.settings.clone())?;
    let quic_addr = endpoint
        .local_addr()
        .map_err(|source| CoordError::DataDir {
            path: dir.clone(),
            source,
        })?;
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
    let advertise = opts.advertise.clone().unwrap_or_else(|| {
        if quic_addr.ip().is_unspecified() {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_else(|_| "localhost".into());
            format!("{}:{}", host.trim(), quic_addr.port())
        } else {
            quic_addr.to_string()
        }
    });
    // Tools and tests that start the coordinator on port 0 learn the bound addresses here.
    let serving = format!(
        "{{\"quic\":\"{quic_addr}\",\"http\":\"{http_addr}\",\"pid\":{}}}\n",
        std::process::id()
    );
    pki::write_private(&dir.join("serving.json"), serving.as_bytes())?;
    // Persona database, catalogue and profiler model (its own connection to persona.db).
    let profiling = Arc::new(profiling::ProfilingService::open(
        dir,
        opts.settings.catalogue.as_deref(),
    )?);
    shared.beliefs.set_profiler(profiling.clone());
    // The configuration engine applies recommendations to VMs in initial/auto mode.
    let t_engine = tokio::spawn(engine_api::auto_loop(
        shared.clone(),
        Some(profiling.clone()),
        shutdown.clone(),
    ));
    // Resizes of VMs that a hypervisor actuator serves run here, not in the agent.
    let t_resize = tokio::spawn(actuate::dispatch::run(shared.clone(), shutdown.clone()));
    let api_state =
        Arc::new(api::ApiState::new(shared.clone(), &token, advertise).with_profiling(profiling));
    let t1 = tokio::spawn(server::run(endpoint, shared.clone(), shutdown.clone()));
    let t2 = tokio::spawn(api::run(listener, api_state, shutdown));
    info!(quic = %quic_addr, http = %http_addr, ca_hash = %pki.ca_hash(), data_dir = %dir.display(), "coordinator serving");
    Ok(Coordinator {
        quic_addr,
        http_addr,
        ca_hash: pki.ca_hash(),
        admin_token: token,
        shared,
        tasks: vec![t1, t2, t_engine, t_resize],
    })
}
