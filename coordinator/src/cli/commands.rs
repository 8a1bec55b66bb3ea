//! `personactl commands ...` and `personactl preload ...`: argument types and output
//! formatting for the command channel and the pre-load orchestrator. The binary adds
//! these to its command enum and calls [`commands`] and [`preload`]; requests go through
//! `ctl::Client`. What it is not: the state machine (`commands`) or planning (`preload`).

use hyper::Method;
use serde_json::{Value, json};

use crate::cli::Global;
use crate::cli::client::{CtlError, parse_duration_s};
use crate::cli::table::{Align, Table};

/// `personactl commands ...`
#[derive(Debug, clap::Subcommand)]
pub enum CommandsCmd {
    /// Commands, newest first, with their state and progress.
    List {
        /// Only this agent's commands.
        #[arg(long)]
        agent: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One command: its action, timestamps, progress and result.
    Show {
        /// Command id (c-...).
        id: String,
    },
    /// Cancel a command: one not yet sent is cancelled at once; one the agent has gets a
    /// signed cancel (a queued command never starts, a running pre-load stops between steps).
    Cancel {
        /// Command id (c-...).
        id: String,
    },
    /// Send any action as JSON, e.g. '{"ConfigUpdate":{"sample_interval_ms":500,"batch_interval_s":null}}'.
    Send {
        /// Agent id.
        #[arg(long)]
        agent: String,
        /// The action as JSON (see docs/protocol.md, "Commands").
        #[arg(long)]
        action: String,
        /// How long the command may wait to be run: 90s, 10m, 1h, 2d.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

/// `personactl preload ...`
#[derive(Debug, clap::Args)]
pub struct PreloadArgs {
    /// Agent id.
    pub agent: String,
    /// Plan from this persona's manifest instead of the profile of the agent's declared purpose.
    #[arg(long)]
    pub persona: Option<String>,
    /// Add a file: URL,SHA256,SIZE,DEST (repeatable).
    #[arg(long = "file", value_name = "URL,SHA256,SIZE,DEST")]
    pub files: Vec<String>,
    /// Show the plan without sending it.
    #[arg(long)]
    pub dry_run: bool,
    /// How long the plan may wait to be run: 90s, 10m, 1h, 2d.
    #[arg(long, default_value = "6h")]
    pub ttl: String,
    /// Send again only the steps of this finished pre-load command that failed or never
    /// ran (see `personactl commands show ID`).
    #[arg(long, value_name = "COMMAND_ID", conflicts_with_all = ["persona", "files"])]
    pub retry: Option<String>,
}

use crate::cli::emit;

fn valid_id(id: &str) -> Result<(), CtlError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(CtlError::Arg(format!("{id:?} is not an id")))
    }
}

fn progress(c: &Value) -> String {
    match c["percent"].as_f64() {
        Some(p) => format!("{p:.0}%"),
        None => "-".into(),
    }
}

fn list_table(v: &Value) -> String {
    let mut t = Table::new(&[
        ("ID", Align::Left),
        ("AGENT", Align::Left),
        ("KIND", Align::Left),
        ("STATE", Align::Left),
        ("PROGRESS", Align::Right),
        ("CREATED", Align::Right),
        ("RESULT", Align::Left),
    ]);
    for c in v["commands"].as_array().into_iter().flatten() {
        let result: String = c["message"]
            .as_str()
            .or(c["step"].as_str())
            .unwrap_or("")
            .chars()
            .take(60)
            .collect();
        t.row(vec![
            c["id"].as_str().unwrap_or("").to_owned(),
            c["agent"].as_str().unwrap_or("").to_owned(),
            c["kind"].as_str().unwrap_or("").to_owned(),
            c["state"].as_str().unwrap_or("").to_owned(),
            progress(c),
            crate::cli::client::ago(c["created_ms"].as_i64()),
            result,
        ]);
    }
    t.render()
}

fn show_text(c: &Value) -> String {
    let mut s = String::new();
    for (label, key) in [
        ("id", "id"),
        ("agent", "agent"),
        ("kind", "kind"),
        ("state", "state"),
    ] {
        s += &format!("{label:<10} {}\n", c[key].as_str().unwrap_or(""));
    }
    for (label, key) in [
        ("created", "created_ms"),
        ("sent", "sent_ms"),
        ("delivered", "delivered_ms"),
        ("started", "started_ms"),
        ("finished", "finished_ms"),
    ] {
        s += &format!("{label:<10} {}\n", crate::cli::client::ago(c[key].as_i64()));
    }
    let expires = c["expires_ms"].as_i64().unwrap_or(0) - persona_shared::clock::now_ms();
    s += &format!(
        "{:<10} {}\n",
        "expires",
        if expires > 0 {
            format!("in {}s", expires / 1000)
        } else {
            "passed".into()
        }
    );
    s += &format!("{:<10} {}\n", "attempts", c["attempts"]);
    if let Some(step) = c["step"].as_str() {
        s += &format!("{:<10} {step}\n", "step");
    }
    s += &format!("{:<10} {}\n", "progress", progress(c));
    if let Some(b) = c["bytes"].as_i64() {
        s += &format!("{:<10} {b}\n", "bytes");
    }
    if let Some(m) = c["message"].as_str() {
        s += &format!("{:<10} {m}\n", "result");
    }
    s += &format!("action     {}\n", c["action"]);
    s
}

/// `personactl commands ...`
pub fn commands(cmd: CommandsCmd, g: &Global) -> Result<(), CtlError> {
    let c = g.client()?;
    match cmd {
        CommandsCmd::List { agent, limit } => {
            let mut path = format!("/v1/commands?limit={limit}");
            if let Some(a) = agent {
                valid_id(&a)?;
                path += &format!("&agent={a}");
            }
            let v = c.call_blocking(Method::GET, &path, None)?;
            emit(g, &v, list_table);
        }
        CommandsCmd::Show { id } => {
            valid_id(&id)?;
            let v = c.call_blocking(Method::GET, &format!("/v1/commands/{id}"), None)?;
            emit(g, &v, show_text);
        }
        CommandsCmd::Cancel { id } => {
            valid_id(&id)?;
            let v = c.call_blocking(Method::POST, &format!("/v1/commands/{id}/cancel"), None)?;
            emit(g, &v, |v| match v["cancel"].as_str() {
                Some("cancelled") => format!("cancelled {id}; it will never be delivered\n"),
                _ => format!(
                    "cancel of {id} sent to the agent as {}; `personactl commands show {id}` follows it\n",
                    v["cancel_command"].as_str().unwrap_or("?")
                ),
            });
        }
        CommandsCmd::Send { agent, action, ttl } => {
            valid_id(&agent)?;
            let action: Value = serde_json::from_str(&action)
                .map_err(|e| CtlError::Arg(format!("--action is not JSON: {e}")))?;
            let ttl_s = parse_duration_s(&ttl)?;
            let v = c.call_blocking(
                Method::POST,
                "/v1/commands",
                Some(json!({"agent": agent, "action": action, "ttl_s": ttl_s})),
            )?;
            emit(g, &v, |v| {
                format!("sent {}\n", v["id"].as_str().unwrap_or("?"))
            });
        }
    }
    Ok(())
}

/// Parses `URL,SHA256,SIZE,DEST` (the URL may itself contain commas, so the last three
/// fields are taken from the right).
pub fn parse_file(s: &str) -> Result<Value, CtlError> {
    let bad = || CtlError::Arg(format!("--file {s:?}: expected URL,SHA256,SIZE,DEST"));
    let mut it = s.rsplitn(4, ',');
    let (Some(dest), Some(size), Some(sha), Some(url)) =
        (it.next(), it.next(), it.next(), it.next())
    else {
        return Err(bad());
    };
    let size: u64 = size.trim().parse().map_err(|_| bad())?;
    Ok(json!({"url": url.trim(), "sha256": sha.trim(), "size": size, "dest": dest.trim()}))
}

/// `personactl preload ...`
pub fn preload(a: PreloadArgs, g: &Global) -> Result<(), CtlError> {
    valid_id(&a.agent)?;
    if let Some(id) = &a.retry {
        valid_id(id)?;
    }
    let files = a
        .files
        .iter()
        .map(|f| parse_file(f))
        .collect::<Result<Vec<_>, _>>()?;
    let ttl_s = parse_duration_s(&a.ttl)?;
    let v = g.client()?.call_blocking(
        Method::POST,
        "/v1/preload",
        Some(json!({
            "agent": a.agent,
            "persona": a.persona,
            "files": files,
            "dry_run": a.dry_run,
            "ttl_s": ttl_s,
            "retry": a.retry,
        })),
    )?;
    emit(g, &v, |v| {
        let mut s = format!(
            "plan for {} from {} ({})\n",
            v["agent"].as_str().unwrap_or(""),
            v["source"].as_str().unwrap_or(""),
            v["personas"]
                .as_array()
                .map(|a| a
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        );
        for (i, step) in v["steps"].as_array().into_iter().flatten().enumerate() {
            s += &format!("  {:>2}. {}\n", i + 1, step.as_str().unwrap_or(""));
        }
        let skipped = v["skipped"].as_array().cloned().unwrap_or_default();
        if !skipped.is_empty() {
            s += "not planned:\n";
            for k in skipped {
                s += &format!(
                    "  {} {}: {}\n",
                    k["kind"].as_str().unwrap_or(""),
                    k["name"].as_str().unwrap_or(""),
                    k["reason"].as_str().unwrap_or("")
                );
            }
        }
        match v["command"].as_str() {
            Some(id) => {
                s += &format!("sent as {id}; follow it with `personactl commands show {id}`\n")
            }
            None => s += "dry run: nothing sent\n",
        }
        s
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_arguments() {
        let v = parse_file("http://h/a,b.bin,ab,10,/srv/x").unwrap();
        assert_eq!(v["url"], "http://h/a,b.bin");
        assert_eq!(v["size"], 10);
        assert_eq!(v["dest"], "/srv/x");
        assert!(parse_file("http://h/a,ab,ten,/x").is_err());
        assert!(parse_file("nope").is_err());
        assert!(valid_id("c-0123abcd").is_ok());
        assert!(valid_id("../x").is_err());
    }

    fn command() -> Value {
        json!({"id": "c-1", "agent": "a-1", "kind": "preload", "state": "failed",
               "percent": 50.0, "created_ms": 1, "expires_ms": 2, "attempts": 1,
               "step": "apt install curl", "message": "E: unable to locate curl",
               "action": {"Preload": {"packages": ["x\u{1b}[2J"]}}})
    }

    #[test]
    fn commands_show_prints_no_terminal_escapes() {
        crate::cli::text::assert_renders_inert(&command(), show_text, "unable to locate curl");
    }

    #[test]
    fn commands_list_prints_no_terminal_escapes() {
        let v = json!({"commands": [command()]});
        crate::cli::text::assert_renders_inert(&v, list_table, "unable to locate curl");
    }
}
