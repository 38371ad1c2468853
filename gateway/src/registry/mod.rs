//! The service registry: every service's instances, static ones from the config plus the
//! ones registered through the admin API with a TTL. Registrations are kept in process
//! (`embedded`) or in etcd under leases (`etcd`, see `etcd.rs`), where every gateway watching
//! the same prefix sees the same instances.
//!
//! The request path only ever reads [`Registry::service`] (one atomic load and a map lookup);
//! registration, expiry and etcd events rebuild a service's instance set off that path.

pub mod etcd;
pub mod policy;
mod reconfigure;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::clock::monotonic_ns;
use crate::config::{Config, RegistryBackend, RegistryConfig, ServiceConfig};
use crate::etcd::{EtcdConnection, EtcdStatus};
use crate::metrics::Metrics;
use crate::upstream::{EndpointSpec, Service, ServiceView, Source, static_specs};

/// A service name accepted by the registry (the same rule as `[services.NAME]`).
pub use crate::config::check_service_name;

/// The body of `PUT /registry/services/{service}/instances/{id}`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// `host:port`.
    pub address: String,
    /// `"15s"`; the registry's `default_ttl` when absent.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// Free-form labels.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Relative share of traffic (1..=1000).
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// One registered instance, as the backend holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// What was registered.
    pub request: RegisterRequest,
    /// The TTL in force.
    pub ttl: Duration,
    /// Monotonic ns when it expires (embedded backend; 0 with etcd, whose leases expire it).
    pub expires_at: u64,
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The request was malformed.
    #[error("{0}")]
    Invalid(String),
    /// etcd could not be reached or refused the operation.
    #[error("registry backend etcd is unavailable: {0}")]
    Unavailable(String),
}

/// What `GET /registry/services` says about the backend.
#[derive(Debug, Clone, Serialize)]
pub struct BackendStatus {
    /// `embedded` or `etcd`.
    pub backend: RegistryBackend,
    /// Whether it is reachable (always true for `embedded`), and since when not.
    #[serde(flatten)]
    pub status: EtcdStatus,
}

/// Registered instances by service, then by id.
pub(crate) type Registrations = HashMap<Arc<str>, BTreeMap<Arc<str>, Registration>>;

/// Services and their instances.
#[derive(Debug)]
pub struct Registry {
    services: ArcSwap<HashMap<Arc<str>, Arc<Service>>>,
    /// Registered instances by service and id.
    registered: Mutex<Registrations>,
    /// Static instances of configured services (swapped by `reconfigure`).
    statics: ArcSwap<HashMap<Arc<str>, Vec<EndpointSpec>>>,
    config: RegistryConfig,
    workers: usize,
    metrics: Arc<Metrics>,
    etcd: Option<etcd::EtcdBackend>,
    /// Which addresses registrations may have.
    pub policy: policy::AddressPolicy,
}

impl Registry {
    /// The registry of a validated config: its services with their static instances. With
    /// the etcd backend, `etcd` is the connection to use.
    pub fn new(
        config: &Config,
        metrics: Arc<Metrics>,
        etcd: Option<Arc<EtcdConnection>>,
    ) -> Arc<Self> {
        let workers = match config.server.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut services = HashMap::new();
        let mut statics = HashMap::new();
        for (name, svc) in &config.services {
            let name: Arc<str> = Arc::from(name.as_str());
            let service = Service::new(&name, svc, workers, true, metrics.service(&name));
            statics.insert(name.clone(), static_specs(svc));
            services.insert(name, Arc::new(service));
        }
        // etcd counts as connected once its first read succeeds.
        metrics.registry_connected.set(i64::from(
            config.registry.backend == RegistryBackend::Embedded,
        ));
        Arc::new(Self {
            services: ArcSwap::from_pointee(services),
            registered: Mutex::default(),
            statics: ArcSwap::from_pointee(statics),
            etcd: etcd
                .filter(|_| config.registry.backend == RegistryBackend::Etcd)
                .map(|conn| etcd::EtcdBackend {
                    conn,
                    prefix: config.registry.prefix.clone(),
                }),
            config: config.registry.clone(),
            workers,
            metrics,
            policy: policy::AddressPolicy::new(config),
        })
    }

