//! Resize actuators on the coordinator's side: the code that changes a VM's size from
//! outside it, through its hypervisor (QEMU's QMP, libvirt's `virsh`, Cloud Hypervisor's
//! REST API) or through an operator's program (`exec`). Every actuator sits behind the one
//! [`Actuator`] trait: it says which kinds of change it can make live and which need a
//! restart ([`Actuator::capability`], [`Actuator::plan`]), makes them
//! ([`Actuator::apply`]) and reads the VM's size back ([`Actuator::query`]).
//! [`apply_resize`] is the entry point the command path calls: plan, refuse what cannot be
//! done, apply, then poll the hypervisor until the new size shows or a deadline passes. A
//! resize counts as done only when it is verified.
//!
//! What it is not: the `guest` actuator (the agent acts inside the VM; see
//! `persona_agent::actuate`, reached through a command), the decision what size a VM
//! should have (the engine), or the command bookkeeping.
//!
//! Which actuator serves which VM is coordinator configuration: `[[actuator]]` entries
//! ([`ActuatorBinding`]) matched by agent id or by the VM's instance id (docs/operations.md).

pub mod cloud_hypervisor;
pub mod exec;
pub mod libvirt;
pub mod qmp;

use std::future::Future;
use std::time::Duration;

use persona_shared::facts::HostFacts;
use persona_shared::resize::{
    Capability, ChangeKind, DiskLimits, NetLimits, PlannedChange, ResizeOutcome, ResizePlan,
    ResizeRequest,
};
use serde::{Deserialize, Serialize};

/// Why a resize could not be applied or verified. Each variant names the actuator's
/// target (socket, domain, program) so an operator can find the VM.
#[derive(Debug, thiserror::Error)]
pub enum ActuateError {
    #[error("{target}: cannot connect: {source}")]
    Connect {
        target: String,
        source: std::io::Error,
    },
    #[error("{target}: i/o error: {source}")]
    Io {
        target: String,
        source: std::io::Error,
    },
    #[error("{target}: no answer to {what} within {after_ms} ms")]
    Timeout {
        target: String,
        what: String,
        after_ms: u64,
    },
    /// The other side sent something that is not what its protocol promises.
    #[error("{target}: unexpected reply to {what}: {detail}")]
    Protocol {
        target: String,
        what: String,
        detail: String,
    },
    /// The hypervisor (or program) understood and said no.
    #[error("{target}: {what} refused: {detail}")]
    Refused {
        target: String,
        what: String,
        detail: String,
    },
    /// The request asks for a change this actuator cannot make at all; nothing was done.
    #[error("{actuator} cannot make these changes: {}", changes.join("; "))]
    Unsupported {
        actuator: &'static str,
        changes: Vec<String>,
    },
    /// The request itself is wrong (zero vCPUs, a disk limit without a device).
    #[error("invalid resize request: {0}")]
    Invalid(String),
    /// The actuator's configuration is wrong.
    #[error("invalid actuator configuration: {0}")]
    Config(String),
}

/// What a hypervisor reports about a VM's current size. `None`: not known to this
/// actuator (or not applicable).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Observed {
    pub vcpus: Option<u32>,
    /// Most vCPUs the VM can have without a restart.
    pub max_vcpus: Option<u32>,
    /// Memory as the guest sees it (after balloon and hotplug), MiB.
    pub memory_mib: Option<u64>,
    /// Most memory reachable without a restart, MiB.
    pub max_memory_mib: Option<u64>,
    /// Current limits of the block devices the actuator knows.
    pub disks: Vec<DiskLimits>,
    /// Current limits of the network interfaces the actuator knows.
    pub nets: Vec<NetLimits>,
}

