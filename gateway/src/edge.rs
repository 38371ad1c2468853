//! Edge rules applied to every request head before routing: one Host, one canonical path
//! (see `path.rs`), and which peers may speak for the client in `X-Forwarded-For`.

use std::net::IpAddr;
use std::time::Duration;

use http::Uri;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;

use crate::config::{Cidr, ServerConfig};
use crate::error::ProxyError;
use crate::path::{PathPolicy, canonicalize};

/// The `[server]` settings the request path applies at the edge.
#[derive(Debug, Clone, Default)]
pub struct EdgePolicy {
    /// `merge_slashes`, `escaped_slashes`.
    pub path: PathPolicy,
    /// `trusted_proxies`.
    pub trusted_proxies: Vec<Cidr>,
    /// `body_read_timeout`.
    pub body_read_timeout: Duration,
}

impl From<&ServerConfig> for EdgePolicy {
    fn from(c: &ServerConfig) -> Self {
        Self {
            path: c.path_policy(),
            trusted_proxies: c.trusted_proxies.clone(),
            body_read_timeout: c.body_read_timeout,
        }
    }
}

impl EdgePolicy {
    /// Whether `peer` is a trusted proxy, whose `X-Forwarded-For` is kept.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(peer))
    }
}

/// Makes the request head canonical, or says why it is refused (400):
///
/// - two `Host` headers are refused (RFC 9112 §3.2: the request is invalid);
/// - an absolute-form target (`GET http://a.example/x`) wins over `Host` (RFC 9112 §3.2.2: the
///   recipient must ignore Host then): `Host` is set to the target's authority, so routing,
///   plugins and the upstream all see the same host;
/// - the path is made canonical; a non-default policy rides along in the request's
///   extensions so a plugin's `set-path` is made canonical the same way.
pub fn canonical_request(
    parts: &mut http::request::Parts,
    policy: &EdgePolicy,
) -> Result<(), ProxyError> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    if hosts.next().is_some() && hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    if let Some(authority) = parts.uri.authority() {
        let host = match authority.port() {
            Some(port) => format!("{}:{port}", authority.host()),
            None => authority.host().to_owned(),
        };
        let value = HeaderValue::from_str(&host)
            .map_err(|_| ProxyError::BadRequest("invalid authority in the request target"))?;
        parts.headers.insert(header::HOST, value);
    }
    if let Some(uri) = canonical_uri(&parts.uri, policy.path)? {
        parts.uri = uri;
    } else if parts.uri.authority().is_some() {
        // Origin form from here on: the authority now lives in Host alone.
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(pq);
    }
    // Only a non-default policy rides along (inserting allocates the extensions map);
    // `set-path` falls back to the default.
    if policy.path != PathPolicy::default() {
        parts.extensions.insert(policy.path);
    }
    Ok(())
}

/// The origin-form URI with its path made canonical, when that changes it.
pub fn canonical_uri(uri: &Uri, policy: PathPolicy) -> Result<Option<Uri>, ProxyError> {
    let path = uri.path();
    let canonical = canonicalize(path, policy).map_err(|e| ProxyError::BadRequest(e.as_str()))?;
    if canonical == path && uri.authority().is_none() {
        return Ok(None);
    }
    let pq = match uri.query() {
        Some(q) => format!("{canonical}?{q}"),
        None => canonical.into_owned(),
    };
    let pq =
        PathAndQuery::try_from(pq).map_err(|_| ProxyError::BadRequest("invalid request target"))?;
    Ok(Some(Uri::from(pq)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(uri: &str, hosts: &[&str]) -> http::request::Parts {
        let mut b = Request::get(uri);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn two_host_headers_are_refused() {
        let mut p = parts("/x", &["a", "b"]);
        let e = canonical_request(&mut p, &EdgePolicy::default()).unwrap_err();
        assert_eq!(e.status(), 400);
        let mut p = parts("/x", &["a", "a"]);
        assert!(canonical_request(&mut p, &EdgePolicy::default()).is_err());
    }

    #[test]
    fn an_absolute_target_sets_host_and_becomes_origin_form() {
        let mut p = parts("http://good.example:8080/a/../b?q=1", &["evil.example"]);
        canonical_request(&mut p, &EdgePolicy::default()).unwrap();
        assert_eq!(p.headers[header::HOST], "good.example:8080");
        assert_eq!(p.uri, "/b?q=1");
        let mut p = parts("http://good.example/b", &[]);
        canonical_request(&mut p, &EdgePolicy::default()).unwrap();
        assert_eq!(p.headers[header::HOST], "good.example");
        assert_eq!(p.uri, "/b");
    }

    #[test]
    fn the_path_is_made_canonical_and_the_query_kept() {
        let mut p = parts("/demo//x/%2e%2e/%70rivate?a=%2F..", &["h"]);
        canonical_request(&mut p, &EdgePolicy::default()).unwrap();
        assert_eq!(p.uri, "/demo/private?a=%2F..");
        assert_eq!(
            p.extensions.get::<PathPolicy>(),
            None,
            "the default costs nothing"
        );
        let keep = EdgePolicy {
            path: PathPolicy {
                merge_slashes: false,
                escaped_slashes: crate::path::EscapedSlashes::Keep,
            },
            ..Default::default()
        };
        let mut p = parts("/a%2fb", &["h"]);
        canonical_request(&mut p, &keep).unwrap();
        assert_eq!(p.uri, "/a%2Fb");
        assert_eq!(p.extensions.get::<PathPolicy>(), Some(&keep.path));
        let mut p = parts("/a%2fb", &["h"]);
        assert!(canonical_request(&mut p, &EdgePolicy::default()).is_err());
    }

    #[test]
    fn trusted_proxies_by_network() {
        let policy = EdgePolicy {
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()],
            ..Default::default()
        };
        assert!(policy.trusts("10.1.2.3".parse().unwrap()));
        assert!(policy.trusts("::ffff:10.1.2.3".parse().unwrap()));
        assert!(policy.trusts("::1".parse().unwrap()));
        assert!(!policy.trusts("11.0.0.1".parse().unwrap()));
        assert!(!policy.trusts("127.0.0.1".parse().unwrap()));
    }
}
