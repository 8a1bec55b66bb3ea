//! `personactl recommend`: a VM's recommended size with its reasons and cost, and the
//! per-VM engine settings (update mode, platform, bounds). Argument parsing and output
//! only; the coordinator computes (`engine_api`).
//!
//! What it is not: the engine, or the offline trace replay (`replay_cli`).

use hyper::Method;
use serde_json::{Map, Value, json};

use crate::cli::Global;
use crate::cli::client::CtlError;

/// `personactl recommend AGENT ...`
#[derive(Debug, clap::Args)]
pub struct RecommendArgs {
    /// Agent id (see `personactl agents list`).
    pub agent: String,
    /// Update mode: off (recommend only, the default), initial (apply once), auto
    /// (apply through the command channel whenever the recommendation changes).
    #[arg(long)]
    pub mode: Option<String>,
    /// exact (the hypervisor resizes freely; priced per vCPU and GiB) or catalogue (only
    /// the catalogue's shapes exist).
    #[arg(long)]
    pub platform: Option<String>,
    /// Fewest vCPUs the engine may recommend.
    #[arg(long)]
    pub min_vcpus: Option<f64>,
    /// Most vCPUs the engine may recommend.
    #[arg(long)]
    pub max_vcpus: Option<f64>,
    /// Least memory (GiB) the engine may recommend.
    #[arg(long)]
    pub min_memory_gib: Option<f64>,
    /// Most memory (GiB) the engine may recommend.
    #[arg(long)]
    pub max_memory_gib: Option<f64>,
    /// The platform's maxmem for this VM (GiB); maxcpus comes from the agent's facts.
    #[arg(long)]
    pub max_memory_platform_gib: Option<f64>,
    /// Remove every per-VM bound.
    #[arg(long)]
    pub clear_bounds: bool,
    /// Forget the limits the engine learned from resizes the platform refused (after the
    /// platform was changed, say).
    #[arg(long)]
    pub clear_learned: bool,
    /// Submit the recommended resize now, whatever the mode.
    #[arg(long)]
    pub apply: bool,
}

/// Changes settings if asked, then prints the recommendation (or the apply result).
pub fn recommend(a: RecommendArgs, g: &Global) -> Result<(), CtlError> {
    // The id goes into a URL path: refuse anything that is not a plain token.
    if a.agent.is_empty()
        || a.agent.len() > 128
        || !a
            .agent
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(CtlError::Arg(format!("bad agent id {:?}", a.agent)));
    }
    let mut patch = Map::new();
    if let Some(m) = &a.mode {
        patch.insert("mode".into(), json!(m));
    }
    if let Some(p) = &a.platform {
        patch.insert("platform".into(), json!(p));
    }
    if a.clear_bounds {
        for k in [
            "min_vcpus",
            "max_vcpus",
            "min_memory_gib",
            "max_memory_gib",
            "max_memory_platform_gib",
        ] {
            patch.insert(k.into(), Value::Null);
        }
    }
    if a.clear_learned {
        patch.insert("clear_learned".into(), json!(true));
    }
    for (k, v) in [
        ("min_vcpus", a.min_vcpus),
        ("max_vcpus", a.max_vcpus),
        ("min_memory_gib", a.min_memory_gib),
        ("max_memory_gib", a.max_memory_gib),
        ("max_memory_platform_gib", a.max_memory_platform_gib),
    ] {
        if let Some(v) = v {
            patch.insert(k.into(), json!(v));
        }
    }
    let c = g.client()?;
    let base = format!("/v1/recommend/{}", a.agent);
    if !patch.is_empty() {
        c.call_blocking(
            Method::POST,
            &format!("{base}/settings"),
            Some(Value::Object(patch)),
        )?;
    }
    let v = if a.apply {
        c.call_blocking(Method::POST, &format!("{base}/apply"), Some(json!({})))?
    } else {
        c.call_blocking(Method::GET, &base, None)?
    };
    if a.apply {
        crate::cli::emit(g, &v, |v| {
            format!(
                "submitted command {}\n\n{}",
                v["command"].as_str().unwrap_or("?"),
                human(&v["recommendation"])
            )
        });
    } else {
        crate::cli::emit(g, &v, human);
    }
    Ok(())
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn opt(v: &Value) -> String {
    v.as_f64().map_or_else(|| "-".into(), |x| format!("{x}"))
}

