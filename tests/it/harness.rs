//! Test harness: real upstream servers and a real gateway on 127.0.0.1:0, and clients.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice::Gateway;
use sluice::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long [`assert_eventually!`] and [`wait_for`] wait unless told otherwise.
pub const EVENTUALLY: Duration = Duration::from_secs(10);
/// How often they check.
pub const POLL: Duration = Duration::from_millis(20);

/// `assert_eventually!(COND, "what", args..)`: checks `COND` (it may `.await`) every
/// [`POLL`] until it holds, and fails naming what it waited for after [`EVENTUALLY`] (or
/// `within: DURATION` given first). For what must *become* true: a test never sleeps a fixed
/// time and hopes, and a negative check ("no more requests reach it") follows a positive
/// wait for the state that implies it.
macro_rules! assert_eventually {
    (within: $limit:expr, $cond:expr, $($what:tt)+) => {{
        let limit: std::time::Duration = $limit;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if $cond {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not within {limit:?}: {}",
                format!($($what)+)
            );
            tokio::time::sleep($crate::harness::POLL).await;
        }
    }};
    ($cond:expr, $($what:tt)+) => {
        $crate::harness::assert_eventually!(within: $crate::harness::EVENTUALLY, $cond, $($what)+)
    };
}
pub(crate) use assert_eventually;

/// [`assert_eventually!`] for a check written as a closure: polls `check` until it holds;
/// panics after `limit` naming `what`.
pub async fn wait_for<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    assert_eventually!(within: limit, check().await, "{what}");
}

/// What an upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: http::Method,
    pub uri: http::Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub type BoxBody =
    http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;
type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<BoxBody>> + Send>>
        + Send
        + Sync,
>;

/// A real HTTP/1.1 server on 127.0.0.1:0.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub conns: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    stop: CancellationToken,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub fn full(body: impl Into<Bytes>) -> BoxBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

impl Upstream {
    /// Answers 200 with its name and records each request (body read in full).
    pub async fn named(name: &'static str) -> Self {
        Self::recording(move |_seen| Response::new(full(name))).await
    }

    /// Answers 200 with `body` after `delay` (a slow upstream; requests are not recorded).
    pub async fn slow(delay: Duration, body: &'static str) -> Self {
        Self::with_handler(Arc::new(move |_req| {
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                Response::new(full(body))
            })
        }))
        .await
    }

    /// Records each request (body read in full), then answers with `respond(&seen)`.
    pub async fn recording(
        respond: impl Fn(&Seen) -> Response<BoxBody> + Send + Sync + 'static,
    ) -> Self {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let respond = Arc::new(respond);
        let mut up = Self::with_handler(Arc::new(move |req: Request<Incoming>| {
            let log = log.clone();
            let respond = respond.clone();
            Box::pin(async move {
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let seen = Seen {
                    method: parts.method,
                    uri: parts.uri,
                    headers: parts.headers,
                    body,
                };
                let resp = respond(&seen);
                log.lock().unwrap().push(seen);
                resp
            })
        }))
        .await;
        up.seen = seen;
        up
    }

    /// Serves with a custom async handler.
    pub async fn with_handler(handler: Handler) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let conns = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (h, s, c) = (hits.clone(), stop.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    () = s.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                c.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                let hits = h.clone();
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        () = s.cancelled() => {}
                    }
                });
            }
        });
        Self {
            addr,
            hits,
            conns,
            seen: Arc::default(),
            stop,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream saw a request")
    }
}

/// A port with nothing listening (bound, then closed).
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

/// Starts a gateway from config text; `[server]` listen/admin default to 127.0.0.1:0.
pub async fn gateway(config: &str) -> Gateway {
    let text = if config.contains("[server]") {
        config.to_string()
    } else {
        format!("[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n{config}")
    };
    let mut config = Config::parse(&text, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    config.log.access = false;
    Gateway::start(config).await.expect("gateway starts")
}

/// A gateway with the plugin `name` from `dir` on a route `path` named `with-plugin` (no
/// `strip_prefix`) in front of `upstream`.
pub async fn gateway_with_plugin(
    dir: &std::path::Path,
    name: &str,
    path: &str,
    upstream: SocketAddr,
) -> Gateway {
    gateway(&format!(
        r#"
[plugins]
dir = "{}"
cache_dir = "{}"
[services.s]
instances = ["{upstream}"]
[[routes]]
name = "with-plugin"
path = "{path}"
service = "s"
plugins = ["{name}"]
"#,
        dir.display(),
        plugin_cache_dir().display()
    ))
    .await
}

/// A plugin directory holding the testbed plugin, with optional `testbed.toml`.
pub fn plugin_dir(config: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("testbed"), dir.path().join("testbed.wasm")).unwrap();
    if let Some(config) = config {
        std::fs::write(dir.path().join("testbed.toml"), config).unwrap();
    }
    dir
}

