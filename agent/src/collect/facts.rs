//! Host facts: what the machine is (vCPUs online/possible, memory, disks, NICs, OS,
//! kernel, virtualisation, instance id), read fresh from `/proc`, `/sys` and
//! os-release whenever asked. This is not on the per-tick path (it allocates freely);
//! the collector only watches a few cheap signals each tick to tell when it is worth
//! asking again. Every field is best effort: what cannot be read is `None`/0/empty.
//!
//! os-release is found at `<proc_root>/../etc/os-release` (then `usr/lib/os-release`):
//! for the real `/proc` that is `/etc/os-release`, and a fixture tree keeps `proc/`,
//! `sys/` and `etc/` side by side, so there is no third root to configure.

use std::fs;
use std::path::{Path, PathBuf};

use persona_shared::facts::{DiskFact, HostFacts, NicFact};

use super::disk::{Kind, classify};
use super::memory::parse_meminfo;

fn read_trimmed(path: &Path) -> Option<String> {
    let s = fs::read_to_string(path).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// Counts the CPUs in a kernel CPU list such as `0-3,6,8-9`.
pub(crate) fn count_cpu_list(s: &str) -> Option<u32> {
    let mut n = 0u32;
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                b.checked_sub(a)? + 1
            }
            None => {
                part.parse::<u32>().ok()?;
                1
            }
        };
    }
    Some(n)
}

/// `PRETTY_NAME` from an os-release file, unquoted.
pub(crate) fn pretty_name(text: &str) -> Option<String> {
    let v = text.lines().find_map(|l| l.strip_prefix("PRETTY_NAME="))?;
    let v = v.trim().trim_matches(|c| c == '"' || c == '\'');
    (!v.is_empty()).then(|| v.to_owned())
}

/// Tells the hypervisor from DMI strings (vendor, product), using systemd-detect-virt's
/// names.
fn virt_from_dmi(vendor: &str, product: &str) -> Option<&'static str> {
    const TABLE: [(&str, &str); 11] = [
        ("Amazon EC2", "amazon"),
        ("Google", "google"),
        ("Microsoft Corporation", "microsoft"),
        ("VMware", "vmware"),
        ("innotek GmbH", "oracle"),
        ("VirtualBox", "oracle"),
        ("Xen", "xen"),
        ("QEMU", "qemu"),
        ("KVM", "kvm"),
        ("Parallels", "parallels"),
        ("OpenStack", "kvm"),
    ];
    TABLE
        .iter()
        .find(|(needle, _)| vendor.contains(needle) || product.contains(needle))
        .map(|(_, v)| *v)
}

/// DMI placeholders that mean "no id".
fn real_id(s: String) -> Option<String> {
    let junk = [
        "Not Specified",
        "None",
        "To be filled by O.E.M.",
        "Default string",
        "0",
        "Unknown",
    ];
    let zero_uuid = s.chars().all(|c| c == '0' || c == '-');
    (!junk.contains(&s.as_str()) && !zero_uuid).then_some(s)
}

/// Reads the facts from the trees. See the module documentation.
pub(crate) fn read(proc_root: &Path, sys_root: &Path) -> HostFacts {
    let dmi = sys_root.join("class/dmi/id");
    let cpu = sys_root.join("devices/system/cpu");
    let count = |f: &str| {
        read_trimmed(&cpu.join(f))
            .and_then(|s| count_cpu_list(&s))
            .unwrap_or(0)
    };
    let etc_root: PathBuf = proc_root
        .parent()
        .map_or_else(|| PathBuf::from("/"), Path::to_owned);
    let os_release = ["etc/os-release", "usr/lib/os-release"]
        .iter()
        .find_map(|f| fs::read_to_string(etc_root.join(f)).ok())
        .and_then(|t| pretty_name(&t));
    let mem_total_bytes = fs::read(proc_root.join("meminfo"))
        .ok()
        .and_then(|b| parse_meminfo(&b).ok())
        .map_or(0, |m| m.total);
    HostFacts {
        hostname: read_trimmed(&proc_root.join("sys/kernel/hostname")).unwrap_or_default(),
        cpus_online: count("online"),
        cpus_possible: count("possible"),
        mem_total_bytes,
        disks: disks(sys_root),
        nics: nics(sys_root),
        os_release,
        kernel: read_trimmed(&proc_root.join("sys/kernel/osrelease")),
        virtualization: virtualization(proc_root, sys_root, &dmi),
        instance_id: read_trimmed(&dmi.join("board_asset_tag"))
            .filter(|t| t.starts_with("i-"))
            .or_else(|| read_trimmed(&dmi.join("product_uuid")))
            .and_then(real_id),
        psi_available: fs::read(proc_root.join("pressure/cpu")).is_ok(),
    }
}

