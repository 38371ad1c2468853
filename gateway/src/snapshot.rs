//! One consistent view of routes. Each request loads the current snapshot once, so a reload
//! in the middle of a request never mixes two versions. (Services live in the registry,
//! which changes as instances register and expire.)

use crate::config::Config;
use crate::metrics::Metrics;
use crate::routing::RouteTable;

/// Routes as of one load of the config.
#[derive(Debug)]
pub struct Snapshot {
    /// Routes in match order.
    pub routes: RouteTable,
}

impl Snapshot {
    /// Builds a snapshot from a validated config.
    pub fn from_config(config: &Config, metrics: &Metrics) -> Self {
        Self {
            routes: RouteTable::from_config(config, metrics),
        }
    }
}
