//! The plugin settings a cluster configuration may replace at run time: `[plugins.defaults]`,
//! `[plugins.override.NAME]`, `[plugin.NAME]`, and which built-in plugins are in use. The
//! per-node ones (`dir`, `watch`, `cache_dir`) stay as the node's file set them.

use std::sync::Arc;

use super::settings::Live;
use super::{PluginRuntime, ReloadReport};

impl PluginRuntime {
    /// Takes the plugin settings of a new, validated config, then reloads: a plugin whose
    /// settings or `[plugin.NAME]` changed is built again and swapped in (requests in flight
    /// keep the version they started with); one that fails to build keeps its previous
    /// version serving and is reported. Built-ins no longer used are unloaded.
    pub async fn reconfigure(&self, live: Live) -> ReloadReport {
        self.live.store(Arc::new(live));
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