impl Observed {
    /// Whether this observation shows every part of `req` that was applied. Limits are
    /// compared field by field (an unset field of the request is not compared).
    pub fn satisfies(&self, req: &ResizeRequest, memory_tolerance_mib: u64) -> bool {
        if let Some(v) = req.vcpus
            && self.vcpus != Some(v)
        {
            return false;
        }
        if let Some(m) = req.memory_mib
            && self
                .memory_mib
                .is_none_or(|have| have.abs_diff(m) > memory_tolerance_mib)
        {
            return false;
        }
        if let Some(d) = &req.disk {
            let Some(have) = self.disks.iter().find(|h| h.device == d.device) else {
                return false;
            };
            let pairs = [
                (d.read_iops, have.read_iops),
                (d.write_iops, have.write_iops),
                (d.read_bps, have.read_bps),
                (d.write_bps, have.write_bps),
            ];
            if pairs
                .iter()
                .any(|(want, have)| want.is_some() && want != have)
            {
                return false;
            }
        }
        if let Some(n) = &req.net {
            let Some(have) = self.nets.iter().find(|h| h.interface == n.interface) else {
                return false;
            };
            if (n.inbound_kibps.is_some() && n.inbound_kibps != have.inbound_kibps)
                || (n.outbound_kibps.is_some() && n.outbound_kibps != have.outbound_kibps)
            {
                return false;
            }
        }
        true
    }
}

/// One way of changing a VM's size.
///
/// `apply` makes the live changes of a request, and the restart changes when the
/// request allows a restart; it refuses a request with an unsupported change as a whole
/// ([`ActuateError::Unsupported`]) before it changes anything. It does not wait for the
/// guest to acknowledge: [`apply_resize`] polls `query` for that.
pub trait Actuator: Sync {
    /// Short name for logs and errors: `qmp`, `libvirt`, ...
    fn name(&self) -> &'static str;

    /// How this actuator makes one kind of change, before looking at the VM. Live
    /// changes may still be bounded (maxcpus, maxmem): [`Actuator::plan`] looks.
    fn capability(&self, kind: ChangeKind) -> Capability;

    /// Whether this actuator can restart the VM to make a change beyond its live
    /// bounds (max vCPUs, max memory).
    fn can_restart(&self) -> bool {
        ChangeKind::ALL
            .iter()
            .any(|k| self.capability(*k) == Capability::Restart)
    }

    /// Pause between verification queries (a query that runs a program costs more
    /// than one on a socket).
    fn poll_interval(&self) -> Duration {
        Duration::from_millis(200)
    }

    /// How far the reported memory may sit from the target and still count as reached.
    fn memory_tolerance_mib(&self) -> u64 {
        1
    }

    /// Reads the VM's current size, and the current limits of the devices `about`
    /// names (an empty request asks for the size only).
    fn query(
        &self,
        about: &ResizeRequest,
    ) -> impl Future<Output = Result<Observed, ActuateError>> + Send;

    /// What this actuator would do with `req`, given the VM as it is now. The default
    /// uses [`Actuator::capability`] and the bounds in `query`'s answer: a change beyond
    /// a live bound needs a restart.
    fn plan(
        &self,
        req: &ResizeRequest,
    ) -> impl Future<Output = Result<ResizePlan, ActuateError>> + Send {
        async move {
            let now = self.query(req).await?;
            Ok(plan_from_capabilities(
                req,
                &now,
                |k| self.capability(k),
                self.can_restart(),
            ))
        }
    }

    /// Makes the changes (see the trait's description).
    fn apply(
        &self,
        req: &ResizeRequest,
    ) -> impl Future<Output = Result<ResizeOutcome, ActuateError>> + Send;
}

/// Checks what every actuator needs of a request before it looks further.
pub fn validate_request(req: &ResizeRequest) -> Result<(), ActuateError> {
    if req.vcpus == Some(0) {
        return Err(ActuateError::Invalid("vcpus must be 1 or more".into()));
    }
    if req.memory_mib.is_some_and(|m| m < 64) {
        return Err(ActuateError::Invalid(
            "memory_mib below 64 would not boot a guest".into(),
        ));
    }
    if let Some(d) = &req.disk
        && d.device.is_empty()
    {
        return Err(ActuateError::Invalid("disk limits name no device".into()));
    }
    if let Some(n) = &req.net
        && n.interface.is_empty()
    {
        return Err(ActuateError::Invalid(
            "network limits name no interface".into(),
        ));
    }
    Ok(())
}

