//! What keeps a plugin from hurting its neighbours, in one place: the headers the gateway
//! keeps for itself, the cap on headers a call adds, who may read which kv keys, which
//! addresses outbound HTTP may reach, and the checks on the plugin and cache directories.
//! The threat model is in docs/security.md ("Plugin author").

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Mutex;

use http::HeaderName;
use wasmtime::ResourceLimiter;

use crate::settings::PluginSettings;

/// Headers that frame the message or describe one connection (RFC 9110 §7.6.1), and `host`:
/// the gateway sets them, a plugin never does. A plugin that could set `content-length` on an
/// answer with a longer body would desynchronise the client's connection (the rest of the
/// body is read as the next response); on a request it would do the same to the upstream's.
pub const MANAGED_HEADERS: [&str; 9] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "host",
];

/// `Err` naming the header when a plugin may not set it.
pub fn check_plugin_header(name: &HeaderName) -> Result<(), String> {
    if MANAGED_HEADERS.contains(&name.as_str()) {
        return Err(format!(
            "header `{name}` is managed by the gateway (framing, connection or host); plugins cannot set it"
        ));
    }
    Ok(())
}

/// The headers one plugin call has set or appended so far, against
/// `max_added_headers` / `max_added_header_bytes`.
#[derive(Debug, Default, Clone, Copy)]
pub struct AddedHeaders {
    count: usize,
    bytes: usize,
}

impl AddedHeaders {
    /// Counts one more header (name and value bytes), or says which cap it would pass.
    pub fn admit(
        &mut self,
        name: &HeaderName,
        value_len: usize,
        settings: &PluginSettings,
    ) -> Result<(), String> {
        let count = self.count + 1;
        let bytes = self.bytes + name.as_str().len() + value_len;
        if count > settings.max_added_headers {
            return Err(format!(
                "header `{name}`: more than max_added_headers ({}) headers added in one call",
                settings.max_added_headers
            ));
        }
        if bytes > settings.max_added_header_bytes {
            return Err(format!(
                "header `{name}`: headers added in one call exceed max_added_header_bytes ({})",
                settings.max_added_header_bytes
            ));
        }
        *self = Self { count, bytes };
        Ok(())
    }
}

/// Whether plugin `plugin` may read kv key `key`: its own keys (`NAME/...`) and the keys its
/// `kv_read` patterns name (an exact key, or a prefix ending in `*`).
pub fn kv_readable(plugin: &str, key: &str, kv_read: &[String]) -> bool {
    let own = key
        .strip_prefix(plugin)
        .is_some_and(|rest| rest.starts_with('/'));
    own || kv_read
        .iter()
        .any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => key.starts_with(prefix),
            None => key == pattern,
        })
}

/// A problem with a `kv_read` pattern (a `*` anywhere but at the end), if any.
pub fn check_kv_pattern(pattern: &str) -> Result<(), String> {
    match pattern.find('*') {
        Some(i) if i + 1 != pattern.len() => Err(format!(
            "`{pattern}`: `*` is only allowed at the end (a key prefix)"
        )),
        _ if pattern.is_empty() => Err("an empty pattern matches no key".into()),
        _ => Ok(()),
    }
}

/// What outbound HTTP checks besides `allowed_hosts`: the address a name resolves to.
#[derive(Debug)]
pub struct OutboundGuard {
    /// The admin listener (its port is refused like loopback); updated once it is bound.
    admin: Mutex<SocketAddr>,
}

impl OutboundGuard {
    /// A guard that refuses `admin` (the configured admin address until the bound one is known).
    pub fn new(admin: SocketAddr) -> Self {
        Self {
            admin: Mutex::new(admin),
        }
    }

    /// The admin listener's bound address.
    pub fn set_admin(&self, admin: SocketAddr) {
        *self.admin.lock().expect("outbound guard lock") = admin;
    }

    /// Why a resolved address is off limits unless an `allowed_hosts` entry names the exact
    /// `host:port`: loopback, link-local, unspecified, or the admin port.
    pub fn restricted(&self, addr: SocketAddr) -> Option<&'static str> {
        let ip = addr.ip().to_canonical();
        let admin = *self.admin.lock().expect("outbound guard lock");
        if addr.port() == admin.port()
            && (admin.ip().is_unspecified() || admin.ip().to_canonical() == ip || ip.is_loopback())
        {
            return Some("the gateway's admin port");
        }
        if ip.is_loopback() {
            return Some("a loopback address");
        }
        if ip.is_unspecified() {
            return Some("an unspecified address");
        }
        if is_link_local(ip) {
            return Some("a link-local address");
        }
        None
    }
}

/// 169.254.0.0/16 (cloud metadata lives there) and fe80::/10.
fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Why a file in the plugin directory is not loaded, when it is not a regular file. A
/// symbolic link could point anywhere (a plugin swapped in from outside the directory the
/// operator controls), and a FIFO or device would block or never end.
pub fn refuse_non_regular(file_type: std::fs::FileType) -> Option<&'static str> {
    if file_type.is_symlink() {
        Some("is a symbolic link; the plugin directory takes regular files only")
    } else if !file_type.is_file() {
        Some("is not a regular file; the plugin directory takes regular files only")
    } else {
        None
    }
}

