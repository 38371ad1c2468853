//! Plugins in other languages, built from source: the Python example (componentize-py) and
//! the JavaScript example (componentize-js) in `examples/`, each built by its own `build.sh`
//! from `wit/plugin.wit`, loaded by a real gateway and checked by what the client and the
//! upstream see. The toolchains come from `scripts/setup-plugin-toolchains.sh`.

use std::path::{Path, PathBuf};

use http::Request;

use crate::harness::*;

/// Builds `examples/NAME` with its `build.sh` and returns the example's directory, which then
/// holds `NAME.wasm` beside `NAME.toml`. Builds once per test run: tests that need the same
/// example wait for the first build instead of writing the same directory at once.
pub fn build_example(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, dir)) = built.iter().find(|(n, _)| n == name) {
        return dir.clone();
    }
    let dir = build_example_now(name);
    built.push((name.to_owned(), dir.clone()));
    dir
}

fn build_example_now(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    let out = std::process::Command::new("bash")
        .arg("build.sh")
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| panic!("running examples/{name}/build.sh: {e}"));
    assert!(
        out.status.success(),
        "examples/{name}/build.sh failed ({}); are the toolchains installed \
         (bash scripts/setup-plugin-toolchains.sh)?\nstderr:\n{}\nstdout:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let wasm = dir.join(format!("{name}.wasm"));
    assert!(wasm.exists(), "build.sh did not write {}", wasm.display());
    dir
}

/// A plugin directory with `NAME.wasm` from `built` and `NAME.toml` holding `config`.
fn plugin_dir_with(built: &Path, name: &str, config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let wasm = format!("{name}.wasm");
    std::fs::copy(built.join(&wasm), dir.path().join(&wasm)).unwrap();
    std::fs::write(dir.path().join(format!("{name}.toml")), config).unwrap();
    dir
}

#[tokio::test]
async fn a_python_plugin_checks_api_keys() {
    let built = build_example("python-apikey");
    let config = std::fs::read_to_string(built.join("python-apikey.toml")).unwrap();
    assert!(
        config.contains(r#"keys = ["k1", "k2"]"#),
        "the test expects the example's keys k1 and k2:\n{config}"
    );
    let up = Upstream::named("upstream").await;
    let dir = plugin_dir_with(&built, "python-apikey", &config);
    let gw = gateway_with_plugin(dir.path(), "python-apikey", "/py", up.addr).await;

    // No key: the plugin answers 401 itself, with a JSON body; the upstream is not called.
    let (status, headers, body) = get(gw.listen_addr, "/py/hello").await;
    assert_eq!(status.as_u16(), 401, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"], "missing API key");
    assert_eq!(up.hits(), 0, "the upstream was not called");

    // A wrong key, and one that is not UTF-8 (header values are bytes): 401, no crash.
    for key in [b"nope".as_slice(), b"\xff\xfek1".as_slice()] {
        let req = Request::get("/py/hello")
            .header("x-api-key", key)
            .body(full(""))
            .unwrap();
        let (status, _, body) = send(gw.listen_addr, req).await;
        assert_eq!(status.as_u16(), 401, "{key:?}: {body}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"],
            "invalid API key"
        );
    }
    assert_eq!(up.hits(), 0, "the upstream was not called");

    // A valid key: on to the upstream, marked valid, without the key (a client's own
    // `x-api-key-valid` is replaced, not kept).
    let req = Request::get("/py/hello?a=1")
        .header("x-api-key", "k2")
        .header("x-api-key-valid", "spoofed")
        .body(full(""))
        .unwrap();
    let (status, _, body) = send(gw.listen_addr, req).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "upstream"));
    let seen = up.last();
    assert_eq!(seen.uri.path_and_query().unwrap().as_str(), "/py/hello?a=1");
    let valid: Vec<&str> = seen
        .headers
        .get_all("x-api-key-valid")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(valid, ["true"], "{:?}", seen.headers);
    assert!(
        !seen.headers.contains_key("x-api-key"),
        "the key header was removed: {:?}",
        seen.headers
    );
    assert_eq!(up.hits(), 1);
    gw.shutdown().await;

    // A config without keys is refused by `init`: the plugin is not activated.
    let dir = plugin_dir_with(&built, "python-apikey", "header = \"x-api-key\"\n");
    let gw = gateway_with_plugin(dir.path(), "python-apikey", "/py", up.addr).await;
    let (status, _, body) = get(gw.listen_addr, "/py/hello").await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (503, "plugin python-apikey is not loaded\n")
    );
    let plugins: serde_json::Value =
        serde_json::from_str(&get(gw.admin_addr, "/admin/plugins").await.2).unwrap();
    let reason = plugins["plugins"][0]["last_error"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        reason.starts_with("rejected its configuration: `keys` must list at least one key"),
        "{plugins}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_javascript_plugin_rewrites_paths_and_adds_cors_headers() {
    let built = build_example("js-cors");
    let config = "allow_methods = \"GET, POST, OPTIONS\"\n[rewrite]\n\"/js/old\" = \"/js/new\"\n";
    let up = Upstream::named("upstream").await;
    let dir = plugin_dir_with(&built, "js-cors", config);
    let gw = gateway_with_plugin(dir.path(), "js-cors", "/js", up.addr).await;

    // The rewrite: plugins see the client's path; the upstream gets the new one.
    let (status, headers, body) = get(gw.listen_addr, "/js/old/x?q=1").await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "upstream"));
    assert_eq!(
        up.last().uri.path_and_query().unwrap().as_str(),
        "/js/new/x?q=1"
    );
    // The CORS headers, added in on-response (allow_origin defaults to `*`).
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert_eq!(
        headers["access-control-allow-methods"],
        "GET, POST, OPTIONS"
    );

    // A path that matches no rewrite goes through unchanged, still with CORS headers.
    let (status, headers, _) = get(gw.listen_addr, "/js/other").await;
    assert_eq!(status.as_u16(), 200);
    assert_eq!(up.last().uri.path(), "/js/other");
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert_eq!(up.hits(), 2);

    // A preflight is answered by the plugin: 204 with the CORS headers, no upstream call.
    let req = Request::options("/js/old/x")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "PUT")
        .header("access-control-request-headers", "content-type, x-token")
        .body(full(""))
        .unwrap();
    let (status, headers, body) = send(gw.listen_addr, req).await;
    assert_eq!((status.as_u16(), body.as_str()), (204, ""));
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert_eq!(
        headers["access-control-allow-methods"],
        "GET, POST, OPTIONS"
    );
    assert_eq!(
        headers["access-control-allow-headers"],
        "content-type, x-token"
    );
    assert_eq!(up.hits(), 2, "the preflight did not reach the upstream");
    gw.shutdown().await;

    // One allowed origin: every response (its headers encoded once, by `init`) also says
    // `vary: origin`; a preflight too.
    let dir = plugin_dir_with(
        &built,
        "js-cors",
        "allow_origin = \"https://app.example\"\n",
    );
    let gw = gateway_with_plugin(dir.path(), "js-cors", "/js", up.addr).await;
    for _ in 0..2 {
        let (status, headers, _) = get(gw.listen_addr, "/js/any").await;
        assert_eq!(status.as_u16(), 200);
        assert_eq!(
            headers["access-control-allow-origin"],
            "https://app.example"
        );
        assert_eq!(headers["vary"], "origin");
    }
    let req = Request::options("/js/any").body(full("")).unwrap();
    let (status, headers, _) = send(gw.listen_addr, req).await;
    assert_eq!(status.as_u16(), 204);
    assert_eq!(headers["vary"], "origin");
    gw.shutdown().await;
}
