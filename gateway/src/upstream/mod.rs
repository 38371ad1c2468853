//! Upstream services: their instances (static from config, or registered with a TTL), how one
//! is chosen (`balancer`), their health (`health`), retries (`retry`), and forwarding a request
//! over a pooled keep-alive connection (`pool`).

pub mod balancer;
pub mod health;
pub mod pool;
pub mod retry;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::body::Incoming;
use serde::Serialize;

use self::balancer::{Exclude, HashOn, Tables};
use self::health::{EndpointHealth, HealthView};
use self::pool::{ConnectError, InstancePool, Pooled, Transport};
use self::retry::{RetryBudget, RetryPolicy};
use crate::body::{RequestBody, RequestBodyError};
use crate::clock::monotonic_ns;
use crate::config::{ActiveHealthConfig, BalancerKind, PassiveHealthConfig, ServiceConfig};
use crate::error::{ProxyError, TimeoutPhase};
use crate::metrics::ServiceMetrics;

/// Where an instance came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `[services.NAME] instances`.
    Static,
    /// The registry API or etcd.
    Registered,
}

/// What an instance is, as configured or registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Unique within the service (the address for static instances).
    pub id: Arc<str>,
    /// `host:port`.
    pub address: Arc<str>,
    /// Relative share of traffic.
    pub weight: u32,
    /// Free-form labels from the registration.
    pub metadata: BTreeMap<String, String>,
    /// Static or registered.
    pub source: Source,
    /// Monotonic ns after which it takes no traffic (0 = never).
    pub expires_at: u64,
}

/// One upstream instance and what the gateway knows about it.
#[derive(Debug)]
pub struct Endpoint {
    /// Unique within the service.
    pub id: Arc<str>,
    /// `host:port`.
    pub address: Arc<str>,
    /// The same as a `Host` header value, for requests that came without one.
    pub host_header: http::HeaderValue,
    /// Relative share of traffic.
    pub weight: u32,
    /// Labels from the registration.
    pub metadata: BTreeMap<String, String>,
    /// Static or registered.
    pub source: Source,
    /// Monotonic ns after which it takes no traffic (0 = never). Renewals move it.
    expires_at: AtomicU64,
    /// Requests sent and not yet answered (for `least_request`).
    pub outstanding: AtomicUsize,
    /// Passive and active health.
    pub health: EndpointHealth,
    /// Keep-alive connections to it.
    pub pool: Arc<InstancePool>,
}

impl Endpoint {
    #[cfg(test)]
    pub(crate) fn new(spec: &EndpointSpec, workers: usize) -> Option<Self> {
        Self::with_transport(spec, workers, Arc::default())
    }

    pub(crate) fn with_transport(
        spec: &EndpointSpec,
        workers: usize,
        transport: Arc<Transport>,
    ) -> Option<Self> {
        Some(Self {
            id: spec.id.clone(),
            host_header: http::HeaderValue::from_str(&spec.address).ok()?,
            address: spec.address.clone(),
            weight: spec.weight.max(1),
            metadata: spec.metadata.clone(),
            source: spec.source,
            expires_at: AtomicU64::new(spec.expires_at),
            outstanding: AtomicUsize::new(0),
            health: EndpointHealth::default(),
            pool: InstancePool::with_transport(spec.address.clone(), workers, transport),
        })
    }

    /// Not past its TTL at `now` (ns).
    pub fn live(&self, now: u64) -> bool {
        let expires = self.expires_at.load(Ordering::Relaxed);
        expires == 0 || now < expires
    }

    /// Takes traffic at `now`: live and healthy.
    pub fn available(&self, now: u64) -> bool {
        self.live(now) && self.health.available(now)
    }

