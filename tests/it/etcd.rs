//! The registry on etcd: two gateway processes on one real etcd (Debian `etcd-server`,
//! started here on ports picked for the test) share registrations; losing etcd leaves routing
//! on the last view, and the view converges when etcd returns.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::*;
use crate::services::{metric, register};

/// A free port on 127.0.0.1 (bound, then released).
pub(crate) async fn free_port() -> u16 {
    closed_port().await.port()
}

/// A real etcd with its own data directory, killed on drop.
pub(crate) struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client: u16,
    peer: u16,
}

/// An etcd member named `name` with its data in `dir`, serving clients on `client` (an URL)
/// and its single-member cluster on `peer`; callers add TLS flags and output.
pub(crate) fn etcd_command(name: &str, dir: &Path, client: &str, peer: &str) -> Command {
    let mut command = Command::new("etcd");
    command
        .args(["--name", name, "--data-dir"])
        .arg(dir.join("data"))
        .args([
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
        ])
        .args([
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
        ])
        .args(["--initial-cluster", &format!("{name}={peer}")]);
    command
}

impl Etcd {
    pub(crate) async fn start() -> Self {
        let mut etcd = Self {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            client: free_port().await,
            peer: free_port().await,
        };
        etcd.spawn().await;
        etcd
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client)
    }

    /// Starts (or restarts, on the same data) the etcd process and waits until it serves.
    pub(crate) async fn spawn(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client);
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let child = etcd_command("sluice-test", self.dir.path(), &client, &peer)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("etcd.log")).unwrap())
            .spawn()
            .expect("etcd is installed (scripts/setup-system-packages.sh installs etcd-server)");
        self.child = Some(child);
        let health = SocketAddr::from(([127, 0, 0, 1], self.client));
        wait_for(Duration::from_secs(15), "etcd to serve", || async move {
            tokio::net::TcpStream::connect(health).await.is_ok()
                && get(health, "/health").await.2.contains("true")
        })
        .await;
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `sluice run` process, killed on drop.
struct GatewayProcess {
    child: Child,
    listen: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gateway process whose registry is on `etcd` under `prefix`, with a route `/users` to a
/// service `users` without static instances.
async fn gateway_process(etcd: &str, prefix: &str) -> GatewayProcess {
    let config = format!(
        "[registry]\nbackend = \"etcd\"\nendpoints = [\"{etcd}\"]\nprefix = \"{prefix}\"\n\
         [services.users]\n[[routes]]\npath = \"/users\"\nservice = \"users\"\n"
    );
    gateway_process_with(&config).await
}

/// A `sluice run` process with this config (listen and admin ports are added).
async fn gateway_process_with(config: &str) -> GatewayProcess {
    let dir = tempfile::tempdir().unwrap();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port().await));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port().await));
    let config = format!(
        "[server]\nlisten = \"{listen}\"\nadmin = \"{admin}\"\n[log]\naccess = false\n{config}"
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("run")
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(log_file(dir.path()))
        .spawn()
        .unwrap();
    wait_for(
        Duration::from_secs(15),
        "the gateway to serve",
        || async move { tokio::net::TcpStream::connect(admin).await.is_ok() },
    )
    .await;
    GatewayProcess {
        child,
        listen,
        admin,
        _dir: dir,
    }
}

fn log_file(dir: &Path) -> std::fs::File {
    std::fs::File::create(dir.join("sluice.log")).unwrap()
}

/// The harness's (cluster.rs imports it from here).
pub(crate) use crate::harness::wait_for;

pub(crate) fn unique_prefix() -> String {
    format!(
        "/sluice-test/{}/",
        std::process::id() as u128 * 1000 + fastrand_like()
    )
}

/// A small per-call number so two tests in one process use different prefixes.
fn fastrand_like() -> u128 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) as u128
}

