//! The collectors against fixture trees (real captures of this kind of VM, copied into
//! a temp dir and mutated): rates from two real instants, and the awkward cases — no
//! PSI, counters going backwards, devices appearing and disappearing, garbage files, a
//! zero elapsed time — none of which may give a negative or infinite value or stop the
//! sample.
// Helpers outside #[test] functions unwrap too: a fixture that cannot be set up is a
// failed test.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};

use persona_agent::collect::{CollectConfig, Collector, TickReport};
use persona_shared::metrics::{disk, host, nic};
use persona_shared::sample::Sample;

const SEC: u64 = 1_000_000_000;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            fs::copy(e.path(), &dst).unwrap();
        }
    }
}

/// A temp copy of one captured instant, with a collector pointed at it.
struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn new(instant: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        copy_tree(&fixtures().join(instant), dir.path());
        Self { dir }
    }
    fn proc(&self) -> PathBuf {
        self.dir.path().join("proc")
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn collector(&self, process_every: u32) -> Collector {
        Collector::new(CollectConfig {
            proc_root: self.proc(),
            sys_root: self.dir.path().join("sys"),
            top_n: 5,
            process_every,
        })
    }
    /// Replaces the /proc files with those of another captured instant.
    fn advance_to(&self, instant: &str) {
        copy_tree(&fixtures().join(instant).join("proc"), &self.proc());
    }
    fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }
    fn edit(&self, rel: &str, f: impl FnOnce(String) -> String) {
        let p = self.path(rel);
        let s = fs::read_to_string(&p).unwrap();
        fs::write(p, f(s)).unwrap();
    }
}

fn tick(c: &mut Collector, t_ns: u64, s: &mut Sample) -> TickReport {
    c.sample_at(1_700_000_000_000 + (t_ns / 1_000_000) as i64, t_ns, s)
}

fn field(line: &str, i: usize) -> u64 {
    line.split_whitespace().nth(i).unwrap().parse().unwrap()
}

fn fixture_line(instant: &str, file: &str, prefix: &str) -> String {
    fs::read_to_string(fixtures().join(instant).join(file))
        .unwrap()
        .lines()
        .find(|l| l.trim_start().starts_with(prefix))
        .unwrap()
        .to_owned()
}

/// No value anywhere in the sample is negative or infinite.
fn assert_sane(s: &Sample) {
    let all = s
        .host
        .iter()
        .chain(&s.disk_total)
        .chain(&s.nic_total)
        .chain(s.disks.iter().flat_map(|d| d.values.iter()))
        .chain(s.nics.iter().flat_map(|n| n.values.iter()));
    for v in all {
        assert!(
            v.is_nan() || (v.is_finite() && *v >= 0.0),
            "bad value {v} in {s:?}"
        );
    }
}

