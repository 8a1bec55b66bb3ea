//! The coordinator's configuration file (`persona-coordinator serve --config FILE`, TOML).
//!
//! Keys mirror `serve`'s flags one to one (`--retention-days` is `retention_days`), and a
//! flag given on the command line overrides the file, so a unit can ship a file and an
//! operator can still try one setting by hand. Every key has a default, unknown keys are
//! refused, and an invalid value is reported with the file, the key, the value and what
//! is allowed. [`COORDINATOR_KEYS`] documents every key; `docs/configuration.md` is
//! rendered from it ([`render_reference`]) and a test keeps the two in step.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use persona_shared::confdoc::{AGENT_KEYS, KeyDoc, render_section};
use persona_shared::config::LoadError;
use serde::Deserialize;

/// How to run the coordinator.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub http: SocketAddr,
    /// Address printed in enroll commands; defaults to the bound QUIC address.
    pub advertise: Option<String>,
    pub settings: ServerSettings,
}

/// Settings of a running coordinator: what agents are told, the QUIC server's bounds,
/// the engine's constants and the outside actuators.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub max_frame: usize,
    pub sample_interval_ms: u32,
    pub batch_interval_s: u32,
    pub retention_ms: i64,
    /// How far in the future a timestamp may be (clock skew).
    pub max_future_ms: i64,
    /// New connections allowed per source address per second (burst of 4x).
    pub conn_rate_per_ip: f64,
    /// Receive buffer asked for the QUIC socket (0: the kernel's default).
    pub udp_receive_buffer_bytes: usize,
    /// Whether `GET /metrics` needs the admin token (see docs/operations.md).
    pub metrics_require_token: bool,
    /// Instance catalogue file for sizing (`--catalogue`); `None` = the built-in one.
    pub catalogue: Option<std::path::PathBuf>,
    /// Constants of the configuration engine (`[engine]` in the config file).
    pub engine: crate::engine::EngineConfig,
    /// Outside resize actuators by VM (`[[actuator]]`); empty = every agent resizes itself.
    pub actuators: Vec<crate::actuate::ActuatorBinding>,
    /// What one agent (or anyone) may hold of the QUIC side's memory and throughput.
    pub ingest_limits: IngestLimits,
    /// What HTTP clients may hold of the admin API (connections, time to send headers).
    pub api_limits: ApiLimits,
}

/// Bounds of the HTTP admin API against a hostile or broken client: how many connections
/// it serves at once (further ones wait up to [`ApiLimits::queue_wait`] in a short queue,
/// then get a 503) and how long a client may take to send a request's headers, which is
/// also how long an idle keep-alive connection is kept.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    /// Connections served at once (lowered at start to fit the open-file limit).
    pub max_connections: usize,
    /// Longest a client may take to send a request's headers, and longest an idle
    /// keep-alive connection stays open.
    pub header_timeout: std::time::Duration,
    /// Longest a request body may take to arrive once its headers are in.
    pub body_timeout: std::time::Duration,
    /// Longest an accepted connection waits for a free slot before it gets a 503.
    pub queue_wait: std::time::Duration,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            header_timeout: std::time::Duration::from_secs(10),
            body_timeout: std::time::Duration::from_secs(30),
            queue_wait: std::time::Duration::from_secs(1),
        }
    }
}

