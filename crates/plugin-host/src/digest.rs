//! Plugins named by digest: `[plugins.sources.NAME] sha256 = "…"` with a `url` (`http://`
//! with the gateway's own HTTP client, or `https://` verified against the system's roots or
//! `[plugins] sources_ca`) or a `path` (a shared directory). The bytes are checked against the
//! digest before anything else, kept beside the compile cache in `CACHE_DIR.sha256/` under
//! their digest (so a node fetches each version once), and only then loaded like any plugin
//! file; a mismatch is refused and the running version, if any, keeps serving.
//!
//! With `[plugins] trusted_keys` (ed25519 public keys, in each node's own file), a source must
//! also carry `signature`: an ed25519 signature over its `sha256` text (the 64 lower-case hex
//! digits) by one of those keys. A source without one, or with one no trusted key made, is
//! refused before anything is fetched, like a digest mismatch.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http_body_util::BodyExt as _;

use super::engine;
use super::host::OutboundClient;
use super::loader::{self, LoadError, MAX_PLUGIN_BYTES};
pub use super::settings::DigestSource;
use super::settings::NodeSettings;

/// The prefix of a `trusted_keys` entry.
const KEY_PREFIX: &str = "ed25519:";

/// How long fetching one plugin may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

impl DigestSource {
    /// What is wrong with it, naming the key.
    pub fn problems(&self, name: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let key = format!("plugins.sources.{name}");
        let hex = self.sha256.len() == 64
            && self
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex {
            problems.push(format!(
                "{key}.sha256: `{}` is not a SHA-256 (64 lower-case hex digits)",
                self.sha256
            ));
        }
        match (&self.url, &self.path) {
            (Some(_), Some(_)) | (None, None) => {
                problems.push(format!("{key}: set exactly one of `url` and `path`"));
            }
            (Some(url), None) => {
                if let Err(why) = parse_url(url) {
                    problems.push(format!("{key}.url: {why}"));
                }
            }
            _ => {}
        }
        if let Some(signature) = &self.signature
            && let Err(why) = decode_signature(signature)
        {
            problems.push(format!("{key}.signature: {why}"));
        }
        problems
    }

    /// Where the bytes come from, for messages.
    pub(crate) fn origin(&self) -> String {
        match (&self.url, &self.path) {
            (Some(url), _) => url.clone(),
            (None, Some(path)) => path.display().to_string(),
            (None, None) => "<no source>".into(),
        }
    }
}

/// What fetching a plugin by digest needs of the runtime: where the compile cache is, which
/// CA to trust, and the plain-HTTP client.
pub(crate) struct Fetcher<'a> {
    /// `cache_dir`, `sources_ca`, `load_roots`.
    pub settings: &'a NodeSettings,
    /// For `http://` sources.
    pub outbound: &'a OutboundClient,
}

impl Fetcher<'_> {
    /// The verified bytes, from the cache or the source; and the path that names them.
    pub(crate) async fn obtain(
        &self,
        source: &DigestSource,
    ) -> Result<(PathBuf, Vec<u8>), LoadError> {
        let cache = self
            .digest_cache()
            .map(|d| d.join(format!("{}.wasm", source.sha256)));
        if let Some(cached) = &cache
            && let Ok(bytes) = std::fs::read(cached)
            && loader::digest(&bytes) == source.sha256
        {
            return Ok((cached.clone(), bytes));
        }
        let bytes = match (&source.url, &source.path) {
            (Some(url), _) => self.fetch(url).await?,
            (None, Some(path)) => loader::read(path)?,
            (None, None) => return Err(LoadError::Read("no url or path".into())),
        };
        let actual = loader::digest(&bytes);
        if actual != source.sha256 {
            return Err(LoadError::Read(format!(
                "{}: its sha256 is {actual}, not the {} the configuration names: refused",
                source.origin(),
                source.sha256
            )));
        }
        match &cache {
            Some(path) => {
                if let Err(e) = store(path, &bytes) {
                    tracing::warn!(target: crate::LOG_TARGET, path = %path.display(), "cannot cache a plugin by digest: {e}");
                }
                Ok((path.clone(), bytes))
            }
            None => Ok((PathBuf::from(source.origin()), bytes)),
        }
    }

    /// `CACHE_DIR.sha256`, unless the cache is off. Beside the compile cache, not in it:
    /// wasmtime's cache clean-up deletes files it did not write.
    fn digest_cache(&self) -> Option<PathBuf> {
        let dir = match &self.settings.cache_dir {
            Some(dir) if dir.as_os_str().is_empty() => return None,
            Some(dir) => dir.clone(),
            None => engine::default_cache_dir()?,
        };
        let mut name = dir.file_name()?.to_owned();
        name.push(".sha256");
        Some(dir.with_file_name(name))
    }
}

