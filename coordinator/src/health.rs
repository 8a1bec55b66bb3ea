//! The coordinator's systemd watchdog: pings `WATCHDOG=1` at half of `WatchdogSec` only
//! while the daemon really works, so systemd restarts a wedged coordinator.
//!
//! "Works" means three checks pass at each ping: the QUIC accept loop has turned since
//! the previous check (its heartbeat counter moved), the group-commit writer thread is
//! alive, and the HTTP API answers a request on its own listener (a status line within
//! a few seconds; the request is refused for lack of a token, which is fine: answering
//! is what is checked). A failed check skips the ping and is logged; systemd acts when
//! `WatchdogSec` passes without one. Without a watchdog (not under systemd, or no
//! `WatchdogSec`) the task returns at once.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use persona_shared::systemd;

use crate::ingest::{HEARTBEAT_EVERY, Ingest};

const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a health check failed.
#[derive(Debug, thiserror::Error)]
pub enum Unhealthy {
    #[error("the QUIC accept loop has not turned since the last check")]
    AcceptLoopStuck,
    #[error("the ingest writer thread has stopped")]
    WriterGone,
    #[error("the HTTP API on {addr} did not answer: {why}")]
    Api { addr: SocketAddr, why: String },
}

/// Where to reach our own API: an unspecified bind address is reached on loopback.
fn probe_addr(http: SocketAddr) -> SocketAddr {
    match http.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), http.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), http.port())
        }
        _ => http,
    }
}

/// One HTTP request to the API; any status line counts as an answer.
pub async fn probe_api(http: SocketAddr) -> Result<(), Unhealthy> {
    let addr = probe_addr(http);
    let fail = |why: String| Unhealthy::Api { addr, why };
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| fail(e.to_string()))?;
        s.write_all(b"GET /v1/health HTTP/1.0\r\nHost: persona\r\n\r\n")
            .await
            .map_err(|e| fail(e.to_string()))?;
        let mut head = [0u8; 5];
        s.read_exact(&mut head)
            .await
            .map_err(|e| fail(e.to_string()))?;
        if &head == b"HTTP/" {
            Ok(())
        } else {
            Err(fail("not an HTTP answer".into()))
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, attempt)
        .await
        .map_err(|_| fail(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())))?
}

/// Runs the checks every half watchdog interval until shutdown.
pub async fn watchdog(ingest: Arc<Ingest>, http: SocketAddr, mut shutdown: watch::Receiver<bool>) {
    let Some(interval) = systemd::watchdog_interval() else {
        return;
    };
    // The heartbeat moves every HEARTBEAT_EVERY; checking more often than that would see
    // a healthy loop as stuck.
    let every = (interval / 2).max(HEARTBEAT_EVERY * 2);
    tracing::info!(
        every_ms = every.as_millis() as u64,
        "systemd watchdog enabled"
    );
    let mut last_beat = ingest
        .app
        .stats
        .accept_loop_heartbeat_ms
        .load(Ordering::Relaxed);
    systemd::notify_or_log("WATCHDOG=1");
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        let beat = ingest
            .app
            .stats
            .accept_loop_heartbeat_ms
            .load(Ordering::Relaxed);
        let result = if beat == last_beat {
            Err(Unhealthy::AcceptLoopStuck)
        } else if !ingest.writer_alive() {
            Err(Unhealthy::WriterGone)
        } else {
            probe_api(http).await
        };
        last_beat = beat;
        match result {
            Ok(()) => systemd::notify_or_log("WATCHDOG=1"),
            Err(e) => tracing::error!("health check failed, not pinging the watchdog: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_are_probed_on_loopback() {
        let a: SocketAddr = "0.0.0.0:7444".parse().unwrap();
        assert_eq!(probe_addr(a), "127.0.0.1:7444".parse().unwrap());
        let b: SocketAddr = "[::]:7444".parse().unwrap();
        assert_eq!(probe_addr(b), "[::1]:7444".parse().unwrap());
        let c: SocketAddr = "10.1.2.3:7444".parse().unwrap();
        assert_eq!(probe_addr(c), c);
    }

    #[tokio::test]
    async fn a_dead_api_is_unhealthy() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        assert!(matches!(probe_api(addr).await, Err(Unhealthy::Api { .. })));
    }
}
