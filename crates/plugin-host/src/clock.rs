//! The clocks: wall time for timestamps (Unix ms/ns) and one monotonic clock for deadlines
//! and windows. A leaf module: the plugin runtime (host calls, quarantine, shared-state
//! expiry) and the gateway (proxy, registry, balancer, hystrix, cluster) read the same
//! monotonic origin, so values plugins store in shared state compare with the gateway's.
//!
//! [`Clock`] is the runtime's view of these clocks: what plugins read (`now-ms`,
//! `monotonic-ns`), their quarantine, shared-state expiry and the breaker's windows as the
//! gateway reads them (`hystrix.rs`, through [`crate::state::SharedState::clock`]). With the
//! `test-clock` feature, which only the gateway's tests enable (a dev-dependency feature:
//! `cargo build` never turns it on, so a release binary has no way to move time), a test can
//! [`Clock::advance`] one runtime's clock instead of waiting on wall time; other gateways in
//! the same test process keep theirs. Without the feature `Clock` is empty and reads the
//! process clocks.

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

/// One plugin runtime's clock: the process clocks, plus (feature `test-clock`, tests only) an
/// offset a test moves forward. Clones share the offset.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    #[cfg(feature = "test-clock")]
    offset_ns: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Clock {
    /// [`monotonic_ns`] on this clock.
    pub fn monotonic_ns(&self) -> u64 {
        monotonic_ns() + self.offset_ns()
    }

    /// [`unix_ms`] on this clock.
    pub fn unix_ms(&self) -> u64 {
        unix_ms() + self.offset_ns() / 1_000_000
    }

    #[cfg(feature = "test-clock")]
    fn offset_ns(&self) -> u64 {
        self.offset_ns.load(std::sync::atomic::Ordering::Relaxed)
    }

    #[cfg(not(feature = "test-clock"))]
    fn offset_ns(&self) -> u64 {
        0
    }

    /// Moves this clock (and every clone of it) forward by `by`, as if that much time had
    /// passed: for tests of windows and periods (the breaker's sleep window, quarantine),
    /// which then need not wait. Only with the `test-clock` feature; nothing in the gateway
    /// calls it.
    #[cfg(feature = "test-clock")]
    pub fn advance(&self, by: std::time::Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.offset_ns
            .fetch_add(by, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(all(test, feature = "test-clock"))]
mod tests {
    use super::*;

    #[test]
    fn advancing_moves_every_clone_and_no_other_clock() {
        let clock = Clock::default();
        let clone = clock.clone();
        let other = Clock::default();
        let hour = std::time::Duration::from_secs(3600);
        clock.advance(hour);
        assert!(clone.monotonic_ns() >= monotonic_ns() + 3_599_000_000_000);
        assert!(clone.unix_ms() >= unix_ms() + 3_599_000);
        assert!(other.monotonic_ns() < monotonic_ns() + 1_000_000_000);
    }
}