    /// Starts what keeps the registry current: expiry of TTLs (embedded) or the etcd watch.
    pub fn spawn(self: &Arc<Self>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        match &self.etcd {
            Some(backend) => tokio::spawn(crate::etcd::mirror(
                backend.conn.clone(),
                backend.prefix.clone(),
                Arc::new(etcd::RegistryMirror(self.clone())),
                shutdown,
            )),
            None => {
                let registry = self.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_millis(250));
                    loop {
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            _ = tick.tick() => registry.expire(monotonic_ns()),
                        }
                    }
                })
            }
        }
    }

    /// A service by name.
    pub fn service(&self, name: &str) -> Option<Arc<Service>> {
        self.services.load().get(name).cloned()
    }

    /// Every service, sorted by name.
    pub fn services(&self) -> Vec<Arc<Service>> {
        let mut all: Vec<_> = self.services.load().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The backend's state.
    pub fn status(&self) -> BackendStatus {
        match &self.etcd {
            Some(etcd) => BackendStatus {
                backend: RegistryBackend::Etcd,
                status: etcd.conn.status(),
            },
            None => BackendStatus {
                backend: RegistryBackend::Embedded,
                status: EtcdStatus {
                    connected: true,
                    last_error: None,
                    disconnected_for_s: None,
                },
            },
        }
    }

    /// Registers or renews an instance.
    pub async fn register(
        &self,
        service: &str,
        id: &str,
        request: RegisterRequest,
    ) -> Result<Registration, RegistryError> {
        check_service_name(service).map_err(|e| RegistryError::Invalid(format!("service: {e}")))?;
        check_instance_id(id)?;
        crate::config::check_authority(&request.address)
            .map_err(|e| RegistryError::Invalid(format!("address: {e}")))?;
        self.policy
            .check_resolved(&request.address)
            .await
            .map_err(|e| RegistryError::Invalid(format!("address: {e}")))?;
        if !(1..=1000).contains(&request.weight) {
            return Err(RegistryError::Invalid(format!(
                "weight: {} is outside 1..=1000",
                request.weight
            )));
        }
        let ttl = request.ttl.unwrap_or(self.config.default_ttl);
        if ttl < Duration::from_secs(1) || ttl > self.config.max_ttl {
            return Err(RegistryError::Invalid(format!(
                "ttl: {} must be between 1s and {} (registry.max_ttl)",
                humantime::format_duration(ttl),
                humantime::format_duration(self.config.max_ttl)
            )));
        }
        match &self.etcd {
            Some(etcd) => etcd.register(service, id, &request, ttl).await,
            None => Ok(self.register_at(service, id, request, ttl, monotonic_ns())),
        }
    }

    /// Embedded registration at `now` (ns): the instance takes traffic until `now + ttl`.
    pub fn register_at(
        &self,
        service: &str,
        id: &str,
        request: RegisterRequest,
        ttl: Duration,
        now: u64,
    ) -> Registration {
        let registration = Registration {
            request,
            ttl,
            expires_at: now + ttl.as_nanos() as u64,
        };
        if self.put(service, id, Some(registration.clone())).is_none() {
            tracing::info!(
                service,
                id,
                address = registration.request.address.as_str(),
                ttl = %humantime::format_duration(ttl),
                "instance registered"
            );
        }
        registration
    }

    /// Deregisters an instance; whether it was registered.
    pub async fn deregister(&self, service: &str, id: &str) -> Result<bool, RegistryError> {
        match &self.etcd {
            Some(etcd) => etcd.deregister(service, id).await,
            None => Ok(self.remove(service, id)),
        }
    }

    fn remove(&self, service: &str, id: &str) -> bool {
        let removed = self.put(service, id, None).is_some();
        if removed {
            tracing::info!(service, id, "instance deregistered");
        }
        removed
    }

    /// Drops embedded registrations whose TTL ran out by `now` (ns). (Picks already skip
    /// them from the moment they expire; this removes them.)
    pub fn expire(&self, now: u64) {
        let mut registered = self.registered.lock().expect("registry lock");
        for (service, instances) in registered.iter_mut() {
            let before = instances.len();
            instances.retain(|id, r| {
                let live = r.expires_at == 0 || now < r.expires_at;
                if !live {
                    tracing::warn!(
                        service = &**service,
                        id = &**id,
                        address = r.request.address.as_str(),
                        "registration expired (not renewed within its TTL)"
                    );
                }
                live
            });
            if instances.len() != before {
                self.apply(service, instances);
            }
        }
    }

    /// Replaces every registration of every service (an etcd resync).
    fn replace_all(&self, all: Registrations) {
        let mut registered = self.registered.lock().expect("registry lock");
        let mut names: Vec<Arc<str>> = registered.keys().cloned().collect();
        names.extend(all.keys().cloned());
        names.sort();
        names.dedup();
        *registered = all;
        for name in names {
            let instances = registered.entry(name.clone()).or_default();
            self.apply(&name, instances);
        }
    }

    /// Registers, renews or (with `None`) removes one instance, rebuilding the service when
    /// that changed anything; the registration it replaced, if any. Used by the embedded
    /// backend and for etcd's watch events alike.
    fn put(
        &self,
        service: &str,
        id: &str,
        registration: Option<Registration>,
    ) -> Option<Registration> {
        let mut registered = self.registered.lock().expect("registry lock");
        let name: Arc<str> = Arc::from(service);
        let (previous, changed) = match registration {
            Some(r) => {
                let instances = registered.entry(name.clone()).or_default();
                let previous = instances.insert(Arc::from(id), r.clone());
                let changed = previous.as_ref() != Some(&r);
                (previous, changed)
            }
            None => {
                let previous = registered
                    .get_mut(service)
                    .and_then(|instances| instances.remove(id));
                let changed = previous.is_some();
                (previous, changed)
            }
        };
        if changed {
            let instances = registered.entry(name.clone()).or_default();
            self.apply(&name, instances);
        }
        previous
    }

    /// Rebuilds a service's instances from its static ones and `registered`; creates the
    /// service if registration introduced it.
    fn apply(&self, name: &Arc<str>, registered: &BTreeMap<Arc<str>, Registration>) {
        let mut specs = self.statics.load().get(name).cloned().unwrap_or_default();
        specs.extend(registered.iter().map(|(id, r)| EndpointSpec {
            id: id.clone(),
            address: Arc::from(r.request.address.as_str()),
            weight: r.request.weight,
            metadata: r.request.metadata.clone(),
            source: Source::Registered,
            expires_at: r.expires_at,
        }));
        let service = match self.service(name) {
            // A service only registration made goes away with its last instance.
            Some(s) if !s.configured && specs.is_empty() => {
                s.set_endpoints(&specs);
                self.services.rcu(|map| {
                    let mut map = HashMap::clone(map);
                    map.remove(name);
                    map
                });
                return;
            }
            Some(s) => s,
            None if specs.is_empty() => return,
            None => {
                let service = Arc::new(Service::new(
                    name,
                    &ServiceConfig::default(),
                    self.workers,
                    false,
                    self.metrics.service(name),
                ));
                self.services.rcu(|map| {
                    let mut map = HashMap::clone(map);
                    map.entry(name.clone()).or_insert_with(|| service.clone());
                    map
                });
                self.service(name).expect("just inserted")
            }
        };
        service.set_endpoints(&specs);
    }

    /// `GET /registry/services[/{service}]`.
    pub fn views(&self, only: Option<&str>) -> Vec<ServiceView> {
        self.services()
            .iter()
            .filter(|s| only.is_none_or(|name| &*s.name == name))
            .map(|s| s.view())
            .collect()
    }
}

