//! The `cloud-hypervisor` actuator: Cloud Hypervisor's REST API on its unix socket
//! (`--api-socket`). `PUT /api/v1/vm.resize` with `desired_vcpus`, `desired_ram` and
//! `desired_balloon` changes the size live; `GET /api/v1/vm.info` reads it back.
//!
//! vCPUs move between 1 and the VM's `max_vcpus`; memory grows up to `size +
//! hotplug_size` and shrinks through the balloon when the VM has one. Cloud Hypervisor
//! has no live disk or network rate change in its API, and a resize cannot restart the
//! VM with a new shape, so those changes are refused.
//!
//! What it is not: a Cloud Hypervisor client library (only these two endpoints).

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode};
use persona_shared::resize::{Capability, ChangeKind, ResizeOutcome, ResizePlan, ResizeRequest};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ActuateError, Actuator, Observed, gate, plan_from_capabilities};

const MIB: u64 = 1 << 20;
/// Largest vm.info body accepted (a VM with many devices is a few tens of KiB).
const MAX_BODY: usize = 1 << 20;

fn default_timeout_ms() -> u64 {
    10_000
}
fn default_verify_timeout_ms() -> u64 {
    30_000
}

/// `[actuator.cloud_hypervisor]`: the VM's API socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudHypervisorConfig {
    /// The `--api-socket` path.
    pub socket: PathBuf,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_verify_timeout_ms")]
    pub verify_timeout_ms: u64,
}

impl CloudHypervisorConfig {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout_ms: default_timeout_ms(),
            verify_timeout_ms: default_verify_timeout_ms(),
        }
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        if !self.socket.is_absolute() {
            return Err("cloud_hypervisor.socket must be an absolute path".into());
        }
        if !(100..=600_000).contains(&self.timeout_ms) {
            return Err("cloud_hypervisor.timeout_ms must be 100..=600000".into());
        }
        Ok(())
    }
}

/// What `vm.info` says about the size.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VmInfo {
    pub vcpus: u32,
    pub max_vcpus: u32,
    /// Boot memory, bytes.
    pub size: u64,
    /// Memory that may be hot-plugged on top, bytes.
    pub hotplug_size: u64,
    pub hotplugged_size: u64,
    /// Balloon size when the VM has a balloon device, bytes.
    pub balloon: Option<u64>,
    /// Memory the guest has (after balloon), bytes, when reported.
    pub actual: Option<u64>,
}

impl VmInfo {
    fn memory(&self) -> u64 {
        self.actual
            .unwrap_or((self.size + self.hotplugged_size).saturating_sub(self.balloon.unwrap_or(0)))
    }

    pub fn observed(&self) -> Observed {
        Observed {
            vcpus: Some(self.vcpus),
            max_vcpus: Some(self.max_vcpus),
            memory_mib: Some(self.memory() / MIB),
            max_memory_mib: Some((self.size + self.hotplug_size) / MIB),
            ..Observed::default()
        }
    }
}

/// Parses the body of `GET /api/v1/vm.info`.
pub fn parse_vm_info(body: &[u8]) -> Result<VmInfo, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let cfg = v.get("config").ok_or("no config")?;
    let cpus = cfg.get("cpus").ok_or("no config.cpus")?;
    let mem = cfg.get("memory").ok_or("no config.memory")?;
    let u32_of = |x: &Value, k: &str| {
        x.get(k)
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(format!("no {k}"))
    };
    let u64_opt = |x: &Value, k: &str| x.get(k).and_then(Value::as_u64);
    Ok(VmInfo {
        vcpus: u32_of(cpus, "boot_vcpus")?,
        max_vcpus: u32_of(cpus, "max_vcpus")?,
        size: u64_opt(mem, "size").ok_or("no config.memory.size")?,
        hotplug_size: u64_opt(mem, "hotplug_size").unwrap_or(0),
        hotplugged_size: u64_opt(mem, "hotplugged_size").unwrap_or(0),
        balloon: cfg
            .get("balloon")
            .filter(|b| !b.is_null())
            .map(|b| u64_opt(b, "size").unwrap_or(0)),
        actual: u64_opt(&v, "memory_actual_size"),
    })
}

