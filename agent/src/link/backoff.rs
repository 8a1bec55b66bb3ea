//! The reconnect delay: capped exponential backoff with full jitter, seeded per process,
//! so a fleet of agents does not reconnect in step to a coordinator that restarted.
//! What this is not: deciding when to reconnect (the session does).

use std::time::Duration;

/// Capped exponential backoff with full jitter: the n-th delay is uniform in
/// `[0, min(cap, base * 2^n)]`.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// 500 ms doubling up to 30 s, as the protocol spec asks.
    pub fn standard() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(30))
    }

    pub fn new(base: Duration, cap: Duration) -> Self {
        // Seeded from the OS so that agents started together do not retry together.
        let mut seed = [0u8; 8];
        let rng = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .map(|()| u64::from_le_bytes(seed))
            .unwrap_or_else(|_| {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                t.as_nanos() as u64 ^ u64::from(std::process::id())
            });
        Self {
            base,
            cap,
            attempt: 0,
            rng: rng | 1,
        }
    }

    /// The ceiling of the next delay (before jitter).
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next delay; each call doubles the ceiling up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64: plenty for jitter, which only needs to be spread, not secret.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let ms = ceiling.as_millis() as u64;
        Duration::from_millis(if ms == 0 { 0 } else { self.rng % (ms + 1) })
    }

    /// Back to the base after a healthy connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Straight to the cap (the coordinator refused us; retrying fast cannot help).
    pub fn exhaust(&mut self) {
        self.attempt = 32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_within_bounds_and_grows_to_the_cap() {
        let mut b = Backoff::standard();
        let mut max_seen = Duration::ZERO;
        for n in 0..40u32 {
            let ceiling =
                Duration::from_millis(500).saturating_mul(1u32.checked_shl(n).unwrap_or(u32::MAX));
            let ceiling = ceiling.min(Duration::from_secs(30));
            assert_eq!(b.ceiling(), ceiling, "attempt {n}");
            let d = b.next_delay();
            assert!(d <= ceiling, "attempt {n}: {d:?} > {ceiling:?}");
            max_seen = max_seen.max(d);
        }
        assert_eq!(b.ceiling(), Duration::from_secs(30));
        assert!(
            max_seen > Duration::from_secs(5),
            "jitter should reach well into the range: {max_seen:?}"
        );
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(500));
        assert!(b.next_delay() <= Duration::from_millis(500));
        b.exhaust();
        assert_eq!(b.ceiling(), Duration::from_secs(30));
    }

    #[test]
    fn jitter_is_spread() {
        let mut b = Backoff::new(Duration::from_secs(30), Duration::from_secs(30));
        let delays: Vec<_> = (0..200).map(|_| b.next_delay().as_millis()).collect();
        let low = delays.iter().filter(|&&d| d < 15_000).count();
        assert!((50..150).contains(&low), "{low} of 200 below the middle");
        // Two agents started together do not draw the same delays.
        let mut other = Backoff::new(Duration::from_secs(30), Duration::from_secs(30));
        let theirs: Vec<_> = (0..200).map(|_| other.next_delay().as_millis()).collect();
        assert_ne!(delays, theirs);
    }
}
