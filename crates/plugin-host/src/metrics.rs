//! Plugin metrics: calls and failures per plugin and phase, time spent, and the counters and
//! histograms plugins define through the `host` interface.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A shared string label value (a plugin's name): recording clones a pointer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Label(pub Arc<str>);

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        encoder.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CallLabels {
    plugin: Label,
    phase: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PluginLabels {
    plugin: Label,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UserLabels {
    plugin: Label,
    name: String,
}

/// Outcomes of a call, as metric labels.
pub const OUTCOMES: [&str; 7] = [
    "ok",
    "error",
    "trap",
    "timeout",
    "quarantined",
    "skipped",
    "unavailable",
];
/// Phases of a call, as metric labels.
pub const PHASES: [&str; 3] = ["init", "on_request", "on_response"];

/// One plugin's call metrics, resolved once so a call records without hashing or locking.
#[derive(Debug)]
pub struct PluginCallMetrics {
    plugin: Label,
    calls: Family<CallLabels, Counter>,
    cached: [[std::sync::OnceLock<Counter>; 7]; 3],
    duration: Histogram,
}

impl PluginCallMetrics {
    /// Records one call; `phase` and `outcome` index [`PHASES`] and [`OUTCOMES`].
    pub fn record(&self, phase: usize, outcome: usize, seconds: f64) {
        let counter = self.cached[phase][outcome].get_or_init(|| {
            self.calls
                .get_or_create(&CallLabels {
                    plugin: self.plugin.clone(),
                    phase: PHASES[phase],
                    outcome: OUTCOMES[outcome],
                })
                .clone()
        });
        counter.inc();
        if outcome < 5 {
            self.duration.observe(seconds);
        }
    }
}

/// Metrics of every plugin.
#[derive(Debug, Clone)]
pub struct PluginMetrics {
    calls: Family<CallLabels, Counter>,
    duration: Family<PluginLabels, Histogram>,
    user_counters: Family<UserLabels, Counter>,
    user_histograms: Family<UserLabels, Histogram>,
    /// `sluice_plugin_canary_requests_total` (see `canary`).
    pub canary: Arc<super::canary::CanaryMetrics>,
}

impl PluginMetrics {
    /// Registers the plugin metrics.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "plugin_calls",
            "Plugin calls by plugin, phase (init, on_request, on_response) and outcome (ok, error, trap, timeout, skipped, unavailable)",
            calls.clone(),
        );
        let duration = Family::<PluginLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_001, 4.0, 12))
        });
        registry.register(
            "plugin_call_duration_seconds",
            "Time spent in plugin calls",
            duration.clone(),
        );
        let user_counters = Family::<UserLabels, Counter>::default();
        registry.register(
            "plugin_counter",
            "Counters defined by plugins",
            user_counters.clone(),
        );
        let user_histograms = Family::<UserLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register(
            "plugin_histogram",
            "Histograms defined by plugins",
            user_histograms.clone(),
        );
        let canary = super::canary::CanaryMetrics::register(registry);
        Arc::new(Self {
            calls,
            duration,
            user_counters,
            user_histograms,
            canary,
        })
    }

    /// The call metrics of one plugin.
    pub fn for_plugin(&self, plugin: &Arc<str>) -> PluginCallMetrics {
        PluginCallMetrics {
            plugin: Label(plugin.clone()),
            calls: self.calls.clone(),
            cached: Default::default(),
            duration: self
                .duration
                .get_or_create(&PluginLabels {
                    plugin: Label(plugin.clone()),
                })
                .clone(),
        }
    }

    /// Records one call.
    pub fn record_call(
        &self,
        plugin: &Arc<str>,
        phase: &'static str,
        outcome: &'static str,
        seconds: f64,
    ) {
        self.calls
            .get_or_create(&CallLabels {
                plugin: Label(plugin.clone()),
                phase,
                outcome,
            })
            .inc();
        if outcome != "skipped" && outcome != "unavailable" {
            self.duration
                .get_or_create(&PluginLabels {
                    plugin: Label(plugin.clone()),
                })
                .observe(seconds);
        }
    }

    /// `host.counter-add`.
    pub fn counter_add(&self, plugin: &Arc<str>, name: &str, delta: u64) {
        self.user_counters
            .get_or_create(&UserLabels {
                plugin: Label(plugin.clone()),
                name: sanitize(name),
            })
            .inc_by(delta);
    }

    /// `host.histogram-record`.
    pub fn histogram_record(&self, plugin: &Arc<str>, name: &str, value: f64) {
        self.user_histograms
            .get_or_create(&UserLabels {
                plugin: Label(plugin.clone()),
                name: sanitize(name),
            })
            .observe(value);
    }
}

/// Label values are free text, but keep them short so a plugin cannot bloat /metrics.
fn sanitize(name: &str) -> String {
    name.chars().take(64).collect()
}
