//! TLS termination (`[server.tls]`): rustls with the aws-lc-rs provider, certificates chosen
//! by SNI, reloaded when their files change, optional client certificates (mTLS), ALPN `h2`
//! and `http/1.1`.
//!
//! Reloading swaps the whole certificate set at once ([`CertResolver`] holds it in an
//! `ArcSwap`): handshakes in progress keep the certificate they picked, connections already
//! up are not touched, and a set that fails to load (a key written before its certificate, a
//! half-written file) leaves the previous one serving until the next change.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use serde::Deserialize;

/// `[server.tls]` (re-exported as `config::TlsConfig`; here, beside the code that loads it,
/// so that this module does not depend on `config`, which checks it by loading it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// `listen = "127.0.0.1:8443"`: the TLS listener.
    pub listen: SocketAddr,
    /// `cert = "certs/api.pem"`: the certificate chain (PEM), leaf first. Served when the
    /// client sends no SNI or one no certificate names.
    pub cert: PathBuf,
    /// `key = "certs/api.key"`: its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// `[[server.tls.certificates]]`: more certificates, chosen by SNI from their subject
    /// alternative names (DNS names, `*.` wildcards included).
    #[serde(default)]
    pub certificates: Vec<TlsCertificate>,
    /// `min_version = "1.2"` or `"1.3"`: the oldest TLS version accepted.
    #[serde(default)]
    pub min_version: TlsMinVersion,
    /// `client_ca = "certs/clients.pem"`: require a client certificate signed by one of these
    /// CAs (mTLS); absent = no client certificates asked.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// `watch = true`: reload the certificates when their files change.
    #[serde(default = "default_true")]
    pub watch: bool,
}

/// `[[server.tls.certificates]]`: one more certificate and its key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsCertificate {
    /// The certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

/// `min_version`
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
pub enum TlsMinVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13,
}

fn default_true() -> bool {
    true
}

/// Quiet time after the last change to a certificate file before reloading (tools write the
/// chain and the key one after the other).
const DEBOUNCE: Duration = Duration::from_millis(100);

/// The process-wide crypto provider: aws-lc-rs.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// One certificate with the DNS names it is chosen for.
#[derive(Debug)]
struct Entry {
    /// Lower-case DNS names from the subject alternative names (`*.example.com` allowed).
    names: Vec<String>,
    key: Arc<CertifiedKey>,
}

/// Every certificate of the listener; the first is the default.
#[derive(Debug)]
struct CertSet {
    entries: Vec<Entry>,
}

impl CertSet {
    fn load(config: &TlsConfig) -> Result<Self, String> {
        let provider = provider();
        let mut entries = vec![load_pair(&config.cert, &config.key, &provider)?];
        for pair in &config.certificates {
            entries.push(load_pair(&pair.cert, &pair.key, &provider)?);
        }
        Ok(Self { entries })
    }

    fn pick(&self, server_name: Option<&str>) -> &Arc<CertifiedKey> {
        if let Some(name) = server_name {
            let name = name.to_ascii_lowercase();
            let exact = self.entries.iter().find(|e| e.names.contains(&name));
            let wildcard = || {
                let parent = name.split_once('.').map(|(_, rest)| rest)?;
                self.entries.iter().find(|e| {
                    e.names
                        .iter()
                        .any(|n| n.strip_prefix("*.").is_some_and(|w| w == parent))
                })
            };
            if let Some(entry) = exact.or_else(wildcard) {
                return &entry.key;
            }
        }
        &self.entries[0].key
    }

    fn names(&self) -> Vec<String> {
        self.entries.iter().flat_map(|e| e.names.clone()).collect()
    }
}

/// Reads a certificate chain and its key (PEM); errors name the file at fault.
fn read_pair(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: cannot read certificate: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: bad certificate PEM: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no certificate (expected PEM `BEGIN CERTIFICATE`)",
            cert.display()
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "{}: no private key (expected PEM `BEGIN PRIVATE KEY`, RSA or EC)",
            key.display()
        ),
        e => format!("{}: cannot read private key: {e}", key.display()),
    })?;
    Ok((chain, private))
}