/// The changes a request carries, given the current size (up or down), with a detail
/// line each.
pub fn changes_of(req: &ResizeRequest, now: &Observed) -> Vec<(ChangeKind, String)> {
    let mut out = Vec::new();
    if let Some(v) = req.vcpus {
        let have = now.vcpus.unwrap_or(0);
        if v > have {
            out.push((ChangeKind::VcpusUp, format!("vcpus {have} -> {v}")));
        } else if v < have {
            out.push((ChangeKind::VcpusDown, format!("vcpus {have} -> {v}")));
        }
    }
    if let Some(m) = req.memory_mib {
        match now.memory_mib {
            Some(have) if m > have => {
                out.push((ChangeKind::MemoryUp, format!("memory {have} -> {m} MiB")));
            }
            Some(have) if m < have => {
                out.push((ChangeKind::MemoryDown, format!("memory {have} -> {m} MiB")));
            }
            Some(_) => {}
            None => out.push((ChangeKind::MemoryUp, format!("memory -> {m} MiB"))),
        }
    }
    if let Some(d) = &req.disk {
        out.push((ChangeKind::Disk, format!("disk limits of {}", d.device)));
    }
    if let Some(n) = &req.net {
        out.push((
            ChangeKind::Net,
            format!("network limits of {}", n.interface),
        ));
    }
    out
}

/// A plan from static capabilities, with live bounds (max vCPUs, max memory) turning a
/// live change into a restart change.
pub fn plan_from_capabilities(
    req: &ResizeRequest,
    now: &Observed,
    capability: impl Fn(ChangeKind) -> Capability,
    can_restart: bool,
) -> ResizePlan {
    let mut plan = ResizePlan::default();
    for (kind, mut detail) in changes_of(req, now) {
        let mut cap = capability(kind);
        if cap == Capability::Live {
            let beyond = match kind {
                ChangeKind::VcpusUp => now
                    .max_vcpus
                    .zip(req.vcpus)
                    .filter(|(max, want)| want > max)
                    .map(|(max, _)| format!(" (above the live maximum of {max})")),
                ChangeKind::MemoryUp => now
                    .max_memory_mib
                    .zip(req.memory_mib)
                    .filter(|(max, want)| want > max)
                    .map(|(max, _)| format!(" (above the live maximum of {max} MiB)")),
                _ => None,
            };
            if let Some(why) = beyond {
                detail.push_str(&why);
                cap = if can_restart {
                    Capability::Restart
                } else {
                    Capability::Unsupported
                };
            }
        }
        plan.push(PlannedChange {
            kind,
            capability: cap,
            detail,
        });
    }
    plan
}

/// Refuses a plan with unsupported changes, and splits off the restart changes the
/// request does not allow. Returns the details of those (for `needs_restart`).
pub fn gate(
    actuator: &'static str,
    req: &ResizeRequest,
    plan: &ResizePlan,
) -> Result<Vec<String>, ActuateError> {
    if !plan.unsupported.is_empty() {
        return Err(ActuateError::Unsupported {
            actuator,
            changes: plan.unsupported.iter().map(|c| c.detail.clone()).collect(),
        });
    }
    Ok(if req.allow_restart {
        Vec::new()
    } else {
        plan.restart.iter().map(|c| c.detail.clone()).collect()
    })
}

/// The request minus the changes that were left for a restart: what verification must
/// find.
pub fn expected_after(req: &ResizeRequest, plan: &ResizePlan) -> ResizeRequest {
    let mut want = req.clone();
    if req.allow_restart {
        return want;
    }
    for c in &plan.restart {
        match c.kind {
            ChangeKind::VcpusUp | ChangeKind::VcpusDown => want.vcpus = None,
            ChangeKind::MemoryUp | ChangeKind::MemoryDown => want.memory_mib = None,
            ChangeKind::Disk => want.disk = None,
            ChangeKind::Net => want.net = None,
        }
    }
    want
}

/// The actuator of one VM, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActuatorConfig {
    Qmp(qmp::QmpConfig),
    Libvirt(libvirt::LibvirtConfig),
    CloudHypervisor(cloud_hypervisor::CloudHypervisorConfig),
    Exec(exec::ExecConfig),
    /// The agent resizes from inside the VM; the coordinator sends it a command.
    Guest,
}