/// Creates the compiled-plugin cache directory with mode 0700 when missing, and refuses it
/// when group or others may write to it (anyone who can write there can plant compiled
/// native code the gateway would run).
#[cfg(unix)]
pub fn prepare_cache_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("plugins.cache_dir: cannot create {}: {e}", dir.display()))?;
    }
    let meta =
        std::fs::metadata(dir).map_err(|e| format!("plugins.cache_dir: {}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!(
            "plugins.cache_dir: {} is not a directory",
            dir.display()
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "plugins.cache_dir: {} is writable by group or others (mode {mode:o}); \
             compiled plugins there run as native code: `chmod go-w` it or choose another directory",
            dir.display()
        ));
    }
    Ok(())
}

/// Non-unix: no permission bits to check.
#[cfg(not(unix))]
pub fn prepare_cache_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("plugins.cache_dir: cannot create {}: {e}", dir.display()))
}

/// Tracks linear memory so an instance can be recycled when it grew large, and caps it.
pub struct MemoryLimiter {
    max: usize,
    current: usize,
}

impl MemoryLimiter {
    /// A limiter with a cap in bytes.
    pub fn new(max: usize) -> Self {
        Self { max, current: 0 }
    }

    /// Bytes of linear memory the instance holds.
    pub fn current(&self) -> usize {
        self.current
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.current - current.min(self.current) + desired;
        if total > self.max {
            return Ok(false);
        }
        self.current = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_headers_are_refused_by_name() {
        for name in MANAGED_HEADERS {
            let e = check_plugin_header(&HeaderName::from_static(name)).unwrap_err();
            assert!(e.contains(name), "{e}");
        }
        assert!(check_plugin_header(&HeaderName::from_static("x-user")).is_ok());
    }

    #[test]
    fn added_headers_are_capped_in_count_and_bytes() {
        let settings = PluginSettings {
            instance: crate::settings::InstanceMode::Pooled,
            max_idle_instances: 1,
            max_uses: 1,
            max_memory_bytes: 1 << 20,
            cpu_timeout: std::time::Duration::from_millis(100),
            timeout: std::time::Duration::from_secs(1),
            on_failure: crate::settings::FailurePolicy::FailClosed,
            quarantine_after: 5,
            quarantine_for: std::time::Duration::from_secs(10),
            request_body: false,
            response_body: false,
            max_body_bytes: 1024,
            allowed_hosts: Vec::new(),
            kv_read: Vec::new(),
            max_added_headers: 2,
            max_added_header_bytes: 20,
        };
        let name = HeaderName::from_static("x-a");
        let mut added = AddedHeaders::default();
        assert!(added.admit(&name, 5, &settings).is_ok());
        let e = added.admit(&name, 30, &settings).unwrap_err();
        assert!(e.contains("max_added_header_bytes (20)"), "{e}");
        assert!(added.admit(&name, 5, &settings).is_ok());
        let e = added.admit(&name, 1, &settings).unwrap_err();
        assert!(e.contains("max_added_headers (2)"), "{e}");
    }

    #[test]
    fn kv_keys_are_readable_by_their_owner_and_by_grants() {
        let none: Vec<String> = Vec::new();
        assert!(kv_readable("auth", "auth/keys", &none));
        assert!(!kv_readable("authx", "auth/keys", &none));
        assert!(!kv_readable("testbed", "auth/keys", &none));
        assert!(!kv_readable("testbed", "greeting", &none));
        let grants = vec!["greeting".to_owned(), "shared/*".to_owned()];
        assert!(kv_readable("testbed", "greeting", &grants));
        assert!(!kv_readable("testbed", "greetings", &grants));
        assert!(kv_readable("testbed", "shared/a/b", &grants));
        assert!(check_kv_pattern("a*b").is_err());
        assert!(check_kv_pattern("a/*").is_ok());
    }

    #[test]
    fn restricted_addresses() {
        let guard = OutboundGuard::new("127.0.0.1:9901".parse().unwrap());
        let r = |a: &str| guard.restricted(a.parse().unwrap());
        assert_eq!(r("127.0.0.1:80"), Some("a loopback address"));
        assert_eq!(r("[::1]:80"), Some("a loopback address"));
        assert_eq!(r("[::ffff:127.0.0.1]:80"), Some("a loopback address"));
        assert_eq!(r("169.254.169.254:80"), Some("a link-local address"));
        assert_eq!(r("[fe80::1]:80"), Some("a link-local address"));
        assert_eq!(r("0.0.0.0:80"), Some("an unspecified address"));
        assert_eq!(r("127.0.0.2:9901"), Some("the gateway's admin port"));
        assert_eq!(r("10.1.2.3:80"), None);
        assert_eq!(r("10.1.2.3:9901"), None);
        guard.set_admin("0.0.0.0:9901".parse().unwrap());
        assert_eq!(r("10.1.2.3:9901"), Some("the gateway's admin port"));
    }
}
