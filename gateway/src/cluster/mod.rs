//! A fleet of gateways on one configuration. With `[cluster] backend = "etcd"` in a node's
//! file, the parts of the configuration a fleet shares (routes, services and their policies,
//! the resolver, `[plugin.NAME]`, `[plugins.defaults]` and `[plugins.override.NAME]`) come
//! from one TOML document at etcd key `PREFIX + "config"`; the node's file keeps what is per
//! node (listeners, admin, log, plugin directory and caches, registry and kv backends).
//!
//! Every version of the document is validated in full (the checks and messages of the file)
//! before any of it is applied; a bad one is refused, logged, counted
//! (`sluice_config_reload_failures_total`) and shown on `GET /admin/config`, and the node keeps
//! serving the previous one. Each applied revision is written to a snapshot on disk
//! (`snapshot`), which a node starting while etcd is unreachable serves from.
//!
//! Module map: `apply` (applying a configuration to a running gateway), `snapshot` (the
//! last-known-good file), `cli` (`sluice config push|get|diff`), and this file: the `[cluster]`
//! table, the document, start-up and following etcd.
//!
//! Long (~800 lines before its tests): start-up with etcd up or down, the snapshot fallback
//! and following the document are one state machine; its parts (`apply`, `snapshot`, `cli`)
//! are already modules of their own.

pub mod apply;
pub mod cli;
pub mod snapshot;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::clock::unix_ms;
use crate::config::{Config, ConfigError, ConfigErrors};
use crate::etcd::EtcdConnection;
use crate::metrics::Metrics;
use crate::proxy::Proxy;

pub use crate::config::cluster::{
    ClusterBackend, ClusterConfig, DEFAULT_PREFIX, DOCUMENT_KEY, Source,
};
use crate::config::cluster::{SHARED_KEYS, SHARED_PLUGINS_KEYS};
pub use crate::metrics::ConfigMetrics;

impl ClusterConfig {
    /// Where the snapshot is written.
    pub fn snapshot_path(&self) -> PathBuf {
        self.snapshot.clone().unwrap_or_else(snapshot::default_path)
    }
}

/// Parses and validates a cluster document: the same checks and messages as a file, and
/// only the shared keys (a per-node key such as `[server]` is refused, named). `name` names
/// the document in errors (`etcd:/sluice/cluster/config@42`, a file name).
pub fn parse_document(text: &str, name: &str) -> Result<Config, ConfigErrors> {
    let config = Config::parse(text, name)?;
    let table: toml::Table = text.parse().expect("parsed as a Config just now");
    let mut errors = Vec::new();
    for (key, value) in &table {
        let shared = match (key.as_str(), value) {
            ("plugins", toml::Value::Table(plugins)) => {
                for sub in plugins.keys() {
                    if !SHARED_PLUGINS_KEYS.contains(&sub.as_str()) {
                        errors.push(per_node(name, &format!("plugins.{sub}")));
                    }
                }
                true
            }
            (key, _) => SHARED_KEYS.contains(&key),
        };
        if !shared {
            errors.push(per_node(name, key));
        }
    }
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

fn per_node(file: &str, key: &str) -> ConfigError {
    ConfigError {
        file: file.to_owned(),
        position: None,
        message: format!(
            "{key}: is per node and stays in each node's file; the cluster configuration \
             holds routes, services, resolver, plugin.NAME, plugins.defaults, plugins.override and plugins.sources"
        ),
    }
}

/// A node's configuration with the shared parts taken from a cluster document.
pub fn merge(node: &Config, document: &Config) -> Config {
    let mut merged = node.clone();
    merged.routes = document.routes.clone();
    merged.services = document.services.clone();
    merged.resolver = document.resolver.clone();
    merged.plugin = document.plugin.clone();
    merged.plugins.defaults = document.plugins.defaults.clone();
    merged.plugins.overrides = document.plugins.overrides.clone();
    merged.plugins.sources = document.plugins.sources.clone();
    merged
}

fn document_name(key: &str, revision: i64) -> String {
    format!("etcd:{key}@{revision}")
}

/// A refused document.
#[derive(Debug, Clone, Serialize)]
pub struct Refused {
    /// Its etcd revision.
    pub revision: i64,
    /// Why (one line per problem).
    pub reason: String,
    /// When (Unix ms).
    pub at_ms: u64,
}

/// What `GET /admin/config` shows.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    /// `etcd`, `snapshot` or `file`.
    pub source: Source,
    /// The etcd mod revision of the document in force (0 for a file).
    pub revision: i64,
    /// The etcd key followed.
    pub key: Option<String>,
    /// The snapshot file.
    pub snapshot: Option<PathBuf>,
    /// When the configuration in force was applied (Unix ms).
    pub applied_at_ms: u64,
    /// The last refused document, if any since start.
    pub last_error: Option<Refused>,
    /// Plugins that failed to build with the configuration in force (their previous
    /// versions, if any, keep serving).
    pub plugin_failures: BTreeMap<String, String>,
    /// The last failure to write the snapshot, if the last write failed.
    pub snapshot_error: Option<String>,
}

