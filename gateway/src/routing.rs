//! The route table: matches a request's host, method and path to a route.
//!
//! Routes are kept sorted by prefix length (longest first), so the first match is the most
//! specific one; among equal prefixes, routes with a host or method condition come first.

use std::sync::Arc;

use http::Method;
use serde::Serialize;

use crate::config::Config;
use crate::metrics::{Metrics, RouteMetrics, RouteName};

/// One route, compiled from `[[routes]]`.
#[derive(Debug, Serialize)]
pub struct Route {
    /// Name used in logs and metrics.
    #[serde(serialize_with = "serialize_route_name")]
    pub name: RouteName,
    /// Path prefix, without a trailing `/` (except the root route `/`).
    pub path: String,
    /// Host condition: exact (`api.example.com`) or suffix (`*.example.com`), lower case.
    pub host: Option<String>,
    /// Method condition; empty = any method.
    #[serde(serialize_with = "serialize_methods")]
    pub methods: Vec<Method>,
    /// The service requests are sent to.
    pub service: Arc<str>,
    /// Whether the matched prefix is removed before forwarding.
    pub strip_prefix: bool,
    /// Plugins run on this route, in order.
    pub plugins: Vec<String>,
    /// The route's own number of retries, overriding the service's.
    pub retries: Option<u32>,
    /// Request metrics of this route.
    #[serde(skip)]
    pub metrics: RouteMetrics,
}

fn serialize_route_name<S: serde::Serializer>(n: &RouteName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(n.as_str())
}

fn serialize_methods<S: serde::Serializer>(m: &[Method], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(m.iter().map(Method::as_str))
}

/// All routes, in match order.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    /// Builds the table from a validated config.
    pub fn from_config(config: &Config, metrics: &Metrics) -> Self {
        let mut routes: Vec<Arc<Route>> = config
            .routes
            .iter()
            .map(|r| {
                let raw = r.path.get_ref();
                let path = if raw.len() > 1 {
                    raw.trim_end_matches('/')
                } else {
                    raw.as_str()
                };
                let path = if path.is_empty() { "/" } else { path };
                let name = RouteName::new(r.name.as_deref().unwrap_or(path));
                Arc::new(Route {
                    metrics: metrics.route(&name),
                    name,
                    path: path.to_string(),
                    host: r.host.as_ref().map(|h| h.to_ascii_lowercase()),
                    methods: r.methods.iter().map(|m| m.get().clone()).collect(),
                    service: Arc::from(r.service.get_ref().as_str()),
                    strip_prefix: r.strip_prefix,
                    plugins: r.plugins.iter().map(|p| p.get_ref().clone()).collect(),
                    retries: r.retries,
                })
            })
            .collect();
        // Stable sort: among equally specific routes, the config order decides.
        routes.sort_by_key(|r| {
            let conditions = usize::from(r.host.is_some()) + usize::from(!r.methods.is_empty());
            (
                std::cmp::Reverse(r.path.len()),
                std::cmp::Reverse(conditions),
            )
        });
        Self { routes }
    }

    /// The routes in match order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// The most specific route for a request, if any.
    pub fn find(&self, host: Option<&str>, method: &Method, path: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.matches(host, method, path))
    }
}

impl Route {
    fn matches(&self, host: Option<&str>, method: &Method, path: &str) -> bool {
        prefix_matches(&self.path, path)
            && (self.methods.is_empty() || self.methods.contains(method))
            && self
                .host
                .as_deref()
                .is_none_or(|want| host.is_some_and(|h| host_matches(want, h)))
    }

    /// The path sent upstream: with the prefix removed when `strip_prefix` is set. A path no
    /// longer under the prefix (a plugin's `set-path` moved it) goes upstream as it is: there
    /// is no prefix to remove, and cutting bytes blindly would cut the wrong ones (or panic
    /// inside a UTF-8 character).
    pub fn upstream_path<'a>(&self, path: &'a str) -> &'a str {
        if !self.strip_prefix || self.path == "/" || !prefix_matches(&self.path, path) {
            return path;
        }
        match &path[self.path.len()..] {
            "" => "/",
            rest => rest,
        }
    }
}

