//! End-to-end tests of `personactl profile|personas|model` over the real binaries: the
//! offline profile (built-in personas, catalogue and shipped model), every kind of bad
//! input, and the online path through a coordinator started on 127.0.0.1:0.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

fn ctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_personactl"))
        .args(args)
        .env_remove("PERSONA_TOKEN")
        .env_remove("PERSONA_API")
        .output()
        .expect("run personactl")
}

fn ctl_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_personactl"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn personactl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

fn json_of(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("one JSON document on stdout")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn offline_profile_json_document() {
    let o = ctl(&[
        "profile",
        "--offline",
        "--json",
        "--description",
        "Fine-tuning a 7B model with LoRA; need 16 vCPUs, 64 GB RAM and 2 TB NVMe",
        "--software",
        "pytorch,transformers,jupyter",
        "--data-gb",
        "80",
    ]);
    let v = json_of(&o);
    let ps = v["personas"].as_array().expect("personas");
    assert_eq!(ps.len(), 10, "every persona is listed");
    let probs: Vec<f64> = ps
        .iter()
        .map(|p| p["probability"].as_f64().expect("probability"))
        .collect();
    assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-6);
    assert!(probs.windows(2).all(|w| w[0] >= w[1]), "sorted descending");
    assert!(v["low_confidence"].is_boolean());
    assert_eq!(v["explicit"]["vcpus"], 16);
    assert_eq!(v["explicit"]["storage_class"], "nvme");
    let r = &v["recommended"];
    assert!(r["vcpus"].as_u64().expect("vcpus") >= 16);
    assert!(r["memory_gib"].as_f64().expect("mem") >= 64e9 / 1073741824.0);
    assert!(r["storage"]["gib"].as_f64().expect("gib") >= 2e12 / 1073741824.0);
    assert!(r["storage"]["iops"].as_f64().is_some());
    assert!(r["network_mbps"].as_f64().is_some());
    let i = &r["instance"];
    assert!(i["name"].is_string() && i["family"].is_string());
    let hourly = i["hourly_usd"].as_f64().expect("hourly");
    let monthly = i["monthly_usd"].as_f64().expect("monthly");
    assert!((monthly - hourly * 730.0).abs() < 0.01);
    assert!(!v["preload"].as_array().expect("preload").is_empty());
    assert!(v["suggestions"].is_array());
    assert_eq!(v["unknown_software"].as_array().map(Vec::len), Some(0));
}

#[test]
fn offline_profile_human_table() {
    let o = ctl(&[
        "profile",
        "--offline",
        "--description",
        "nginx reverse proxy in front of a PHP shop",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("PERSONA") && out.contains("instance:"),
        "{out}"
    );
}

#[test]
fn bad_input_is_refused_clearly() {
    let cases: [(&[&str], &str); 6] = [
        (&["profile", "--offline", "--description", "   "], "empty"),
        (
            &[
                "profile",
                "--offline",
                "--description",
                "web",
                "--data-gb",
                "-5",
            ],
            "negative",
        ),
        (
            &[
                "profile",
                "--offline",
                "--description",
                "web",
                "--data-gb",
                "2e7",
            ],
            "10 PB",
        ),
        (
            &[
                "profile",
                "--offline",
                "--description",
                "web",
                "--data-gb",
                "NaN",
            ],
            "finite",
        ),
        (&["profile", "--offline"], "--description"),
        (&["model", "train", "--offline"], "--out"),
    ];
    for (args, want) in cases {
        let o = ctl(args);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
    }
    let big = "a ".repeat(40_000);
    let o = ctl(&["profile", "--offline", "--description", &big]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("64 KiB"), "{}", stderr(&o));
    let o = ctl_stdin(
        &["profile", "--offline", "--description-file", "-"],
        b"a postgres box \xff\xfe",
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("UTF-8"), "{}", stderr(&o));
    let o = ctl_stdin(
        &["profile", "--offline", "--description-file", "-"],
        &vec![b'x'; 70_000],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("64 KiB"), "{}", stderr(&o));
}

#[test]
fn unknown_software_is_a_warning_not_an_error() {
    let o = ctl(&[
        "profile",
        "--offline",
        "--json",
        "--description",
        "a CI runner for our monorepo",
        "--software",
        "docker,zzq-frobnicator",
    ]);
    let v = json_of(&o);
    assert_eq!(
        v["unknown_software"],
        serde_json::json!(["zzq-frobnicator"])
    );
    assert!(stderr(&o).contains("warning"));
}

#[test]
fn bad_persona_files_are_refused_with_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = include_str!("../personas/web-server.toml");
    let cases = [
        (
            good.replacen("name = \"Web / application server\"\n", "", 1),
            "missing field `name`",
        ),
        (
            good.replacen("storage_class = \"ssd\"", "storage_class = \"tape\"", 1),
            "os.storage_class",
        ),
        (
            good.replacen("slug = \"web-server\"", "slug = \"Web Server\"", 1),
            "slug",
        ),
        (
            good.replacen(
                "[requirements.memory_gib]\nvalue = 4.45",
                "[requirements.memory_gib]\nvalue = -4.45",
                1,
            ),
            "requirements.memory_gib.value",
        ),
        (
            good.replacen("p95 = [\n  [", "p95 = [\n  [nan, ", 1),
            "usage.cpu_cores.p95",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        assert_ne!(text, good, "case {i} did not change the file");
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).expect("write");
        let o = ctl(&["personas", "import", path.to_str().expect("utf-8 path")]);
        assert!(!o.status.success(), "case {i} accepted");
        assert!(stderr(&o).contains(want), "case {i}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("nothing was imported"),
            "{}",
            stderr(&o)
        );
    }
}