/// The configuration status of a node.
#[derive(Debug)]
pub struct ConfigStatus {
    view: Mutex<StatusView>,
    metrics: ConfigMetrics,
    etcd: Option<Arc<EtcdConnection>>,
}

impl ConfigStatus {
    fn new(view: StatusView, metrics: &Metrics, etcd: Option<Arc<EtcdConnection>>) -> Arc<Self> {
        metrics.config.set(view.source, view.revision);
        if view.last_error.is_some() {
            metrics.config.reload_failures.inc();
        }
        Arc::new(Self {
            view: Mutex::new(view),
            metrics: metrics.config.clone(),
            etcd,
        })
    }

    /// The status now.
    pub fn view(&self) -> StatusView {
        self.view.lock().expect("status lock").clone()
    }

    fn update(&self, f: impl FnOnce(&mut StatusView)) {
        let mut view = self.view.lock().expect("status lock");
        f(&mut view);
        self.metrics.set(view.source, view.revision);
    }

    fn refuse(&self, revision: i64, reason: String) {
        self.metrics.reload_failures.inc();
        self.update(|v| {
            v.last_error = Some(Refused {
                revision,
                reason,
                at_ms: unix_ms(),
            });
        });
    }
}

/// `GET /admin/config` (on the admin listener).
pub fn router(status: Arc<ConfigStatus>) -> Router {
    Router::new()
        .route("/admin/config", get(show))
        .with_state(status)
}

async fn show(State(status): State<Arc<ConfigStatus>>) -> Json<serde_json::Value> {
    let mut view = serde_json::to_value(status.view()).expect("status serializes");
    if let Some(etcd) = &status.etcd {
        view["etcd"] = serde_json::to_value(etcd.status()).expect("status serializes");
    }
    Json(view)
}

/// How this node gets its configuration: from its file, or from etcd (with what it needs to
/// follow it).
#[derive(Debug)]
pub struct Node {
    status: Arc<ConfigStatus>,
    follow: Option<Follow>,
}

#[derive(Debug)]
struct Follow {
    settings: ClusterConfig,
    node: Config,
    conn: Arc<EtcdConnection>,
    /// The document in force.
    document: String,
    /// The revision last refused (a resync after reconnecting shows it again: refused once).
    refused: i64,
}

impl Node {
    /// Whether the configuration comes from etcd.
    pub fn is_clustered(&self) -> bool {
        self.follow.is_some()
    }

    /// The status shown on `GET /admin/config`.
    pub fn status(&self) -> Arc<ConfigStatus> {
        self.status.clone()
    }

    /// With `[cluster]`: takes over reconfiguring the gateway (`config` is what it serves)
    /// and follows etcd until `shutdown`.
    pub fn spawn(
        self,
        proxy: Arc<Proxy>,
        config: Config,
        shutdown: CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let follow = self.follow?;
        let reconfigurer = apply::Reconfigurer::new(proxy, config, shutdown.clone());
        Some(tokio::spawn(follow.run(
            self.status,
            reconfigurer,
            shutdown,
        )))
    }
}

