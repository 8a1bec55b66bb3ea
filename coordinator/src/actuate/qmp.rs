//! The `qmp` actuator: QEMU's monitor protocol (QMP) over a unix socket or TCP.
//!
//! - vCPUs: `query-hotpluggable-cpus` lists the slots up to `maxcpus`; empty slots are
//!   filled with `device_add`, hot-plugged vCPUs are removed with `device_del` (highest
//!   first; the boot vCPUs cannot be removed). Removal is a request to the guest: QEMU
//!   removes the vCPU when the guest's ACPI ejects it, so verification waits for
//!   `query-cpus-fast` to show it gone.
//! - memory: virtio-mem devices (`qom-set requested-size`, read back with
//!   `query-memory-devices`) grow the VM above its boot memory; the virtio balloon
//!   (`balloon`, `query-balloon`) shrinks it below. The balloon's `actual` and
//!   virtio-mem's `size` move only when the guest's driver acts, so that is what
//!   verification waits for.
//! - disk: `block_set_io_throttle`, read back with `query-block`.
//!
//! Network bandwidth has no QMP command and QMP cannot restart a VM with a new shape, so
//! those changes are refused. The protocol client is the ~150 lines below (greeting,
//! `qmp_capabilities`, one JSON object per line, events set aside, every reply length-
//! and shape-checked); a crate such as qapi-qmp would bring the whole QAPI schema as
//! generated types for the eight commands used here.
//!
//! What it is not: a general QMP library, or a way to start QEMU.

use std::path::PathBuf;
use std::time::Duration;

use persona_shared::resize::{
    Capability, ChangeKind, DiskLimits, ResizeOutcome, ResizePlan, ResizeRequest,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::{ActuateError, Actuator, Observed, gate, plan_from_capabilities};

/// Longest QMP message accepted (query-qmp-schema is the largest reply QEMU sends, about
/// 200 KiB; the queries used here are a few KiB).
const MAX_LINE: u64 = 1 << 20;
/// Events kept while waiting for replies (only for diagnostics).
const MAX_EVENTS: usize = 64;
const MIB: u64 = 1 << 20;

fn default_timeout_ms() -> u64 {
    5_000
}
fn default_verify_timeout_ms() -> u64 {
    30_000
}

/// `[actuator.qmp]`: where QEMU's QMP listens (exactly one of `socket` and `tcp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QmpConfig {
    /// Unix socket of `-qmp unix:PATH,server=on,wait=off`.
    pub socket: Option<PathBuf>,
    /// HOST:PORT of `-qmp tcp:HOST:PORT,server=on,wait=off`.
    pub tcp: Option<String>,
    /// Deadline of each QMP command.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How long a resize waits for the guest to show the new size.
    #[serde(default = "default_verify_timeout_ms")]
    pub verify_timeout_ms: u64,
}

impl QmpConfig {
    /// A unix-socket configuration with the default deadlines.
    pub fn unix(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: Some(socket.into()),
            tcp: None,
            timeout_ms: default_timeout_ms(),
            verify_timeout_ms: default_verify_timeout_ms(),
        }
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        match (&self.socket, &self.tcp) {
            (Some(_), None) => {}
            (None, Some(t)) if persona_shared::addr::looks_like_host_port(t) => {}
            (None, Some(t)) => return Err(format!("qmp.tcp {t:?} is not HOST:PORT")),
            _ => return Err("qmp needs exactly one of socket and tcp".into()),
        }
        if !(100..=600_000).contains(&self.timeout_ms) {
            return Err("qmp.timeout_ms must be 100..=600000".into());
        }
        if self.verify_timeout_ms > 3_600_000 {
            return Err("qmp.verify_timeout_ms must be at most 3600000".into());
        }
        Ok(())
    }

    fn target(&self) -> String {
        match (&self.socket, &self.tcp) {
            (Some(p), _) => format!("qmp unix:{}", p.display()),
            (None, Some(t)) => format!("qmp tcp:{t}"),
            (None, None) => "qmp (no address)".into(),
        }
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One QMP session: connected, greeted and in command mode.
pub struct Session {
    stream: BufReader<Box<dyn Stream>>,
    target: String,
    timeout: Duration,
    next_id: u64,
    /// Events received while waiting for replies, oldest first (bounded).
    pub events: Vec<Value>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("target", &self.target)
            .finish()
    }
}

