//! Wall-clock time as the protocol counts it: milliseconds since the Unix epoch. One
//! function, so the agent, the coordinator and the CLI agree on what "now" is (a clock
//! before 1970 reads as 0 rather than panicking), and one small trait, [`WallClock`], for
//! the code whose behaviour depends on the wall clock (the agent's sampler and link), so
//! a test can run it with a clock that is off without touching the system clock.

use std::fmt::Debug;
use std::sync::atomic::{AtomicI64, Ordering};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A source of wall-clock time (milliseconds since the Unix epoch).
pub trait WallClock: Debug + Send + Sync {
    fn now_ms(&self) -> i64;
}

/// The system clock, [`now_ms`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_ms(&self) -> i64 {
        now_ms()
    }
}

/// The system clock plus an offset that can be changed at any time: a machine whose
/// clock is ahead (positive offset) or behind, and an NTP step that fixes it.
#[derive(Debug, Default)]
pub struct OffsetClock {
    offset_ms: AtomicI64,
}

impl OffsetClock {
    pub fn new(offset_ms: i64) -> Self {
        Self {
            offset_ms: AtomicI64::new(offset_ms),
        }
    }

    pub fn set_offset_ms(&self, offset_ms: i64) {
        self.offset_ms.store(offset_ms, Ordering::Relaxed);
    }
}

impl WallClock for OffsetClock {
    fn now_ms(&self) -> i64 {
        now_ms().saturating_add(self.offset_ms.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_clock_follows_the_system_clock_with_its_offset() {
        let c = OffsetClock::new(600_000);
        let d = c.now_ms() - now_ms();
        assert!((599_000..=600_000).contains(&d), "{d}");
        c.set_offset_ms(0);
        assert!((c.now_ms() - SystemClock.now_ms()).abs() < 1000);
    }
}
