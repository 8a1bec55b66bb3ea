//! The `qmp` actuator against a real QEMU (`qemu-system-x86_64`, Debian package
//! `qemu-system-x86`), started without a guest OS (`-S`, TCG).
//!
//! What can be verified without a guest, and what cannot:
//! - vCPU hot-add: QEMU creates the vCPU at once, so `query-cpus-fast` shows it.
//! - vCPU removal needs the guest's ACPI to eject the vCPU. The second test plays that
//!   part of the guest through QEMU's qtest port interface: it switches QEMU to the
//!   modern CPU hotplug interface (as the guest's firmware tables do at boot) and answers
//!   the removal event by writing the eject bit, which is what Linux's ACPI processor
//!   driver does. The actuator itself only sends QMP.
//! - balloon: `balloon` is accepted, but `query-balloon`'s `actual` moves only when a
//!   guest driver gives pages back, so the resize is reported unverified and `actual`
//!   stays at the boot size. The test asserts exactly that.
//! - virtio-mem: the target (`requested-size`) reads back from `query-memory-devices`;
//!   `size` moves only when a guest driver plugs blocks, so the resize is unverified.
//! - disk: `block_set_io_throttle` takes effect in QEMU at once and `query-block` shows
//!   the limits: verified.
//!
//! Without QEMU installed the tests print why and pass, except under CI=true, where
//! .ci/run installs it and a missing binary fails.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use persona_coordinator::actuate::qmp::{QmpConfig, Session};
use persona_coordinator::actuate::{ActuateError, ActuatorConfig, apply_resize, plan};
use persona_shared::resize::{DiskLimits, NetLimits, ResizeRequest};
use serde_json::{Value, json};

const QEMU: &str = "qemu-system-x86_64";

fn qemu_available() -> bool {
    let found = Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{QEMU} is not installed (CI=true: .ci/run installs qemu-system-x86)"
        );
        eprintln!("SKIP: {QEMU} is not installed (apt-get install qemu-system-x86)");
    }
    found
}

/// A QEMU process, killed and reaped on drop.
struct Vm {
    child: Child,
    dir: tempfile::TempDir,
}

