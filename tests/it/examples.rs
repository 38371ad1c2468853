//! The example plugins (Rust, Python, JavaScript), built from source and run through a
//! gateway configured by `examples/plugins.toml`, the config users copy.

use std::path::Path;

use http::Request;

use crate::harness::*;
use crate::languages::build_example;

#[tokio::test]
async fn the_example_config_runs_every_example_plugin() {
    let up = Upstream::recording(|_| http::Response::new(full("upstream"))).await;
    let plugins = tempfile::tempdir().unwrap();
    for name in ["rust-header-rewrite", "rust-rate-limit"] {
        std::fs::copy(
            rust_example(name),
            plugins.path().join(format!("{name}.wasm")),
        )
        .unwrap();
    }
    for name in ["python-apikey", "js-cors"] {
        let dir = build_example(name);
        for ext in ["wasm", "toml"] {
            let file = format!("{name}.{ext}");
            std::fs::copy(dir.join(&file), plugins.path().join(&file)).unwrap();
        }
    }
    // The example config as users run it, pointed at this test's ports and directories.
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins.toml"),
    )
    .unwrap();
    let config = example
        .replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\"")
        .replace("admin = \"127.0.0.1:9901\"", "admin = \"127.0.0.1:0\"")
        .replace("[demo_upstream]\nlisten = \"127.0.0.1:9000\"\n", "")
        .replace(
            "instances = [\"127.0.0.1:9000\"]",
            &format!("instances = [\"{}\"]", up.addr),
        )
        .replace(
            "dir = \"plugins\"",
            &format!(
                "dir = \"{}\"\ncache_dir = \"{}\"",
                plugins.path().display(),
                plugin_cache_dir().display()
            ),
        );
    let settings: String = config
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !settings.contains("9000") && !settings.contains("8080"),
        "the example changed shape:\n{config}"
    );
    let gw = gateway(&config).await;
    let at = gw.listen_addr;

    // Rust header rewrite.
    let req = Request::get("/rewrite/a")
        .header("x-internal-token", "s")
        .body(full(""))
        .unwrap();
    let (status, headers, _) = send(at, req).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-served-by"], "sluice");
    let seen = up.last().headers;
    assert_eq!(seen["x-gateway"], "sluice");
    assert!(!seen.contains_key("x-internal-token"));

    // Rust rate limit: burst 3, then 429 with Retry-After.
    let mut codes = Vec::new();
    for _ in 0..4 {
        let (status, headers, _) = get(at, "/limited/").await;
        codes.push(status.as_u16());
        if status == 429 {
            assert_eq!(headers["retry-after"], "1");
        }
    }
    assert_eq!(codes, [200, 200, 200, 429]);
    // It declares only `on-request`: no call on the way back.
    let plugins: serde_json::Value =
        serde_json::from_str(&get(gw.admin_addr, "/admin/plugins").await.2).unwrap();
    assert_eq!(
        plugin_view(&plugins, "rust-rate-limit")["hooks"],
        serde_json::json!({"on_request": true, "on_response": false})
    );

    // Python API key.
    assert_eq!(get(at, "/py/x").await.0, 401);
    let req = Request::get("/py/x")
        .header("x-api-key", "k2")
        .body(full(""))
        .unwrap();
    assert_eq!(send(at, req).await.0, 200);
    assert_eq!(up.last().headers["x-api-key-valid"], "true");

    // JavaScript CORS and path rewrite.
    let (status, headers, _) = get(at, "/js/old/page").await;
    assert_eq!(status, 200);
    assert_eq!(up.last().uri.path(), "/js/new/page");
    assert_eq!(headers["access-control-allow-origin"], "*");
    gw.shutdown().await;
}
