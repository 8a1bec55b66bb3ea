//! The coordinator's clock as the link sees it, and the batches it refused for being
//! dated in its future.
//!
//! Welcome carries the coordinator's time; the link turns it into an estimate of the
//! coordinator's clock (half the path's round trip added) that then runs on the local
//! monotonic clock, so the skew (agent minus coordinator) stays right when the agent's
//! wall clock is stepped, by NTP or by hand, without a new Welcome. A coordinator refuses
//! a batch dated more than its limit ahead of its own clock (`max_future_ms`, 10 minutes
//! by default) as `BadTimestamps`; such a batch is not bad, only early. It is kept in the
//! outbox and held here, and the oldest held batch is offered again on a backoff (1 s,
//! doubling to a minute, and at once when the agent's clock steps): when the coordinator
//! takes it, every held batch goes out again. A batch is therefore delivered as soon as
//! the coordinator's window admits it (once the clock is fixed, or once the coordinator's
//! clock has caught up with the batch's timestamps), and never deleted for this.
//!
//! Held batches are not rebased to the coordinator's clock: their timestamps are the
//! agent's tick grid, and shifting them by an estimate (a round trip of uncertainty)
//! would put samples off the grid and next to samples of the same instant taken after
//! the clock was fixed. What this is not: the session loop (`session`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// A skew larger than this (either way) is logged as a warning.
pub const SKEW_WARN_MS: i64 = 2_000;
/// A change of the skew by more than this during a connection is a clock step.
const STEP_MS: i64 = 1_000;
const PROBE_FIRST: Duration = Duration::from_secs(1);
const PROBE_MAX: Duration = Duration::from_secs(60);

/// The coordinator's clock: `server_ms` at the local instant `at`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServerClock {
    server_ms: i64,
    at: Instant,
}

impl ServerClock {
    /// From Welcome's `server_time_ms`, received now over a path with round trip `rtt`.
    /// None when the coordinator sent no time (0).
    pub(crate) fn from_welcome(server_time_ms: i64, rtt: Duration) -> Option<ServerClock> {
        (server_time_ms > 0).then(|| ServerClock {
            server_ms: server_time_ms
                .saturating_add(i64::try_from(rtt.as_millis() / 2).unwrap_or(0)),
            at: Instant::now(),
        })
    }

    /// The coordinator's time now, by this estimate.
    pub(crate) fn now_ms(&self) -> i64 {
        self.server_ms
            .saturating_add(i64::try_from(self.at.elapsed().as_millis()).unwrap_or(i64::MAX))
    }

    /// Agent minus coordinator, for the agent's wall-clock reading `local_ms`; positive
    /// when the agent's clock is ahead.
    pub(crate) fn skew_ms(&self, local_ms: i64) -> i64 {
        local_ms.saturating_sub(self.now_ms())
    }
}

/// Whether a step from the skew `before` to `now` is a clock step worth acting on.
pub(crate) fn stepped(before: i64, now: i64) -> bool {
    (now - before).abs() > STEP_MS
}

/// Batches the coordinator refused as future-dated, and when to offer one again.
#[derive(Debug)]
pub(crate) struct Held {
    seqs: BTreeSet<u64>,
    /// The held batch on its way as a probe.
    probing: Option<u64>,
    probe_at: Option<tokio::time::Instant>,
    delay: Duration,
}

impl Default for Held {
    fn default() -> Self {
        Self {
            seqs: BTreeSet::new(),
            probing: None,
            probe_at: None,
            delay: PROBE_FIRST,
        }
    }
}

impl Held {
    pub(crate) fn len(&self) -> usize {
        self.seqs.len() + usize::from(self.probing.is_some())
    }

    /// Batch `seq` was refused as future-dated: hold it.
    pub(crate) fn hold(&mut self, seq: u64, now: tokio::time::Instant) {
        if self.probing == Some(seq) {
            self.probing = None;
            self.delay = (self.delay * 2).min(PROBE_MAX);
        }
        self.seqs.insert(seq);
        if self.probe_at.is_none() && self.probing.is_none() {
            self.probe_at = Some(now + self.delay);
        }
    }

    /// When the next probe is due (None: nothing held, or a probe is on its way).
    pub(crate) fn deadline(&self) -> Option<tokio::time::Instant> {
        self.probe_at
    }

    /// The batch to offer now as a probe, if one is due.
    pub(crate) fn due(&mut self, now: tokio::time::Instant) -> Option<u64> {
        let at = self.probe_at?;
        if at > now {
            return None;
        }
        self.probe_at = None;
        let seq = self.seqs.pop_first()?;
        self.probing = Some(seq);
        Some(seq)
    }

    /// Batch `seq` was acknowledged: if it was the probe, every held batch is released
    /// (returned, oldest first) to be sent again.
    pub(crate) fn acked(&mut self, seq: u64) -> Vec<u64> {
        if self.probing != Some(seq) {
            return Vec::new();
        }
        self.probing = None;
        self.delay = PROBE_FIRST;
        self.probe_at = None;
        std::mem::take(&mut self.seqs).into_iter().collect()
    }

    /// The agent's clock stepped: probe at once, from the first delay.
    pub(crate) fn probe_now(&mut self, now: tokio::time::Instant) {
        self.delay = PROBE_FIRST;
        if !self.seqs.is_empty() && self.probing.is_none() {
            self.probe_at = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_clock_runs_on_and_gives_the_skew() {
        let c = ServerClock::from_welcome(1_000_000, Duration::from_millis(20)).unwrap();
        assert!((c.now_ms() - 1_000_010).abs() < 1000);
        assert!((c.skew_ms(1_600_010) - 600_000).abs() < 1000);
        assert!(ServerClock::from_welcome(0, Duration::ZERO).is_none());
        assert!(stepped(600_000, 0));
        assert!(!stepped(600_000, 600_500));
    }

    #[test]
    fn held_batches_are_probed_oldest_first_with_backoff_and_released_together() {
        let t0 = tokio::time::Instant::now();
        let mut h = Held::default();
        h.hold(5, t0);
        h.hold(3, t0);
        h.hold(7, t0);
        assert_eq!(h.len(), 3);
        assert_eq!(h.due(t0), None, "not yet");
        let t1 = t0 + PROBE_FIRST;
        assert_eq!(h.due(t1), Some(3));
        assert_eq!(h.deadline(), None, "one probe at a time");
        h.hold(3, t1); // refused again: the next probe waits twice as long
        assert_eq!(h.due(t1 + PROBE_FIRST), None);
        assert_eq!(h.due(t1 + 2 * PROBE_FIRST), Some(3));
        assert!(h.acked(4).is_empty(), "not the probe");
        assert_eq!(h.acked(3), vec![5, 7]);
        assert_eq!(h.len(), 0);
        h.hold(9, t1);
        h.probe_now(t1);
        assert_eq!(h.due(t1), Some(9));
    }
}
