//! `App`: what a running coordinator holds — the store, the CA, its settings, the
//! counters and the hubs through which one part wakes another (command delivery, the
//! current mirror model, the live connections). `lib.rs` builds it once; only the two
//! doors in (`ingest/` for QUIC and `api/` for HTTP) and `lib.rs` see it. Features below
//! them are handed the piece they need (`&Store`, their own hub), never the whole `App`,
//! so a feature cannot reach into another's state.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use quinn::{Connection, VarInt};

use crate::commands::delivery::Hub as CommandHub;
use crate::config::ServerSettings;
use crate::model::push::ModelHub;
use crate::pki::Pki;
use crate::profile::ProfilingService;
use crate::store::Store;

/// The running coordinator's state, shared by the QUIC and HTTP sides.
pub struct App {
    pub store: Arc<Store>,
    pub pki: Arc<Pki>,
    pub settings: ServerSettings,
    pub stats: Stats,
    /// Live QUIC connections by agent key, so a revocation can cut them at once.
    pub live: Live,
    /// Wake-ups for command delivery to connected agents.
    pub commands: Arc<CommandHub>,
    /// The current mirror model, pushed to agents that run another.
    pub models: ModelHub,
    /// Persona database, catalogue and profiler: priors at Hello, the profile routes.
    pub profiling: Arc<ProfilingService>,
    /// The QUIC address agents should use, for enroll command lines.
    pub advertise: String,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("advertise", &self.advertise)
            .finish_non_exhaustive()
    }
}

/// Counters the admin API and /metrics expose; the QUIC side moves them.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub batches: AtomicU64,
    pub duplicate_batches: AtomicU64,
    pub samples: AtomicU64,
    pub bytes_received: AtomicU64,
    pub ingest_nanos: AtomicU64,
    pub enrollments: AtomicU64,
    /// Monotonic milliseconds (since the server started) of the accept loop's last turn:
    /// the systemd watchdog checks that it keeps moving.
    pub accept_loop_heartbeat_ms: AtomicU64,
    /// Passes of the configuration engine's auto loop (shared with its task).
    pub engine_passes: Arc<AtomicU64>,
    rejected: Mutex<HashMap<&'static str, u64>>,
}

impl Stats {
    /// Counts one refusal under `reason` (a fixed label: it becomes a metric label).
    pub fn reject(&self, reason: &'static str) {
        if let Ok(mut m) = self.rejected.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    /// Rejections so far, by reason.
    pub fn rejected(&self) -> Vec<(&'static str, u64)> {
        let mut v: Vec<_> = self
            .rejected
            .lock()
            .map(|m| m.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default();
        v.sort_unstable();
        v
    }
}

/// Live connections by agent key.
#[derive(Debug, Default)]
pub struct Live {
    conns: Mutex<HashMap<i64, Vec<Connection>>>,
}

impl Live {
    /// Ids (store keys) of the agents with a live connection.
    pub fn connected(&self) -> Vec<i64> {
        self.conns
            .lock()
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Records a new authenticated connection of an agent, keeping at most `max` of its
    /// connections: returns the oldest ones past that, for the caller to close.
    pub fn add(&self, key: i64, conn: Connection, max: usize) -> Vec<Connection> {
        let Ok(mut m) = self.conns.lock() else {
            return Vec::new();
        };
        let v = m.entry(key).or_default();
        v.push(conn);
        let excess = v.len().saturating_sub(max.max(1));
        v.drain(..excess).collect()
    }

    /// Forgets a connection that ended.
    pub fn remove(&self, key: i64, conn: &Connection) {
        if let Ok(mut m) = self.conns.lock()
            && let Some(v) = m.get_mut(&key)
        {
            v.retain(|c| c.stable_id() != conn.stable_id());
            if v.is_empty() {
                m.remove(&key);
            }
        }
    }

    /// Closes every live connection of an agent (after a revocation).
    pub fn disconnect(&self, key: i64) {
        if let Ok(mut m) = self.conns.lock()
            && let Some(conns) = m.remove(&key)
        {
            for c in conns {
                c.close(VarInt::from_u32(3), b"revoked");
            }
        }
    }
}