/// A coordinator started through the library (`persona_coordinator::start`) on its own
/// runtime, on loopback ports chosen at run time; dropping it shuts it down.
struct Coordinator {
    rt: tokio::runtime::Runtime,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        let rt = std::mem::replace(&mut self.rt, tokio::runtime::Runtime::new().expect("rt"));
        rt.shutdown_timeout(Duration::from_secs(5));
    }
}

fn start_coordinator(dir: &Path) -> (Coordinator, String) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (stop, rx) = tokio::sync::watch::channel(false);
    let opts = persona_coordinator::ServeOptions {
        data_dir: dir.to_owned(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        http: "127.0.0.1:0".parse().expect("addr"),
        advertise: None,
        settings: persona_coordinator::ServerSettings::default(),
    };
    let coord = rt
        .block_on(persona_coordinator::start(opts, rx))
        .expect("start coordinator");
    let http = coord.http_addr.to_string();
    (Coordinator { rt, stop }, http)
}

#[test]
fn online_personas_and_profile() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("coord");
    let (_c, http) = start_coordinator(&data);
    let d = data.to_str().expect("utf-8 path");
    let base = ["--api", http.as_str(), "--data-dir", d, "--json"];
    let run = |extra: &[&str]| {
        let args: Vec<&str> = base.iter().copied().chain(extra.iter().copied()).collect();
        ctl(&args)
    };
    let v = json_of(&run(&["personas", "list"]));
    assert_eq!(v["personas"].as_array().map(Vec::len), Some(10));

    // Import a new persona (a copy of vdi-office under another slug).
    let mut p: Value = json_of(&run(&["personas", "show", "vdi-office"]))["persona"].clone();
    p["slug"] = "call-centre-agent".into();
    p["name"] = "Call-centre agent desktop".into();
    let file = dir.path().join("new.json");
    std::fs::write(&file, p.to_string()).expect("write");
    let v = json_of(&run(&["personas", "import", file.to_str().expect("path")]));
    assert_eq!(v["added"], serde_json::json!(["call-centre-agent"]));

    let v = json_of(&run(&[
        "profile",
        "--description",
        "remote desktop for office work: Outlook, Word, Teams",
    ]));
    let ps = v["personas"].as_array().expect("personas");
    assert_eq!(ps.len(), 11, "imported persona is covered");
    let new = ps
        .iter()
        .find(|p| p["slug"] == "call-centre-agent")
        .expect("new persona");
    assert_eq!(new["probability"], 0.0);
    assert!(v["notes"].to_string().contains("call-centre-agent"));
    let sum: f64 = ps.iter().filter_map(|p| p["probability"].as_f64()).sum();
    assert!((sum - 1.0).abs() < 1e-6);

    // Feedback for the new persona, then retrain on the coordinator: the model now has
    // an output for it and the coordinator serves the trained model.
    let token = std::fs::read_to_string(data.join("admin.token")).expect("token");
    let client =
        persona_coordinator::cli::client::Client::new(http.parse().expect("addr"), token.trim());
    for (i, d) in [
        "headset and softphone desktop for inbound support calls",
        "agents answering customer calls with a CRM in the browser",
        "call centre seat: Genesys softphone, Zendesk, Chrome",
        "virtual desktop for phone support staff taking tickets",
        "contact-centre agents on Five9 and Salesforce service console",
    ]
    .iter()
    .enumerate()
    {
        for variant in 0..4 {
            let body = serde_json::json!({
                "description": format!("{d} (team {i}-{variant})"),
                "software": ["chrome"],
                "data_gb": null,
                "slug": "call-centre-agent",
                "source": "test",
            });
            client
                .call_blocking(hyper::Method::POST, "/v1/feedback", Some(body))
                .expect("feedback");
        }
    }
    let v = json_of(&run(&["model", "train", "--seed", "7"]));
    assert_eq!(v["feedback_examples"], 20);
    assert!(
        v["report"]["slugs"]
            .to_string()
            .contains("call-centre-agent")
    );
    assert!(v["report"]["top1"].as_f64().expect("top1") > 0.5);
    assert!(data.join("profiler.bin").exists());
    let v = json_of(&run(&[
        "profile",
        "--description",
        "softphone desktop for call centre agents answering support calls",
    ]));
    assert_eq!(v["model"]["source"], "trained");
    assert!(
        !v["notes"].to_string().contains("no output"),
        "{}",
        v["notes"]
    );

    let out = dir.path().join("export.json");
    let v = json_of(&run(&[
        "personas",
        "export",
        "--out",
        out.to_str().expect("path"),
    ]));
    assert_eq!(v["exported"], 11);
    // The export re-imports cleanly (replacing every row, in one transaction).
    let v = json_of(&run(&["personas", "import", out.to_str().expect("path")]));
    assert_eq!(v["replaced"].as_array().map(Vec::len), Some(11));

    // Bad input is refused (before sending) and unknown slugs are a 404.
    let o = run(&["profile", "--description", "web", "--data-gb", "-1"]);
    assert!(!o.status.success());
    let o = run(&["personas", "show", "no-such-persona"]);
    assert!(!o.status.success());
}
