//! A fleet on one configuration (`[cluster]`): gateway processes following a document on a
//! real etcd, refusing invalid versions, serving from their snapshot while etcd is down; the
//! `sluice config` CLI; `SLUICE_PLUGINS`; and applying a configuration in process.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::etcd::{Etcd, free_port, unique_prefix, wait_for};
use crate::harness::*;
use crate::services::metric;

/// The `sluice` binary: cargo's, or `SLUICE_TEST_BIN` when set (several worktrees sharing one
/// target directory overwrite each other's `target/debug/sluice`).
fn sluice_bin() -> std::path::PathBuf {
    std::env::var_os("SLUICE_TEST_BIN")
        .map_or_else(|| env!("CARGO_BIN_EXE_sluice").into(), Into::into)
}

/// A `sluice run` process with `[cluster]`, restartable on the same ports and snapshot.
struct Node {
    dir: tempfile::TempDir,
    listen: SocketAddr,
    admin: SocketAddr,
    child: Option<Child>,
}

impl Node {
    async fn new(etcd: &str, prefix: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port().await));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port().await));
        let config = format!(
            "[server]\nlisten = \"{listen}\"\nadmin = \"{admin}\"\n[log]\naccess = false\n\
             [plugins]\ncache_dir = \"{}\"\n[cluster]\nbackend = \"etcd\"\nendpoints = [\"{etcd}\"]\nprefix = \"{prefix}\"\n\
             snapshot = \"{}\"\ndial_timeout = \"500ms\"\n",
            plugin_cache_dir().display(),
            dir.path().join("state/config.snapshot").display()
        );
        std::fs::write(dir.path().join("node.toml"), config).unwrap();
        Self {
            dir,
            listen,
            admin,
            child: None,
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(sluice_bin());
        command
            .arg("run")
            .arg("--config")
            .arg(self.dir.path().join("node.toml"));
        command
    }

    /// Starts the process and waits for its admin listener.
    async fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("sluice.log"))
            .unwrap();
        let child = self
            .command()
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let admin = self.admin;
        wait_for(
            Duration::from_secs(15),
            "the node to serve",
            || async move { tokio::net::TcpStream::connect(admin).await.is_ok() },
        )
        .await;
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `GET /admin/config`.
    async fn config(&self) -> serde_json::Value {
        let (status, _, body) = get(self.admin, "/admin/config").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sluice.log")).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `sluice config ARGS...`.
fn sluice_config(args: &[&str]) -> Output {
    Command::new(sluice_bin())
        .arg("config")
        .args(args)
        .output()
        .unwrap()
}

/// `sluice config push FILE` to the etcd at `etcd` under `prefix`.
fn push_file(file: &Path, etcd: &str, prefix: &str) -> Output {
    sluice_config(&[
        "push",
        file.to_str().unwrap(),
        "--endpoints",
        etcd,
        "--prefix",
        prefix,
    ])
}

/// Writes `text` to a file in `dir` and pushes it; panics if the CLI refuses.
fn push(dir: &Path, etcd: &str, prefix: &str, text: &str) {
    let file = dir.join("cluster.toml");
    std::fs::write(&file, text).unwrap();
    let out = push_file(&file, etcd, prefix);
    assert!(
        out.status.success(),
        "push failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A document with one service `s` at `addr` behind the route `path`.
fn document(addr: SocketAddr, path: &str) -> String {
    format!(
        "[services.s]\ninstances = [\"{addr}\"]\n[[routes]]\npath = \"{path}\"\nservice = \"s\"\n"
    )
}

/// Waits until every node answers `path` with `body` and reports one same etcd revision;
/// returns it.
async fn converged(nodes: &[Node], path: &str, body: &str) -> i64 {
    for node in nodes {
        let listen = node.listen;
        wait_for(
            Duration::from_secs(10),
            &format!("{path} -> {body}"),
            || {
                let path = path.to_owned();
                async move { get(listen, &path).await.2 == body }
            },
        )
        .await;
    }
    let mut revisions = Vec::new();
    for node in nodes {
        let config = node.config().await;
        assert_eq!(config["source"], "etcd", "{config}");
        revisions.push(config["revision"].as_i64().unwrap());
    }
    assert!(revisions.windows(2).all(|w| w[0] == w[1]), "{revisions:?}");
    revisions[0]
}

#[tokio::test]
async fn three_nodes_follow_one_document_refuse_bad_ones_and_survive_etcd_loss() {
    let mut etcd = Etcd::start().await;
    let endpoint = etcd.endpoint();
    let prefix = unique_prefix();
    let work = tempfile::tempdir().unwrap();
    let one = Upstream::named("one").await;
    let two = Upstream::named("two").await;

    // A node with neither etcd's document nor a snapshot refuses to start, saying why.
    let early = Node::new(&endpoint, &prefix).await;
    let out = early.command().output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("there is no cluster configuration at etcd key")
            && stderr.contains("no last-known-good snapshot"),
        "{stderr}"
    );

    push(work.path(), &endpoint, &prefix, &document(one.addr, "/svc"));
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let mut node = Node::new(&endpoint, &prefix).await;
        node.start().await;
        nodes.push(node);
    }
    let first = converged(&nodes, "/svc", "one").await;

    // A pushed change reaches every node, at one revision.
    let pushed = std::time::Instant::now();
    push(work.path(), &endpoint, &prefix, &document(two.addr, "/svc"));
    let second = converged(&nodes, "/svc", "two").await;
    let took = pushed.elapsed();
    eprintln!("three nodes converged {took:?} after the push began");
    assert!(took < Duration::from_secs(1), "converged after {took:?}");
    assert!(second > first);
    assert_eq!(
        metric(nodes[0].admin, "sluice_config_revision").await,
        second as u64
    );

    // An invalid document written behind the CLI's back is refused by every node, which
    // keeps serving the previous revision and says why.
    let mut client = etcd_client::Client::connect([endpoint.as_str()], None)
        .await
        .unwrap();
    let bad = client
        .put(
            format!("{prefix}config"),
            "[[routes]]\npath = \"/svc\"\nservice = \"nowhere\"\n",
            None,
        )
        .await
        .unwrap();
    let bad_revision = bad.header().unwrap().revision();
    for node in &nodes {
        let admin = node.admin;
        wait_for(
            Duration::from_secs(5),
            "the bad document refused",
            || async move { metric(admin, "sluice_config_reload_failures_total").await == 1 },
        )
        .await;
        let config = node.config().await;
        assert_eq!(config["revision"], second, "{config}");
        assert_eq!(config["last_error"]["revision"], bad_revision, "{config}");
        let reason = config["last_error"]["reason"].as_str().unwrap();
        assert!(
            reason.contains("routes[0].service: no service named `nowhere`"),
            "{reason}"
        );
        assert_eq!(get(node.listen, "/svc").await.2, "two");
        assert!(node.log().contains("cluster configuration refused"));
    }

    // The CLI refuses an invalid file before writing anything.
    let bad_file = work.path().join("bad.toml");
    std::fs::write(&bad_file, "[[routes]]\npath = \"svc\"\nservice = \"s\"\n").unwrap();
    let out = push_file(&bad_file, &endpoint, &prefix);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("routes[0].path: `svc` must start with `/`"),
        "{stderr}"
    );
    let out = sluice_config(&["get", "--endpoints", &endpoint, "--prefix", &prefix]);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("revision {bad_revision}")));

    // `diff` shows what a push would change.
    let next = work.path().join("next.toml");
    std::fs::write(&next, document(one.addr, "/again")).unwrap();
    let out = sluice_config(&[
        "diff",
        next.to_str().unwrap(),
        "--endpoints",
        &endpoint,
        "--prefix",
        &prefix,
    ]);
    let diff = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        diff.contains("-service = \"nowhere\"") && diff.contains("+path = \"/again\""),
        "{diff}"
    );

    // etcd gone: every node keeps serving; one restarted meanwhile serves its snapshot.
    etcd.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for node in &nodes {
        assert_eq!(get(node.listen, "/svc").await.2, "two");
    }
    nodes[0].stop();
    nodes[0].start().await;
    assert_eq!(get(nodes[0].listen, "/svc").await.2, "two");
    let config = nodes[0].config().await;
    assert_eq!(config["source"], "snapshot", "{config}");
    assert_eq!(config["revision"], second, "{config}");
    assert_eq!(
        metric(nodes[0].admin, "sluice_config_revision").await,
        second as u64
    );
    assert!(
        nodes[0]
            .log()
            .contains("serving the last-known-good configuration")
    );

    // etcd back: a new push converges everywhere, the restarted node included.
    etcd.spawn().await;
    push(
        work.path(),
        &endpoint,
        &prefix,
        &document(one.addr, "/again"),
    );
    let third = converged(&nodes, "/again", "one").await;
    assert!(third > bad_revision);
    for node in &nodes {
        assert_eq!(get(node.listen, "/svc").await.0, 404);
    }
}

