//! The agent's own health, for the operator: counters the sampling thread and the link
//! publish into atomics, and an optional tiny `/metrics` endpoint (Prometheus text
//! format) on a loopback address (`metrics_listen` in the config, off by default).
//!
//! The endpoint is a hand-written HTTP/1.0 responder on a tokio `TcpListener`, not hyper:
//! it answers exactly one request per connection (`GET /metrics`), and pulling an HTTP
//! stack into the guest binary for that would cost more than the whole responder
//! (measured: see docs/operations.md). Values are read at scrape time; nothing here
//! runs unless something scrapes. This module does not decide what is healthy (the
//! systemd watchdog does that, in the daemon).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::collect::COLLECTORS;
use crate::outbox::Outbox;

/// Longest request head accepted; a scrape request is a few hundred bytes.
const MAX_REQUEST: usize = 8 * 1024;
/// A client gets this long to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("cannot listen for /metrics on {addr} (metrics_listen): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Counters shared by the sampling thread, the link and the endpoint.
#[derive(Debug, Default)]
pub struct Health {
    pub samples: AtomicU64,
    pub skipped_ticks: AtomicU64,
    pub batches_sealed: AtomicU64,
    pub outbox_write_errors: AtomicU64,
    /// Failures per collector, in [`COLLECTORS`] order.
    pub collector_errors: [AtomicU64; COLLECTORS.len()],
    pub link_connected: AtomicBool,
    pub link_reconnects: AtomicU64,
    pub batches_sent: AtomicU64,
    pub batches_acked: AtomicU64,
    pub batches_rejected: AtomicU64,
    /// Batches the coordinator refused as dated in its future, kept and retried.
    pub batches_held_future: AtomicU64,
    /// Agent clock minus coordinator clock, from the last Welcome on.
    clock_skew_ms: AtomicI64,
    clock_skew_known: AtomicBool,
}

impl Health {
    /// Copies the collector's failure counts (called by the sampler after each tick; no
    /// allocation).
    pub fn set_collector_errors(&self, failures: &[(&'static str, u64)]) {
        for (slot, (_, n)) in self.collector_errors.iter().zip(failures) {
            slot.store(*n, Ordering::Relaxed);
        }
    }

    /// Records the clock skew, agent minus coordinator (positive: the agent is ahead).
    pub fn set_clock_skew_ms(&self, skew_ms: i64) {
        self.clock_skew_ms.store(skew_ms, Ordering::Relaxed);
        self.clock_skew_known.store(true, Ordering::Relaxed);
    }

    /// The clock skew last measured, None before the first Welcome.
    pub fn clock_skew_ms(&self) -> Option<i64> {
        self.clock_skew_known
            .load(Ordering::Relaxed)
            .then(|| self.clock_skew_ms.load(Ordering::Relaxed))
    }

    /// Renders the Prometheus text exposition (format 0.0.4).
    pub fn render(&self, outbox: Option<&Mutex<Outbox>>) -> String {
        let mut out = String::with_capacity(4096);
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        metric(
            &mut out,
            "persona_agent_build_info",
            "gauge",
            "Always 1; the agent version is in the label.",
            &[(
                format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION")),
                1.0,
            )],
        );
        counter(
            &mut out,
            "persona_agent_samples_total",
            "Samples taken and stored in the open batch.",
            r(&self.samples),
        );
        counter(
            &mut out,
            "persona_agent_skipped_ticks_total",
            "Ticks skipped because sampling fell behind.",
            r(&self.skipped_ticks),
        );
        counter(
            &mut out,
            "persona_agent_batches_sealed_total",
            "Batches sealed into the outbox.",
            r(&self.batches_sealed),
        );
        counter(
            &mut out,
            "persona_agent_outbox_write_errors_total",
            "Failed outbox writes (for example a full disk); sampling goes on.",
            r(&self.outbox_write_errors),
        );
        let per_collector: Vec<(String, f64)> = COLLECTORS
            .iter()
            .zip(&self.collector_errors)
            .map(|(name, n)| (format!("{{collector=\"{name}\"}}"), r(n) as f64))
            .collect();
        metric(
            &mut out,
            "persona_agent_collector_errors_total",
            "counter",
            "Ticks on which a collector failed (its values are NaN for that tick).",
            &per_collector,
        );
        gauge(
            &mut out,
            "persona_agent_link_connected",
            "1 while a QUIC connection to the coordinator is established.",
            f64::from(u8::from(self.link_connected.load(Ordering::Relaxed))),
        );
        counter(
            &mut out,
            "persona_agent_link_reconnects_total",
            "Connection attempts after the first.",
            r(&self.link_reconnects),
        );
        counter(
            &mut out,
            "persona_agent_batches_sent_total",
            "Batches written to the coordinator (resends included).",
            r(&self.batches_sent),
        );
        counter(
            &mut out,
            "persona_agent_batches_acked_total",
            "Batches the coordinator acknowledged.",
            r(&self.batches_acked),
        );
        counter(
            &mut out,
            "persona_agent_batches_rejected_total",
            "Batches the coordinator refused for good (dropped).",
            r(&self.batches_rejected),
        );
        gauge(
            &mut out,
            "persona_agent_batches_held_future",
            "Batches the coordinator refused as dated in its future (this VM's clock is ahead), kept and offered again.",
            r(&self.batches_held_future) as f64,
        );
        if let Some(skew) = self.clock_skew_ms() {
            gauge(
                &mut out,
                "persona_agent_clock_skew_seconds",
                "This VM's clock minus the coordinator's, measured at Welcome and followed since (positive: ahead).",
                skew as f64 / 1000.0,
            );
        }
        if let Some(ob) = outbox
            && let Ok(s) = crate::outbox::lock(ob).stats()
        {
            gauge(
                &mut out,
                "persona_agent_outbox_pending_batches",
                "Sealed batches waiting for an acknowledgement.",
                s.pending_batches as f64,
            );
            gauge(
                &mut out,
                "persona_agent_outbox_bytes",
                "Bytes stored in the outbox, the open batch included.",
                s.stored_bytes as f64,
            );
            counter(
                &mut out,
                "persona_agent_outbox_dropped_batches_total",
                "Batches dropped unsent because the outbox was full.",
                s.dropped_batches,
            );
        }
        if let Some((cpu_s, rss)) = self_usage() {
            metric(
                &mut out,
                "process_cpu_seconds_total",
                "counter",
                "User and system CPU time of the agent process.",
                &[(String::new(), cpu_s)],
            );
            gauge(
                &mut out,
                "process_resident_memory_bytes",
                "Resident memory of the agent process.",
                rss as f64,
            );
        }
        out
    }
}

/// CPU seconds and resident bytes of this process, from /proc/self.
fn self_usage() -> Option<(f64, u64)> {
    let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
    let ticks = procfs::ticks_per_second() as f64;
    let cpu = (stat.utime + stat.stime) as f64 / ticks.max(1.0);
    Some((cpu, stat.rss.saturating_mul(procfs::page_size())))
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, series: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in series {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    metric(out, name, "counter", help, &[(String::new(), v as f64)]);
}

fn gauge(out: &mut String, name: &str, help: &str, v: f64) {
    metric(out, name, "gauge", help, &[(String::new(), v)]);
}

/// Binds the endpoint (so a bad address fails at start-up, not later).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HealthError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HealthError::Bind { addr, source })
}

/// Serves `/metrics` until `shutdown` turns true. One request per connection, each on
/// its own task with a deadline, so a slow client holds nothing up.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    outbox: Arc<Mutex<Outbox>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!("metrics accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() {
                    return;
                }
                continue;
            }
        };
        let (health, outbox) = (health.clone(), outbox.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &health, &outbox)).await;
        });
    }
}

