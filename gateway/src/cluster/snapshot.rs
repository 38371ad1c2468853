//! The last-known-good configuration on disk: every revision a node applies is written here,
//! so a node that starts while etcd is unreachable still has a configuration to serve.
//!
//! The file is JSON (`{"revision": N, "key": "...", "document": "TOML text"}`), written
//! atomically: a temporary file in the same directory (mode 0600), fsync, rename over the old
//! one, fsync of the directory. A crash at any point leaves the old file or the new one.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One applied revision of the cluster document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedConfig {
    /// The etcd mod revision of the document.
    pub revision: i64,
    /// The etcd key it was read from.
    pub key: String,
    /// The document (TOML).
    pub document: String,
}

/// Where the snapshot goes when `[cluster] snapshot` is not set: `$STATE_DIRECTORY` (set by
/// systemd's `StateDirectory=`), else `$XDG_STATE_HOME/sluice`, else
/// `~/.local/state/sluice`, else `./`; the file is `cluster-config.snapshot`.
pub fn default_path() -> PathBuf {
    let dir = std::env::var_os("STATE_DIRECTORY")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_STATE_HOME").map(|d| PathBuf::from(d).join("sluice")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/sluice")))
        .unwrap_or_else(|| PathBuf::from("."));
    dir.join("cluster-config.snapshot")
}

/// Reads a snapshot; `Ok(None)` when there is none.
pub fn read(path: &Path) -> Result<Option<SavedConfig>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            format!(
                "{}: not a sluice configuration snapshot: {e}",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Writes a snapshot atomically (see the module documentation).
pub fn write(path: &Path, saved: &SavedConfig) -> Result<(), String> {
    let fail = |what: &str, e: std::io::Error| format!("{}: {what}: {e}", path.display());
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| fail("creating its directory", e))?;
    let name = path
        .file_name()
        .map_or_else(|| "snapshot".into(), |n| n.to_string_lossy().into_owned());
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let bytes = serde_json::to_vec_pretty(saved).expect("a snapshot serializes");
    let written = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temp)?;
        file.write_all(&bytes)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(fail("writing", e));
    }
    if let Err(e) = std::fs::rename(&temp, path) {
        let _ = std::fs::remove_file(&temp);
        return Err(fail("renaming into place", e));
    }
    // The rename is durable once the directory is synced.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_round_trips_and_is_private_to_its_owner() {
        let dir = std::env::temp_dir().join(format!("sluice-snap-{}", std::process::id()));
        let path = dir.join("sub/config.snapshot");
        assert_eq!(read(&path).unwrap(), None);
        let saved = SavedConfig {
            revision: 7,
            key: "/sluice/cluster/config".into(),
            document: "[services.a]\n".into(),
        };
        write(&path, &saved).unwrap();
        assert_eq!(read(&path).unwrap(), Some(saved.clone()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let newer = SavedConfig {
            revision: 8,
            ..saved
        };
        write(&path, &newer).unwrap();
        assert_eq!(read(&path).unwrap().unwrap().revision, 8);
        let leftovers = std::fs::read_dir(path.parent().unwrap()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file left behind");
        std::fs::write(&path, "garbage").unwrap();
        assert!(
            read(&path)
                .unwrap_err()
                .contains("not a sluice configuration snapshot")
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