/// Routing by service name (`[resolver]`), as `micro api` did: `PREFIX/{name}/rest` goes to
/// the service `NAMESPACE{name}` when no explicit route matched and such a service exists
/// (configured or registered).
#[derive(Debug)]
pub struct Resolver {
    prefix: String,
    namespace: String,
    strip: bool,
    plugins: Vec<String>,
    /// One route per service resolved so far (for its metrics and plugin chain); bounded by
    /// the number of services, since only existing services get one.
    routes: std::sync::RwLock<std::collections::HashMap<String, Arc<Route>>>,
}

impl Resolver {
    /// The resolver of `[resolver]`, if enabled.
    pub fn from_config(config: &crate::config::ResolverConfig) -> Option<Self> {
        config.enabled.then(|| Self {
            prefix: config.prefix.trim_end_matches('/').to_owned(),
            namespace: config.namespace.clone(),
            strip: config.strip,
            plugins: config.plugins.clone(),
            routes: Default::default(),
        })
    }

    /// The name segment of a path, and the path prefix that ends with it.
    fn segment_of<'a>(&self, path: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = path.strip_prefix(self.prefix.as_str())?;
        let name = rest.strip_prefix('/')?.split('/').next()?;
        if name.is_empty() {
            return None;
        }
        Some((name, &path[..self.prefix.len() + 1 + name.len()]))
    }

    /// The service name a path asks for, and the path prefix that named it.
    pub fn service_of<'a>(&self, path: &'a str) -> Option<(String, &'a str)> {
        let (name, matched) = self.segment_of(path)?;
        Some((format!("{}{name}", self.namespace), matched))
    }

    /// The route for a path, if it names an existing service. Routes are cached by name
    /// segment, so a request to a known service takes a read lock and no allocation (and no
    /// registry lookup: forwarding looks the service up anyway, and answers 503 naming it if
    /// it has gone since).
    pub fn resolve(
        &self,
        path: &str,
        registry: &crate::registry::Registry,
        metrics: &Metrics,
    ) -> Option<Arc<Route>> {
        let (segment, matched) = self.segment_of(path)?;
        let cached = self
            .routes
            .read()
            .expect("resolver lock")
            .get(segment)
            .cloned();
        if cached.is_some() {
            return cached;
        }
        let service = format!("{}{segment}", self.namespace);
        registry.service(&service)?;
        let name = RouteName::new(&format!("resolver:{service}"));
        let route = Arc::new(Route {
            metrics: metrics.route(&name),
            name,
            path: matched.to_owned(),
            host: None,
            methods: Vec::new(),
            service: Arc::from(service.as_str()),
            strip_prefix: self.strip,
            plugins: self.plugins.clone(),
            retries: None,
        });
        self.routes
            .write()
            .expect("resolver lock")
            .insert(segment.to_owned(), route.clone());
        Some(route)
    }
}

