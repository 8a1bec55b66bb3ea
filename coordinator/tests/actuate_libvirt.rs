//! The `libvirt` actuator against a real libvirtd (`qemu:///system`) and a transient QEMU
//! domain without a guest OS (it sits in the firmware). Optional: it needs the Debian
//! packages libvirt-daemon-system and qemu-system-x86 and a running libvirtd (and
//! virtlogd); without them it prints why and passes. .ci/run does not start libvirtd.
//! On the Firecracker build machines `virsh create` itself takes about 60 s (libvirt's
//! domain setup, not the actuator), so this test runs for about 70 s when it runs.
//!
//! Verifiable without a guest: vCPU hot-add (`vcpucount --live --active`) and disk
//! limits (`blkdeviotune`). Not verifiable: `setmem --live`, since `dominfo`'s "Used
//! memory" is the balloon's size, which moves only when a guest driver gives pages back.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use persona_coordinator::actuate::libvirt::LibvirtConfig;
use persona_coordinator::actuate::{ActuatorConfig, apply_resize};
use persona_shared::resize::{DiskLimits, ResizeRequest};

const URI: &str = "qemu:///system";

fn virsh(args: &[&str]) -> Result<String, String> {
    let out = Command::new("virsh")
        .arg("-c")
        .arg(URI)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("virsh: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// A transient domain, destroyed on drop.
struct Domain {
    name: String,
    _dir: tempfile::TempDir,
}

impl Drop for Domain {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.name]);
    }
}

fn start_domain() -> Result<Domain, String> {
    if !std::path::Path::new("/usr/bin/virsh").exists() {
        return Err("virsh is not installed (libvirt-clients)".into());
    }
    virsh(&["version"]).map_err(|e| format!("libvirtd is not reachable at {URI}: {e}"))?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let disk: PathBuf = dir.path().join("disk.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(64 << 20))
        .map_err(|e| e.to_string())?;
    let name = format!("persona-test-{}", std::process::id());
    let xml = format!(
        "<domain type='qemu'><name>{name}</name>\
         <memory unit='MiB'>512</memory><currentMemory unit='MiB'>512</currentMemory>\
         <vcpu placement='static' current='1'>4</vcpu>\
         <os><type arch='x86_64' machine='q35'>hvm</type></os><features><acpi/></features>\
         <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>\
         <disk type='file' device='disk'><driver name='qemu' type='raw'/>\
         <source file='{}'/><target dev='vda' bus='virtio'/></disk>\
         <memballoon model='virtio'/></devices></domain>",
        disk.display()
    );
    let path = dir.path().join("domain.xml");
    std::fs::write(&path, xml).map_err(|e| e.to_string())?;
    virsh(&["create", &path.to_string_lossy()]).map_err(|e| format!("virsh create: {e}"))?;
    Ok(Domain { name, _dir: dir })
}

#[tokio::test]
async fn libvirt_hot_adds_vcpus_and_sets_disk_limits() {
    let dom = match start_domain() {
        Ok(d) => d,
        Err(why) => {
            eprintln!("SKIP: {why}");
            return;
        }
    };
    let cfg = ActuatorConfig::Libvirt(LibvirtConfig {
        uri: Some(URI.into()),
        verify_timeout_ms: 5_000,
        ..LibvirtConfig::new(dom.name.clone())
    });

    let out = apply_resize(
        &cfg,
        &ResizeRequest {
            vcpus: Some(3),
            ..ResizeRequest::default()
        },
    )
    .await
    .expect("setvcpus");
    assert!(out.verified, "{out:?}");
    assert_eq!(out.observed_vcpus, Some(3));
    assert_eq!(
        virsh(&["vcpucount", &dom.name, "--live", "--active"])
            .expect("vcpucount")
            .trim(),
        "3"
    );

    let disk = ResizeRequest {
        disk: Some(DiskLimits {
            device: "vda".into(),
            read_iops: Some(100),
            write_bps: Some(1 << 20),
            ..DiskLimits::default()
        }),
        ..ResizeRequest::default()
    };
    let out = apply_resize(&cfg, &disk).await.expect("blkdeviotune");
    assert!(out.verified, "{out:?}");
    let tune = virsh(&["blkdeviotune", &dom.name, "vda", "--live"]).expect("read back");
    assert!(tune.contains("read_iops_sec  : 100"), "{tune}");

    // The balloon target is accepted; without a guest driver it is not reached.
    let short = ActuatorConfig::Libvirt(LibvirtConfig {
        uri: Some(URI.into()),
        verify_timeout_ms: 1_000,
        ..LibvirtConfig::new(dom.name.clone())
    });
    let out = apply_resize(
        &short,
        &ResizeRequest {
            memory_mib: Some(256),
            ..ResizeRequest::default()
        },
    )
    .await
    .expect("setmem");
    assert!(out.applied.iter().any(|a| a.contains("setmem")), "{out:?}");
    assert!(!out.verified, "{out:?}");
    assert_eq!(out.observed_memory_mib, Some(512));

    // Above the domain's maximum of 4 vCPUs: a restart change, held back without the
    // operator's opt-in.
    let out = apply_resize(
        &short,
        &ResizeRequest {
            vcpus: Some(6),
            ..ResizeRequest::default()
        },
    )
    .await
    .expect("held back");
    assert!(!out.verified && out.applied.is_empty(), "{out:?}");
    assert_eq!(out.needs_restart.len(), 1, "{out:?}");
}
