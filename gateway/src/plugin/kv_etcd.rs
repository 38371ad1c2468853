//! The kv store's etcd side (`[kv] backend = "etcd"`): writes go to etcd under the prefix,
//! and the store mirrors what etcd holds there. The store itself is the runtime's
//! (`sluice_plugin_host::kv`); the etcd connection is the gateway's.

use std::sync::Arc;

use bytes::Bytes;
use sluice_plugin_host::kv::{KvStore, RemoteFuture, RemoteKv};

/// The etcd side of the store: where writes go when `[kv] backend = "etcd"`.
#[derive(Debug)]
pub struct EtcdKv {
    conn: Arc<crate::etcd::EtcdConnection>,
    prefix: String,
}

impl EtcdKv {
    /// Keys live at `prefix + key` on `conn`.
    pub fn new(conn: Arc<crate::etcd::EtcdConnection>, prefix: String) -> Self {
        Self { conn, prefix }
    }

    /// Writes a value; its new version (etcd's revision).
    pub async fn put(&self, key: &str, value: Bytes) -> Result<u64, String> {
        let key = format!("{}{key}", self.prefix);
        self.conn
            .call(|mut client| async move {
                let response = client
                    .put(key, value.to_vec(), None)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(response.header().map_or(0, |h| h.revision()) as u64)
            })
            .await
    }

    /// Deletes a key; whether it existed.
    pub async fn delete(&self, key: &str) -> Result<bool, String> {
        let key = format!("{}{key}", self.prefix);
        self.conn
            .call(|mut client| async move {
                let response = client.delete(key, None).await.map_err(|e| e.to_string())?;
                Ok(response.deleted() > 0)
            })
            .await
    }
}

impl RemoteKv for EtcdKv {
    fn put<'a>(&'a self, key: &'a str, value: Bytes) -> RemoteFuture<'a, u64> {
        Box::pin(EtcdKv::put(self, key, value))
    }

    fn delete<'a>(&'a self, key: &'a str) -> RemoteFuture<'a, bool> {
        Box::pin(EtcdKv::delete(self, key))
    }
}

/// Applies what etcd holds under the kv prefix to the store.
pub struct KvMirror(pub Arc<KvStore>);

impl crate::etcd::Mirror for KvMirror {
    fn reset(&self, entries: Vec<(String, Vec<u8>, i64)>) {
        self.0.reset(entries);
    }

    fn change(&self, key: &str, value: Option<&[u8]>, revision: i64) {
        self.0.change(key, value, revision);
    }
}
