//! The admin API and start-up against hostile or careless input (issue 18): wrong
//! methods answer 405 with `Allow`, loose token bodies 400, the token list is bounded,
//! slow and idle clients are cut off, clients over the connection bound get a 503, and
//! a data directory whose secrets others can read refuses to start. A coordinator runs
//! in this process on 127.0.0.1:0; requests are raw HTTP/1.1 over a TcpStream so the
//! test sees exactly what a client sees.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use persona_coordinator::{ServeOptions, ServerSettings};
use serde_json::Value;

struct Running {
    rt: Option<tokio::runtime::Runtime>,
    stop: tokio::sync::watch::Sender<bool>,
    http: SocketAddr,
    token: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

fn options(dir: &Path, settings: ServerSettings) -> ServeOptions {
    ServeOptions {
        data_dir: dir.to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        http: "127.0.0.1:0".parse().unwrap(),
        advertise: None,
        settings,
    }
}

fn try_start(
    dir: &Path,
    settings: ServerSettings,
) -> Result<Running, persona_coordinator::CoordError> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let c = rt.block_on(persona_coordinator::start(options(dir, settings), rx))?;
    Ok(Running {
        http: c.http_addr,
        token: c.admin_token.clone(),
        rt: Some(rt),
        stop,
    })
}

/// One request on a fresh connection (`Connection: close`); returns the status, the
/// head and the body.
fn request(r: &Running, method: &str, path: &str, body: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(r.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        r.token,
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// How long until the server closes a connection on which we send `sent` and then
/// nothing; panics if it stays open past `limit`.
fn closed_after(addr: SocketAddr, sent: &[u8], limit: Duration) -> Duration {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(sent).unwrap();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return t0.elapsed(),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return t0.elapsed(),
            Err(e) => panic!("connection still open after {:?}: {e}", t0.elapsed()),
        }
    }
}

#[test]
fn a_known_path_with_another_method_answers_405_with_allow() {
    let dir = tempfile::tempdir().unwrap();
    let r = try_start(&dir.path().join("c"), ServerSettings::default()).unwrap();
    let (st, head, body) = request(&r, "DELETE", "/v1/tokens", "");
    assert_eq!(st, 405, "{head}\n{body}");
    assert!(head.to_lowercase().contains("allow: get, post"), "{head}");
    assert!(json(&body)["error"].as_str().unwrap().contains("GET, POST"));
    let (st, head, _) = request(&r, "GET", "/v1/agents/a-1/revoke", "");
    assert_eq!(st, 405);
    assert!(head.to_lowercase().contains("allow: post"), "{head}");
    let (st, head, _) = request(&r, "POST", "/metrics", "");
    assert_eq!(st, 405);
    assert!(head.to_lowercase().contains("allow: get"), "{head}");
    // An unknown path is still a 404, and a right method still works.
    assert_eq!(request(&r, "GET", "/v1/nothing", "").0, 404);
    assert_eq!(request(&r, "GET", "/v1/status", "").0, 200);
}