#[tokio::test]
async fn sluice_plugins_loads_the_listed_plugins_beside_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port().await));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port().await));
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{listen}\"\nadmin = \"{admin}\"\n[plugins]\ncache_dir = \"{}\"\n",
            plugin_cache_dir().display()
        ),
    )
    .unwrap();
    let list = format!(
        "{}, {}",
        fixture("noop").display(),
        fixture("testbed").display()
    );
    let mut child = Command::new(sluice_bin())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("SLUICE_PLUGINS", &list)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        Duration::from_secs(30),
        "both plugins active",
        || async move {
            if tokio::net::TcpStream::connect(admin).await.is_err() {
                return false;
            }
            let (_, _, body) = get(admin, "/admin/plugins").await;
            body.contains("\"name\":\"noop\"") && body.contains("\"name\":\"testbed\"")
        },
    )
    .await;
    let (_, _, body) = get(admin, "/admin/plugins").await;
    assert!(!body.contains("\"failed\""), "{body}");
    let _ = child.kill();
    let _ = child.wait();

    // A path that is not there stops the start, named.
    let out = Command::new(sluice_bin())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("SLUICE_PLUGINS", "/nonexistent/auth.wasm")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SLUICE_PLUGINS: `/nonexistent/auth.wasm`: no such file"),
        "{stderr}"
    );
}

