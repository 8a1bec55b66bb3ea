//! `personactl agents list|show|revoke`, `personactl series` and `personactl status`:
//! argument types, the request, and the human rendering of the answer.

use clap::Subcommand;
use hyper::Method;
use serde_json::Value;

use super::client::{CtlError, parse_duration_s};
use super::table::{Align, Table};
use super::{Global, ago, emit};

#[derive(Debug, Subcommand)]
pub enum AgentsCmd {
    /// Enrolled agents with their connection state and last contact.
    List,
    /// Facts, declared purpose, latest values and top processes of one agent.
    Show {
        /// Agent id.
        id: String,
    },
    /// Cut an agent off at once and refuse it from then on.
    Revoke {
        /// Agent id.
        id: String,
    },
}

/// `personactl agents ...`
pub fn agents(cmd: AgentsCmd, g: &Global) -> Result<(), CtlError> {
    let c = g.client()?;
    match cmd {
        AgentsCmd::List => {
            let v = c.call_blocking(Method::GET, "/v1/agents", None)?;
            emit(g, &v, list_table);
        }
        AgentsCmd::Show { id } => {
            let v = c.call_blocking(Method::GET, &format!("/v1/agents/{id}"), None)?;
            emit(g, &v, show_text);
        }
        AgentsCmd::Revoke { id } => {
            let v = c.call_blocking(Method::POST, &format!("/v1/agents/{id}/revoke"), None)?;
            emit(g, &v, |v| {
                format!(
                    "revoked agent {}; its connections are closed and refused from now on\n",
                    v["revoked"].as_str().unwrap_or("")
                )
            });
        }
    }
    Ok(())
}

fn list_table(v: &Value) -> String {
    let mut table = Table::new(&[
        ("ID", Align::Left),
        ("HOSTNAME", Align::Left),
        ("STATE", Align::Left),
        ("BATCHES", Align::Right),
        ("LAST SEEN", Align::Right),
    ]);
    for a in v["agents"].as_array().into_iter().flatten() {
        table.row(vec![
            a["id"].as_str().unwrap_or("").to_owned(),
            a["hostname"].as_str().unwrap_or("").to_owned(),
            a["state"].as_str().unwrap_or("").to_owned(),
            a["batches"].to_string(),
            ago(a["last_seen_ms"].as_i64()),
        ]);
    }
    table.render()
}