impl Fetcher<'_> {
    /// GET `url`: a 2xx answer's body, at most [`MAX_PLUGIN_BYTES`]; within [`FETCH_TIMEOUT`].
    async fn fetch(&self, url: &str) -> Result<Vec<u8>, LoadError> {
        let fail = |why: String| LoadError::Read(format!("{url}: {why}"));
        let uri = parse_url(url).map_err(&fail)?;
        let fetched = async {
            let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
            let response = if https {
                fetch_https(
                    &uri,
                    self.settings.sources_ca.as_deref(),
                    self.settings.load_roots,
                )
                .await
            } else {
                self.fetch_http(uri).await
            }
            .map_err(&fail)?;
            if !response.status().is_success() {
                return Err(fail(format!("answered {}", response.status())));
            }
            let body = http_body_util::Limited::new(response.into_body(), MAX_PLUGIN_BYTES);
            body.collect()
                .await
                .map(|b| b.to_bytes().to_vec())
                .map_err(|e| fail(format!("reading the body: {e}")))
        };
        tokio::time::timeout(FETCH_TIMEOUT, fetched)
            .await
            .map_err(|_| fail(format!("no answer within {FETCH_TIMEOUT:?}")))?
    }
}

impl Fetcher<'_> {
    /// One GET with the gateway's own (plain HTTP) client.
    async fn fetch_http(&self, uri: http::Uri) -> Result<http::Response<FetchBody>, String> {
        let request = http::Request::get(uri)
            .body(http_body_util::Full::default())
            .map_err(|e| e.to_string())?;
        self.outbound
            .request(request)
            .await
            .map(|r| r.map(http_body_util::BodyExt::boxed))
            .map_err(|e| e.to_string())
    }
}

/// An `http://` or `https://` URL with a host.
fn parse_url(url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some_and(|h| !h.is_empty()) => Ok(uri),
        _ => Err(format!(
            "`{url}` must be an http:// or https:// URL with a host"
        )),
    }
}

type FetchBody = http_body_util::combinators::BoxBody<bytes::Bytes, hyper::Error>;

/// One GET over TLS: the server's certificate is verified for the URL's host against `ca`
/// (PEM), or the system's roots without it. One connection per fetch (fetches are rare: a
/// node caches by digest), so no pool and no hyper-rustls: tokio-rustls, as the upstream
/// connections use, and hyper's own client connection.
async fn fetch_https(
    uri: &http::Uri,
    ca: Option<&Path>,
    load_roots: fn(&Path) -> Result<rustls::RootCertStore, String>,
) -> Result<http::Response<FetchBody>, String> {
    let roots = match ca {
        Some(ca) => load_roots(ca).map_err(|e| format!("plugins.sources_ca: {e}"))?,
        None => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            roots
        }
    };
    let mut client = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let host = uri.host().unwrap_or_default();
    // `[::1]` in a URL is the name `::1` for the certificate.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let name = rustls::pki_types::ServerName::try_from(bare.to_owned())
        .map_err(|e| format!("`{host}` is not a server name: {e}"))?;
    let port = uri.port_u16().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((bare, port))
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(target: crate::LOG_TARGET, "plugin fetch connection: {e}");
        }
    });
    let authority = uri.authority().map_or(host, |a| a.as_str());
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = http::Request::get(path)
        .header(http::header::HOST, authority)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    sender
        .send_request(request)
        .await
        .map(|r| r.map(http_body_util::BodyExt::boxed))
        .map_err(|e| e.to_string())
}