/// The configuration a node starts with. Without `[cluster]`: its file, as is. With it:
/// the document on etcd; when etcd is unreachable (or its document is missing or invalid),
/// the last-known-good snapshot; with neither, an error that says so.
pub async fn bootstrap(node: Config, metrics: &Metrics) -> anyhow::Result<(Config, Node)> {
    let Some(settings) = node.cluster.clone() else {
        let view = StatusView {
            source: Source::File,
            revision: 0,
            key: None,
            snapshot: None,
            applied_at_ms: unix_ms(),
            last_error: None,
            plugin_failures: BTreeMap::new(),
            snapshot_error: None,
        };
        let status = ConfigStatus::new(view, metrics, None);
        return Ok((
            node,
            Node {
                status,
                follow: None,
            },
        ));
    };
    let key = settings.key();
    let path = settings.snapshot_path();
    let conn = EtcdConnection::with_tls(
        settings.endpoints.clone(),
        settings.dial_timeout,
        settings.user(),
        settings.tls(),
    );
    let fetched = read_document(&conn, &key).await;
    let mut last_error = None;
    let why = match fetched {
        Ok(Some((revision, text))) => match parse_document(&text, &document_name(&key, revision)) {
            Ok(document) => {
                let saved = snapshot::SavedConfig {
                    revision,
                    key: key.clone(),
                    document: text.clone(),
                };
                let snapshot_error = snapshot::write(&path, &saved).err();
                if let Some(e) = &snapshot_error {
                    tracing::error!("cannot write the configuration snapshot: {e}");
                }
                tracing::info!(key, revision, "serving the cluster configuration from etcd");
                let config = merge(&node, &document);
                let status = ConfigStatus::new(
                    view(Source::Etcd, revision, &key, &path, None, snapshot_error),
                    metrics,
                    Some(conn.clone()),
                );
                let follow = Follow {
                    settings,
                    node,
                    conn,
                    document: text,
                    refused: 0,
                };
                return Ok((
                    config,
                    Node {
                        status,
                        follow: Some(follow),
                    },
                ));
            }
            Err(errors) => {
                tracing::error!(
                    key,
                    revision,
                    "the cluster configuration is invalid:\n{errors}"
                );
                last_error = Some(Refused {
                    revision,
                    reason: errors.to_string(),
                    at_ms: unix_ms(),
                });
                format!(
                    "the cluster configuration at etcd key {key} (revision {revision}) is invalid:\n{errors}\n"
                )
            }
        },
        Ok(None) => format!(
            "there is no cluster configuration at etcd key {key} (push one with `sluice config push`)"
        ),
        Err(e) => format!("etcd at {:?} is unreachable ({e})", settings.endpoints),
    };
    let saved = snapshot::read(&path)
        .map_err(|e| anyhow::anyhow!("cluster: {why}, and the snapshot cannot be read: {e}"))?
        .with_context(|| {
            format!(
                "cluster: {why}, and there is no last-known-good snapshot at {} (a node writes \
                 one when it applies a configuration from etcd): nothing to serve",
                path.display()
            )
        })?;
    let name = format!(
        "{} (snapshot of revision {})",
        path.display(),
        saved.revision
    );
    let document = parse_document(&saved.document, &name)
        .map_err(|e| anyhow::anyhow!("cluster: {why}, and the snapshot is invalid:\n{e}"))?;
    tracing::warn!(
        revision = saved.revision,
        snapshot = %path.display(),
        "serving the last-known-good configuration from the snapshot: {why}; following etcd when it answers"
    );
    let config = merge(&node, &document);
    let refused = last_error.as_ref().map_or(0, |e| e.revision);
    let status = ConfigStatus::new(
        view(
            Source::Snapshot,
            saved.revision,
            &key,
            &path,
            last_error,
            None,
        ),
        metrics,
        Some(conn.clone()),
    );
    let follow = Follow {
        settings,
        node,
        conn,
        document: saved.document,
        refused,
    };
    Ok((
        config,
        Node {
            status,
            follow: Some(follow),
        },
    ))
}

fn view(
    source: Source,
    revision: i64,
    key: &str,
    path: &std::path::Path,
    last_error: Option<Refused>,
    snapshot_error: Option<String>,
) -> StatusView {
    StatusView {
        source,
        revision,
        key: Some(key.to_owned()),
        snapshot: Some(path.to_owned()),
        applied_at_ms: unix_ms(),
        last_error,
        plugin_failures: BTreeMap::new(),
        snapshot_error,
    }
}

