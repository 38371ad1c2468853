//! Plugins by digest, beyond plain HTTP: ed25519 signatures over the digest checked against
//! `[plugins] trusted_keys`, and `https://` sources verified against `[plugins] sources_ca`.

use std::net::SocketAddr;
use std::sync::Arc;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

use crate::harness::*;
use crate::tls::{Issued, TestCa};

fn public(key: &Ed25519KeyPair) -> String {
    format!("ed25519:{}", STANDARD.encode(key.public_key().as_ref()))
}

fn sign(key: &Ed25519KeyPair, digest: &str) -> String {
    STANDARD.encode(key.sign(digest.as_bytes()).as_ref())
}

/// A gateway config with the testbed named by digest (from `path`), signed with `signature`,
/// trusting `keys`.
fn signed_config(
    cache: &std::path::Path,
    up: SocketAddr,
    keys: &[String],
    sha: &str,
    signature: &str,
) -> String {
    let keys: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
    format!(
        "[plugins]\ncache_dir = \"{}\"\ntrusted_keys = [{}]\n[plugins.sources.testbed]\nsha256 = \"{sha}\"\n\
         path = \"{}\"\nsignature = \"{signature}\"\n[plugin.testbed]\ntag = \"signed\"\n\
         [services.s]\ninstances = [\"{up}\"]\n[[routes]]\npath = \"/a\"\nservice = \"s\"\nplugins = [\"testbed\"]\n",
        cache.join("compiled").display(),
        keys.join(", "),
        fixture("testbed").display(),
    )
}

#[tokio::test]
async fn a_signed_digest_is_served_and_a_wrong_key_or_tampered_digest_refused() {
    let ours = Ed25519KeyPair::generate().unwrap();
    let theirs = Ed25519KeyPair::generate().unwrap();
    let wasm = std::fs::read(fixture("testbed")).unwrap();
    let digest = sha256_hex(&wasm);
    let up = Upstream::named("up").await;
    let cache = tempfile::tempdir().unwrap();
    let keys = [public(&theirs), public(&ours)];

    // Signed by one of the trusted keys: served.
    let good = signed_config(cache.path(), up.addr, &keys, &digest, &sign(&ours, &digest));
    let gw = gateway(&good).await;
    assert_eq!(get(gw.listen_addr, "/a").await.0, 200);
    assert_eq!(up.last().headers["x-tag"], "signed");

    let parse = |t: &str| sluice::config::Config::parse(t, "t").unwrap();
    let reconfigurer = sluice::cluster::apply::Reconfigurer::new(
        gw.proxy.clone(),
        parse(&good),
        tokio_util::sync::CancellationToken::new(),
    );
    // Signed by a key the node does not trust: refused, the running version serves.
    let stranger = Ed25519KeyPair::generate().unwrap();
    let text = signed_config(
        cache.path(),
        up.addr,
        &keys,
        &digest,
        &sign(&stranger, &digest),
    )
    .replace("tag = \"signed\"", "tag = \"stranger\"");
    let report = reconfigurer.apply(&parse(&text)).await;
    let why = &report.failed["testbed"];
    assert!(
        why.contains("is not by any of [plugins] trusted_keys"),
        "{why}"
    );
    assert_eq!(get(gw.listen_addr, "/a").await.0, 200);
    assert_eq!(up.last().headers["x-tag"], "signed");

    // A good signature of another digest, moved onto this one: refused.
    let other = "0".repeat(64);
    let text = signed_config(cache.path(), up.addr, &keys, &digest, &sign(&ours, &other))
        .replace("tag = \"signed\"", "tag = \"moved\"");
    let report = reconfigurer.apply(&parse(&text)).await;
    assert!(
        report.failed["testbed"].contains("is not by any of [plugins] trusted_keys"),
        "{report:?}"
    );
    // And no signature at all: refused too.
    let text = signed_config(cache.path(), up.addr, &keys, &digest, "")
        .replace("signature = \"\"\n", "")
        .replace("tag = \"signed\"", "tag = \"unsigned\"");
    let report = reconfigurer.apply(&parse(&text)).await;
    assert!(
        report.failed["testbed"].contains("no `signature`"),
        "{report:?}"
    );
    assert_eq!(get(gw.listen_addr, "/a").await.0, 200);
    assert_eq!(up.last().headers["x-tag"], "signed");
    let (_, _, body) = get(gw.admin_addr, "/admin/plugins").await;
    assert!(body.contains("no `signature`"), "{body}");
    gw.shutdown().await;
}

/// An HTTPS server on 127.0.0.1:0 with `issued`'s certificate, answering every GET with
/// `body`. Counts requests.
async fn https_file_server(
    issued: &Issued,
    body: Bytes,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![issued.der.clone()],
        PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, body, counted) = (acceptor.clone(), body.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |_req| {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let body = body.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(body),
                        ))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, hits)
}

#[tokio::test]
async fn a_plugin_is_fetched_over_https_verified_against_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let wasm = Bytes::from(std::fs::read(fixture("testbed")).unwrap());
    let digest = sha256_hex(&wasm);
    let (store, hits) = https_file_server(&ca.issue(&["localhost", "127.0.0.1"]), wasm).await;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, TestCa::new().pem()).unwrap();
    let up = Upstream::named("up").await;
    let text = |ca: &std::path::Path, cache: &str, host: &str| {
        format!(
            "[plugins]\ncache_dir = \"{}\"\nsources_ca = \"{}\"\n[plugins.sources.testbed]\nsha256 = \"{digest}\"\n\
             url = \"https://{host}:{}/testbed.wasm\"\n[plugin.testbed]\ntag = \"tls\"\n\
             [services.s]\ninstances = [\"{}\"]\n[[routes]]\npath = \"/a\"\nservice = \"s\"\nplugins = [\"testbed\"]\n",
            dir.path().join(cache).display(),
            ca.display(),
            store.port(),
            up.addr
        )
    };
    // A CA that did not issue the server's certificate: the fetch is refused, named.
    let gw = gateway(&text(&other_ca, "a", "localhost")).await;
    assert_eq!(get(gw.listen_addr, "/a").await.0, 503);
    let (_, _, body) = get(gw.admin_addr, "/admin/plugins").await;
    assert!(
        body.contains(&format!(
            "https://localhost:{}/testbed.wasm: TLS handshake",
            store.port()
        )),
        "{body}"
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    gw.shutdown().await;

    // The right CA, by name and by IP address: fetched, verified, served.
    for (cache, host) in [("b", "localhost"), ("c", "127.0.0.1")] {
        let gw = gateway(&text(&ca_file, cache, host)).await;
        assert_eq!(get(gw.listen_addr, "/a").await.0, 200, "{host}");
        assert_eq!(up.last().headers["x-tag"], "tls");
        gw.shutdown().await;
    }
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 2);
}
