//! One consistent view of routes and the resolver. Each request loads the current snapshot
//! once, so a reload in the middle of a request never mixes two versions. (Services live in the registry,
//! which changes as instances register and expire.)

use crate::config::Config;
use crate::metrics::Metrics;
use crate::routing::{Resolver, RouteTable};

/// Routes (and routing by service name) as of one load of the config.
#[derive(Debug)]
pub struct Snapshot {
    /// Routes in match order.
    pub routes: RouteTable,
    /// Routing by service name, when `[resolver]` enables it.
    pub resolver: Option<Resolver>,
}

impl Snapshot {
    /// Builds a snapshot from a validated config.
    pub fn from_config(config: &Config, metrics: &Metrics) -> Self {
        Self {
            routes: RouteTable::from_config(config, metrics),
            resolver: Resolver::from_config(&config.resolver),
        }
    }
}