/// Bounds of the QUIC side against a compromised agent: how many connections an agent
/// keeps, how much memory frames still arriving may hold, how long a frame may take,
/// and how many batch bytes an agent may send per second. The defaults leave a real
/// agent (one connection, a few KiB per batch every 10 s, a backlog resent after an
/// outage) far from every bound.
#[derive(Debug, Clone)]
pub struct IngestLimits {
    /// Connections one agent may hold at once; a new one closes the oldest.
    pub connections_per_agent: usize,
    /// Bytes all frames still arriving may hold together.
    pub frame_budget_bytes: usize,
    /// Bytes the frames still arriving on one connection may hold.
    pub connection_frame_budget_bytes: usize,
    /// Longest a frame may take from its header to its last byte (control streams too).
    pub frame_timeout: std::time::Duration,
    /// Batch bytes one agent may send per second, with a burst of 8 s worth.
    pub agent_bytes_per_s: f64,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self {
            connections_per_agent: 4,
            frame_budget_bytes: 64 << 20,
            connection_frame_budget_bytes: 4 << 20,
            frame_timeout: std::time::Duration::from_secs(30),
            agent_bytes_per_s: f64::from(1u32 << 20),
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            max_frame: persona_shared::protocol::DEFAULT_MAX_FRAME,
            sample_interval_ms: 1000,
            batch_interval_s: 10,
            retention_ms: 14 * 24 * 3600 * 1000,
            max_future_ms: 10 * 60 * 1000,
            conn_rate_per_ip: 200.0,
            udp_receive_buffer_bytes: 8 << 20,
            metrics_require_token: false,
            catalogue: None,
            engine: crate::engine::EngineConfig::default(),
            actuators: Vec::new(),
            ingest_limits: IngestLimits::default(),
            api_limits: ApiLimits::default(),
        }
    }
}

/// Valid ranges, shared with the command-line flags.
pub const SAMPLE_INTERVAL_MS: std::ops::RangeInclusive<i64> = 100..=60_000;
pub const BATCH_INTERVAL_S: std::ops::RangeInclusive<i64> = 1..=600;
pub const RETENTION_DAYS: std::ops::RangeInclusive<i64> = 1..=3650;
pub const MAX_FRAME_BYTES: std::ops::RangeInclusive<i64> = 1024..=(64 << 20);
pub const API_MAX_CONNECTIONS: std::ops::RangeInclusive<i64> = 1..=65_536;
pub const API_HEADER_TIMEOUT_S: std::ops::RangeInclusive<i64> = 1..=300;
pub const AGENT_MAX_CONNECTIONS: std::ops::RangeInclusive<i64> = 1..=64;
pub const AGENT_INGEST_BYTES_PER_S: std::ops::RangeInclusive<i64> = 128..=(1 << 30);
pub const FRAME_TIMEOUT_S: std::ops::RangeInclusive<i64> = 1..=600;
pub const CONNECTIONS_PER_ADDRESS_PER_S: std::ops::RangeInclusive<i64> = 1..=100_000;
pub const UDP_RECEIVE_BUFFER_BYTES: std::ops::RangeInclusive<i64> = 0..=(1 << 30);

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable, or not TOML for these keys (toml's message names the key and line).
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("invalid configuration ({source_name}): key `{key}` = {value}: allowed: {allowed}")]
    Invalid {
        /// The file, or "command line".
        source_name: String,
        key: &'static str,
        value: String,
        allowed: &'static str,
    },
}

/// Settings of `persona-coordinator serve`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub http: SocketAddr,
    pub advertise: Option<String>,
    pub sample_interval_ms: u32,
    pub batch_interval_s: u32,
    pub retention_days: u32,
    pub max_frame_bytes: u32,
    pub metrics_require_token: bool,
    /// HTTP API connections served at once.
    pub api_max_connections: u32,
    /// Seconds an HTTP client may take to send a request's headers (and an idle
    /// keep-alive connection is kept).
    pub api_header_timeout_s: u32,
    /// Connections one agent may hold at once; a new one closes the oldest.
    pub agent_max_connections: u32,
    /// Batch bytes one agent may send per second (burst: 8 s worth).
    pub agent_ingest_bytes_per_s: u32,
    /// Seconds a frame may take from its header to its last byte, control streams too.
    pub frame_timeout_s: u32,
    /// New QUIC connections one source address may open per second (burst: 4 s worth).
    pub connections_per_address_per_s: u32,
    /// Receive buffer asked for the QUIC socket, in bytes (0: the kernel's default).
    pub udp_receive_buffer_bytes: u32,
    /// Instance catalogue for sizing; None = the built-in one.
    pub catalogue: Option<PathBuf>,
    /// Which resize actuator serves which VM (`[[actuator]]`); VMs without an entry
    /// use the guest actuator.
    pub actuator: Vec<crate::actuate::ActuatorBinding>,
    /// Constants of the configuration engine (`[engine]`).
    pub engine: crate::engine::EngineConfig,
}

