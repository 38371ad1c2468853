//! Applying a new configuration to a running gateway: the parts a cluster shares (routes,
//! services and their policies, the resolver, plugin settings) are replaced; the per-node ones
//! (listeners, admin, cache directories, log, registry and kv backends) stay as they started.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::plugin::ReloadReport;
use crate::proxy::Proxy;
use crate::snapshot::Snapshot;
use crate::upstream::Service;

/// Applies configurations to one gateway, one at a time, and runs the active health checks
/// of the services they define.
#[derive(Debug)]
pub struct Reconfigurer {
    proxy: Arc<Proxy>,
    /// The configuration in force; held across a whole apply so applies never interleave.
    current: tokio::sync::Mutex<Config>,
    /// The active health checks running, by service.
    checks: std::sync::Mutex<HashMap<Arc<str>, CancellationToken>>,
    shutdown: CancellationToken,
}

impl Reconfigurer {
    /// Takes over a gateway serving `config`, and starts the active health checks of its
    /// services (they stop at `shutdown`, or when their service is replaced).
    pub fn new(proxy: Arc<Proxy>, config: Config, shutdown: CancellationToken) -> Self {
        let this = Self {
            proxy,
            current: tokio::sync::Mutex::new(config),
            checks: std::sync::Mutex::default(),
            shutdown,
        };
        for service in this.proxy.registry.services() {
            this.start_checks(&service);
        }
        this
    }

    /// Applies the cluster-scoped parts of `new` (validated in full by the caller) and
    /// returns what became of the plugins. In order: plugin settings (each changed plugin is
    /// rebuilt and swapped in; one that fails keeps its previous version), then services (one
    /// swap), then routes and resolver (one swap). Requests in flight keep the snapshot, the
    /// services and the plugin versions they started with.
    pub async fn apply(&self, new: &Config) -> ReloadReport {
        let mut current = self.current.lock().await;
        let mut next = current.clone();
        next.routes = new.routes.clone();
        next.services = new.services.clone();
        next.resolver = new.resolver.clone();
        next.plugin = new.plugin.clone();
        next.plugins.defaults = new.plugins.defaults.clone();
        next.plugins.overrides = new.plugins.overrides.clone();
        next.plugins.sources = new.plugins.sources.clone();

        let report = crate::plugin::reconfigure(&self.proxy.plugins, &next).await;
        let built = self.proxy.registry.reconfigure(&next.services, |name| {
            current.services.get(name) != next.services.get(name)
        });
        {
            let mut checks = self.checks.lock().expect("checks lock");
            checks.retain(|name, token| {
                let keep =
                    next.services.contains_key(&**name) && !built.iter().any(|s| &s.name == name);
                if !keep {
                    token.cancel();
                }
                keep
            });
        }
        for service in &built {
            self.start_checks(service);
        }
        self.proxy
            .snapshot
            .store(Arc::new(Snapshot::from_config(&next, &self.proxy.metrics)));
        *current = next;
        report
    }

    fn start_checks(&self, service: &Arc<Service>) {
        let Some(active) = &service.active else {
            return;
        };
        let token = self.shutdown.child_token();
        drop(crate::upstream::health::spawn_active_checks(
            service.clone(),
            active.clone(),
            token.clone(),
        ));
        if let Some(old) = self
            .checks
            .lock()
            .expect("checks lock")
            .insert(service.name.clone(), token)
        {
            old.cancel();
        }
    }
}
