//! One consistent view of routes and services. Each request loads the current snapshot once,
//! so a reload in the middle of a request never mixes two versions.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::routing::RouteTable;
use crate::upstream::Service;

/// Routes and services as of one load of the config.
#[derive(Debug)]
pub struct Snapshot {
    /// Routes in match order.
    pub routes: RouteTable,
    /// Services by name.
    pub services: HashMap<Arc<str>, Arc<Service>>,
}

impl Snapshot {
    /// Builds a snapshot from a validated config.
    pub fn from_config(config: &Config, metrics: &Metrics) -> Self {
        let workers = match config.server.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let services = config
            .services
            .iter()
            .map(|(name, svc)| {
                (
                    Arc::from(name.as_str()),
                    Arc::new(Service::from_config(name, svc, workers)),
                )
            })
            .collect();
        Self {
            routes: RouteTable::from_config(config, metrics),
            services,
        }
    }
}
