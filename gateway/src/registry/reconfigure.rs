//! Replacing the configured services at run time (a new cluster configuration, see
//! `cluster`): a service whose `[services.NAME]` changed is rebuilt with its static instances
//! and whatever is registered under its name; the others are kept as they are (instance
//! health, pooled connections, retry budget).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::{Registration, Registry};
use crate::config::ServiceConfig;
use crate::upstream::{EndpointSpec, Service, Source, static_specs};

impl Registry {
    /// Makes `services` the configured services, in one swap: a request sees the old set or
    /// the new one. `changed(name)` says whether a service that exists already is configured
    /// differently now (it is then rebuilt, and its instances' health and connections start
    /// over). A service no longer configured stays while instances are registered under its
    /// name, as registration alone would have made it. Returns the services built anew (their
    /// active health checks are the caller's to start).
    pub fn reconfigure(
        &self,
        services: &BTreeMap<String, ServiceConfig>,
        changed: impl Fn(&str) -> bool,
    ) -> Vec<Arc<Service>> {
        // Held throughout, so no registration or expiry interleaves with the swap.
        let registered = self.registered.lock().expect("registry lock");
        let statics: HashMap<Arc<str>, Vec<EndpointSpec>> = services
            .iter()
            .map(|(name, config)| (Arc::from(name.as_str()), static_specs(config)))
            .collect();
        let current = self.services.load_full();
        let mut next = HashMap::new();
        let mut built = Vec::new();
        for (name, config) in services {
            let name: Arc<str> = Arc::from(name.as_str());
            match current.get(&name) {
                Some(kept) if kept.configured && !changed(&name) => {
                    next.insert(name, kept.clone());
                }
                _ => {
                    let service = Arc::new(Service::new(
                        &name,
                        config,
                        self.workers,
                        true,
                        self.metrics.service(&name),
                    ));
                    service.set_endpoints(&specs(statics.get(&name), registered.get(&name)));
                    built.push(service.clone());
                    next.insert(name, service);
                }
            }
        }
        for (name, service) in current.iter() {
            if next.contains_key(name) {
                continue;
            }
            if !service.configured {
                next.insert(name.clone(), service.clone());
                continue;
            }
            if let Some(instances) = registered.get(name).filter(|i| !i.is_empty()) {
                let service = Arc::new(Service::new(
                    name,
                    &ServiceConfig::default(),
                    self.workers,
                    false,
                    self.metrics.service(name),
                ));
                service.set_endpoints(&specs(None, Some(instances)));
                next.insert(name.clone(), service);
            }
        }
        self.statics.store(Arc::new(statics));
        self.services.store(Arc::new(next));
        built
    }
}

/// A service's instances: its static ones, then the registered ones (as `Registry::apply`).
fn specs(
    statics: Option<&Vec<EndpointSpec>>,
    registered: Option<&BTreeMap<Arc<str>, Registration>>,
) -> Vec<EndpointSpec> {
    let mut specs = statics.cloned().unwrap_or_default();
    specs.extend(
        registered
            .into_iter()
            .flatten()
            .map(|(id, r)| EndpointSpec {
                id: id.clone(),
                address: Arc::from(r.request.address.as_str()),
                weight: r.request.weight,
                metadata: r.request.metadata.clone(),
                source: Source::Registered,
                expires_at: r.expires_at,
            }),
    );
    specs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;

    #[test]
    fn unchanged_services_are_kept_changed_ones_rebuilt_and_gone_ones_dropped() {
        let old = Config::parse(
            "[services.a]\ninstances = [\"127.0.0.1:1\"]\n[services.b]\ninstances = [\"127.0.0.1:2\"]\n[services.c]\n",
            "old",
        )
        .unwrap();
        let registry = Registry::new(&old, Arc::new(Metrics::new()), None);
        let a = registry.service("a").unwrap();
        let new = Config::parse(
            "[services.a]\ninstances = [\"127.0.0.1:1\"]\n[services.b]\ninstances = [\"127.0.0.1:3\"]\n[services.d]\ninstances = [\"127.0.0.1:4\"]\n",
            "new",
        )
        .unwrap();
        let built = registry.reconfigure(&new.services, |name| {
            old.services.get(name) != new.services.get(name)
        });
        let names: Vec<&str> = built.iter().map(|s| &*s.name).collect();
        assert_eq!(names, ["b", "d"]);
        assert!(Arc::ptr_eq(&a, &registry.service("a").unwrap()), "a kept");
        let b = registry.service("b").unwrap().endpoints();
        assert_eq!(&*b.endpoints[0].address, "127.0.0.1:3");
        assert!(registry.service("c").is_none());
        assert_eq!(
            registry.service("d").unwrap().endpoints().endpoints.len(),
            1
        );
    }

    #[test]
    fn a_service_dropped_from_the_config_keeps_its_registered_instances() {
        let old = Config::parse("[services.a]\ninstances = [\"127.0.0.1:1\"]\n", "old").unwrap();
        let registry = Registry::new(&old, Arc::new(Metrics::new()), None);
        registry.register_at(
            "a",
            "r1",
            super::super::RegisterRequest {
                address: "127.0.0.1:9".into(),
                ttl: None,
                metadata: BTreeMap::new(),
                weight: 1,
            },
            std::time::Duration::from_secs(60),
            1,
        );
        registry.reconfigure(&BTreeMap::new(), |_| true);
        let a = registry.service("a").expect("kept for its registration");
        assert!(!a.configured);
        let set = a.endpoints();
        assert_eq!(set.endpoints.len(), 1);
        assert_eq!(&*set.endpoints[0].address, "127.0.0.1:9");
    }
}
