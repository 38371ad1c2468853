//! Builds the built-in plugins (`plugins/*`, written against the SDK) for wasm32-wasip2 and
//! embeds them in the gateway binary: `OUT_DIR/builtins.rs` lists `(name, bytes)`.
//!
//! The nested cargo gets its own target directory (the outer build holds the lock on its own)
//! shared by every profile, and none of the outer build's flags.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest_dir
        .parent()
        .expect("gateway/ sits in the repository")
        .to_owned();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    for watched in [
        "plugins",
        "plugin-sdk/src",
        "plugin-sdk/Cargo.toml",
        "crates",
        "wit",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=SLUICE_SKIP_BUILTINS");

    // The echo service of the gRPC pass-through tests (tests/it/grpc.rs includes it).
    println!(
        "cargo:rerun-if-changed={}",
        root.join("tests/proto").display()
    );
    tonic_prost_build::configure()
        .out_dir(&out_dir)
        .compile_protos(
            &[root.join("tests/proto/echo.proto")],
            &[root.join("tests/proto")],
        )
        .expect("compiling tests/proto/echo.proto (is protoc installed? scripts/setup-system-packages.sh)");

    let names = builtin_names(&root.join("plugins"));
    let skip = std::env::var_os("SLUICE_SKIP_BUILTINS").is_some();
    let mut entries = Vec::new();
    if !names.is_empty() && !skip {
        let target = wasm_target_dir(&out_dir);
        build(&root, &target, &names);
        for name in &names {
            let package = package_name(&root.join("plugins").join(name));
            let wasm = target
                .join("wasm32-wasip2/release")
                .join(format!("{}.wasm", package.replace('-', "_")));
            assert!(
                wasm.exists(),
                "built-in plugin {name}: {} was not built",
                wasm.display()
            );
            entries.push(format!(
                "    ({name:?}, include_bytes!({:?})),",
                wasm.display().to_string()
            ));
        }
    }
    let code = format!(
        "/// Built-in plugins: name and component bytes.\npub const BUILTINS: &[(&str, &[u8])] = &[\n{}\n];\n",
        entries.join("\n")
    );
    std::fs::write(out_dir.join("builtins.rs"), code).expect("writing builtins.rs");
}

/// Every `plugins/NAME/` with a Cargo.toml.
fn builtin_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().join("Cargo.toml").exists())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// The package name in `dir/Cargo.toml`: usually the directory's name, but the `tracing`
/// plugin's package is `tracing-plugin` (a workspace package named `tracing` would clash with
/// the `tracing` crate in `cargo -p`). The plugin is embedded under the directory's name.
fn package_name(dir: &Path) -> String {
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("reading Cargo.toml");
    manifest
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once('=')?;
            (key.trim() == "name").then(|| value.trim().trim_matches('"').to_owned())
        })
        .expect("a [package] name")
}

/// `<target>/wasm-builtins`, next to the outer build's profiles (OUT_DIR is
/// `<target>/<profile>/build/<pkg>-<hash>/out`), so debug, release and clippy share it.
fn wasm_target_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .nth(4)
        .unwrap_or(out_dir)
        .join("wasm-builtins")
}

fn build(root: &Path, target: &Path, names: &[String]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--target", "wasm32-wasip2"])
        .current_dir(root)
        .env("CARGO_TARGET_DIR", target);
    for name in names {
        cmd.args(["-p", &package_name(&root.join("plugins").join(name))]);
    }
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd
        .output()
        .expect("running cargo to build the built-in plugins");
    assert!(
        out.status.success(),
        "building the built-in plugins for wasm32-wasip2 failed (is the target installed? \
         `rustup target add wasm32-wasip2`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
