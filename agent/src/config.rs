//! The daemon's configuration file (`persona-agent run --config FILE`, TOML).
//!
//! Every key has a default, so an empty file (or no file) is a valid configuration, and
//! every unknown key is an error: a typo such as `sample_intervall_ms` must not be
//! silently ignored on a fleet of VMs. Errors name the file and the key. This module only
//! reads and checks settings; identity (agent id, certificates) lives in the state dir and
//! is written by `enroll`, never here. See packaging/agent.toml for an annotated example.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use persona_shared::addr::looks_like_host_port;
use persona_shared::config::LoadError;
use persona_shared::protocol::{DEFAULT_MAX_FRAME, Purpose};
use serde::Deserialize;

use crate::actuate::GuestActuatorConfig;
use crate::settings::{BATCH_INTERVAL_RANGE_S, MAX_POINTS_PER_BATCH, SAMPLE_INTERVAL_RANGE_MS};

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is unreadable or not valid TOML for these keys; toml's message names the
    /// key and the line.
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("invalid config file {path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

/// The VM's declared purpose, `[purpose]` in the file.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PurposeConfig {
    /// Free text, e.g. "fine-tuning a 7B model with LoRA".
    pub description: String,
    /// Software the owner means to run, e.g. ["pytorch", "cuda"].
    pub software: Vec<String>,
    /// Size of the working data set in GB.
    pub data_gb: Option<f64>,
}

impl From<PurposeConfig> for Purpose {
    fn from(p: PurposeConfig) -> Self {
        Purpose {
            description: p.description,
            software: p.software,
            data_gb: p.data_gb,
        }
    }
}

/// Settings of `persona-agent run`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Coordinator as HOST:PORT; None = the one stored at enrollment.
    pub coordinator: Option<String>,
    /// Identity (key, certificates) and outbox.
    pub state_dir: PathBuf,
    /// Sampling interval; the coordinator's Welcome may override it.
    pub sample_interval_ms: u64,
    /// Seconds of samples per telemetry batch; the coordinator's Welcome may override it.
    pub batch_interval_s: u64,
    /// Bound of the on-disk outbox; the oldest sealed batches are dropped beyond it.
    pub outbox_max_bytes: u64,
    /// Processes listed by CPU and by memory.
    pub top_n: usize,
    /// Scan processes every this many ticks (a process scan costs far more than a tick).
    pub process_every: u32,
    /// Hard maximum of a frame received from the coordinator (and of a sent batch).
    pub max_frame_bytes: usize,
    pub proc_root: PathBuf,
    pub sys_root: PathBuf,
    /// What the VM is for, sent in Hello when set.
    pub purpose: Option<PurposeConfig>,
    /// Loopback address of the agent's own `/metrics` endpoint; None = off.
    pub metrics_listen: Option<SocketAddr>,
    /// The local policy for coordinator commands (see `policy`; missing = deny all).
    pub policy_file: PathBuf,
    /// Pressure and anomaly detection, the `[detect]` table.
    pub detect: crate::detect::DetectConfig,
    /// The guest resize actuator and its root helper, the `[guest_actuator]` table.
    pub guest_actuator: GuestActuatorConfig,
    /// Length of the behavioural-mirroring window (seconds).
    pub mirror_window_s: u64,
    /// How often the mirror model runs on the window (seconds).
    pub mirror_step_s: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            coordinator: None,
            state_dir: PathBuf::from("/var/lib/persona-agent"),
            sample_interval_ms: 1000,
            batch_interval_s: 10,
            outbox_max_bytes: 64 << 20,
            top_n: 10,
            process_every: 5,
            max_frame_bytes: DEFAULT_MAX_FRAME,
            proc_root: PathBuf::from("/proc"),
            sys_root: PathBuf::from("/sys"),
            purpose: None,
            metrics_listen: None,
            policy_file: PathBuf::from("/etc/persona/policy.toml"),
            detect: crate::detect::DetectConfig::default(),
            guest_actuator: GuestActuatorConfig::default(),
            mirror_window_s: 300,
            mirror_step_s: crate::mirror::DEFAULT_STEP_S,
        }
    }
}

