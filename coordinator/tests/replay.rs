//! `personactl replay` on a small fixture (tests/fixtures/replay): VM 1 is a constant
//! 0.5 of 2 cores and 1 of 4 GiB for two days, so the static figures are known exactly;
//! VM 2 is a daily CPU wave on 4 cores over two files (plain and gzipped, two "months")
//! with one malformed row and two rows before the VM existed. tests/fixtures/replay-bad
//! holds a CSV that is not a Bitbrains file.

use std::path::{Path, PathBuf};
use std::process::Command;

use persona_coordinator::engine::EngineConfig;
use persona_coordinator::engine::policy::Steps;
use persona_coordinator::replay::{self, Options, PolicyName};
use serde_json::Value;

fn fixtures(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn opts(per_vm: bool) -> Options {
    Options {
        policies: PolicyName::ALL.to_vec(),
        engine: EngineConfig::default(),
        steps: Steps::VM,
        per_vm,
        threads: 2,
        progress: false,
    }
}

#[test]
fn replays_the_fixture_with_exact_static_figures() {
    let r = replay::run(&[fixtures("replay")], &opts(true)).expect("replay");
    assert_eq!(r.files, 3);
    assert_eq!(r.vms, 2, "the two files of VM 2 are one history");
    assert_eq!(r.samples, 576 + 3 * 288 + 2 * 288);
    assert_eq!(r.malformed_rows, 1);
    assert_eq!(r.unprovisioned_rows, 2);
    assert!(
        r.malformed_examples[0].contains("2.csv:"),
        "{:?}",
        r.malformed_examples
    );

    let rows = r.per_vm.as_ref().expect("per-vm rows");
    let one = &rows.iter().find(|v| v.vm == "1").expect("vm 1").policies["static"];
    assert_eq!(one.cpu.slack, 0.75);
    assert_eq!(one.memory.slack, 0.75);
    assert_eq!(one.cpu.underprovisioned, 0.0);
    // 2 cores x 576 samples x 5 minutes.
    assert_eq!(one.cpu.footprint, 96.0);
    assert_eq!(one.memory.footprint, 4.0 * 48.0);
    assert_eq!(one.total.changes_per_vm_day, 0.0);

    // The engine right-sizes VM 1 (1 vCPU, a bit over 1 GiB) once it trusts the history,
    // without flapping.
    let p = &rows.iter().find(|v| v.vm == "1").expect("vm 1").policies["persona"];
    assert!(p.cpu.slack < 0.75 && p.memory.slack < 0.75, "{p:?}");
    assert_eq!(p.cpu.underprovisioned, 0.0);
    assert!(p.total.changes_per_vm_day < 2.0, "{p:?}");

    for (name, f) in &r.policies {
        for x in [
            f.cpu.slack,
            f.cpu.underprovisioned,
            f.memory.slack,
            f.memory.underprovisioned,
            f.total.slack,
            f.total.underprovisioned,
        ] {
            assert!((0.0..=1.0).contains(&x), "{name}: {f:?}");
        }
        assert_eq!(f.total.samples, r.samples);
        assert_eq!(f.total.vms, 2);
    }
    assert!(r.policies["persona"].cpu.slack < r.policies["static"].cpu.slack);
}

#[test]
fn a_file_that_is_not_bitbrains_is_refused_with_path_and_reason() {
    let e = replay::run(&[fixtures("replay-bad/other.csv")], &opts(false))
        .expect_err("refused")
        .to_string();
    assert!(e.contains("other.csv") && e.contains("no column"), "{e}");
    // A directory without trace files says so.
    let dir = tempfile::tempdir().expect("tempdir");
    let e = replay::run(&[dir.path().to_owned()], &opts(false))
        .expect_err("empty")
        .to_string();
    assert!(e.contains("no trace files"), "{e}");
}

#[test]
fn cli_prints_one_json_document_and_refuses_bad_input() {
    let bin = env!("CARGO_BIN_EXE_personactl");
    let out = Command::new(bin)
        .args([
            "replay",
            "--format",
            "bitbrains",
            "--policy",
            "persona,vpa",
            "--json",
        ])
        .arg(fixtures("replay"))
        .output()
        .expect("run personactl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(v["vms"], 2);
    assert!(v["policies"]["persona"]["cpu"]["slack"].is_number());
    assert!(v["policies"]["vpa"]["memory"]["footprint"].is_number());
    assert!(v["policies"].get("static").is_none());
    // The malformed row is summarised on stderr, not mixed into the JSON.
    assert!(String::from_utf8_lossy(&out.stderr).contains("malformed"));

    let out = Command::new(bin)
        .args(["replay", "--json"])
        .arg(fixtures("replay-bad/other.csv"))
        .output()
        .expect("run personactl");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("other.csv") && err.contains("not a GWA-T-12"),
        "{err}"
    );
    assert!(out.stdout.is_empty());

    let out = Command::new(bin)
        .args(["replay", "--format", "alibaba"])
        .arg(fixtures("replay"))
        .output()
        .expect("run personactl");
    assert_eq!(out.status.code(), Some(1));
}
