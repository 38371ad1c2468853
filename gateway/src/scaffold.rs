//! `sluice plugin new`: writes a working plugin project in Rust, Python or JavaScript. Every
//! template builds as generated; the Rust one vendors the SDK and the WIT so it builds
//! anywhere, with no path back into this repository.

use std::path::{Path, PathBuf};

/// The language of a new plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, with `sluice-plugin-sdk`.
    Rust,
    /// Python, with componentize-py.
    Python,
    /// JavaScript, with componentize-js.
    Js,
}

/// Why a project could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The name is not usable as a plugin (file) name.
    #[error(
        "invalid plugin name `{0}`: use lower-case letters, digits and `-`, starting with a letter (at most 64)"
    )]
    InvalidName(String),
    /// The target directory exists and is not empty.
    #[error("{0} already exists and is not empty")]
    Exists(PathBuf),
    /// Writing failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

const WIT: &str = include_str!("../../wit/plugin.wit");

const RUST_CARGO: &str = include_str!("../templates/rust/Cargo.toml.tmpl");
const RUST_LIB: &str = include_str!("../templates/rust/lib.rs.tmpl");
const RUST_README: &str = include_str!("../templates/rust/README.md.tmpl");
const SDK_CARGO: &str = r#"[package]
name = "sluice-plugin-sdk"
version = "0.1.0"
edition = "2024"
description = "Write Sluice gateway plugins in Rust (vendored by `sluice plugin new`)"
publish = false

[features]
testing = []
# Native signature verification in the test host (builds aws-lc, a C library).
testing-crypto = ["testing", "dep:aws-lc-rs", "dep:pem"]

[dependencies]
wit-bindgen = "0.61"
serde = { version = "1", features = ["derive"] }
serde_json = "1"
humantime = "2"

[target.'cfg(not(target_arch = "wasm32"))'.dependencies]
aws-lc-rs = { version = "1.19", optional = true, default-features = false, features = ["aws-lc-sys", "prebuilt-nasm"] }
pem = { version = "3", optional = true }
"#;
const SDK_SOURCES: &[(&str, &str)] = &[
    ("lib.rs", include_str!("../../plugin-sdk/src/lib.rs")),
    (
        "backend.rs",
        include_str!("../../plugin-sdk/src/backend.rs"),
    ),
    (
        "bindings.rs",
        include_str!("../../plugin-sdk/src/bindings.rs"),
    ),
    ("config.rs", include_str!("../../plugin-sdk/src/config.rs")),
    ("crypto.rs", include_str!("../../plugin-sdk/src/crypto.rs")),
    ("host.rs", include_str!("../../plugin-sdk/src/host.rs")),
    ("http.rs", include_str!("../../plugin-sdk/src/http.rs")),
    ("kv.rs", include_str!("../../plugin-sdk/src/kv.rs")),
    (
        "outbound.rs",
        include_str!("../../plugin-sdk/src/outbound.rs"),
    ),
    ("state.rs", include_str!("../../plugin-sdk/src/state.rs")),
    (
        "testing.rs",
        include_str!("../../plugin-sdk/src/testing.rs"),
    ),
];

const PY_APP: &str = include_str!("../templates/python/app.py.tmpl");
const PY_HELPERS: &str = include_str!("../../examples/python-apikey/sluice.py");
const PY_REQUIREMENTS: &str = include_str!("../../examples/python-apikey/requirements.txt");
const PY_BUILD: &str = include_str!("../templates/python/build.sh.tmpl");
const PY_README: &str = include_str!("../templates/python/README.md.tmpl");

const JS_PLUGIN: &str = include_str!("../templates/js/plugin.js.tmpl");
const JS_PACKAGE: &str = include_str!("../templates/js/package.json.tmpl");
const JS_BUILD: &str = include_str!("../templates/js/build.sh.tmpl");
const JS_README: &str = include_str!("../templates/js/README.md.tmpl");

/// Writes a new plugin project `DIR/NAME` and returns its path.
pub fn new_plugin(name: &str, lang: Lang, dir: &Path) -> Result<PathBuf, ScaffoldError> {
    check_name(name)?;
    let root = dir.join(name);
    if root.exists()
        && std::fs::read_dir(&root)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(ScaffoldError::Exists(root));
    }
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{type}}", &type_name(name))
    };
    let config =
        "# The plugin's config: the gateway gives it to `init` as JSON.\ngreeting = \"hello\"\n";
    let mut files: Vec<(String, String, bool)> = vec![
        ("wit/plugin.wit".into(), WIT.into(), false),
        (format!("{name}.toml"), config.into(), false),
    ];
    match lang {
        Lang::Rust => {
            files.push(("Cargo.toml".into(), fill(RUST_CARGO), false));
            files.push(("src/lib.rs".into(), fill(RUST_LIB), false));
            files.push(("README.md".into(), fill(RUST_README), false));
            files.push((".gitignore".into(), "target/\n".into(), false));
            files.push(("sdk/Cargo.toml".into(), SDK_CARGO.into(), false));
            for (file, source) in SDK_SOURCES {
                files.push((format!("sdk/src/{file}"), (*source).into(), false));
            }
        }
        Lang::Python => {
            files.push(("app.py".into(), fill(PY_APP), false));
            files.push(("sluice.py".into(), PY_HELPERS.into(), false));
            files.push(("requirements.txt".into(), PY_REQUIREMENTS.into(), false));
            files.push(("build.sh".into(), fill(PY_BUILD), true));
            files.push(("README.md".into(), fill(PY_README), false));
            files.push((".gitignore".into(), "__pycache__/\n*.wasm\n".into(), false));
        }
        Lang::Js => {
            files.push(("plugin.js".into(), fill(JS_PLUGIN), false));
            files.push(("package.json".into(), fill(JS_PACKAGE), false));
            files.push(("build.sh".into(), fill(JS_BUILD), true));
            files.push(("README.md".into(), fill(JS_README), false));
            files.push((".gitignore".into(), "node_modules/\n*.wasm\n".into(), false));
        }
    }
    for (file, text, executable) in files {
        write(&root.join(file), &text, executable)?;
    }
    Ok(root)
}

fn write(path: &Path, text: &str, executable: bool) -> Result<(), ScaffoldError> {
    let io = |source| ScaffoldError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(path, text).map_err(io)?;
    if executable {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
    }
    Ok(())
}

/// Plugin names become file names, crate names and metric labels: keep them plain.
fn check_name(name: &str) -> Result<(), ScaffoldError> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ScaffoldError::InvalidName(name.to_owned()))
    }
}

/// `my-plugin` → `MyPlugin`.
fn type_name(name: &str) -> String {
    name.split('-')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or(String::new(), |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_typed() {
        assert!(check_name("rate-limit2").is_ok());
        for bad in ["", "Rate", "2fast", "a_b", "a-", "a/b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(type_name("rate-limit2"), "RateLimit2");
    }

    #[test]
    fn an_existing_project_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        new_plugin("p", Lang::Python, dir.path()).unwrap();
        assert!(matches!(
            new_plugin("p", Lang::Js, dir.path()),
            Err(ScaffoldError::Exists(_))
        ));
    }
}
