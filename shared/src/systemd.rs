//! The few bits of systemd's service protocol the daemons use: `sd_notify` messages
//! (`READY=1`, `STOPPING=1`, `WATCHDOG=1`, `STATUS=...`) sent as one datagram to
//! `$NOTIFY_SOCKET`, and the watchdog interval from `$WATCHDOG_USEC`.
//!
//! Written by hand rather than with the `sd-notify` crate because that crate (0.5) does
//! not handle an abstract socket (`@name`, which systemd uses in containers and some
//! user managers) and the protocol is one `sendto` of `KEY=VALUE` lines. Outside systemd
//! (no `NOTIFY_SOCKET`) every call does nothing, so the daemons run the same anywhere.
//! This module does not decide *when* a daemon is ready or healthy; the daemons do.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

/// Why a notification could not be sent. Callers log it and go on: a daemon must not
/// stop because its supervisor is unreachable.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET={path:?} is not a usable socket address: {source}")]
    Address { path: String, source: io::Error },
    #[error("cannot send {what:?} to NOTIFY_SOCKET {path:?}: {source}")]
    Send {
        what: String,
        path: String,
        source: io::Error,
    },
}

/// Whether the process was started by systemd with a notify socket.
pub fn under_notify_socket() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

fn socket_addr(path: &str) -> io::Result<SocketAddr> {
    if let Some(name) = path.strip_prefix('@') {
        // Abstract namespace: a leading NUL instead of '@', no file on disk.
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes())
    } else {
        SocketAddr::from_pathname(path)
    }
}

/// Sends `state` (newline-separated `KEY=VALUE` lines) to the service manager.
/// Does nothing when `NOTIFY_SOCKET` is unset.
pub fn notify(state: &str) -> Result<(), NotifyError> {
    let Ok(path) = std::env::var("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let addr = socket_addr(&path).map_err(|source| NotifyError::Address {
        path: path.clone(),
        source,
    })?;
    let send_err = |source| NotifyError::Send {
        what: state.to_owned(),
        path: path.clone(),
        source,
    };
    let sock = UnixDatagram::unbound().map_err(send_err)?;
    sock.send_to_addr(state.as_bytes(), &addr)
        .map_err(send_err)?;
    Ok(())
}

/// [`notify`], logging a failure instead of returning it.
pub fn notify_or_log(state: &str) {
    if let Err(e) = notify(state) {
        tracing::warn!("{e}");
    }
}

/// The watchdog interval systemd expects pings within (`WatchdogSec=`), if enabled for
/// this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    // WATCHDOG_PID, when set, names the process that must ping; a child that inherited
    // the variables must not.
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.trim().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    Some(Duration::from_micros(usec))
}

/// Pings the watchdog at half its interval, from whatever loop proves the daemon is
/// alive: call [`Watchdog::feed`] on every turn of that loop, and sleep at most
/// [`Watchdog::max_sleep`] between turns.
#[derive(Debug)]
pub struct Watchdog {
    every: Option<Duration>,
    last: Option<Instant>,
}

impl Watchdog {
    /// From the environment; inert when the watchdog is off.
    pub fn from_env() -> Self {
        Self::with_interval(watchdog_interval())
    }

    /// With an explicit systemd interval (None = off); pings go out at half of it.
    pub fn with_interval(interval: Option<Duration>) -> Self {
        Self {
            every: interval.map(|d| d / 2),
            last: None,
        }
    }

    /// Whether pings are expected at all.
    pub fn enabled(&self) -> bool {
        self.every.is_some()
    }

    /// How long the loop may sleep before it must feed again (None = no bound).
    pub fn max_sleep(&self) -> Option<Duration> {
        let every = self.every?;
        Some(match self.last {
            Some(t) => every.saturating_sub(t.elapsed()),
            None => Duration::ZERO,
        })
    }

    /// Sends `WATCHDOG=1` if half the interval has passed since the last ping. Returns
    /// whether a ping was due (and attempted).
    pub fn feed(&mut self) -> bool {
        let Some(every) = self.every else {
            return false;
        };
        if self.last.is_some_and(|t| t.elapsed() < every) {
            return false;
        }
        self.last = Some(Instant::now());
        notify_or_log("WATCHDOG=1");
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abstract_and_path_addresses() {
        let a = socket_addr("@persona-test").unwrap();
        use std::os::linux::net::SocketAddrExt;
        assert_eq!(a.as_abstract_name(), Some(&b"persona-test"[..]));
        let p = socket_addr("/run/systemd/notify").unwrap();
        assert_eq!(
            p.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("persona-notify-test-{}", std::process::id());
        use std::os::linux::net::SocketAddrExt;
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let sock = UnixDatagram::unbound().unwrap();
        sock.send_to_addr(b"READY=1", &socket_addr(&format!("@{name}")).unwrap())
            .unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn watchdog_feeds_at_half_the_interval() {
        let mut w = Watchdog::with_interval(Some(Duration::from_secs(20)));
        assert!(w.enabled());
        assert_eq!(w.max_sleep(), Some(Duration::ZERO));
        assert!(w.feed());
        assert!(!w.feed(), "a second feed right away is not due");
        let s = w.max_sleep().unwrap();
        assert!(s <= Duration::from_secs(10) && s > Duration::from_secs(9));
        let mut off = Watchdog::with_interval(None);
        assert!(!off.enabled() && !off.feed() && off.max_sleep().is_none());
    }
}
