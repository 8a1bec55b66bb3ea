//! The guest actuator (`persona_agent::actuate::apply_resize`):
//! - against fixture sysfs trees in a temp dir (CPU online files, memory blocks), both
//!   writing directly and through the root helper's socket protocol;
//! - against fixture cgroup v1 and v2 trees;
//! - against this machine's real cgroup v1 hierarchy, as root: a CPU quota really
//!   throttles a busy process and a memory limit really OOM-kills an allocation.
//!
//! No test ever takes a CPU of this machine offline: CPU and memory hotplug run on
//! fixture trees only. Where the real hierarchy is missing or the test is not root, the
//! real-cgroup tests print why and skip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use persona_agent::actuate::cgroup::CgroupVersion;
use persona_agent::actuate::{ActuateError, GuestActuatorConfig, GuestTarget, apply_resize};
use persona_agent::helper::protocol::{self, Request};
use persona_agent::helper::server;
use persona_shared::resize::{DiskLimits, ResizeRequest};

fn write(path: &Path, text: &str) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).expect("mkdir");
    }
    std::fs::write(path, text).expect("write fixture");
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .expect("read")
        .trim()
        .to_owned()
}

/// A sysfs tree: cpu0 (fixed, no online file), cpu1 online, cpu2 and cpu3 hot-added and
/// offline; eight 128 MiB memory blocks, four online.
fn fixture_sysfs(root: &Path) {
    let cpu = root.join("devices/system/cpu");
    write(&cpu.join("present"), "0-3\n");
    write(&cpu.join("online"), "0-1\n");
    std::fs::create_dir_all(cpu.join("cpu0")).expect("cpu0");
    write(&cpu.join("cpu1/online"), "1\n");
    write(&cpu.join("cpu2/online"), "0\n");
    write(&cpu.join("cpu3/online"), "0\n");
    let mem = root.join("devices/system/memory");
    write(&mem.join("block_size_bytes"), "8000000\n");
    for b in 0..8 {
        let state = if b < 4 { "online\n" } else { "offline\n" };
        write(&mem.join(format!("memory{b}/state")), state);
    }
}

fn machine_cfg(sys: &Path) -> GuestActuatorConfig {
    GuestActuatorConfig {
        sys_root: sys.to_owned(),
        helper_socket: None,
        ..GuestActuatorConfig::default()
    }
}

fn vcpus(n: u32) -> ResizeRequest {
    ResizeRequest {
        vcpus: Some(n),
        ..ResizeRequest::default()
    }
}

fn memory(mib: u64) -> ResizeRequest {
    ResizeRequest {
        memory_mib: Some(mib),
        ..ResizeRequest::default()
    }
}

