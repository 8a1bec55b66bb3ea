//! The sampling settings (sample interval, batch interval) that can change while the
//! daemon runs: their valid ranges, and the rule for adopting the values a coordinator
//! sends in Welcome. The config file, a Welcome and a `config` command all pass through
//! these ranges, so no source can set what another would refuse. What this is not: the
//! config file (`config`) or how the new values reach the sampling thread (`daemon`).

/// Valid range of the sampling interval, in milliseconds.
pub const SAMPLE_INTERVAL_RANGE_MS: std::ops::RangeInclusive<u64> = 100..=60_000;
/// Valid range of the batch interval, in seconds.
pub const BATCH_INTERVAL_RANGE_S: std::ops::RangeInclusive<u64> = 1..=600;
/// Most samples one batch may hold (bounds the frame size and the coordinator's work).
pub const MAX_POINTS_PER_BATCH: u64 = 3_600;

/// Sampling settings, from the configuration and then from the coordinator's Welcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub sample_interval_ms: u64,
    pub batch_interval_s: u64,
}

impl Settings {
    /// Adopts the non-zero values of a Welcome that are in the valid ranges.
    pub fn adopt(&self, sample_interval_ms: u32, batch_interval_s: u32) -> Settings {
        let mut s = *self;
        let ms = u64::from(sample_interval_ms);
        if ms != 0 {
            if SAMPLE_INTERVAL_RANGE_MS.contains(&ms) {
                s.sample_interval_ms = ms;
            } else {
                tracing::warn!(
                    sample_interval_ms = ms,
                    "ignoring the coordinator's out-of-range sample interval"
                );
            }
        }
        let bs = u64::from(batch_interval_s);
        if bs != 0 {
            if BATCH_INTERVAL_RANGE_S.contains(&bs) && bs * 1000 >= s.sample_interval_ms {
                s.batch_interval_s = bs;
            } else {
                tracing::warn!(
                    batch_interval_s = bs,
                    "ignoring the coordinator's out-of-range batch interval"
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn welcome_settings_are_checked() {
        let s = Settings {
            sample_interval_ms: 1000,
            batch_interval_s: 10,
        };
        assert_eq!(s.adopt(0, 0), s);
        assert_eq!(
            s.adopt(500, 5),
            Settings {
                sample_interval_ms: 500,
                batch_interval_s: 5
            }
        );
        assert_eq!(s.adopt(5, 100_000), s);
        assert_eq!(
            s.adopt(2000, 1),
            Settings {
                sample_interval_ms: 2000,
                batch_interval_s: 10
            }
        );
    }
}