async fn answer(
    mut stream: tokio::net::TcpStream,
    health: &Health,
    outbox: &Mutex<Outbox>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    // Read until the end of the request head; the body (there is none for GET) is ignored.
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if buf.len() > MAX_REQUEST {
            return respond(&mut stream, "431 Request Header Fields Too Large", "").await;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => {
            let body = health.render(Some(outbox));
            respond(&mut stream, "200 OK", &body).await
        }
        ("GET", _) => respond(&mut stream, "404 Not Found", "only /metrics is served\n").await,
        _ => respond(&mut stream, "405 Method Not Allowed", "").await,
    }
}

async fn respond(
    stream: &mut tokio::net::TcpStream,
    status: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_help_and_type() {
        let h = Health::default();
        h.samples.store(7, Ordering::Relaxed);
        h.set_collector_errors(&[("cpu", 0), ("load", 2)]);
        let text = h.render(None);
        assert!(text.contains("persona_agent_samples_total 7\n"), "{text}");
        assert!(text.contains("persona_agent_collector_errors_total{collector=\"load\"} 2\n"));
        assert!(text.contains("# TYPE persona_agent_link_connected gauge\n"));
        assert!(text.contains("process_resident_memory_bytes "));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or("");
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} has no TYPE"
            );
        }
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("o.db"), 1 << 20).unwrap();
        let outbox = Arc::new(Mutex::new(outbox));
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(serve(listener, Arc::new(Health::default()), outbox, rx));
        let get = |req: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.0 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("persona_agent_outbox_pending_batches 0\n"),
            "{ok}"
        );
        assert!(
            get("GET / HTTP/1.0\r\n\r\n")
                .await
                .starts_with("HTTP/1.0 404")
        );
        assert!(
            get("POST /metrics HTTP/1.0\r\n\r\n")
                .await
                .starts_with("HTTP/1.0 405")
        );
        tx.send(true).unwrap();
        task.await.unwrap();
    }
}
