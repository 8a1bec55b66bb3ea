//! The `libvirt` actuator: drives `virsh` with explicit arguments (never a shell):
//! `setvcpus --live`, `setmem --live`, `blkdeviotune --live`, `domiftune --live`, and
//! reads back with `dominfo`, `vcpucount`, `blkdeviotune` and `domiftune`.
//!
//! Live changes are bounded by the domain's maximum vCPUs and maximum memory. Beyond
//! them the change needs a restart: with the operator's opt-in the actuator writes the
//! persistent definition (`setvcpus --config --maximum`, `setmaxmem --config`, ...), shuts
//! the domain down, waits for `shut off` and starts it again.
//!
//! What it is not: a libvirt API binding (virsh is the stable, scriptable interface
//! every libvirt host has), or a way to define domains.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use persona_shared::resize::{
    Capability, ChangeKind, DiskLimits, NetLimits, ResizeOutcome, ResizeRequest,
};
use serde::{Deserialize, Serialize};

use super::exec::run_program;
use super::{ActuateError, Actuator, Observed, gate};

fn default_virsh() -> PathBuf {
    PathBuf::from("/usr/bin/virsh")
}
fn default_timeout_ms() -> u64 {
    30_000
}
fn default_verify_timeout_ms() -> u64 {
    30_000
}
fn default_restart_timeout_ms() -> u64 {
    180_000
}

/// `[actuator.libvirt]`: the domain and how to reach libvirtd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LibvirtConfig {
    /// Domain name or UUID.
    pub domain: String,
    /// Connection URI (`virsh -c`), e.g. `qemu:///system`; unset = virsh's default.
    pub uri: Option<String>,
    #[serde(default = "default_virsh")]
    pub virsh: PathBuf,
    /// Deadline of one virsh run.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_verify_timeout_ms")]
    pub verify_timeout_ms: u64,
    /// How long a restart may take from shutdown to `shut off`.
    #[serde(default = "default_restart_timeout_ms")]
    pub restart_timeout_ms: u64,
}

impl LibvirtConfig {
    pub fn new(domain: impl Into<String>) -> Self {
        Self {
            domain: domain.into(),
            uri: None,
            virsh: default_virsh(),
            timeout_ms: default_timeout_ms(),
            verify_timeout_ms: default_verify_timeout_ms(),
            restart_timeout_ms: default_restart_timeout_ms(),
        }
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        if !valid_name(&self.domain) {
            return Err(format!(
                "libvirt.domain {:?} is not a domain name ([A-Za-z0-9._:+-], not starting with '-')",
                self.domain
            ));
        }
        if !self.virsh.is_absolute() {
            return Err("libvirt.virsh must be an absolute path".into());
        }
        if !(100..=600_000).contains(&self.timeout_ms) {
            return Err("libvirt.timeout_ms must be 100..=600000".into());
        }
        Ok(())
    }
}

/// Domain, disk and interface names passed to virsh: no option injection, no spaces.
fn valid_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:+-/".contains(&b))
}

