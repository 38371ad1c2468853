//! Plugin metrics: calls and failures per plugin and phase, time spent, and the counters and
//! histograms plugins define through the `host` interface.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::family::MetricConstructor;
use prometheus_client::metrics::gauge::Gauge;
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
    /// `sluice_plugin_held_instance_fallbacks_total{plugin}`, created on the first fallback
    /// (pooled plugins never show it).
    held_fallbacks: Family<PluginLabels, Counter>,
    held_fallback: std::sync::OnceLock<Counter>,
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

    /// A per-request instance that could not be kept for `on-response` (the runtime's
    /// `max_held_instances` were all held).
    pub fn held_fallback(&self) {
        self.held_fallback
            .get_or_init(|| {
                self.held_fallbacks
                    .get_or_create(&PluginLabels {
                        plugin: self.plugin.clone(),
                    })
                    .clone()
            })
            .inc();
    }
}

/// Metrics of every plugin.
#[derive(Debug, Clone)]
pub struct PluginMetrics {
    calls: Family<CallLabels, Counter>,
    duration: Family<PluginLabels, Histogram>,
    user_counters: Family<UserLabels, Counter>,
    user_histograms: Family<UserLabels, Histogram>,
    held_fallbacks: Family<PluginLabels, Counter>,
    /// `sluice_plugin_held_instances`: per-request instances held between a request's
    /// `on-request` and its `on-response` (see `held::InstanceSlots`).
    pub held_instances: Gauge,
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
        let held_instances = Gauge::default();
        registry.register(
            "plugin_held_instances",
            "Per-request plugin instances held from a request's on_request to its on_response",
            held_instances.clone(),
        );
        let held_fallbacks = Family::<PluginLabels, Counter>::default();
        registry.register(
            "plugin_held_instance_fallbacks",
            "Requests whose per-request instance could not be held for on_response (plugins.max_held_instances reached): on_response ran on a second fresh instance",
            held_fallbacks.clone(),
        );
        let canary = super::canary::CanaryMetrics::register(registry);
        Arc::new(Self {
            calls,
            duration,
            user_counters,
            user_histograms,
            held_fallbacks,
            held_instances,
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
            held_fallbacks: self.held_fallbacks.clone(),
            held_fallback: std::sync::OnceLock::new(),
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

    /// `host.counter-add`. `handles` are the calling instance's: a name it used before costs
    /// a comparison, not a label allocation, a hash and the family's lock.
    pub fn counter_add(
        &self,
        handles: &mut UserMetricHandles,
        plugin: &Arc<str>,
        name: &str,
        delta: u64,
    ) {
        with_handle(
            &mut handles.counters,
            &self.user_counters,
            plugin,
            name,
            |c| {
                c.inc_by(delta);
            },
        );
    }

    /// `host.histogram-record`, with the instance's `handles` as for [`Self::counter_add`].
    pub fn histogram_record(
        &self,
        handles: &mut UserMetricHandles,
        plugin: &Arc<str>,
        name: &str,
        value: f64,
    ) {
        with_handle(
            &mut handles.histograms,
            &self.user_histograms,
            plugin,
            name,
            |h| {
                h.observe(value);
            },
        );
    }
}

/// Runs `use_it` on the family's entry for the plugin's metric `name`: the instance's handle
/// when it used the name before, else the family's entry (kept in `handles` while there is
/// room).
fn with_handle<M: Clone, C: MetricConstructor<M>>(
    handles: &mut Vec<(Box<str>, M)>,
    family: &Family<UserLabels, M, C>,
    plugin: &Arc<str>,
    name: &str,
    use_it: impl FnOnce(&M),
) {
    if let Some((_, metric)) = handles.iter().find(|(n, _)| &**n == name) {
        return use_it(metric);
    }
    let metric = family
        .get_or_create(&UserLabels {
            plugin: Label(plugin.clone()),
            name: sanitize(name),
        })
        .clone();
    use_it(&metric);
    if handles.len() < MAX_HANDLES {
        handles.push((name.into(), metric));
    }
}

/// Names of counters (and, separately, histograms) whose handles one instance keeps; a plugin
/// that uses more names finds the others through the family on every call, as before.
const MAX_HANDLES: usize = 16;

/// The counters and histograms one plugin instance has used, by the name the plugin gave
/// (before [`sanitize`]): the family's entries themselves, shared, so `/metrics` shows the
/// same values. `host.counter-add` is on many plugins' request path (`auth` counts every
/// accepted token); resolving the family entry each time allocated the label, hashed it and
/// took the family's lock (docs/benchmarks.md, "The fixed cost of a plugin call").
#[derive(Debug, Default)]
pub struct UserMetricHandles {
    counters: Vec<(Box<str>, Counter)>,
    histograms: Vec<(Box<str>, Histogram)>,
}

/// Label values are free text, but keep them short so a plugin cannot bloat /metrics.
fn sanitize(name: &str) -> String {
    name.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    /// The value of the one sample line that starts with `series`.
    fn sample(text: &str, series: &str) -> String {
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(series)).collect();
        assert_eq!(lines.len(), 1, "{series} in:\n{text}");
        lines[0].rsplit(' ').next().unwrap().to_owned()
    }

    #[test]
    fn instance_handles_count_into_the_shared_series() {
        let mut registry = Registry::default();
        let metrics = PluginMetrics::register(&mut registry);
        let plugin: Arc<str> = Arc::from("p");
        // Two instances of one plugin, each with its own handles: one series.
        let (mut a, mut b) = (UserMetricHandles::default(), UserMetricHandles::default());
        for _ in 0..3 {
            metrics.counter_add(&mut a, &plugin, "accepted", 1);
        }
        metrics.counter_add(&mut b, &plugin, "accepted", 10);
        metrics.histogram_record(&mut a, &plugin, "ms", 1.0);
        metrics.histogram_record(&mut a, &plugin, "ms", 2.0);
        metrics.histogram_record(&mut b, &plugin, "ms", 4.0);
        // A long name is cut to 64 characters in the label, cached or not.
        let long = "x".repeat(100);
        metrics.counter_add(&mut a, &plugin, &long, 1);
        metrics.counter_add(&mut a, &plugin, &long, 1);
        // More names than an instance keeps handles for: still every one counted.
        for i in 0..MAX_HANDLES + 4 {
            for _ in 0..2 {
                metrics.counter_add(&mut b, &plugin, &format!("n{i}"), 1);
            }
        }
        assert_eq!(b.counters.len(), MAX_HANDLES, "bounded");
        let text = exposition(&registry);
        let series = |name: &str| format!("plugin_counter_total{{plugin=\"p\",name=\"{name}\"}}");
        assert_eq!(sample(&text, &series("accepted")), "13");
        assert_eq!(sample(&text, &series(&"x".repeat(64))), "2");
        for i in 0..MAX_HANDLES + 4 {
            assert_eq!(sample(&text, &series(&format!("n{i}"))), "2", "n{i}");
        }
        assert_eq!(
            sample(&text, "plugin_histogram_count{plugin=\"p\",name=\"ms\"}"),
            "3"
        );
        assert_eq!(
            sample(&text, "plugin_histogram_sum{plugin=\"p\",name=\"ms\"}"),
            "7.0"
        );
    }
}
