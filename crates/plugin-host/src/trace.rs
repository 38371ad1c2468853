//! What plugins record of a request's trace: the `host` span functions' requests
//! ([`PluginTrace`]) and the timing of each plugin call ([`PluginCall`]). The plugin runtime
//! owns these types; telemetry (`telemetry/span.rs`) reads them when the request ends and
//! builds the spans. Nothing here knows OpenTelemetry, so the runtime does not depend on
//! telemetry.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// One plugin call, as the plugin chain records it (in `PluginTrace::calls`).
#[derive(Debug, Clone)]
pub struct PluginCall {
    /// The plugin's name.
    pub plugin: Arc<str>,
    /// `on_request` or `on_response`.
    pub phase: &'static str,
    /// `ok`, `respond`, `error`, `trap`, `timeout`, `quarantined`, `not_loaded`, `skipped`.
    pub outcome: &'static str,
    /// When it started.
    pub start: SystemTime,
    /// How long it took.
    pub duration: Duration,
}

/// A plugin call being timed: `PluginTrace::call_started` gives one when the request is
/// traced, `PluginTrace::call_finished` records it.
#[derive(Debug)]
pub struct CallTimer {
    start: SystemTime,
    started: Instant,
}

impl CallTimer {
    /// Starts timing now.
    pub fn now() -> Self {
        Self {
            start: SystemTime::now(),
            started: Instant::now(),
        }
    }

    /// The call as a record.
    pub fn finish(
        self,
        plugin: &Arc<str>,
        phase: &'static str,
        outcome: &'static str,
    ) -> PluginCall {
        PluginCall {
            plugin: plugin.clone(),
            phase,
            outcome,
            start: self.start,
            duration: self.started.elapsed(),
        }
    }
}

/// The caller's trace a plugin asked the request to continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    /// Trace id.
    pub trace_id: [u8; 16],
    /// The caller's span id.
    pub span_id: [u8; 8],
    /// The caller's sampling decision.
    pub sampled: Option<bool>,
    /// W3C `tracestate`, passed on.
    pub trace_state: String,
}

/// What plugins asked of a request's trace (the `host` span functions). Telemetry reads it
/// when the request ends; without telemetry it is kept and dropped.
#[derive(Debug, Default)]
pub struct PluginTrace {
    /// The request's trace id (hex) once telemetry assigned one; `trace-id` reports it.
    pub trace_id: Option<String>,
    /// `span-set-name`.
    pub name: Option<String>,
    /// `trace-continue`.
    pub parent: Option<TraceParent>,
    /// `trace-set-sampled`, the last call.
    pub sampled: Option<bool>,
    /// `span-set-attribute`.
    pub attributes: Vec<(String, String)>,
    /// `span-add-event`.
    pub events: Vec<SpanEvent>,
    /// The plugin calls made for the request (recorded only when it is traced).
    pub calls: Vec<PluginCall>,
    /// Set once the request phase is over: the upstream (or the client) already has the
    /// trace id, so `trace-continue` can no longer change it.
    pub settled: bool,
}

impl PluginTrace {
    /// Whether the request is traced (telemetry is on); nothing is recorded otherwise.
    pub fn traced(&self) -> bool {
        self.trace_id.is_some()
    }

    /// Starts timing a plugin call, when the request is traced.
    pub fn call_started(&self) -> Option<CallTimer> {
        self.traced().then(CallTimer::now)
    }

    /// Records a plugin call timed with [`Self::call_started`].
    pub fn call_finished(
        &mut self,
        timer: Option<CallTimer>,
        plugin: &Arc<str>,
        phase: &'static str,
        outcome: &'static str,
    ) {
        if let Some(timer) = timer {
            self.calls.push(timer.finish(plugin, phase, outcome));
        }
    }
}

/// An event a plugin added to the request's span.
#[derive(Debug)]
pub struct SpanEvent {
    /// Its name.
    pub name: String,
    /// Its attributes.
    pub attributes: Vec<(String, String)>,
    /// When, in ns since the Unix epoch.
    pub unix_ns: u64,
}
