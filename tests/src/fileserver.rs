//! A small HTTP/1.1 file server on loopback for the pre-load tests: it serves fixed
//! bodies with `Range` support, records every request, and can misbehave on purpose
//! (drop the connection midway on the first request, or hold a response half-sent until
//! the test releases it). Test support only: one connection per request, `Connection:
//! close`, bounded waits, and it stops when dropped.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How a route answers.
#[derive(Debug, Clone)]
pub enum Mode {
    Normal,
    /// The first request gets the full Content-Length but only `after` bytes, then the
    /// connection is closed; later requests are served normally.
    DropFirst {
        after: usize,
    },
    /// Sends half the body, then waits (at most 60 s) for [`FileServer::release`].
    Hold,
}

#[derive(Debug)]
struct Route {
    body: Vec<u8>,
    mode: Mode,
    served: usize,
}

/// One recorded request: path and the Range header, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub path: String,
    pub range: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    routes: Mutex<HashMap<String, Route>>,
    hits: Mutex<Vec<Hit>>,
    gate: (Mutex<bool>, Condvar),
    stop: AtomicBool,
}

/// The running server.
#[derive(Debug)]
pub struct FileServer {
    pub addr: SocketAddr,
    state: Arc<State>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FileServer {
    /// Binds 127.0.0.1:0 and serves until dropped.
    pub fn start() -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State::default());
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            while !st.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let st = st.clone();
                        std::thread::spawn(move || serve(s, &st));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FileServer {
            addr,
            state,
            thread: Some(thread),
        }
    }

    /// Serves `body` at `path`.
    pub fn add(&self, path: &str, body: Vec<u8>, mode: Mode) {
        self.state.routes.lock().expect("routes").insert(
            path.to_owned(),
            Route {
                body,
                mode,
                served: 0,
            },
        );
    }

    /// The URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests so far.
    pub fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().expect("hits").clone()
    }

    /// Requests of one path so far.
    pub fn hits_of(&self, path: &str) -> Vec<Hit> {
        self.hits().into_iter().filter(|h| h.path == path).collect()
    }

    /// Lets held responses finish.
    pub fn release(&self) {
        let (m, c) = &self.state.gate;
        *m.lock().expect("gate") = true;
        c.notify_all();
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        self.release();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_head(s: &mut TcpStream) -> Option<String> {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut b = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut b).ok()?;
        if n == 0 || buf.len() > 16 * 1024 {
            return None;
        }
        buf.extend_from_slice(&b[..n]);
    }
    String::from_utf8(buf).ok()
}

fn serve(mut s: TcpStream, st: &State) {
    let _ = s.set_nonblocking(false);
    let Some(head) = read_head(&mut s) else {
        return;
    };
    let mut lines = head.lines();
    let path = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("/")
        .to_owned();
    let range = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("range"))
        .map(|(_, v)| v.trim().to_owned());
    st.hits.lock().expect("hits").push(Hit {
        path: path.clone(),
        range: range.clone(),
    });
    let (body, mode, first) = {
        let mut routes = st.routes.lock().expect("routes");
        match routes.get_mut(&path) {
            Some(r) => {
                r.served += 1;
                (r.body.clone(), r.mode.clone(), r.served == 1)
            }
            None => {
                let _ = s.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                return;
            }
        }
    };
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n < body.len());
    let part = &body[start.unwrap_or(0)..];
    let head = match start {
        Some(n) => format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {n}-{}/{}\r\nConnection: close\r\n\r\n",
            part.len(),
            body.len() - 1,
            body.len()
        ),
        None => format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
            part.len()
        ),
    };
    if s.write_all(head.as_bytes()).is_err() {
        return;
    }
    match mode {
        Mode::DropFirst { after } if first => {
            let _ = s.write_all(&part[..after.min(part.len())]);
            let _ = s.flush();
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        Mode::Hold => {
            let half = part.len() / 2;
            let _ = s.write_all(&part[..half]);
            let _ = s.flush();
            let (m, c) = &st.gate;
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut open = m.lock().expect("gate");
            while !*open && Instant::now() < deadline {
                open = c
                    .wait_timeout(open, Duration::from_millis(100))
                    .expect("gate")
                    .0;
            }
            drop(open);
            let _ = s.write_all(&part[half..]);
        }
        _ => {
            let _ = s.write_all(part);
        }
    }
}

/// Lower-case hex SHA-256 of bytes (ring, like the agent).
pub fn sha256_hex(b: &[u8]) -> String {
    let d = ring_digest(b);
    d.iter().map(|x| format!("{x:02x}")).collect()
}

fn ring_digest(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .to_vec()
}