impl Session {
    /// Connects, reads the greeting and negotiates command mode.
    pub async fn connect(cfg: &QmpConfig) -> Result<Session, ActuateError> {
        let target = cfg.target();
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let connect = async {
            let s: Box<dyn Stream> = match (&cfg.socket, &cfg.tcp) {
                (Some(p), _) => Box::new(tokio::net::UnixStream::connect(p).await?),
                (None, Some(t)) => Box::new(tokio::net::TcpStream::connect(t.as_str()).await?),
                (None, None) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "neither socket nor tcp is configured",
                    ));
                }
            };
            Ok(s)
        };
        let stream = match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(ActuateError::Connect { target, source }),
            Err(_) => {
                return Err(ActuateError::Timeout {
                    target,
                    what: "connect".into(),
                    after_ms: cfg.timeout_ms,
                });
            }
        };
        let mut s = Session {
            stream: BufReader::new(stream),
            target,
            timeout,
            next_id: 1,
            events: Vec::new(),
        };
        let greeting = s.read_message("greeting").await?;
        if !greeting.get("QMP").is_some_and(Value::is_object) {
            return Err(s.protocol("greeting", format!("not a QMP greeting: {greeting:?}")));
        }
        s.execute("qmp_capabilities", None).await?;
        Ok(s)
    }

    fn protocol(&self, what: &str, detail: String) -> ActuateError {
        ActuateError::Protocol {
            target: self.target.clone(),
            what: what.into(),
            detail,
        }
    }

    async fn read_message(&mut self, what: &str) -> Result<Map<String, Value>, ActuateError> {
        let mut line = String::new();
        let mut limited = (&mut self.stream).take(MAX_LINE);
        let read = limited.read_line(&mut line);
        let n = match tokio::time::timeout(self.timeout, read).await {
            Ok(Ok(n)) => n,
            Ok(Err(source)) => {
                return Err(ActuateError::Io {
                    target: self.target.clone(),
                    source,
                });
            }
            Err(_) => {
                return Err(ActuateError::Timeout {
                    target: self.target.clone(),
                    what: what.into(),
                    after_ms: self.timeout.as_millis() as u64,
                });
            }
        };
        if n == 0 {
            return Err(self.protocol(what, "connection closed".into()));
        }
        if !line.ends_with('\n') {
            return Err(self.protocol(what, format!("message longer than {MAX_LINE} bytes")));
        }
        match serde_json::from_str::<Value>(&line) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(other) => Err(self.protocol(what, format!("not a JSON object: {other}"))),
            Err(e) => Err(self.protocol(what, format!("not JSON: {e}"))),
        }
    }

    /// Runs one command and returns its `return` value; a QMP error becomes
    /// [`ActuateError::Refused`] with QEMU's class and description.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, ActuateError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let (Some(a), Some(m)) = (arguments, msg.as_object_mut()) {
            m.insert("arguments".into(), a);
        }
        let mut line = msg.to_string();
        line.push('\n');
        let write = self.stream.write_all(line.as_bytes());
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                return Err(ActuateError::Io {
                    target: self.target.clone(),
                    source,
                });
            }
            Err(_) => {
                return Err(ActuateError::Timeout {
                    target: self.target.clone(),
                    what: command.into(),
                    after_ms: self.timeout.as_millis() as u64,
                });
            }
        }
        // Events may arrive before the reply; a bounded number of them is skipped.
        for _ in 0..1024 {
            let mut m = self.read_message(command).await?;
            if m.contains_key("event") {
                if self.events.len() == MAX_EVENTS {
                    self.events.remove(0);
                }
                self.events.push(Value::Object(m));
                continue;
            }
            if m.get("id").and_then(Value::as_u64) != Some(id) {
                return Err(self.protocol(command, format!("reply for another id: {m:?}")));
            }
            if let Some(r) = m.remove("return") {
                return Ok(r);
            }
            if let Some(e) = m.get("error") {
                let class = e.get("class").and_then(Value::as_str).unwrap_or("?");
                let desc = e.get("desc").and_then(Value::as_str).unwrap_or("?");
                return Err(ActuateError::Refused {
                    target: self.target.clone(),
                    what: command.into(),
                    detail: format!("{class}: {desc}"),
                });
            }
            return Err(self.protocol(command, format!("neither return nor error: {m:?}")));
        }
        Err(self.protocol(command, "more than 1024 events before the reply".into()))
    }
}

