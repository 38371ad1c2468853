//! The configuration file: serde structs that mirror the TOML, defaults, and validation that
//! reports every problem as `FILE:LINE:COLUMN: key: what is wrong`.
//!
//! Every table rejects unknown keys (`deny_unknown_fields`): a typo in a production config must
//! fail at load, not silently fall back to a default.
//!
//! **The rule.** Every table is a typed struct in this module's file for its concern, next to
//! the checks of its keys, and text the gateway uses typed is parsed here once ([`Parsed`]),
//! never by consumers. `[cluster]` is here too (`cluster.rs`; checking it loads the etcd
//! client's TLS files with `crate::etcd`); what a node does with it is `crate::cluster`'s.

mod admin;
mod canary;
pub(crate) mod cluster;
mod plugins;
mod registry;
mod routes;
mod server;
mod services;
mod telemetry;
mod value;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;

pub use self::admin::AdminConfig;
pub use self::plugins::{
    FailurePolicy, InstanceMode, PluginSettings, PluginSettingsPatch, PluginsConfig,
};
pub use self::registry::{KvBackend, KvConfig, RegistryBackend, RegistryConfig};
pub use self::routes::{ResolverConfig, RouteConfig};
pub use self::server::{
    Cidr, DEFAULT_HYSTRIX_STREAM_MAX_CLIENTS, DemoUpstreamConfig, Http2Config, LogConfig,
    LogFormat, ServerConfig, TlsCertificate, TlsConfig, TlsMinVersion, WebSocketConfig,
};
pub(crate) use self::services::check_authority;
pub use self::services::{
    ActiveHealthConfig, BalancerKind, HashOn, InstanceConfig, PassiveHealthConfig, RetryConfig,
    RetryOn, ServiceConfig, UpstreamProtocol, check_service_name,
};
pub use self::telemetry::{
    OtlpEndpoint, OtlpHeaders, Protocol as TelemetryProtocol, TelemetryConfig,
};
pub use self::value::{FromText, Parsed};

/// The config used by `sluice run` with no `--config`: a gateway in front of the built-in demo
/// upstream, so a newcomer can try it with curl at once.
pub const EMBEDDED_DEFAULT: &str = include_str!("../default.toml");

