//! Canary versions of a plugin: a route's plugin entry `NAME@VERSION:PERCENT%` (for example
//! `plugins = ["auth@v2:10%"]`) runs plugin `NAME@VERSION` on PERCENT % of the route's requests
//! and plugin `NAME` on the others.
//!
//! A version is an ordinary plugin whose name is `NAME@VERSION`: a file `NAME@VERSION.wasm`
//! in the plugin directory (or in `SLUICE_PLUGINS`), or a digest source
//! `[plugins.sources."NAME@VERSION"]`. It runs with the settings of `NAME`
//! (`[plugins.override.NAME]`, then `[plugins.override."NAME@VERSION"]` on top), the
//! configuration of `NAME` (`[plugin.NAME]`, then `[plugin."NAME@VERSION"]` on top), and the
//! shared state of `NAME`, so the version under trial sees what the current one sees.
//!
//! The draw is made once per request and entry, when the request chain reaches the entry:
//! the version drawn runs `on-request`, and the same version runs `on-response` (the chain
//! keeps the plugin that ran). A version that is not loaded (its file gone, its source
//! refused) is not drawn: the request runs `NAME`, and the admin API shows why the version
//! is not loaded.

use std::sync::Arc;

use dashmap::DashMap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Serialize;

/// A canary entry, `NAME@VERSION:PERCENT%`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Canary<'a> {
    /// `NAME`: the plugin most requests run.
    pub base: &'a str,
    /// `NAME@VERSION`: the plugin PERCENT % of requests run.
    pub version: &'a str,
    /// 0 to 100.
    pub percent: f64,
}

/// The plugin an entry names: `auth` for `auth`, `auth@v2` and `auth@v2:10%`.
pub fn base(entry: &str) -> &str {
    let name = entry.split_once(':').map_or(entry, |(name, _)| name);
    name.split_once('@').map_or(name, |(base, _)| base)
}

/// Whether a route's plugin entry runs plugin `name` (as itself, or as the current version
/// of a canary entry).
pub fn runs(entry: &str, name: &str) -> bool {
    entry == name || matches!(parse(entry), Ok(Some(c)) if c.base == name)
}

/// The plugins an entry runs: itself, or a canary's current plugin and its version.
pub fn names(entry: &str) -> Vec<&str> {
    match parse(entry) {
        Ok(Some(canary)) => vec![canary.base, canary.version],
        _ => vec![entry],
    }
}

/// Parses a route's plugin entry: `None` for a plain plugin name, the canary for
/// `NAME@VERSION:PERCENT%`, and what is wrong with an entry that has a `:` but is not that.
pub fn parse(entry: &str) -> Result<Option<Canary<'_>>, String> {
    let Some((version, percent)) = entry.rsplit_once(':') else {
        return Ok(None);
    };
    let Some((base, tag)) = version.split_once('@') else {
        return Err(format!(
            "`{version}` names no version: a canary is `NAME@VERSION:PERCENT%` (for example `auth@v2:10%`)"
        ));
    };
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    if !name_ok(base) || !name_ok(tag) {
        return Err(format!(
            "`{version}`: the plugin name and the version must be non-empty and use only \
             letters, digits, `-`, `_` and `.` (a canary is `NAME@VERSION:PERCENT%`)"
        ));
    }
    let number = percent.strip_suffix('%').ok_or_else(|| {
        format!("`{percent}` is not a percentage: write it with `%` (for example `10%`)")
    })?;
    // Digits with an optional fraction: no sign, exponent, `inf` or `NaN`, which f64's parser
    // would take.
    let (whole, fraction) = number.split_once('.').unwrap_or((number, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let percent = match number.parse::<f64>() {
        Ok(p) if digits(whole) && digits(fraction) => p,
        _ => {
            return Err(format!(
                "`{percent}` is not a percentage (a number from 0 to 100, then `%`)"
            ));
        }
    };
    if !(0.0..=100.0).contains(&percent) {
        return Err(format!("`{percent}%` is outside 0..=100 %"));
    }
    Ok(Some(Canary {
        base,
        version,
        percent,
    }))
}

/// Picks the plugin a request runs for a chain entry: the entry itself, or for a canary
/// entry its version (PERCENT % of draws, when loaded) or its current plugin. The draw is
/// counted.
pub fn choose<'a>(
    entry: &'a str,
    loaded: impl Fn(&str) -> bool,
    metrics: &CanaryMetrics,
) -> &'a str {
    // Plain names (the usual case) cost one byte comparison.
    if !entry.ends_with('%') {
        return entry;
    }
    let Ok(Some(canary)) = parse(entry) else {
        // Validation refuses such entries; if one got here it names no plugin.
        return entry;
    };
    let drawn = fastrand::f64() * 100.0 < canary.percent;
    let chosen = if drawn && loaded(canary.version) {
        canary.version
    } else {
        canary.base
    };
    metrics.record(entry, &canary, chosen == canary.version);
    chosen
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CanaryLabels {
    plugin: String,
    version: String,
}

/// One canary entry's counters: requests that ran the current plugin, and the version.
#[derive(Debug)]
struct EntryCounters {
    base: Arc<str>,
    version: Arc<str>,
    current: Counter,
    canary: Counter,
}

