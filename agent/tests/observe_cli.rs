//! Runs the real `persona-agent observe` binary on this machine while the test makes
//! load it must see: a thread burning CPU and a thread writing and fsyncing files on the
//! real disk. Checks that CPU, memory, disk and network values are present and sane.
//! No timing is asserted; every wait is bounded by the 3-sample run.
// Helpers outside #[test] functions unwrap too: a fixture that cannot be set up is a
// failed test.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_persona-agent");

fn num(v: &Value, key: &str) -> f64 {
    v.get(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{key} missing or null in {v}"))
}

#[test]
fn observe_json_sees_cpu_memory_disk_and_network() {
    let stop = Arc::new(AtomicBool::new(false));
    let burner = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut x = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for i in 0..100_000u64 {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
                }
            }
            x
        })
    };
    // target/tmp is on the build's disk (not tmpfs), so fsync reaches a block device.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let writer = {
        let stop = stop.clone();
        let path = dir.path().join("load.bin");
        thread::spawn(move || {
            let chunk = vec![0x5au8; 1 << 20];
            let mut written = 0u64;
            // 64 MiB per file, fsynced, then again until observe is done.
            while !stop.load(Ordering::Relaxed) {
                let mut f = std::fs::File::create(&path).unwrap();
                for _ in 0..64 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    f.write_all(&chunk).unwrap();
                    written += chunk.len() as u64;
                    if written.is_multiple_of(8 << 20) {
                        f.sync_data().unwrap();
                    }
                }
                f.sync_all().unwrap();
            }
            written
        })
    };

    let out = Command::new(BIN)
        .args(["observe", "--seconds", "3", "--json"])
        .output()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    burner.join().unwrap();
    let written = writer.join().unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).expect("one JSON document on stdout");

    let samples = doc["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 3);
    let mut max_user = 0.0f64;
    let mut max_write = 0.0f64;
    let mut prev_ts = 0;
    for s in samples {
        let ts = s["ts_ms"].as_i64().unwrap();
        assert!(ts > prev_ts);
        prev_ts = ts;
        let h = &s["host"];
        let online = num(h, "cpu.online_count");
        assert!(online >= 1.0);
        let modes = [
            "user", "nice", "system", "iowait", "irq", "softirq", "steal", "idle",
        ];
        let mut sum = 0.0;
        for m in modes {
            let r = num(h, &format!("cpu.{m}_ratio"));
            assert!((0.0..=1.0).contains(&r), "cpu.{m}_ratio = {r}");
            sum += r;
            let cores = num(h, &format!("cpu.{m}_cores"));
            assert!(
                (cores - r * online).abs() < 2e-3,
                "cpu.{m}_cores {cores} vs {r} x {online}"
            );
        }
        assert!((sum - 1.0).abs() < 2e-3, "ratios sum to {sum}");
        max_user = max_user.max(num(h, "cpu.user_ratio"));
        for k in [
            "cpu.context_switches_per_s",
            "cpu.interrupts_per_s",
            "load.avg1_tasks",
            "procs.running_count",
        ] {
            assert!(num(h, k) >= 0.0, "{k}");
        }
        let (total, avail) = (num(h, "mem.total_bytes"), num(h, "mem.available_bytes"));
        assert!(total > 0.0 && avail > 0.0 && avail <= total);
        assert!(num(h, "mem.used_bytes") <= total);
        assert!(num(h, "mem.minor_faults_per_s") >= 0.0);

        let d = &s["disk_total"];
        for k in [
            "disk.read_bytes_per_s",
            "disk.write_bytes_per_s",
            "disk.read_iops",
            "disk.write_iops",
        ] {
            assert!(num(d, k) >= 0.0, "{k}");
        }
        assert!((0.0..=100.0).contains(&num(d, "disk.busy_pct")));
        max_write = max_write.max(num(d, "disk.write_bytes_per_s"));
        assert!(!s["disks"].as_object().unwrap().is_empty());

        let n = &s["nic_total"];
        for k in [
            "net.rx_bytes_per_s",
            "net.tx_bytes_per_s",
            "net.rx_packets_per_s",
            "net.tx_drops_per_s",
        ] {
            let v = num(n, k);
            assert!(v.is_finite() && v >= 0.0, "{k} = {v}");
        }
        assert!(s["nics"].as_object().unwrap().contains_key("lo"));

        // Top lists: kernel comm names only (at most 15 bytes), never a command line.
        for list in ["top_cpu", "top_rss"] {
            let l = s[list].as_array().unwrap();
            assert!(!l.is_empty() && l.len() <= 10, "{list}");
            for p in l {
                let comm = p["comm"].as_str().unwrap();
                assert!(!comm.is_empty() && comm.len() <= 15, "{comm:?}");
                assert!(!comm.starts_with('/'), "{comm:?}");
                assert!(p["rss_bytes"].as_u64().is_some());
                assert!(num(p, "cpu_pct") >= 0.0);
            }
        }
        // This test process burns a core: it is among the busiest.
        let top: Vec<&str> = s["top_cpu"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["comm"].as_str())
            .collect();
        assert!(top.iter().any(|c| c.starts_with("observe_cli")), "{top:?}");
    }
    assert!(max_user > 0.0);
    assert!(written > 0);
    assert!(
        max_write > 0.0,
        "no disk writes seen while {written} bytes were written and fsynced"
    );

    let summary = &doc["summary"];
    let me = &summary["self"];
    assert!(num(me, "cpu_s") >= 0.0);
    assert!(num(me, "peak_rss_bytes") > 0.0);
    let facts = &summary["facts"];
    assert_eq!(
        facts["cpus_online"].as_f64(),
        samples[0]["host"]["cpu.online_count"].as_f64()
    );
    assert!(facts["mem_total_bytes"].as_u64().unwrap() > 0);
    let u = &summary["host"]["cpu.user_ratio"];
    assert!(num(u, "min") <= num(u, "mean") && num(u, "mean") <= num(u, "max"));
    assert!(
        summary["collector_failures"]
            .as_object()
            .unwrap()
            .values()
            .all(|v| v.as_u64() == Some(0))
    );
}

#[test]
fn observe_human_output_is_one_line_per_sample() {
    let out = Command::new(BIN)
        .args(["observe", "--seconds", "2", "--interval-ms", "200"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // Facts line, two samples, two summary lines, then what the detectors make of it.
    assert!(lines.len() >= 5, "{text}");
    assert!(lines[1].contains("cpu usr") && lines[2].contains("net rx"));
    assert!(lines[4].starts_with("agent: cpu"));
    assert!(
        lines[5..]
            .iter()
            .any(|l| l.starts_with("pressure: cpu ") && l.contains("; anomalies: ")),
        "{text}"
    );
}

#[test]
fn bad_arguments_give_a_clear_error_and_a_failure_exit() {
    for (args, needle) in [
        (
            &["observe", "--interval-ms", "50"][..],
            "--interval-ms must be between 100 and 60000",
        ),
        (&["observe", "--interval-ms", "60001"][..], "got 60001"),
        (
            &["observe", "--seconds", "0"][..],
            "--seconds must be at least 1",
        ),
        (
            &["observe", "--proc-root", "/nonexistent"][..],
            "/nonexistent is not a readable proc filesystem",
        ),
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