pub(crate) fn check_instance_id(id: &str) -> Result<(), RegistryError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::Invalid(format!(
            "id: `{id}` is not a valid instance id: use 1 to 128 of A-Z a-z 0-9 . _ - :"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Arc<Registry> {
        let config = Config::parse("[services.users]\n", "test").unwrap();
        Registry::new(&config, Arc::new(Metrics::new()), None)
    }

    fn request(address: &str) -> RegisterRequest {
        RegisterRequest {
            address: address.into(),
            ttl: None,
            metadata: BTreeMap::new(),
            weight: 1,
        }
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_registration_takes_traffic_until_exactly_its_ttl() {
        let registry = registry();
        let t0 = 1000 * S;
        registry.register_at(
            "users",
            "a",
            request("127.0.0.1:1"),
            Duration::from_secs(15),
            t0,
        );
        let service = registry.service("users").unwrap();
        let set = service.endpoints();
        let a = &set.endpoints[0];
        assert!(a.available(t0 + 15 * S - 1));
        assert!(!a.available(t0 + 15 * S), "expired at the TTL boundary");

        // Renewal at t0+10s moves the expiry to t0+25s and keeps the same instance.
        registry.register_at(
            "users",
            "a",
            request("127.0.0.1:1"),
            Duration::from_secs(15),
            t0 + 10 * S,
        );
        let renewed = service.endpoints();
        assert!(
            Arc::ptr_eq(a, &renewed.endpoints[0]),
            "renewal keeps pool and health"
        );
        assert!(renewed.endpoints[0].available(t0 + 25 * S - 1));
        assert!(!renewed.endpoints[0].available(t0 + 25 * S));

        registry.expire(t0 + 25 * S - 1);
        assert_eq!(service.endpoints().endpoints.len(), 1);
        registry.expire(t0 + 25 * S);
        assert!(
            service.endpoints().endpoints.is_empty(),
            "removed once expired"
        );
    }

    #[test]
    fn registration_creates_unknown_services_and_deregistration_removes_instances() {
        let registry = registry();
        assert!(registry.service("orders").is_none());
        registry.register_at(
            "orders",
            "o1",
            request("127.0.0.1:2"),
            Duration::from_secs(5),
            S,
        );
        let orders = registry.service("orders").unwrap();
        assert!(!orders.configured);
        assert_eq!(orders.endpoints().endpoints.len(), 1);
        assert!(registry.remove("orders", "o1"));
        assert!(!registry.remove("orders", "o1"));
        assert!(orders.endpoints().endpoints.is_empty());
    }

    #[test]
    fn a_registration_never_takes_over_a_static_instance() {
        let config =
            Config::parse("[services.users]\ninstances = [\"127.0.0.1:1\"]\n", "test").unwrap();
        let registry = Registry::new(&config, Arc::new(Metrics::new()), None);
        // Same id and address as the static instance: still two instances.
        registry.register_at(
            "users",
            "127.0.0.1:1",
            request("127.0.0.1:1"),
            Duration::from_secs(1),
            S,
        );
        let set = registry.service("users").unwrap().endpoints();
        assert_eq!(set.endpoints.len(), 2);
        assert!(
            set.endpoints[0].live(100 * S),
            "the static one never expires"
        );
        assert!(!set.endpoints[1].live(2 * S));
    }

    #[test]
    fn a_service_made_by_registration_goes_away_with_its_last_instance() {
        let registry = registry();
        registry.register_at(
            "orders",
            "o1",
            request("127.0.0.1:2"),
            Duration::from_secs(5),
            S,
        );
        assert!(registry.service("orders").is_some());
        registry.expire(10 * S);
        assert!(registry.service("orders").is_none());
        // A configured one stays, empty.
        registry.register_at(
            "users",
            "u1",
            request("127.0.0.1:2"),
            Duration::from_secs(5),
            S,
        );
        registry.expire(10 * S);
        assert!(registry.service("users").is_some());
    }

    #[tokio::test]
    async fn bad_registrations_are_refused_with_the_field_named() {
        let registry = registry();
        let err = |r: Result<Registration, RegistryError>| r.unwrap_err().to_string();
        let mut bad = request("no-port");
        assert!(err(registry.register("users", "a", bad.clone()).await).starts_with("address:"));
        bad.address = "127.0.0.1:1".into();
        bad.ttl = Some(Duration::from_millis(10));
        assert!(err(registry.register("users", "a", bad.clone()).await).starts_with("ttl:"));
        bad.ttl = None;
        bad.weight = 0;
        assert!(err(registry.register("users", "a", bad.clone()).await).starts_with("weight:"));
        bad.weight = 1;
        assert!(err(registry.register("users", "a/b", bad.clone()).await).starts_with("id:"));
        assert!(err(registry.register("us ers", "a", bad).await).starts_with("service:"));
    }
}
