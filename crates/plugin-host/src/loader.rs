//! From bytes to a plugin ready to serve: check the file is a component, compile it off the
//! request path, check it fits the world, and run `init` with its configuration. Each way a
//! file can be wrong has its own message.

use std::path::Path;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use super::bindings::{v0_1, v0_2};
use super::host::HostState;
use super::loaded::PluginPre;

/// Largest plugin file accepted.
pub const MAX_PLUGIN_BYTES: usize = 64 * 1024 * 1024;

/// Why a plugin file cannot be used.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read the file: {0}")]
    Read(String),
    /// Empty or cut short before the header.
    #[error("the file is empty or truncated ({0} bytes)")]
    Truncated(usize),
    /// Over the size cap.
    #[error("the file is {0} bytes, over the {MAX_PLUGIN_BYTES}-byte limit")]
    TooLarge(usize),
    /// No `\0asm` magic.
    #[error("not a WebAssembly file (no \\0asm header)")]
    NotWasm,
    /// A core module instead of a component.
    #[error(
        "a core WebAssembly module, not a component: build for wasm32-wasip2 (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule,
    /// A wasm binary of an unknown layer or version.
    #[error("unsupported WebAssembly binary (version/layer bytes {0:02x?})")]
    UnknownLayer([u8; 4]),
    /// wasmtime could not compile it (often a truncated file).
    #[error("cannot compile the component: {0}")]
    Compile(String),
    /// Its imports or exports match no contract version the gateway serves.
    #[error(
        "the component does not implement sluice:plugin/plugin@0.2.0 or @0.1.0 (the versions this gateway serves): {0}"
    )]
    WrongWorld(String),
    /// `init` refused the configuration, or the first instance failed.
    #[error("{0}")]
    Activate(String),
}

/// A compiled component that fits the world.
pub struct Compiled {
    /// Pre-instantiated component, with the contract version it targets.
    pub pre: PluginPre,
    /// SHA-256 of the bytes, hex.
    pub digest: String,
    /// What the component imports (for `sluice plugin check`).
    pub imports: Vec<String>,
    /// What it exports.
    pub exports: Vec<String>,
}

/// Reads a plugin file: a regular file, not a symbolic link (checked on the path, then on
/// the opened file, so a swap between the two is caught too).
pub fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    use std::io::Read as _;
    let link = std::fs::symlink_metadata(path).map_err(|e| LoadError::Read(e.to_string()))?;
    if let Some(why) = super::sandbox::refuse_non_regular(link.file_type()) {
        return Err(LoadError::Read(format!("{} {why}", path.display())));
    }
    let mut file = std::fs::File::open(path).map_err(|e| LoadError::Read(e.to_string()))?;
    let meta = file
        .metadata()
        .map_err(|e| LoadError::Read(e.to_string()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if (meta.dev(), meta.ino()) != (link.dev(), link.ino()) {
            return Err(LoadError::Read(format!(
                "{} changed while being opened (replaced by a link?)",
                path.display()
            )));
        }
    }
    if meta.len() as usize > MAX_PLUGIN_BYTES {
        return Err(LoadError::TooLarge(meta.len() as usize));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut bytes)
        .map_err(|e| LoadError::Read(e.to_string()))?;
    Ok(bytes)
}

/// Checks the header: `\0asm`, then the component layer.
pub fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() > MAX_PLUGIN_BYTES {
        return Err(LoadError::TooLarge(bytes.len()));
    }
    if bytes.len() < 8 {
        return if bytes.is_empty() || b"\0asm".starts_with(&bytes[..bytes.len().min(4)]) {
            Err(LoadError::Truncated(bytes.len()))
        } else {
            Err(LoadError::NotWasm)
        };
    }
    if &bytes[..4] != b"\0asm" {
        return Err(LoadError::NotWasm);
    }
    match [bytes[4], bytes[5], bytes[6], bytes[7]] {
        [0x0d, 0x00, 0x01, 0x00] => Ok(()),
        [0x01, 0x00, 0x00, 0x00] => Err(LoadError::CoreModule),
        other => Err(LoadError::UnknownLayer(other)),
    }
}

/// Compiles and checks a component. CPU-heavy (up to seconds): the runtime calls it on its
/// low-priority compile pool (`compiler.rs`).
pub fn compile(
    engine: &Engine,
    linker: &Linker<HostState>,
    bytes: &[u8],
) -> Result<Compiled, LoadError> {
    check_header(bytes)?;
    let digest = digest(bytes);
    let component =
        Component::new(engine, bytes).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
    let ty = component.component_type();
    let imports: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    let exports = ty
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    let pre = linker
        .instantiate_pre(&component)
        .map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
    // The linker holds both versions' imports, so the exports tell the versions apart
    // (0.2.0's `init` returns the plugin's hooks). The newest is tried first; when neither
    // fits, the message is the one of the version the component's imports name.
    let pre = match v0_2::PluginPre::new(pre.clone()) {
        Ok(pre) => PluginPre::V0_2(pre),
        Err(newest) => match v0_1::PluginPre::new(pre) {
            Ok(pre) => PluginPre::V0_1(pre),
            Err(oldest) => {
                let names_0_1 = imports
                    .iter()
                    .any(|i: &String| i.starts_with("sluice:plugin/") && i.ends_with("@0.1.0"));
                let e = if names_0_1 { oldest } else { newest };
                return Err(LoadError::WrongWorld(format!("{e:#}")));
            }
        },
    };
    Ok(Compiled {
        pre,
        digest,
        imports,
        exports,
    })
}

/// SHA-256 of the bytes, as lower-case hex.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checks_name_each_bad_file() {
        assert_eq!(check_header(b""), Err(LoadError::Truncated(0)));
        assert_eq!(check_header(b"\0as"), Err(LoadError::Truncated(3)));
        assert_eq!(check_header(b"hello world"), Err(LoadError::NotWasm));
        assert_eq!(check_header(b"\0asm\x01\0\0\0"), Err(LoadError::CoreModule));
        assert_eq!(check_header(b"\0asm\x0d\0\x01\0"), Ok(()));
        assert!(matches!(
            check_header(b"\0asm\x02\0\0\0"),
            Err(LoadError::UnknownLayer(_))
        ));
    }
}
