//! The watched key-value store behind the `kv` interface: operators change values while the
//! gateway runs (`PUT /admin/kv/{key}`), plugins read them with a version so they re-parse
//! only on change. The local backend persists to a JSON file (written atomically), so a
//! restart keeps the values. With `[kv] backend = "etcd"` the values live in etcd under a
//! prefix, shared by every gateway on it: writes go to etcd, and the store mirrors the prefix
//! (plugins still read memory; the version is etcd's revision of the key).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Why a change could not be saved.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The persistence file could not be written or read.
    #[error("kv file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The persistence file is not what we wrote.
    #[error("kv file {path}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// How a value is written in the file: UTF-8 as text, anything else as a byte list.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum StoredValue {
    Text { text: String, version: u64 },
    Bytes { bytes: Vec<u8>, version: u64 },
}

/// The key-value store.
#[derive(Debug, Default)]
pub struct KvStore {
    entries: RwLock<BTreeMap<String, (Bytes, u64)>>,
    version: AtomicU64,
    file: Option<PathBuf>,
    remote: OnceLock<Box<dyn RemoteKv>>,
}

/// A shared backend the store mirrors (etcd, with `[kv] backend = "etcd"`): writes go there,
/// and the gateway feeds what it holds back with [`KvStore::reset`] and [`KvStore::change`].
pub trait RemoteKv: std::fmt::Debug + Send + Sync {
    /// Writes a value; its new version.
    fn put<'a>(&'a self, key: &'a str, value: Bytes) -> RemoteFuture<'a, u64>;
    /// Deletes a key; whether it existed.
    fn delete<'a>(&'a self, key: &'a str) -> RemoteFuture<'a, bool>;
}

/// What a [`RemoteKv`] call returns: its result, or why the backend failed.
pub type RemoteFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, String>> + Send + 'a>>;

impl KvStore {
    /// A store kept in memory only.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// A store persisted to `file`, loading what it holds.
    pub fn open(file: &Path) -> Result<Self, KvError> {
        let mut entries = BTreeMap::new();
        let mut max_version = 0;
        // The file holds secrets (JWT keys): never read or replace it through a link that
        // could point at a file someone else controls.
        if std::fs::symlink_metadata(file).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(KvError::Corrupt {
                path: file.to_owned(),
                message: "is a symbolic link; kv.file must be a regular file".into(),
            });
        }
        match std::fs::read(file) {
            Ok(bytes) => {
                let stored: BTreeMap<String, StoredValue> = serde_json::from_slice(&bytes)
                    .map_err(|e| KvError::Corrupt {
                        path: file.to_owned(),
                        message: e.to_string(),
                    })?;
                for (key, value) in stored {
                    let (value, version) = match value {
                        StoredValue::Text { text, version } => (Bytes::from(text), version),
                        StoredValue::Bytes { bytes, version } => (Bytes::from(bytes), version),
                    };
                    max_version = max_version.max(version);
                    entries.insert(key, (value, version));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(KvError::File {
                    path: file.to_owned(),
                    source,
                });
            }
        }
        Ok(Self {
            entries: RwLock::new(entries),
            version: AtomicU64::new(max_version),
            file: Some(file.to_owned()),
            remote: OnceLock::new(),
        })
    }

    /// Sends writes to a shared backend from now on (`[kv] backend = "etcd"`).
    pub fn attach_remote(&self, remote: Box<dyn RemoteKv>) {
        let _ = self.remote.set(remote);
    }

    /// The shared backend, when the store lives in one.
    pub fn remote(&self) -> Option<&dyn RemoteKv> {
        self.remote.get().map(|r| &**r)
    }

    /// Replaces everything with what the shared backend holds (key, value, version).
    pub fn reset(&self, entries: Vec<(String, Vec<u8>, i64)>) {
        let mut map = self.entries.write().expect("kv lock");
        *map = entries
            .into_iter()
            .map(|(k, v, revision)| (k, (Bytes::from(v), revision as u64)))
            .collect();
    }

    /// One change in the shared backend: `Some(value)` for a put, `None` for a delete.
    pub fn change(&self, key: &str, value: Option<&[u8]>, revision: i64) {
        let mut map = self.entries.write().expect("kv lock");
        match value {
            Some(v) => {
                map.insert(key.to_owned(), (Bytes::copy_from_slice(v), revision as u64));
            }
            None => {
                map.remove(key);
            }
        }
    }

