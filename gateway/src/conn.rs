//! What the server knows of one client connection, kept apart from the accept loops in
//! server.rs so that the modules reading it do not depend on the server: the proxy reads the
//! request extensions ([`TlsInfo`], [`AmbiguousFraming`]) and the response body carries the
//! in-flight marker ([`ActiveRequest`]). The watchdog and the read scanner that drive
//! [`ConnState`] stay in server.rs (`impl ConnState` there).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use tokio::time::Instant;

/// How a client connection arrived, for the access log and metrics: set on requests that
/// came over TLS only (the plain path adds nothing per request).
#[derive(Debug, Clone, Copy)]
pub struct TlsInfo {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: &'static str,
}

/// Request extension: the head carried both `Content-Length` and `Transfer-Encoding`.
#[derive(Debug, Clone, Copy)]
pub struct AmbiguousFraming;

/// What a connection is doing, for the header-read and idle timeouts. Times are nanoseconds
/// since the connection opened.
#[derive(Debug)]
pub(crate) struct ConnState {
    pub(crate) opened: Instant,
    pub(crate) in_flight: AtomicU32,
    /// Requests completed; tells the head scanner a new request head may start.
    pub(crate) completed: AtomicU64,
    /// The head scanner saw both Content-Length and Transfer-Encoding in the current head.
    pub(crate) ambiguous_framing: AtomicBool,
    /// When the first byte of the current request head arrived; 0 = none pending.
    pub(crate) head_started: AtomicU64,
    pub(crate) last_activity: AtomicU64,
    /// When a write to the client last found its socket full; 0 = writes are flowing.
    pub(crate) write_blocked: AtomicU64,
}

impl ConnState {
    pub(crate) fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicU32::new(0),
            completed: AtomicU64::new(0),
            ambiguous_framing: AtomicBool::new(false),
            head_started: AtomicU64::new(0),
            last_activity: AtomicU64::new(0),
            write_blocked: AtomicU64::new(0),
        }
    }

    pub(crate) fn now(&self) -> u64 {
        // Never 0, so 0 can mean "not set".
        (self.opened.elapsed().as_nanos() as u64).max(1)
    }
}

/// Marks a request in flight on its connection from the moment hyper hands it to us until its
/// response body has been written (the marker lives in the response body).
#[derive(Debug)]
pub struct ActiveRequest(Arc<ConnState>);

impl ActiveRequest {
    pub(crate) fn begin(state: &Arc<ConnState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        state.head_started.store(0, Ordering::Relaxed);
        Self(state.clone())
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        let now = self.0.now();
        self.0.last_activity.store(now, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.completed.fetch_add(1, Ordering::Relaxed);
    }
}
