//! Sluice: an API gateway whose request plugins are sandboxed WebAssembly components.
//!
//! The binary (`main.rs`) parses the command line and calls [`Gateway::start`]; tests start the
//! gateway the same way, in-process, on `127.0.0.1:0`.

#![forbid(unsafe_code)]

pub(crate) mod admin;
pub mod admin_auth;
pub mod body;
pub mod chain;
pub mod cluster;
pub mod config;
pub(crate) mod conn;
pub(crate) mod demo;
pub(crate) mod edge;
pub(crate) mod error;
pub mod etcd;
pub(crate) mod grpc;
pub(crate) mod headers;
pub mod hystrix;
pub mod logging;
pub mod metrics;
/// The canonical-path algorithm (the runtime's: `set-path` canonicalises like the edge).
pub(crate) use sluice_plugin_host::path;
pub mod plugin;
pub(crate) mod proxy;
pub(crate) mod registry;
pub(crate) mod routing;
pub mod scaffold;
pub mod server;
pub(crate) mod snapshot;
pub(crate) mod telemetry;
pub(crate) mod tls;
pub(crate) mod upstream;
pub(crate) mod websocket;

/// The clocks (a leaf module the plugin runtime owns; the gateway reads the same monotonic
/// origin).
pub(crate) use sluice_plugin_host::clock;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::plugin::PluginRuntime;
use crate::proxy::Proxy;
use crate::registry::Registry;
use crate::snapshot::Snapshot;

/// A running gateway: its bound addresses and the handle to stop it.
#[derive(Debug)]
pub struct Gateway {
    /// The data-plane address actually bound (the port is real even when 0 was asked).
    pub listen_addr: SocketAddr,
    /// The admin listener's address.
    pub admin_addr: SocketAddr,
    /// The TLS listener's address, when `[server.tls]` is set.
    pub tls_addr: Option<SocketAddr>,
    /// The demo upstream's address, when `[demo_upstream]` is set.
    pub demo_addr: Option<SocketAddr>,
    /// Shared request-handling state (routes, services, metrics).
    pub proxy: Arc<Proxy>,
    shutdown: CancellationToken,
    workers: Vec<std::thread::JoinHandle<()>>,
    control_tasks: Vec<tokio::task::JoinHandle<()>>,
    telemetry: Option<telemetry::exporter::ExportTask>,
}

impl Gateway {
    /// Binds every listener and starts serving. Must be called inside a Tokio runtime (the
    /// control runtime, which runs the admin listener); data-plane workers get their own
    /// threads.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        // Refused before anything is bound: an admin listener open to others without a token.
        let admin_auth = Arc::new(admin_auth::AdminAuth::from_config(&config)?);
        let shutdown = CancellationToken::new();
        let mut control_tasks = Vec::new();

        let demo_addr = match &config.demo_upstream {
            Some(demo) => {
                let listener = tokio::net::TcpListener::bind(demo.listen)
                    .await
                    .with_context(|| {
                        format!("demo_upstream.listen: cannot bind {}", demo.listen)
                    })?;
                let addr = listener.local_addr()?;
                control_tasks.push(serve_axum(listener, demo::router(), shutdown.clone()));
                Some(addr)
            }
            None => None,
        };

        let metrics = Arc::new(Metrics::new());
        // With `[cluster]`, the shared parts come from etcd (or the last-known-good snapshot).
        let (config, node) = cluster::bootstrap(config, &metrics).await?;
        let plugins = Arc::new(plugin::runtime(&config, metrics.plugins.clone())?);
        let report = plugins.reload().await;
        if !report.loaded.is_empty() || !report.failed.is_empty() {
            tracing::info!(loaded = ?report.loaded, failed = ?report.failed, "plugins loaded");
        }
        if plugins.dir().is_some() && config.plugins.watch {
            let watcher = plugin::watcher::spawn(plugins.clone(), shutdown.clone())
                .context("plugins.dir: cannot watch the plugin directory")?;
            control_tasks.push(watcher);
        }
        warn_about_missing_plugins(&config, &plugins);
        control_tasks.push(spawn_state_sweeper(plugins.clone(), shutdown.clone()));

        // One etcd connection for everything kept there (registry, kv).
        let uses_etcd = config.registry.backend == config::RegistryBackend::Etcd
            || config.kv.backend == config::KvBackend::Etcd;
        let etcd = uses_etcd.then(|| {
            etcd::EtcdConnection::new(
                config.registry.endpoints.clone(),
                config.registry.dial_timeout,
            )
        });
        if let Some(conn) = etcd
            .clone()
            .filter(|_| config.kv.backend == config::KvBackend::Etcd)
        {
            let kv = plugins.kv().clone();
            kv.attach_remote(Box::new(plugin::kv::EtcdKv::new(
                conn.clone(),
                config.kv.prefix.clone(),
            )));
            control_tasks.push(tokio::spawn(etcd::mirror(
                conn,
                config.kv.prefix.clone(),
                Arc::new(plugin::kv::KvMirror(kv)),
                shutdown.clone(),
            )));
        }
        let registry = Registry::new(&config, metrics.clone(), etcd);
        control_tasks.push(registry.spawn(shutdown.clone()));
        // A clustered node's checks follow its services as they change (`cluster::apply`).
        for service in registry.services().iter().filter(|_| !node.is_clustered()) {
            if let Some(active) = &service.active {
                control_tasks.push(upstream::health::spawn_active_checks(
                    service.clone(),
                    active.clone(),
                    shutdown.clone(),
                ));
            }
        }

