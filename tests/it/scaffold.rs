//! `sluice plugin new`: each template, as generated, builds, loads into a gateway and does
//! what its README says.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::*;

/// Runs `sluice plugin new NAME --lang LANG` into a temp dir; returns (tempdir, project).
fn generate(name: &str, lang: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["plugin", "new", name, "--lang", lang, "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let project = dir.path().join(name);
    assert!(project.join("README.md").exists() && project.join("wit/plugin.wit").exists());
    (dir, project)
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Loads the built plugin (with the generated NAME.toml) into a gateway and checks the
/// template's behaviour: `x-greeting` from the config on the request, `x-plugin` on the
/// response.
async fn check_live(name: &str, wasm: &Path, project: &Path) {
    let up = Upstream::named("upstream").await;
    let plugins = tempfile::tempdir().unwrap();
    std::fs::copy(wasm, plugins.path().join(format!("{name}.wasm"))).unwrap();
    std::fs::copy(
        project.join(format!("{name}.toml")),
        plugins.path().join(format!("{name}.toml")),
    )
    .unwrap();
    let gw = gateway(&format!(
        "[plugins]\ndir = \"{}\"\ncache_dir = \"{}\"\n[services.s]\ninstances = [\"{}\"]\n[[routes]]\npath = \"/\"\nservice = \"s\"\nplugins = [\"{name}\"]\n",
        plugins.path().display(),
        plugin_cache_dir().display(),
        up.addr
    ))
    .await;
    let (status, headers, body) = get(gw.listen_addr, "/try").await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (200, "upstream"),
        "{name}"
    );
    assert_eq!(
        up.last().headers["x-greeting"],
        "hello",
        "{name}: config from {name}.toml"
    );
    assert_eq!(headers["x-plugin"], name);
    gw.shutdown().await;
}

#[tokio::test]
async fn the_rust_template_builds_tests_and_runs() {
    let (_dir, project) = generate("hello-rust", "rust");
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("scaffold-rust");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let cargo = |args: &[&str]| {
        let mut c = Command::new(&cargo);
        c.args(args)
            .current_dir(&project)
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("RUSTFLAGS");
        c
    };
    run(
        &mut cargo(&["test", "--quiet"]),
        "cargo test in the Rust template",
    );
    run(
        &mut cargo(&["build", "--release", "--quiet", "--target", "wasm32-wasip2"]),
        "cargo build of the Rust template",
    );
    check_live(
        "hello-rust",
        &target.join("wasm32-wasip2/release/hello_rust.wasm"),
        &project,
    )
    .await;
}

#[tokio::test]
async fn the_python_template_builds_and_runs() {
    let (_dir, project) = generate("hello-python", "python");
    run(
        Command::new("bash").arg("build.sh").current_dir(&project),
        "build.sh of the Python template",
    );
    check_live("hello-python", &project.join("hello-python.wasm"), &project).await;
}

#[tokio::test]
async fn the_javascript_template_builds_and_runs() {
    let (_dir, project) = generate("hello-js", "js");
    // The toolchain installed by scripts/setup-plugin-toolchains.sh, pinned to the same
    // versions as the template's package.json (build.sh would otherwise npm install it).
    let toolchain = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/js-cors/node_modules");
    std::os::unix::fs::symlink(&toolchain, project.join("node_modules")).unwrap();
    run(
        Command::new("bash").arg("build.sh").current_dir(&project),
        "build.sh of the JavaScript template",
    );
    check_live("hello-js", &project.join("hello-js.wasm"), &project).await;
}

/// The Python helpers (`sluice.py`, copied by the template) as a plugin uses them: every kind
/// of header value `set_header` takes reaches the upstream as the right bytes (its fast path
/// passes plain `bytes` as they are), a value that is not text or bytes is refused naming the
/// header (not sent as `bytes(7)`'s seven zero bytes), and `errors_as_err` turns an
/// unexpected exception into the hook's err "Type: message" while an `Err` (the plugin's own,
/// or the gateway's refusal) passes through as it is. The plugin is
/// `tests/fixtures/python-helpers/app.py`, built in the Python template's project.
#[tokio::test]
async fn the_python_helpers_convert_values_and_report_errors() {
    let (_dir, project) = generate("py-helpers", "python");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/python-helpers/app.py"),
        project.join("app.py"),
    )
    .unwrap();
    run(
        Command::new("bash").arg("build.sh").current_dir(&project),
        "build.sh of the Python helpers' test plugin",
    );
    let up = Upstream::named("upstream").await;
    let plugins = tempfile::tempdir().unwrap();
    std::fs::copy(
        project.join("py-helpers.wasm"),
        plugins.path().join("py-helpers.wasm"),
    )
    .unwrap();
    let gw = gateway_with_plugin(plugins.path(), "py-helpers", "/", up.addr).await;

    let (status, headers, body) = get(gw.listen_addr, "/values").await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "upstream"));
    assert_eq!(headers["x-plugin"], "py-helpers");
    let seen = up.last().headers;
    assert_eq!(seen["x-str"].as_bytes(), "h\u{e9}llo".as_bytes());
    for (name, want) in [
        ("x-bytes", "given-bytes"),
        ("x-bytearray", "from-bytearray"),
        ("x-subclass", "from-subclass"),
        ("x-memoryview", "from-memoryview"),
    ] {
        assert_eq!(seen[name], want, "{name}: {seen:?}");
    }
    assert_eq!(up.hits(), 1);

    let failed = "plugin py-helpers failed: returned an error: ";
    for (path, reason) in [
        ("/key-error", "KeyError: 'missing'"),
        ("/fail", "refused by the plugin"),
        ("/bad-name", "invalid header name `bad name`"),
        (
            "/not-text",
            "TypeError: header `x-int`: expected str or bytes, not int",
        ),
        ("/response-error", "ValueError: no response today"),
    ] {
        let (status, _, body) = get(gw.listen_addr, path).await;
        assert_eq!(status.as_u16(), 500, "{path}: {body}");
        assert_eq!(body, format!("{failed}{reason}\n"), "{path}");
    }
    // Every failure was an err, not a trap: the instance kept serving.
    let (status, _, body) = get(gw.listen_addr, "/values").await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "upstream"));
    gw.shutdown().await;
}