/// The document at `key` and its mod revision, `None` when there is none.
async fn read_document(conn: &EtcdConnection, key: &str) -> Result<Option<(i64, String)>, String> {
    let key = key.to_owned();
    conn.call(|mut client| async move {
        let response = client
            .get(key.as_str(), None)
            .await
            .map_err(|e| format!("reading {key}: {e}"))?;
        match response.kvs().first() {
            None => Ok(None),
            Some(kv) => {
                let text = std::str::from_utf8(kv.value())
                    .map_err(|_| format!("{key}: the document is not UTF-8 text"))?;
                Ok(Some((kv.mod_revision(), text.to_owned())))
            }
        }
    })
    .await
}

/// What the watch saw last at the document's key.
#[derive(Debug, Clone)]
enum Seen {
    Put { revision: i64, text: Vec<u8> },
    Deleted { revision: i64 },
}

/// Feeds the document's key from [`crate::etcd::mirror`] into a channel (latest wins).
struct DocumentMirror(tokio::sync::watch::Sender<Option<Seen>>);

impl crate::etcd::Mirror for DocumentMirror {
    fn reset(&self, entries: Vec<(String, Vec<u8>, i64)>) {
        let seen = match entries.into_iter().find(|(key, _, _)| key.is_empty()) {
            Some((_, text, revision)) => Seen::Put { revision, text },
            None => Seen::Deleted { revision: 0 },
        };
        self.0.send_replace(Some(seen));
    }

    fn change(&self, key: &str, value: Option<&[u8]>, revision: i64) {
        if !key.is_empty() {
            return; // another key that starts with the document's
        }
        let seen = match value {
            Some(text) => Seen::Put {
                revision,
                text: text.to_vec(),
            },
            None => Seen::Deleted { revision },
        };
        self.0.send_replace(Some(seen));
    }
}

