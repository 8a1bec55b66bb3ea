//! The hand-written zero-allocation parsers checked against the `procfs` crate on the
//! same fixture files (real captures of a Firecracker VM, two instants ~1 s apart):
//! where both read a field they must agree exactly.

use std::fs;
use std::path::PathBuf;

use procfs::prelude::*;

use super::{cpu, disk, load, memory, net, psi};

fn fixture(instant: &str, file: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(instant)
        .join(file);
    fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

const INSTANTS: [&str; 2] = ["real-t0", "real-t1"];

#[test]
fn stat_agrees_with_procfs() {
    let si = procfs::ExplicitSystemInfo {
        boot_time_secs: 0,
        ticks_per_second: 100,
        page_size: 4096,
        is_little_endian: true,
    };
    for i in INSTANTS {
        let buf = fixture(i, "proc/stat");
        let ours = cpu::parse_stat(&buf).expect("ours");
        let theirs = procfs::KernelStats::from_read(&buf[..], &si).expect("procfs");
        let t = &theirs.total;
        let expect = [
            t.user,
            t.nice,
            t.system,
            t.iowait.unwrap_or(0),
            t.irq.unwrap_or(0),
            t.softirq.unwrap_or(0),
            t.steal.unwrap_or(0),
            t.idle,
        ];
        assert_eq!(ours.modes, expect, "{i}");
        assert_eq!(ours.online as usize, theirs.cpu_time.len());
        assert_eq!(ours.ctxt, theirs.ctxt);
        assert_eq!(Some(ours.running), theirs.procs_running.map(u64::from));
        assert_eq!(Some(ours.blocked), theirs.procs_blocked.map(u64::from));
    }
}

#[test]
fn meminfo_and_vmstat_agree_with_procfs() {
    for i in INSTANTS {
        let buf = fixture(i, "proc/meminfo");
        let ours = memory::parse_meminfo(&buf).expect("ours");
        let theirs = procfs::Meminfo::from_read(&buf[..]).expect("procfs");
        assert_eq!(ours.total, theirs.mem_total);
        assert_eq!(ours.available, theirs.mem_available);
        assert_eq!(ours.free, theirs.mem_free);
        assert_eq!(ours.cached, theirs.cached);
        assert_eq!(ours.buffers, theirs.buffers);
        assert_eq!(ours.dirty, theirs.dirty);
        assert_eq!(ours.swap_total, theirs.swap_total);
        assert_eq!(ours.swap_free, theirs.swap_free);

        let buf = fixture(i, "proc/vmstat");
        let (all, major) = memory::parse_vmstat_faults(&buf).expect("ours");
        let theirs = procfs::VmStat::from_read(&buf[..]).expect("procfs");
        assert_eq!(Some(all as i64), theirs.0.get("pgfault").copied());
        assert_eq!(Some(major as i64), theirs.0.get("pgmajfault").copied());
        assert_eq!(
            memory::parse_vmstat_oom(&buf).map(|v| v as i64),
            theirs.0.get("oom_kill").copied()
        );
    }
}

#[test]
fn loadavg_agrees_with_procfs() {
    for i in INSTANTS {
        let buf = fixture(i, "proc/loadavg");
        let ours = load::parse_loadavg(&buf).expect("ours");
        let theirs = procfs::LoadAverage::from_read(&buf[..]).expect("procfs");
        assert_eq!(
            ours.map(|v| v as f32),
            [theirs.one, theirs.five, theirs.fifteen]
        );
    }
}

#[test]
fn diskstats_agree_with_procfs() {
    for i in INSTANTS {
        let buf = fixture(i, "proc/diskstats");
        let theirs = procfs::DiskStats::from_read(&buf[..]).expect("procfs");
        let ours: Vec<_> = buf
            .split(|&b| b == b'\n')
            .filter_map(disk::parse_line)
            .collect();
        assert_eq!(ours.len(), theirs.0.len());
        for ((name, c), t) in ours.iter().zip(&theirs.0) {
            assert_eq!(*name, t.name);
            assert_eq!(
                (
                    c.reads,
                    c.sectors_read,
                    c.writes,
                    c.sectors_written,
                    c.in_flight,
                    c.io_ticks_ms
                ),
                (
                    t.reads,
                    t.sectors_read,
                    t.writes,
                    t.sectors_written,
                    t.in_progress,
                    t.time_in_progress
                )
            );
        }
    }
}

#[test]
fn net_dev_agrees_with_procfs() {
    for i in INSTANTS {
        let buf = fixture(i, "proc/net/dev");
        let theirs = procfs::net::InterfaceDeviceStatus::from_read(&buf[..]).expect("procfs");
        let ours: Vec<_> = buf
            .split(|&b| b == b'\n')
            .skip(2)
            .filter_map(net::parse_line)
            .collect();
        assert_eq!(ours.len(), theirs.0.len());
        for (name, c) in ours {
            let t = &theirs.0[name];
            assert_eq!(
                c,
                [
                    t.recv_bytes,
                    t.sent_bytes,
                    t.recv_packets,
                    t.sent_packets,
                    t.recv_errs,
                    t.sent_errs,
                    t.recv_drop,
                    t.sent_drop
                ]
            );
        }
    }
}

#[test]
fn pressure_agrees_with_procfs() {
    for i in INSTANTS {
        for (file, theirs) in [
            (
                "pressure/cpu",
                procfs::CpuPressure::from_read(&fixture(i, "proc/pressure/cpu")[..])
                    .map(|p| (p.some, p.full)),
            ),
            (
                "pressure/memory",
                procfs::MemoryPressure::from_read(&fixture(i, "proc/pressure/memory")[..])
                    .map(|p| (p.some, p.full)),
            ),
            (
                "pressure/io",
                procfs::IoPressure::from_read(&fixture(i, "proc/pressure/io")[..])
                    .map(|p| (p.some, p.full)),
            ),
        ] {
            let (some, full) = theirs.expect("procfs");
            let ours =
                psi::parse_pressure(&fixture(i, &format!("proc/{file}")), "f").expect("ours");
            for (o, t) in ours.iter().zip([some, full]) {
                let o = o.expect("both lines");
                assert_eq!(
                    (o.avg10 as f32, o.total_us),
                    (t.avg10, t.total),
                    "{i} {file}"
                );
            }
        }
    }
}

#[test]
fn process_stat_fixtures_parse_with_procfs() {
    // The collector reads processes through procfs itself; this pins the fixture files
    // (pid 1 and a shell) as valid input for that path.
    for i in INSTANTS {
        for pid in ["1", "2123"] {
            let st = procfs::process::Stat::from_read(&fixture(i, &format!("proc/{pid}/stat"))[..])
                .expect("stat");
            assert!(!st.comm.is_empty() && st.comm.len() <= 15);
        }
    }
}