/// Applying a new configuration in process: routes, services and the resolver change at
/// once; per-node settings stay.
#[tokio::test]
async fn a_new_configuration_replaces_routes_services_and_resolver_at_once() {
    let one = Upstream::named("one").await;
    let two = Upstream::named("two").await;
    let gw = gateway(&one_route(one.addr, "/a")).await;
    assert_eq!(get(gw.listen_addr, "/a").await.2, "one");
    // Without [cluster], the configuration is the file's.
    let (_, _, body) = get(gw.admin_addr, "/admin/config").await;
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (&config["source"], &config["revision"]),
        (&"file".into(), &0.into())
    );
    let old = sluice::config::Config::parse(&one_route(one.addr, "/a"), "old").unwrap();
    let reconfigurer = sluice::cluster::apply::Reconfigurer::new(
        gw.proxy.clone(),
        old,
        tokio_util::sync::CancellationToken::new(),
    );
    let new = sluice::config::Config::parse(
        &format!(
            "[services.s]\ninstances = [\"{}\"]\n[services.greeter]\ninstances = [\"{}\"]\n\
             [[routes]]\npath = \"/b\"\nservice = \"s\"\n[resolver]\nenabled = true\nprefix = \"/svc\"\n",
            two.addr, one.addr
        ),
        "new",
    )
    .unwrap();
    let report = reconfigurer.apply(&new).await;
    assert!(report.failed.is_empty());
    assert_eq!(get(gw.listen_addr, "/a").await.0, 404);
    assert_eq!(get(gw.listen_addr, "/b").await.2, "two");
    assert_eq!(get(gw.listen_addr, "/svc/greeter/hi").await.2, "one");
    gw.shutdown().await;
}