#[test]
fn two_real_instants_give_sane_rates() {
    let t = Tree::new("real-t0");
    let mut c = t.collector(1);
    let mut s = Sample::default();
    let r0 = tick(&mut c, SEC, &mut s);
    assert!(r0.all_ok(), "{:?}", r0.failed().collect::<Vec<_>>());
    // No previous reading: rates NaN, gauges present.
    assert!(s.host[host::CPU_USER_RATIO].is_nan() && s.host[host::CTXT_PER_S].is_nan());
    assert!(s.host[host::MEM_TOTAL] > 0.0 && s.host[host::LOAD_1M].is_finite());
    assert_sane(&s);

    t.advance_to("real-t1");
    let r1 = tick(&mut c, 2 * SEC, &mut s);
    assert!(r1.all_ok() && !r1.facts_changed);
    assert_sane(&s);
    let h = &s.host;
    let ratios = &h[host::CPU_USER_RATIO..=host::CPU_IDLE_RATIO];
    assert!(ratios.iter().all(|r| (0.0..=1.0).contains(r)));
    assert!((ratios.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    assert_eq!(h[host::CPU_ONLINE], 2.0);
    for m in 0..8 {
        assert!((h[host::CPU_USER_CORES + m] - 2.0 * h[host::CPU_USER_RATIO + m]).abs() < 1e-12);
    }
    let ctxt = |i| field(&fixture_line(i, "proc/stat", "ctxt"), 1);
    assert_eq!(
        h[host::CTXT_PER_S],
        (ctxt("real-t1") - ctxt("real-t0")) as f64
    );
    assert!(h[host::MEM_AVAILABLE] <= h[host::MEM_TOTAL]);
    assert_eq!(
        h[host::MEM_USED],
        h[host::MEM_TOTAL] - h[host::MEM_AVAILABLE]
    );
    assert!(h[host::MEM_MINFLT_PER_S] > 0.0);
    // This kernel has PSI with a cpu `full` line: every PSI value is present.
    for (i, v) in h.iter().enumerate().skip(host::PSI_CPU) {
        assert!(v.is_finite(), "psi index {i}");
    }
    // Only the whole disk: loop devices and zram are left out.
    assert_eq!(
        s.disks.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
        ["vda"]
    );
    let vda = |i| fixture_line(i, "proc/diskstats", "254");
    let sectors_read = (field(&vda("real-t1"), 5) - field(&vda("real-t0"), 5)) as f64;
    assert_eq!(s.disk_total[disk::READ_BYTES_PER_S], sectors_read * 512.0);
    assert_eq!(s.disks[0].values, s.disk_total);
    // Every interface listed, loopback too; the total leaves loopback out.
    assert_eq!(
        s.nics.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["eth0", "ifb0", "ifb1", "lo"]
    );
    let no_lo: f64 = s
        .nics
        .iter()
        .filter(|n| n.name != "lo")
        .map(|n| n.values[nic::RX_BYTES_PER_S])
        .sum();
    assert_eq!(s.nic_total[nic::RX_BYTES_PER_S], no_lo);
    // Processes: the capture has two, ranked by memory; neither used CPU between the
    // two instants, so the CPU list is empty (idle processes are not listed).
    assert_eq!(s.top_rss.len(), 2);
    assert!(s.top_cpu.is_empty());
    assert!(s.top_rss[0].rss_bytes >= s.top_rss[1].rss_bytes);
    assert!(
        s.top_cpu
            .iter()
            .all(|p| p.cpu_pct > 0.0 && p.comm.len() <= 15)
    );
    assert!(s.top_rss.iter().any(|p| p.comm == "bash"));
    assert!(c.failures().iter().all(|(_, n)| *n == 0));
}

#[test]
fn host_facts_from_the_real_capture() {
    let t = Tree::new("real-t0");
    let f = t.collector(1).host_facts();
    assert_eq!((f.cpus_online, f.cpus_possible), (2, 2));
    assert_eq!(f.hostname, "vm");
    assert!(f.mem_total_bytes > 0);
    assert_eq!(f.disks.len(), 1);
    assert_eq!(f.disks[0].name, "vda");
    assert!(f.disks[0].size_bytes > 0);
    assert_eq!(f.nics.len(), 4);
    let eth0 = f.nics.iter().find(|n| n.name == "eth0").unwrap();
    assert_eq!(eth0.speed_mbps, None, "virtio-net reports -1");
    assert!(eth0.mtu.is_some());
    assert_eq!(
        f.os_release.as_deref(),
        Some("Debian GNU/Linux 12 (bookworm)")
    );
    assert!(f.kernel.is_some());
    assert_eq!(f.virtualization.as_deref(), Some("kvm"));
    assert_eq!(f.instance_id, None);
    assert!(f.psi_available);

    t.write("sys/class/dmi/id/sys_vendor", "Amazon EC2\n");
    t.write("sys/class/dmi/id/board_asset_tag", "i-0123456789abcdef0\n");
    let f = t.collector(1).host_facts();
    assert_eq!(f.virtualization.as_deref(), Some("amazon"));
    assert_eq!(f.instance_id.as_deref(), Some("i-0123456789abcdef0"));
}

#[test]
fn no_pressure_directory_is_not_a_failure() {
    let t = Tree::new("real-t0");
    fs::remove_dir_all(t.path("proc/pressure")).unwrap();
    let mut c = t.collector(1);
    let mut s = Sample::default();
    tick(&mut c, SEC, &mut s);
    let r = tick(&mut c, 2 * SEC, &mut s);
    assert!(r.all_ok());
    assert!(
        s.host[host::PSI_CPU..host::COUNT]
            .iter()
            .all(|v| v.is_nan())
    );
    assert!(!c.host_facts().psi_available);
}

#[test]
fn cpu_full_line_absent_on_older_kernels() {
    let t = Tree::new("real-t0");
    t.write(
        "proc/pressure/cpu",
        "some avg10=1.50 avg60=0.10 avg300=0.00 total=1000\n",
    );
    let mut c = t.collector(1);
    let mut s = Sample::default();
    tick(&mut c, SEC, &mut s);
    t.write(
        "proc/pressure/cpu",
        "some avg10=1.50 avg60=0.10 avg300=0.00 total=251000\n",
    );
    let r = tick(&mut c, 2 * SEC, &mut s);
    assert!(r.all_ok());
    assert_eq!(s.host[host::PSI_CPU], 1.5);
    assert!(s.host[host::PSI_CPU + 1].is_nan());
    assert_eq!(s.host[host::PSI_CPU + 2], 0.25);
    assert!(s.host[host::PSI_CPU + 3].is_nan());
    assert!(s.host[host::PSI_MEMORY + 2].is_finite());
}

#[test]
fn counters_going_backwards_give_nan_for_one_tick() {
    let t = Tree::new("real-t0");
    let mut c = t.collector(1);
    let mut s = Sample::default();
    tick(&mut c, SEC, &mut s);
    // eth0's rx bytes, vda's sectors read, ctxt and pgfault all drop (a reset or wrap).
    t.edit("proc/net/dev", |s| s.replace("eth0: 55476712", "eth0: 5"));
    t.edit("proc/diskstats", |s| {
        s.replace("vda 6952 3340 1965762", "vda 6952 3340 1")
    });
    t.edit("proc/stat", |s| s.replace("ctxt 220292", "ctxt 2"));
    t.edit("proc/vmstat", |s| {
        s.lines()
            .map(|l| {
                if l.starts_with("pgfault ") {
                    "pgfault 1".to_owned()
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    let r = tick(&mut c, 2 * SEC, &mut s);
    assert!(r.all_ok());
    assert_sane(&s);
    let eth0 = s.nics.iter().find(|n| n.name == "eth0").unwrap();
    assert!(eth0.values[nic::RX_BYTES_PER_S].is_nan());
    assert_eq!(eth0.values[nic::TX_BYTES_PER_S], 0.0);
    assert!(s.disks[0].values[disk::READ_BYTES_PER_S].is_nan());
    assert!(s.disks[0].values[disk::AVG_REQUEST_BYTES].is_nan());
    assert_eq!(s.disks[0].values[disk::WRITE_BYTES_PER_S], 0.0);
    assert!(s.host[host::CTXT_PER_S].is_nan());
    assert!(s.host[host::MEM_MINFLT_PER_S].is_nan());
    assert!(s.host[host::INTR_PER_S].is_finite());
    // The next tick measures from the new values.
    t.edit("proc/net/dev", |s| s.replace("eth0: 5 ", "eth0: 1005 "));
    tick(&mut c, 3 * SEC, &mut s);
    let eth0 = s.nics.iter().find(|n| n.name == "eth0").unwrap();
    assert_eq!(eth0.values[nic::RX_BYTES_PER_S], 1000.0);
    assert!(s.host[host::CTXT_PER_S].is_finite());
}

#[test]
fn a_disk_disappearing_and_another_appearing() {
    let t = Tree::new("real-t0");
    let mut c = t.collector(1);
    let mut s = Sample::default();
    tick(&mut c, SEC, &mut s);
    tick(&mut c, 2 * SEC, &mut s);
    t.edit("proc/diskstats", |s| {
        s.lines()
            .filter(|l| !l.contains("vda"))
            .collect::<Vec<_>>()
            .join("\n")
    });
    let r = tick(&mut c, 3 * SEC, &mut s);
    assert!(r.all_ok() && r.facts_changed);
    assert!(s.disks.is_empty());
    assert!(s.disk_total.iter().all(|v| v.is_nan()));
    assert!(
        c.host_facts().disks.len() == 1,
        "sysfs still lists vda in this tree"
    );

    // vdb is hot-plugged: listed at once with its queue, rates from the next tick.
    fs::create_dir_all(t.path("sys/block/vdb")).unwrap();
    t.edit("proc/diskstats", |s| {
        s + "\n 254 16 vdb 10 0 80 1 20 0 160 2 3 5 6 0 0 0 0\n"
    });
    let r = tick(&mut c, 4 * SEC, &mut s);
    assert!(r.facts_changed);
    assert_eq!(s.disks.len(), 1);
    assert_eq!(s.disks[0].name, "vdb");
    assert_eq!(s.disks[0].values[disk::INFLIGHT], 3.0);
    assert!(s.disks[0].values[disk::WRITE_BYTES_PER_S].is_nan());
    t.edit("proc/diskstats", |s| {
        s.replace(
            "vdb 10 0 80 1 20 0 160 2 3 5",
            "vdb 10 0 80 1 30 0 240 2 0 505",
        )
    });
    let r = tick(&mut c, 5 * SEC, &mut s);
    assert!(!r.facts_changed);
    let v = &s.disks[0].values;
    assert_eq!(v[disk::WRITE_BYTES_PER_S], 80.0 * 512.0);
    assert_eq!(v[disk::WRITE_IOPS], 10.0);
    assert_eq!(v[disk::READ_IOPS], 0.0);
    assert_eq!(v[disk::AVG_REQUEST_BYTES], 4096.0);
    assert_eq!(v[disk::BUSY_PCT], 50.0);
    assert_eq!(s.disk_total, *v);
}

#[test]
fn partitions_and_stacked_devices_stay_out_of_the_total() {
    let t = Tree::new("real-t0");
    t.edit("proc/diskstats", |s| {
        s + " 254 1 vda1 5 0 40 1 5 0 40 1 0 2 2 0 0 0 0\n 252 0 dm-0 1 0 8 1 1 0 8 1 0 1 1 0 0 0 0\n"
    });
    fs::create_dir_all(t.path("sys/block/dm-0/slaves/vda")).unwrap();
    let mut c = t.collector(1);
    let mut s = Sample::default();
    tick(&mut c, SEC, &mut s);
    t.edit("proc/diskstats", |s| {
        s.replace("dm-0 1 0 8", "dm-0 1 0 4008")
    });
    tick(&mut c, 2 * SEC, &mut s);
    assert_eq!(
        s.disks.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
        ["dm-0", "vda"]
    );
    assert_eq!(s.disks[0].values[disk::READ_BYTES_PER_S], 4000.0 * 512.0);
    assert_eq!(s.disk_total[disk::READ_BYTES_PER_S], 0.0);
    assert_eq!(
        c.host_facts()
            .disks
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>(),
        ["dm-0", "vda"]
    );
}

#[test]
fn a_nic_appearing_gets_rates_from_its_second_tick() {
    let t = Tree::new("real-t0");
    let mut c = t.collector(1);
    let mut s = Sample::default();
    tick(&mut c, SEC, &mut s);
    let line = |rx: u64| format!("  eth1: {rx} 10 0 0 0 0 0 0 500 5 0 0 0 0 0 0\n");
    let base = fs::read_to_string(t.path("proc/net/dev")).unwrap();
    t.write("proc/net/dev", &(base.clone() + &line(1000)));
    let r = tick(&mut c, 2 * SEC, &mut s);
    assert!(r.facts_changed);
    assert_eq!(s.nics.len(), 5);
    let eth1 = s.nics.iter().find(|n| n.name == "eth1").unwrap();
    assert!(eth1.values.iter().all(|v| v.is_nan()));
    // The total still has the NICs that had a rate.
    assert!(s.nic_total[nic::RX_BYTES_PER_S].is_finite());
    t.write("proc/net/dev", &(base + &line(3000)));
    tick(&mut c, 4 * SEC, &mut s);
    let eth1 = s.nics.iter().find(|n| n.name == "eth1").unwrap();
    assert_eq!(eth1.values[nic::RX_BYTES_PER_S], 1000.0);
    assert_eq!(eth1.values[nic::TX_PACKETS_PER_S], 0.0);
    assert_eq!(s.nic_total[nic::RX_BYTES_PER_S], 1000.0);
}

#[test]
fn garbage_or_missing_files_fail_one_collector_only() {
    let cases: [(&str, &str, &[usize]); 7] = [
        (
            "proc/stat",
            "cpu",
            &[host::CPU_USER_RATIO, host::CPU_ONLINE, host::CTXT_PER_S],
        ),
        ("proc/loadavg", "load", &[host::LOAD_1M]),
        (
            "proc/meminfo",
            "memory",
            &[host::MEM_TOTAL, host::MEM_AVAILABLE],
        ),
        ("proc/vmstat", "memory", &[host::MEM_MINFLT_PER_S]),
        ("proc/pressure/io", "psi", &[host::PSI_IO]),
        ("proc/diskstats", "disk", &[]),
        ("proc/net/dev", "net", &[]),
    ];
    for (file, collector, nan) in cases {
        for missing in [false, true] {
            let t = Tree::new("real-t0");
            let mut c = t.collector(1);
            let mut s = Sample::default();
            tick(&mut c, SEC, &mut s);
            t.advance_to("real-t1");
            if missing && file != "proc/pressure/io" {
                fs::remove_file(t.path(file)).unwrap();
            } else {
                t.write(file, "garbage\n\u{1}\u{2} 12 x\n");
            }
            let r = tick(&mut c, 2 * SEC, &mut s);
            assert_eq!(
                r.failed().collect::<Vec<_>>(),
                [collector],
                "{file} missing={missing}"
            );
            assert_sane(&s);
            assert!(!r.facts_changed, "a failure is not a change of the machine");
            for &i in nan {
                assert!(s.host[i].is_nan(), "{file}: host[{i}] = {}", s.host[i]);
            }
            // The rest of the sample went on.
            if collector != "cpu" {
                assert!(s.host[host::CPU_USER_RATIO].is_finite());
            }
            if collector != "memory" {
                assert!(s.host[host::MEM_TOTAL].is_finite());
            }
            if collector == "psi" {
                assert!(s.host[host::PSI_CPU].is_finite());
            }
            let failed: u64 = c.failures().iter().map(|(_, n)| n).sum();
            assert_eq!(failed, 1);
        }
    }
}

#[test]
fn zero_elapsed_time_gives_nan_rates_not_infinities() {
    let t = Tree::new("real-t0");
    let mut c = t.collector(1);
    let mut s = Sample::default();
    tick(&mut c, SEC, &mut s);
    t.advance_to("real-t1");
    tick(&mut c, SEC, &mut s);
    assert_sane(&s);
    assert!(s.host[host::CTXT_PER_S].is_nan());
    assert!(s.nic_total[nic::RX_BYTES_PER_S].is_nan());
    assert!(s.disk_total[disk::READ_BYTES_PER_S].is_nan());
    assert!(s.host[host::PSI_CPU + 2].is_nan());
}

#[test]
fn process_scan_schedule() {
    let t = Tree::new("real-t0");
    let mut c = t.collector(3);
    let mut s = Sample::default();
    let scanned: Vec<bool> = (1..=8)
        .map(|i| tick(&mut c, i * SEC, &mut s).procs_scanned)
        .collect();
    // Prime, then at once, then every 3rd tick.
    assert_eq!(
        scanned,
        [true, true, false, false, true, false, false, true]
    );
    // Between scans the sample keeps the latest lists.
    assert_eq!(s.top_rss.len(), 2);
    // A missing proc root for processes only fails "procs".
    let gone = tempfile::tempdir().unwrap();
    let mut c = Collector::new(CollectConfig {
        proc_root: gone.path().join("nope"),
        sys_root: gone.path().join("nope"),
        top_n: 3,
        process_every: 1,
    });
    let r = tick(&mut c, SEC, &mut s);
    assert_eq!(r.failed().count(), 6, "psi absent is not a failure");
    assert!(s.top_cpu.is_empty() || s.top_cpu.len() <= 3);
}