/// `/users` matches `/users`, `/users/` and `/users/1`, but not `/usersx`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return path.starts_with('/');
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Host header match, ignoring case and any `:port`.
fn host_matches(want: &str, host: &str) -> bool {
    let host = strip_port(host);
    match want.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
        }
        None => host.eq_ignore_ascii_case(want),
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literal: [::1]:8080
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &str) -> RouteTable {
        let text = format!("[services.s]\ninstances = [\"127.0.0.1:1\"]\n{routes}");
        RouteTable::from_config(&Config::parse(&text, "t").unwrap(), &Metrics::new())
    }

    fn find<'a>(t: &'a RouteTable, host: Option<&str>, m: Method, p: &str) -> Option<&'a str> {
        t.find(host, &m, p).map(|r| r.name.as_str())
    }

    #[test]
    fn prefix_matches_on_segment_boundaries() {
        assert!(prefix_matches("/users", "/users"));
        assert!(prefix_matches("/users", "/users/1"));
        assert!(!prefix_matches("/users", "/usersx"));
        assert!(!prefix_matches("/users", "/user"));
        assert!(prefix_matches("/", "/anything"));
    }

    #[test]
    fn longest_prefix_wins_whatever_the_order() {
        let t = table(
            "[[routes]]\nname=\"a\"\npath=\"/api\"\nservice=\"s\"\n[[routes]]\nname=\"b\"\npath=\"/api/v2\"\nservice=\"s\"\n[[routes]]\nname=\"root\"\npath=\"/\"\nservice=\"s\"\n",
        );
        assert_eq!(find(&t, None, Method::GET, "/api/v2/x"), Some("b"));
        assert_eq!(find(&t, None, Method::GET, "/api/v3"), Some("a"));
        assert_eq!(find(&t, None, Method::GET, "/other"), Some("root"));
    }

    #[test]
    fn host_and_method_conditions() {
        let t = table(
            "[[routes]]\nname=\"any\"\npath=\"/x\"\nservice=\"s\"\n[[routes]]\nname=\"post\"\npath=\"/x\"\nmethods=[\"POST\"]\nservice=\"s\"\n[[routes]]\nname=\"wild\"\npath=\"/x\"\nhost=\"*.example.com\"\nservice=\"s\"\n",
        );
        assert_eq!(find(&t, None, Method::POST, "/x"), Some("post"));
        assert_eq!(
            find(&t, Some("a.EXAMPLE.com:8080"), Method::GET, "/x"),
            Some("wild")
        );
        assert_eq!(
            find(&t, Some("example.com"), Method::GET, "/x"),
            Some("any")
        );
        assert_eq!(
            find(&t, Some("badexample.com"), Method::GET, "/x"),
            Some("any")
        );
    }

    #[test]
    fn strip_prefix_keeps_a_leading_slash() {
        let t = table("[[routes]]\npath=\"/api/\"\nservice=\"s\"\nstrip_prefix=true\n");
        let r = &t.routes()[0];
        assert_eq!(r.upstream_path("/api"), "/");
        assert_eq!(r.upstream_path("/api/users"), "/users");
    }

    #[test]
    fn strip_prefix_after_set_path_neither_panics_nor_cuts_the_wrong_bytes() {
        let t = table("[[routes]]\npath=\"/api/v1\"\nservice=\"s\"\nstrip_prefix=true\n");
        let r = &t.routes()[0];
        // Shorter than the prefix (was: index out of range).
        assert_eq!(r.upstream_path("/x"), "/x");
        // The prefix length ends inside a two-byte character (was: not a char boundary).
        assert_eq!(r.upstream_path("/apí/v1x"), "/apí/v1x");
        // Long enough but elsewhere: the first bytes are not the prefix.
        assert_eq!(r.upstream_path("/other/users"), "/other/users");
        assert_eq!(r.upstream_path("/api/v1x"), "/api/v1x");
        assert_eq!(r.upstream_path("/api/v1/users"), "/users");
    }

    #[test]
    fn resolver_takes_the_service_from_the_first_segment_after_the_prefix() {
        let config = |prefix: &str| crate::config::ResolverConfig {
            enabled: true,
            prefix: prefix.into(),
            namespace: "go.micro.api.".into(),
            ..Default::default()
        };
        let root = Resolver::from_config(&config("/")).unwrap();
        assert_eq!(
            root.service_of("/greeter/say/hello"),
            Some(("go.micro.api.greeter".into(), "/greeter"))
        );
        assert_eq!(root.service_of("/"), None);
        let api = Resolver::from_config(&config("/api/")).unwrap();
        assert_eq!(
            api.service_of("/api/users/1"),
            Some(("go.micro.api.users".into(), "/api/users"))
        );
        assert_eq!(api.service_of("/apix/users"), None);
        assert_eq!(api.service_of("/api"), None);
    }

    #[test]
    fn ipv6_host_port_is_stripped() {
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("a.b"), "a.b");
    }
}