impl ActuatorConfig {
    pub fn name(&self) -> &'static str {
        match self {
            ActuatorConfig::Qmp(_) => "qmp",
            ActuatorConfig::Libvirt(_) => "libvirt",
            ActuatorConfig::CloudHypervisor(_) => "cloud-hypervisor",
            ActuatorConfig::Exec(_) => "exec",
            ActuatorConfig::Guest => "guest",
        }
    }

    /// How the configured actuator makes one kind of change (without asking the VM).
    pub fn capability(&self, kind: ChangeKind) -> Capability {
        match self {
            ActuatorConfig::Qmp(c) => qmp::Qmp::new(c.clone()).capability(kind),
            ActuatorConfig::Libvirt(c) => libvirt::Libvirt::new(c.clone()).capability(kind),
            ActuatorConfig::CloudHypervisor(c) => {
                cloud_hypervisor::CloudHypervisor::new(c.clone()).capability(kind)
            }
            ActuatorConfig::Exec(c) => exec::Exec::new(c.clone()).capability(kind),
            ActuatorConfig::Guest => guest_capability(kind),
        }
    }

    /// How long [`apply_resize`] waits for the new size to show.
    fn verify_timeout(&self) -> Duration {
        let ms = match self {
            ActuatorConfig::Qmp(c) => c.verify_timeout_ms,
            ActuatorConfig::Libvirt(c) => c.verify_timeout_ms,
            ActuatorConfig::CloudHypervisor(c) => c.verify_timeout_ms,
            ActuatorConfig::Exec(c) => c.verify_timeout_ms,
            ActuatorConfig::Guest => 0,
        };
        Duration::from_millis(ms)
    }

    fn check(&self) -> Result<(), String> {
        match self {
            ActuatorConfig::Qmp(c) => c.check(),
            ActuatorConfig::Libvirt(c) => c.check(),
            ActuatorConfig::CloudHypervisor(c) => c.check(),
            ActuatorConfig::Exec(c) => c.check(),
            ActuatorConfig::Guest => Ok(()),
        }
    }
}

/// What the agent's guest actuator can do (persona_agent::actuate): CPUs the hypervisor
/// already hot-added come online and go offline live, hot-added memory comes online
/// live; it cannot remove memory, and disk limits need its cgroup mode (a delegated
/// slice), which the coordinator cannot see from here, so they count as live and the
/// agent refuses them when it has no slice.
pub fn guest_capability(kind: ChangeKind) -> Capability {
    match kind {
        ChangeKind::VcpusUp | ChangeKind::VcpusDown | ChangeKind::MemoryUp | ChangeKind::Disk => {
            Capability::Live
        }
        ChangeKind::MemoryDown | ChangeKind::Net => Capability::Unsupported,
    }
}

/// One `[[actuator]]` entry of the coordinator's configuration: which VM (by agent id or
/// by instance id, exactly one) and which actuator (exactly one of the tables).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActuatorBinding {
    /// The agent id assigned at enrollment.
    pub agent: Option<String>,
    /// The VM's instance id as the agent reports it (DMI product UUID or cloud id):
    /// what a hypervisor operator knows before the agent enrolls.
    pub instance_id: Option<String>,
    pub qmp: Option<qmp::QmpConfig>,
    pub libvirt: Option<libvirt::LibvirtConfig>,
    pub cloud_hypervisor: Option<cloud_hypervisor::CloudHypervisorConfig>,
    pub exec: Option<exec::ExecConfig>,
    /// `guest = true`: the agent acts (the default for VMs without an entry).
    #[serde(default)]
    pub guest: bool,
}

impl ActuatorBinding {
    /// The one actuator this entry names.
    pub fn actuator(&self) -> Result<ActuatorConfig, String> {
        let mut found = Vec::new();
        if let Some(c) = &self.qmp {
            found.push(ActuatorConfig::Qmp(c.clone()));
        }
        if let Some(c) = &self.libvirt {
            found.push(ActuatorConfig::Libvirt(c.clone()));
        }
        if let Some(c) = &self.cloud_hypervisor {
            found.push(ActuatorConfig::CloudHypervisor(c.clone()));
        }
        if let Some(c) = &self.exec {
            found.push(ActuatorConfig::Exec(c.clone()));
        }
        if self.guest {
            found.push(ActuatorConfig::Guest);
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err("names no actuator: add one of [actuator.qmp], [actuator.libvirt], [actuator.cloud_hypervisor], [actuator.exec] or guest = true".into()),
            _ => Err("names more than one actuator".into()),
        }
    }