impl Default for CoordConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/persona-coordinator"),
            listen: SocketAddr::from(([0, 0, 0, 0], 7443)),
            http: SocketAddr::from(([127, 0, 0, 1], 7444)),
            advertise: None,
            sample_interval_ms: 1000,
            batch_interval_s: 10,
            retention_days: 14,
            max_frame_bytes: 1 << 20,
            metrics_require_token: false,
            api_max_connections: 256,
            api_header_timeout_s: 10,
            agent_max_connections: 4,
            agent_ingest_bytes_per_s: 1 << 20,
            frame_timeout_s: 30,
            connections_per_address_per_s: 200,
            udp_receive_buffer_bytes: 8 << 20,
            catalogue: None,
            actuator: Vec::new(),
            engine: crate::engine::EngineConfig::default(),
        }
    }
}

/// Values given as flags; `Some` overrides the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub advertise: Option<String>,
    pub sample_interval_ms: Option<u32>,
    pub batch_interval_s: Option<u32>,
    pub retention_days: Option<u32>,
    pub max_frame_bytes: Option<u32>,
    pub catalogue: Option<PathBuf>,
}

impl CoordConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<CoordConfig, ConfigError> {
        let cfg: CoordConfig = persona_shared::config::load(path)?;
        cfg.validate(&path.display().to_string())?;
        Ok(cfg)
    }

    /// Parses and checks config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<CoordConfig, ConfigError> {
        let cfg: CoordConfig = persona_shared::config::parse(text, path)?;
        cfg.validate(&path.display().to_string())?;
        Ok(cfg)
    }

    /// Applies command-line flags on top.
    pub fn apply(&mut self, o: Overrides) {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = o.$f { self.$f = v; } )* };
        }
        set!(
            data_dir,
            listen,
            http,
            sample_interval_ms,
            batch_interval_s,
            retention_days,
            max_frame_bytes
        );
        if o.advertise.is_some() {
            self.advertise = o.advertise;
        }
        if o.catalogue.is_some() {
            self.catalogue = o.catalogue;
        }
    }

    /// Checks every value; `source_name` (file or "command line") goes into the error.
    pub fn validate(&self, source_name: &str) -> Result<(), ConfigError> {
        let bad = |key, value: String, allowed| ConfigError::Invalid {
            source_name: source_name.to_owned(),
            key,
            value,
            allowed,
        };
        let ranges = [
            (
                "sample_interval_ms",
                i64::from(self.sample_interval_ms),
                SAMPLE_INTERVAL_MS,
                "100..=60000",
            ),
            (
                "batch_interval_s",
                i64::from(self.batch_interval_s),
                BATCH_INTERVAL_S,
                "1..=600",
            ),
            (
                "retention_days",
                i64::from(self.retention_days),
                RETENTION_DAYS,
                "1..=3650",
            ),
            (
                "max_frame_bytes",
                i64::from(self.max_frame_bytes),
                MAX_FRAME_BYTES,
                "1024..=67108864",
            ),
            (
                "api_max_connections",
                i64::from(self.api_max_connections),
                API_MAX_CONNECTIONS,
                "1..=65536",
            ),
            (
                "api_header_timeout_s",
                i64::from(self.api_header_timeout_s),
                API_HEADER_TIMEOUT_S,
                "1..=300",
            ),
            (
                "agent_max_connections",
                i64::from(self.agent_max_connections),
                AGENT_MAX_CONNECTIONS,
                "1..=64",
            ),
            (
                "agent_ingest_bytes_per_s",
                i64::from(self.agent_ingest_bytes_per_s),
                AGENT_INGEST_BYTES_PER_S,
                "128..=1073741824",
            ),
            (
                "frame_timeout_s",
                i64::from(self.frame_timeout_s),
                FRAME_TIMEOUT_S,
                "1..=600",
            ),
            (
                "connections_per_address_per_s",
                i64::from(self.connections_per_address_per_s),
                CONNECTIONS_PER_ADDRESS_PER_S,
                "1..=100000",
            ),
            (
                "udp_receive_buffer_bytes",
                i64::from(self.udp_receive_buffer_bytes),
                UDP_RECEIVE_BUFFER_BYTES,
                "0..=1073741824",
            ),
        ];
        for (key, v, range, allowed) in ranges {
            if !range.contains(&v) {
                return Err(bad(key, v.to_string(), allowed));
            }
        }
        if i64::from(self.batch_interval_s) * 1000 < i64::from(self.sample_interval_ms) {
            return Err(bad(
                "batch_interval_s",
                self.batch_interval_s.to_string(),
                "at least one sample interval",
            ));
        }
        // The quota's burst is 8 s worth: a largest frame that did not fit it could never
        // be sent, and the agent would retry it for ever.
        if u64::from(self.agent_ingest_bytes_per_s) * 8 < u64::from(self.max_frame_bytes) {
            return Err(bad(
                "agent_ingest_bytes_per_s",
                self.agent_ingest_bytes_per_s.to_string(),
                "at least max_frame_bytes / 8 (the largest batch must fit the 8 s burst)",
            ));
        }
        if let Some(a) = &self.advertise
            && !persona_shared::addr::looks_like_host_port(a)
        {
            return Err(bad("advertise", format!("{a:?}"), "HOST:PORT"));
        }
        if let Err(e) = self.engine.validate() {
            return Err(bad(
                "engine",
                e.to_string(),
                "the [engine] keys and ranges in docs/operations.md (\"Configuration engine\")",
            ));
        }
        if let Err(e) = crate::actuate::check_bindings(&self.actuator) {
            return Err(bad(
                "actuator",
                e,
                "per entry one of agent or instance_id and one actuator table (docs/operations.md)",
            ));
        }
        Ok(())
    }

    /// What `start` takes.
    pub fn serve_options(&self) -> ServeOptions {
        ServeOptions {
            data_dir: self.data_dir.clone(),
            listen: self.listen,
            http: self.http,
            advertise: self.advertise.clone(),
            settings: ServerSettings {
                max_frame: self.max_frame_bytes as usize,
                sample_interval_ms: self.sample_interval_ms,
                batch_interval_s: self.batch_interval_s,
                retention_ms: i64::from(self.retention_days) * 86_400_000,
                metrics_require_token: self.metrics_require_token,
                conn_rate_per_ip: f64::from(self.connections_per_address_per_s),
                udp_receive_buffer_bytes: self.udp_receive_buffer_bytes as usize,
                catalogue: self.catalogue.clone(),
                engine: self.engine.clone(),
                actuators: self.actuator.clone(),
                api_limits: ApiLimits {
                    max_connections: self.api_max_connections as usize,
                    header_timeout: std::time::Duration::from_secs(u64::from(
                        self.api_header_timeout_s,
                    )),
                    ..ApiLimits::default()
                },
                ingest_limits: IngestLimits {
                    connections_per_agent: self.agent_max_connections as usize,
                    agent_bytes_per_s: f64::from(self.agent_ingest_bytes_per_s),
                    frame_timeout: std::time::Duration::from_secs(u64::from(self.frame_timeout_s)),
                    ..IngestLimits::default()
                },
                ..ServerSettings::default()
            },
        }
    }
}

