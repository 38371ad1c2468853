//! The etcd registry backend. A registration is a key `PREFIX{service}/{id}` holding the
//! registration as JSON, attached to a lease with the registration's TTL; renewing is a lease
//! keep-alive, so an instance that stops renewing disappears from etcd, and every gateway
//! mirroring the prefix drops it.
//!
//! The request path never waits on etcd: routing reads the registry's in-memory view, which
//! [`crate::etcd::mirror`] keeps current. When etcd is unreachable the view stays as it was
//! (logged, in `/metrics` and `/registry/services`), and converges when etcd is back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, PutOptions};

use super::{RegisterRequest, Registration, Registrations, Registry, RegistryError};
use crate::etcd::{EtcdConnection, Mirror};

/// The etcd side of the registry.
#[derive(Debug)]
pub struct EtcdBackend {
    /// The shared connection.
    pub conn: Arc<EtcdConnection>,
    /// `registry.prefix`.
    pub prefix: String,
}

/// The JSON stored under each key (readable with `etcdctl get --prefix`).
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
    fn key(&self, service: &str, id: &str) -> String {
        format!("{}{service}/{id}", self.prefix)
    }

    /// Registers or renews `service/id` under a lease of `ttl`.
    pub async fn register(
        &self,
        service: &str,
        id: &str,
        request: &RegisterRequest,
        ttl: Duration,
    ) -> Result<Registration, RegistryError> {
        let key = self.key(service, id);
        let stored = Stored::new(request, ttl);
        let value = serde_json::to_vec(&stored).expect("registration serializes");
        self.conn
            .call(|mut client| async move {
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
                // An old lease is left to expire, not revoked: other keys may share it.
                Ok(())
            })
            .await
            .map_err(RegistryError::Unavailable)?;
        Ok(stored.into_registration())
    }

    /// Deletes `service/id` and revokes its lease.
    pub async fn deregister(&self, service: &str, id: &str) -> Result<bool, RegistryError> {
        let key = self.key(service, id);
        self.conn
            .call(|mut client| async move {
                let existing = client
                    .get(key.as_str(), None)
                    .await
                    .map_err(|e| e.to_string())?;
                if existing.kvs().is_empty() {
                    return Ok(false);
                }
                // Only the key: its lease may hold other keys, and expires by itself.
                client
                    .delete(key.as_str(), None)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(true)
            })
            .await
            .map_err(RegistryError::Unavailable)
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

/// Applies what etcd holds under the registry prefix to the registry.
pub struct RegistryMirror(pub Arc<Registry>);

impl Mirror for RegistryMirror {
    fn reset(&self, entries: Vec<(String, Vec<u8>, i64)>) {
        let mut view = Registrations::new();
        for (key, value, _) in entries {
            if let Some((service, id, Some(registration))) = parse(&key, Some(&value))
                && allowed(&self.0, &key, &registration)
            {
                view.entry(Arc::from(service))
                    .or_default()
                    .insert(Arc::from(id), registration);
            }
        }
        self.0.replace_all(view);
    }

    fn change(&self, key: &str, value: Option<&[u8]>, _revision: i64) {
        if let Some((service, id, registration)) = parse(key, value) {
            // A refused address replaces what was there: the instance goes.
            let registration = registration.filter(|r| allowed(&self.0, key, r));
            self.0.put(service, id, registration);
        }
    }

    fn connected(&self, connected: bool) {
        self.0.metrics.registry_connected.set(i64::from(connected));
    }
}

/// Whether the address policy admits an etcd registration (refusals are logged).
fn allowed(registry: &Registry, key: &str, registration: &Registration) -> bool {
    match registry
        .policy
        .check_authority(&registration.request.address)
    {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(key, "registry: ignoring an etcd entry: {e}");
            false
        }
    }
}

/// `{service}/{id}` and its value; `None` inside for a delete. Malformed entries are logged
/// and skipped, never fatal.
fn parse<'a>(
    key: &'a str,
    value: Option<&[u8]>,
) -> Option<(&'a str, &'a str, Option<Registration>)> {
    let (service, id) = key.split_once('/')?;
    let Some(value) = value else {
        return Some((service, id, None));
    };
    // Anyone can write under the prefix (etcdctl): the same checks as the registry API.
    let checked = serde_json::from_slice::<Stored>(value)
        .map_err(|e| e.to_string())
        .and_then(|stored| {
            super::check_service_name(service)?;
            super::check_instance_id(id).map_err(|e| e.to_string())?;
            crate::config::check_authority(&stored.address)?;
            if !(1..=1000).contains(&stored.weight) {
                return Err(format!("weight {} is outside 1..=1000", stored.weight));
            }
            Ok(stored)
        });
    match checked {
        Ok(stored) => Some((service, id, Some(stored.into_registration()))),
        Err(e) => {
            tracing::warn!(key, "registry: ignoring an invalid etcd entry: {e}");
            None
        }
    }
}