/// A hot-pluggable CPU slot as `query-hotpluggable-cpus` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuSlot {
    pub driver: String,
    pub vcpus: u32,
    pub props: Map<String, Value>,
    /// Set when a vCPU occupies the slot.
    pub qom_path: Option<String>,
}

impl CpuSlot {
    /// (socket, die, cluster, core, thread): the order slots are filled in.
    fn order(&self) -> [u64; 5] {
        let p = |k: &str| self.props.get(k).and_then(Value::as_u64).unwrap_or(0);
        [
            p("socket-id"),
            p("die-id"),
            p("cluster-id"),
            p("core-id"),
            p("thread-id"),
        ]
    }

    /// The qdev id of a vCPU added with `device_add` (boot vCPUs have none).
    pub fn device_id(&self) -> Option<&str> {
        self.qom_path
            .as_deref()
            .and_then(|p| p.strip_prefix("/machine/peripheral/"))
            .filter(|id| !id.is_empty() && !id.contains('/'))
    }
}

/// Parses `query-hotpluggable-cpus`.
pub fn parse_cpu_slots(v: &Value) -> Result<Vec<CpuSlot>, String> {
    let list = v.as_array().ok_or("not a list")?;
    list.iter()
        .map(|s| {
            let driver = s
                .get("type")
                .and_then(Value::as_str)
                .ok_or("slot without type")?;
            let vcpus = s
                .get("vcpus-count")
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0)
                .ok_or("slot without a vcpus-count")?;
            let props = s
                .get("props")
                .and_then(Value::as_object)
                .ok_or("slot without props")?;
            if props.values().any(|p| !p.is_u64()) {
                return Err("slot props are not all integers".into());
            }
            Ok(CpuSlot {
                driver: driver.to_owned(),
                vcpus,
                props: props.clone(),
                qom_path: s.get("qom-path").and_then(Value::as_str).map(str::to_owned),
            })
        })
        .collect()
}

/// A virtio-mem device as `query-memory-devices` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtioMem {
    pub id: String,
    pub size: u64,
    pub requested_size: u64,
    pub max_size: u64,
    pub block_size: u64,
}

/// Parses the virtio-mem entries of `query-memory-devices` (DIMMs and others are fixed
/// at boot and ignored).
pub fn parse_virtio_mem(v: &Value) -> Result<Vec<VirtioMem>, String> {
    let list = v.as_array().ok_or("not a list")?;
    let mut out = Vec::new();
    for d in list {
        if d.get("type").and_then(Value::as_str) != Some("virtio-mem") {
            continue;
        }
        let data = d.get("data").ok_or("virtio-mem without data")?;
        let num = |k: &str| {
            data.get(k)
                .and_then(Value::as_u64)
                .ok_or(format!("virtio-mem without {k}"))
        };
        let Some(id) = data.get("id").and_then(Value::as_str) else {
            // Without an id it cannot be addressed by qom-set.
            continue;
        };
        let block_size = num("block-size")?;
        if block_size == 0 {
            return Err("virtio-mem block-size 0".into());
        }
        out.push(VirtioMem {
            id: id.to_owned(),
            size: num("size")?,
            requested_size: num("requested-size")?,
            max_size: num("max-size")?,
            block_size,
        });
    }
    Ok(out)
}

