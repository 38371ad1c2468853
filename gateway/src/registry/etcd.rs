//! The etcd registry backend. A registration is a key `PREFIX{service}/{id}` holding the
//! registration as JSON, attached to a lease with the registration's TTL; renewing is a lease
//! keep-alive, so an instance that stops renewing disappears from etcd, and every gateway
//! watching the prefix drops it.
//!
//! The request path never waits on etcd: routing reads the registry's in-memory view, which
//! the watch keeps current. When etcd is unreachable the view stays as it was (logged, in
//! `/metrics` and `/registry/services`), and a full re-read on reconnect makes it converge.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};
use tokio_util::sync::CancellationToken;

use super::{BackendStatus, RegisterRequest, Registration, Registry, RegistryError};
use crate::config::{RegistryBackend, RegistryConfig};

/// The etcd side of the registry.
pub struct EtcdBackend {
    config: RegistryConfig,
    client: tokio::sync::Mutex<Option<Client>>,
    health: Mutex<Health>,
}

#[derive(Debug, Default)]
struct Health {
    connected: bool,
    last_error: Option<String>,
    since: Option<Instant>,
}

/// The JSON stored under each key (readable by `etcdctl get --prefix`).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Stored {
    address: String,
    weight: u32,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    ttl_ms: u64,
}

impl Stored {
    fn new(request: &RegisterRequest, ttl: Duration) -> Self {
        Self {
            address: request.address.clone(),
            weight: request.weight,
            metadata: request.metadata.clone(),
            ttl_ms: ttl.as_millis() as u64,
        }
    }

    fn into_registration(self) -> Registration {
        let ttl = Duration::from_millis(self.ttl_ms);
        Registration {
            request: RegisterRequest {
                address: self.address,
                ttl: Some(ttl),
                metadata: self.metadata,
                weight: self.weight,
            },
            ttl,
            expires_at: 0,
        }
    }
}

impl EtcdBackend {
    /// A backend that connects on first use.
    pub fn new(config: RegistryConfig) -> Self {
        Self {
            config,
            client: tokio::sync::Mutex::new(None),
            health: Mutex::new(Health {
                since: Some(Instant::now()),
                last_error: Some("not connected yet".into()),
                ..Health::default()
            }),
        }
    }

    /// Whether etcd is reachable, and since when it is not.
    pub fn status(&self) -> BackendStatus {
        let health = self.health.lock().expect("etcd health lock");
        BackendStatus {
            backend: RegistryBackend::Etcd,
            connected: health.connected,
            last_error: (!health.connected)
                .then(|| health.last_error.clone())
                .flatten(),
            disconnected_for_s: (!health.connected)
                .then(|| health.since.map(|s| s.elapsed().as_secs()))
                .flatten(),
        }
    }

    fn key(&self, service: &str, id: &str) -> String {
        format!("{}{service}/{id}", self.config.prefix)
    }

    /// A connected client (the channel reconnects by itself once made).
    async fn client(&self) -> Result<Client, String> {
        let mut slot = self.client.lock().await;
        if let Some(client) = &*slot {
            return Ok(client.clone());
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(self.config.dial_timeout)
            .with_timeout(self.config.dial_timeout)
            // Notice a dead etcd within seconds even on an idle watch.
            .with_keep_alive(Duration::from_secs(1), self.config.dial_timeout)
            .with_keep_alive_while_idle(true);
        let client = tokio::time::timeout(
            self.config.dial_timeout,
            Client::connect(&self.config.endpoints, Some(options)),
        )
        .await
        .map_err(|_| format!("connecting to {:?} timed out", self.config.endpoints))?
        .map_err(|e| format!("connecting to {:?}: {e}", self.config.endpoints))?;
        *slot = Some(client.clone());
        Ok(client)
    }

    fn mark(&self, result: Result<(), &str>, metrics: Option<&crate::metrics::Metrics>) {
        let mut health = self.health.lock().expect("etcd health lock");
        match result {
            Ok(()) => {
                if !health.connected {
                    tracing::info!("registry: etcd is reachable");
                }
                *health = Health {
                    connected: true,
                    ..Health::default()
                };
            }
            Err(e) => {
                if health.connected || health.last_error.as_deref() != Some(e) {
                    tracing::warn!(
                        "registry: etcd is unreachable, routing on the last known instances: {e}"
                    );
                }
                if health.connected || health.since.is_none() {
                    health.since = Some(Instant::now());
                }
                health.connected = false;
                health.last_error = Some(e.to_owned());
            }
        }
        if let Some(m) = metrics {
            m.registry_connected.set(i64::from(health.connected));
        }
    }

    /// Registers or renews `service/id` under a lease of `ttl`.
    pub async fn register(
        &self,
        service: &str,
        id: &str,
        request: &RegisterRequest,
        ttl: Duration,
    ) -> Result<Registration, RegistryError> {
        let call = async {
            let mut client = self.client().await?;
            let key = self.key(service, id);
            let stored = Stored::new(request, ttl);
            let value = serde_json::to_vec(&stored).expect("registration serializes");
            let existing = client
                .get(key.as_str(), None)
                .await
                .map_err(|e| e.to_string())?;
            if let Some(kv) = existing.kvs().first() {
                let same_ttl = serde_json::from_slice::<Stored>(kv.value())
                    .is_ok_and(|old| old.ttl_ms == stored.ttl_ms);
                if kv.lease() != 0 && same_ttl && keep_alive(&mut client, kv.lease()).await? {
                    if kv.value() != value.as_slice() {
                        let options = PutOptions::new().with_lease(kv.lease());
                        client
                            .put(key.as_str(), value, Some(options))
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    return Ok(());
                }
            }
            // New, expired, or a new TTL: a fresh lease (etcd TTLs are whole seconds).
            let seconds = ttl.as_secs_f64().ceil() as i64;
            let lease = client
                .lease_grant(seconds, None)
                .await
                .map_err(|e| e.to_string())?
                .id();
            client
                .put(
                    key.as_str(),
                    value,
                    Some(PutOptions::new().with_lease(lease)),
                )
                .await
                .map_err(|e| e.to_string())?;
            if let Some(old) = existing.kvs().first()
                && old.lease() != 0
            {
                let _ = client.lease_revoke(old.lease()).await;
            }
            tracing::info!(
                service,
                id,
                address = request.address.as_str(),
                "instance registered in etcd"
            );
            Ok(())
        };
        self.finish(call.await)?;
        Ok(Stored::new(request, ttl).into_registration())
    }

    /// Deletes `service/id` and revokes its lease.
    pub async fn deregister(&self, service: &str, id: &str) -> Result<bool, RegistryError> {
        let call = async {
            let mut client = self.client().await?;
            let key = self.key(service, id);
            let existing = client
                .get(key.as_str(), None)
                .await
                .map_err(|e| e.to_string())?;
            let Some(kv) = existing.kvs().first() else {
                return Ok(false);
            };
            let lease = kv.lease();
            client
                .delete(key.as_str(), None)
                .await
                .map_err(|e| e.to_string())?;
            if lease != 0 {
                let _ = client.lease_revoke(lease).await;
            }
            Ok(true)
        };
        self.finish(call.await)
    }

    fn finish<T>(&self, result: Result<T, String>) -> Result<T, RegistryError> {
        result.map_err(|e| {
            self.mark(Err(&e), None);
            RegistryError::Unavailable(e)
        })
    }
}

impl std::fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdBackend")
            .field("endpoints", &self.config.endpoints)
            .field("prefix", &self.config.prefix)
            .finish_non_exhaustive()
    }
}