/// A new `[plugin.NAME]` rebuilds the plugin and swaps it in; one its `init` refuses is
/// reported and the running version keeps serving.
#[tokio::test]
async fn a_new_configuration_rebuilds_plugins_whose_settings_changed() {
    let up = Upstream::named("up").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("testbed"), dir.path().join("testbed.wasm")).unwrap();
    let text = |tag: &str, reject: bool| {
        format!(
            "[plugins]\ndir = \"{}\"\ncache_dir = \"{}\"\n[plugin.testbed]\ntag = \"{tag}\"\nreject = {reject}\n\
             [services.s]\ninstances = [\"{}\"]\n[[routes]]\npath = \"/a\"\nservice = \"s\"\nplugins = [\"testbed\"]\n",
            dir.path().display(),
            plugin_cache_dir().display(),
            up.addr
        )
    };
    let gw = gateway(&text("v1", false)).await;
    let tag = |up: &Upstream| {
        up.last()
            .headers
            .get("x-tag")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(get(gw.listen_addr, "/a").await.0, 200);
    assert_eq!(tag(&up).as_deref(), Some("v1"));
    let parse = |t: &str| sluice::config::Config::parse(t, "t").unwrap();
    let reconfigurer = sluice::cluster::apply::Reconfigurer::new(
        gw.proxy.clone(),
        parse(&text("v1", false)),
        tokio_util::sync::CancellationToken::new(),
    );
    let report = reconfigurer.apply(&parse(&text("v2", false))).await;
    assert_eq!(report.loaded, ["testbed"]);
    assert_eq!(get(gw.listen_addr, "/a").await.0, 200);
    assert_eq!(tag(&up).as_deref(), Some("v2"));

    let report = reconfigurer.apply(&parse(&text("v3", true))).await;
    assert!(
        report.failed["testbed"].contains("rejected by config"),
        "{report:?}"
    );
    assert_eq!(get(gw.listen_addr, "/a").await.0, 200);
    assert_eq!(
        tag(&up).as_deref(),
        Some("v2"),
        "the running version keeps serving"
    );
    gw.shutdown().await;
}

/// A plugin named by digest is fetched over HTTP, verified and cached; a new digest that the
/// bytes do not match is refused and the running version keeps serving.
#[tokio::test]
async fn a_plugin_named_by_digest_is_fetched_verified_and_a_mismatch_refused() {
    let (store, digest) = testbed_store().await;
    let up = Upstream::named("up").await;
    let cache = tempfile::tempdir().unwrap();
    let text = |sha: &str, tag: &str| {
        format!(
            "[plugins]\ncache_dir = \"{}\"\n[plugins.sources.testbed]\nsha256 = \"{sha}\"\n\
             url = \"http://{}/testbed.wasm\"\n[plugin.testbed]\ntag = \"{tag}\"\n\
             [services.s]\ninstances = [\"{}\"]\n[[routes]]\npath = \"/a\"\nservice = \"s\"\nplugins = [\"testbed\"]\n",
            cache.path().join("compiled").display(),
            store.addr,
            up.addr
        )
    };
    let gw = gateway(&text(&digest, "v1")).await;
    assert_eq!(get(gw.listen_addr, "/a").await.0, 200);
    let tag = |up: &Upstream| up.last().headers.get("x-tag").cloned();
    assert_eq!(tag(&up).unwrap(), "v1");
    assert_eq!(store.hits(), 1);
    let cached = cache.path().join(format!("compiled.sha256/{digest}.wasm"));
    assert!(
        cached.exists(),
        "{} not in {:?}",
        cached.display(),
        std::fs::read_dir(cache.path().join("compiled.sha256"))
            .map(|d| d.map(|e| e.unwrap().file_name()).collect::<Vec<_>>())
    );

    let parse = |t: &str| sluice::config::Config::parse(t, "t").unwrap();
    let reconfigurer = sluice::cluster::apply::Reconfigurer::new(
        gw.proxy.clone(),
        parse(&text(&digest, "v1")),
        tokio_util::sync::CancellationToken::new(),
    );
    // Same digest, new settings: rebuilt from the cache, not fetched again.
    let report = reconfigurer.apply(&parse(&text(&digest, "v2"))).await;
    assert_eq!(report.loaded, ["testbed"]);
    assert_eq!(store.hits(), 1);
    assert_eq!(get(gw.listen_addr, "/a").await.0, 200);
    assert_eq!(tag(&up).unwrap(), "v2");

    // A digest the served bytes do not have: refused, v2 keeps serving.
    let wrong = "0".repeat(64);
    let report = reconfigurer.apply(&parse(&text(&wrong, "v3"))).await;
    let why = &report.failed["testbed"];
    assert!(why.contains(&format!("its sha256 is {digest}")), "{why}");
    assert_eq!(get(gw.listen_addr, "/a").await.0, 200);
    assert_eq!(tag(&up).unwrap(), "v2");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_plugin_pushed_by_digest_is_served_by_every_node_and_a_wrong_digest_refused() {
    let etcd = Etcd::start().await;
    let endpoint = etcd.endpoint();
    let prefix = unique_prefix();
    let work = tempfile::tempdir().unwrap();
    let (store, digest) = testbed_store().await;
    let up = Upstream::named("up").await;
    let doc = |sha: &str, tag: &str| {
        format!(
            "{}[plugins.sources.testbed]\nsha256 = \"{sha}\"\nurl = \"http://{}/testbed.wasm\"\n\
             [plugin.testbed]\ntag = \"{tag}\"\n",
            document(up.addr, "/svc").replace(
                "service = \"s\"\n",
                "service = \"s\"\nplugins = [\"testbed\"]\n"
            ),
            store.addr
        )
    };
    push(work.path(), &endpoint, &prefix, &doc(&digest, "d1"));
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let mut node = Node::new(&endpoint, &prefix).await;
        node.start().await;
        nodes.push(node);
    }
    for node in &nodes {
        let listen = node.listen;
        wait_for(
            Duration::from_secs(30),
            "the plugin to serve",
            || async move { get(listen, "/svc").await.0 == 200 },
        )
        .await;
        assert_eq!(up.last().headers["x-tag"], "d1");
    }

    push(work.path(), &endpoint, &prefix, &doc(&"0".repeat(64), "d2"));
    for node in &nodes {
        let admin = node.admin;
        wait_for(
            Duration::from_secs(10),
            "the wrong digest refused",
            || async move {
                let (_, _, body) = get(admin, "/admin/config").await;
                body.contains("not the 0000")
            },
        )
        .await;
        assert_eq!(get(node.listen, "/svc").await.0, 200);
        assert_eq!(
            up.last().headers["x-tag"],
            "d1",
            "the running version serves"
        );
    }
}