        let _ = metrics
            .breaker_state
            .set(plugins.shared_state(hystrix::PLUGIN));
        let hystrix_hub = hystrix::Hub::new(
            plugins.shared_state(hystrix::PLUGIN),
            config.server.hystrix_stream_max_clients,
        );
        let (telemetry, telemetry_task) = match &config.telemetry {
            Some(t) => {
                let (handle, task) = telemetry::exporter::start(t, metrics.telemetry.clone())?;
                (Some(handle), Some(task))
            }
            None => (None, None),
        };
        let proxy = Arc::new(Proxy {
            snapshot: ArcSwap::from_pointee(Snapshot::from_config(&config, &metrics)),
            registry,
            unmatched: metrics.route(&metrics::RouteName::unmatched()),
            plugins,
            metrics,
            max_body_bytes: config.server.max_body_bytes,
            access_log: config.log.access,
            telemetry,
            edge: edge::EdgePolicy::from(&config.server),
            websocket: config.server.websocket.clone(),
        });

        // The data listeners are bound before the admin listener: once the admin port
        // answers (what orchestrators and tests wait for), a client's connection to the
        // data port is accepted too, at worst waiting in the backlog for the workers.
        let workers = match config.server.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let listeners = server::bind_reuseport(config.server.listen, workers)
            .with_context(|| format!("server.listen: cannot bind {}", config.server.listen))?;
        let listen_addr = listeners[0].local_addr()?;
        let (tls, tls_addr) = match &config.server.tls {
            Some(tls_config) => {
                let tls = tls::Tls::new(tls_config, config.server.http2.enabled)?;
                if tls_config.watch {
                    control_tasks.push(tls.watch(tls_config, shutdown.clone())?);
                }
                let listeners = server::bind_reuseport(tls_config.listen, listeners.len())
                    .with_context(|| {
                        format!("server.tls.listen: cannot bind {}", tls_config.listen)
                    })?;
                let addr = listeners[0].local_addr()?;
                (Some((listeners, tls)), Some(addr))
            }
            None => (None, None),
        };
        let admin_listener = tokio::net::TcpListener::bind(config.server.admin)
            .await
            .with_context(|| format!("server.admin: cannot bind {}", config.server.admin))?;
        let admin_addr = admin_listener.local_addr()?;
        // Plugins' outbound HTTP refuses the admin port (unless pinned in allowed_hosts).
        proxy.plugins.set_admin_addr(admin_addr);
        control_tasks.push(serve_axum(
            admin_listener,
            admin::router(proxy.clone())
                .merge(hystrix::router(hystrix_hub))
                .merge(cluster::router(node.status()))
                .layer(axum::middleware::from_fn_with_state(
                    admin_auth,
                    admin_auth::require,
                )),
            shutdown.clone(),
        ));
        control_tasks.extend(node.spawn(proxy.clone(), config.clone(), shutdown.clone()));

        proxy.registry.policy.set_own(&[listen_addr, admin_addr]);
        let workers = server::spawn_workers(
            listeners,
            tls,
            proxy.clone(),
            server::EdgeLimits::from(&config.server),
            shutdown.clone(),
        )?;
        // From here a plugin compile would compete with requests: it goes to the background.
        proxy.plugins.begin_serving();
        tracing::info!(%listen_addr, ?tls_addr, %admin_addr, workers = workers.len(), "sluice is serving");
        Ok(Self {
            listen_addr,
            admin_addr,
            tls_addr,
            demo_addr,
            proxy,
            shutdown,
            workers,
            control_tasks,
            telemetry: telemetry_task,
        })
    }

    /// Stops accepting, lets in-flight requests finish (up to `server.shutdown_timeout`),
    /// exports the spans still queued (up to `telemetry.shutdown_timeout`), then returns.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let workers = self.workers;
        let _ = tokio::task::spawn_blocking(move || {
            for worker in workers {
                let _ = worker.join();
            }
        })
        .await;
        for task in self.control_tasks {
            let _ = task.await;
        }
        if let Some(telemetry) = self.telemetry {
            telemetry.shutdown().await;
        }
        tracing::info!("sluice stopped");
    }
}

/// A route naming a plugin that is not loaded fails its requests as that plugin's failure
/// policy says; say so at start-up rather than at the first request.
fn warn_about_missing_plugins(config: &Config, plugins: &PluginRuntime) {
    let set = plugins.current();
    if config.telemetry.is_none()
        && config
            .routes
            .iter()
            .any(|r| r.plugins.iter().any(|p| p.get_ref() == "tracing"))
    {
        tracing::warn!(
            "a route runs the tracing plugin but [telemetry] is not set: no traces are exported"
        );
    }
    for route in &config.routes {
        for entry in &route.plugins {
            for name in plugin::canary::names(entry.get_ref()) {
                if set.get(name).is_none() {
                    tracing::warn!(
                        route = route.name.as_deref().unwrap_or(route.path.get_ref()),
                        plugin = name,
                        "route names a plugin that is not loaded"
                    );
                }
            }
        }
    }
}

/// Drops expired shared-state entries now and then.
fn spawn_state_sweeper(
    plugins: Arc<PluginRuntime>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => plugins.sweep_state(),
            }
        }
    })
}

fn serve_axum(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!("admin listener failed: {e}");
        }
    })
}
