//! `personactl events [--agent ID] [--since 1h] [--json]`: the events agents raised
//! (pressure, anomalies), newest first, as a table or one JSON document
//! `{"events": [...]}`. Argument parsing and output only; the route is
//! `GET /v1/events` in `api::events`.

use hyper::Method;
use serde_json::Value;

use crate::cli::Global;
use crate::cli::client::{CtlError, parse_duration_s};
use crate::cli::table::{Align, Table};

/// Arguments of `personactl events`.
#[derive(Debug, Clone, clap::Args)]
pub struct EventsArgs {
    /// Only this agent's events (see `personactl agents list`).
    #[arg(long)]
    pub agent: Option<String>,
    /// How far back: 90s, 10m, 1h, 2d.
    #[arg(long, default_value = "1h")]
    pub since: String,
    /// At most this many events (1..=10000).
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
}

/// Runs the command and prints its output.
pub fn run(a: EventsArgs, g: &Global) -> Result<(), CtlError> {
    let since_ms = persona_shared::clock::now_ms() - parse_duration_s(&a.since)? * 1000;
    if !(1..=persona_shared::events::MAX_LIST).contains(&a.limit) {
        return Err(CtlError::Arg(format!(
            "--limit {} is outside 1..={}",
            a.limit,
            persona_shared::events::MAX_LIST
        )));
    }
    let mut path = format!("/v1/events?since_ms={since_ms}&limit={}", a.limit);
    if let Some(id) = &a.agent {
        if !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(CtlError::Arg(format!("{id:?} is not an agent id")));
        }
        path.push_str(&format!("&agent={id}"));
    }
    let client = g.client()?;
    let v = client.call_blocking(Method::GET, &path, None)?;
    crate::cli::emit(g, &v, render);
    Ok(())
}

fn time_of(ms: Option<i64>) -> String {
    let Some(ms) = ms else { return "-".into() };
    let secs = ms.div_euclid(1000);
    let day = secs.rem_euclid(86_400);
    let ago = (persona_shared::clock::now_ms() - ms).max(0) / 1000;
    format!(
        "{:02}:{:02}:{:02} ({})",
        day / 3600,
        day % 3600 / 60,
        day % 60,
        if ago < 120 {
            format!("{ago}s ago")
        } else if ago < 7200 {
            format!("{}m ago", ago / 60)
        } else {
            format!("{}h ago", ago / 3600)
        }
    )
}

/// The human table: one row per event.
pub fn render(v: &Value) -> String {
    let events = v["events"].as_array().map_or(&[][..], Vec::as_slice);
    if events.is_empty() {
        return "no events\n".into();
    }
    let mut t = Table::new(&[
        ("AT (UTC)", Align::Left),
        ("AGENT", Align::Left),
        ("ID", Align::Right),
        ("KIND", Align::Left),
        ("RESOURCE", Align::Left),
        ("SEVERITY", Align::Left),
        ("FOR", Align::Right),
        ("SUMMARY", Align::Left),
    ]);
    for e in events {
        let (since, at) = (e["since_ms"].as_i64(), e["at_ms"].as_i64());
        let dur = match (since, at) {
            (Some(s), Some(a)) => format!("{}s", (a - s).max(0) / 1000),
            _ => "-".into(),
        };
        let kind = match e["comm"].as_str() {
            Some(c) => format!("{} ({c})", e["kind"].as_str().unwrap_or("")),
            None => e["kind"].as_str().unwrap_or("").to_owned(),
        };
        t.row(vec![
            time_of(at),
            e["agent_id"].as_str().unwrap_or("").to_owned(),
            e["id"].to_string(),
            kind,
            e["resource"].as_str().unwrap_or("-").to_owned(),
            e["severity"].as_str().unwrap_or("").to_owned(),
            dur,
            e["summary"].as_str().unwrap_or("").to_owned(),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_a_row_per_event() {
        let v = json!({"events": [
            {"agent_id": "a-1", "id": 3, "kind": "pressure", "resource": "cpu",
             "severity": "warning", "since_ms": 1_000, "at_ms": 3_000, "summary": "cpu pressure"},
            {"agent_id": "a-1", "id": 4, "kind": "runaway_process", "resource": null,
             "comm": "yes", "severity": "warning", "since_ms": 1_000, "at_ms": 601_000,
             "summary": "process yes"}
        ]});
        let s = render(&v);
        assert_eq!(s.lines().count(), 3, "{s}");
        assert!(
            s.contains("runaway_process (yes)") && s.contains("2s"),
            "{s}"
        );
        assert_eq!(render(&json!({"events": []})), "no events\n");
    }

    #[test]
    fn events_print_no_terminal_escapes() {
        let v = json!({"events": [
            {"agent_id": "a-1", "id": 4, "kind": "runaway_process", "resource": "cpu",
             "comm": "yes", "severity": "warning", "since_ms": 1_000, "at_ms": 601_000,
             "summary": "process yes"}
        ]});
        crate::cli::text::assert_renders_inert(&v, render, "process yes");
        crate::cli::text::assert_renders_inert(&v, render, "(yes");
    }
}