impl Vm {
    /// Starts QEMU paused, with 1 of 4 vCPUs, 256 MiB of boot memory, a balloon, a
    /// virtio-mem device of up to 512 MiB, a virtio-blk disk on a temp file, QMP on a
    /// unix socket and (optionally) the qtest port interface.
    fn start(qtest: bool) -> Vm {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = dir.path().join("disk.img");
        std::fs::File::create(&disk)
            .and_then(|f| f.set_len(64 << 20))
            .expect("disk image");
        let qmp = dir.path().join("qmp.sock");
        let mut args: Vec<String> = [
            "-S",
            "-nodefaults",
            "-display",
            "none",
            "-machine",
            "q35,accel=tcg",
            "-smp",
            "1,maxcpus=4",
            "-m",
            "256M,slots=2,maxmem=1G",
            "-object",
            "memory-backend-ram,id=vmem0,size=512M",
            "-device",
            "virtio-mem-pci,id=vm0,memdev=vmem0,requested-size=0,block-size=2M",
            "-device",
            "virtio-balloon-pci,id=balloon0",
            "-device",
            "virtio-blk-pci,drive=drive0,id=disk0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push("-drive".into());
        args.push(format!(
            "file={},format=raw,if=none,id=drive0",
            disk.display()
        ));
        args.push("-qmp".into());
        args.push(format!("unix:{},server=on,wait=off", qmp.display()));
        if qtest {
            args.push("-qtest".into());
            args.push(format!(
                "unix:{},server=on,wait=off",
                dir.path().join("qtest.sock").display()
            ));
        }
        let log = std::fs::File::create(dir.path().join("qemu.log")).expect("log");
        let child = Command::new(QEMU)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn qemu");
        let mut vm = Vm { child, dir };
        // Bounded wait for the QMP socket to accept.
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(vm.qmp()).is_err() {
            if let Ok(Some(status)) = vm.child.try_wait() {
                panic!("qemu exited with {status}: {}", vm.log());
            }
            assert!(Instant::now() < deadline, "no QMP socket: {}", vm.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        vm
    }

    fn qmp(&self) -> PathBuf {
        self.dir.path().join("qmp.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("qemu.log")).unwrap_or_default()
    }

    fn config(&self, verify_ms: u64) -> ActuatorConfig {
        ActuatorConfig::Qmp(QmpConfig {
            verify_timeout_ms: verify_ms,
            ..QmpConfig::unix(self.qmp())
        })
    }

    /// Runs one QMP command on a fresh session (the actuator's own client).
    async fn qmp_call(&self, cmd: &str, args: Option<Value>) -> Value {
        let mut s = Session::connect(&QmpConfig::unix(self.qmp()))
            .await
            .expect("qmp session");
        s.execute(cmd, args).await.expect(cmd)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn resize(vcpus: Option<u32>, memory_mib: Option<u64>) -> ResizeRequest {
    ResizeRequest {
        vcpus,
        memory_mib,
        ..ResizeRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adds_vcpus_sets_memory_targets_and_throttles_a_disk() {
    if !qemu_available() {
        return;
    }
    let vm = Vm::start(false);
    let cfg = vm.config(5_000);

    // Two vCPUs more, live: QEMU shows them at once.
    let p = plan(&cfg, &resize(Some(3), None)).await.expect("plan");
    assert!(p.is_live_only(), "{p:?}");
    let out = apply_resize(&cfg, &resize(Some(3), None))
        .await
        .expect("add vcpus");
    assert!(out.verified, "{out:?}");
    assert_eq!(out.observed_vcpus, Some(3));
    let cpus = vm.qmp_call("query-cpus-fast", None).await;
    let paths: Vec<&str> = cpus
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|c| c["qom-path"].as_str())
        .collect();
    assert_eq!(paths.len(), 3, "{cpus}");
    assert_eq!(
        paths
            .iter()
            .filter(|p| p.starts_with("/machine/peripheral/persona-cpu-"))
            .count(),
        2,
        "{paths:?}"
    );

    // Beyond maxcpus, below the boot vCPU, network limits, zero vCPUs: refused whole.
    for (req, why) in [
        (resize(Some(5), None), "above the live maximum of 4"),
        (resize(Some(0), None), "vcpus must be 1 or more"),
        (
            ResizeRequest {
                net: Some(NetLimits {
                    interface: "net0".into(),
                    inbound_kibps: Some(1000),
                    outbound_kibps: None,
                }),
                ..ResizeRequest::default()
            },
            "network limits",
        ),
    ] {
        let e = apply_resize(&cfg, &req).await.expect_err(why).to_string();
        assert!(e.contains(why), "{why}: {e}");
    }
    assert_eq!(
        vm.qmp_call("query-cpus-fast", None)
            .await
            .as_array()
            .map(Vec::len),
        Some(3),
        "a refused request changed nothing"
    );

    // Removing a vCPU while QEMU is still in legacy CPU hotplug mode (no guest ACPI ran):
    // QEMU refuses, and the error says why.
    let e = apply_resize(&cfg, &resize(Some(2), None))
        .await
        .expect_err("legacy mode");
    assert!(matches!(e, ActuateError::Refused { .. }), "{e}");
    assert!(e.to_string().contains("legacy CPU hotplug"), "{e}");

    // Balloon below boot memory: QEMU takes the target; without a guest driver the
    // balloon's `actual` stays at 256 MiB, so the resize is applied but not verified.
    let short = vm.config(1_000);
    let out = apply_resize(&short, &resize(None, Some(128)))
        .await
        .expect("balloon");
    assert!(
        out.applied.iter().any(|a| a == "balloon target 128 MiB"),
        "{out:?}"
    );
    assert!(!out.verified, "no guest driver acked the balloon: {out:?}");
    assert_eq!(out.observed_memory_mib, Some(256));
    let b = vm.qmp_call("query-balloon", None).await;
    assert_eq!(b["actual"].as_u64(), Some(256 << 20), "{b}");

    // virtio-mem above boot memory: the target reads back at once, `size` waits for a
    // guest driver.
    let out = apply_resize(&short, &resize(None, Some(512)))
        .await
        .expect("virtio-mem");
    assert!(
        out.applied
            .iter()
            .any(|a| a == "virtio-mem vm0 requested-size 0 -> 256 MiB"),
        "{out:?}"
    );
    assert!(!out.verified, "{out:?}");
    let devs = vm.qmp_call("query-memory-devices", None).await;
    let vm0 = devs
        .as_array()
        .and_then(|d| d.iter().find(|d| d["data"]["id"] == "vm0"))
        .expect("vm0");
    assert_eq!(vm0["data"]["requested-size"].as_u64(), Some(256 << 20));
    assert_eq!(vm0["data"]["size"].as_u64(), Some(0));
    // Above boot memory plus the virtio-mem maximum: refused.
    let e = apply_resize(&short, &resize(None, Some(1024)))
        .await
        .expect_err("above maxmem");
    assert!(matches!(e, ActuateError::Unsupported { .. }), "{e}");

    // Disk limits by the device's qdev id; query-block shows them on its drive.
    let disk = ResizeRequest {
        disk: Some(DiskLimits {
            device: "disk0".into(),
            read_iops: Some(100),
            write_iops: None,
            read_bps: None,
            write_bps: Some(1_000_000),
        }),
        ..ResizeRequest::default()
    };
    let out = apply_resize(&cfg, &disk).await.expect("throttle");
    assert!(out.verified, "{out:?}");
    let blocks = vm.qmp_call("query-block", None).await;
    let drive0 = blocks
        .as_array()
        .and_then(|b| b.iter().find(|b| b["device"] == "drive0"))
        .expect("drive0");
    assert_eq!(
        drive0["inserted"]["iops_rd"].as_u64(),
        Some(100),
        "{drive0}"
    );
    assert_eq!(drive0["inserted"]["bps_wr"].as_u64(), Some(1_000_000));
    assert_eq!(drive0["inserted"]["iops_wr"].as_u64(), Some(0));
    let missing = ResizeRequest {
        disk: Some(DiskLimits {
            device: "nosuchdisk".into(),
            read_iops: Some(1),
            ..DiskLimits::default()
        }),
        ..ResizeRequest::default()
    };
    let e = apply_resize(&cfg, &missing)
        .await
        .expect_err("no such disk");
    assert!(
        e.to_string().contains("drive0"),
        "lists the known devices: {e}"
    );
}

/// The guest's side of ACPI CPU hot-unplug, through QEMU's qtest port interface: poll
/// each CPU's flags for the remove event and write the eject bit (QEMU 7.2's
/// hw/acpi/cpu.c register block at 0x0cd8 on q35: selector at +0, flags at +4).
fn eject_on_request(qtest: &Path, cpus: u32, deadline: Instant) -> Result<u32, String> {
    let stream = UnixStream::connect(qtest).map_err(|e| format!("qtest: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let mut w = stream;
    let mut cmd = |line: &str| -> Result<String, String> {
        writeln!(w, "{line}").map_err(|e| e.to_string())?;
        let mut reply = String::new();
        reader.read_line(&mut reply).map_err(|e| e.to_string())?;
        if !reply.starts_with("OK") {
            return Err(format!("qtest {line}: {reply}"));
        }
        Ok(reply.trim().to_owned())
    };
    while Instant::now() < deadline {
        for cpu in 1..cpus {
            cmd(&format!("outl 0xcd8 {cpu}"))?;
            let flags = cmd("inb 0xcdc")?;
            let value = flags
                .strip_prefix("OK 0x")
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(format!("flags: {flags}"))?;
            if value & 0x4 != 0 {
                cmd("outb 0xcdc 8")?;
                return Ok(cpu);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err("no removal request before the deadline".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removes_a_vcpu_when_the_guest_ejects_it() {
    if !qemu_available() {
        return;
    }
    let vm = Vm::start(true);
    let cfg = vm.config(10_000);
    let out = apply_resize(&cfg, &resize(Some(3), None))
        .await
        .expect("add");
    assert!(out.verified, "{out:?}");

    // What a booting guest's firmware tables do: switch to modern CPU hotplug.
    let unattached = vm
        .qmp_call("qom-list", Some(json!({"path": "/machine/unattached"})))
        .await;
    let lpc = unattached
        .as_array()
        .and_then(|l| l.iter().find(|p| p["type"] == "child<ICH9-LPC>"))
        .and_then(|p| p["name"].as_str())
        .expect("ICH9-LPC");
    vm.qmp_call(
        "qom-set",
        Some(json!({"path": format!("/machine/unattached/{lpc}"), "property": "cpu-hotplug-legacy", "value": false})),
    )
    .await;

    let qtest = vm.dir.path().join("qtest.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    let guest = std::thread::spawn(move || eject_on_request(&qtest, 4, deadline));
    let out = apply_resize(&cfg, &resize(Some(2), None))
        .await
        .expect("remove");
    let ejected = guest.join().expect("guest thread");
    assert_eq!(ejected, Ok(2), "the highest hot-plugged vCPU goes first");
    assert!(out.verified, "{out:?}");
    assert_eq!(out.observed_vcpus, Some(2));
    assert!(
        out.applied.iter().any(|a| a.contains("removal requested")),
        "{out:?}"
    );
    let cpus = vm.qmp_call("query-cpus-fast", None).await;
    assert_eq!(cpus.as_array().map(Vec::len), Some(2), "{cpus}");
}