/// Every key of the coordinator's config file.
pub const COORDINATOR_KEYS: &[KeyDoc] = &[
    KeyDoc {
        key: "data_dir",
        ty: "path",
        default: Some("\"/var/lib/persona-coordinator\""),
        allowed: "a directory the coordinator can write (created 0700)",
        meaning: "The CA, the admin token, the SQLite database and serving.json. Flag: --data-dir.",
    },
    KeyDoc {
        key: "listen",
        ty: "string",
        default: Some("\"0.0.0.0:7443\""),
        allowed: "IP:PORT",
        meaning: "UDP address agents connect to over QUIC. Flag: --listen.",
    },
    KeyDoc {
        key: "http",
        ty: "string",
        default: Some("\"127.0.0.1:7444\""),
        allowed: "IP:PORT",
        meaning: "HTTP admin API and /metrics. Keep it on loopback unless it is fronted by TLS. Flag: --http.",
    },
    KeyDoc {
        key: "advertise",
        ty: "string",
        default: None,
        allowed: "HOST:PORT",
        meaning: "Address printed in enroll commands. Unset: the QUIC address, or HOSTNAME:PORT when listening on all addresses. Flag: --advertise.",
    },
    KeyDoc {
        key: "sample_interval_ms",
        ty: "integer",
        default: Some("1000"),
        allowed: "100..=60000",
        meaning: "Sampling interval agents are told to use. Flag: --sample-interval-ms.",
    },
    KeyDoc {
        key: "batch_interval_s",
        ty: "integer",
        default: Some("10"),
        allowed: "1..=600, at least one sample interval",
        meaning: "Batch interval agents are told to use. Flag: --batch-interval-s.",
    },
    KeyDoc {
        key: "retention_days",
        ty: "integer",
        default: Some("14"),
        allowed: "1..=3650",
        meaning: "Days of telemetry kept; older batches are deleted and refused. Flag: --retention-days.",
    },
    KeyDoc {
        key: "max_frame_bytes",
        ty: "integer",
        default: Some("1048576"),
        allowed: "1024..=67108864",
        meaning: "Hard maximum size of one protocol frame. Flag: --max-frame-bytes.",
    },
    KeyDoc {
        key: "metrics_require_token",
        ty: "boolean",
        default: Some("false"),
        allowed: "true or false",
        meaning: "Whether GET /metrics needs the admin bearer token. Off by default: the API listens on loopback and scrapers conventionally scrape without credentials there. Turn it on when `http` is reachable from other hosts. No flag.",
    },
    KeyDoc {
        key: "api_max_connections",
        ty: "integer",
        default: Some("256"),
        allowed: "1..=65536",
        meaning: "HTTP API connections served at once. A connection over it waits up to 1 s in a short queue for a free slot, then gets a 503. Lowered at start so that the API's connections fit in three quarters of the open-file limit (minus 64 for the database and QUIC), so clients can never take the files the rest of the coordinator needs. No flag.",
    },
    KeyDoc {
        key: "api_header_timeout_s",
        ty: "integer",
        default: Some("10"),
        allowed: "1..=300",
        meaning: "Seconds an HTTP client may take to send a request's headers; an idle keep-alive connection is closed after as long. A request body must then arrive within 30 s. No flag.",
    },
    KeyDoc {
        key: "agent_max_connections",
        ty: "integer",
        default: Some("4"),
        allowed: "1..=64",
        meaning: "QUIC connections one agent (one enrolled identity) may hold at once; a new one closes the oldest. A real agent holds one; the rest is room for reconnects that overlap. No flag.",
    },
    KeyDoc {
        key: "agent_ingest_bytes_per_s",
        ty: "integer",
        default: Some("1048576"),
        allowed: "128..=1073741824, at least max_frame_bytes / 8",
        meaning: "Batch bytes one agent may send per second, with a burst of 8 s worth. A batch over it is refused as retryable (`agent_quota` in the rejected counters); the agent keeps it and sends it later. A real agent sends a few KiB every batch interval, and a backlog after an outage drains at this rate. No flag.",
    },
    KeyDoc {
        key: "frame_timeout_s",
        ty: "integer",
        default: Some("30"),
        allowed: "1..=600",
        meaning: "Seconds a protocol frame may take from its header to its last byte, on every stream including the control stream; a slower one is refused (`frame_stalled`) and the memory it held is freed. No flag.",
    },
    KeyDoc {
        key: "connections_per_address_per_s",
        ty: "integer",
        default: Some("200"),
        allowed: "1..=100000",
        meaning: "New QUIC connections one source address may open per second, with a burst of 4 s worth; over it a connection is closed as `rate_limited` and the agent retries with jittered backoff. An address counts only once it is proven (docs/operations.md, \"A hostile network\"). A whole fleet may sit behind one NAT address: at 200, 20,000 agents reconnect through one address in under 2 minutes after a coordinator restart, while one host still cannot take the handshake capacity of the rest (docs/BENCHMARKS.md). No flag.",
    },
    KeyDoc {
        key: "udp_receive_buffer_bytes",
        ty: "integer",
        default: Some("8388608"),
        allowed: "0..=1073741824 (0: the kernel's default)",
        meaning: "Receive buffer asked for the QUIC socket. Every agent's datagrams arrive on this one socket; with the kernel's default (208 KiB on Debian) a fleet's burst overflows it, the kernel drops datagrams (`UdpRcvbufErrors` in `nstat`) and QUIC resends them late, which shows as ack latency of seconds at 50,000 agents (docs/BENCHMARKS.md). The kernel caps the size at `net.core.rmem_max`; the coordinator logs a warning with the size it got when that is less than asked: raise it with `sysctl -w net.core.rmem_max=8388608` (the packaged sysctl.d file does). No flag.",
    },
    KeyDoc {
        key: "catalogue",
        ty: "path",
        default: None,
        allowed: "a readable instance catalogue (TOML)",
        meaning: "Instance catalogue used for sizing recommendations. Unset: the built-in AWS us-east-1 list (coordinator/catalogue/default.toml). Flag: --catalogue.",
    },
    KeyDoc {
        key: "actuator",
        ty: "array of tables",
        default: Some("[]"),
        allowed: "`[[actuator]]` entries: `agent = ID` or `instance_id = UUID`, and one of `[actuator.qmp]`, `[actuator.libvirt]`, `[actuator.cloud_hypervisor]`, `[actuator.exec]` or `guest = true`",
        meaning: "Which resize actuator changes which VM, from outside it (QEMU QMP, libvirt's virsh, Cloud Hypervisor's API, an operator's program). VMs without an entry are resized by their agent (the guest actuator). Each table's keys are in docs/operations.md, \"Resize actuators\". No flag.",
    },
    KeyDoc {
        key: "engine",
        ty: "table",
        default: Some("{}"),
        allowed: "`[engine]` keys: cpu_half_life_s, memory_half_life_s, cpu_percentile, memory_percentile, cpu_margin, memory_margin, memory_peak_window_s, peak_window_s, full_confidence_s, scale_down_after_s, scale_down_min_saving, scale_up_min_increase, min_change_cores, min_change_gib, cooldown_s, pressure_scale_up, forecast_hours, evaluate_every_s, auto_min_confidence",
        meaning: "Constants of the configuration engine (right-sizing): histogram half-lives, percentiles and margins, hysteresis and cooldown, forecast horizon, how often auto-mode VMs are re-evaluated, the confidence auto mode waits for. Defaults and their justification: docs/EVALUATION.md, \"Trace replay\". No flag.",
    },
];

