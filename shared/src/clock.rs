//! Wall-clock time as the protocol counts it: milliseconds since the Unix epoch. One
//! function, so the agent, the coordinator and the CLI agree on what "now" is (a clock
//! before 1970 reads as 0 rather than panicking).

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
