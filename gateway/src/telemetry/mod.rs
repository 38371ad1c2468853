//! OpenTelemetry trace export (`[telemetry]`).
//!
//! Module map: `config/telemetry.rs` (the `[telemetry]` table, with the other tables), `span` (a request's spans, assembled when
//! it ends), `w3c` (the `traceparent` sent upstream), `exporter` (the bounded queue and the
//! batch task that sends OTLP over HTTP/protobuf or gRPC), and this file: the handle the
//! request path holds, and the metrics.
//!
//! Export never makes a request wait: spans go into a queue bounded by `queue_size`; when it
//! is full (collector slow or down), the request's spans are dropped whole and counted in
//! `sluice_telemetry_spans_dropped_total{reason="queue_full"}`.

pub mod exporter;
pub mod span;
pub mod w3c;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::trace::SpanData;
use tokio::sync::Notify;

pub use self::span::{FinishedRequest, RequestTrace};
pub use crate::config::{TelemetryConfig, TelemetryProtocol as Protocol};
pub use crate::metrics::TelemetryMetrics;

/// The request path's handle on telemetry: makes request traces and queues their spans.
///
/// The queue is a plain locked deque, not a channel: a request appends its spans without
/// waking the export task (a cross-thread wake-up per request measurably cost CPU). The task
/// wakes every `batch_delay`, or when the queue crosses `batch_size` spans.
#[derive(Debug)]
pub struct Telemetry {
    queue: Mutex<VecDeque<SpanData>>,
    /// Spans in the queue, reserved before they are built.
    queued: AtomicUsize,
    queue_size: usize,
    batch_size: usize,
    /// Wakes the export task when a full batch is waiting.
    batch_ready: Notify,
    /// Set when the export task has stopped taking spans.
    closed: AtomicBool,
    metrics: TelemetryMetrics,
    scope: InstrumentationScope,
}

impl Telemetry {
    fn new(queue_size: usize, batch_size: usize, metrics: TelemetryMetrics) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            queued: AtomicUsize::new(0),
            queue_size,
            batch_size,
            batch_ready: Notify::new(),
            closed: AtomicBool::new(false),
            metrics,
            scope: InstrumentationScope::builder("sluice")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        }
    }

    /// A trace for a request that just arrived.
    pub fn begin(self: &Arc<Self>) -> RequestTrace {
        RequestTrace::new(self.clone())
    }

    /// Reserves room for one request's `n` spans in the queue, or counts them as dropped
    /// (a full queue drops a trace whole, before its spans are even built).
    fn reserve(&self, n: usize) -> bool {
        let reserved = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued + n <= self.queue_size).then_some(queued + n)
            });
        if reserved.is_err() || self.closed.load(Ordering::Acquire) {
            if reserved.is_ok() {
                self.queued.fetch_sub(n, Ordering::AcqRel);
            }
            let reason = if reserved.is_err() {
                "queue_full"
            } else {
                "shutdown"
            };
            self.metrics.dropped(reason, n);
            return false;
        }
        self.metrics.queued.inc_by(n as i64);
        true
    }

    /// Queues spans room was reserved for; wakes the export task when a batch is full.
    fn send(&self, spans: Vec<SpanData>) {
        let n = spans.len();
        let len = {
            let mut queue = self.queue.lock().expect("telemetry queue lock");
            queue.extend(spans);
            queue.len()
        };
        if len >= self.batch_size && len - n < self.batch_size {
            self.batch_ready.notify_one();
        }
    }

    /// Takes up to `max` spans off the queue.
    fn take(&self, max: usize) -> Vec<SpanData> {
        let batch: Vec<SpanData> = {
            let mut queue = self.queue.lock().expect("telemetry queue lock");
            let n = queue.len().min(max);
            queue.drain(..n).collect()
        };
        if !batch.is_empty() {
            self.queued.fetch_sub(batch.len(), Ordering::AcqRel);
            self.metrics.queued.dec_by(batch.len() as i64);
        }
        batch
    }
}