impl Follow {
    async fn run(
        mut self,
        status: Arc<ConfigStatus>,
        reconfigurer: apply::Reconfigurer,
        shutdown: CancellationToken,
    ) {
        let key = self.settings.key();
        let (tx, mut rx) = tokio::sync::watch::channel(None);
        let mirror = tokio::spawn(crate::etcd::mirror(
            self.conn.clone(),
            key.clone(),
            Arc::new(DocumentMirror(tx)),
            shutdown.clone(),
        ));
        let mut missing = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                changed = rx.changed() => if changed.is_err() { break },
            }
            let seen = rx.borrow_and_update().clone();
            match seen {
                None => {}
                // Reported once, not again at each resync that still finds no document.
                Some(Seen::Deleted { .. }) if missing => {}
                Some(Seen::Deleted { revision }) => {
                    missing = true;
                    let current = status.view().revision;
                    let reason = format!(
                        "there is no cluster configuration at etcd key {key} (deleted?); keeping revision {current}"
                    );
                    tracing::error!("{reason}");
                    status.refuse(revision, reason);
                }
                Some(Seen::Put { revision, text }) => {
                    missing = false;
                    self.consider(&key, revision, text, &status, &reconfigurer)
                        .await;
                }
            }
        }
        let _ = mirror.await;
    }

    /// Applies a version of the document seen on etcd, or refuses it.
    async fn consider(
        &mut self,
        key: &str,
        revision: i64,
        text: Vec<u8>,
        status: &ConfigStatus,
        reconfigurer: &apply::Reconfigurer,
    ) {
        let Ok(text) = String::from_utf8(text) else {
            let reason = format!(
                "{}: the document is not UTF-8 text",
                document_name(key, revision)
            );
            tracing::error!("cluster configuration refused: {reason}");
            status.refuse(revision, reason);
            return;
        };
        let before = status.view();
        if revision == self.refused {
            return;
        }
        if text == self.document {
            // The same document (a resync, or etcd back after serving the snapshot).
            if before.source != Source::Etcd || before.revision != revision {
                tracing::info!(key, revision, "following the cluster configuration on etcd");
                status.update(|v| {
                    v.source = Source::Etcd;
                    v.revision = revision;
                });
                self.save(key, revision, status).await;
            }
            return;
        }
        let document = match parse_document(&text, &document_name(key, revision)) {
            Ok(d) => d,
            Err(errors) => {
                tracing::error!(
                    key,
                    revision,
                    serving = before.revision,
                    "cluster configuration refused; the previous one keeps serving:\n{errors}"
                );
                status.refuse(revision, errors.to_string());
                self.refused = revision;
                return;
            }
        };
        let report = reconfigurer.apply(&merge(&self.node, &document)).await;
        if !report.failed.is_empty() {
            tracing::warn!(failed = ?report.failed, "plugins that failed keep their previous version");
        }
        tracing::info!(
            key,
            revision,
            previous = before.revision,
            routes = document.routes.len(),
            services = document.services.len(),
            "cluster configuration applied"
        );
        self.document = text;
        status.update(|v| {
            v.source = Source::Etcd;
            v.revision = revision;
            v.applied_at_ms = unix_ms();
            v.plugin_failures = report.failed.clone();
        });
        self.save(key, revision, status).await;
    }

    /// Writes the document in force to the snapshot (off the event loop).
    async fn save(&self, key: &str, revision: i64, status: &ConfigStatus) {
        let path = self.settings.snapshot_path();
        let saved = snapshot::SavedConfig {
            revision,
            key: key.to_owned(),
            document: self.document.clone(),
        };
        let written = tokio::task::spawn_blocking(move || snapshot::write(&path, &saved))
            .await
            .unwrap_or_else(|e| Err(format!("the snapshot writer panicked: {e}")));
        if let Err(e) = &written {
            tracing::error!("cannot write the configuration snapshot: {e}");
        }
        status.update(|v| v.snapshot_error = written.err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_document_holds_only_shared_keys_and_is_validated_like_a_file() {
        let ok = "[services.a]\ninstances = [\"127.0.0.1:1\"]\n[[routes]]\npath = \"/a\"\nservice = \"a\"\n\
                  [plugins.defaults]\ntimeout = \"2s\"\n[plugin.auth]\nx = 1\n";
        let doc = parse_document(ok, "etcd:/k@1").unwrap();
        assert_eq!(doc.routes.len(), 1);

        let e = parse_document(
            "[server]\nworkers = 2\n[plugins]\ndir = \"p\"\n",
            "etcd:/k@2",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("etcd:/k@2: server: is per node"), "{e}");
        assert!(e.contains("etcd:/k@2: plugins.dir: is per node"), "{e}");
        // The keys a node trusts for signed plugins are its own: etcd cannot replace them.
        let e = parse_document("[plugins]\ntrusted_keys = []\n", "etcd:/k@4")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("etcd:/k@4: plugins.trusted_keys: is per node"),
            "{e}"
        );

        let e = parse_document(
            "[[routes]]\npath = \"/a\"\nservice = \"nope\"\n",
            "etcd:/k@3",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "etcd:/k@3:3:11: routes[0].service: no service named `nope` (no services are defined)"
        );
    }

    #[test]
    fn a_node_file_with_cluster_refuses_shared_keys() {
        let e = Config::parse(
            "[cluster]\nbackend = \"etcd\"\nprefix = \"x\"\n[services.a]\n[plugins.defaults]\ntimeout = \"1s\"\n",
            "node.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("node.toml: cluster.prefix: `x` must start and end with `/`"),
            "{e}"
        );
        assert!(e.contains("node.toml: services: with [cluster]"), "{e}");
        assert!(
            e.contains("node.toml: plugins.defaults: with [cluster]"),
            "{e}"
        );
        let ok = Config::parse(
            "[cluster]\nbackend = \"etcd\"\n[plugins]\ndir = \"p\"\n",
            "node.toml",
        )
        .unwrap();
        let cluster = ok.cluster.unwrap();
        assert_eq!(cluster.key(), "/sluice/cluster/config");
        assert_eq!(cluster.endpoints, ["127.0.0.1:2379"]);
    }

    #[test]
    fn merge_takes_shared_parts_from_the_document_and_keeps_the_node_ones() {
        let node = Config::parse(
            "[server]\nworkers = 3\n[cluster]\nbackend = \"etcd\"\n[plugins]\ndir = \"p\"\n",
            "node",
        )
        .unwrap();
        let doc = parse_document(
            "[services.a]\n[resolver]\nenabled = true\n[plugins.override.x]\ntimeout = \"3s\"\n",
            "doc",
        )
        .unwrap();
        let merged = merge(&node, &doc);
        assert_eq!(merged.server.workers, 3);
        assert_eq!(
            merged.plugins.dir.as_deref(),
            Some(std::path::Path::new("p"))
        );
        assert!(merged.resolver.enabled);
        assert!(merged.services.contains_key("a"));
        assert_eq!(
            merged.plugins.settings_for("x").timeout,
            Duration::from_secs(3)
        );
    }
}