    /// Checks one entry; the message says what is wrong with it.
    pub fn check(&self) -> Result<(), String> {
        match (&self.agent, &self.instance_id) {
            (Some(a), None) if !a.is_empty() => {}
            (None, Some(i)) if !i.is_empty() => {}
            _ => return Err("needs exactly one of agent or instance_id".into()),
        }
        self.actuator()?.check()
    }

    fn matches(&self, agent_id: &str, facts: Option<&HostFacts>) -> bool {
        if let Some(a) = &self.agent {
            return a == agent_id;
        }
        match (
            &self.instance_id,
            facts.and_then(|f| f.instance_id.as_deref()),
        ) {
            (Some(want), Some(have)) => want.eq_ignore_ascii_case(have),
            _ => false,
        }
    }
}

/// Checks every `[[actuator]]` entry and that no VM is named twice; the error names the
/// entry by its position.
pub fn check_bindings(bindings: &[ActuatorBinding]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for (i, b) in bindings.iter().enumerate() {
        b.check().map_err(|e| format!("actuator[{i}]: {e}"))?;
        let key = (
            b.agent.clone(),
            b.instance_id.clone().map(|s| s.to_ascii_lowercase()),
        );
        if !seen.insert(key) {
            return Err(format!("actuator[{i}]: the same VM is named twice"));
        }
    }
    Ok(())
}

/// The actuator for an agent: the first matching entry (agent id before instance id),
/// or the guest actuator.
pub fn actuator_for(
    bindings: &[ActuatorBinding],
    agent_id: &str,
    facts: Option<&HostFacts>,
) -> ActuatorConfig {
    let by_agent = bindings
        .iter()
        .find(|b| b.agent.is_some() && b.matches(agent_id, facts));
    let by_instance = || {
        bindings
            .iter()
            .find(|b| b.instance_id.is_some() && b.matches(agent_id, facts))
    };
    by_agent
        .or_else(by_instance)
        .and_then(|b| b.actuator().ok())
        .unwrap_or(ActuatorConfig::Guest)
}

/// The guest actuator's plan of `req`, judged against the agent's reported facts (online
/// and possible vCPUs, memory): more vCPUs than the VM has present cannot be brought
/// online from inside, and memory cannot be taken away.
pub fn plan_for_guest(req: &ResizeRequest, facts: &HostFacts) -> ResizePlan {
    let now = Observed {
        vcpus: Some(facts.cpus_online),
        max_vcpus: Some(facts.cpus_possible),
        memory_mib: Some(facts.mem_total_bytes >> 20),
        ..Observed::default()
    };
    plan_from_capabilities(req, &now, guest_capability, false)
}

/// The plan of `req` on the configured actuator (asks the hypervisor for the current
/// size). For the guest actuator, without facts, the plan is made from its static
/// capabilities only; prefer [`plan_for_guest`] when the agent's facts are at hand.
pub async fn plan(
    actuator: &ActuatorConfig,
    req: &ResizeRequest,
) -> Result<ResizePlan, ActuateError> {
    validate_request(req)?;
    match actuator {
        ActuatorConfig::Qmp(c) => qmp::Qmp::new(c.clone()).plan(req).await,
        ActuatorConfig::Libvirt(c) => libvirt::Libvirt::new(c.clone()).plan(req).await,
        ActuatorConfig::CloudHypervisor(c) => {
            cloud_hypervisor::CloudHypervisor::new(c.clone())
                .plan(req)
                .await
        }
        ActuatorConfig::Exec(c) => exec::Exec::new(c.clone()).plan(req).await,
        ActuatorConfig::Guest => Ok(plan_from_capabilities(
            req,
            &Observed::default(),
            guest_capability,
            false,
        )),
    }
}

