//! What the built-in `breaker` plugin keeps in its shared state, seen from the host:
//! `GET /hystrix.stream` (Server-Sent Events in Netflix Hystrix's format, which
//! hystrix-dashboard reads), the live dashboard page at `GET /` on the admin listener, and the
//! breaker metrics in `/metrics`.
//!
//! The key layout is the `breaker-keys` crate (`crates/breaker-keys`), which the plugin writes
//! with and this module reads with: one copy of the contract. All of this runs on the control
//! runtime and only reads the shared state: the data plane never waits for a stream client.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use breaker_keys as keys;
use keys::{LATENCY_BOUNDS_MS, PERCENTILE_BUCKET_MS, PERCENTILE_BUCKETS};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use serde::Deserialize;

use crate::clock::unix_ms;
use crate::plugin::state::SharedState;

/// The built-in plugin whose state this module reads.
pub const PLUGIN: &str = "breaker";

/// Default sample interval of the stream (`?delay=` overrides it), as Hystrix.
pub const DEFAULT_DELAY_MS: u64 = 500;
/// Samples buffered per client; a client that falls further behind is dropped.
pub const CLIENT_BUFFER: usize = 8;

/// The percentiles reported (the order of [`CommandSnapshot::percentiles`]).
const PERCENTILES: [f64; 9] = [0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 100.0];

/// The `cmd|C` record the plugin writes (the shared crate's).
pub use keys::CommandRecord;

mod json;
pub use json::HystrixCommand;

/// A circuit's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Requests go through.
    Closed,
    /// Requests are short-circuited.
    Open,
    /// Open, with trial requests in flight.
    HalfOpen,
}

impl CircuitState {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// Rolling counts of one command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// SUCCESS.
    pub success: u64,
    /// FAILURE.
    pub failure: u64,
    /// TIMEOUT.
    pub timeout: u64,
    /// SEMAPHORE_REJECTED (bulkhead).
    pub rejected: u64,
    /// SHORT_CIRCUITED.
    pub short_circuited: u64,
    /// FALLBACK_SUCCESS.
    pub fallback: u64,
}

impl Counts {
    /// Hystrix's health total (short-circuited requests are not counted).
    pub fn total(&self) -> u64 {
        self.success + self.failure + self.timeout + self.rejected
    }

    /// Hystrix's error count.
    pub fn errors(&self) -> u64 {
        self.failure + self.timeout + self.rejected
    }

    /// Truncated error percentage.
    pub fn error_percent(&self) -> u64 {
        (self.errors() * 100).checked_div(self.total()).unwrap_or(0)
    }
}