/// A `trusted_keys` entry: `ed25519:` and the 32-byte public key in standard base64.
fn decode_key(key: &str) -> Result<Vec<u8>, String> {
    let b64 = key
        .strip_prefix(KEY_PREFIX)
        .ok_or_else(|| format!("`{key}` must start with `{KEY_PREFIX}`"))?;
    let raw = STANDARD
        .decode(b64.trim())
        .map_err(|e| format!("`{key}`: not base64 ({e})"))?;
    if raw.len() != 32 {
        return Err(format!(
            "`{key}`: an ed25519 public key is 32 bytes, this is {}",
            raw.len()
        ));
    }
    Ok(raw)
}

/// A `signature`: 64 bytes in standard base64.
fn decode_signature(signature: &str) -> Result<Vec<u8>, String> {
    let raw = STANDARD
        .decode(signature.trim())
        .map_err(|e| format!("not base64 ({e})"))?;
    if raw.len() != 64 {
        return Err(format!(
            "an ed25519 signature is 64 bytes, this is {}",
            raw.len()
        ));
    }
    Ok(raw)
}

/// What is wrong with `[plugins] trusted_keys`, naming the entry.
pub fn key_problems(keys: &[String]) -> Vec<String> {
    keys.iter()
        .enumerate()
        .filter_map(|(i, key)| {
            decode_key(key)
                .err()
                .map(|why| format!("plugins.trusted_keys[{i}]: {why}"))
        })
        .collect()
}

/// With trusted keys, a source's `signature` must verify over its `sha256` text with one of
/// them.
pub(crate) fn check_signature(
    trusted: &[String],
    name: &str,
    source: &DigestSource,
) -> Result<(), LoadError> {
    if trusted.is_empty() {
        return Ok(());
    }
    let refuse = |why: String| {
        LoadError::Read(format!(
            "plugins.sources.{name} (sha256 {}): {why}: refused",
            source.sha256
        ))
    };
    let signature = source
        .signature
        .as_deref()
        .ok_or_else(|| refuse("no `signature`, and [plugins] trusted_keys requires one".into()))?;
    let signature = decode_signature(signature).map_err(|e| refuse(format!("signature: {e}")))?;
    let signed_by_one = trusted
        .iter()
        .filter_map(|k| decode_key(k).ok())
        .any(|key| {
            UnparsedPublicKey::new(&ED25519, key)
                .verify(source.sha256.as_bytes(), &signature)
                .is_ok()
        });
    if signed_by_one {
        Ok(())
    } else {
        Err(refuse(
            "its signature is not by any of [plugins] trusted_keys over this digest".into(),
        ))
    }
}