/// `Key: value` lines (dominfo, blkdeviotune, domiftune) as a map with trimmed keys.
pub fn parse_colon_lines(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// `2097152 KiB` (dominfo's memory lines) in MiB.
pub fn parse_kib(v: &str) -> Option<u64> {
    let n = v.strip_suffix("KiB").unwrap_or(v).trim();
    n.parse::<u64>().ok().map(|k| k / 1024)
}

/// The virsh argument lists for the live changes of a request.
pub fn live_commands(domain: &str, req: &ResizeRequest) -> Vec<Vec<String>> {
    let s = |x: &str| x.to_owned();
    let mut out = Vec::new();
    if let Some(v) = req.vcpus {
        out.push(vec![s("setvcpus"), s(domain), v.to_string(), s("--live")]);
    }
    if let Some(m) = req.memory_mib {
        out.push(vec![s("setmem"), s(domain), format!("{m}M"), s("--live")]);
    }
    if let Some(d) = &req.disk {
        let mut c = vec![s("blkdeviotune"), s(domain), d.device.clone(), s("--live")];
        for (flag, v) in [
            ("--read-iops-sec", d.read_iops),
            ("--write-iops-sec", d.write_iops),
            ("--read-bytes-sec", d.read_bps),
            ("--write-bytes-sec", d.write_bps),
        ] {
            if let Some(v) = v {
                c.push(s(flag));
                c.push(v.to_string());
            }
        }
        out.push(c);
    }
    if let Some(n) = &req.net {
        let mut c = vec![s("domiftune"), s(domain), n.interface.clone(), s("--live")];
        if let Some(i) = n.inbound_kibps {
            c.push(s("--inbound"));
            c.push(i.to_string());
        }
        if let Some(o) = n.outbound_kibps {
            c.push(s("--outbound"));
            c.push(o.to_string());
        }
        out.push(c);
    }
    out
}

/// The virsh argument lists that write a new size into the persistent definition.
pub fn config_commands(domain: &str, req: &ResizeRequest) -> Vec<Vec<String>> {
    let s = |x: &str| x.to_owned();
    let mut out = Vec::new();
    if let Some(v) = req.vcpus {
        let n = v.to_string();
        out.push(vec![
            s("setvcpus"),
            s(domain),
            n.clone(),
            s("--config"),
            s("--maximum"),
        ]);
        out.push(vec![s("setvcpus"), s(domain), n, s("--config")]);
    }
    if let Some(m) = req.memory_mib {
        out.push(vec![
            s("setmaxmem"),
            s(domain),
            format!("{m}M"),
            s("--config"),
        ]);
        out.push(vec![s("setmem"), s(domain), format!("{m}M"), s("--config")]);
    }
    out
}

/// `blkdeviotune DOMAIN DEV` output as limits.
pub fn parse_blkdeviotune(device: &str, text: &str) -> DiskLimits {
    let m = parse_colon_lines(text);
    let n = |k: &str| m.get(k).and_then(|v| v.parse::<u64>().ok());
    DiskLimits {
        device: device.to_owned(),
        read_iops: n("read_iops_sec"),
        write_iops: n("write_iops_sec"),
        read_bps: n("read_bytes_sec"),
        write_bps: n("write_bytes_sec"),
    }
}

/// `domiftune DOMAIN IFACE` output as limits.
pub fn parse_domiftune(interface: &str, text: &str) -> NetLimits {
    let m = parse_colon_lines(text);
    let n = |k: &str| m.get(k).and_then(|v| v.parse::<u64>().ok());
    NetLimits {
        interface: interface.to_owned(),
        inbound_kibps: n("inbound.average"),
        outbound_kibps: n("outbound.average"),
    }
}

/// The libvirt actuator of one domain.
#[derive(Debug, Clone)]
pub struct Libvirt {
    cfg: LibvirtConfig,
}

impl Libvirt {
    pub fn new(cfg: LibvirtConfig) -> Self {
        Self { cfg }
    }

    /// Runs `virsh [-c URI] ARGS..` and returns its stdout.
    async fn virsh(&self, args: &[String]) -> Result<String, ActuateError> {
        let mut full = Vec::new();
        if let Some(uri) = &self.cfg.uri {
            full.push("-c".to_owned());
            full.push(uri.clone());
        }
        full.extend(args.iter().cloned());
        let out = run_program(
            &self.cfg.virsh,
            &full,
            b"",
            Duration::from_millis(self.cfg.timeout_ms),
        )
        .await?;
        let what = args.first().cloned().unwrap_or_default();
        if !out.status.success() {
            return Err(ActuateError::Refused {
                target: format!("libvirt domain {}", self.cfg.domain),
                what: format!("virsh {what}"),
                detail: out.stderr_tail,
            });
        }
        String::from_utf8(out.stdout).map_err(|e| ActuateError::Protocol {
            target: format!("libvirt domain {}", self.cfg.domain),
            what: format!("virsh {what}"),
            detail: e.to_string(),
        })
    }

    fn protocol(&self, what: &str, detail: String) -> ActuateError {
        ActuateError::Protocol {
            target: format!("libvirt domain {}", self.cfg.domain),
            what: what.into(),
            detail,
        }
    }

    async fn vcpucount(&self, which: &str) -> Result<u32, ActuateError> {
        let d = self.cfg.domain.clone();
        let out = self
            .virsh(&["vcpucount".into(), d, "--live".into(), which.into()])
            .await?;
        out.trim()
            .parse()
            .map_err(|_| self.protocol("virsh vcpucount", format!("not a number: {out:?}")))
    }

    async fn restart(&self) -> Result<(), ActuateError> {
        let d = self.cfg.domain.clone();
        self.virsh(&["shutdown".into(), d.clone()]).await?;
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.cfg.restart_timeout_ms);
        // Bounded: one domstate per second until the deadline.
        loop {
            let state = self.virsh(&["domstate".into(), d.clone()]).await?;
            if state.trim() == "shut off" {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ActuateError::Timeout {
                    target: format!("libvirt domain {d}"),
                    what: "shutdown before restart".into(),
                    after_ms: self.cfg.restart_timeout_ms,
                });
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        self.virsh(&["start".into(), d]).await?;
        Ok(())
    }
}

impl Actuator for Libvirt {
    fn name(&self) -> &'static str {
        "libvirt"
    }

    /// Everything is live within the domain's maxima; beyond them vCPUs and memory
    /// need a restart (see `plan_from_capabilities`).
    fn capability(&self, kind: ChangeKind) -> Capability {
        match kind {
            ChangeKind::VcpusUp
            | ChangeKind::VcpusDown
            | ChangeKind::MemoryUp
            | ChangeKind::MemoryDown
            | ChangeKind::Disk
            | ChangeKind::Net => Capability::Live,
        }
    }

    fn can_restart(&self) -> bool {
        true
    }

    async fn query(&self, about: &ResizeRequest) -> Result<Observed, ActuateError> {
        let d = self.cfg.domain.clone();
        let info = parse_colon_lines(&self.virsh(&["dominfo".into(), d.clone()]).await?);
        let mut seen = Observed {
            vcpus: Some(self.vcpucount("--active").await?),
            max_vcpus: Some(self.vcpucount("--maximum").await?),
            memory_mib: info.get("Used memory").and_then(|v| parse_kib(v)),
            max_memory_mib: info.get("Max memory").and_then(|v| parse_kib(v)),
            ..Observed::default()
        };
        if seen.memory_mib.is_none() {
            return Err(self.protocol("virsh dominfo", "no Used memory line".into()));
        }
        if let Some(disk) = &about.disk {
            let out = self
                .virsh(&[
                    "blkdeviotune".into(),
                    d.clone(),
                    disk.device.clone(),
                    "--live".into(),
                ])
                .await?;
            seen.disks.push(parse_blkdeviotune(&disk.device, &out));
        }
        if let Some(net) = &about.net {
            let out = self
                .virsh(&[
                    "domiftune".into(),
                    d,
                    net.interface.clone(),
                    "--live".into(),
                ])
                .await?;
            seen.nets.push(parse_domiftune(&net.interface, &out));
        }
        Ok(seen)
    }

    async fn apply(&self, req: &ResizeRequest) -> Result<ResizeOutcome, ActuateError> {
        super::validate_request(req)?;
        for name in req
            .disk
            .iter()
            .map(|d| &d.device)
            .chain(req.net.iter().map(|n| &n.interface))
        {
            if !valid_name(name) {
                return Err(ActuateError::Invalid(format!(
                    "{name:?} is not a libvirt device name"
                )));
            }
        }
        let plan = self.plan(req).await?;
        let needs_restart = gate(self.name(), req, &plan)?;
        let mut applied = Vec::new();
        // Changes for a restart are left out of the live commands: with the opt-in they
        // go into the definition, without it they are reported.
        let live_only = super::expected_after(
            &ResizeRequest {
                allow_restart: false,
                ..req.clone()
            },
            &plan,
        );
        for args in live_commands(&self.cfg.domain, &live_only) {
            self.virsh(&args).await?;
            applied.push(format!("virsh {}", args.join(" ")));
        }
        if req.allow_restart && !plan.restart.is_empty() {
            let mut persistent = ResizeRequest::default();
            for c in &plan.restart {
                match c.kind {
                    ChangeKind::VcpusUp | ChangeKind::VcpusDown => persistent.vcpus = req.vcpus,
                    ChangeKind::MemoryUp | ChangeKind::MemoryDown => {
                        persistent.memory_mib = req.memory_mib;
                    }
                    _ => {}
                }
            }
            for args in config_commands(&self.cfg.domain, &persistent) {
                self.virsh(&args).await?;
                applied.push(format!("virsh {}", args.join(" ")));
            }
            self.restart().await?;
            applied.push(format!("domain {} restarted", self.cfg.domain));
        }
        Ok(ResizeOutcome {
            applied,
            needs_restart,
            verified: false,
            observed_vcpus: None,
            observed_memory_mib: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_explicit_argument_lists() {
        let req = ResizeRequest {
            vcpus: Some(4),
            memory_mib: Some(2048),
            disk: Some(DiskLimits {
                device: "vda".into(),
                read_iops: Some(500),
                write_bps: Some(0),
                ..DiskLimits::default()
            }),
            net: Some(NetLimits {
                interface: "vnet0".into(),
                inbound_kibps: Some(1000),
                outbound_kibps: None,
            }),
            allow_restart: false,
        };
        let c = live_commands("web-1", &req);
        assert_eq!(c[0], ["setvcpus", "web-1", "4", "--live"]);
        assert_eq!(c[1], ["setmem", "web-1", "2048M", "--live"]);
        assert_eq!(
            c[2],
            [
                "blkdeviotune",
                "web-1",
                "vda",
                "--live",
                "--read-iops-sec",
                "500",
                "--write-bytes-sec",
                "0"
            ]
        );
        assert_eq!(
            c[3],
            ["domiftune", "web-1", "vnet0", "--live", "--inbound", "1000"]
        );
        let p = config_commands("web-1", &req);
        assert_eq!(p[0], ["setvcpus", "web-1", "4", "--config", "--maximum"]);
        assert_eq!(p[2], ["setmaxmem", "web-1", "2048M", "--config"]);
    }

    #[test]
    fn parses_virsh_output() {
        let dominfo = "Id:             3\nName:           web-1\nUUID:           1b4e28ba-2fa1-11d2-883f-0016d3cca427\nOS Type:        hvm\nState:          running\nCPU(s):         2\nCPU time:       12.3s\nMax memory:     4194304 KiB\nUsed memory:    2097152 KiB\nPersistent:     yes\n";
        let m = parse_colon_lines(dominfo);
        assert_eq!(m.get("CPU(s)").map(String::as_str), Some("2"));
        assert_eq!(m.get("Used memory").and_then(|v| parse_kib(v)), Some(2048));
        assert_eq!(m.get("Max memory").and_then(|v| parse_kib(v)), Some(4096));
        assert_eq!(parse_kib("lots"), None);
        let tune = "total_bytes_sec: 0\nread_bytes_sec : 1048576\nwrite_bytes_sec: 0\ntotal_iops_sec : 0\nread_iops_sec  : 500\nwrite_iops_sec : 0\n";
        let d = parse_blkdeviotune("vda", tune);
        assert_eq!(
            (d.read_iops, d.read_bps, d.write_iops),
            (Some(500), Some(1_048_576), Some(0))
        );
        let ift =
            "inbound.average: 1000\ninbound.peak   : 0\ninbound.burst  : 0\noutbound.average: 0\n";
        let n = parse_domiftune("vnet0", ift);
        assert_eq!((n.inbound_kibps, n.outbound_kibps), (Some(1000), Some(0)));
    }

    #[test]
    fn names_that_could_be_options_are_refused() {
        assert!(valid_name("web-1"));
        assert!(valid_name("1b4e28ba-2fa1-11d2-883f-0016d3cca427"));
        for bad in ["--all", "a b", "x;rm", "", "é"] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(LibvirtConfig::new("--help").check().is_err());
        assert!(LibvirtConfig::new("web-1").check().is_ok());
    }
}
