//! The client side of the admin API, used by `personactl` (and the demo): finds the
//! API address and bearer token, makes one HTTP/1.1 request, and returns the JSON.
//! Formatting for humans lives in the personactl binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Errors of an admin API call.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(
        "no admin token: set PERSONA_TOKEN or point --data-dir at the coordinator's data directory ({tried})"
    )]
    NoToken { tried: String },
    #[error("bad API address {addr:?} (expected HOST:PORT): {reason}")]
    BadAddress { addr: String, reason: String },
    #[error(
        "cannot reach coordinator at {addr}: {source}: is `persona-coordinator serve` running? (set PERSONA_API or --api)"
    )]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error(
        "HTTP error talking to {addr}: {source}: is that the coordinator's API address? (set PERSONA_API or --api)"
    )]
    Http { addr: String, source: hyper::Error },
    #[error(
        "the admin token was refused by {addr}: set PERSONA_TOKEN or point --data-dir at the coordinator's data directory"
    )]
    Unauthorized { addr: String },
    #[error("not found: {message}")]
    NotFound { message: String },
    #[error("the coordinator answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("the coordinator sent invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("bad argument: {0}")]
    Arg(String),
    /// Persona database, profiler or model errors (the message says which).
    #[error("{0}")]
    Profile(String),
}

/// Exit codes of `personactl`, documented in its `--help` and docs/operations.md.
pub mod exit {
    pub const OK: u8 = 0;
    /// Bad command line or a request the coordinator called invalid (400).
    pub const USAGE: u8 = 1;
    /// The agent, token or series does not exist (404).
    pub const NOT_FOUND: u8 = 2;
    /// The coordinator cannot be reached (connection refused, timeout, not HTTP).
    pub const UNREACHABLE: u8 = 3;
    /// No admin token, or the token was refused (401).
    pub const AUTH: u8 = 4;
    /// The coordinator failed (5xx) or answered something unreadable.
    pub const SERVER: u8 = 5;
}

impl CtlError {
    /// The exit code scripts can rely on (see [`exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::NoToken { .. } | CtlError::Unauthorized { .. } => exit::AUTH,
            CtlError::BadAddress { .. } | CtlError::Arg(_) | CtlError::Profile(_) => exit::USAGE,
            CtlError::Connect { .. } | CtlError::Http { .. } => exit::UNREACHABLE,
            CtlError::NotFound { .. } => exit::NOT_FOUND,
            CtlError::Status { status, .. } if (400..500).contains(status) => exit::USAGE,
            CtlError::Status { .. } | CtlError::Json(_) => exit::SERVER,
        }
    }
}

/// Where and how to reach the API.
#[derive(Debug, Clone)]
pub struct Client {
    pub addr: String,
    token: String,
}

impl Client {
    /// The address comes from `api` or `PERSONA_API` (default 127.0.0.1:7444); the token
    /// from `PERSONA_TOKEN` or `<data_dir>/admin.token`, where data_dir defaults to
    /// `PERSONA_DATA_DIR`, then `./persona-data`, then `/var/lib/persona-coordinator`.
    pub fn discover(api: Option<String>, data_dir: Option<PathBuf>) -> Result<Self, CtlError> {
        let addr = api
            .or_else(|| std::env::var("PERSONA_API").ok())
            .unwrap_or_else(|| "127.0.0.1:7444".into());
        let addr = addr
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        if let Ok(t) = std::env::var("PERSONA_TOKEN")
            && !t.trim().is_empty()
        {
            return Ok(Self {
                addr,
                token: t.trim().to_owned(),
            });
        }
        let dirs: Vec<PathBuf> =
            match data_dir.or_else(|| std::env::var_os("PERSONA_DATA_DIR").map(PathBuf::from)) {
                Some(d) => vec![d],
                None => vec![
                    PathBuf::from("persona-data"),
                    PathBuf::from("/var/lib/persona-coordinator"),
                ],
            };
        for d in &dirs {
            if let Ok(t) = std::fs::read_to_string(d.join("admin.token")) {
                return Ok(Self {
                    addr,
                    token: t.trim().to_owned(),
                });
            }
        }
        let tried = dirs
            .iter()
            .map(|d| d.join("admin.token").display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        Err(CtlError::NoToken { tried })
    }

    /// A client for a known address and token.
    pub fn new(addr: SocketAddr, token: &str) -> Self {
        Self {
            addr: addr.to_string(),
            token: token.to_owned(),
        }
    }

    /// Makes one request and returns the JSON answer (an error for any non-2xx status).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CtlError> {
        // A firewalled address would otherwise hang for minutes in the kernel's retries.
        let connect = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio::net::TcpStream::connect(&self.addr),
        )
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer within 10 s",
            ))
        });
        let stream = connect.map_err(|source| CtlError::Connect {
            addr: self.addr.clone(),
            source,
        })?;
        let http = |source| CtlError::Http {
            addr: self.addr.clone(),
            source,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        tokio::spawn(conn);
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.addr)
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| CtlError::BadAddress {
                addr: self.addr.clone(),
                reason: e.to_string(),
            })?;
        let resp = sender.send_request(req).await.map_err(http)?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(http)?.to_bytes();
        if status == hyper::StatusCode::UNAUTHORIZED {
            return Err(CtlError::Unauthorized {
                addr: self.addr.clone(),
            });
        }
        let v: Value = serde_json::from_slice(&body)?;
        if status == hyper::StatusCode::NOT_FOUND {
            let message = v
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("(no message)")
                .to_owned();
            return Err(CtlError::NotFound { message });
        }
        if !status.is_success() {
            let message = v
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("(no message)")
                .to_owned();
            return Err(CtlError::Status {
                status: status.as_u16(),
                message,
            });
        }
        Ok(v)
    }

    /// Blocking wrapper for command-line use.
    pub fn call_blocking(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CtlError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| CtlError::Connect {
                addr: self.addr.clone(),
                source,
            })?;
        rt.block_on(self.call(method, path, body))
    }
}

/// Parses a duration such as `90s`, `10m`, `1h`, `2d` (a bare number is seconds).
/// How long ago a millisecond timestamp was, for tables: "42s ago", "5m ago", "3h ago",
/// or "-" for none.
pub fn ago(ms: Option<i64>) -> String {
    ms.map_or_else(
        || "-".into(),
        |ms| {
            let s = (persona_shared::clock::now_ms() - ms).max(0) / 1000;
            if s < 120 {
                format!("{s}s ago")
            } else if s < 7200 {
                format!("{}m ago", s / 60)
            } else {
                format!("{}h ago", s / 3600)
            }
        },
    )
}

pub fn parse_duration_s(s: &str) -> Result<i64, CtlError> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86400),
        _ => (s, 1),
    };
    num.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| CtlError::Arg(format!("bad duration {s:?} (use e.g. 90s, 10m, 1h, 2d)")))
}

/// Default data directory when none is given.
pub fn default_data_dir() -> &'static Path {
    Path::new("persona-data")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_s("10m").unwrap(), 600);
        assert_eq!(parse_duration_s("1h").unwrap(), 3600);
        assert_eq!(parse_duration_s("45").unwrap(), 45);
        assert_eq!(parse_duration_s("2d").unwrap(), 172_800);
        assert!(parse_duration_s("").is_err());
        assert!(parse_duration_s("-5m").is_err());
        assert!(parse_duration_s("xm").is_err());
    }
}