/// The body of `PUT /api/v1/vm.resize` for a request, given the VM now.
pub fn resize_body(req: &ResizeRequest, now: &VmInfo) -> Value {
    let mut body = serde_json::Map::new();
    if let Some(v) = req.vcpus {
        body.insert("desired_vcpus".into(), v.into());
    }
    if let Some(m) = req.memory_mib {
        let want = m * MIB;
        if want >= now.size {
            body.insert("desired_ram".into(), want.into());
            if now.balloon.is_some() {
                body.insert("desired_balloon".into(), 0u64.into());
            }
        } else if now.balloon.is_some() {
            // Below boot memory: hot-plugged memory goes, the balloon takes the rest.
            body.insert("desired_ram".into(), now.size.into());
            body.insert("desired_balloon".into(), (now.size - want).into());
        }
    }
    Value::Object(body)
}

/// The Cloud Hypervisor actuator of one VM.
#[derive(Debug, Clone)]
pub struct CloudHypervisor {
    cfg: CloudHypervisorConfig,
}

impl CloudHypervisor {
    pub fn new(cfg: CloudHypervisorConfig) -> Self {
        Self { cfg }
    }

    fn target(&self) -> String {
        format!("cloud-hypervisor {}", self.cfg.socket.display())
    }

    /// One HTTP/1.1 exchange on a fresh connection to the API socket.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Bytes), ActuateError> {
        let target = self.target();
        let timeout = Duration::from_millis(self.cfg.timeout_ms);
        let exchange = async {
            let stream = tokio::net::UnixStream::connect(&self.cfg.socket)
                .await
                .map_err(|source| ActuateError::Connect {
                    target: target.clone(),
                    source,
                })?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| self.http_error(path, e.to_string()))?;
            let driver = tokio::spawn(async move {
                let _ = conn.await;
            });
            let payload = body.map(|b| b.to_string()).unwrap_or_default();
            let mut builder = Request::builder()
                .method(method)
                .uri(path)
                .header("host", "localhost");
            if !payload.is_empty() {
                builder = builder.header("content-type", "application/json");
            }
            let request = builder
                .body(Full::new(Bytes::from(payload)))
                .map_err(|e| self.http_error(path, e.to_string()))?;
            let resp = sender
                .send_request(request)
                .await
                .map_err(|e| self.http_error(path, e.to_string()))?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| self.http_error(path, e.to_string()))?
                .to_bytes();
            driver.abort();
            Ok((status, bytes))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(ActuateError::Timeout {
                    target: self.target(),
                    what: path.into(),
                    after_ms: self.cfg.timeout_ms,
                })
            })
    }

    fn http_error(&self, path: &str, detail: String) -> ActuateError {
        ActuateError::Protocol {
            target: self.target(),
            what: path.into(),
            detail,
        }
    }

    async fn info(&self) -> Result<VmInfo, ActuateError> {
        let (status, body) = self.call(Method::GET, "/api/v1/vm.info", None).await?;
        if status != StatusCode::OK {
            return Err(ActuateError::Refused {
                target: self.target(),
                what: "vm.info".into(),
                detail: format!("{status}: {}", String::from_utf8_lossy(&body)),
            });
        }
        parse_vm_info(&body).map_err(|e| self.http_error("/api/v1/vm.info", e))
    }

    fn plan_with(&self, req: &ResizeRequest, now: &VmInfo) -> ResizePlan {
        let balloon = now.balloon.is_some();
        plan_from_capabilities(
            req,
            &now.observed(),
            |k| match k {
                ChangeKind::VcpusUp | ChangeKind::VcpusDown | ChangeKind::MemoryUp => {
                    Capability::Live
                }
                ChangeKind::MemoryDown if balloon => Capability::Live,
                _ => Capability::Unsupported,
            },
            false,
        )
    }
}