impl AgentConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let cfg: AgentConfig = persona_shared::config::load(path)?;
        cfg.check(path)
    }

    /// Parses and checks config text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<AgentConfig, ConfigError> {
        let cfg: AgentConfig = persona_shared::config::parse(text, path)?;
        cfg.check(path)
    }

    fn check(self, path: &Path) -> Result<AgentConfig, ConfigError> {
        self.validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                path: path.to_owned(),
                key,
                message,
            })?;
        Ok(self)
    }

    /// Checks ranges and the relations between keys; returns the offending key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !SAMPLE_INTERVAL_RANGE_MS.contains(&self.sample_interval_ms) {
            return Err((
                "sample_interval_ms",
                format!("{} is outside 100..=60000", self.sample_interval_ms),
            ));
        }
        if !BATCH_INTERVAL_RANGE_S.contains(&self.batch_interval_s) {
            return Err((
                "batch_interval_s",
                format!("{} is outside 1..=600", self.batch_interval_s),
            ));
        }
        if self.batch_interval_s * 1000 < self.sample_interval_ms {
            return Err((
                "batch_interval_s",
                format!(
                    "a batch of {} s is shorter than one sample interval ({} ms)",
                    self.batch_interval_s, self.sample_interval_ms
                ),
            ));
        }
        if self.batch_interval_s * 1000 / self.sample_interval_ms > MAX_POINTS_PER_BATCH {
            return Err((
                "batch_interval_s",
                format!(
                    "{} s at {} ms per sample is more than {MAX_POINTS_PER_BATCH} samples per batch; use a shorter batch or a longer sample interval",
                    self.batch_interval_s, self.sample_interval_ms
                ),
            ));
        }
        if !(4096..=(64 << 20)).contains(&self.max_frame_bytes) {
            return Err((
                "max_frame_bytes",
                format!("{} is outside 4096..=67108864", self.max_frame_bytes),
            ));
        }
        if self.outbox_max_bytes < self.max_frame_bytes as u64 {
            return Err((
                "outbox_max_bytes",
                format!(
                    "{} is smaller than max_frame_bytes ({})",
                    self.outbox_max_bytes, self.max_frame_bytes
                ),
            ));
        }
        if self.process_every == 0 {
            return Err(("process_every", "0 is not allowed: use 1 or more".into()));
        }
        if self.top_n > 1000 {
            return Err(("top_n", format!("{} is outside 0..=1000", self.top_n)));
        }
        if let Some(c) = &self.coordinator
            && !looks_like_host_port(c)
        {
            return Err((
                "coordinator",
                format!("{c:?} is not HOST:PORT (for example \"coordinator.internal:7443\")"),
            ));
        }
        if let Some(p) = &self.purpose
            && let Some(gb) = p.data_gb
            && !(gb.is_finite() && gb >= 0.0)
        {
            return Err((
                "purpose.data_gb",
                format!("{gb} is not a size: use a number of GB, 0 or more"),
            ));
        }
        if let Some(a) = self.metrics_listen
            && !a.ip().is_loopback()
        {
            // The endpoint is unauthenticated: it must not be reachable from outside the VM.
            return Err((
                "metrics_listen",
                format!("{a} is not a loopback address: use 127.0.0.1:PORT or [::1]:PORT"),
            ));
        }
        self.detect.validate()?;
        self.guest_actuator.validate()?;
        if !(10..=3600).contains(&self.mirror_window_s) {
            return Err((
                "mirror_window_s",
                format!("{} is outside 10..=3600", self.mirror_window_s),
            ));
        }
        if !crate::mirror::STEP_RANGE_S.contains(&self.mirror_step_s) {
            return Err((
                "mirror_step_s",
                format!("{} is outside 1..=3600", self.mirror_step_s),
            ));
        }
        Ok(())
    }

    /// The declared purpose in wire form.
    pub fn wire_purpose(&self) -> Option<Purpose> {
        self.purpose.clone().map(Purpose::from)
    }
}