/// A canary through the cluster document: the version is a digest source (every node runs
/// the same bytes); a version the document does not declare is refused by `push`, named.
#[tokio::test]
async fn a_canary_pushed_in_the_document_runs_the_version_it_names() {
    let etcd = Etcd::start().await;
    let endpoint = etcd.endpoint();
    let prefix = unique_prefix();
    let work = tempfile::tempdir().unwrap();
    let (store, digest) = testbed_store().await;
    let up = Upstream::recording(|seen| {
        hyper::Response::new(full(
            seen.headers
                .get("x-tag")
                .map_or("none".to_owned(), |v| v.to_str().unwrap().to_owned()),
        ))
    })
    .await;
    let doc = |entry: &str, declare: bool| {
        let mut text = document(up.addr, "/svc").replace(
            "service = \"s\"\n",
            &format!("service = \"s\"\nplugins = [\"{entry}\"]\n"),
        );
        let names: &[&str] = if declare {
            &["testbed", "testbed@v2"]
        } else {
            &["testbed"]
        };
        for name in names {
            text.push_str(&format!(
                "[plugins.sources.\"{name}\"]\nsha256 = \"{digest}\"\nurl = \"http://{}/testbed.wasm\"\n",
                store.addr
            ));
        }
        text + "[plugin.testbed]\ntag = \"v1\"\n[plugin.\"testbed@v2\"]\ntag = \"v2\"\n"
    };
    push(work.path(), &endpoint, &prefix, &doc("testbed@v2:0%", true));
    let mut node = Node::new(&endpoint, &prefix).await;
    node.start().await;
    let listen = node.listen;
    wait_for(Duration::from_secs(30), "v1 to serve", || async move {
        get(listen, "/svc").await.2 == "v1"
    })
    .await;
    push(
        work.path(),
        &endpoint,
        &prefix,
        &doc("testbed@v2:100%", true),
    );
    wait_for(Duration::from_secs(30), "v2 to serve", || async move {
        get(listen, "/svc").await.2 == "v2"
    })
    .await;
    for _ in 0..20 {
        assert_eq!(get(listen, "/svc").await.2, "v2");
    }

    // Not declared in the document: refused before anything is written.
    let file = work.path().join("undeclared.toml");
    std::fs::write(&file, doc("testbed@v2:50%", false)).unwrap();
    let out = push_file(&file, &endpoint, &prefix);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "routes[0].plugins: `testbed@v2:50%` (route `/svc`): plugin `testbed` has no version `v2`"
        ),
        "{stderr}"
    );
    assert_eq!(get(listen, "/svc").await.2, "v2");
}

