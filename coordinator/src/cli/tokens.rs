//! `personactl token create|list|revoke`: join tokens and the enroll line for a VM.

use clap::Subcommand;
use hyper::Method;
use serde_json::{Value, json};

use super::client::{CtlError, parse_duration_s};
use super::table::{Align, Table};
use super::{Global, emit};

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a join token and print the agent's enroll command line.
    Create {
        /// How long the token is valid: 90s, 10m, 1h, 2d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// How many agents may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: i64,
    },
    /// List tokens with their expiry and remaining uses.
    List,
    /// Revoke a token so no further agent can enroll with it.
    Revoke {
        /// Token id (the part before the dot).
        id: String,
    },
}

/// `personactl token ...`
pub fn token(cmd: TokenCmd, g: &Global) -> Result<(), CtlError> {
    let c = g.client()?;
    match cmd {
        TokenCmd::Create { ttl, uses } => {
            let ttl_s = parse_duration_s(&ttl)?;
            let v = c.call_blocking(
                Method::POST,
                "/v1/tokens",
                Some(json!({"ttl_s": ttl_s, "uses": uses})),
            )?;
            emit(g, &v, |v| {
                format!(
                    "token: {}\nexpires in: {} s\nrun on the VM:\n  {}\n",
                    v["token"].as_str().unwrap_or(""),
                    (v["expires_ms"].as_i64().unwrap_or(0) - persona_shared::clock::now_ms())
                        / 1000,
                    v["command"].as_str().unwrap_or("")
                )
            });
        }
        TokenCmd::List => {
            let v = c.call_blocking(Method::GET, "/v1/tokens", None)?;
            emit(g, &v, list_table);
        }
        TokenCmd::Revoke { id } => {
            let v = c.call_blocking(Method::POST, &format!("/v1/tokens/{id}/revoke"), None)?;
            emit(g, &v, |v| {
                format!("revoked token {}\n", v["revoked"].as_str().unwrap_or(""))
            });
        }
    }
    Ok(())
}

fn list_table(v: &Value) -> String {
    let mut table = Table::new(&[
        ("ID", Align::Left),
        ("EXPIRES IN", Align::Right),
        ("LEFT", Align::Right),
        ("USED", Align::Right),
        ("STATE", Align::Left),
    ]);
    for t in v["tokens"].as_array().into_iter().flatten() {
        let exp = (t["expires_ms"].as_i64().unwrap_or(0) - persona_shared::clock::now_ms()) / 1000;
        let state = if t["revoked"].as_bool() == Some(true) {
            "revoked"
        } else if exp <= 0 {
            "expired"
        } else if t["uses_left"].as_i64() == Some(0) {
            "used"
        } else {
            "active"
        };
        table.row(vec![
            t["id"].as_str().unwrap_or("").to_owned(),
            format!("{}s", exp.max(0)),
            t["uses_left"].to_string(),
            t["used"].to_string(),
            state.to_owned(),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_list_prints_no_terminal_escapes() {
        let v = json!({"tokens": [{"id": "0123456789abcdef", "expires_ms": 1, "uses_left": 0,
                                    "used": 1, "revoked": false}]});
        crate::cli::text::assert_renders_inert(&v, list_table, "0123456789abcdef");
    }
}
