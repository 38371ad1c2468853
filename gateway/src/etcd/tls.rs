//! etcd over TLS: the server verified against a CA file, optionally a client certificate.
//!
//! The channel dials with [`Dialer`]: TCP to the first endpoint that answers, then a rustls
//! handshake (ALPN `h2`, as gRPC servers require) for that endpoint's host. tonic speaks
//! HTTP/2 over the stream it is given, so its own TLS (and its features) stay out. Before the
//! channel is made, one handshake is tried at once, so that a wrong CA or a missing client
//! certificate is reported naming the endpoint and the reason, not as a later
//! `transport error`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// TLS settings for etcd (`[cluster] tls_ca`, `tls_cert`, `tls_key`; the same flags on
/// `sluice config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// CA certificates (PEM) etcd's server certificate must chain to.
    pub ca: PathBuf,
    /// A client certificate chain (PEM), for etcd with `--client-cert-auth`.
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
}

impl EtcdTls {
    /// The rustls client configuration; errors name the file (and the key prefix `what`,
    /// e.g. `cluster.`).
    pub fn client_config(&self, what: &str) -> Result<Arc<rustls::ClientConfig>, String> {
        let roots = crate::tls::load_roots(&self.ca).map_err(|e| format!("{what}tls_ca: {e}"))?;
        let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let mut config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let (chain, private) =
                    read_pair(cert, key).map_err(|e| format!("{what}tls_cert: {e}"))?;
                builder
                    .with_client_auth_cert(chain, private)
                    .map_err(|e| format!("{what}tls_key: {}: {e}", key.display()))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err(format!("{what}tls_cert and {what}tls_key go together")),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// A certificate chain and its key, from PEM files.
fn read_pair(
    cert: &Path,
    key: &Path,
) -> Result<
    (
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ),
    String,
> {
    use rustls::pki_types::pem::PemObject as _;
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: cannot read: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: bad certificate PEM: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", cert.display()));
    }
    let private = rustls::pki_types::PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{}: no usable private key: {e}", key.display()))?;
    Ok((chain, private))
}

/// `host:port` of an endpoint (`https://` or `http://` in front is allowed), and the name
/// its certificate must have.
fn target(endpoint: &str) -> Result<(String, ServerName<'static>), String> {
    let address = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"))
        .unwrap_or(endpoint)
        .trim_end_matches('/');
    let host = match address.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => return Err(format!("`{endpoint}` must be host:port")),
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(bare.to_owned())
        .map_err(|e| format!("`{endpoint}`: `{bare}` is not a server name: {e}"))?;
    Ok((address.to_owned(), name))
}

/// Makes TLS connections to the first of the endpoints that answers.
#[derive(Clone)]
struct Dialer {
    endpoints: Arc<[String]>,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

impl Dialer {
    async fn dial(&self) -> Result<TlsStream<TcpStream>, String> {
        let mut errors = Vec::new();
        for endpoint in self.endpoints.iter() {
            match self.dial_one(endpoint).await {
                Ok(stream) => return Ok(stream),
                Err(e) => errors.push(format!("etcd at {endpoint}: {e}")),
            }
        }
        Err(errors.join("; "))
    }

    async fn dial_one(&self, endpoint: &str) -> Result<TlsStream<TcpStream>, String> {
        let (address, name) = target(endpoint)?;
        let handshake = async {
            let tcp = TcpStream::connect(address.as_str())
                .await
                .map_err(|e| format!("connecting: {e}"))?;
            let _ = tcp.set_nodelay(true);
            tokio_rustls::TlsConnector::from(self.config.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))
        };
        tokio::time::timeout(self.timeout, handshake)
            .await
            .map_err(|_| format!("no TLS connection within {:?}", self.timeout))?
    }
}

impl tower_service::Service<http::Uri> for Dialer {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let dialer = self.clone();
        Box::pin(async move {
            dialer
                .dial()
                .await
                .map(TokioIo::new)
                .map_err(std::io::Error::other)
        })
    }
}

/// A client for `endpoints` over TLS, with `options` (user, timeouts are taken from
/// `timeout`).
pub async fn connect(
    endpoints: &[String],
    tls: &EtcdTls,
    options: ConnectOptions,
    timeout: Duration,
) -> Result<Client, String> {
    let config = tls.client_config("")?;
    let first = endpoints
        .first()
        .ok_or_else(|| "no etcd endpoint".to_owned())?;
    let dialer = Dialer {
        endpoints: endpoints.iter().cloned().collect(),
        config,
        timeout,
    };
    // One handshake now, for a clear error (the channel connects lazily).
    drop(dialer.dial().await?);
    // tonic needs a URI; the dialer decides where it goes. `http`: tonic's own TLS is not
    // built in, and the stream it gets is TLS already.
    let (address, _) = target(first)?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| format!("`{first}`: {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout)
        // Notice a dead etcd within seconds even on an idle watch.
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(timeout)
        .keep_alive_while_idle(true)
        .connect_with_connector_lazy(dialer);
    Client::from_channel(etcd_client::Channel::Tonic(channel), Some(options))
        .await
        .map_err(|e| format!("connecting to {endpoints:?} over TLS: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_gives_the_address_and_the_name_to_verify() {
        let (address, name) = target("https://etcd-1.internal:2379").unwrap();
        assert_eq!(address, "etcd-1.internal:2379");
        assert_eq!(name.to_str(), "etcd-1.internal");
        let (address, name) = target("127.0.0.1:2379").unwrap();
        assert_eq!(address, "127.0.0.1:2379");
        assert_eq!(name.to_str(), "127.0.0.1");
        let (_, name) = target("[::1]:2379").unwrap();
        assert_eq!(name.to_str(), "::1");
        assert!(target("etcd").unwrap_err().contains("must be host:port"));
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let tls = EtcdTls {
            ca: "/nonexistent/ca.pem".into(),
            cert: None,
            key: None,
        };
        let e = tls.client_config("cluster.").unwrap_err();
        assert!(e.starts_with("cluster.tls_ca: /nonexistent/ca.pem"), "{e}");
    }
}
