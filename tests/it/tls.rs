//! TLS termination: HTTPS through the gateway (HTTP/1.1 and h2 by ALPN), certificates by SNI,
//! rotation on disk while clients connect, mTLS. Certificates are made here with rcgen.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::harness::{Upstream, gateway};

/// A test certificate authority.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and key in PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl TestCa {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sluice test CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate for `names` signed by this CA.
    pub fn issue(&self, names: &[&str]) -> Issued {
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A TLS client trusting this CA, offering `alpn`, with an optional client certificate.
    pub fn connector(&self, alpn: &[&[u8]], client: Option<&Issued>) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let mut config = match client {
            Some(c) => builder
                .with_client_auth_cert(
                    vec![c.der.clone()],
                    PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // Every connection a full handshake: a resumed session would not show the
        // certificate the server serves now.
        config.resumption = rustls::client::Resumption::disabled();
        TlsConnector::from(Arc::new(config))
    }
}

/// Writes `issued` as `NAME.pem` / `NAME.key` in `dir` (each by an atomic rename).
pub fn write_pair(dir: &Path, name: &str, issued: &Issued) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    for (path, text) in [(&key, &issued.key_pem), (&cert, &issued.cert_pem)] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
    (cert, key)
}

/// What one HTTPS exchange showed.
pub struct Exchange {
    pub status: StatusCode,
    pub version: Version,
    pub body: String,
    pub peer_cert: CertificateDer<'static>,
    pub alpn: Option<Vec<u8>>,
}

/// One GET over a new TLS connection, HTTP/2 when ALPN chose it.
pub async fn https_get(
    connector: &TlsConnector,
    addr: SocketAddr,
    sni: &str,
    path: &str,
) -> Result<Exchange, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| format!("handshake: {e}"))?;
    let (_, session) = tls.get_ref();
    let peer_cert = session.peer_certificates().unwrap()[0].clone();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let request = Request::get(format!("https://{sni}{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let io = TokioIo::new(tls);
    let response = if alpn.as_deref() == Some(b"h2") {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(conn);
        sender.send_request(request).await
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("http1 handshake: {e}"))?;
        tokio::spawn(conn);
        let mut request = request;
        request
            .headers_mut()
            .insert(http::header::HOST, sni.parse().unwrap());
        sender.send_request(request).await
    }
    .map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    let version = response.version();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(Exchange {
        status,
        version,
        body: String::from_utf8_lossy(&body).into_owned(),
        peer_cert,
        alpn,
    })
}

fn tls_config(upstream: SocketAddr, tls: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[server.tls]\nlisten = \"127.0.0.1:0\"\n{tls}\n\
         [services.s]\ninstances = [\"{upstream}\"]\n[[routes]]\npath = \"/\"\nservice = \"s\"\n"
    )
}

#[tokio::test]
async fn https_request_through_the_gateway_over_http1_and_h2() {
    let up = Upstream::named("over tls").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key) = write_pair(dir.path(), "api", &ca.issue(&["api.test"]));
    let gw = gateway(&tls_config(
        up.addr,
        &format!("cert = {cert:?}\nkey = {key:?}\n"),
    ))
    .await;
    let addr = gw.tls_addr.expect("a TLS listener");

    let h1 = https_get(&ca.connector(&[b"http/1.1"], None), addr, "api.test", "/x")
        .await
        .unwrap();
    assert_eq!(h1.status, StatusCode::OK);
    assert_eq!(h1.body, "over tls");
    assert_eq!(h1.version, Version::HTTP_11);

    let h2 = https_get(
        &ca.connector(&[b"h2", b"http/1.1"], None),
        addr,
        "api.test",
        "/y",
    )
    .await
    .unwrap();
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]), "ALPN offers h2");
    assert_eq!(h2.version, Version::HTTP_2);
    assert_eq!(h2.status, StatusCode::OK);
    assert_eq!(h2.body, "over tls");
    // The upstream got a plain HTTP/1.1 request with the client's authority as Host.
    let seen = up.last();
    assert_eq!(seen.uri.path(), "/y");
    assert_eq!(seen.headers["host"], "api.test");
    // The plain listener still serves HTTP/1.1.
    let (status, _, body) = crate::harness::get(gw.listen_addr, "/z").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "over tls"));
    gw.shutdown().await;
}