/// Current I/O limits of each block device in `query-block`, once per name the device
/// is known by (drive name, qdev id, qdev path), since a request may use any of them.
pub fn parse_block_limits(v: &Value) -> Result<Vec<(DiskLimits, BlockName)>, String> {
    let list = v.as_array().ok_or("not a list")?;
    let mut out = Vec::new();
    for b in list {
        let Some(ins) = b.get("inserted") else {
            continue;
        };
        let num = |k: &str| {
            ins.get(k)
                .and_then(Value::as_u64)
                .ok_or(format!("query-block without {k}"))
        };
        // With totals (read+write) set, the per-direction values mean nothing: report
        // them as unknown so a per-direction request is never taken as already met.
        let totals = num("iops")? != 0 || num("bps")? != 0;
        let dir = |k: &str| -> Result<Option<u64>, String> {
            Ok(if totals { None } else { Some(num(k)?) })
        };
        let limits = DiskLimits {
            device: String::new(),
            read_iops: dir("iops_rd")?,
            write_iops: dir("iops_wr")?,
            read_bps: dir("bps_rd")?,
            write_bps: dir("bps_wr")?,
        };
        let drive = b.get("device").and_then(Value::as_str).unwrap_or("");
        let qdev = b.get("qdev").and_then(Value::as_str).unwrap_or("");
        let name = if drive.is_empty() {
            BlockName::Qdev(qdev.to_owned())
        } else {
            BlockName::Drive(drive.to_owned())
        };
        let mut aliases = vec![drive.to_owned(), qdev.to_owned()];
        if let Some(short) = qdev
            .strip_prefix("/machine/peripheral/")
            .map(|r| r.split('/').next().unwrap_or(r))
        {
            aliases.push(short.to_owned());
        }
        for a in aliases.into_iter().filter(|a| !a.is_empty()) {
            out.push((
                DiskLimits {
                    device: a,
                    ..limits.clone()
                },
                name.clone(),
            ));
        }
    }
    Ok(out)
}

/// How `block_set_io_throttle` addresses a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockName {
    /// `device`: the drive name (`-drive id=`).
    Drive(String),
    /// `id`: the qdev path of a device whose drive has no name (`-blockdev`).
    Qdev(String),
}

/// Everything the actuator reads before it acts.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    slots: Vec<CpuSlot>,
    vcpus: u32,
    base_bytes: u64,
    vmem: Vec<VirtioMem>,
    balloon_actual: Option<u64>,
    disks: Vec<(DiskLimits, BlockName)>,
}

