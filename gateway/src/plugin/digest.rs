//! Plugins named by digest: `[plugins.sources.NAME] sha256 = "…"` with a `url` (fetched with
//! the gateway's own HTTP client) or a `path` (a shared directory). The bytes are checked
//! against the digest before anything else, kept beside the compile cache in
//! `CACHE_DIR.sha256/` under their digest (so a node fetches each version once), and only then
//! loaded like any plugin file; a mismatch is refused and the running version, if any, keeps
//! serving.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::BodyExt as _;
use serde::Deserialize;

use super::loader::{self, LoadError, MAX_PLUGIN_BYTES};
use super::{PluginRuntime, engine};

/// `[plugins.sources.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestSource {
    /// `sha256 = "…"`: the SHA-256 of the component, 64 lower-case hex digits.
    pub sha256: String,
    /// `url = "http://…/auth.wasm"`: where to fetch it.
    #[serde(default)]
    pub url: Option<String>,
    /// `path = "/shared/plugins/auth.wasm"`: or where to read it.
    #[serde(default)]
    pub path: Option<PathBuf>,
}

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
            (Some(url), None) if !url.starts_with("http://") => problems.push(format!(
                "{key}.url: `{url}` must be an http:// URL (the gateway's client speaks plain HTTP)"
            )),
            _ => {}
        }
        problems
    }

    /// Where the bytes come from, for messages.
    fn origin(&self) -> String {
        match (&self.url, &self.path) {
            (Some(url), _) => url.clone(),
            (None, Some(path)) => path.display().to_string(),
            (None, None) => "<no source>".into(),
        }
    }
}

impl PluginRuntime {
    /// Loads (or keeps) plugin `name` from its digest source.
    pub(super) async fn load_by_digest(
        &self,
        name: &str,
        source: &DigestSource,
    ) -> Result<bool, LoadError> {
        let origin = source.origin();
        let result = match self.obtain(source).await {
            Ok((path, bytes)) => match self.config_json(name, None) {
                Ok(config) => {
                    self.load_bytes(name, super::PluginSource::File(path), bytes, config)
                        .await
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        self.note_result(name, Path::new(&origin), &result);
        result
    }

    /// The verified bytes, from the cache or the source; and the path that names them.
    async fn obtain(&self, source: &DigestSource) -> Result<(PathBuf, Vec<u8>), LoadError> {
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
            (Some(url), _) => fetch(&self.outbound, url).await?,
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
                    tracing::warn!(path = %path.display(), "cannot cache a plugin by digest: {e}");
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

/// GET `url`: a 2xx answer's body, at most [`MAX_PLUGIN_BYTES`].
async fn fetch(client: &super::host::OutboundClient, url: &str) -> Result<Vec<u8>, LoadError> {
    let fail = |why: String| LoadError::Read(format!("{url}: {why}"));
    let request = http::Request::get(url)
        .body(http_body_util::Full::default())
        .map_err(|e| fail(e.to_string()))?;
    let fetched = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| fail(e.to_string()))?;
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
        };
        assert!(ok.problems("a").is_empty());
        let bad = DigestSource {
            sha256: "XYZ".into(),
            url: Some("https://x/a.wasm".into()),
            path: Some("/a.wasm".into()),
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
    }
}