#[tokio::test]
async fn two_gateways_on_one_etcd_share_instances_until_the_lease_expires() {
    let etcd = Etcd::start().await;
    let prefix = unique_prefix();
    let a = gateway_process(&etcd.endpoint(), &prefix).await;
    let b = gateway_process(&etcd.endpoint(), &prefix).await;
    let up = Upstream::named("via-etcd").await;

    // Entries written behind the gateways' backs that the API would refuse are skipped,
    // never fatal (a weight of 4e9 would otherwise size the balancer's tables).
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    for (key, value) in [
        (
            "users/huge",
            r#"{"address":"127.0.0.1:1","weight":4000000000,"ttl_ms":1000}"#,
        ),
        ("users/junk", "not json"),
        (
            "users/bad-address",
            r#"{"address":"nowhere","weight":1,"ttl_ms":1000}"#,
        ),
    ] {
        client
            .put(format!("{prefix}{key}"), value, None)
            .await
            .unwrap();
    }

    // Registered through gateway a, with a 2 s lease.
    let body = format!(r#"{{"address": "{}", "ttl": "2s"}}"#, up.addr);
    let (status, text) = register(a.admin, "users", "u1", &body).await;
    assert_eq!(status, 200, "{text}");
    for gw in [&a, &b] {
        let listen = gw.listen;
        wait_for(
            Duration::from_secs(5),
            "both gateways to route to the instance",
            || async move { get(listen, "/users").await.2 == "via-etcd" },
        )
        .await;
    }
    // Renewed through gateway b (a lease keep-alive): still there after the first TTL.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(register(b.admin, "users", "u1", &body).await.0, 200);
    }
    assert_eq!(get(a.listen, "/users").await.0, 200);
    assert_eq!(get(b.listen, "/users").await.0, 200);

    // Not renewed: etcd expires the lease and both gateways drop the instance.
    for gw in [&a, &b] {
        let listen = gw.listen;
        wait_for(
            Duration::from_secs(10),
            "the expired instance to leave both gateways",
            || async move { get(listen, "/users").await.0 == 503 },
        )
        .await;
    }
    let (_, _, view) = get(b.admin, "/registry/services/users").await;
    assert!(view.contains(r#""instances":[]"#), "{view}");
}

#[tokio::test]
async fn routing_survives_etcd_going_away_and_converges_when_it_returns() {
    let mut etcd = Etcd::start().await;
    let prefix = unique_prefix();
    let a = gateway_process(&etcd.endpoint(), &prefix).await;
    let b = gateway_process(&etcd.endpoint(), &prefix).await;
    let x = Upstream::named("x").await;
    let y = Upstream::named("y").await;

    let body = |addr: SocketAddr| format!(r#"{{"address": "{addr}", "ttl": "60s"}}"#);
    assert_eq!(register(a.admin, "users", "x", &body(x.addr)).await.0, 200);
    let b_listen = b.listen;
    wait_for(Duration::from_secs(5), "b to see x", || async move {
        get(b_listen, "/users").await.0 == 200
    })
    .await;

    etcd.kill();
    for gw in [&a, &b] {
        let admin = gw.admin;
        wait_for(
            Duration::from_secs(10),
            "the gateway to notice etcd is gone",
            || async move {
                get(admin, "/registry/services")
                    .await
                    .2
                    .contains(r#""connected":false"#)
            },
        )
        .await;
        assert_eq!(
            metric(gw.admin, "sluice_registry_backend_connected").await,
            0
        );
        // Routing goes on with the last view.
        for _ in 0..20 {
            assert_eq!(get(gw.listen, "/users").await.2, "x");
        }
    }
    let (status, text) = register(b.admin, "users", "y", &body(y.addr)).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("etcd"), "{text}");

    etcd.spawn().await;
    let b_admin = b.admin;
    let y_body = body(y.addr);
    wait_for(
        Duration::from_secs(15),
        "registration through b once etcd is back",
        || {
            let y_body = y_body.clone();
            async move { register(b_admin, "users", "y", &y_body).await.0 == 200 }
        },
    )
    .await;
    let a_admin = a.admin;
    let y_addr = y.addr.to_string();
    wait_for(Duration::from_secs(15), "a to see y", || {
        let y_addr = y_addr.clone();
        async move {
            get(a_admin, "/registry/services/users")
                .await
                .2
                .contains(&y_addr)
        }
    })
    .await;
    assert!(
        get(a.admin, "/registry/services")
            .await
            .2
            .contains(r#""connected":true"#)
    );
    // Both instances now take a's traffic.
    for _ in 0..10 {
        get(a.listen, "/users").await;
    }
    assert!(x.hits() > 0 && y.hits() > 0);
}

/// The plugins' kv store on etcd: a JWT key published through one gateway verifies tokens on
/// another (the seed's Consul-KV key rotation, on etcd).
#[tokio::test]
async fn kv_on_etcd_rotates_auth_keys_across_gateways() {
    let etcd = Etcd::start().await;
    let up = Upstream::named("protected").await;
    let plugins = tempfile::tempdir().unwrap();
    let config = format!(
        "[registry]\nendpoints = [\"{}\"]\n[kv]\nbackend = \"etcd\"\nprefix = \"{}\"\n\
         [plugins]\ndir = \"{}\"\ncache_dir = \"{}\"\n\
         [services.s]\ninstances = [\"{}\"]\n[[routes]]\npath = \"/\"\nservice = \"s\"\nplugins = [\"auth\"]\n[plugin.auth]\n",
        etcd.endpoint(),
        unique_prefix(),
        plugins.path().display(),
        plugin_cache_dir().display(),
        up.addr
    );
    let a = gateway_process_with(&config).await;
    let b = gateway_process_with(&config).await;
    let token = crate::builtin::hs256("etcd-key", "etcd-secret-0123456789abcdef");
    let call = |addr: SocketAddr, token: String| async move {
        let req = http::Request::get("/r")
            .header("authorization", format!("Bearer {token}"))
            .body(full(""))
            .unwrap();
        send(addr, req).await.0.as_u16()
    };
    assert_eq!(
        call(b.listen, token.clone()).await,
        401,
        "no key published yet"
    );

    let keys =
        r#"{"keys":[{"kid":"etcd-key","alg":"HS256","secret":"etcd-secret-0123456789abcdef"}]}"#;
    let put = http::Request::put("/admin/kv/auth/keys")
        .body(full(keys))
        .unwrap();
    let (status, _, text) = send(a.admin, put).await;
    assert_eq!(status, 200, "{text}");
    // Written through a, read back at once from a's mirror.
    assert_eq!(get(a.admin, "/admin/kv/auth/keys").await.2, keys);
    assert_eq!(call(a.listen, token.clone()).await, 200);
    let b_listen = b.listen;
    let t = token.clone();
    wait_for(
        Duration::from_secs(5),
        "b to accept the key published through a",
        || {
            let t = t.clone();
            async move { call(b_listen, t).await == 200 }
        },
    )
    .await;
    assert_eq!(get(b.admin, "/admin/kv/auth/keys").await.2, keys);
}