#[tokio::test]
async fn sni_chooses_between_certificates() {
    let up = Upstream::named("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let a = ca.issue(&["a.test"]);
    let b = ca.issue(&["b.test", "*.b.test"]);
    let (a_cert, a_key) = write_pair(dir.path(), "a", &a);
    let (b_cert, b_key) = write_pair(dir.path(), "b", &b);
    let gw = gateway(&tls_config(
        up.addr,
        &format!(
            "cert = {a_cert:?}\nkey = {a_key:?}\n[[server.tls.certificates]]\ncert = {b_cert:?}\nkey = {b_key:?}\n"
        ),
    ))
    .await;
    let addr = gw.tls_addr.unwrap();
    let connector = ca.connector(&[b"http/1.1"], None);
    let got = https_get(&connector, addr, "b.test", "/").await.unwrap();
    assert_eq!(got.peer_cert, b.der, "b.test gets b's certificate");
    assert_eq!(got.status, StatusCode::OK);
    let got = https_get(&connector, addr, "x.b.test", "/").await.unwrap();
    assert_eq!(got.peer_cert, b.der, "the wildcard matches");
    let got = https_get(&connector, addr, "a.test", "/").await.unwrap();
    assert_eq!(got.peer_cert, a.der, "a.test gets a's certificate");
    // An unknown name gets the default certificate (which the client then refuses).
    let err = https_get(&connector, addr, "c.test", "/").await.err();
    assert!(
        err.as_deref().is_some_and(|e| e.contains("handshake")),
        "{err:?}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn certificates_rotate_on_disk_without_a_failed_handshake() {
    let up = Upstream::named("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let old = ca.issue(&["api.test"]);
    let new = ca.issue(&["api.test"]);
    let (cert, key) = write_pair(dir.path(), "api", &old);
    let gw = gateway(&tls_config(
        up.addr,
        &format!("cert = {cert:?}\nkey = {key:?}\n"),
    ))
    .await;
    let addr = gw.tls_addr.unwrap();
    let connector = ca.connector(&[b"h2", b"http/1.1"], None);

    let looping = tokio::spawn(async move {
        let mut served = Vec::new();
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(4) {
            let got = https_get(&connector, addr, "api.test", "/").await;
            let got = got.unwrap_or_else(|e| panic!("a connection failed during rotation: {e}"));
            assert_eq!(got.status, StatusCode::OK);
            served.push(got.peer_cert);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        served
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The key goes first: for a moment the pair on disk does not match, and the old pair
    // must keep serving.
    write_pair(dir.path(), "api", &new);
    let served = looping.await.unwrap();
    assert!(served.len() > 20, "only {} requests", served.len());
    assert_eq!(served.first(), Some(&old.der));
    assert_eq!(
        served.last(),
        Some(&new.der),
        "the new certificate is served after rotation"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn mtls_refuses_a_client_without_a_certificate() {
    let up = Upstream::named("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key) = write_pair(dir.path(), "api", &ca.issue(&["api.test"]));
    let ca_file = dir.path().join("clients.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let gw = gateway(&tls_config(
        up.addr,
        &format!(
            "cert = {cert:?}\nkey = {key:?}\nclient_ca = {ca_file:?}\nmin_version = \"1.3\"\n"
        ),
    ))
    .await;
    let addr = gw.tls_addr.unwrap();
    let anonymous = ca.connector(&[b"http/1.1"], None);
    let refused = https_get(&anonymous, addr, "api.test", "/").await;
    assert!(
        refused.is_err(),
        "a client without a certificate is refused"
    );
    assert_eq!(up.hits(), 0);

    let client = ca.issue(&["client.test"]);
    let with_cert = ca.connector(&[b"http/1.1"], Some(&client));
    let got = https_get(&with_cert, addr, "api.test", "/").await.unwrap();
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(up.hits(), 1);
    gw.shutdown().await;
}

#[test]
fn a_missing_or_bad_certificate_is_a_config_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    let key = dir.path().join("k.key");
    std::fs::write(&key, TestCa::new().issue(&["x.test"]).key_pem).unwrap();
    for (cert, what) in [
        (&missing, "cannot read certificate"),
        (&bad, "no certificate"),
    ] {
        let text =
            format!("[server.tls]\nlisten = \"127.0.0.1:0\"\ncert = {cert:?}\nkey = {key:?}\n");
        let e = sluice::config::Config::parse(&text, "t.toml")
            .expect_err("the config is refused")
            .to_string();
        assert!(
            e.contains(&format!("server.tls: {}: {what}", cert.display())),
            "{e}"
        );
    }
    // A key that is not the certificate's.
    let ca = TestCa::new();
    let (cert, _) = write_pair(dir.path(), "one", &ca.issue(&["x.test"]));
    let text = format!("[server.tls]\nlisten = \"127.0.0.1:0\"\ncert = {cert:?}\nkey = {key:?}\n");
    let e = sluice::config::Config::parse(&text, "t.toml")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("does not fit the certificate"), "{e}");
}

/// An HTTPS upstream on 127.0.0.1:0 (ALPN h2 and http/1.1) answering with the HTTP version it
/// saw; with `client_ca`, it requires a client certificate. Counts TCP connections.
async fn tls_upstream(
    issued: &Issued,
    client_ca: Option<&TestCa>,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    tls_server(issued, client_ca, |req| {
        // HTTP/2 carries the authority in the URI, HTTP/1.1 in Host.
        let host = match req.headers().get("host") {
            Some(h) => h.to_str().unwrap().to_owned(),
            None => req.uri().authority().unwrap().to_string(),
        };
        http::Response::new(format!("{:?} {host}", req.version()))
    })
    .await
}

/// An HTTPS server on 127.0.0.1:0 (ALPN h2 and http/1.1) answering each request with
/// `respond(&request)`; with `client_ca`, it requires a client certificate. Counts TCP
/// connections.
async fn tls_server(
    issued: &Issued,
    client_ca: Option<&TestCa>,
    respond: impl Fn(&Request<hyper::body::Incoming>) -> http::Response<String> + Send + Sync + 'static,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let respond = Arc::new(respond);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.issuer.der().clone()).unwrap();
            builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap(),
            )
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(
            vec![issued.der.clone()],
            PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = conns.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let acceptor = acceptor.clone();
            let respond = respond.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let response = respond(&req).map(|text| Full::new(Bytes::from(text)));
                        async move { Ok::<_, std::convert::Infallible>(response) }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, conns)
}

#[tokio::test]
async fn upstreams_over_tls_http1_and_h2_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let (addr, conns) = tls_upstream(&ca.issue(&["upstream.test"]), Some(&ca)).await;
    let (client_cert, client_key) = write_pair(dir.path(), "gw", &ca.issue(&["gateway.test"]));
    let tls = format!(
        "tls_ca = {ca_file:?}\ntls_server_name = \"upstream.test\"\ntls_client_cert = {client_cert:?}\ntls_client_key = {client_key:?}\n"
    );
    let config = format!(
        "[services.h1]\ninstances = [\"{addr}\"]\ntls = true\n{tls}\
         [services.h2]\ninstances = [\"{addr}\"]\nprotocol = \"h2\"\n{tls}\
         [services.anonymous]\ninstances = [\"{addr}\"]\ntls = true\nretries = 0\ntls_ca = {ca_file:?}\ntls_server_name = \"upstream.test\"\n\
         [[routes]]\npath = \"/h1\"\nservice = \"h1\"\n\
         [[routes]]\npath = \"/h2\"\nservice = \"h2\"\n\
         [[routes]]\npath = \"/anonymous\"\nservice = \"anonymous\"\n"
    );
    let gw = gateway(&config).await;
    let (status, _, body) = crate::harness::get(gw.listen_addr, "/h1").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, &*format!("HTTP/1.1 {}", gw.listen_addr))
    );

    // HTTP/2 to the instance: concurrent requests share one connection.
    let before = conns.load(std::sync::atomic::Ordering::SeqCst);
    let requests = (0..10).map(|_| crate::harness::get(gw.listen_addr, "/h2"));
    for (status, _, body) in futures_util::future::join_all(requests).await {
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            format!("HTTP/2.0 {}", gw.listen_addr),
            "Host became :authority"
        );
    }
    assert_eq!(
        conns.load(std::sync::atomic::Ordering::SeqCst) - before,
        1,
        "one multiplexed h2 connection"
    );

    // Without the client certificate the instance refuses the gateway.
    let (status, _, _) = crate::harness::get(gw.listen_addr, "/anonymous").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    gw.shutdown().await;
}

/// Polls `check` until it holds, for at most 10 s.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within 10 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `health` of instance `address` of service `service` in `/admin/services`.
async fn instance_health(
    admin: SocketAddr,
    service: &str,
    address: SocketAddr,
) -> serde_json::Value {
    let view: serde_json::Value =
        serde_json::from_str(&crate::harness::get(admin, "/admin/services").await.2).unwrap();
    let service = view["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == service)
        .unwrap_or_else(|| panic!("no service {service} in {view}"));
    service["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["address"] == address.to_string())
        .unwrap_or_else(|| panic!("no instance {address} in {service}"))["health"]
        .clone()
}

#[tokio::test]
async fn active_checks_reach_tls_upstreams_over_tls_and_h2() {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    // Two HTTPS instances (the same name, as replicas behind one DNS name would have); `a`
    // records the HTTP version of each health check and fails them once told to.
    let failing = Arc::new(AtomicBool::new(false));
    let checks: Arc<Mutex<Vec<Version>>> = Arc::default();
    let (a, _) = {
        let (failing, checks) = (failing.clone(), checks.clone());
        tls_server(&ca.issue(&["upstream.test"]), None, move |req| {
            if req.uri().path() != "/health" {
                return http::Response::new("a".to_string());
            }
            checks.lock().unwrap().push(req.version());
            let mut response = http::Response::new(String::new());
            if failing.load(Ordering::SeqCst) {
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            response
        })
        .await
    };
    let (b, _) = tls_server(&ca.issue(&["upstream.test"]), None, |_| {
        http::Response::new("b".to_string())
    })
    .await;
    let tls = format!("tls_ca = {ca_file:?}\ntls_server_name = \"upstream.test\"\n");
    let health = "path = \"/health\"\ninterval = \"100ms\"\nunhealthy_threshold = 2\nhealthy_threshold = 2\n";
    let config = format!(
        "[services.s]\ninstances = [\"{a}\", \"{b}\"]\ntls = true\nretries = 0\n{tls}\
         [services.s.active_health]\n{health}\
         [services.h2]\ninstances = [\"{a}\"]\nprotocol = \"h2\"\n{tls}\
         [services.h2.active_health]\n{health}\
         [[routes]]\npath = \"/\"\nservice = \"s\"\n"
    );
    let gw = gateway(&config).await;
    let (listen, admin) = (gw.listen_addr, gw.admin_addr);
    // Both services check `a` the way they speak to it: HTTP/1.1 and h2, each over TLS.
    eventually("checks over HTTP/1.1 and h2", || {
        let seen = checks.lock().unwrap().clone();
        async move { seen.contains(&Version::HTTP_11) && seen.contains(&Version::HTTP_2) }
    })
    .await;
    for service in ["s", "h2"] {
        let health = instance_health(admin, service, a).await;
        assert_eq!(health["failing_checks"], false, "{service}: {health}");
    }
    let served_by_a = move || async move {
        let mut n = 0;
        for _ in 0..10 {
            let (status, _, body) = crate::harness::get(listen, "/").await;
            assert_eq!(status, StatusCode::OK);
            n += usize::from(body == "a");
        }
        n
    };
    assert_eq!(served_by_a().await, 5, "round robin over both");

    // `a` starts failing its health path: marked down, and the traffic moves to `b`.
    failing.store(true, Ordering::SeqCst);
    eventually("a marked down", || async move {
        instance_health(admin, "s", a).await["failing_checks"] == true
    })
    .await;
    assert_eq!(
        served_by_a().await,
        0,
        "failing its checks, it takes no traffic"
    );
    eventually("a marked down over h2 too", || async move {
        instance_health(admin, "h2", a).await["failing_checks"] == true
    })
    .await;
    gw.shutdown().await;
}
