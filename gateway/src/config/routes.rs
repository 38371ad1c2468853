//! `[[routes]]` and `[resolver]`: how a request finds its service. The route table
//! (`routing.rs`) is built from these.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::{Parsed, Problems, ServiceConfig};

/// `[resolver]`: routing by service name, as `micro api` did.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResolverConfig {
    /// `enabled = false`: when no route matches, `PREFIX/{service}/rest` goes to service
    /// `NAMESPACE{service}`, if such a service exists.
    pub enabled: bool,
    /// `prefix = "/"`: where service names start in the path.
    pub prefix: String,
    /// `namespace = ""`: prepended to the path segment to make the service name (e.g.
    /// `"go.micro.api."`).
    pub namespace: String,
    /// `strip = false`: remove `PREFIX/{service}` from the path sent upstream.
    pub strip: bool,
    /// `plugins = []`: plugins run on resolved requests.
    pub plugins: Vec<String>,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            prefix: "/".into(),
            namespace: String::new(),
            strip: false,
            plugins: Vec::new(),
        }
    }
}

/// `[[routes]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// `name = "users"`: shown in logs and metrics; defaults to the path.
    #[serde(default)]
    pub name: Option<String>,
    /// `path = "/users"`: a path prefix matched on segment boundaries (`/users` matches
    /// `/users` and `/users/1`, not `/usersx`). The longest matching prefix wins.
    pub path: Spanned<String>,
    /// `host = "api.example.com"` or `"*.example.com"`: match only this Host.
    #[serde(default)]
    pub host: Option<String>,
    /// `methods = ["GET", "POST"]`: match only these methods.
    #[serde(default)]
    pub methods: Vec<Parsed<http::Method>>,
    /// `service = "users"`: where matched requests go; must be defined under `[services]`.
    pub service: Spanned<String>,
    /// `strip_prefix = false`: remove the matched prefix before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    /// `plugins = ["auth"]`: plugins run on this route, in this order (responses in reverse).
    #[serde(default)]
    pub plugins: Vec<Spanned<String>>,
    /// `retries = 2`: overrides the service's `retries` for requests on this route (the rest
    /// of the service's retry policy applies).
    #[serde(default)]
    pub retries: Option<u32>,
}

impl ResolverConfig {
    pub(super) fn check(&self, p: &mut Problems) {
        if !self.prefix.starts_with('/') {
            p.add(format!(
                "resolver.prefix: `{}` must start with `/`",
                self.prefix
            ));
        }
    }
}

/// Each route's path and methods, and the service it names.
pub(super) fn check(
    routes: &[RouteConfig],
    services: &BTreeMap<String, ServiceConfig>,
    p: &mut Problems,
) {
    for (i, route) in routes.iter().enumerate() {
        let path = route.path.get_ref();
        if !path.starts_with('/') {
            p.at(
                route.path.span(),
                format!("routes[{i}].path: `{path}` must start with `/`"),
            );
        }
        let service = route.service.get_ref();
        if !services.contains_key(service) {
            let known: Vec<&str> = services.keys().map(String::as_str).collect();
            let known = if known.is_empty() {
                "no services are defined".to_string()
            } else {
                format!("defined: {}", known.join(", "))
            };
            p.at(
                route.service.span(),
                format!("routes[{i}].service: no service named `{service}` ({known})"),
            );
        }
        p.parsed(&format!("routes[{i}].methods"), &route.methods);
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const SERVICE: &str = "[services.s]\ninstances = [\"127.0.0.1:1\"]\n";

    #[test]
    fn route_methods_are_typed_and_a_bad_one_is_named_with_its_route() {
        let text = format!(
            "{SERVICE}[[routes]]\npath = \"/\"\nservice = \"s\"\n[[routes]]\npath = \"/a\"\nservice = \"s\"\nmethods = [\"GET\", \"PURGE\"]\n"
        );
        let config = Config::parse(&text, "t.toml").unwrap();
        let methods: Vec<&str> = config.routes[1]
            .methods
            .iter()
            .map(|m| m.get().as_str())
            .collect();
        assert_eq!(methods, ["GET", "PURGE"]);
        let e = Config::parse(&text.replace("PURGE", "GE T"), "t.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.toml:9:19: routes[1].methods: `GE T` is not an HTTP method"
        );
    }
}