#[test]
fn cpus_and_memory_blocks_on_a_fixture_sysfs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sys = dir.path();
    fixture_sysfs(sys);
    let cfg = machine_cfg(sys);
    let cpu = |n: u32| read(&sys.join(format!("devices/system/cpu/cpu{n}/online")));

    let out = apply_resize(&vcpus(4), &cfg).expect("online");
    assert!(out.verified, "{out:?}");
    assert_eq!(out.observed_vcpus, Some(4));
    assert_eq!(out.applied, ["cpu2 online", "cpu3 online"]);
    assert_eq!((cpu(2), cpu(3)), ("1".into(), "1".into()));

    // Down to one: the highest go first, cpu0 stays.
    let out = apply_resize(&vcpus(1), &cfg).expect("offline");
    assert!(out.verified, "{out:?}");
    assert_eq!(
        out.applied,
        ["cpu3 offline", "cpu2 offline", "cpu1 offline"]
    );
    assert_eq!(
        (cpu(1), cpu(2), cpu(3)),
        ("0".into(), "0".into(), "0".into())
    );

    // The floor, more CPUs than present, zero: refused before anything is written.
    let floor2 = GuestActuatorConfig {
        cpu_floor: 2,
        ..cfg.clone()
    };
    apply_resize(&vcpus(2), &cfg).expect("back to two");
    let e = apply_resize(&vcpus(1), &floor2).expect_err("floor");
    assert!(matches!(e, ActuateError::Refused(_)), "{e}");
    assert!(e.to_string().contains("floor of 2"), "{e}");
    let e = apply_resize(&vcpus(5), &cfg).expect_err("not present");
    assert!(matches!(e, ActuateError::Unsupported(_)), "{e}");
    assert!(e.to_string().contains("hot-add 1 more"), "{e}");
    assert!(matches!(
        apply_resize(&vcpus(0), &cfg),
        Err(ActuateError::Invalid(_))
    ));
    assert_eq!(cpu(1), "1", "refusals wrote nothing");

    // Memory: online hot-added blocks up to the target, never offline.
    let block = |n: u32| read(&sys.join(format!("devices/system/memory/memory{n}/state")));
    let out = apply_resize(&memory(768), &cfg).expect("memory");
    assert!(out.verified, "{out:?}");
    assert_eq!(out.observed_memory_mib, Some(768));
    assert_eq!(out.applied, ["memory4 online", "memory5 online"]);
    assert_eq!(
        (block(4), block(5), block(6)),
        ("online".into(), "online".into(), "offline".into())
    );
    let e = apply_resize(&memory(256), &cfg).expect_err("no offlining");
    assert!(matches!(e, ActuateError::Unsupported(_)), "{e}");
    let e = apply_resize(&memory(2048), &cfg).expect_err("more than the blocks");
    assert!(e.to_string().contains("hot-add memory"), "{e}");

    // Disk limits need slice mode; network limits are never a guest change.
    let disk = ResizeRequest {
        disk: Some(DiskLimits {
            device: "8:0".into(),
            read_iops: Some(10),
            ..DiskLimits::default()
        }),
        ..ResizeRequest::default()
    };
    assert!(matches!(
        apply_resize(&disk, &cfg),
        Err(ActuateError::Unsupported(_))
    ));
}

#[test]
fn privileged_writes_go_through_the_helper_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sys = dir.path().join("sys");
    fixture_sysfs(&sys);
    let socket = dir.path().join("actuator.sock");
    let listener = server::bind(&socket).expect("bind");
    // The helper's own view: the same tree, a floor of 2.
    let helper_cfg = GuestActuatorConfig {
        cpu_floor: 2,
        ..machine_cfg(&sys)
    };
    // The helper checks its own policy before every operation (issue 18, item 13).
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[actions]\nresize = true\n").expect("policy");
    let helper = server::HelperConfig {
        policy_file: policy,
        ..server::HelperConfig::new(helper_cfg)
    };
    std::thread::spawn(move || server::serve_with(&listener, &helper));
    let agent_cfg = GuestActuatorConfig {
        helper_socket: Some(socket.clone()),
        ..machine_cfg(&sys)
    };
    let out = apply_resize(&vcpus(3), &agent_cfg).expect("via helper");
    assert!(out.verified, "{out:?}");
    assert_eq!(read(&sys.join("devices/system/cpu/cpu2/online")), "1");

    // The agent's floor is 1, the helper's is 2: the helper still refuses.
    apply_resize(&vcpus(2), &agent_cfg).expect("to two");
    let e = apply_resize(&vcpus(1), &agent_cfg).expect_err("helper floor");
    assert!(matches!(e, ActuateError::Helper { .. }), "{e}");
    assert!(e.to_string().contains("refused"), "{e}");
    // And never takes cpu0 offline, whoever asks.
    let r = protocol::call(
        &socket,
        &Request::CpuOnline {
            cpu: 0,
            online: false,
        },
    )
    .expect("call");
    assert_eq!(r.error.as_deref(), Some("refused"), "{r:?}");
    // A helper that is not there is a clear error.
    let gone = GuestActuatorConfig {
        helper_socket: Some(dir.path().join("nobody.sock")),
        ..machine_cfg(&sys)
    };
    let e = apply_resize(&vcpus(3), &gone).expect_err("no helper");
    assert!(e.to_string().contains("nobody.sock"), "{e}");
}

fn slice_cfg(root: &Path, version: CgroupVersion, parent: &str) -> GuestActuatorConfig {
    GuestActuatorConfig {
        target: GuestTarget::Slice,
        helper_socket: None,
        cgroup_root: root.to_owned(),
        cgroup_version: version,
        cgroup_parent: parent.into(),
        cgroup_group: "shared".into(),
        ..GuestActuatorConfig::default()
    }
}