/// The name shown in errors for the embedded default config.
pub const EMBEDDED_NAME: &str = "<embedded default>";

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`: listeners, workers and HTTP edge limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// `[log]`: log format and the access log.
    #[serde(default)]
    pub log: LogConfig,
    /// `[plugins]`: where plugin files are loaded from, and how plugins run.
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// `[services.NAME]`: upstream services and their instances.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceConfig>,
    /// `[[routes]]`: how requests are matched to services, in any order (longest prefix wins).
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// `[plugin.NAME]`: configuration handed to the plugin named NAME.
    #[serde(default)]
    pub plugin: BTreeMap<String, toml::Table>,
    /// `[kv]`: the watched key-value store plugins read (`kv` in the WIT).
    #[serde(default)]
    pub kv: KvConfig,
    /// `[demo_upstream]`: an optional built-in upstream that echoes what it receives.
    #[serde(default)]
    pub demo_upstream: Option<DemoUpstreamConfig>,
    /// `[registry]`: where registered instances are kept (embedded or etcd).
    #[serde(default)]
    pub registry: RegistryConfig,
    /// `[resolver]`: routing `/{service}/...` to a service by name.
    #[serde(default)]
    pub resolver: ResolverConfig,
    /// `[telemetry]`: OpenTelemetry (OTLP) trace export; absent = no spans at all.
    #[serde(default)]
    pub telemetry: Option<TelemetryConfig>,
    /// `[admin]`: the admin API's token(s).
    #[serde(default)]
    pub admin: AdminConfig,
    /// `[cluster]`: routes, services and plugin settings come from one document on etcd
    /// (see `cluster`); absent = they come from this file.
    #[serde(default)]
    pub cluster: Option<cluster::ClusterConfig>,
}

/// A config problem, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in.
    pub file: String,
    /// 1-based line and column, when known.
    pub position: Option<(usize, usize)>,
    /// What is wrong, starting with the key.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => write!(f, "{}:{line}:{col}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// All the problems found in one file, one per line when displayed.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: name.clone(),
                position: None,
                message: format!("cannot read config file: {e}"),
            }])
        })?;
        Self::parse(&text, &name)
    }

    /// The embedded default config.
    pub fn embedded_default() -> Self {
        Self::parse(EMBEDDED_DEFAULT, EMBEDDED_NAME).expect("the embedded default config is valid")
    }

    /// Parses and validates config text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigErrors> {
        let config: Config = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|e| {
                let path = e.path().to_string();
                let e = e.into_inner();
                ConfigErrors(vec![ConfigError {
                    file: file.to_string(),
                    position: e.span().map(|s| line_col(text, s.start)),
                    message: describe_toml_error(&path, &e),
                }])
            })?;
        config.validate(text, file)?;
        Ok(config)
    }

    /// Checks what serde cannot: references between tables, value ranges, and the values
    /// that did not parse ([`Parsed`]). Every problem is reported, in this order.
    fn validate(&self, text: &str, file: &str) -> Result<(), ConfigErrors> {
        let mut p = Problems::default();
        self.server.check_limits(&mut p);
        self.admin.check(&mut p);
        self.server.check_tls(&mut p);
        services::check(&self.services, &mut p);
        self.registry.check(&mut p);
        self.kv.check(&mut p);
        plugins::check_policy(self, &mut p);
        self.resolver.check(&mut p);
        routes::check(&self.routes, &self.services, &mut p);
        if let Some(telemetry) = &self.telemetry {
            p.0.extend(telemetry.problems());
        }
        self.plugins.check_sources(&mut p);
        p.0.extend(canary::problems(self));
        if let Some(cluster) = &self.cluster {
            for message in cluster.problems(text) {
                p.add(message);
            }
        }
        if p.0.is_empty() {
            return Ok(());
        }
        let errors = p.0.into_iter().map(|(span, message)| ConfigError {
            file: file.to_string(),
            position: span.map(|s| line_col(text, s.start)),
            message,
        });
        Err(ConfigErrors(errors.collect()))
    }
}

/// The problems the validation pass finds: messages that start with the key path, with the
/// value's position in the text when it is known.
#[derive(Debug, Default)]
pub(crate) struct Problems(Vec<(Option<Range<usize>>, String)>);

impl Problems {
    /// A problem without a position (a missing key, a file that cannot be read ...).
    fn add(&mut self, message: String) {
        self.0.push((None, message));
    }

    /// A problem with the value at `span`.
    fn at(&mut self, span: Range<usize>, message: String) {
        self.0.push((Some(span), message));
    }

    /// The values under `key` that did not parse.
    fn parsed<'a, T: 'a>(&mut self, key: &str, values: impl IntoIterator<Item = &'a Parsed<T>>) {
        for value in values {
            if let Some(why) = value.problem() {
                self.at(value.span(), format!("{key}: {why}"));
            }
        }
    }
}

/// toml's message, prefixed with the path of the key it is about (`routes[1].plugins[0]`),
/// taken from the deserializer rather than from the text: inline tables and multi-line
/// arrays put the key on another line than the value. toml's message already names the
/// key of an unknown or missing field; the path then names the table it is in.
fn describe_toml_error(path: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', "; ");
    // Spanned values add a private segment of toml's own to the path.
    let path = path.replace(".$__serde_spanned_private_value", "");
    let path = path.as_str();
    // For an unknown field the path ends with that field, which the message names already.
    let path = match message.starts_with("unknown field") {
        true => path.rsplit_once('.').map_or("", |(table, _)| table),
        false => path,
    };
    match path {
        "" | "." => message,
        path => format!("{path}: {message}"),
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> String {
        Config::parse(text, "t.toml").unwrap_err().to_string()
    }

    #[test]
    fn embedded_default_is_valid_and_routes_to_the_demo() {
        let config = Config::embedded_default();
        assert!(config.demo_upstream.is_some());
        assert!(!config.routes.is_empty());
    }

    #[test]
    fn line_and_column_are_one_based() {
        assert_eq!(line_col("a\nbc\nd", 0), (1, 1));
        assert_eq!(line_col("a\nbc\nd", 3), (2, 2));
        assert_eq!(line_col("a\nbc\nd", 5), (3, 1));
    }

    #[test]
    fn unknown_key_names_file_line_table_and_key() {
        let e = errors("[server]\nlisten = \"127.0.0.1:1\"\nlisen = \"x\"\n");
        assert!(
            e.starts_with("t.toml:3:1: server: unknown field `lisen`"),
            "{e}"
        );
    }

    #[test]
    fn missing_service_is_an_error_at_load() {
        let e = errors(
            "[services.a]\ninstances = [\"127.0.0.1:1\"]\n[[routes]]\npath = \"/\"\nservice = \"b\"\n",
        );
        assert_eq!(
            e,
            "t.toml:5:11: routes[0].service: no service named `b` (defined: a)"
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let e = errors(
            "[services.a]\ninstances = [\"nope\"]\n[[routes]]\npath = \"x\"\nservice = \"a\"\nmethods = [\"G T\"]\n",
        );
        assert_eq!(e.lines().count(), 3, "{e}");
        assert!(e.contains("t.toml:2:14: services.a.instances[0]: `nope` must be host:port"));
        assert!(e.contains("t.toml:4:8: routes[0].path: `x` must start with `/`"));
        assert!(e.contains("routes[0].methods: `G T` is not an HTTP method"));
    }

    #[test]
    fn bad_duration_names_the_line() {
        let e = errors("[server]\nidle_timeout = \"soon\"\n");
        assert!(e.starts_with("t.toml:2:16: server.idle_timeout: "), "{e}");
    }
}
