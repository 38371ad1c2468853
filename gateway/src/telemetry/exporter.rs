//! The export side: an OTLP span exporter (opentelemetry-otlp, HTTP/protobuf or gRPC) fed
//! by one batch task that reads the bounded queue.
//!
//! The task wakes every `batch_delay`, or as soon as `batch_size` spans are waiting, and
//! exports full batches, then what is left. Each export may take `export_timeout`; while it
//! runs the queue fills, and requests whose spans do not fit have them dropped (counted)
//! instead of waiting. On shutdown the task exports what is queued for at most
//! `shutdown_timeout`, then gives up and counts the rest as dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use std::sync::atomic::Ordering;

use tokio_util::sync::CancellationToken;

use super::{Protocol, Telemetry, TelemetryConfig, TelemetryMetrics};

/// The running export task; [`ExportTask::shutdown`] flushes and stops it.
#[derive(Debug)]
pub struct ExportTask {
    close: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
    shutdown_timeout: Duration,
}

/// Builds the exporter and starts the batch task (on the current Tokio runtime).
pub fn start(
    config: &TelemetryConfig,
    metrics: TelemetryMetrics,
) -> anyhow::Result<(Arc<Telemetry>, ExportTask)> {
    let exporter = build_exporter(config)?;
    let telemetry = Arc::new(Telemetry::new(
        *config.queue_size.get_ref(),
        *config.batch_size.get_ref(),
        metrics,
    ));
    let close = CancellationToken::new();
    let batcher = Batcher {
        exporter,
        telemetry: telemetry.clone(),
        batch_size: *config.batch_size.get_ref(),
        batch_delay: config.batch_delay,
        export_timeout: config.export_timeout,
        shutdown_timeout: config.shutdown_timeout,
    };
    let handle = tokio::spawn(batcher.run(close.clone()));
    tracing::info!(
        endpoint = config.export_url(),
        protocol = ?config.protocol,
        "exporting traces (OTLP)"
    );
    Ok((
        telemetry,
        ExportTask {
            close,
            handle,
            shutdown_timeout: config.shutdown_timeout,
        },
    ))
}

impl ExportTask {
    /// Exports what is queued (for at most `shutdown_timeout`) and stops. Call it after the
    /// data plane stopped, so the last requests' spans are in the queue.
    pub async fn shutdown(self) {
        self.close.cancel();
        let mut handle = self.handle;
        // The task bounds itself; this is the backstop.
        let bound = self.shutdown_timeout + Duration::from_millis(250);
        if tokio::time::timeout(bound, &mut handle).await.is_err() {
            handle.abort();
            tracing::warn!("telemetry: the export task did not stop in time; aborted");
        }
    }
}

fn resource(config: &TelemetryConfig) -> Resource {
    Resource::builder_empty()
        .with_service_name(config.service_name.clone())
        .with_attributes(
            config
                .resource
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .build()
}

fn build_exporter(config: &TelemetryConfig) -> anyhow::Result<opentelemetry_otlp::SpanExporter> {
    let url = config.export_url();
    let headers = config.headers.get_ref();
    let mut exporter = match config.protocol {
        Protocol::Http => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(url.clone())
            .with_timeout(config.export_timeout)
            .with_headers(
                headers
                    .iter()
                    .map(|(k, v)| {
                        // Valid header values are visible ASCII: the text is what was written.
                        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                        (k.as_str().to_owned(), v)
                    })
                    .collect::<HashMap<_, _>>(),
            )
            .build(),
        Protocol::Grpc => {
            let mut map = http::HeaderMap::new();
            for (k, v) in headers.iter() {
                map.insert(k.clone(), v.clone());
            }
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(url.clone())
                .with_timeout(config.export_timeout)
                .with_metadata(
                    opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(map),
                )
                .build()
        }
    }
    .with_context(|| format!("telemetry: cannot set up the OTLP exporter for {url}"))?;
    exporter.set_resource(&resource(config));
    Ok(exporter)
}

struct Batcher {
    exporter: opentelemetry_otlp::SpanExporter,
    telemetry: Arc<Telemetry>,
    batch_size: usize,
    batch_delay: Duration,
    export_timeout: Duration,
    shutdown_timeout: Duration,
}

impl Batcher {
    async fn run(self, close: CancellationToken) {
        let telemetry = &self.telemetry;
        // The first export waits a whole delay too (`interval` would tick at once).
        let start = tokio::time::Instant::now() + self.batch_delay;
        let mut tick = tokio::time::interval_at(start, self.batch_delay);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        'serve: loop {
            tokio::select! {
                biased;
                () = close.cancelled() => break,
                () = telemetry.batch_ready.notified() => {}
                _ = tick.tick() => {}
            }
            // Full batches while there are any, then what is left (the delay has passed or
            // a batch filled up since the last tick).
            loop {
                let batch = telemetry.take(self.batch_size);
                if batch.is_empty() {
                    break;
                }
                let full = batch.len() == self.batch_size;
                if !self.export_or_close(batch, &close).await {
                    break 'serve;
                }
                if !full {
                    break;
                }
            }
        }

        // Shutdown: what is queued, within `shutdown_timeout`. Requests arriving now (none
        // should: the data plane stopped first) have their spans dropped and counted.
        telemetry.closed.store(true, Ordering::Release);
        let in_flight = std::sync::atomic::AtomicUsize::new(0);
        let flush = async {
            loop {
                let batch = telemetry.take(self.batch_size);
                if batch.is_empty() {
                    break;
                }
                in_flight.store(batch.len(), Ordering::Relaxed);
                let exported = self.export(batch).await;
                in_flight.store(0, Ordering::Relaxed);
                if !exported {
                    // The collector just failed: the rest would most likely fail too.
                    let left = telemetry.take(usize::MAX).len();
                    telemetry.metrics.dropped("shutdown", left);
                    break;
                }
            }
        };
        if tokio::time::timeout(self.shutdown_timeout, flush)
            .await
            .is_err()
        {
            let left = in_flight.load(Ordering::Relaxed) + telemetry.take(usize::MAX).len();
            telemetry.metrics.dropped("shutdown", left);
            tracing::warn!(
                spans = left,
                "telemetry: shutdown flush ran out of time; spans dropped"
            );
        }
        let _ = self.exporter.shutdown();
    }

    /// Exports a batch unless shutdown begins first: then the export in flight is abandoned
    /// (its spans counted as dropped at shutdown) and this returns false, so the bounded
    /// flush gets the whole `shutdown_timeout` for what is still queued.
    async fn export_or_close(&self, batch: Vec<SpanData>, close: &CancellationToken) -> bool {
        let n = batch.len();
        tokio::select! {
            _ = self.export(batch) => true,
            () = close.cancelled() => {
                self.telemetry.metrics.dropped("shutdown", n);
                false
            }
        }
    }

    /// One export request, bounded by `export_timeout`; the outcome is counted. Whether the
    /// collector took the batch.
    async fn export(&self, batch: Vec<SpanData>) -> bool {
        let n = batch.len();
        let metrics = &self.telemetry.metrics;
        match tokio::time::timeout(self.export_timeout, self.exporter.export(batch)).await {
            Ok(Ok(())) => {
                metrics.exported.inc_by(n as u64);
                return true;
            }
            Ok(Err(e)) => {
                metrics.export_failures.inc();
                metrics.dropped("export_failed", n);
                tracing::debug!(spans = n, "telemetry: export failed: {e}");
            }
            Err(_) => {
                metrics.export_failures.inc();
                metrics.dropped("export_failed", n);
                tracing::debug!(spans = n, "telemetry: export timed out");
            }
        }
        false
    }
}