/// Reads a certificate chain and its key, checks that they fit, and finds the names.
fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<Entry, String> {
    let (chain, private) = read_pair(cert, key)?;
    let certified = CertifiedKey::from_der(chain, private, provider).map_err(|e| {
        format!(
            "{}: the key does not fit the certificate {}: {e}",
            key.display(),
            cert.display()
        )
    })?;
    let leaf = webpki::EndEntityCert::try_from(&certified.cert[0])
        .map_err(|e| format!("{}: cannot parse the certificate: {e:?}", cert.display()))?;
    let names = leaf
        .valid_dns_names()
        .map(str::to_ascii_lowercase)
        .collect();
    Ok(Entry {
        names,
        key: Arc::new(certified),
    })
}

/// Chooses the certificate by SNI from the current set (swapped whole on reload).
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertSet>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().pick(hello.server_name()).clone())
    }
}

/// A loaded TLS listener configuration, ready to accept connections.
#[derive(Clone)]
pub struct Tls {
    /// The handshake side.
    pub acceptor: tokio_rustls::TlsAcceptor,
    resolver: Arc<CertResolver>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

/// Checks that every file of `[server.tls]` loads; the messages name the file.
pub fn check(config: &TlsConfig) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = CertSet::load(config) {
        problems.push(format!("server.tls: {e}"));
    }
    if let Some(ca) = &config.client_ca
        && let Err(e) = load_roots(ca)
    {
        problems.push(format!("server.tls.client_ca: {e}"));
    }
    problems
}

pub(crate) fn load_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: cannot read CA certificates: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: bad CA certificate PEM: {e}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("{}: no usable CA certificate", path.display()));
    }
    Ok(roots)
}

impl Tls {
    /// Loads the certificates and builds the rustls configuration. `h2` offers HTTP/2 by ALPN.
    pub fn new(config: &TlsConfig, h2: bool) -> anyhow::Result<Self> {
        let set = CertSet::load(config).map_err(|e| anyhow::anyhow!("server.tls: {e}"))?;
        let resolver = Arc::new(CertResolver {
            current: ArcSwap::from_pointee(set),
        });
        let versions: &[&rustls::SupportedProtocolVersion] = match config.min_version {
            TlsMinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsMinVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .context("server.tls.min_version")?;
        let builder = match &config.client_ca {
            Some(ca) => {
                let roots =
                    load_roots(ca).map_err(|e| anyhow::anyhow!("server.tls.client_ca: {e}"))?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .context("server.tls.client_ca")?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut server = builder.with_cert_resolver(resolver.clone());
        server.alpn_protocols = if h2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            resolver,
        })
    }

    /// Reloads the certificates from disk; on failure the current ones keep serving.
    pub fn reload(&self, config: &TlsConfig) -> Result<(), String> {
        let set = CertSet::load(config)?;
        tracing::info!(names = ?set.names(), "TLS certificates reloaded");
        self.resolver.current.store(Arc::new(set));
        Ok(())
    }

    /// Watches the certificate and key files (their directories, so files replaced by a
    /// rename are seen) and reloads when one changes.
    pub fn watch(
        &self,
        config: &TlsConfig,
        shutdown: CancellationToken,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let mut files: Vec<PathBuf> = vec![config.cert.clone(), config.key.clone()];
        for pair in &config.certificates {
            files.push(pair.cert.clone());
            files.push(pair.key.clone());
        }
        let files: Vec<PathBuf> = files.iter().map(|f| absolute(f)).collect();
        let mut dirs: Vec<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_owned))
            .collect();
        dirs.sort();
        dirs.dedup();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let watched = files.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
                Ok(event) if event.kind.is_access() => {}
                Ok(event) if event.paths.iter().any(|p| watched.contains(p)) => {
                    let _ = tx.send(());
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("certificate watch error: {e}"),
            })?;
        for dir in &dirs {
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .with_context(|| format!("server.tls: cannot watch {}", dir.display()))?;
        }
        let tls = self.clone();
        let config = config.clone();
        Ok(tokio::spawn(async move {
            let _watcher = watcher;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    event = rx.recv() => if event.is_none() { return },
                }
                // Wait for the writes to settle.
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(DEBOUNCE) => break,
                        event = rx.recv() => if event.is_none() { return },
                    }
                }
                if let Err(e) = tls.reload(&config) {
                    tracing::warn!(
                        "TLS certificates not reloaded, the previous ones keep serving: {e}"
                    );
                }
            }
        }))
    }
}