impl Snapshot {
    async fn read(s: &mut Session) -> Result<Snapshot, ActuateError> {
        let bad = |s: &Session, what: &str, e: String| s.protocol(what, e);
        let v = s.execute("query-hotpluggable-cpus", None).await?;
        let slots = parse_cpu_slots(&v).map_err(|e| bad(s, "query-hotpluggable-cpus", e))?;
        let v = s.execute("query-cpus-fast", None).await?;
        let vcpus = v
            .as_array()
            .and_then(|a| u32::try_from(a.len()).ok())
            .ok_or_else(|| bad(s, "query-cpus-fast", "not a list".into()))?;
        let v = s.execute("query-memory-size-summary", None).await?;
        let base_bytes = v
            .get("base-memory")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad(s, "query-memory-size-summary", "no base-memory".into()))?;
        let v = s.execute("query-memory-devices", None).await?;
        let vmem = parse_virtio_mem(&v).map_err(|e| bad(s, "query-memory-devices", e))?;
        let balloon_actual = match s.execute("query-balloon", None).await {
            Ok(v) => Some(
                v.get("actual")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| bad(s, "query-balloon", "no actual".into()))?,
            ),
            // No balloon device: QEMU answers DeviceNotActive.
            Err(ActuateError::Refused { detail, .. }) if detail.starts_with("DeviceNotActive") => {
                None
            }
            Err(e) => return Err(e),
        };
        let v = s.execute("query-block", None).await?;
        let disks = parse_block_limits(&v).map_err(|e| bad(s, "query-block", e))?;
        Ok(Snapshot {
            slots,
            vcpus,
            base_bytes,
            vmem,
            balloon_actual,
            disks,
        })
    }

    fn observed(&self) -> Observed {
        let plugged: u64 = self.vmem.iter().map(|m| m.size).sum();
        let max_vmem: u64 = self.vmem.iter().map(|m| m.max_size).sum();
        let memory = self.balloon_actual.unwrap_or(self.base_bytes + plugged);
        let live_memory = self.balloon_actual.is_some() || !self.vmem.is_empty();
        Observed {
            vcpus: Some(self.vcpus),
            max_vcpus: Some(self.slots.iter().map(|s| s.vcpus).sum()),
            memory_mib: Some(memory / MIB),
            max_memory_mib: live_memory.then_some((self.base_bytes + max_vmem) / MIB),
            disks: self.disks.iter().map(|(d, _)| d.clone()).collect(),
            nets: Vec::new(),
        }
    }

    fn capability(&self, kind: ChangeKind) -> Capability {
        match kind {
            ChangeKind::VcpusUp | ChangeKind::VcpusDown | ChangeKind::Disk => Capability::Live,
            ChangeKind::MemoryUp if !self.vmem.is_empty() || self.balloon_actual.is_some() => {
                Capability::Live
            }
            ChangeKind::MemoryDown if self.balloon_actual.is_some() => Capability::Live,
            _ => Capability::Unsupported,
        }
    }

    fn plan(&self, req: &ResizeRequest) -> ResizePlan {
        let mut plan = plan_from_capabilities(req, &self.observed(), |k| self.capability(k), false);
        // Growing with the balloon only deflates it: never above the boot memory.
        if self.vmem.is_empty()
            && let Some(want) = req.memory_mib
            && want * MIB > self.base_bytes
        {
            let moved: Vec<_> = plan
                .live
                .iter()
                .filter(|c| c.kind == ChangeKind::MemoryUp)
                .cloned()
                .collect();
            plan.live.retain(|c| c.kind != ChangeKind::MemoryUp);
            for mut c in moved {
                c.capability = Capability::Unsupported;
                c.detail
                    .push_str(" (above the boot memory and the VM has no virtio-mem device)");
                plan.unsupported.push(c);
            }
        }
        // vCPUs that were there at boot cannot be unplugged.
        if let Some(want) = req.vcpus
            && want < self.vcpus
        {
            let removable: u32 = self
                .slots
                .iter()
                .filter(|s| s.device_id().is_some())
                .map(|s| s.vcpus)
                .sum();
            if self.vcpus - want > removable {
                plan.live.retain(|c| c.kind != ChangeKind::VcpusDown);
                plan.unsupported.push(persona_shared::resize::PlannedChange {
                    kind: ChangeKind::VcpusDown,
                    capability: Capability::Unsupported,
                    detail: format!(
                        "vcpus {} -> {want} (only {removable} hot-plugged vCPUs can be removed; boot vCPUs stay)",
                        self.vcpus
                    ),
                });
            }
        }
        plan
    }
}

/// The QMP actuator of one VM.
#[derive(Debug, Clone)]
pub struct Qmp {
    cfg: QmpConfig,
}

impl Qmp {
    pub fn new(cfg: QmpConfig) -> Self {
        Self { cfg }
    }

