//! Logging, clocks, metrics and the current request's trace.

use crate::backend::host_call;
#[cfg(target_arch = "wasm32")]
use crate::bindings::{types, wit_host};

/// Log severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Very detailed.
    Trace,
    /// Debugging.
    Debug,
    /// Normal operation.
    Info,
    /// Something unusual.
    Warn,
    /// Something failed.
    Error,
}

#[cfg(target_arch = "wasm32")]
fn wit_level(level: Level) -> types::Level {
    match level {
        Level::Trace => types::Level::Trace,
        Level::Debug => types::Level::Debug,
        Level::Info => types::Level::Info,
        Level::Warn => types::Level::Warn,
        Level::Error => types::Level::Error,
    }
}

/// Writes a line to the gateway's log, tagged with the plugin's name.
pub fn log(level: Level, message: &str) {
    host_call!(wit => wit_host::log(wit_level(level), message), test |h| => h.log(level, message))
}

/// Wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    host_call!(wit => wit_host::now_ms(), test |h| => h.now_ms())
}

/// A monotonic clock in nanoseconds.
pub fn monotonic_ns() -> u64 {
    host_call!(wit => wit_host::monotonic_ns(), test |h| => h.monotonic_ns())
}

/// Adds to a counter (`sluice_plugin_counter_total{plugin, name}`).
pub fn counter_add(name: &str, delta: u64) {
    host_call!(wit => wit_host::counter_add(name, delta), test |h| => h.counter_add(name, delta))
}

/// Records a value in a histogram (`sluice_plugin_histogram{plugin, name}`).
pub fn histogram_record(name: &str, value: f64) {
    host_call!(wit => wit_host::histogram_record(name, value), test |h| => h.histogram_record(name, value))
}

/// Sets an attribute on the current request's span.
pub fn span_set_attribute(key: &str, value: &str) {
    host_call!(wit => wit_host::span_set_attribute(key, value), test |h| => h.span_set_attribute(key, value))
}

/// Adds an event to the current request's span.
pub fn span_add_event(name: &str, attributes: &[(&str, &str)]) {
    host_call!(
        wit => {
            let attributes: Vec<(String, String)> =
                attributes.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            wit_host::span_add_event(name, &attributes)
        },
        test |h| => h.span_add_event(name, attributes)
    )
}

/// The trace a request continues, as read from its caller's headers. Ids are lower-case hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    /// 32 hex digits, not all zero.
    pub trace_id: String,
    /// 16 hex digits, not all zero: the caller's span.
    pub span_id: String,
    /// The caller's sampling decision, if it made one.
    pub sampled: Option<bool>,
    /// W3C `tracestate`, passed on unchanged (empty if none).
    pub trace_state: String,
}

/// Names the current request's server span (by default `METHOD route`).
pub fn span_set_name(name: &str) {
    host_call!(wit => wit_host::span_set_name(name), test |h| => h.span_name = Some(name.to_owned()))
}

/// Makes the request's trace continue the caller's. Fails on malformed or all-zero ids.
pub fn trace_continue(parent: &TraceParent) -> Result<(), crate::Error> {
    host_call!(
        wit => {
            let parent = wit_host::TraceParent {
                trace_id: parent.trace_id.clone(),
                span_id: parent.span_id.clone(),
                sampled: parent.sampled,
                trace_state: parent.trace_state.clone(),
            };
            wit_host::trace_continue(&parent).map_err(crate::Error::from)
        },
        test |h| => h.trace_continue(parent).map_err(crate::Error::from)
    )
}

/// Decides whether the request's trace is exported; the last call wins (call it again from
/// `on_response`, e.g. to keep the trace of a failed request).
pub fn trace_set_sampled(sampled: bool) {
    host_call!(wit => wit_host::trace_set_sampled(sampled), test |h| => h.trace_sampled = Some(sampled))
}

/// The request's trace id, or `None` when the gateway exports no traces.
pub fn trace_id() -> Option<String> {
    host_call!(wit => wit_host::trace_id(), test |h| => h.trace_id())
}

/// Whether the gateway exports traces (its `[telemetry]` is set). It does not change while
/// the gateway runs, so [`Plugin::init`](crate::Plugin::init) may ask it and
/// [`Plugin::hooks`](crate::Plugin::hooks) leave out hooks that would only feed traces.
/// Needs a gateway with `host.exports-traces` (see docs/plugins.md).
pub fn exports_traces() -> bool {
    host_call!(wit => wit_host::exports_traces(), test |h| => h.exports_traces)
}