/// Writes a cache file whole (temporary file, then rename).
fn store(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temp = path.with_extension(format!("{}.tmp", std::process::id()));
    std::fs::write(&temp, bytes)?;
    std::fs::rename(&temp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_needs_a_digest_and_exactly_one_origin() {
        let ok = DigestSource {
            sha256: "a".repeat(64),
            url: Some("http://127.0.0.1:1/a.wasm".into()),
            path: None,
            signature: None,
        };
        assert!(ok.problems("a").is_empty());
        let bad = DigestSource {
            sha256: "XYZ".into(),
            url: Some("https://x/a.wasm".into()),
            path: Some("/a.wasm".into()),
            signature: Some("c2lnbmF0dXJl".into()),
        };
        let p = bad.problems("a").join("\n");
        assert!(
            p.contains("plugins.sources.a.sha256: `XYZ` is not a SHA-256"),
            "{p}"
        );
        assert!(
            p.contains("plugins.sources.a: set exactly one of `url` and `path`"),
            "{p}"
        );
        assert!(
            p.contains("plugins.sources.a.signature: an ed25519 signature is 64 bytes, this is 9"),
            "{p}"
        );
        let url = |u: &str| {
            DigestSource {
                url: Some(u.into()),
                ..ok.clone()
            }
            .problems("a")
            .join("\n")
        };
        assert!(url("https://artifacts.internal/a.wasm").is_empty());
        assert!(url("ftp://x/a.wasm").contains("must be an http:// or https:// URL"));
        assert!(url("/a.wasm").contains("must be an http:// or https:// URL"));
    }

    fn signed(key: &aws_lc_rs::signature::Ed25519KeyPair, sha256: &str) -> DigestSource {
        DigestSource {
            sha256: sha256.into(),
            url: Some("http://127.0.0.1:1/a.wasm".into()),
            path: None,
            signature: Some(STANDARD.encode(key.sign(sha256.as_bytes()).as_ref())),
        }
    }

    fn trusted(key: &aws_lc_rs::signature::Ed25519KeyPair) -> String {
        use aws_lc_rs::signature::KeyPair as _;
        format!("{KEY_PREFIX}{}", STANDARD.encode(key.public_key().as_ref()))
    }

    /// Made with the openssl recipe in docs/cluster.md (for a file holding `hello`).
    #[test]
    fn a_signature_made_with_the_documented_openssl_recipe_verifies() {
        let source = DigestSource {
            sha256: "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824".into(),
            url: None,
            path: Some("/auth.wasm".into()),
            signature: Some(
                "xbdAPlZ30Np84XmqCc7Rm4L6CIBKl+r3RJHtYCY6oG58QcpAVnaMcG9IlL4QqMFdQOatOiw07n57wzbcRUl8Dw=="
                    .into(),
            ),
        };
        let keys = ["ed25519:944hlZVndHPH5zHXWZroPxbDC9/dwoRNK5LzxgVJgeA=".to_owned()];
        assert!(source.problems("auth").is_empty());
        check_signature(&keys, "auth", &source).unwrap();
    }

    #[test]
    fn a_signature_by_a_trusted_key_over_the_digest_is_required_when_keys_are_set() {
        let ours = aws_lc_rs::signature::Ed25519KeyPair::generate().unwrap();
        let theirs = aws_lc_rs::signature::Ed25519KeyPair::generate().unwrap();
        let digest = "a".repeat(64);
        let keys = [trusted(&ours)];
        assert!(key_problems(&keys).is_empty());
        // Good: signed by a trusted key. No keys: nothing is checked.
        check_signature(&keys, "a", &signed(&ours, &digest)).unwrap();
        check_signature(&[], "a", &signed(&theirs, &digest)).unwrap();
        // Signed by another key.
        let e = check_signature(&keys, "a", &signed(&theirs, &digest))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not by any of [plugins] trusted_keys"), "{e}");
        // A signature over another digest, moved onto this one.
        let mut tampered = signed(&ours, &digest);
        tampered.sha256 = "b".repeat(64);
        let e = check_signature(&keys, "a", &tampered)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not by any of [plugins] trusted_keys"), "{e}");
        // None at all.
        let mut unsigned = signed(&ours, &digest);
        unsigned.signature = None;
        let e = check_signature(&keys, "a", &unsigned)
            .unwrap_err()
            .to_string();
        assert!(e.contains("plugins.sources.a (sha256 aaaa"), "{e}");
        assert!(e.contains("no `signature`"), "{e}");
        // Keys that are not keys.
        let p = key_problems(&["ssh-ed25519 AAAA".into(), "ed25519:AAAA".into()]).join("\n");
        assert!(
            p.contains("plugins.trusted_keys[0]: `ssh-ed25519 AAAA` must start with `ed25519:`"),
            "{p}"
        );
        assert!(p.contains("plugins.trusted_keys[1]: `ed25519:AAAA`: an ed25519 public key is 32 bytes, this is 3"), "{p}");
    }
}