    async fn set_vcpus(
        &self,
        s: &mut Session,
        snap: &Snapshot,
        want: u32,
        applied: &mut Vec<String>,
    ) -> Result<(), ActuateError> {
        let mut have = snap.vcpus;
        if want > have {
            let mut free: Vec<&CpuSlot> =
                snap.slots.iter().filter(|s| s.qom_path.is_none()).collect();
            free.sort_by_key(|s| s.order());
            for slot in free {
                if have + slot.vcpus > want {
                    break;
                }
                let o = slot.order();
                let id = format!("persona-cpu-{}-{}-{}-{}-{}", o[0], o[1], o[2], o[3], o[4]);
                let mut args = slot.props.clone();
                args.insert("driver".into(), Value::String(slot.driver.clone()));
                args.insert("id".into(), Value::String(id.clone()));
                s.execute("device_add", Some(Value::Object(args))).await?;
                have += slot.vcpus;
                applied.push(format!("vcpu {id} added"));
            }
        } else if want < have {
            let mut plugged: Vec<&CpuSlot> = snap
                .slots
                .iter()
                .filter(|s| s.device_id().is_some())
                .collect();
            plugged.sort_by_key(|s| std::cmp::Reverse(s.order()));
            for slot in plugged {
                if have < want + slot.vcpus {
                    break;
                }
                let Some(id) = slot.device_id() else { continue };
                match s.execute("device_del", Some(json!({ "id": id }))).await {
                    Ok(_) => {}
                    Err(ActuateError::Refused {
                        target,
                        what,
                        detail,
                    }) if detail.contains("not supported device type") => {
                        return Err(ActuateError::Refused {
                            target,
                            what,
                            detail: format!(
                                "{detail} (QEMU is still in legacy CPU hotplug mode: the guest's ACPI switches it at boot; a guest without ACPI cannot unplug vCPUs)"
                            ),
                        });
                    }
                    Err(e) => return Err(e),
                }
                have -= slot.vcpus;
                applied.push(format!("vcpu {id} removal requested (the guest ejects it)"));
            }
        }
        Ok(())
    }

    async fn set_memory(
        &self,
        s: &mut Session,
        snap: &Snapshot,
        want_mib: u64,
        applied: &mut Vec<String>,
    ) -> Result<(), ActuateError> {
        let want = want_mib * MIB;
        let mut rest = want.saturating_sub(snap.base_bytes);
        for m in &snap.vmem {
            let take = rest.min(m.max_size);
            let size = take
                .div_ceil(m.block_size)
                .saturating_mul(m.block_size)
                .min(m.max_size);
            rest -= take;
            if size != m.requested_size {
                let path = format!("/machine/peripheral/{}", m.id);
                s.execute(
                    "qom-set",
                    Some(json!({ "path": path, "property": "requested-size", "value": size })),
                )
                .await?;
                applied.push(format!(
                    "virtio-mem {} requested-size {} -> {} MiB",
                    m.id,
                    m.requested_size / MIB,
                    size / MIB
                ));
            }
        }
        if snap.balloon_actual.is_some() {
            // QEMU takes the target as the guest's whole memory and caps it at what the
            // VM has, so a target above that deflates the balloon completely.
            s.execute("balloon", Some(json!({ "value": want }))).await?;
            applied.push(format!("balloon target {want_mib} MiB"));
        }
        Ok(())
    }

    async fn set_disk(
        &self,
        s: &mut Session,
        snap: &Snapshot,
        d: &DiskLimits,
        applied: &mut Vec<String>,
    ) -> Result<(), ActuateError> {
        let Some((have, name)) = snap.disks.iter().find(|(l, _)| l.device == d.device) else {
            let known: Vec<&str> = snap.disks.iter().map(|(l, _)| l.device.as_str()).collect();
            return Err(ActuateError::Invalid(format!(
                "no block device {:?} in query-block (known: {})",
                d.device,
                known.join(", ")
            )));
        };
        let pick = |want: Option<u64>, have: Option<u64>| want.or(have).unwrap_or(0);
        let mut args = json!({
            "iops": 0, "bps": 0,
            "iops_rd": pick(d.read_iops, have.read_iops),
            "iops_wr": pick(d.write_iops, have.write_iops),
            "bps_rd": pick(d.read_bps, have.read_bps),
            "bps_wr": pick(d.write_bps, have.write_bps),
        });
        if let Some(m) = args.as_object_mut() {
            match name {
                BlockName::Drive(n) => m.insert("device".into(), Value::String(n.clone())),
                BlockName::Qdev(q) => m.insert("id".into(), Value::String(q.clone())),
            };
        }
        s.execute("block_set_io_throttle", Some(args)).await?;
        applied.push(format!("disk {} limits set", d.device));
        Ok(())
    }
}