impl GuestActuatorConfig {
    /// The agent's `[guest_actuator]` table with its `sys_root`. Here rather than in
    /// `actuate`, which stays a leaf that knows nothing of the whole config file.
    pub fn from_agent(cfg: &AgentConfig) -> Self {
        Self {
            sys_root: cfg.sys_root.clone(),
            ..cfg.guest_actuator.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use persona_shared::confdoc::{AGENT_KEYS, toml_setting};

    fn p() -> &'static Path {
        Path::new("/etc/persona/agent.toml")
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = AgentConfig::parse("", p()).unwrap();
        assert_eq!(c, AgentConfig::default());
        assert_eq!(c.sample_interval_ms, 1000);
        assert_eq!(c.batch_interval_s, 10);
        assert_eq!(c.outbox_max_bytes, 64 << 20);
        assert_eq!(c.max_frame_bytes, 1 << 20);
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/persona-agent"));
        assert!(c.coordinator.is_none() && c.purpose.is_none());
    }

    #[test]
    fn full_file_parses() {
        let text = r#"
            coordinator = "10.0.0.1:7443"
            state_dir = "/tmp/x"
            sample_interval_ms = 500
            batch_interval_s = 5
            [purpose]
            description = "fine-tuning a 7B model"
            software = ["pytorch"]
            data_gb = 80
        "#;
        let c = AgentConfig::parse(text, p()).unwrap();
        assert_eq!(c.coordinator.as_deref(), Some("10.0.0.1:7443"));
        let w = c.wire_purpose().unwrap();
        assert_eq!(w.software, vec!["pytorch".to_string()]);
        assert_eq!(w.data_gb, Some(80.0));
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let text = include_str!("../../packaging/agent.toml");
        AgentConfig::parse(text, Path::new("packaging/agent.toml")).unwrap();
    }

    #[test]
    fn unknown_key_names_the_key_and_the_file() {
        let e = AgentConfig::parse("sample_intervall_ms = 5\n", p())
            .unwrap_err()
            .to_string();
        assert!(e.contains("sample_intervall_ms"), "{e}");
        assert!(e.contains("/etc/persona/agent.toml"), "{e}");
        let e = AgentConfig::parse("[purpose]\ncolour = \"red\"\n", p())
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour") && e.contains("agent.toml"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("sample_interval_ms = 50", "sample_interval_ms"),
            ("sample_interval_ms = 60001", "sample_interval_ms"),
            ("batch_interval_s = 0", "batch_interval_s"),
            (
                "sample_interval_ms = 5000\nbatch_interval_s = 2",
                "batch_interval_s",
            ),
            (
                "sample_interval_ms = 100\nbatch_interval_s = 600",
                "batch_interval_s",
            ),
            ("process_every = 0", "process_every"),
            ("coordinator = \"nohost\"", "coordinator"),
            ("outbox_max_bytes = 10", "outbox_max_bytes"),
        ] {
            let e = AgentConfig::parse(text, p()).unwrap_err();
            assert!(
                matches!(&e, ConfigError::Invalid { key: k, .. } if *k == key),
                "{text}: {e}"
            );
            assert!(e.to_string().contains(key) && e.to_string().contains("agent.toml"));
        }
        // A type error is toml's, which names the key too.
        let e = AgentConfig::parse("sample_interval_ms = \"fast\"", p())
            .unwrap_err()
            .to_string();
        assert!(e.contains("sample_interval_ms"), "{e}");
    }

    #[test]
    fn missing_file_names_the_file() {
        let e = AgentConfig::load(Path::new("/nonexistent/agent.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/agent.toml"), "{e}");
    }

    /// Every documented default is the real default: setting a key to its documented
    /// default gives the same configuration as not setting it.
    #[test]
    fn documented_defaults_are_the_real_ones() {
        let p = Path::new("doc.toml");
        for k in AGENT_KEYS {
            let Some(d) = k.default else { continue };
            let text = toml_setting(k.key, d);
            let mut parsed =
                AgentConfig::parse(&text, p).unwrap_or_else(|e| panic!("{}: {e}", k.key));
            if k.key.starts_with("purpose.") {
                // Setting any purpose key creates the table; its content must be default.
                assert_eq!(parsed.purpose.take(), Some(Default::default()), "{}", k.key);
            }
            assert_eq!(
                parsed,
                AgentConfig::default(),
                "documented default of {}",
                k.key
            );
        }
    }

    /// Every key the parser accepts is documented, and nothing else: unknown keys are
    /// refused, so a documented key that parses exists.
    #[test]
    fn every_documented_key_exists_and_the_example_mentions_it() {
        let example = include_str!("../../packaging/agent.toml");
        for k in AGENT_KEYS {
            let leaf = k.key.rsplit('.').next().unwrap_or(k.key);
            assert!(
                example.contains(leaf),
                "packaging/agent.toml does not mention {}",
                k.key
            );
        }
        // Count the fields the struct has: the parser refuses unknown keys, and a key that
        // is not in the table would not be caught above, so check the struct's field count
        // through its Debug output.
        let dbg = format!("{:?}", AgentConfig::default());
        // + purpose (None by default) + detect, whose fields print too.
        let detect = AGENT_KEYS
            .iter()
            .filter(|k| k.key.starts_with("detect."))
            .count();
        // + guest_actuator, whose fields print too, with its sys_root (not a key).
        let guest = AGENT_KEYS
            .iter()
            .filter(|k| k.key.starts_with("guest_actuator."))
            .count()
            + 2;
        let top = AGENT_KEYS.iter().filter(|k| !k.key.contains('.')).count() + 2 + detect + guest;
        assert_eq!(
            dbg.matches(": ").count(),
            top,
            "AgentConfig fields vs documented keys: {dbg}"
        );
    }
}