#[test]
fn token_bodies_are_strict_ids_are_64_bit_and_the_list_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let r = try_start(&dir.path().join("c"), ServerSettings::default()).unwrap();
    // Issue 18 item 14: this once made a one-hour single-use token.
    let (st, _, body) = request(
        &r,
        "POST",
        "/v1/tokens",
        r#"{"ttl_s":"60","uses":"5","bogus":1}"#,
    );
    assert_eq!(st, 400, "{body}");
    let msg = json(&body)["error"].as_str().unwrap().to_owned();
    assert!(msg.contains("ttl_s") || msg.contains("bogus"), "{msg}");
    let (st, _, body) = request(&r, "POST", "/v1/tokens", r#"{"ttl_s":60,"bogus":1}"#);
    assert_eq!(st, 400);
    assert!(body.contains("bogus"), "{body}");

    for _ in 0..3 {
        let (st, _, body) = request(&r, "POST", "/v1/tokens", r#"{"ttl_s":60,"uses":1}"#);
        assert_eq!(st, 200, "{body}");
        let v = json(&body);
        let id = v["id"].as_str().unwrap();
        assert_eq!(id.len(), 16, "64-bit id: {id}");
        let token = v["token"].as_str().unwrap();
        assert!(token.starts_with(&format!("{id}.")), "{token}");
    }
    let v = json(&request(&r, "GET", "/v1/tokens?limit=2", "").2);
    assert_eq!(v["tokens"].as_array().unwrap().len(), 2);
    assert_eq!(v["more"], true);
    let v = json(&request(&r, "GET", "/v1/tokens", "").2);
    assert_eq!(v["tokens"].as_array().unwrap().len(), 3);
    assert_eq!(
        (v["limit"].as_u64(), v["more"].as_bool()),
        (Some(100), Some(false))
    );
    let (st, _, body) = request(&r, "GET", "/v1/tokens?limit=100000", "");
    assert_eq!(st, 400);
    assert!(body.contains("1..=1000"), "{body}");
}

#[test]
fn silent_slow_and_idle_clients_are_cut_off_and_the_bound_answers_503() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = ServerSettings::default();
    settings.api_limits.header_timeout = Duration::from_secs(1);
    settings.api_limits.body_timeout = Duration::from_secs(1);
    settings.api_limits.max_connections = 2;
    settings.api_limits.queue_wait = Duration::from_millis(200);
    let r = try_start(&dir.path().join("c"), settings).unwrap();
    let limit = Duration::from_secs(15);
    // Nothing at all, half a header, and a whole request with a body that never comes:
    // each is closed (the header and body timeouts of 1 s), not held forever.
    assert!(closed_after(r.http, b"", limit) >= Duration::from_millis(900));
    closed_after(r.http, b"GET /v1/status HTTP/1.1\r\nHost: x\r\n", limit);
    let slow = format!(
        "POST /v1/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 100\r\n\r\n{{",
        r.token
    );
    closed_after(r.http, slow.as_bytes(), limit);
    // An idle keep-alive connection is closed after a request too.
    let keep = format!(
        "GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        r.token
    );
    closed_after(r.http, keep.as_bytes(), limit);

    // Two silent clients hold both slots; a third waits 200 ms and gets a 503.
    let hold: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(r.http).unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let busy = loop {
        // The two holders are accepted before the third (one accept loop, in order);
        // retry only in case a holder was not yet accepted.
        let (st, _, body) = request(&r, "GET", "/v1/status", "");
        if st == 503 {
            break body;
        }
        assert!(Instant::now() < deadline, "never refused with 503: {st}");
    };
    assert!(busy.contains("too many admin API connections"), "{busy}");
    // Once the holders time out (1 s), a good client is served again.
    let deadline = Instant::now() + Duration::from_secs(15);
    while request(&r, "GET", "/v1/status", "").0 != 200 {
        assert!(Instant::now() < deadline, "the API never recovered");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(hold);
}

#[test]
fn exposed_secrets_and_an_empty_admin_token_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("c");
    drop(try_start(&data, ServerSettings::default()).unwrap());
    let set = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    for (f, mode) in [
        ("ca.key", 0o644),
        ("server.key", 0o640),
        ("admin.token", 0o644),
    ] {
        let path = data.join(f);
        set(&path, mode);
        let e = try_start(&data, ServerSettings::default())
            .err()
            .unwrap_or_else(|| panic!("started with {f} at {mode:o}"))
            .to_string();
        let shown = path.display().to_string();
        assert!(
            e.contains(&shown)
                && e.contains(&format!("{mode:04o}"))
                && e.contains(&format!("chmod 600 {shown}")),
            "{e}"
        );
        set(&path, 0o600);
    }
    set(&data, 0o755);
    let e = try_start(&data, ServerSettings::default())
        .err()
        .expect("started with a 0755 data dir")
        .to_string();
    assert!(e.contains("0755") && e.contains("chmod 700"), "{e}");
    set(&data, 0o700);

    let token = data.join("admin.token");
    std::fs::write(&token, "\n").unwrap();
    set(&token, 0o600);
    let e = try_start(&data, ServerSettings::default())
        .err()
        .expect("started with an empty admin token")
        .to_string();
    assert!(e.contains("admin.token") && e.contains("empty"), "{e}");
    std::fs::remove_file(&token).unwrap();
    // With the file gone a new token is made, and the coordinator starts.
    let r = try_start(&data, ServerSettings::default()).unwrap();
    assert!(r.token.len() >= 16);
}