/// The recommendation for people: sizes side by side, then cost, then reasons.
pub fn human(v: &Value) -> String {
    let mut s = format!(
        "agent {}  mode {}  platform {}  change {}{}\n\n",
        v["agent"].as_str().unwrap_or("?"),
        v["mode"].as_str().unwrap_or("?"),
        v["platform"].as_str().unwrap_or("?"),
        v["change"].as_str().unwrap_or("?"),
        if v["urgent"].as_bool() == Some(true) {
            " (urgent: pressure)"
        } else {
            ""
        }
    );
    s += &format!("{:<12} {:>10} {:>12}\n", "", "VCPUS", "MEMORY GIB");
    for (name, k) in [
        ("current", "current"),
        ("recommended", "recommended"),
        ("target", "target"),
        ("prior", "prior"),
        ("floors", "floors"),
    ] {
        let x = &v[k];
        if x.is_null() {
            continue;
        }
        s += &format!(
            "{:<12} {:>10.3} {:>12.3}\n",
            name,
            f(&x["cpu_cores"]),
            f(&x["memory_gib"])
        );
    }
    let b = &v["bounds"];
    s += &format!(
        "bounds       vcpus {}..{} (platform max {}), memory {}..{} GiB (platform max {})\n",
        opt(&b["min_vcpus"]),
        opt(&b["max_vcpus"]),
        opt(&b["platform_max_vcpus"]),
        opt(&b["min_memory_gib"]),
        opt(&b["max_memory_gib"]),
        opt(&b["platform_max_memory_gib"])
    );
    s += &format!(
        "evidence     {:.0} s of history, {} samples, confidence {:.2}; personas from {}\n",
        f(&v["history_s"]),
        v["samples"],
        f(&v["confidence"]),
        v["personas_source"].as_str().unwrap_or("?")
    );
    for l in v["settings"]["learned"].as_array().into_iter().flatten() {
        s += &format!(
            "learned      {} at {} {} (command {}: {})\n",
            l["resource"].as_str().unwrap_or("?"),
            if l["side"] == "max" { "most" } else { "least" },
            opt(&l["value"]),
            l["command"].as_str().unwrap_or("?"),
            l["reason"].as_str().unwrap_or("")
        );
    }
    let a = &v["auto"];
    if !a.is_null() {
        s += &format!(
            "auto         {} {}\n",
            if a["applies"].as_bool() == Some(true) {
                "applies now:"
            } else {
                "does not apply:"
            },
            a["detail"].as_str().unwrap_or("?")
        );
    }
    let c = &v["cost"];
    let price = |p: &Value| {
        if p.is_null() {
            "-".to_owned()
        } else {
            format!(
                "{}${:.2}/month",
                p["shape"]
                    .as_str()
                    .map_or(String::new(), |n| format!("{n} ")),
                f(&p["monthly_usd"])
            )
        }
    };
    s += &format!(
        "cost         current {}, recommended {}, saving {}\n",
        price(&c["current"]),
        price(&c["target"]),
        c["monthly_saving_usd"]
            .as_f64()
            .map_or("-".into(), |x| format!("${x:.2}/month"))
    );
    let io = &v["io"];
    s += &format!(
        "io           disk {} IOPS (observed p95 {}), network {} Mbit/s (observed p95 {})\n",
        opt(&io["disk_iops"]),
        opt(&io["disk_iops_observed_p95"]),
        opt(&io["network_mbps"]),
        opt(&io["network_mbps_observed_p95"])
    );
    s += "\nreasons:\n";
    for r in v["reasons"].as_array().into_iter().flatten() {
        s += &format!(
            "  {:<7} {:<16} {}\n",
            r["resource"].as_str().unwrap_or(""),
            r["kind"].as_str().unwrap_or(""),
            r["detail"].as_str().unwrap_or("")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recommend_prints_no_terminal_escapes() {
        let v = json!({"agent": "a-1", "mode": "off", "platform": "guest", "change": "none",
                       "current": {"cpu_cores": 2.0, "memory_gib": 4.0},
                       "personas_source": "observed",
                       "cost": {"current": {"shape": "m5.large", "monthly_usd": 70.0}},
                       "reasons": [{"resource": "cpu", "kind": "percentile",
                                    "detail": "p75 of 1.2 cores"}]});
        crate::cli::text::assert_renders_inert(&v, human, "p75 of 1.2 cores");
        crate::cli::text::assert_renders_inert(&v, human, "m5.large");
    }
}