fn slice_request() -> ResizeRequest {
    ResizeRequest {
        vcpus: Some(2),
        memory_mib: Some(256),
        disk: Some(DiskLimits {
            device: "8:0".into(),
            read_iops: Some(100),
            write_bps: Some(1 << 20),
            ..DiskLimits::default()
        }),
        ..ResizeRequest::default()
    }
}

#[test]
fn slice_limits_on_fixture_cgroup_trees() {
    // v2: a cgroup2 root with a delegated slice.
    let dir = tempfile::tempdir().expect("tempdir");
    let v2 = dir.path().join("v2");
    write(&v2.join("cgroup.controllers"), "cpu io memory pids\n");
    write(
        &v2.join("persona.slice/cgroup.subtree_control"),
        "cpu memory io\n",
    );
    let cfg = slice_cfg(&v2, CgroupVersion::Auto, "persona.slice");
    let out = apply_resize(&slice_request(), &cfg).expect("v2");
    assert!(out.verified, "{out:?}");
    assert_eq!(
        (out.observed_vcpus, out.observed_memory_mib),
        (Some(2), Some(256))
    );
    let g = v2.join("persona.slice/shared");
    assert_eq!(read(&g.join("cpu.max")), "200000 100000");
    assert_eq!(read(&g.join("memory.max")), "268435456");
    assert_eq!(read(&g.join("io.max")), "8:0 riops=100 wbps=1048576");

    // v1: per-controller hierarchies.
    let v1 = dir.path().join("v1");
    for c in ["cpu", "memory", "blkio"] {
        std::fs::create_dir_all(v1.join(c)).expect("controller");
    }
    let cfg = slice_cfg(&v1, CgroupVersion::Auto, "persona.slice");
    let out = apply_resize(&slice_request(), &cfg).expect("v1");
    assert!(out.verified, "{out:?}");
    assert_eq!(
        read(&v1.join("cpu/persona.slice/shared/cpu.cfs_quota_us")),
        "200000"
    );
    assert_eq!(
        read(&v1.join("cpu/persona.slice/shared/cpu.cfs_period_us")),
        "100000"
    );
    assert_eq!(
        read(&v1.join("memory/persona.slice/shared/memory.limit_in_bytes")),
        "268435456"
    );
    assert_eq!(
        read(&v1.join("blkio/persona.slice/shared/blkio.throttle.read_iops_device")),
        "8:0 100"
    );

    // A device that is not MAJ:MIN, and a root with no hierarchy: clear errors.
    let mut bad = slice_request();
    if let Some(d) = bad.disk.as_mut() {
        d.device = "sda".into();
    }
    assert!(matches!(
        apply_resize(&bad, &cfg),
        Err(ActuateError::Invalid(_))
    ));
    let none = slice_cfg(
        &dir.path().join("empty"),
        CgroupVersion::Auto,
        "persona.slice",
    );
    std::fs::create_dir_all(dir.path().join("empty")).expect("mkdir");
    let e = apply_resize(&vcpus(1), &none).expect_err("no hierarchy");
    assert!(e.to_string().contains("no cgroup hierarchy"), "{e}");
}

// ---- The real cgroup v1 hierarchy of this machine ----

const REAL_ROOT: &str = "/sys/fs/cgroup";

/// Why the real-cgroup tests cannot run here, if they cannot.
fn real_v1_unavailable() -> Option<String> {
    if !nix_is_root() {
        return Some("not root".into());
    }
    for f in ["cpu/cpu.cfs_quota_us", "memory/memory.limit_in_bytes"] {
        if !Path::new(REAL_ROOT).join(f).exists() {
            return Some(format!(
                "no {REAL_ROOT}/{f} (no cgroup v1 cpu and memory controllers)"
            ));
        }
    }
    None
}

fn nix_is_root() -> bool {
    // /proc/self/status "Uid:" real, effective, ...: effective 0 is root.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// A test-unique slice under the real hierarchy; removed (children killed first by
/// their own guards) on drop.
struct RealSlice {
    parent: String,
}

impl RealSlice {
    fn new(tag: &str) -> RealSlice {
        RealSlice {
            parent: format!("persona-test-{tag}-{}.slice", std::process::id()),
        }
    }

    fn group(&self, controller: &str) -> PathBuf {
        Path::new(REAL_ROOT)
            .join(controller)
            .join(&self.parent)
            .join("shared")
    }
}

impl Drop for RealSlice {
    fn drop(&mut self) {
        for c in ["cpu", "memory", "blkio"] {
            let parent = Path::new(REAL_ROOT).join(c).join(&self.parent);
            let _ = std::fs::remove_dir(parent.join("shared"));
            let _ = std::fs::remove_dir(&parent);
        }
    }
}

/// A child process, killed and reaped on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU time (user + system) of a process, in clock ticks (USER_HZ = 100 on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based), so 11 and 12 here.
    let n = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    n(11) + n(12)
}

