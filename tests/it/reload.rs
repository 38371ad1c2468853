//! Hot reload: a changed plugin is swapped in while requests flow and none is lost; a bad
//! file never replaces a working version; a removed file unloads the plugin.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http::Request;

use crate::harness::*;

/// The testbed component with a custom section appended: the same code, another digest (a
/// "new build" of the plugin).
fn rebuilt(tag: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(fixture("testbed")).unwrap();
    let name = b"sluice-test-build";
    let payload = tag.as_bytes();
    let size = 1 + name.len() + payload.len();
    assert!(size < 128 && name.len() < 128, "one-byte LEB128 lengths");
    bytes.push(0); // custom section id
    bytes.push(size as u8);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload);
    bytes
}

/// Writes a file the way deploy tools should: a temporary name, then an atomic rename.
fn replace(dir: &Path, file: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

async fn tag_seen(gw: &sluice::Gateway, up: &Upstream) -> String {
    let (status, _, body) = get(gw.listen_addr, "/p/ok").await;
    assert_eq!(status, 200, "{body}");
    up.last().headers["x-tag"].to_str().unwrap().to_owned()
}

async fn wait_for_tag(gw: &sluice::Gateway, up: &Upstream, want: &str) {
    assert_eventually!(
        within: Duration::from_secs(20),
        tag_seen(gw, up).await == want,
        "tag {want} served"
    );
}

#[tokio::test]
async fn a_changed_plugin_is_swapped_under_load_without_losing_a_request() {
    let up = Upstream::named("upstream").await;
    let dir = plugin_dir(Some("tag = \"v1\"\n"));
    let gw = gateway_with_testbed(dir.path(), up.addr, "").await;
    assert_eq!(tag_seen(&gw, &up).await, "v1");

    let stop = Arc::new(AtomicBool::new(false));
    let (sent, ok) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let addr = gw.listen_addr;
    let load: Vec<_> = (0..8)
        .map(|_| {
            let (stop, sent, ok) = (stop.clone(), sent.clone(), ok.clone());
            tokio::spawn(async move {
                let client = client();
                // Bounded: stops when told, or after 5 000 requests per task.
                for _ in 0..5000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    sent.fetch_add(1, Ordering::SeqCst);
                    let req = Request::get(format!("http://{addr}/p/ok"))
                        .body(full(""))
                        .unwrap();
                    if let Ok(resp) = client.request(req).await
                        && resp.status() == 200
                    {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    replace(dir.path(), "testbed.toml", b"tag = \"v2\"\n");
    replace(dir.path(), "testbed.wasm", &rebuilt("v2"));
    wait_for_tag(&gw, &up, "v2").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    for task in load {
        task.await.unwrap();
    }
    let (sent, ok) = (sent.load(Ordering::SeqCst), ok.load(Ordering::SeqCst));
    assert!(sent > 100, "load ran ({sent} requests)");
    assert_eq!(ok, sent, "every request during the swap got a 200");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_bad_file_never_replaces_a_working_version() {
    let up = Upstream::named("upstream").await;
    let dir = plugin_dir(Some("tag = \"good\"\n"));
    let gw = gateway_with_testbed(dir.path(), up.addr, "").await;
    assert_eq!(tag_seen(&gw, &up).await, "good");
    let good = std::fs::read(fixture("testbed")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "not wasm",
            b"#!/bin/sh\necho hi\n".to_vec(),
            "not a WebAssembly file",
        ),
        (
            "truncated",
            good[..good.len() / 3].to_vec(),
            "cannot compile the component",
        ),
        (
            "empty",
            Vec::new(),
            "the file is empty or truncated (0 bytes)",
        ),
        (
            "core module",
            b"\0asm\x01\0\0\0".to_vec(),
            "a core WebAssembly module, not a component",
        ),
        (
            "wrong world",
            std::fs::read(fixture("wrong-world")).unwrap(),
            "the component does not implement sluice:plugin/plugin@0.2.0 or @0.1.0",
        ),
    ];
    for (what, bytes, reason) in cases {
        replace(dir.path(), "testbed.wasm", &bytes);
        let (status, _, body) = send(
            gw.admin_addr,
            Request::post("/admin/plugins/reload")
                .body(full(""))
                .unwrap(),
        )
        .await;
        assert_eq!(status.as_u16(), 422, "{what}: {body}");
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        let failed = report["failed"]["testbed"].as_str().unwrap();
        assert!(failed.starts_with(reason), "{what}: {failed}");
        assert_eq!(
            tag_seen(&gw, &up).await,
            "good",
            "{what}: the old version keeps serving"
        );
        let plugins: serde_json::Value =
            serde_json::from_str(&get(gw.admin_addr, "/admin/plugins").await.2).unwrap();
        assert_eq!(plugins["plugins"][0]["status"], "active", "{what}");
        assert!(
            plugins["plugins"][0]["last_error"]["reason"]
                .as_str()
                .unwrap()
                .starts_with(reason)
        );
    }
    // A rejected config is bad input too.
    replace(dir.path(), "testbed.wasm", &good);
    replace(dir.path(), "testbed.toml", b"reject = true\n");
    let (status, _, body) = send(
        gw.admin_addr,
        Request::post("/admin/plugins/reload")
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(status.as_u16(), 422, "{body}");
    assert!(body.contains("rejected its configuration"), "{body}");
    assert_eq!(tag_seen(&gw, &up).await, "good");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_removed_file_unloads_the_plugin() {
    let up = Upstream::named("upstream").await;
    let dir = plugin_dir(None);
    let gw = gateway_with_testbed(dir.path(), up.addr, "").await;
    assert_eq!(get(gw.listen_addr, "/p/ok").await.0, 200);
    std::fs::remove_file(dir.path().join("testbed.wasm")).unwrap();
    assert_eventually!(
        within: Duration::from_secs(20),
        get(gw.listen_addr, "/p/ok").await.0 == 503,
        "the plugin unloaded"
    );
    let (_, _, body) = get(gw.listen_addr, "/p/ok").await;
    assert_eq!(body, "plugin testbed is not loaded\n");
    assert_eq!(get(gw.listen_addr, "/plain").await.0, 200);
    gw.shutdown().await;
}
