//! The one table that documents every configuration key: name, default, what values are
//! allowed and what the key means. `docs/configuration.md` is rendered from these tables
//! (the agent's here, the coordinator's in `persona_coordinator::config`) by
//! [`render_section`], and tests check both that the document is current and that every
//! documented default is the one the code really uses. Only documentation lives here; the
//! parsing and checking stay in the config modules.

use std::fmt::Write as _;

/// One documented key.
#[derive(Debug, Clone, Copy)]
pub struct KeyDoc {
    /// Dotted TOML path, e.g. `purpose.data_gb`.
    pub key: &'static str,
    /// TOML type as an operator writes it.
    pub ty: &'static str,
    /// The default as a TOML value, or `None` when the key is unset by default.
    pub default: Option<&'static str>,
    /// What values are accepted.
    pub allowed: &'static str,
    pub meaning: &'static str,
}

/// Every key of the agent's config file (`persona-agent run --config FILE`).
pub const AGENT_KEYS: &[KeyDoc] = &[
    KeyDoc {
        key: "coordinator",
        ty: "string",
        default: None,
        allowed: "HOST:PORT",
        meaning: "The coordinator's QUIC address. Unset: the address given at enrollment (kept in the state dir).",
    },
    KeyDoc {
        key: "state_dir",
        ty: "path",
        default: Some("\"/var/lib/persona-agent\""),
        allowed: "a directory the agent can write (created 0700 at enrollment)",
        meaning: "Identity (key.pem, cert.pem, ca.pem, identity.toml) and the outbox (outbox.db).",
    },
    KeyDoc {
        key: "sample_interval_ms",
        ty: "integer",
        default: Some("1000"),
        allowed: "100..=60000",
        meaning: "Sampling interval. The coordinator's Welcome may override it.",
    },
    KeyDoc {
        key: "batch_interval_s",
        ty: "integer",
        default: Some("10"),
        allowed: "1..=600, at least one sample interval and at most 3600 samples",
        meaning: "Seconds of samples per telemetry batch. The coordinator's Welcome may override it.",
    },
    KeyDoc {
        key: "outbox_max_bytes",
        ty: "integer",
        default: Some("67108864"),
        allowed: "at least max_frame_bytes",
        meaning: "Bound of the on-disk outbox while the coordinator is unreachable; beyond it the oldest batches are dropped and counted.",
    },
    KeyDoc {
        key: "top_n",
        ty: "integer",
        default: Some("10"),
        allowed: "0..=1000",
        meaning: "Processes listed by CPU and by memory.",
    },
    KeyDoc {
        key: "process_every",
        ty: "integer",
        default: Some("5"),
        allowed: "1 or more",
        meaning: "Scan processes every this many ticks (a scan costs far more than a tick).",
    },
    KeyDoc {
        key: "max_frame_bytes",
        ty: "integer",
        default: Some("1048576"),
        allowed: "4096..=67108864",
        meaning: "Hard maximum size of one protocol frame, sent or received.",
    },
    KeyDoc {
        key: "proc_root",
        ty: "path",
        default: Some("\"/proc\""),
        allowed: "a procfs mount",
        meaning: "Where procfs is mounted (only changed for tests).",
    },
    KeyDoc {
        key: "sys_root",
        ty: "path",
        default: Some("\"/sys\""),
        allowed: "a sysfs mount",
        meaning: "Where sysfs is mounted (only changed for tests).",
    },
    KeyDoc {
        key: "metrics_listen",
        ty: "string",
        default: None,
        allowed: "a loopback IP:PORT, e.g. \"127.0.0.1:9464\"",
        meaning: "Serve the agent's own health (outbox depth, dropped batches, collector errors, CPU, RSS, link state) as Prometheus text on http://ADDR/metrics. Unset: off.",
    },
    KeyDoc {
        key: "policy_file",
        ty: "path",
        default: Some("\"/etc/persona/policy.toml\""),
        allowed: "a TOML policy file (missing = deny all)",
        meaning: "The local policy: which coordinator commands (resize, config and model updates, packages, images, downloads) this VM allows. Denies by default; re-read for every command. See \"Agent policy\" below.",
    },
    KeyDoc {
        key: "mirror_window_s",
        ty: "integer",
        default: Some("300"),
        allowed: "10..=3600",
        meaning: "Behavioural mirroring: length of the sliding window the persona is inferred from.",
    },
    KeyDoc {
        key: "mirror_step_s",
        ty: "integer",
        default: Some("10"),
        allowed: "1..=3600",
        meaning: "Behavioural mirroring: how often the model runs on the window; the latest distribution goes out with the next batch.",
    },
    KeyDoc {
        key: "purpose.description",
        ty: "string",
        default: Some("\"\""),
        allowed: "free text",
        meaning: "What the VM is for, as its owner declared it, e.g. \"fine-tuning a 7B model with LoRA\".",
    },
    KeyDoc {
        key: "purpose.software",
        ty: "array of strings",
        default: Some("[]"),
        allowed: "package or tool names",
        meaning: "Software the owner means to run, e.g. [\"pytorch\", \"cuda\"].",
    },
    KeyDoc {
        key: "purpose.data_gb",
        ty: "float",
        default: None,
        allowed: "a number of GB, 0 or more",
        meaning: "Size of the working data set. The whole [purpose] table is optional; when present it is sent to the coordinator in Hello.",
    },
    KeyDoc {
        key: "detect.enabled",
        ty: "boolean",
        default: Some("true"),
        allowed: "true or false",
        meaning: "Run the pressure and anomaly detectors. Their events go to the coordinator on the control stream at once, kept in the outbox until acknowledged.",
    },
    KeyDoc {
        key: "detect.ignore",
        ty: "array of strings",
        default: Some("[]"),
        allowed: "cpu, memory, io, network",
        meaning: "Resources never reported under pressure, for VMs whose job is to saturate one (a render farm's CPU).",
    },
    KeyDoc {
        key: "detect.raise_after",
        ty: "integer",
        default: Some("2"),
        allowed: "1..=600",
        meaning: "Debounce: consecutive samples a pressure condition must hold before an event is raised (one spike is not an event). The event's `since` is the first of them.",
    },
    KeyDoc {
        key: "detect.clear_after",
        ty: "integer",
        default: Some("5"),
        allowed: "1..=3600",
        meaning: "Consecutive samples below the relaxed thresholds (80% of an upper, 125% of a lower one) before pressure is cleared (hysteresis).",
    },
    KeyDoc {
        key: "detect.cpu_busy_pct",
        ty: "float",
        default: Some("90.0"),
        allowed: "0..=100 (0 = off)",
        meaning: "CPU pressure: busy time (user, nice, system, irq, softirq) in % of all online vCPUs. Critical when the run queue is over its threshold too.",
    },
    KeyDoc {
        key: "detect.cpu_runqueue_per_vcpu",
        ty: "float",
        default: Some("2.0"),
        allowed: "above 0",
        meaning: "CPU pressure: runnable tasks per online vCPU.",
    },
    KeyDoc {
        key: "detect.cpu_steal_pct",
        ty: "float",
        default: Some("10.0"),
        allowed: "0..=100 (0 = off)",
        meaning: "CPU pressure: time stolen by the hypervisor, % of capacity (critical at twice this).",
    },
    KeyDoc {
        key: "detect.mem_available_pct",
        ty: "float",
        default: Some("10.0"),
        allowed: "0..=100 (0 = off)",
        meaning: "Memory pressure: MemAvailable below this % of MemTotal (critical at half).",
    },
    KeyDoc {
        key: "detect.mem_psi_some_pct",
        ty: "float",
        default: Some("10.0"),
        allowed: "0..=100 (0 = off)",
        meaning: "Memory pressure: PSI memory \"some\" stall in % of wall time (critical when \"full\" crosses it).",
    },
    KeyDoc {
        key: "detect.mem_major_faults_per_s",
        ty: "float",
        default: Some("1000.0"),
        allowed: "above 0",
        meaning: "Memory pressure: major page faults per second (critical at 5x).",
    },
    KeyDoc {
        key: "detect.mem_exhaustion_s",
        ty: "float",
        default: Some("300.0"),
        allowed: "0 (off) or more",
        meaning: "Memory pressure: seconds until MemAvailable reaches zero at its decline over the last minute (critical at a fifth). OOM kills are always critical pressure, at once.",
    },
    KeyDoc {
        key: "detect.io_psi_some_pct",
        ty: "float",
        default: Some("20.0"),
        allowed: "0..=100 (0 = off)",
        meaning: "I/O pressure: PSI io \"some\" stall in % of wall time (critical when \"full\" crosses it).",
    },
    KeyDoc {
        key: "detect.io_busy_pct",
        ty: "float",
        default: Some("90.0"),
        allowed: "0..=100 (0 = off)",
        meaning: "I/O pressure: the busiest disk's time with requests in flight, % of wall time (critical when its queue is over io_queue_depth too).",
    },
    KeyDoc {
        key: "detect.io_queue_depth",
        ty: "float",
        default: Some("32.0"),
        allowed: "above 0",
        meaning: "I/O pressure: most requests in flight on one disk.",
    },
    KeyDoc {
        key: "detect.net_utilization_pct",
        ty: "float",
        default: Some("90.0"),
        allowed: "0..=100 (0 = off)",
        meaning: "Network pressure: the busier direction of one interface in % of its link speed (critical with drops over net_drops_per_s). Interfaces without a known speed are not checked.",
    },
    KeyDoc {
        key: "detect.net_drops_per_s",
        ty: "float",
        default: Some("100.0"),
        allowed: "above 0",
        meaning: "Network pressure: dropped packets per second over all interfaces but loopback.",
    },
    KeyDoc {
        key: "detect.nic_speed_mbps",
        ty: "table",
        default: Some("{}"),
        allowed: "interface name = Mbit/s, above 0",
        meaning: "Link speeds for interfaces whose driver reports none (virtio-net often) or whose provisioned bandwidth is lower, e.g. { eth0 = 1000 }.",
    },
    KeyDoc {
        key: "detect.anomaly_warmup_min",
        ty: "integer",
        default: Some("15"),
        allowed: "1..=1440",
        meaning: "Minutes of history before anomaly detection (regime change, leak) starts.",
    },
    KeyDoc {
        key: "detect.regime_z",
        ty: "float",
        default: Some("6.0"),
        allowed: "above 0",
        meaning: "Change of regime: distance from the per-minute median in scaled MADs that the last regime_minutes minutes must all exceed, on the same side.",
    },
    KeyDoc {
        key: "detect.regime_minutes",
        ty: "integer",
        default: Some("3"),
        allowed: "1..=60",
        meaning: "Change of regime: minutes a series must stay off its baseline.",
    },
    KeyDoc {
        key: "detect.runaway_cpu_pct",
        ty: "float",
        default: Some("90.0"),
        allowed: "above 0",
        meaning: "Runaway process: % of one core a process uses in every process scan ...",
    },
    KeyDoc {
        key: "detect.runaway_minutes",
        ty: "integer",
        default: Some("10"),
        allowed: "1..=1440",
        meaning: "... for this many minutes without a break.",
    },
    KeyDoc {
        key: "detect.leak_minutes",
        ty: "integer",
        default: Some("30"),
        allowed: "5..=120",
        meaning: "Leak: minutes over which memory used must climb along a straight line (R² >= 0.9).",
    },
    KeyDoc {
        key: "detect.leak_min_pct",
        ty: "float",
        default: Some("5.0"),
        allowed: "0..=100",
        meaning: "Leak: least climb over leak_minutes, % of MemTotal.",
    },
    KeyDoc {
        key: "guest_actuator.target",
        ty: "string",
        default: Some("\"machine\""),
        allowed: "\"machine\" or \"slice\"",
        meaning: "What a resize command changes in the guest. machine: brings hot-added CPUs online and takes CPUs offline, onlines hot-added memory blocks. slice: sets CPU, memory and I/O limits on the delegated cgroup cgroup_parent/cgroup_group (sharing a VM, not growing it).",
    },
    KeyDoc {
        key: "guest_actuator.cpu_floor",
        ty: "integer",
        default: Some("1"),
        allowed: "1..=8192",
        meaning: "Fewest online vCPUs a resize may leave; cpu0 is never taken offline either way. The root helper enforces it too.",
    },
    KeyDoc {
        key: "guest_actuator.helper_socket",
        ty: "path",
        default: Some("\"/run/persona-actuator/actuator.sock\""),
        allowed: "a Unix socket path",
        meaning: "Where persona-actuator (the root helper) listens; privileged writes go there. Remove the key to write directly (only when the agent itself runs as root).",
    },
    KeyDoc {
        key: "guest_actuator.cgroup_root",
        ty: "path",
        default: Some("\"/sys/fs/cgroup\""),
        allowed: "a cgroup v2 mount, or the directory holding the v1 controller mounts",
        meaning: "Where the cgroup hierarchy is mounted (slice mode).",
    },
    KeyDoc {
        key: "guest_actuator.cgroup_version",
        ty: "string",
        default: Some("\"auto\""),
        allowed: "\"auto\", \"v1\" or \"v2\"",
        meaning: "auto: v2 when cgroup_root has cgroup.controllers, else v1 (cpu, memory, blkio controllers).",
    },
    KeyDoc {
        key: "guest_actuator.cgroup_parent",
        ty: "string",
        default: Some("\"persona.slice\""),
        allowed: "1 to 64 of [a-z0-9._-]",
        meaning: "The slice delegated to Persona under cgroup_root; the helper writes nowhere else in the cgroup tree.",
    },
    KeyDoc {
        key: "guest_actuator.cgroup_group",
        ty: "string",
        default: Some("\"shared\""),
        allowed: "1 to 64 of [a-z0-9-]",
        meaning: "The group inside the slice that slice mode limits (created when missing).",
    },
    KeyDoc {
        key: "guest_actuator.cpu_period_us",
        ty: "integer",
        default: Some("100000"),
        allowed: "1000..=1000000",
        meaning: "CFS period of CPU quotas: N vCPUs become a quota of N periods per period.",
    },
];

fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// Renders one markdown section: a heading, an intro paragraph and the key table.
pub fn render_section(title: &str, intro: &str, keys: &[KeyDoc]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## {title}\n\n{intro}\n");
    let _ = writeln!(out, "| key | type | default | allowed | meaning |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    for k in keys {
        let default = k.default.map_or("unset".to_owned(), |d| format!("`{d}`"));
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} |",
            k.key,
            k.ty,
            cell(&default),
            cell(k.allowed),
            cell(k.meaning)
        );
    }
    out
}

/// A TOML document that sets `key` (dotted, at most one table level) to `value`.
pub fn toml_setting(key: &str, value: &str) -> String {
    match key.split_once('.') {
        Some((table, k)) => format!("[{table}]\n{k} = {value}\n"),
        None => format!("{key} = {value}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentConfig;
    use std::path::Path;

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