/// A service's TLS client settings (`[services.NAME]`'s `tls_*` keys and whether it speaks
/// h2), borrowed from its configuration (`ServiceConfig::upstream_tls`).
#[derive(Debug, Clone, Copy)]
pub struct UpstreamTls<'a> {
    /// `tls_ca`.
    pub tls_ca: Option<&'a Path>,
    /// `tls_client_cert`.
    pub tls_client_cert: Option<&'a Path>,
    /// `tls_client_key`.
    pub tls_client_key: Option<&'a Path>,
    /// `tls_server_name`.
    pub tls_server_name: Option<&'a str>,
    /// `protocol = "h2"`: ALPN offers `h2` (else `http/1.1`).
    pub h2: bool,
}

/// The TLS client side of a service whose instances are reached over TLS: trusted roots
/// (`tls_ca`, or the system's), an optional client certificate, ALPN for the protocol, and
/// the server name to verify when `tls_server_name` is set. Errors name the file at fault.
pub fn upstream_connector(
    config: &UpstreamTls<'_>,
) -> Result<
    (
        tokio_rustls::TlsConnector,
        Option<rustls::pki_types::ServerName<'static>>,
    ),
    String,
> {
    let roots = match config.tls_ca {
        Some(ca) => load_roots(ca).map_err(|e| format!("tls_ca: {e}"))?,
        None => {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(found.certs);
            roots
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut client = match (config.tls_client_cert, config.tls_client_key) {
        (Some(cert), Some(key)) => {
            let (chain, private) =
                read_pair(cert, key).map_err(|e| format!("tls_client_cert: {e}"))?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|e| format!("tls_client_key: {}: {e}", key.display()))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("tls_client_cert and tls_client_key go together".into()),
    };
    client.alpn_protocols = if config.h2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    let name = match config.tls_server_name {
        Some(name) => Some(
            rustls::pki_types::ServerName::try_from(name.to_owned())
                .map_err(|e| format!("tls_server_name: `{name}`: {e}"))?,
        ),
        None => None,
    };
    Ok((tokio_rustls::TlsConnector::from(Arc::new(client)), name))
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// `TLSv1.3`-style name of a negotiated version, for logs and metrics.
pub fn version_name(version: Option<rustls::ProtocolVersion>) -> &'static str {
    match version {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        Some(_) => "TLS",
        None => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(names: &[&str]) -> Entry {
        let cert = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let certified =
            CertifiedKey::from_der(vec![cert.cert.der().clone()], key, &provider()).unwrap();
        Entry {
            names: names.iter().map(|n| n.to_string()).collect(),
            key: Arc::new(certified),
        }
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_default() {
        let set = CertSet {
            entries: vec![
                entry(&["default.test"]),
                entry(&["*.api.test"]),
                entry(&["a.api.test"]),
            ],
        };
        let pick = |n| Arc::as_ptr(set.pick(n));
        let key = |i: usize| Arc::as_ptr(&set.entries[i].key);
        assert_eq!(pick(Some("a.api.test")), key(2));
        assert_eq!(pick(Some("B.api.test")), key(1));
        assert_eq!(pick(Some("x.b.api.test")), key(0), "one label only");
        assert_eq!(pick(Some("other.test")), key(0));
        assert_eq!(pick(None), key(0));
    }
}
