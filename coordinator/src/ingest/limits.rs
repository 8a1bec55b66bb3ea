//! What the QUIC side lets any one peer hold: token buckets (new connections per source
//! address, batch bytes per agent) and the memory budgets of frames still arriving (one
//! for the whole server, one per connection). A frame's bytes are reserved from both
//! budgets when its header arrives, before its body is allocated, and returned when the
//! frame is complete or abandoned; a peer that stalls mid-frame therefore holds at most
//! its connection's budget, for at most the frame timeout.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Token buckets by key: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug)]
pub struct Buckets<K> {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: Eq + Hash> Buckets<K> {
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `cost` tokens from `key`'s bucket; false (and nothing taken) when it has
    /// fewer.
    pub fn take(&self, key: K, cost: f64) -> bool {
        self.with_tokens(key, |tokens| {
            if *tokens >= cost {
                *tokens -= cost;
                true
            } else {
                false
            }
        })
    }

    /// Whether `key`'s bucket holds `cost` tokens now, taking none: the question asked of
    /// a source address that is only a claim (see `ingest::run`).
    pub fn has(&self, key: K, cost: f64) -> bool {
        self.with_tokens(key, |tokens| *tokens >= cost)
    }

    fn with_tokens(&self, key: K, f: impl FnOnce(&mut f64) -> bool) -> bool {
        let Ok(mut m) = self.buckets.lock() else {
            return false;
        };
        let now = Instant::now();
        // Forget idle keys so a scan of many addresses cannot grow the map forever.
        if m.len() > 100_000 {
            m.retain(|_, (_, t)| now.duration_since(*t) < Duration::from_secs(60));
        }
        let (tokens, at) = m.entry(key).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        f(tokens)
    }
}

/// Budgets are counted in KiB so a permit count fits the semaphore's range.
const UNIT: usize = 1024;

fn units(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX)
}

/// A byte budget shared by the frames that are still arriving.
#[derive(Debug, Clone)]
pub struct FrameBudget {
    sem: Arc<Semaphore>,
}

/// Bytes reserved for one frame; returned on drop.
#[derive(Debug)]
pub struct Reservation {
    _permits: Vec<OwnedSemaphorePermit>,
}

impl FrameBudget {
    pub fn new(bytes: usize) -> Self {
        Self {
            sem: Arc::new(Semaphore::new(units(bytes) as usize)),
        }
    }

    /// Reserves `len` bytes from every budget in `budgets` at once, or none (a frame
    /// that does not fit now is refused, not queued: waiting would let stalled frames
    /// hold up good ones).
    pub fn reserve(budgets: &[&FrameBudget], len: usize) -> Option<Reservation> {
        let n = units(len);
        let mut permits = Vec::with_capacity(budgets.len());
        for b in budgets {
            permits.push(b.sem.clone().try_acquire_many_owned(n).ok()?);
        }
        Some(Reservation { _permits: permits })
    }

    /// Bytes not reserved now (for metrics and tests).
    pub fn available_bytes(&self) -> usize {
        self.sem.available_permits() * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asking_whether_a_bucket_has_tokens_takes_none() {
        // A slow refill, so nothing comes back while the test runs.
        let b = Buckets::new(0.001, 2.0);
        for _ in 0..10 {
            assert!(b.has("a", 1.0), "asking spends nothing");
        }
        assert!(b.take("a", 1.0));
        assert!(b.take("a", 1.0));
        assert!(!b.has("a", 1.0), "spent by take");
        assert!(b.has("b", 2.0), "another key has its own bucket");
    }

    #[test]
    fn a_bucket_refuses_past_its_burst_and_refills() {
        let b = Buckets::new(1000.0, 2.0);
        assert!(b.take("a", 1.0));
        assert!(b.take("a", 1.0));
        assert!(!b.take("a", 1.0), "burst of 2 spent");
        assert!(b.take("b", 2.0), "another key has its own bucket");
        std::thread::sleep(Duration::from_millis(5));
        assert!(b.take("a", 1.0), "refilled at 1000/s");
    }

    #[test]
    fn reservations_come_from_every_budget_and_go_back_on_drop() {
        let server = FrameBudget::new(64 * 1024);
        let conn = FrameBudget::new(16 * 1024);
        let r = FrameBudget::reserve(&[&server, &conn], 10 * 1024).expect("fits");
        assert_eq!(conn.available_bytes(), 6 * 1024);
        assert_eq!(server.available_bytes(), 54 * 1024);
        assert!(
            FrameBudget::reserve(&[&server, &conn], 10 * 1024).is_none(),
            "the connection's budget is spent"
        );
        assert_eq!(server.available_bytes(), 54 * 1024, "all or nothing");
        drop(r);
        assert_eq!(conn.available_bytes(), 16 * 1024);
        assert_eq!(server.available_bytes(), 64 * 1024);
    }
}