/// `sluice_plugin_canary_requests_total{plugin, version}`, and the same counts for the admin
/// API.
#[derive(Debug, Default)]
pub struct CanaryMetrics {
    family: Family<CanaryLabels, Counter>,
    /// By entry text, so that a request looks its counters up without allocating.
    entries: DashMap<String, Arc<EntryCounters>>,
}

impl CanaryMetrics {
    /// Registers `sluice_plugin_canary_requests_total`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = Self::default();
        registry.register(
            "plugin_canary_requests",
            "Requests through a canary entry (NAME@VERSION:PERCENT%), by plugin (NAME) and the \
             version that ran (NAME@VERSION, or NAME for the current one)",
            metrics.family.clone(),
        );
        Arc::new(metrics)
    }

    fn record(&self, entry: &str, canary: &Canary<'_>, to_version: bool) {
        let counters = match self.entries.get(entry) {
            Some(c) => c.value().clone(),
            None => self
                .entries
                .entry(entry.to_owned())
                .or_insert_with(|| {
                    let base: Arc<str> = Arc::from(canary.base);
                    let version: Arc<str> = Arc::from(canary.version);
                    let counter = |v: &Arc<str>| {
                        self.family
                            .get_or_create(&CanaryLabels {
                                plugin: base.to_string(),
                                version: v.to_string(),
                            })
                            .clone()
                    };
                    Arc::new(EntryCounters {
                        current: counter(&base),
                        canary: counter(&version),
                        base,
                        version,
                    })
                })
                .value()
                .clone(),
        };
        if to_version {
            counters.canary.inc();
        } else {
            counters.current.inc();
        }
    }

    /// The canary draws that ran plugin `name`, if any canary entry names it.
    pub fn view(&self, name: &str) -> Option<CanaryView> {
        let mut view: Option<CanaryView> = None;
        for entry in &self.entries {
            // Entries of one plugin and version share their counters (one series per
            // label pair): read once, not summed.
            let requests = if &*entry.version == name {
                entry.canary.get()
            } else if &*entry.base == name {
                entry.current.get()
            } else {
                continue;
            };
            let v = view.get_or_insert_with(|| CanaryView {
                plugin: entry.base.to_string(),
                entries: Vec::new(),
                requests,
            });
            v.entries.push(entry.key().clone());
        }
        if let Some(v) = &mut view {
            v.entries.sort();
        }
        view
    }
}

/// A plugin's part in canary entries, on `GET /admin/plugins`.
#[derive(Debug, Clone, Serialize)]
pub struct CanaryView {
    /// The plugin the entries are versions of (`auth` for `auth@v2`).
    pub plugin: String,
    /// The entries (`auth@v2:10%`).
    pub entries: Vec<String>,
    /// Requests through those entries that ran this plugin.
    pub requests: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_and_bad_ones_say_why() {
        assert_eq!(parse("auth"), Ok(None));
        assert_eq!(parse("auth@v2"), Ok(None));
        let c = parse("auth@v2:10%").unwrap().unwrap();
        assert_eq!((c.base, c.version, c.percent), ("auth", "auth@v2", 10.0));
        assert_eq!(parse("auth@v2:0.5%").unwrap().unwrap().percent, 0.5);
        assert_eq!(parse("auth@v2:100%").unwrap().unwrap().percent, 100.0);
        assert_eq!(parse("auth@v2:0%").unwrap().unwrap().percent, 0.0);
        for (bad, why) in [
            ("auth:10%", "names no version"),
            ("auth@:10%", "must be non-empty"),
            ("@v2:10%", "must be non-empty"),
            ("auth@v/2:10%", "only letters"),
            ("auth@v2:10", "write it with `%`"),
            ("auth@v2:150%", "outside 0..=100"),
            ("auth@v2:-1%", "is not a percentage"),
            ("auth@v2:1e1%", "is not a percentage"),
            ("auth@v2:NaN%", "is not a percentage"),
            ("auth@v2:%", "is not a percentage"),
            ("auth@v2:1.%", "is not a percentage"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn an_entry_runs_its_base_plugin() {
        assert_eq!(base("auth@v2:10%"), "auth");
        assert_eq!(base("auth@v2"), "auth");
        assert_eq!(base("auth"), "auth");
        assert!(runs("auth@v2:10%", "auth"));
        assert!(runs("auth", "auth"));
        assert!(!runs("auth@v2", "auth"));
        assert!(!runs("authz", "auth"));
    }

    #[test]
    fn the_draw_follows_the_percentage_and_skips_a_version_not_loaded() {
        let metrics = CanaryMetrics::default();
        let set = crate::PluginSet::default();
        let loaded = |name: &str| set.get(name).is_some();
        // The version is not loaded: every request runs the current plugin.
        for _ in 0..100 {
            assert_eq!(choose("t@v2:100%", loaded, &metrics), "t");
        }
        assert_eq!(metrics.view("t").unwrap().requests, 100);
        assert!(metrics.view("t@v2").unwrap().requests == 0);
        assert_eq!(choose("plain", loaded, &metrics), "plain");
        assert!(metrics.view("plain").is_none());
    }
}