    /// Counts a request in flight until the guard drops.
    pub fn track(self: &Arc<Self>) -> InFlight {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// A request in flight to an endpoint (see [`Endpoint::track`]).
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The instances of a service at one moment, with the balancer's tables for them.
#[derive(Debug, Default)]
pub struct EndpointSet {
    /// The instances.
    pub endpoints: Vec<Arc<Endpoint>>,
    tables: Tables,
}

/// A service: its instances, how to choose and reach them, and what to do when that fails.
#[derive(Debug)]
pub struct Service {
    /// The service name.
    pub name: Arc<str>,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Overall time for the response head, retries included.
    pub request_timeout: Duration,
    /// Time for one attempt.
    pub per_try_timeout: Duration,
    /// How instances are chosen.
    pub balancer: BalancerKind,
    hash_on: Option<HashOn>,
    /// Which failures are retried.
    pub retry: RetryPolicy,
    /// Retries allowed over the last 10 s.
    pub budget: RetryBudget,
    /// Ejection rules.
    pub passive: PassiveHealthConfig,
    /// Active check rules.
    pub active: Option<ActiveHealthConfig>,
    /// Whether `[services.NAME]` defines it (otherwise registration created it).
    pub configured: bool,
    /// Metric handles.
    pub metrics: ServiceMetrics,
    endpoints: ArcSwap<EndpointSet>,
    next: AtomicUsize,
    workers: usize,
    /// How connections to the instances are made (`protocol`, `tls`).
    pub transport: Arc<Transport>,
    /// Serialises ejection decisions (rare: only when an instance reaches its threshold).
    ejecting: std::sync::Mutex<()>,
}

/// What `/admin/services` shows of a service.
#[derive(Debug, Serialize)]
pub struct ServiceView {
    name: String,
    configured: bool,
    balancer: BalancerKind,
    retries: u32,
    connect_timeout_ms: u128,
    request_timeout_ms: u128,
    instances: Vec<InstanceView>,
}

impl ServiceView {
    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// What the admin API shows of an instance.
#[derive(Debug, Serialize)]
pub struct InstanceView {
    id: String,
    address: String,
    weight: u32,
    source: Source,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    metadata: BTreeMap<String, String>,
    /// Time left before the registration expires (`None`: does not expire).
    expires_in_ms: Option<u64>,
    outstanding: usize,
    health: HealthView,
}

/// Why an attempt failed, with the request back when it never left (so it can be sent again
/// without a copy).
#[derive(Debug)]
pub struct AttemptError {
    /// What went wrong.
    pub error: ProxyError,
    /// The request, if it was never sent.
    pub unsent: Option<http::Request<RequestBody>>,
}

impl Service {
    /// Builds a service from its config, with a connection pool per instance for `workers`
    /// data-plane workers. `configured` says whether `[services.NAME]` defines it.
    pub fn new(
        name: &str,
        config: &ServiceConfig,
        workers: usize,
        configured: bool,
        metrics: ServiceMetrics,
    ) -> Self {
        let service = Self {
            name: Arc::from(name),
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            per_try_timeout: config
                .per_try_timeout
                .unwrap_or(config.request_timeout)
                .min(config.request_timeout),
            balancer: config.balancer,
            hash_on: config.hash_on.as_ref().map(|h| h.get().clone()),
            retry: RetryPolicy::from_config(config.retries, &config.retry),
            budget: RetryBudget::new(
                config.retry.budget_percent,
                config.retry.min_retries_per_second,
            ),
            passive: config.passive_health.clone(),
            active: config.active_health.clone(),
            configured,
            metrics,
            endpoints: ArcSwap::from_pointee(EndpointSet::default()),
            next: AtomicUsize::new(0),
            workers,
            transport: Arc::new(Transport::from_config(config)),
            ejecting: std::sync::Mutex::new(()),
        };
        service.set_endpoints(&static_specs(config));
        service
    }

    /// The instances now.
    pub fn endpoints(&self) -> Arc<EndpointSet> {
        self.endpoints.load_full()
    }

    /// Replaces the instances. An instance whose id and address did not change keeps its
    /// connections and health; only its expiry moves.
    pub fn set_endpoints(&self, specs: &[EndpointSpec]) {
        let old = self.endpoints.load();
        let by_id: std::collections::HashMap<(&str, Source), &Arc<Endpoint>> = old
            .endpoints
            .iter()
            .map(|e| ((&*e.id, e.source), e))
            .collect();
        let endpoints: Vec<Arc<Endpoint>> = specs
            .iter()
            .filter_map(|spec| {
                // A registered id equal to a static instance's address is another instance.
                let kept = by_id.get(&(&*spec.id, spec.source)).filter(|e| {
                    e.address == spec.address
                        && e.weight == spec.weight.max(1)
                        && e.metadata == spec.metadata
                });
                match kept {
                    Some(e) => {
                        e.expires_at.store(spec.expires_at, Ordering::Relaxed);
                        Some(Arc::clone(e))
                    }
                    None => Endpoint::with_transport(spec, self.workers, self.transport.clone())
                        .map(Arc::new),
                }
            })
            .collect();
        // A renewal only moves expiries: the same instances in the same order keep their
        // balancer tables.
        let unchanged = endpoints.len() == old.endpoints.len()
            && endpoints
                .iter()
                .zip(&old.endpoints)
                .all(|(a, b)| Arc::ptr_eq(a, b));
        if unchanged {
            return;
        }
        let tables = Tables::build(self.balancer, &endpoints);
        self.metrics.instances.set(endpoints.len() as i64);
        self.endpoints
            .store(Arc::new(EndpointSet { endpoints, tables }));
    }

    /// Picks an instance for an attempt, avoiding the ones in `tried` when another is
    /// available.
    /// `now` is the monotonic clock in ns (availability depends on it).
    pub fn pick(
        &self,
        set: &EndpointSet,
        headers: &http::HeaderMap,
        tried: &[u32],
        now: u64,
    ) -> Option<u32> {
        let key = self.hash_on.as_ref().and_then(|h| h.key(headers));
        let exclude = Exclude { tried, now };
        balancer::pick(
            self.balancer,
            &set.endpoints,
            &set.tables,
            &self.next,
            key,
            &exclude,
        )
    }

    /// Sends a request to `endpoint` and waits for the response head, within `timeout`.
    /// Returns the connection with the response: it goes back to the pool once the body has
    /// been relayed. Failures are classified for the client's status, retries and metrics.
    pub async fn send(
        &self,
        endpoint: &Arc<Endpoint>,
        request: http::Request<RequestBody>,
        timeout: Duration,
    ) -> Result<(http::Response<Incoming>, Pooled), AttemptError> {
        let in_flight = endpoint.track();
        let started = tokio::time::Instant::now();
        // The connection is had (or not) within the try's limit too, but outside the response
        // timeout below: a connect that times out gives the request back unsent, so it can be
        // retried like any connect failure.
        let mut conn = match endpoint
            .pool
            .checkout(self.connect_timeout.min(timeout))
            .await
        {
            Ok(conn) => conn,
            Err(e) => {
                return Err(AttemptError {
                    error: self.connect_error(endpoint, e),
                    unsent: Some(request),
                });
            }
        };
        let exchange = async {
            match conn.send(request).await {
                Ok(response) => Ok((response, conn)),
                // An idle connection the upstream had closed: the request never left, so it
                // is safe to send it once more on a fresh connection.
                Err((_, Some(request))) if conn.reused() => {
                    drop(conn);
                    let mut fresh = match endpoint.pool.connect(self.connect_timeout).await {
                        Ok(conn) => conn,
                        Err(e) => {
                            return Err(AttemptError {
                                error: self.connect_error(endpoint, e),
                                unsent: Some(request),
                            });
                        }
                    };
                    match fresh.send(request).await {
                        Ok(response) => Ok((response, fresh)),
                        Err((e, unsent)) => Err(AttemptError {
                            error: self.classify(endpoint, &e),
                            unsent,
                        }),
                    }
                }
                Err((e, unsent)) => Err(AttemptError {
                    error: self.classify(endpoint, &e),
                    unsent,
                }),
            }
        };
        let left = timeout.saturating_sub(started.elapsed());
        let result = match tokio::time::timeout(left, exchange).await {
            Ok(result) => result,
            Err(_) => Err(AttemptError {
                error: ProxyError::UpstreamTimeout {
                    service: self.name.clone(),
                    instance: endpoint.address.clone(),
                    phase: TimeoutPhase::Response,
                },
                unsent: None,
            }),
        };
        result.map(|(response, mut conn)| {
            conn.hold(in_flight);
            (response, conn)
        })
    }

    fn connect_error(&self, endpoint: &Endpoint, error: ConnectError) -> ProxyError {
        let service = self.name.clone();
        let instance = endpoint.address.clone();
        match error {
            ConnectError::Timeout => ProxyError::UpstreamTimeout {
                service,
                instance,
                phase: TimeoutPhase::Connect,
            },
            ConnectError::Failed(e) => {
                tracing::debug!(
                    service = &*service,
                    instance = &*instance,
                    "connect failed: {e}"
                );
                ProxyError::UpstreamConnect { service, instance }
            }
        }
    }

    fn classify(&self, endpoint: &Endpoint, error: &hyper::Error) -> ProxyError {
        let service = self.name.clone();
        let instance = endpoint.address.clone();
        // The client's body may be the cause: too large, or the client went away.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(e) = source {
            if let Some(body_error) = e.downcast_ref::<RequestBodyError>() {
                return match body_error {
                    RequestBodyError::TooLarge { limit } => {
                        ProxyError::PayloadTooLarge { limit: *limit }
                    }
                    RequestBodyError::Client(_) => ProxyError::BadRequest("request body aborted"),
                    RequestBodyError::Timeout(t) => ProxyError::RequestTimeout(*t),
                };
            }
            source = e.source();
        }
        ProxyError::UpstreamFailed {
            service,
            instance,
            reason: error_chain(error),
        }
    }

    /// The admin view.
    pub fn view(&self) -> ServiceView {
        let now = monotonic_ns();
        let set = self.endpoints();
        ServiceView {
            name: self.name.to_string(),
            configured: self.configured,
            balancer: self.balancer,
            retries: self.retry.retries,
            connect_timeout_ms: self.connect_timeout.as_millis(),
            request_timeout_ms: self.request_timeout.as_millis(),
            instances: set
                .endpoints
                .iter()
                .map(|e| {
                    let expires = e.expires_at.load(Ordering::Relaxed);
                    InstanceView {
                        id: e.id.to_string(),
                        address: e.address.to_string(),
                        weight: e.weight,
                        source: e.source,
                        metadata: e.metadata.clone(),
                        expires_in_ms: (expires != 0)
                            .then(|| expires.saturating_sub(now) / 1_000_000),
                        outstanding: e.outstanding.load(Ordering::Relaxed),
                        health: e.health.view(now, e.live(now)),
                    }
                })
                .collect(),
        }
    }
}

/// The static instances of a service's config.
pub fn static_specs(config: &ServiceConfig) -> Vec<EndpointSpec> {
    config
        .instances
        .iter()
        .map(|i| {
            let i = i.get_ref();
            let address: Arc<str> = Arc::from(i.address());
            EndpointSpec {
                id: address.clone(),
                address,
                weight: i.weight(),
                metadata: BTreeMap::new(),
                source: Source::Static,
                expires_at: 0,
            }
        })
        .collect()
}

/// `outer: inner: innermost`, for logs.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