impl Actuator for Qmp {
    fn name(&self) -> &'static str {
        "qmp"
    }

    /// Without looking at the VM: memory depends on its devices (see `plan`).
    fn capability(&self, kind: ChangeKind) -> Capability {
        match kind {
            ChangeKind::Net => Capability::Unsupported,
            _ => Capability::Live,
        }
    }

    async fn query(&self, _about: &ResizeRequest) -> Result<Observed, ActuateError> {
        let mut s = Session::connect(&self.cfg).await?;
        Ok(Snapshot::read(&mut s).await?.observed())
    }

    async fn plan(&self, req: &ResizeRequest) -> Result<ResizePlan, ActuateError> {
        let mut s = Session::connect(&self.cfg).await?;
        Ok(Snapshot::read(&mut s).await?.plan(req))
    }

    async fn apply(&self, req: &ResizeRequest) -> Result<ResizeOutcome, ActuateError> {
        super::validate_request(req)?;
        let mut s = Session::connect(&self.cfg).await?;
        let snap = Snapshot::read(&mut s).await?;
        let plan = snap.plan(req);
        let needs_restart = gate(self.name(), req, &plan)?;
        let mut applied = Vec::new();
        for c in &plan.live {
            match c.kind {
                ChangeKind::VcpusUp | ChangeKind::VcpusDown => {
                    if let Some(v) = req.vcpus {
                        self.set_vcpus(&mut s, &snap, v, &mut applied).await?;
                    }
                }
                ChangeKind::MemoryUp | ChangeKind::MemoryDown => {
                    if let Some(m) = req.memory_mib {
                        self.set_memory(&mut s, &snap, m, &mut applied).await?;
                    }
                }
                ChangeKind::Disk => {
                    if let Some(d) = &req.disk {
                        self.set_disk(&mut s, &snap, d, &mut applied).await?;
                    }
                }
                ChangeKind::Net => {}
            }
        }
        let now = Snapshot::read(&mut s).await?.observed();
        Ok(ResizeOutcome {
            applied,
            needs_restart,
            verified: false,
            observed_vcpus: now.vcpus,
            observed_memory_mib: now.memory_mib,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_qemu_7_2_sends() {
        let slots: Value = serde_json::from_str(r#"[
            {"props": {"core-id": 1, "thread-id": 0, "node-id": 0, "socket-id": 0}, "vcpus-count": 1, "qom-path": "/machine/peripheral/cpu-2", "type": "qemu64-x86_64-cpu"},
            {"props": {"core-id": 0, "thread-id": 0, "node-id": 0, "socket-id": 0}, "vcpus-count": 1, "qom-path": "/machine/unattached/device[0]", "type": "qemu64-x86_64-cpu"},
            {"props": {"core-id": 3, "thread-id": 0, "node-id": 0, "socket-id": 0}, "vcpus-count": 1, "type": "qemu64-x86_64-cpu"}
        ]"#).unwrap();
        let s = parse_cpu_slots(&slots).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].device_id(), Some("cpu-2"));
        assert_eq!(s[1].device_id(), None);
        assert_eq!(s[2].qom_path, None);
        assert!(s[2].order() > s[0].order());
        assert!(
            parse_cpu_slots(&json!([{"type": "x", "vcpus-count": 1, "props": {"core-id": "a"}}]))
                .is_err()
        );
        assert!(parse_cpu_slots(&json!({"return": 1})).is_err());

        let mem: Value = serde_json::from_str(r#"[{"type": "virtio-mem", "data": {"memdev": "/objects/vmem0", "memaddr": 4294967296, "block-size": 2097152, "size": 0, "node": 0, "max-size": 536870912, "requested-size": 268435456, "id": "vm0"}}, {"type": "dimm", "data": {}}]"#).unwrap();
        let m = parse_virtio_mem(&mem).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].requested_size, 256 * MIB);
        assert!(parse_virtio_mem(&json!([{"type": "virtio-mem", "data": {"id": "x"}}])).is_err());

        let block: Value = serde_json::from_str(r#"[{"io-status": "ok", "device": "drive0", "inserted": {"iops_rd": 0, "iops_wr": 0, "iops": 0, "bps_wr": 0, "bps": 0, "bps_rd": 2000000, "file": "disk.img"}, "qdev": "/machine/peripheral/disk0/virtio-backend", "type": "unknown"}, {"device": "cd0", "qdev": "x"}]"#).unwrap();
        let b = parse_block_limits(&block).unwrap();
        let names: Vec<&str> = b.iter().map(|(l, _)| l.device.as_str()).collect();
        assert_eq!(
            names,
            [
                "drive0",
                "/machine/peripheral/disk0/virtio-backend",
                "disk0"
            ]
        );
        assert!(
            b.iter()
                .all(|(l, n)| l.read_bps == Some(2_000_000)
                    && *n == BlockName::Drive("drive0".into()))
        );
    }

    #[test]
    fn plans_follow_the_vms_devices() {
        let slot = |core: u64, path: Option<&str>| CpuSlot {
            driver: "qemu64-x86_64-cpu".into(),
            vcpus: 1,
            props: json!({"socket-id": 0, "core-id": core, "thread-id": 0})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            qom_path: path.map(str::to_owned),
        };
        let snap = Snapshot {
            slots: vec![
                slot(0, Some("/machine/unattached/device[0]")),
                slot(1, Some("/machine/peripheral/persona-cpu-0-0-0-1-0")),
                slot(2, None),
                slot(3, None),
            ],
            vcpus: 2,
            base_bytes: 256 * MIB,
            vmem: Vec::new(),
            balloon_actual: Some(256 * MIB),
            disks: Vec::new(),
        };
        let r = |vcpus, memory_mib| ResizeRequest {
            vcpus,
            memory_mib,
            ..ResizeRequest::default()
        };
        let p = snap.plan(&r(Some(4), Some(128)));
        assert!(p.is_live_only(), "{p:?}");
        let p = snap.plan(&r(Some(1), None));
        assert!(p.is_live_only(), "one hot-plugged vCPU can go: {p:?}");
        // Below the boot vCPU, beyond maxcpus, above boot memory without virtio-mem.
        assert_eq!(snap.plan(&r(Some(5), None)).unsupported.len(), 1);
        assert_eq!(snap.plan(&r(None, Some(512))).unsupported.len(), 1);
        let without_balloon = Snapshot {
            balloon_actual: None,
            ..snap.clone()
        };
        assert_eq!(
            without_balloon.plan(&r(None, Some(128))).unsupported.len(),
            1
        );
        let net = ResizeRequest {
            net: Some(persona_shared::resize::NetLimits {
                interface: "net0".into(),
                ..Default::default()
            }),
            ..ResizeRequest::default()
        };
        assert_eq!(snap.plan(&net).unsupported.len(), 1);
        let with_vmem = Snapshot {
            vmem: vec![VirtioMem {
                id: "vm0".into(),
                size: 0,
                requested_size: 0,
                max_size: 512 * MIB,
                block_size: 2 * MIB,
            }],
            ..snap
        };
        assert!(with_vmem.plan(&r(None, Some(768))).is_live_only());
        assert_eq!(with_vmem.plan(&r(None, Some(1024))).unsupported.len(), 1);
    }

    #[test]
    fn config_checks() {
        assert!(QmpConfig::unix("/run/q.sock").check().is_ok());
        let both = QmpConfig {
            tcp: Some("127.0.0.1:4444".into()),
            ..QmpConfig::unix("/x")
        };
        assert!(both.check().is_err());
        let tcp = QmpConfig {
            socket: None,
            ..both.clone()
        };
        assert!(tcp.check().is_ok());
        let bad = QmpConfig {
            tcp: Some("nohost".into()),
            ..tcp
        };
        assert!(bad.check().is_err());
    }
}