fn virtualization(proc_root: &Path, sys_root: &Path, dmi: &Path) -> Option<String> {
    if let Some(t) = read_trimmed(&sys_root.join("hypervisor/type")) {
        return Some(t);
    }
    let vendor = read_trimmed(&dmi.join("sys_vendor")).unwrap_or_default();
    let product = read_trimmed(&dmi.join("product_name")).unwrap_or_default();
    if let Some(v) = virt_from_dmi(&vendor, &product) {
        return Some(v.to_owned());
    }
    // x86 only: the `hypervisor` CPU flag says "a VM" but not which. Firecracker and
    // some clouds expose no DMI, so fall back on the paravirtual clock the guest found.
    let cpuinfo = fs::read_to_string(proc_root.join("cpuinfo")).ok()?;
    let flags = cpuinfo.lines().find(|l| l.starts_with("flags"))?;
    if !flags.split_whitespace().any(|f| f == "hypervisor") {
        return Some("none".to_owned());
    }
    let clocks = read_trimmed(
        &sys_root.join("devices/system/clocksource/clocksource0/available_clocksource"),
    )
    .unwrap_or_default();
    let clocks: Vec<&str> = clocks.split_whitespace().collect();
    if clocks.contains(&"kvm-clock") {
        Some("kvm".to_owned())
    } else if clocks.contains(&"hyperv_clocksource_tsc_page") {
        Some("microsoft".to_owned())
    } else if clocks.contains(&"xen") {
        Some("xen".to_owned())
    } else {
        None
    }
}

fn sorted_dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort_unstable();
    names
}

fn disks(sys_root: &Path) -> Vec<DiskFact> {
    let block = sys_root.join("block");
    sorted_dir_names(&block)
        .into_iter()
        .filter(|n| classify(sys_root, n) != Kind::Excluded)
        .map(|name| {
            let dir = block.join(&name);
            let sectors: u64 = read_trimmed(&dir.join("size"))
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            DiskFact {
                // sysfs size is in 512-byte sectors whatever the logical block size.
                size_bytes: sectors.saturating_mul(512),
                rotational: read_trimmed(&dir.join("queue/rotational")).is_some_and(|s| s == "1"),
                model: read_trimmed(&dir.join("device/model")),
                name: name.replace('!', "/"),
            }
        })
        .collect()
}

fn nics(sys_root: &Path) -> Vec<NicFact> {
    let net = sys_root.join("class/net");
    sorted_dir_names(&net)
        .into_iter()
        .map(|name| {
            let dir = net.join(&name);
            NicFact {
                // -1 (or EINVAL on read) when the driver does not know, e.g. virtio-net.
                speed_mbps: read_trimmed(&dir.join("speed")).and_then(|s| s.parse::<u64>().ok()),
                mtu: read_trimmed(&dir.join("mtu")).and_then(|s| s.parse().ok()),
                name,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(count_cpu_list("0-1\n"), Some(2));
        assert_eq!(count_cpu_list("0-3,6,8-9"), Some(7));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("x"), None);
    }

    #[test]
    fn os_release_and_dmi() {
        assert_eq!(
            pretty_name("NAME=x\nPRETTY_NAME=\"Debian 12\"\n").as_deref(),
            Some("Debian 12")
        );
        assert_eq!(pretty_name("NAME=x\n"), None);
        assert_eq!(virt_from_dmi("QEMU", "Standard PC"), Some("qemu"));
        assert_eq!(virt_from_dmi("Amazon EC2", "m5.large"), Some("amazon"));
        assert_eq!(virt_from_dmi("Dell Inc.", "PowerEdge"), None);
        assert_eq!(real_id("00000000-0000-0000-0000-000000000000".into()), None);
        assert_eq!(real_id("ec2abcd".into()).as_deref(), Some("ec2abcd"));
    }
}