/// Everything known about one command at one moment.
#[derive(Debug, Clone)]
pub struct CommandSnapshot {
    /// What the plugin announced.
    pub record: CommandRecord,
    /// The circuit.
    pub state: CircuitState,
    /// Rolling window counts.
    pub counts: Counts,
    /// Requests holding a bulkhead slot now.
    pub concurrent: u64,
    /// Latency percentiles (ms, bucket upper bounds) over the last minute.
    pub percentiles: [u64; 9],
    /// Mean latency (ms) over the last minute.
    pub mean_ms: u64,
    /// Executions in the latency window.
    pub executions: u64,
    /// Transitions into open, half-open and closed since start.
    pub transitions: [(&'static str, u64); 3],
}

fn counter(state: &SharedState, key: &str) -> u64 {
    state.get(key).map_or(0, |v| keys::parse_counter(&v))
}

/// Reads every command the plugin announced.
pub fn snapshot(state: &SharedState) -> Vec<CommandSnapshot> {
    // The plugin's clock (its runtime's), which its windows were written on.
    let now_ms = state.clock().monotonic_ns() / 1_000_000;
    let mut commands: Vec<CommandSnapshot> = state
        .keys_with_prefix(keys::COMMAND_PREFIX)
        .into_iter()
        .filter_map(|key| serde_json::from_slice::<CommandRecord>(&state.get(&key)?).ok())
        .filter_map(|record| {
            let bucket_ms = record.bucket_ms()?;
            Some(command(state, record, bucket_ms, now_ms))
        })
        .collect();
    commands.sort_by(|a, b| a.record.name.cmp(&b.record.name));
    commands
}

fn command(
    state: &SharedState,
    record: CommandRecord,
    bucket_ms: u64,
    now_ms: u64,
) -> CommandSnapshot {
    let c = record.name.as_str();
    let opened_at = state
        .get(&keys::circuit(c))
        .as_deref()
        .and_then(keys::parse_open);
    let state_now = match opened_at {
        _ if record.force_open => CircuitState::Open,
        _ if record.force_closed => CircuitState::Closed,
        None => CircuitState::Closed,
        Some(t) if state.get(&keys::trial(c, t)).is_some() => CircuitState::HalfOpen,
        Some(_) => CircuitState::Open,
    };

    let current = now_ms / bucket_ms;
    let mut counts = Counts::default();
    for bucket in current.saturating_sub(record.rolling_buckets - 1)..=current {
        let n = |kind: &str| counter(state, &keys::count(c, bucket, kind));
        counts.success += n(keys::SUCCESS);
        counts.failure += n(keys::FAILURE);
        counts.timeout += n(keys::TIMEOUT);
        counts.rejected += n(keys::REJECTED);
        counts.short_circuited += n(keys::SHORT_CIRCUITED);
        counts.fallback += n(keys::FALLBACK);
    }

    // Requests admitted by the bulkhead in this lease period and the one before (older
    // periods have outlived their lease; see the plugin's `enter_bulkhead`).
    let concurrent = match record.lease_ms {
        0 => 0,
        lease => {
            let period = now_ms / lease;
            counter(state, &keys::inflight(c, period))
                + period
                    .checked_sub(1)
                    .map_or(0, |p| counter(state, &keys::inflight(c, p)))
        }
    };

    let pcurrent = now_ms / PERCENTILE_BUCKET_MS;
    let mut histogram = [0u64; LATENCY_BOUNDS_MS.len() + 1];
    let mut sum_us = 0;
    for p in pcurrent.saturating_sub(PERCENTILE_BUCKETS - 1)..=pcurrent {
        for (i, slot) in histogram.iter_mut().enumerate() {
            *slot += counter(state, &keys::latency(c, p, i));
        }
        sum_us += counter(state, &keys::latency_sum(c, p));
    }
    let executions: u64 = histogram.iter().sum();
    let percentiles = PERCENTILES.map(|p| percentile(&histogram, executions, p));
    let mean_ms = (sum_us / 1000).checked_div(executions).unwrap_or(0);

    let transitions = keys::TRANSITIONS.map(|to| (to, counter(state, &keys::transitions(c, to))));
    CommandSnapshot {
        record,
        state: state_now,
        counts,
        concurrent,
        percentiles,
        mean_ms,
        executions,
        transitions,
    }
}

/// The upper bound (ms) of the histogram bucket holding the `p`-th percentile. Above the
/// last bound, twice the last bound is reported.
fn percentile(histogram: &[u64], total: u64, p: f64) -> u64 {
    if total == 0 {
        return 0;
    }
    let rank = ((p / 100.0 * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, n) in histogram.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return LATENCY_BOUNDS_MS
                .get(i)
                .copied()
                .unwrap_or(LATENCY_BOUNDS_MS[LATENCY_BOUNDS_MS.len() - 1] * 2);
        }
    }
    LATENCY_BOUNDS_MS[LATENCY_BOUNDS_MS.len() - 1] * 2
}

/// One sample of the stream: a `data:` event per command, then a `ping:` keep-alive.
pub fn sample(state: &SharedState) -> Bytes {
    let now = unix_ms();
    let mut out = String::new();
    for command in snapshot(state) {
        out.push_str("data: ");
        let json = serde_json::to_string(&HystrixCommand::new(&command, now))
            .expect("a HystrixCommand serialises");
        out.push_str(&json);
        out.push_str("\n\n");
    }
    out.push_str("ping: \n\n");
    Bytes::from(out)
}

/// The stream's shared bits: the breaker's state and the client count.
#[derive(Debug)]
pub struct Hub {
    state: Arc<SharedState>,
    clients: AtomicUsize,
    max_clients: usize,
}

impl Hub {
    /// A hub over the breaker plugin's shared state.
    pub fn new(state: Arc<SharedState>, max_clients: usize) -> Arc<Self> {
        Arc::new(Self {
            state,
            clients: AtomicUsize::new(0),
            max_clients,
        })
    }
}

/// `GET /`, `GET /hystrix.stream`.
pub fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/hystrix.stream", get(stream))
        .with_state(hub)
}

async fn dashboard() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}

#[derive(Debug, Deserialize)]
struct StreamQuery {
    delay: Option<String>,
}