    /// Waits (up to `limit`) until the mirror holds `key` at `version` or later, or (with
    /// `None`) no longer holds it: a write through this gateway is then visible to its
    /// plugins when the admin call returns.
    pub async fn wait_for(&self, key: &str, version: Option<u64>, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let current = self.get(key).map(|(_, v)| v);
            let done = match version {
                Some(want) => current.is_some_and(|v| v >= want),
                None => current.is_none(),
            };
            if done {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The value and version of a key.
    pub fn get(&self, key: &str) -> Option<(Bytes, u64)> {
        self.entries.read().expect("kv lock").get(key).cloned()
    }

    /// The version of a key, without its value.
    pub fn version(&self, key: &str) -> Option<u64> {
        self.entries
            .read()
            .expect("kv lock")
            .get(key)
            .map(|(_, v)| *v)
    }

    /// Every key with its version.
    pub fn list(&self) -> Vec<(String, u64)> {
        self.entries
            .read()
            .expect("kv lock")
            .iter()
            .map(|(k, (_, v))| (k.clone(), *v))
            .collect()
    }

    /// Sets a value; returns its new version. The value is on disk (with `kv.file`) before
    /// plugins can read it: a write that cannot be saved changes nothing.
    pub fn put(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        let version = self.version.fetch_add(1, Ordering::SeqCst) + 1;
        let mut entries = self.entries.write().expect("kv lock");
        if self.file.is_some() {
            // Values are `Bytes`: the copy shares them.
            let mut next = entries.clone();
            next.insert(key.to_owned(), (value, version));
            self.persist(&next)?;
            *entries = next;
        } else {
            entries.insert(key.to_owned(), (value, version));
        }
        Ok(version)
    }

    /// Removes a key; whether it existed. Persisted before it is applied, as [`Self::put`].
    pub fn delete(&self, key: &str) -> Result<bool, KvError> {
        let mut entries = self.entries.write().expect("kv lock");
        if !entries.contains_key(key) {
            return Ok(false);
        }
        if self.file.is_some() {
            let mut next = entries.clone();
            next.remove(key);
            self.persist(&next)?;
            *entries = next;
        } else {
            entries.remove(key);
        }
        Ok(true)
    }

    fn persist(&self, entries: &BTreeMap<String, (Bytes, u64)>) -> Result<(), KvError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let stored: BTreeMap<&str, StoredValue> = entries
            .iter()
            .map(|(k, (v, version))| {
                let value = match std::str::from_utf8(v) {
                    Ok(text) => StoredValue::Text {
                        text: text.to_owned(),
                        version: *version,
                    },
                    Err(_) => StoredValue::Bytes {
                        bytes: v.to_vec(),
                        version: *version,
                    },
                };
                (k.as_str(), value)
            })
            .collect();
        let json = serde_json::to_vec_pretty(&stored).expect("kv entries serialize");
        let io = |source| KvError::File {
            path: path.clone(),
            source,
        };
        write_private_file(path, &json).map_err(io)
    }
}

/// Replaces `path` with `bytes` so that a crash leaves the old file or the new one, never a
/// half-written one, and only the gateway's user can read it: a fresh temp file beside it
/// (mode 0600, created exclusively under a random name, so no planted link is followed),
/// written and fsynced, then renamed over `path` (a rename replaces a link at `path` rather
/// than writing through it), then the directory fsynced so the rename survives a crash.
fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".sluice-kv-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a shared backend holds replaces the store, and its changes apply one by one,
    /// each at the backend's version (what an admin write through the backend waits for).
    #[tokio::test]
    async fn a_shared_backend_s_state_and_changes_are_mirrored() {
        let kv = KvStore::in_memory();
        kv.put("local", Bytes::from_static(b"x")).unwrap();
        kv.reset(vec![
            ("a".into(), b"1".to_vec(), 7),
            ("b".into(), b"2".to_vec(), 9),
        ]);
        assert_eq!(kv.get("local"), None, "a reset replaces everything");
        assert_eq!(kv.get("a"), Some((Bytes::from_static(b"1"), 7)));
        kv.change("a", Some(b"3"), 11);
        kv.change("b", None, 12);
        assert_eq!(kv.get("a"), Some((Bytes::from_static(b"3"), 11)));
        assert!(kv.get("b").is_none());
        assert!(kv.wait_for("a", Some(11), Duration::from_millis(1)).await);
        assert!(!kv.wait_for("a", Some(12), Duration::from_millis(20)).await);
        assert!(kv.wait_for("b", None, Duration::from_millis(1)).await);
        assert!(kv.remote().is_none());
    }

    #[test]
    fn versions_grow_and_values_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kv.json");
        let kv = KvStore::open(&file).unwrap();
        let v1 = kv.put("jwt/key", Bytes::from_static(b"secret-1")).unwrap();
        let v2 = kv.put("bin", Bytes::from_static(&[0xff, 0x00])).unwrap();
        assert!(v2 > v1);
        let again = KvStore::open(&file).unwrap();
        assert_eq!(
            again.get("jwt/key"),
            Some((Bytes::from_static(b"secret-1"), v1))
        );
        assert_eq!(
            again.get("bin").unwrap().0,
            Bytes::from_static(&[0xff, 0x00])
        );
        assert!(
            again.put("x", Bytes::new()).unwrap() > v2,
            "versions keep growing after a restart"
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_file_is_private_never_followed_and_written_before_applied() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kv.json");
        let kv = KvStore::open(&file).unwrap();
        kv.put("auth/keys", Bytes::from_static(b"secret")).unwrap();
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "kv file mode {mode:o}");

        // A link planted at the file's place is refused at open...
        let elsewhere = dir.path().join("elsewhere.json");
        std::fs::write(&elsewhere, "{}").unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        let e = KvStore::open(&link).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        // ...and one planted after open is replaced, not written through.
        let kv2 = KvStore::open(&dir.path().join("later.json")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.path().join("later.json")).unwrap();
        kv2.put("k", Bytes::from_static(b"v")).unwrap();
        assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "{}");

        // A write that cannot be saved is not applied (its directory is gone).
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let kv3 = KvStore::open(&sub.join("kv.json")).unwrap();
        kv3.put("before", Bytes::from_static(b"1")).unwrap();
        std::fs::remove_dir_all(&sub).unwrap();
        assert!(kv3.put("after", Bytes::from_static(b"2")).is_err());
        assert_eq!(kv3.get("after"), None, "a failed write is not applied");
        assert!(kv3.delete("before").is_err());
        assert!(
            kv3.get("before").is_some(),
            "a failed delete is not applied"
        );
    }
}
