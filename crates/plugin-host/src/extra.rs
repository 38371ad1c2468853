//! Plugin files named outside the plugin directory: `SLUICE_PLUGINS=/path/a.wasm,/path/b.wasm`
//! (the habit of the seed's `MICRO_PLUGIN=a.so,b.so`). They load beside the directory's,
//! named after their file, with the same checks; a name in both is loaded from the file named
//! here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The environment variable `sluice run` reads.
pub const ENV: &str = "SLUICE_PLUGINS";

/// The plugin files of a `SLUICE_PLUGINS` value: comma-separated paths to `.wasm` files
/// (empty entries and surrounding spaces are ignored). Each must name an existing `.wasm`
/// file, and two may not share a name.
pub fn parse_list(value: &str) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    let mut names: BTreeMap<String, PathBuf> = BTreeMap::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let path = PathBuf::from(entry);
        let name = plugin_name(&path)
            .ok_or_else(|| format!("{ENV}: `{entry}` is not a plugin file (NAME.wasm)"))?;
        if !path.is_file() {
            return Err(format!("{ENV}: `{entry}`: no such file"));
        }
        if let Some(other) = names.insert(name.clone(), path.clone()) {
            return Err(format!(
                "{ENV}: `{}` and `{entry}` would both be plugin `{name}`",
                other.display()
            ));
        }
        files.push(path);
    }
    Ok(files)
}

/// A plugin's name from its file: `auth.wasm` → `auth`.
fn plugin_name(path: &Path) -> Option<String> {
    if path.extension()? != "wasm" {
        return None;
    }
    path.file_stem()?.to_str().map(str::to_owned)
}

/// Adds the named files to the directory's `NAME → path (or why it is refused)` map; they
/// are then read with the same checks as the directory's files.
pub(super) fn add_files(files: &mut BTreeMap<String, Result<PathBuf, String>>, extra: &[PathBuf]) {
    for path in extra {
        let Some(name) = plugin_name(path) else {
            continue;
        };
        if let Some(shadowed) = files.insert(name.clone(), Ok(path.clone())) {
            let ignored = match &shadowed {
                Ok(p) => p.display().to_string(),
                Err(why) => why.clone(),
            };
            tracing::warn!(target: crate::LOG_TARGET,
                plugin = name,
                loaded = %path.display(),
                ignored,
                "{ENV} names a plugin the plugin directory has too; loading the one {ENV} names"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_names_existing_wasm_files_once_each() {
        let dir = std::env::temp_dir().join(format!("sluice-extra-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("other")).unwrap();
        for f in ["a.wasm", "b.wasm", "other/a.wasm", "c.txt"] {
            std::fs::write(dir.join(f), b"").unwrap();
        }
        let p = |f: &str| dir.join(f).display().to_string();
        let list = parse_list(&format!(" {} ,,{}", p("a.wasm"), p("b.wasm"))).unwrap();
        assert_eq!(list, [dir.join("a.wasm"), dir.join("b.wasm")]);
        assert!(parse_list("").unwrap().is_empty());
        let e = parse_list(&p("missing.wasm")).unwrap_err();
        assert!(e.contains("no such file"), "{e}");
        let e = parse_list(&p("c.txt")).unwrap_err();
        assert!(e.contains("is not a plugin file"), "{e}");
        let e = parse_list(&format!("{},{}", p("a.wasm"), p("other/a.wasm"))).unwrap_err();
        assert!(e.contains("would both be plugin `a`"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
