//! `personactl personas|profile|model`: argument types and output formatting for the
//! persona database and the profiler. The binary adds these to its command enum and
//! calls [`personas`], [`profile`] and [`model`]; requests go through `ctl::Client`, or
//! run locally with `--offline` (no coordinator and no token needed).
//!
//! What it is not: validation or sizing logic (`personas`, `profiling`, `recommend`).

use std::io::Read;
use std::path::PathBuf;

use hyper::Method;
use serde_json::{Value, json};

use crate::cli::client::CtlError;
use crate::cli::{Global, emit};
use crate::profile::ProfileRequest;
use crate::profile::personas;

/// `personactl personas ...`
#[derive(Debug, clap::Subcommand)]
pub enum PersonasCmd {
    /// List the personas in the coordinator's database.
    List,
    /// Show one persona.
    Show { slug: String },
    /// Write every persona as one JSON document (the import format) to stdout or FILE.
    Export {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Import personas from a TOML file (one persona) or a JSON file (one persona, a list,
    /// or an export document). Validated in full; nothing is imported if anything is wrong.
    Import { file: PathBuf },
}

/// `personactl profile ...`
#[derive(Debug, clap::Args)]
pub struct ProfileArgs {
    /// What the VM is for, in the user's words (at most 64 KiB).
    #[arg(long, conflicts_with = "description_file")]
    pub description: Option<String>,
    /// Read the description from FILE, or from stdin with `-` (must be UTF-8).
    #[arg(long, value_name = "FILE|-")]
    pub description_file: Option<PathBuf>,
    /// Software the user asked for, comma-separated (`pytorch,cuda==12.4,jupyter`).
    #[arg(long)]
    pub software: Option<String>,
    /// Size of the user's data in GB (decimal), 0..=10,000,000.
    #[arg(long, allow_negative_numbers = true)]
    pub data_gb: Option<f64>,
    /// Profile locally with the built-in personas, catalogue and model (no coordinator).
    #[arg(long)]
    pub offline: bool,
    /// Instance catalogue to use with --offline (default: the built-in one).
    #[arg(long, requires = "offline")]
    pub catalogue: Option<PathBuf>,
}

/// `personactl model ...`
#[derive(Debug, clap::Subcommand)]
pub enum ModelCmd {
    /// Train the profiler and the mirror model. Online: on the coordinator, the profiler
    /// from the shipped corpus plus the feedback in its database, the mirror model from
    /// windows generated from the personas plus the fleet's feedback windows; the
    /// coordinator stores and serves both and pushes the new mirror model to agents.
    /// Offline: the profiler from the shipped corpus only, written to --out (this is how
    /// models/assets/profiler.bin is produced).
    Train {
        #[arg(long)]
        offline: bool,
        /// Where to write the model (required with --offline).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Seed of the split, initialisation and shuffling (same seed, same model).
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Train only one of the two models (online only): `profiler` or `mirror`.
        #[arg(long, value_parser = ["profiler", "mirror"])]
        only: Option<String>,
        /// Generated windows per persona for the mirror model (online only; default 600;
        /// fewer trains faster and worse).
        #[arg(long, value_parser = clap::value_parser!(u64).range(10..=10000))]
        mirror_windows: Option<u64>,
    },
}

fn fail(e: impl std::fmt::Display) -> CtlError {
    CtlError::Profile(e.to_string())
}

/// `personactl personas ...`
pub fn personas(cmd: PersonasCmd, g: &Global) -> Result<(), CtlError> {
    match cmd {
        PersonasCmd::List => {
            let v = g
                .client()?
                .call_blocking(Method::GET, "/v1/personas", None)?;
            emit(g, &v, |v| {
                let mut s = format!(
                    "{:<22} {:<10} {:>10}  {}\n",
                    "SLUG", "SOURCE", "UPDATED", "NAME"
                );
                for p in v["personas"].as_array().into_iter().flatten() {
                    s += &format!(
                        "{:<22} {:<10} {:>10}  {}\n",
                        p["slug"].as_str().unwrap_or(""),
                        p["source"].as_str().unwrap_or(""),
                        crate::cli::client::ago(p["updated_ms"].as_i64()),
                        p["name"].as_str().unwrap_or("")
                    );
                }
                s
            });
        }
        PersonasCmd::Show { slug } => {
            if !personas::valid_slug(&slug) {
                return Err(CtlError::Arg(format!("{slug:?} is not a persona slug")));
            }
            let v =
                g.client()?
                    .call_blocking(Method::GET, &format!("/v1/personas/{slug}"), None)?;
            emit(g, &v, show_persona);
        }
        PersonasCmd::Export { out } => {
            let v = g
                .client()?
                .call_blocking(Method::GET, "/v1/personas/export", None)?;
            match out {
                Some(path) => {
                    let text = serde_json::to_string_pretty(&v)?;
                    std::fs::write(&path, text + "\n")
                        .map_err(|e| fail(format!("cannot write {}: {e}", path.display())))?;
                    let n = v["personas"].as_array().map_or(0, Vec::len);
                    let doc = json!({ "exported": n, "out": path.display().to_string() });
                    emit(g, &doc, |_| {
                        format!("exported {n} personas to {}\n", path.display())
                    });
                }
                None => println!("{}", serde_json::to_string_pretty(&v)?),
            }
        }
        PersonasCmd::Import { file } => {
            let bytes = std::fs::read(&file)
                .map_err(|e| fail(format!("cannot read {}: {e}", file.display())))?;
            // Validate here first so a bad file is explained without a coordinator round
            // trip; the coordinator validates again before its transaction.
            let list = personas::parse_many(&bytes)
                .map_err(|e| fail(format!("{}: {e}; nothing was imported", file.display())))?;
            let v = g.client()?.call_blocking(
                Method::POST,
                "/v1/personas/import",
                Some(json!({ "personas": list })),
            )?;
            emit(g, &v, |v| {
                let names = |k: &str| {
                    v[k].as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default()
                };
                format!(
                    "added: {}\nreplaced: {}\n",
                    names("added"),
                    names("replaced")
                )
            });
        }
    }
    Ok(())
}

fn show_persona(v: &Value) -> String {
    let p = &v["persona"];
    let mut s = format!(
        "{} ({})\n{}\nsource: {}, updated {}\n\nrequirements (p95-based):\n",
        p["name"].as_str().unwrap_or(""),
        p["slug"].as_str().unwrap_or(""),
        p["description"].as_str().unwrap_or(""),
        v["source"].as_str().unwrap_or(""),
        crate::cli::client::ago(v["updated_ms"].as_i64())
    );
    if let Some(r) = p["requirements"].as_object() {
        for (k, x) in r {
            s += &format!(
                "  {:<16} {:>10}  [{}] {}\n",
                k,
                x["value"],
                x["ref"].as_str().unwrap_or(""),
                x["note"].as_str().unwrap_or("")
            );
        }
    }
    let os = &p["os"];
    s += &format!(
        "\nos: {} on {} ({}), kernel params: {}\n",
        os["distribution"].as_str().unwrap_or(""),
        os["filesystem"].as_str().unwrap_or(""),
        os["storage_class"].as_str().unwrap_or(""),
        os["kernel_params"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "))
            .unwrap_or_default()
    );
    if let Some(sc) = os["sysctls"].as_object() {
        for (k, x) in sc {
            s += &format!("  sysctl {k} = {}\n", x.as_str().unwrap_or(""));
        }
    }
    s += "\npreload:\n";
    for i in p["preload"].as_array().into_iter().flatten() {
        s += &format!(
            "  {:<10} {} {}\n",
            i["kind"].as_str().unwrap_or(""),
            i["name"].as_str().unwrap_or(""),
            i["version"].as_str().unwrap_or("")
        );
    }
    s += "\nsources:\n";
    for src in p["sources"].as_array().into_iter().flatten() {
        s += &format!(
            "  [{}] {} <{}>\n",
            src["id"].as_str().unwrap_or(""),
            src["title"].as_str().unwrap_or(""),
            src["url"].as_str().unwrap_or("")
        );
    }
    s
}

fn read_description(a: &ProfileArgs) -> Result<String, CtlError> {
    match (&a.description, &a.description_file) {
        (Some(d), _) => Ok(d.clone()),
        (None, Some(path)) => {
            let mut bytes = Vec::new();
            // Read one byte past the cap so an oversized input is reported, not truncated.
            let cap = crate::profile::MAX_DESCRIPTION_BYTES as u64 + 1;
            let res = if path.as_os_str() == "-" {
                std::io::stdin().take(cap).read_to_end(&mut bytes)
            } else {
                std::fs::File::open(path).and_then(|f| f.take(cap).read_to_end(&mut bytes))
            };
            res.map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
            crate::profile::description_from_bytes(bytes).map_err(fail)
        }
        (None, None) => Err(CtlError::Arg(
            "give --description TEXT or --description-file FILE|-".into(),
        )),
    }
}

/// `personactl profile ...`
pub fn profile(a: ProfileArgs, g: &Global) -> Result<(), CtlError> {
    let req = ProfileRequest {
        description: read_description(&a)?,
        software: a
            .software
            .as_deref()
            .map(crate::profile::parse_software_list)
            .unwrap_or_default(),
        data_gb: a.data_gb,
    };
    // Refuse bad input before contacting anyone.
    req.validate().map_err(fail)?;
    let doc = if a.offline {
        let d = crate::profile::profile_offline(&req, a.catalogue.as_deref()).map_err(fail)?;
        serde_json::to_value(&d)?
    } else {
        g.client()?.call_blocking(
            Method::POST,
            "/v1/profile",
            Some(serde_json::to_value(&req)?),
        )?
    };
    for w in doc["unknown_software"].as_array().into_iter().flatten() {
        eprintln!(
            "personactl: warning: unknown software {} (planned as declared; check the name)",
            w
        );
    }
    emit(g, &doc, human_profile);
    Ok(())
}

/// A JSON number as a person writes it (210 rather than 210.0).
fn n(v: &Value) -> String {
    v.as_f64().map_or_else(
        || "-".into(),
        |x| format!("{}", (x * 100.0).round() / 100.0),
    )
}

/// The human view of a profile document.
pub fn human_profile(v: &Value) -> String {
    let mut s = format!("{:<22} {:>11}\n", "PERSONA", "PROBABILITY");
    for p in v["personas"].as_array().into_iter().flatten() {
        let x = p["probability"].as_f64().unwrap_or(0.0);
        s += &format!(
            "{:<22} {:>11.3}  {}\n",
            p["slug"].as_str().unwrap_or(""),
            x,
            "#".repeat((x * 40.0).round() as usize)
        );
    }
    s += &format!(
        "low confidence: {}\n",
        if v["low_confidence"].as_bool() == Some(true) {
            "yes (nothing stands out; sized on the whole distribution)"
        } else {
            "no"
        }
    );
    let m = v["explicit"]["matched"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    s += &format!(
        "explicit specs: {}\n",
        if m.is_empty() { "none" } else { &m }
    );
    let r = &v["recommended"];
    s += &format!(
        "\nrecommended: {} vCPUs, {} GiB memory, {} GPU(s){}, network {} Mbps\n",
        n(&r["vcpus"]),
        n(&r["memory_gib"]),
        n(&r["gpus"]),
        if r["gpus"].as_u64().unwrap_or(0) > 0 {
            format!(" with >= {} GiB", n(&r["gpu_memory_gib"]))
        } else {
            String::new()
        },
        n(&r["network_mbps"])
    );
    let st = &r["storage"];
    s += &format!(
        "storage:     {} GiB {} ({}), {} IOPS, {} MB/s\n",
        n(&st["gib"]),
        st["class"].as_str().unwrap_or(""),
        st["option"].as_str().unwrap_or("-"),
        n(&st["iops"]),
        n(&st["mbps"])
    );
    match r["instance"].as_object() {
        Some(i) => {
            s += &format!(
                "instance:    {} ({}, {} vCPUs, {} GiB{}) ${}/h = ${}/month; with storage ${}/month\n",
                i.get("name").and_then(Value::as_str).unwrap_or(""),
                i.get("family").and_then(Value::as_str).unwrap_or(""),
                n(i.get("vcpus").unwrap_or(&Value::Null)),
                n(i.get("memory_gib").unwrap_or(&Value::Null)),
                i.get("gpu")
                    .and_then(Value::as_str)
                    .map(|g| format!(", {g}"))
                    .unwrap_or_default(),
                i.get("hourly_usd").and_then(Value::as_f64).unwrap_or(0.0),
                n(i.get("monthly_usd").unwrap_or(&Value::Null)),
                n(&r["monthly_usd"])
            );
        }
        None => s += "instance:    none fits\n",
    }
    s += "\npreload plan:\n";
    for i in v["preload"].as_array().into_iter().flatten() {
        s += &format!(
            "  {:<10} {:<32} {:<12} {:>5.2}  {}\n",
            i["kind"].as_str().unwrap_or(""),
            i["name"].as_str().unwrap_or(""),
            i["version"].as_str().unwrap_or("-"),
            i["weight"].as_f64().unwrap_or(0.0),
            i["from"]
                .as_array()
                .map(|a| a
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","))
                .unwrap_or_default()
        );
    }
    s += "\nsuggestions:\n";
    for i in v["suggestions"].as_array().into_iter().flatten() {
        s += &format!(
            "  {:<10} {:<24} {}\n",
            i["kind"].as_str().unwrap_or(""),
            i["name"].as_str().unwrap_or(""),
            i["why"].as_str().unwrap_or("")
        );
    }
    for u in v["unknown_software"].as_array().into_iter().flatten() {
        s += &format!("warning: unknown software {u}\n");
    }
    for n in v["notes"].as_array().into_iter().flatten() {
        s += &format!("note: {}\n", n.as_str().unwrap_or(""));
    }
    s
}

/// `personactl model ...`
pub fn model(cmd: ModelCmd, g: &Global) -> Result<(), CtlError> {
    let ModelCmd::Train {
        offline,
        out,
        seed,
        only,
        mirror_windows,
    } = cmd;
    let doc = if offline {
        let out = out.ok_or_else(|| {
            CtlError::Arg("--offline needs --out FILE (e.g. models/assets/profiler.bin)".into())
        })?;
        serde_json::to_value(crate::profile::train_offline(&out, seed).map_err(fail)?)?
    } else {
        if out.is_some() {
            return Err(CtlError::Arg(
                "--out is only for --offline; the coordinator stores its model in its data directory".into(),
            ));
        }
        g.client()?.call_blocking(
            Method::POST,
            "/v1/model/train",
            Some(
                json!({ "seed": seed, "only": only, "mirror_windows_per_persona": mirror_windows }),
            ),
        )?
    };
    emit(g, &doc, human_train);
    Ok(())
}

/// The human view of a training report: accuracies and an aligned confusion matrix.
pub fn human_train(v: &Value) -> String {
    let r = &v["report"];
    let mut s = format!(
        "model {} written to {}\nheld-out top-1 {:.3}, top-2 {:.3} ({} train / {} test examples, {} feedback, seed {}, {:.1} s)\n\nconfusion matrix (rows: true persona, columns: predicted, in the same order):\n",
        v["model_id"].as_str().unwrap_or(""),
        v["path"].as_str().unwrap_or(""),
        r["top1"].as_f64().unwrap_or(0.0),
        r["top2"].as_f64().unwrap_or(0.0),
        r["n_train"],
        r["n_test"],
        v["feedback_examples"],
        r["seed"],
        r["seconds"].as_f64().unwrap_or(0.0)
    );
    let slugs: Vec<&str> = r["slugs"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    s += &format!("{:<24}", "");
    for i in 0..slugs.len() {
        s += &format!("{:>5}", i + 1);
    }
    s += "\n";
    for (i, row) in r["confusion"].as_array().into_iter().flatten().enumerate() {
        s += &format!("{:>2} {:<21}", i + 1, slugs.get(i).copied().unwrap_or(""));
        for c in row.as_array().into_iter().flatten() {
            s += &format!("{:>5}", c.as_u64().unwrap_or(0));
        }
        s += "\n";
    }
    // The mirror model trained in the same run (mirror_train).
    s += &mirror_human(&v["mirror"]);
    s
}

/// The human summary of a mirror training (empty when there was none).
fn mirror_human(v: &Value) -> String {
    if v.is_null() {
        return String::new();
    }
    let r = &v["report"];
    format!(
        "\nmirror model {} (sha256 {}), now pushed to agents\ngenerated-window top-1 {:.3}, top-2 {:.3} ({} generated + {} feedback windows; {} feedback rows without telemetry; seed {}, {:.1} s)\n",
        r["version"].as_str().unwrap_or(""),
        r["sha256"].as_str().unwrap_or(""),
        r["top1"].as_f64().unwrap_or(0.0),
        r["top2"].as_f64().unwrap_or(0.0),
        r["n_generated"],
        r["n_feedback"],
        v["feedback_without_data"],
        r["seed"],
        r["seconds"].as_f64().unwrap_or(0.0),
    )
}

#[cfg(test)]
mod render_tests {
    use super::*;

    #[test]
    fn persona_show_prints_no_terminal_escapes() {
        let v = json!({"source": "imported", "updated_ms": 1,
                       "persona": {"name": "Call centre", "slug": "call-centre",
                                   "description": "headsets and a CRM",
                                   "requirements": {"vcpus": {"value": 2, "ref": "vendor",
                                                              "note": "per seat"}},
                                   "os": {"distribution": "debian"}}});
        crate::cli::text::assert_renders_inert(&v, show_persona, "headsets and a CRM");
        crate::cli::text::assert_renders_inert(&v, show_persona, "per seat");
    }

    #[test]
    fn every_emitted_document_reaches_its_renderer_clean() {
        // The inline renderers (persona list, series, token create, preload) print
        // fields of the document as given; `human` hands them a cleaned copy.
        let v = json!({"personas": [{"slug": "x", "source": "builtin", "name": "Name"}]});
        crate::cli::text::assert_renders_inert(
            &v,
            |v| v["personas"][0]["name"].as_str().unwrap_or("").to_owned(),
            "Name",
        );
    }
}
