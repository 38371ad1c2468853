//! The plugin runtime as the gateway uses it. The runtime is its own crate
//! (`crates/plugin-host`, package `sluice-plugin-host`), re-exported here so that
//! `crate::plugin::X` names it. This module is the crate's edge: it converts the gateway's
//! configuration into the runtime's settings, and holds what is the gateway's own: the
//! built-in plugins embedded by `build.rs` and the kv store's etcd side. (The validation of
//! canary entries against the configuration is the configuration's: `config/canary.rs`.)

pub use sluice_plugin_host::*;

use std::sync::Arc;

use self::settings::{Live, NodeSettings, SettingsTable};

use crate::config::{self, Config};

pub mod builtin;
mod kv_etcd;

/// The kv store plugins read (the runtime's) and its etcd side (the gateway's).
pub mod kv {
    pub use super::kv_etcd::{EtcdKv, KvMirror};
    pub use sluice_plugin_host::kv::*;
}

/// Sets up the plugin runtime for `config` (loads nothing yet).
pub fn runtime(
    config: &Config,
    metrics: Arc<metrics::PluginMetrics>,
) -> anyhow::Result<PluginRuntime> {
    PluginRuntime::new(node_settings(config), live(config), metrics)
}

/// Takes the plugin settings of a new, validated config and reloads
/// ([`PluginRuntime::reconfigure`]).
pub async fn reconfigure(plugins: &PluginRuntime, config: &Config) -> ReloadReport {
    plugins.reconfigure(live(config)).await
}

/// The per-node part of `[plugins]` (and `[kv] file`, the admin address).
fn node_settings(config: &Config) -> NodeSettings {
    NodeSettings {
        dir: config.plugins.dir.clone(),
        files: config.plugins.files.clone(),
        cache_dir: config.plugins.cache_dir.clone(),
        trusted_keys: config.plugins.trusted_keys.clone(),
        sources_ca: config.plugins.sources_ca.clone(),
        kv_file: config.kv.file.clone(),
        admin: config.server.admin,
        workers: config.server.workers,
        max_held_instances: config.plugins.max_held_instances,
        exports_traces: config.telemetry.is_some(),
        builtins: builtin::BUILTINS,
        load_roots: crate::tls::load_roots,
    }
}

/// The part a cluster configuration may replace: `[plugins.defaults]`,
/// `[plugins.override.NAME]`, `[plugins.sources]`, `[plugin.NAME]`, and which built-in plugins
/// are in use (named on a route or configured under `[plugin.NAME]`).
fn live(config: &Config) -> Live {
    let plugins = &config.plugins;
    Live {
        settings: SettingsTable {
            defaults: plugin_settings(&plugins.defaults),
            by_name: plugins
                .overrides
                .keys()
                .map(|name| (name.clone(), plugin_settings(&plugins.settings_for(name))))
                .collect(),
        },
        sources: plugins.sources.clone(),
        plugin: config.plugin.clone(),
        wanted_builtins: builtin::names()
            .filter(|name| {
                config.plugin.contains_key(*name)
                    || config
                        .routes
                        .iter()
                        .any(|r| r.plugins.iter().any(|p| canary::runs(p.get_ref(), name)))
            })
            .map(str::to_owned)
            .collect(),
        identity_headers: identity_headers(config),
    }
}

/// One plugin's settings as the runtime takes them.
fn plugin_settings(s: &config::PluginSettings) -> settings::PluginSettings {
    settings::PluginSettings {
        instance: match s.instance {
            config::InstanceMode::Pooled => settings::InstanceMode::Pooled,
            config::InstanceMode::PerRequest => settings::InstanceMode::PerRequest,
        },
        max_idle_instances: s.max_idle_instances,
        max_uses: s.max_uses,
        max_memory_bytes: s.max_memory_bytes,
        cpu_timeout: s.cpu_timeout,
        timeout: s.timeout,
        on_failure: match s.on_failure {
            config::FailurePolicy::FailClosed => settings::FailurePolicy::FailClosed,
            config::FailurePolicy::FailOpen => settings::FailurePolicy::FailOpen,
        },
        quarantine_after: s.quarantine_after,
        quarantine_for: s.quarantine_for,
        request_body: s.request_body,
        response_body: s.response_body,
        max_body_bytes: s.max_body_bytes,
        allowed_hosts: s.allowed_hosts.clone(),
        kv_read: s.kv_read.clone(),
        max_added_headers: s.max_added_headers,
        max_added_header_bytes: s.max_added_header_bytes,
    }
}

/// The headers the built-in `auth` forwards claims in (`[plugin.auth] forward_claims`).
fn identity_headers(config: &Config) -> Vec<http::HeaderName> {
    let Some(claims) = config
        .plugin
        .get("auth")
        .and_then(|t| t.get("forward_claims"))
        .and_then(toml::Value::as_table)
    else {
        return Vec::new();
    };
    claims
        .values()
        .filter_map(toml::Value::as_str)
        .filter_map(|h| http::HeaderName::from_bytes(h.as_bytes()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live_of(text: &str) -> Live {
        live(&Config::parse(text, "t.toml").expect("valid config"))
    }

    #[test]
    fn identity_headers_follow_the_configuration_in_force() {
        let before = live_of("[plugin.auth]\nforward_claims = { sub = \"x-user-id\" }\n");
        assert_eq!(before.identity_headers, ["x-user-id"]);
        let after = live_of(
            "[plugin.auth]\nforward_claims = { sub = \"x-principal\", role = \"x-role\" }\n",
        );
        let mut names: Vec<&str> = after.identity_headers.iter().map(|h| h.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["x-principal", "x-role"]);
        assert!(live_of("").identity_headers.is_empty());
    }

    /// The runtime's settings of a plugin are the configuration's, for a plain name, a name
    /// with an override, a version with and without one of its own, and the pool size.
    #[test]
    fn runtime_settings_are_the_configuration_s_for_every_name() {
        let text = "[plugins.defaults]\nmax_uses = 7\non_failure = \"fail-open\"\n\
                    [plugins.override.gate]\ninstance = \"per-request\"\nmax_memory_bytes = 99999999\n\
                    [plugins.override.\"gate@v2\"]\ntimeout = \"3s\"\n";
        let config = Config::parse(text, "t.toml").expect("valid config");
        let live = live(&config);
        for name in ["gate", "gate@v2", "gate@v3", "other", "other@v1"] {
            assert_eq!(
                live.settings.settings_for(name),
                plugin_settings(&config.plugins.settings_for(name)),
                "{name}"
            );
        }
        let v2 = live.settings.settings_for("gate@v2");
        assert_eq!(v2.instance, settings::InstanceMode::PerRequest);
        assert_eq!(v2.timeout, std::time::Duration::from_secs(3));
        assert_eq!(v2.max_uses, 7);
        assert_eq!(
            live.settings.settings_for("other").on_failure,
            settings::FailurePolicy::FailOpen
        );
        assert_eq!(live.settings.max_memory_bytes(), 99_999_999);
    }
}