/// The whole of docs/configuration.md.
pub fn render_reference() -> String {
    let mut out = String::from(
        "# Configuration reference\n\n\
         <!-- Generated from the key tables in shared/src/confdoc/ and coordinator/src/config.rs.\n     \
         Do not edit: run `PERSONA_BLESS=1 cargo test -p persona-coordinator config_reference` to regenerate. -->\n\n\
         Both files are TOML. Every key is optional (the default applies), unknown keys are\n\
         refused with the file and key named, and an invalid value is reported with the file,\n\
         the key, the value and what is allowed. Annotated examples: `packaging/agent.toml`\n\
         and `packaging/coordinator.toml` (installed in `/etc/persona/`).\n\n",
    );
    out += &render_section(
        "Agent: /etc/persona/agent.toml",
        "Read by `persona-agent run --config FILE`. `--state-dir` and `--coordinator` override the file.",
        AGENT_KEYS,
    );
    out += "\n";
    out += &render_section(
        "Agent policy: /etc/persona/policy.toml",
        "The agent's local policy for coordinator commands (`policy_file` above). It denies by \
         default: a missing file, an empty file or an omitted key all mean no. Re-read for every \
         command, so an edit needs no restart. Package, image and path names are also checked \
         against their grammar, and nothing is run through a shell.",
        persona_shared::confdoc::POLICY_KEYS,
    );
    out += "\n";
    out += &render_section(
        "Coordinator: /etc/persona/coordinator.toml",
        "Read by `persona-coordinator serve --config FILE`. Each key has a flag of the same name \
         (underscores as dashes), and a flag given on the command line overrides the file.",
        COORDINATOR_KEYS,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coordinator_config_carries_the_bindings() {
        let p = std::path::Path::new("/etc/persona/coordinator.toml");
        let c = CoordConfig::parse(
            "[[actuator]]\nagent = \"a1\"\n[actuator.qmp]\nsocket = \"/run/q.sock\"\n",
            p,
        )
        .unwrap();
        assert_eq!(
            crate::actuate::actuator_for(&c.actuator, "a1", None).name(),
            "qmp"
        );
        let e = CoordConfig::parse("[[actuator]]\nagent = \"a1\"\n", p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("actuator")
                && e.contains("names no actuator")
                && e.contains("coordinator.toml"),
            "{e}"
        );
        let e = CoordConfig::parse(
            "[[actuator]]\nagent = \"a1\"\n[actuator.exec]\nprogram = \"resize.sh\"\n",
            p,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not an absolute path"), "{e}");
    }

    use persona_shared::confdoc::toml_setting;

    fn p() -> &'static Path {
        Path::new("/etc/persona/coordinator.toml")
    }

    #[test]
    fn config_reference_is_current() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
        let want = render_reference();
        if std::env::var_os("PERSONA_BLESS").is_some() {
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "docs/configuration.md is stale: run `PERSONA_BLESS=1 cargo test -p persona-coordinator config_reference`"
        );
    }

    #[test]
    fn documented_defaults_are_the_real_ones() {
        for k in COORDINATOR_KEYS {
            let Some(d) = k.default else { continue };
            let c = CoordConfig::parse(&toml_setting(k.key, d), p())
                .unwrap_or_else(|e| panic!("{}: {e}", k.key));
            assert_eq!(c, CoordConfig::default(), "documented default of {}", k.key);
        }
        let dbg = format!("{:?}", CoordConfig::default());
        // The [engine] table's own fields are one key here.
        let engine = format!("{:?}", crate::engine::EngineConfig::default())
            .matches(": ")
            .count();
        assert_eq!(
            dbg.matches(": ").count() - engine,
            COORDINATOR_KEYS.len(),
            "{dbg}"
        );
    }

    #[test]
    fn the_shipped_example_is_valid_and_mentions_every_key() {
        let text = include_str!("../../packaging/coordinator.toml");
        CoordConfig::parse(text, Path::new("packaging/coordinator.toml")).unwrap();
        for k in COORDINATOR_KEYS {
            assert!(
                text.contains(k.key),
                "packaging/coordinator.toml lacks {}",
                k.key
            );
        }
    }

    #[test]
    fn errors_name_file_key_value_and_what_is_allowed() {
        let e = CoordConfig::parse("retention_days = 0\n", p())
            .unwrap_err()
            .to_string();
        for part in ["coordinator.toml", "retention_days", "= 0", "1..=3650"] {
            assert!(e.contains(part), "{part} missing from: {e}");
        }
        let e = CoordConfig::parse("listen = \"nowhere\"\n", p())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("listen") && e.contains("nowhere") && e.contains("coordinator.toml"),
            "{e}"
        );
        let e = CoordConfig::parse("retention = 3\n", p())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("retention") && e.contains("coordinator.toml"),
            "{e}"
        );
    }

    #[test]
    fn flags_override_the_file() {
        let mut c =
            CoordConfig::parse("retention_days = 30\nhttp = \"127.0.0.1:9000\"\n", p()).unwrap();
        c.apply(Overrides {
            retention_days: Some(7),
            ..Overrides::default()
        });
        assert_eq!(c.retention_days, 7);
        assert_eq!(c.http.port(), 9000);
        assert_eq!(c.serve_options().settings.retention_ms, 7 * 86_400_000);
    }
}