/// A real etcd serving clients over TLS only, requiring a client certificate signed by
/// `ca`; killed on drop.
struct TlsEtcd {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TlsEtcd {
    async fn start(ca: &crate::tls::TestCa) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) =
            crate::tls::write_pair(dir.path(), "server", &ca.issue(&["localhost", "127.0.0.1"]));
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let port = free_port().await;
        let client = format!("https://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{}", free_port().await);
        let child = crate::etcd::etcd_command("sluice-tls", dir.path(), &client, &peer)
            .arg("--cert-file")
            .arg(&cert)
            .arg("--key-file")
            .arg(&key)
            .arg("--trusted-ca-file")
            .arg(&ca_file)
            .arg("--client-cert-auth")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("etcd.log")).unwrap())
            .spawn()
            .expect("etcd is installed (scripts/setup-system-packages.sh installs etcd-server)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_for(Duration::from_secs(15), "etcd to listen", || async move {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
        Self {
            child,
            port,
            _dir: dir,
        }
    }
}

#[tokio::test]
async fn nodes_and_the_cli_reach_etcd_over_tls_with_a_client_certificate() {
    let ca = crate::tls::TestCa::new();
    let etcd = TlsEtcd::start(&ca).await;
    let endpoint = format!("127.0.0.1:{}", etcd.port);
    let prefix = unique_prefix();
    let work = tempfile::tempdir().unwrap();
    let (cert, key) = crate::tls::write_pair(work.path(), "node", &ca.issue(&["sluice-node"]));
    let ca_file = work.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let other_ca = work.path().join("other-ca.pem");
    std::fs::write(&other_ca, crate::tls::TestCa::new().pem()).unwrap();
    let up = Upstream::named("over-tls").await;
    let file = work.path().join("cluster.toml");
    std::fs::write(&file, document(up.addr, "/svc")).unwrap();
    let tls_args = |ca: &Path| {
        vec![
            "--endpoints".to_owned(),
            endpoint.clone(),
            "--prefix".to_owned(),
            prefix.clone(),
            "--tls-ca".to_owned(),
            ca.display().to_string(),
            "--tls-cert".to_owned(),
            cert.display().to_string(),
            "--tls-key".to_owned(),
            key.display().to_string(),
        ]
    };
    let run = |command: &str, ca: &Path| {
        let mut args = vec![command.to_owned()];
        if command == "push" {
            args.push(file.display().to_string());
        }
        args.extend(tls_args(ca));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sluice_config(&args)
    };

    // A CA that did not sign etcd's certificate: refused, naming the endpoint.
    let out = run("get", &other_ca);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "etcd at {endpoint}: TLS handshake: invalid peer certificate"
        )),
        "{stderr}"
    );
    // Plain text to a TLS-only etcd fails too (nothing is written).
    let out = sluice_config(&["get", "--endpoints", &endpoint, "--prefix", &prefix]);
    assert!(!out.status.success());

    let out = run("push", &ca_file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run("get", &ca_file);
    assert!(String::from_utf8_lossy(&out.stdout).contains("path = \"/svc\""));

    // A node with the same settings follows the document.
    let mut node = Node::new(&endpoint, &prefix).await;
    let node_file = node.dir.path().join("node.toml");
    let mut text = std::fs::read_to_string(&node_file).unwrap();
    text.push_str(&format!(
        "tls_ca = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        ca_file.display(),
        cert.display(),
        key.display()
    ));
    std::fs::write(&node_file, text).unwrap();
    node.start().await;
    let revision = converged(std::slice::from_ref(&node), "/svc", "over-tls").await;
    assert!(revision > 0);

    // A node trusting another CA does not start (no snapshot), and says why.
    let stranger = Node::new(&endpoint, &prefix).await;
    let node_file = stranger.dir.path().join("node.toml");
    let mut text = std::fs::read_to_string(&node_file).unwrap();
    text.push_str(&format!("tls_ca = \"{}\"\n", other_ca.display()));
    std::fs::write(&node_file, text).unwrap();
    let out = stranger.command().output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "etcd at {endpoint}: TLS handshake: invalid peer certificate"
        )),
        "{stderr}"
    );
}