/// Applies `req` with a hypervisor actuator and verifies it: after `apply`, `query` is
/// polled (every 200 ms, every second for `exec`, until the actuator's
/// `verify_timeout_ms`) until the VM shows
/// every change that was made. `verified` is true only when the whole request is in
/// effect: it is false when the deadline passes first (for example a balloon target the
/// guest driver has not reached yet) and when changes were left for a restart
/// (`needs_restart`); the outcome then still lists what was applied and the last
/// observed size.
///
/// The guest actuator is not applied here: it runs in the agent, through a command, and
/// is verified from the agent's facts (`persona_shared::resize::verify_against_facts`).
pub async fn apply_resize(
    actuator: &ActuatorConfig,
    req: &ResizeRequest,
) -> Result<ResizeOutcome, ActuateError> {
    validate_request(req)?;
    match actuator {
        ActuatorConfig::Qmp(c) => apply_verified(&qmp::Qmp::new(c.clone()), req, actuator).await,
        ActuatorConfig::Libvirt(c) => {
            apply_verified(&libvirt::Libvirt::new(c.clone()), req, actuator).await
        }
        ActuatorConfig::CloudHypervisor(c) => {
            apply_verified(
                &cloud_hypervisor::CloudHypervisor::new(c.clone()),
                req,
                actuator,
            )
            .await
        }
        ActuatorConfig::Exec(c) => apply_verified(&exec::Exec::new(c.clone()), req, actuator).await,
        ActuatorConfig::Guest => Err(ActuateError::Config(
            "the guest actuator runs in the agent: send a resize command instead".into(),
        )),
    }
}

