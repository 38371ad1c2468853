//! The plugin settings a cluster configuration may replace at run time: `[plugins.defaults]`,
//! `[plugins.override.NAME]`, `[plugin.NAME]`, and which built-in plugins are in use. The
//! per-node ones (`dir`, `watch`, `cache_dir`) stay as the node's file set them.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{PluginRuntime, ReloadReport, builtin};
use crate::config::{Config, PluginsConfig};

/// The replaceable part of the plugin configuration.
#[derive(Debug)]
pub(super) struct Live {
    /// `[plugins]`: only `defaults` and `overrides` are read from here.
    pub(super) plugins: PluginsConfig,
    /// `[plugin.NAME]`.
    pub(super) plugin: BTreeMap<String, toml::Table>,
    /// Built-in plugins the config uses (named on a route or configured under
    /// `[plugin.NAME]`); the others are not loaded.
    pub(super) wanted_builtins: Vec<String>,
    /// Headers `auth` forwards (`[plugin.auth] forward_claims`): client-sent copies are
    /// removed before a chain with `auth` runs, so no failure of `auth` lets them through.
    /// Kept here so a pushed change of `forward_claims` takes effect with the rest.
    pub(super) identity_headers: Vec<http::HeaderName>,
}

impl Live {
    pub(super) fn from_config(config: &Config) -> Self {
        Self {
            plugins: config.plugins.clone(),
            plugin: config.plugin.clone(),
            wanted_builtins: builtin::names()
                .filter(|name| {
                    config.plugin.contains_key(*name)
                        || config.routes.iter().any(|r| {
                            r.plugins
                                .iter()
                                .any(|p| super::canary::runs(p.get_ref(), name))
                        })
                })
                .map(str::to_owned)
                .collect(),
            identity_headers: super::identity_headers(config),
        }
    }
}

impl PluginRuntime {
    /// Takes the plugin settings of a new, validated config, then reloads: a plugin whose
    /// settings or `[plugin.NAME]` changed is built again and swapped in (requests in flight
    /// keep the version they started with); one that fails to build keeps its previous
    /// version serving and is reported. Built-ins no longer used are unloaded.
    pub async fn reconfigure(&self, config: &Config) -> ReloadReport {
        self.live.store(Arc::new(Live::from_config(config)));
        let mut report = self.reload().await;
        let live = self.live.load();
        let unused: Vec<Arc<str>> = self
            .current()
            .plugins
            .iter()
            .filter(|(name, plugin)| {
                matches!(plugin.source, super::loaded::PluginSource::BuiltIn)
                    && !live.wanted_builtins.iter().any(|b| b == &***name)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in unused {
            self.unload(&name);
            report.unloaded.push(name.to_string());
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(text: &str) -> Live {
        Live::from_config(&Config::parse(text, "t.toml").expect("valid config"))
    }

    #[test]
    fn identity_headers_follow_the_configuration_in_force() {
        let before = live("[plugin.auth]\nforward_claims = { sub = \"x-user-id\" }\n");
        assert_eq!(before.identity_headers, ["x-user-id"]);
        let after =
            live("[plugin.auth]\nforward_claims = { sub = \"x-principal\", role = \"x-role\" }\n");
        let mut names: Vec<&str> = after.identity_headers.iter().map(|h| h.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["x-principal", "x-role"]);
        assert!(live("").identity_headers.is_empty());
    }
}