/// Decrements the client count when the client's producer ends.
struct ClientSlot(Arc<Hub>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn stream(State(hub): State<Arc<Hub>>, Query(query): Query<StreamQuery>) -> Response {
    let delay_ms = match query.delay.as_deref().map(str::parse::<u64>) {
        None => DEFAULT_DELAY_MS,
        Some(Ok(ms)) if (10..=60_000).contains(&ms) => ms,
        Some(_) => {
            return (
                StatusCode::BAD_REQUEST,
                "delay: milliseconds between samples, 10..=60000\n",
            )
                .into_response();
        }
    };
    let taken = hub
        .clients
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < hub.max_clients).then_some(n + 1)
        });
    if taken.is_err() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, HeaderValue::from_static("5"))],
            format!(
                "MaxConcurrentConnections reached: {} (server.hystrix_stream_max_clients)\n",
                hub.max_clients
            ),
        )
            .into_response();
    }
    let slot = ClientSlot(hub.clone());
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(CLIENT_BUFFER);
    tokio::spawn(async move {
        let _slot = slot;
        let mut tick = tokio::time::interval(Duration::from_millis(delay_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // A client that went away frees its place at once, not at the next sample.
            tokio::select! {
                _ = tick.tick() => {}
                () = tx.closed() => return,
            }
            let state = hub.state.clone();
            let Ok(sample) = tokio::task::spawn_blocking(move || sample(&state)).await else {
                return;
            };
            match tx.try_send(sample) {
                Ok(()) => {}
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                    tracing::info!(
                        "hystrix.stream: dropping a client that fell {CLIENT_BUFFER} samples behind"
                    );
                    return;
                }
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream;charset=UTF-8")
        .header(
            header::CACHE_CONTROL,
            "no-cache, no-store, max-age=0, must-revalidate",
        )
        .header(header::PRAGMA, "no-cache")
        .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")
        .body(channel_body(rx))
        .expect("static headers are valid")
}

/// A response body fed by a channel; ends when the producer drops its sender.
///
/// Not axum's `Sse`: its `Event` writes only the standard fields (`data`, `event`, `id`,
/// `retry`, comments), and the Hystrix wire format ends every sample with a `ping: ` field
/// line, which hystrix-dashboard and our clients expect; its default headers differ too
/// (`text/event-stream` without the charset Hystrix sends). A sample is a whole run of events,
/// so it is written as one chunk.
fn channel_body(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Body {
    Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), rx))
    }))
}

/// `sluice_breaker_circuit_state{command, state}` and `sluice_breaker_transitions_total{command,
/// to}`, read from the breaker's shared state on every scrape.
#[derive(Debug, Default)]
pub struct BreakerCollector {
    /// Set once the plugin runtime exists.
    pub state: Arc<OnceLock<Arc<SharedState>>>,
}

impl Collector for BreakerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(state) = self.state.get() else {
            return Ok(());
        };
        let commands = snapshot(state);
        if commands.is_empty() {
            return Ok(());
        }
        {
            let mut family = encoder.encode_descriptor(
                "breaker_circuit_state",
                "Circuit state per breaker command: 1 for the current state, 0 for the others",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for c in &commands {
                for s in [
                    CircuitState::Closed,
                    CircuitState::Open,
                    CircuitState::HalfOpen,
                ] {
                    let labels = [("command", c.record.name.as_str()), ("state", s.as_str())];
                    ConstGauge::new(i64::from(c.state == s))
                        .encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "breaker_transitions",
            "Circuit transitions per breaker command, by the state entered",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for c in &commands {
            for (to, n) in c.transitions {
                let labels = [("command", c.record.name.as_str()), ("to", to)];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_bucket_upper_bounds() {
        let mut h = [0u64; LATENCY_BOUNDS_MS.len() + 1];
        h[0] = 50; // <= 1 ms
        h[10] = 49; // <= 100 ms
        h[16] = 1; // > 5 s
        assert_eq!(percentile(&h, 100, 0.0), 1);
        assert_eq!(percentile(&h, 100, 50.0), 1);
        assert_eq!(percentile(&h, 100, 51.0), 100);
        assert_eq!(percentile(&h, 100, 99.0), 100);
        assert_eq!(percentile(&h, 100, 100.0), 10_000);
        assert_eq!(percentile(&h, 0, 50.0), 0);
    }
}