/// A gateway with the testbed plugin on `/p`, a plugin-free route on `/plain`, and the given
/// extra `[plugins.override.testbed]` lines.
pub async fn gateway_with_testbed(
    dir: &std::path::Path,
    upstream: std::net::SocketAddr,
    settings: &str,
) -> Gateway {
    gateway(&format!(
        r#"
[plugins]
dir = "{}"
cache_dir = "{}"
[plugins.override.testbed]
{settings}
[services.s]
instances = ["{upstream}"]
[[routes]]
name = "with-plugin"
path = "/p"
service = "s"
strip_prefix = true
plugins = ["testbed"]
[[routes]]
name = "plain"
path = "/plain"
service = "s"
"#,
        dir.display(),
        plugin_cache_dir().display()
    ))
    .await
}

/// One plugin's entry in `GET /admin/plugins`' answer.
pub fn plugin_view(plugins: &serde_json::Value, name: &str) -> serde_json::Value {
    plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{name} in {plugins}"))
        .clone()
}

/// Config text with one service `s` at `addr` and one route on `path`.
pub fn one_route(addr: SocketAddr, path: &str) -> String {
    format!(
        "[services.s]\ninstances = [\"{addr}\"]\n[[routes]]\nname = \"r\"\npath = \"{path}\"\nservice = \"s\"\n"
    )
}

pub fn client() -> Client<HttpConnector, BoxBody> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// GET `http://{addr}{path}` and return status, headers and body.
pub async fn get(addr: SocketAddr, path: &str) -> (StatusCode, HeaderMap, String) {
    send(addr, Request::get(path).body(full("")).unwrap()).await
}

pub async fn send(addr: SocketAddr, mut req: Request<BoxBody>) -> (StatusCode, HeaderMap, String) {
    let uri = format!(
        "http://{addr}{}",
        req.uri().path_and_query().map_or("/", |p| p.as_str())
    );
    *req.uri_mut() = uri.parse().unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), client().request(req))
        .await
        .expect("response within 20 s")
        .expect("request succeeds");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Writes raw bytes on a new connection and reads until the server closes it or the
/// timeout passes; returns what was read.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of the first response in raw HTTP text.
pub fn raw_status(text: &str) -> u16 {
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The path of a test plugin built from `tests/fixtures` (built once per test run).
pub fn fixture(name: &str) -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        // The fixtures workspace sets its own target (wasm32-wasip2) in .cargo/config.toml,
        // which cargo finds from the working directory.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let target = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("wasm-fixtures");
        cargo_build_wasm(
            &root,
            &target,
            &[],
            "tests/fixtures (is the wasm32-wasip2 target installed?)",
        );
        target.join("wasm32-wasip2/release")
    });
    let path = dir.join(format!("{}.wasm", name.replace('-', "_")));
    assert!(path.exists(), "no fixture {}", path.display());
    path
}

/// The sha256 of some bytes, as lower-case hex (how `[plugins.sources.NAME] sha256` is written).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A file server answering every request with the testbed fixture's bytes (a plugin source
/// for `[plugins.sources.NAME] url`), and their sha256.
pub async fn testbed_store() -> (Upstream, String) {
    let wasm = Bytes::from(std::fs::read(fixture("testbed")).unwrap());
    let digest = sha256_hex(&wasm);
    let store = Upstream::recording(move |_seen| hyper::Response::new(full(wasm.clone()))).await;
    (store, digest)
}

/// A shared compile cache for the tests' gateways, so each test does not recompile.
pub fn plugin_cache_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache")
}

/// The path of a Rust example plugin (`examples/NAME`), built for wasm32-wasip2 from source
/// (once per test run).
pub fn rust_example(name: &str) -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let target = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("wasm-examples");
        let args = [
            "--target",
            "wasm32-wasip2",
            "-p",
            "rust-header-rewrite",
            "-p",
            "rust-rate-limit",
        ];
        cargo_build_wasm(&root, &target, &args, "the Rust examples");
        target.join("wasm32-wasip2/release")
    });
    let path = dir.join(format!("{}.wasm", name.replace('-', "_")));
    assert!(path.exists(), "no example plugin {}", path.display());
    path
}

/// `cargo build --release ARGS` in `dir` into `target`. A nested cargo needs its own target
/// dir (the outer one is locked) and none of the outer build's flags.
fn cargo_build_wasm(dir: &std::path::Path, target: &std::path::Path, args: &[&str], what: &str) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["build", "--release", "--quiet"])
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .unwrap_or_else(|e| panic!("running cargo for {what}: {e}"));
    assert!(
        out.status.success(),
        "building {what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
