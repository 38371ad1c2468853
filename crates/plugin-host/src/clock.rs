//! The clocks: wall time for timestamps (Unix ms/ns) and one monotonic clock for deadlines
//! and windows. A leaf module: the plugin runtime (host calls, quarantine, shared-state
//! expiry) and the gateway (proxy, registry, balancer, hystrix, cluster) read the same
//! monotonic origin, so values plugins store in shared state compare with the gateway's.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Nanoseconds since the Unix epoch.
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Nanoseconds on a monotonic clock (since the first call in this process).
pub fn monotonic_ns() -> u64 {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}