async fn apply_verified<A: Actuator + Sync>(
    a: &A,
    req: &ResizeRequest,
    cfg: &ActuatorConfig,
) -> Result<ResizeOutcome, ActuateError> {
    let plan = a.plan(req).await?;
    gate(a.name(), req, &plan)?;
    let want = expected_after(req, &plan);
    let mut outcome = a.apply(req).await?;
    let deadline = tokio::time::Instant::now() + cfg.verify_timeout();
    let tolerance = a.memory_tolerance_mib();
    // Bounded: one query per poll interval until the deadline.
    loop {
        let seen = a.query(req).await?;
        outcome.observed_vcpus = seen.vcpus;
        outcome.observed_memory_mib = seen.memory_mib;
        if seen.satisfies(&want, tolerance) {
            // Verified means the whole request is in effect: a change left for a
            // restart is not.
            outcome.verified = outcome.needs_restart.is_empty();
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::info!(
                actuator = a.name(),
                ?seen,
                "resize applied but not verified before the deadline"
            );
            break;
        }
        tokio::time::sleep(a.poll_interval()).await;
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(vcpus: Option<u32>, memory_mib: Option<u64>) -> ResizeRequest {
        ResizeRequest {
            vcpus,
            memory_mib,
            ..ResizeRequest::default()
        }
    }

    #[test]
    fn bounds_turn_live_changes_into_restart_or_unsupported() {
        let now = Observed {
            vcpus: Some(2),
            max_vcpus: Some(4),
            memory_mib: Some(2048),
            max_memory_mib: Some(4096),
            ..Observed::default()
        };
        let live_only = |_k| Capability::Live;
        let p = plan_from_capabilities(&req(Some(4), Some(4096)), &now, live_only, false);
        assert_eq!(p.live.len(), 2);
        assert!(p.is_live_only());
        let p = plan_from_capabilities(&req(Some(8), Some(1024)), &now, live_only, false);
        assert_eq!(p.unsupported.len(), 1, "{p:?}");
        assert!(
            p.unsupported[0]
                .detail
                .contains("above the live maximum of 4")
        );
        assert_eq!(p.live[0].kind, ChangeKind::MemoryDown);
        let p = plan_from_capabilities(&req(Some(8), None), &now, live_only, true);
        assert_eq!(p.restart.len(), 1, "{p:?}");
        // No change at all when the size is already right.
        assert_eq!(
            plan_from_capabilities(&req(Some(2), Some(2048)), &now, live_only, false),
            ResizePlan::default()
        );
    }

    #[test]
    fn restart_changes_wait_for_the_operators_opt_in() {
        let mut plan = ResizePlan::default();
        plan.push(PlannedChange {
            kind: ChangeKind::MemoryUp,
            capability: Capability::Restart,
            detail: "memory 2048 -> 8192 MiB".into(),
        });
        let r = req(Some(4), Some(8192));
        assert_eq!(
            gate("x", &r, &plan).unwrap(),
            vec!["memory 2048 -> 8192 MiB"]
        );
        assert_eq!(expected_after(&r, &plan), req(Some(4), None));
        let allowed = ResizeRequest {
            allow_restart: true,
            ..r.clone()
        };
        assert!(gate("x", &allowed, &plan).unwrap().is_empty());
        assert_eq!(expected_after(&allowed, &plan), allowed);
        plan.push(PlannedChange {
            kind: ChangeKind::Net,
            capability: Capability::Unsupported,
            detail: "network limits of eth0".into(),
        });
        let e = gate("qmp", &allowed, &plan).unwrap_err().to_string();
        assert!(e.contains("qmp") && e.contains("eth0"), "{e}");
    }

    #[test]
    fn observations_satisfy_only_what_was_asked() {
        let seen = Observed {
            vcpus: Some(3),
            memory_mib: Some(1023),
            disks: vec![DiskLimits {
                device: "disk0".into(),
                read_iops: Some(100),
                write_iops: Some(0),
                read_bps: Some(0),
                write_bps: Some(0),
            }],
            ..Observed::default()
        };
        assert!(seen.satisfies(&req(Some(3), Some(1024)), 1));
        assert!(!seen.satisfies(&req(Some(3), Some(1024)), 0));
        assert!(!seen.satisfies(&req(Some(4), None), 1));
        let disk = |device: &str, read_iops| ResizeRequest {
            disk: Some(DiskLimits {
                device: device.into(),
                read_iops,
                ..DiskLimits::default()
            }),
            ..ResizeRequest::default()
        };
        assert!(seen.satisfies(&disk("disk0", Some(100)), 1));
        assert!(!seen.satisfies(&disk("disk0", Some(200)), 1));
        assert!(!seen.satisfies(&disk("disk1", Some(100)), 1));
        assert!(!seen.satisfies(
            &ResizeRequest {
                net: Some(NetLimits {
                    interface: "eth0".into(),
                    ..NetLimits::default()
                }),
                ..ResizeRequest::default()
            },
            1
        ));
    }

    #[test]
    fn guest_plans_follow_the_agents_facts() {
        let facts = HostFacts {
            cpus_online: 2,
            cpus_possible: 4,
            mem_total_bytes: 4000 << 20,
            ..HostFacts::default()
        };
        assert!(plan_for_guest(&req(Some(4), None), &facts).is_live_only());
        let p = plan_for_guest(&req(Some(8), Some(2048)), &facts);
        assert_eq!(p.unsupported.len(), 2, "{p:?}");
        assert!(
            p.unsupported
                .iter()
                .any(|c| c.kind == ChangeKind::MemoryDown)
        );
    }

    #[test]
    fn bindings_pick_one_actuator_per_vm() {
        let toml = r#"
            [[actuator]]
            agent = "a1"
            [actuator.qmp]
            socket = "/run/qemu/a1.qmp"

            [[actuator]]
            instance_id = "4C4C4544-0000"
            [actuator.libvirt]
            domain = "web-2"
        "#;
        #[derive(Deserialize)]
        struct F {
            actuator: Vec<ActuatorBinding>,
        }
        let f: F = toml::from_str(toml).unwrap();
        check_bindings(&f.actuator).unwrap();
        assert_eq!(actuator_for(&f.actuator, "a1", None).name(), "qmp");
        let facts = HostFacts {
            instance_id: Some("4c4c4544-0000".into()),
            ..HostFacts::default()
        };
        assert_eq!(
            actuator_for(&f.actuator, "a2", Some(&facts)).name(),
            "libvirt"
        );
        assert_eq!(actuator_for(&f.actuator, "a3", None).name(), "guest");

        for (bad, why) in [
            ("[[actuator]]\nagent = \"a\"\n", "names no actuator"),
            (
                "[[actuator]]\nqmp = { socket = \"/x\" }\n",
                "exactly one of agent or instance_id",
            ),
            (
                "[[actuator]]\nagent = \"a\"\nguest = true\nqmp = { socket = \"/x\" }\n",
                "more than one",
            ),
            (
                "[[actuator]]\nagent = \"a\"\nguest = true\n[[actuator]]\nagent = \"a\"\nguest = true\n",
                "twice",
            ),
        ] {
            let f: F = toml::from_str(bad).unwrap();
            let e = check_bindings(&f.actuator).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let typo: Result<F, _> =
            toml::from_str("[[actuator]]\nagent = \"a\"\nqmp = { sockt = \"/x\" }\n");
        assert!(typo.is_err());
    }
}
