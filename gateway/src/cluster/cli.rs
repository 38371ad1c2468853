//! `sluice config push|get|diff`: the operator's side of the cluster configuration.
//!
//! `push` validates the file as every node will (the same checks and messages), then writes
//! it with a compare-and-swap (an etcd transaction on the key's mod revision read just
//! before), so two operators pushing at once cannot silently overwrite each other.

use std::path::Path;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, Txn, TxnOp};

use super::{DOCUMENT_KEY, parse_document};

/// Where the cluster configuration is, as the command line names it.
#[derive(Debug, Clone)]
pub struct Target {
    /// etcd client endpoints.
    pub endpoints: Vec<String>,
    /// The `[cluster] prefix` of the nodes.
    pub prefix: String,
    /// etcd user and password.
    pub user: Option<(String, String)>,
    /// TLS to etcd (`--tls-ca`, `--tls-cert`, `--tls-key`).
    pub tls: Option<crate::etcd::EtcdTls>,
}

impl Target {
    /// The document's key.
    pub fn key(&self) -> String {
        format!("{}{DOCUMENT_KEY}", self.prefix)
    }

    async fn connect(&self) -> Result<Client, String> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(5));
        if let Some((name, password)) = &self.user {
            options = options.with_user(name.clone(), password.clone());
        }
        match &self.tls {
            Some(tls) => {
                crate::etcd::connect_tls(&self.endpoints, tls, options, Duration::from_secs(5))
                    .await
                    .map_err(|e| format!("cannot connect to etcd: {e}"))
            }
            None => Client::connect(&self.endpoints, Some(options))
                .await
                .map_err(|e| format!("cannot connect to etcd at {:?}: {e}", self.endpoints)),
        }
    }

    /// The document now and its mod revision (0 and empty when there is none).
    pub async fn get(&self) -> Result<(i64, Option<String>), String> {
        let mut client = self.connect().await?;
        read(&mut client, &self.key()).await
    }
}

async fn read(client: &mut Client, key: &str) -> Result<(i64, Option<String>), String> {
    let response = client
        .get(key, None)
        .await
        .map_err(|e| format!("reading {key}: {e}"))?;
    match response.kvs().first() {
        None => Ok((0, None)),
        Some(kv) => {
            let text = String::from_utf8(kv.value().to_vec())
                .map_err(|_| format!("{key}: the document is not UTF-8 text"))?;
            Ok((kv.mod_revision(), Some(text)))
        }
    }
}

/// Reads and validates a file as a cluster document.
pub fn read_file(file: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("{}: cannot read: {e}", file.display()))?;
    parse_document(&text, &file.display().to_string()).map_err(|e| e.to_string())?;
    Ok(text)
}

/// `sluice config push FILE`: validates, then writes if the key has not changed since it was
/// read. Returns (the revision replaced, the new revision).
pub async fn push(target: &Target, file: &Path) -> Result<(i64, i64), String> {
    let text = read_file(file)?;
    let key = target.key();
    let mut client = target.connect().await?;
    let (read_revision, _) = read(&mut client, &key).await?;
    // A key that does not exist has mod revision 0 in a comparison.
    let txn = Txn::new()
        .when([Compare::mod_revision(
            key.as_str(),
            CompareOp::Equal,
            read_revision,
        )])
        .and_then([TxnOp::put(key.as_str(), text, None)]);
    let response = client
        .txn(txn)
        .await
        .map_err(|e| format!("writing {key}: {e}"))?;
    if !response.succeeded() {
        let (now, _) = read(&mut client, &key).await?;
        return Err(format!(
            "{key} changed while pushing (revision {read_revision} was read, it is now {now}); \
             nothing was written: check `sluice config diff` and push again"
        ));
    }
    let revision = response.header().map_or(0, |h| h.revision());
    Ok((read_revision, revision))
}

/// `sluice config diff FILE`: a unified line diff from the document on etcd to the file
/// (empty when they are the same).
pub async fn diff(target: &Target, file: &Path) -> Result<String, String> {
    let text = read_file(file)?;
    let (revision, current) = target.get().await?;
    let current = current.unwrap_or_default();
    Ok(unified(
        &current,
        &text,
        &format!("etcd:{}@{revision}", target.key()),
        &file.display().to_string(),
    ))
}

/// A unified diff of two texts, empty when they are equal.
pub fn unified(old: &str, new: &str, old_name: &str, new_name: &str) -> String {
    if old == new {
        return String::new();
    }
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(old_name, new_name)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_diff_shows_changed_lines_only_with_context() {
        let old = "[services.a]\ninstances = [\"127.0.0.1:1\"]\n";
        let new = "[services.a]\ninstances = [\"127.0.0.1:2\"]\n";
        let d = unified(old, new, "etcd:/k@3", "new.toml");
        assert!(d.starts_with("--- etcd:/k@3\n+++ new.toml\n"), "{d}");
        assert!(d.contains("-instances = [\"127.0.0.1:1\"]\n"), "{d}");
        assert!(d.contains("+instances = [\"127.0.0.1:2\"]\n"), "{d}");
        assert!(d.contains(" [services.a]\n"), "{d}");
        assert_eq!(unified(old, old, "a", "b"), "");
    }
}