fn show_text(v: &Value) -> String {
    let f = &v["facts"];
    let mut s = format!(
        "agent:      {}\nhostname:   {}\nstate:      {}\nlast seen:  {}\nbatches:    {} (last seq {})\nos:         {}\nkernel:     {}\nvCPUs:      {} online / {} possible\nmemory:     {:.1} GiB\nvirt:       {}\n",
        v["id"].as_str().unwrap_or(""),
        v["hostname"].as_str().unwrap_or(""),
        v["state"].as_str().unwrap_or(""),
        ago(v["last_seen_ms"].as_i64()),
        v["batches"],
        v["committed_seq"],
        f["os_release"].as_str().unwrap_or("?"),
        f["kernel"].as_str().unwrap_or("?"),
        f["cpus_online"],
        f["cpus_possible"],
        f["mem_total_bytes"].as_f64().unwrap_or(0.0) / 1073741824.0,
        f["virtualization"].as_str().unwrap_or("?")
    );
    if let Some(p) = v["purpose"].as_object() {
        s += &format!(
            "purpose:    {}\n",
            p.get("description").and_then(Value::as_str).unwrap_or("")
        );
    }
    if let Some(vals) = v["latest"]["values"].as_object() {
        s += "latest values:\n";
        for (k, x) in vals {
            s += &format!("  {k:<34} {x}\n");
        }
    }
    s += &belief_lines(v);
    if let Some(p) = v["top_processes"].as_array() {
        s += "top processes:\n";
        for p in p {
            s += &format!(
                "  {:<16} {:>7.1}% {:>8.1} MiB\n",
                p["comm"].as_str().unwrap_or(""),
                p["cpu_pct"].as_f64().unwrap_or(0.0),
                p["rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
            );
        }
    }
    s
}

/// The lines `agents show` prints for the beliefs and recent events.
fn belief_lines(v: &Value) -> String {
    let top = |k: &str| {
        let list = v[k].as_array().map_or(&[][..], Vec::as_slice);
        if list.is_empty() {
            return "-".to_owned();
        }
        list.iter()
            .take(3)
            .map(|p| {
                format!(
                    "{} {:.2}",
                    p["slug"].as_str().unwrap_or("?"),
                    p["probability"].as_f64().unwrap_or(0.0)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut s = format!(
        "persona:    combined {} (prior weight {:.2}, {:.1} h observed)\n            prior {}\n            observed {}\n",
        top("combined"),
        v["belief"]["prior_weight"].as_f64().unwrap_or(0.0),
        v["belief"]["observed_hours"].as_f64().unwrap_or(0.0),
        top("prior"),
        top("observed"),
    );
    if let Some(evs) = v["events"].as_array().filter(|e| !e.is_empty()) {
        s += "recent events:\n";
        for e in evs.iter().take(10) {
            s += &format!(
                "  {:<8} {:<16} {}\n",
                e["severity"].as_str().unwrap_or(""),
                e["kind"].as_str().unwrap_or(""),
                e["summary"].as_str().unwrap_or("")
            );
        }
    }
    s
}

/// `personactl series AGENT METRIC[@INSTANCE] --since DURATION`
pub fn series(agent: &str, metric: &str, since: &str, g: &Global) -> Result<(), CtlError> {
    let since_ms = persona_shared::clock::now_ms() - parse_duration_s(since)? * 1000;
    let v = g.client()?.call_blocking(
        Method::GET,
        &format!("/v1/series/{agent}/{metric}?since_ms={since_ms}"),
        None,
    )?;
    emit(g, &v, |v| {
        let mut s = format!(
            "# {} {} ({})\n",
            v["agent"].as_str().unwrap_or(""),
            v["metric"].as_str().unwrap_or(""),
            v["unit"].as_str().unwrap_or("")
        );
        for p in v["points"].as_array().into_iter().flatten() {
            s += &format!("{:.3} {}\n", p[0].as_f64().unwrap_or(0.0), p[1]);
        }
        s
    });
    Ok(())
}

/// `personactl status`
pub fn status(g: &Global) -> Result<(), CtlError> {
    let v = g.client()?.call_blocking(Method::GET, "/v1/status", None)?;
    emit(g, &v, status_table);
    Ok(())
}

/// `status` for humans: counters as aligned name/value pairs, rejections by reason.
fn status_table(v: &Value) -> String {
    let mut t = Table::new(&[("COUNTER", Align::Left), ("VALUE", Align::Left)]);
    let mut rejected = Table::new(&[("REJECTED BY REASON", Align::Left), ("COUNT", Align::Right)]);
    for (k, x) in v.as_object().into_iter().flatten() {
        match x {
            Value::Object(m) if k == "rejected" => {
                for (reason, n) in m {
                    rejected.row(vec![reason.clone(), n.to_string()]);
                }
            }
            Value::String(s) => t.row(vec![k.clone(), s.clone()]),
            other => t.row(vec![k.clone(), other.to_string()]),
        }
    }
    let mut out = t.render();
    if v["rejected"].as_object().is_some_and(|m| !m.is_empty()) {
        out += "\n";
        out += &rejected.render();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::text::assert_renders_inert;
    use serde_json::json;

    fn agent() -> Value {
        json!({
            "id": "a-1", "hostname": "web-1", "state": "connected", "batches": 3,
            "committed_seq": 3, "last_seen_ms": 1,
            "facts": {"os_release": "Debian GNU/Linux 12", "kernel": "6.1.0",
                      "cpus_online": 2, "cpus_possible": 4, "mem_total_bytes": 4294967296u64,
                      "virtualization": "kvm"},
            "purpose": {"description": "web shop"},
            "latest": {"values": {"cpu.user_ratio": 0.5}},
            "combined": [{"slug": "web-server", "probability": 0.9}],
            "prior": [], "observed": [],
            "belief": {"prior_weight": 0.5, "observed_hours": 1.0},
            "events": [{"severity": "warning", "kind": "pressure", "summary": "cpu pressure"}],
            "top_processes": [{"comm": "nginx", "cpu_pct": 1.0, "rss_bytes": 1048576}]
        })
    }

    #[test]
    fn agents_show_prints_no_terminal_escapes() {
        assert_renders_inert(&agent(), show_text, "Debian GNU/Linux 12");
        assert_renders_inert(&agent(), show_text, "cpu pressure");
        assert_renders_inert(&agent(), show_text, "nginx");
        assert_renders_inert(&agent(), show_text, "web shop");
    }

    #[test]
    fn agents_list_prints_no_terminal_escapes() {
        assert_renders_inert(&json!({"agents": [agent()]}), list_table, "web-1");
    }

    #[test]
    fn status_prints_no_terminal_escapes() {
        let v = json!({"version": "0.1.0", "agents": 2, "rejected": {"bad_alpn": 1}});
        assert_renders_inert(&v, status_table, "bad_alpn");
    }
}