#[test]
fn a_real_cpu_quota_throttles_a_busy_loop() {
    if let Some(why) = real_v1_unavailable() {
        eprintln!("SKIP: real cgroup v1 test: {why}");
        return;
    }
    let slice = RealSlice::new("cpu");
    let cfg = GuestActuatorConfig {
        cgroup_version: CgroupVersion::V1,
        ..slice_cfg(Path::new(REAL_ROOT), CgroupVersion::V1, &slice.parent)
    };
    // A resize to one vCPU's worth, read back from the kernel.
    let out = apply_resize(&vcpus(1), &cfg).expect("quota");
    assert!(out.verified, "{out:?}");
    let group = slice.group("cpu");
    assert_eq!(read(&group.join("cpu.cfs_quota_us")), "100000");
    // 20% of one CPU, through the same allow-listed request the helper serves.
    persona_agent::actuate::perform(
        &Request::CgroupLimit {
            group: "shared".into(),
            cpu_max_millicores: Some(200),
            memory_max_bytes: None,
            io: None,
        },
        &cfg,
    )
    .expect("20% quota");
    assert_eq!(read(&group.join("cpu.cfs_quota_us")), "20000");

    let child = Command::new("sh")
        .args(["-c", "while :; do :; done"])
        .stdin(Stdio::null())
        .spawn()
        .expect("busy loop");
    let busy = Reaped(child);
    let pid = busy.0.id();
    std::fs::write(group.join("cgroup.procs"), pid.to_string()).expect("join the group");
    // Measure CPU time over a bounded wall-clock window.
    let t0 = Instant::now();
    let c0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(3));
    let used = (cpu_ticks(pid) - c0) as f64 / 100.0;
    let wall = t0.elapsed().as_secs_f64();
    let share = used / wall;
    let stat = read(&group.join("cpu.stat"));
    let throttled: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    eprintln!(
        "busy loop under a 20% quota: {used:.2} s CPU in {wall:.2} s ({:.0}%), nr_throttled {throttled}",
        share * 100.0
    );
    assert!(
        share < 0.6,
        "a 20% quota let the loop use {:.0}%",
        share * 100.0
    );
    assert!(
        throttled > 0,
        "the kernel never throttled the group: {stat}"
    );
    drop(busy);
}

#[test]
fn a_real_memory_limit_stops_an_allocation() {
    if let Some(why) = real_v1_unavailable() {
        eprintln!("SKIP: real cgroup v1 test: {why}");
        return;
    }
    let slice = RealSlice::new("mem");
    let cfg = slice_cfg(Path::new(REAL_ROOT), CgroupVersion::V1, &slice.parent);
    let out = apply_resize(&memory(64), &cfg).expect("limit");
    assert!(out.verified, "{out:?}");
    assert_eq!(out.observed_memory_mib, Some(64));
    let group = slice.group("memory");
    let procs = group.join("cgroup.procs");
    // The child joins the group itself, then allocates (and touches) a 256 MiB buffer.
    let child = Command::new("sh")
        .args([
            "-c",
            &format!(
                "echo $$ > {} && exec dd if=/dev/zero of=/dev/null bs=256M count=1",
                procs.display()
            ),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("allocator");
    let mut child = Reaped(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the allocation neither finished nor died"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    use std::os::unix::process::ExitStatusExt;
    let oom = read(&group.join("memory.oom_control"));
    eprintln!(
        "allocator under a 64 MiB limit: {status}; oom_control: {}",
        oom.replace('\n', ", ")
    );
    assert_eq!(
        status.signal(),
        Some(9),
        "expected an OOM kill, got {status}"
    );
    assert!(
        oom.lines()
            .any(|l| l.strip_prefix("oom_kill ").is_some_and(|n| n != "0")),
        "the kernel did not record an OOM kill: {oom}"
    );
}