/// Sends one keep-alive for `lease`; false if the lease is gone.
async fn keep_alive(client: &mut Client, lease: i64) -> Result<bool, String> {
    let (mut keeper, mut stream) = client
        .lease_keep_alive(lease)
        .await
        .map_err(|e| e.to_string())?;
    keeper.keep_alive().await.map_err(|e| e.to_string())?;
    match stream.message().await.map_err(|e| e.to_string())? {
        Some(response) => Ok(response.ttl() > 0),
        None => Ok(false),
    }
}

/// Keeps the registry's view equal to etcd's: a full read, then a watch from the revision
/// after it; on any error, wait (growing back-off) and start again with a full read.
pub async fn watch(registry: Arc<Registry>, shutdown: CancellationToken) {
    let backend = registry.etcd.as_ref().expect("etcd backend");
    let mut backoff = Duration::from_millis(200);
    loop {
        let round = sync_and_watch(&registry, backend);
        let error = tokio::select! {
            () = shutdown.cancelled() => return,
            e = round => e,
        };
        backend.mark(Err(&error), Some(&registry.metrics));
        // A broken channel may not heal on its own after etcd restarts: reconnect.
        *backend.client.lock().await = None;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One round: read everything under the prefix, then apply watch events until an error.
async fn sync_and_watch(registry: &Registry, backend: &EtcdBackend) -> String {
    let prefix = backend.config.prefix.as_str();
    let mut client = match backend.client().await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let all = match client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
    {
        Ok(r) => r,
        Err(e) => return format!("reading {prefix}: {e}"),
    };
    let revision = all.header().map_or(0, |h| h.revision());
    let mut view = super::Registrations::new();
    for kv in all.kvs() {
        if let Some((service, id, registration)) = parse(prefix, kv.key(), Some(kv.value())) {
            view.entry(Arc::from(service))
                .or_default()
                .insert(Arc::from(id), registration.expect("value given"));
        }
    }
    registry.replace_all(view);
    backend.mark(Ok(()), Some(&registry.metrics));

    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut stream = match client.watch(prefix, Some(options)).await {
        Ok(s) => s,
        Err(e) => return format!("watching {prefix}: {e}"),
    };
    loop {
        let response = match stream.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return "the watch stream ended".into(),
            Err(e) => return format!("watching {prefix}: {e}"),
        };
        if response.canceled() {
            return format!("the watch was canceled: {}", response.cancel_reason());
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let value = (event.event_type() == EventType::Put).then(|| kv.value());
            if let Some((service, id, registration)) = parse(prefix, kv.key(), value) {
                registry.apply_change(service, id, registration);
            }
        }
    }
}

/// `PREFIX{service}/{id}` and its value; `None` inside for a delete. Malformed entries are
/// logged and skipped, never fatal.
fn parse<'a>(
    prefix: &str,
    key: &'a [u8],
    value: Option<&[u8]>,
) -> Option<(&'a str, &'a str, Option<Registration>)> {
    let key = std::str::from_utf8(key).ok()?;
    let (service, id) = key.strip_prefix(prefix)?.split_once('/')?;
    let Some(value) = value else {
        return Some((service, id, None));
    };
    match serde_json::from_slice::<Stored>(value) {
        Ok(stored) => Some((service, id, Some(stored.into_registration()))),
        Err(e) => {
            tracing::warn!(key, "registry: ignoring a malformed etcd entry: {e}");
            None
        }
    }
}