impl Actuator for CloudHypervisor {
    fn name(&self) -> &'static str {
        "cloud-hypervisor"
    }

    /// Without looking at the VM (shrinking memory needs a balloon; see `plan`).
    fn capability(&self, kind: ChangeKind) -> Capability {
        match kind {
            ChangeKind::VcpusUp
            | ChangeKind::VcpusDown
            | ChangeKind::MemoryUp
            | ChangeKind::MemoryDown => Capability::Live,
            ChangeKind::Disk | ChangeKind::Net => Capability::Unsupported,
        }
    }

    async fn query(&self, _about: &ResizeRequest) -> Result<Observed, ActuateError> {
        Ok(self.info().await?.observed())
    }

    async fn plan(&self, req: &ResizeRequest) -> Result<ResizePlan, ActuateError> {
        let now = self.info().await?;
        Ok(self.plan_with(req, &now))
    }

    async fn apply(&self, req: &ResizeRequest) -> Result<ResizeOutcome, ActuateError> {
        super::validate_request(req)?;
        let now = self.info().await?;
        let plan = self.plan_with(req, &now);
        let needs_restart = gate(self.name(), req, &plan)?;
        let body = resize_body(req, &now);
        let mut applied = Vec::new();
        if body.as_object().is_some_and(|m| !m.is_empty()) {
            let (status, reply) = self
                .call(Method::PUT, "/api/v1/vm.resize", Some(body.clone()))
                .await?;
            if !status.is_success() {
                return Err(ActuateError::Refused {
                    target: self.target(),
                    what: "vm.resize".into(),
                    detail: format!("{status}: {}", String::from_utf8_lossy(&reply)),
                });
            }
            applied.push(format!("vm.resize {body}"));
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

    const INFO: &str = r#"{"config":{"cpus":{"boot_vcpus":2,"max_vcpus":8,"topology":null,"kvm_hyperv":false,"max_phys_bits":46},
        "memory":{"size":1073741824,"mergeable":false,"hotplug_method":"Acpi","hotplug_size":3221225472,"hotplugged_size":536870912,"shared":false,"hugepages":false},
        "balloon":{"size":268435456,"deflate_on_oom":false,"free_page_reporting":false},
        "payload":{"kernel":"/k"}},"state":"Running","memory_actual_size":1342177280,"device_tree":{}}"#;

    #[test]
    fn parses_vm_info() {
        let i = parse_vm_info(INFO.as_bytes()).unwrap();
        assert_eq!((i.vcpus, i.max_vcpus), (2, 8));
        assert_eq!(i.balloon, Some(256 * MIB));
        let o = i.observed();
        assert_eq!(o.memory_mib, Some(1280));
        assert_eq!(o.max_memory_mib, Some(4096));
        let without_actual = VmInfo { actual: None, ..i };
        assert_eq!(without_actual.observed().memory_mib, Some(1280));
        assert!(parse_vm_info(b"{}").is_err());
        assert!(parse_vm_info(b"not json").is_err());
        assert!(
            parse_vm_info(
                br#"{"config":{"cpus":{"boot_vcpus":-1,"max_vcpus":2},"memory":{"size":1}}}"#
            )
            .is_err()
        );
    }

    #[test]
    fn builds_resize_bodies() {
        let i = parse_vm_info(INFO.as_bytes()).unwrap();
        let r = |vcpus, memory_mib| ResizeRequest {
            vcpus,
            memory_mib,
            ..ResizeRequest::default()
        };
        assert_eq!(
            resize_body(&r(Some(4), Some(2048)), &i),
            serde_json::json!({"desired_vcpus": 4, "desired_ram": 2048 * MIB, "desired_balloon": 0})
        );
        assert_eq!(
            resize_body(&r(None, Some(768)), &i),
            serde_json::json!({"desired_ram": 1024 * MIB, "desired_balloon": 256 * MIB})
        );
        let ch = CloudHypervisor::new(CloudHypervisorConfig::new("/run/ch.sock"));
        assert!(ch.plan_with(&r(Some(8), Some(4096)), &i).is_live_only());
        assert_eq!(ch.plan_with(&r(Some(9), None), &i).unsupported.len(), 1);
        let no_balloon = VmInfo { balloon: None, ..i };
        assert_eq!(
            ch.plan_with(&r(None, Some(512)), &no_balloon)
                .unsupported
                .len(),
            1
        );
    }
}
