//! Who may use the admin listener (`[admin]`, docs/security.md).
//!
//! - With a token (`[admin] token`, `token_file` or `SLUICE_ADMIN_TOKEN`): every request
//!   except the open reads below needs `Authorization: Bearer TOKEN`, else 401. A
//!   `registration_token` may only register and deregister instances.
//! - Without one, the admin listener must be bound to loopback (checked at start), and, since
//!   a web page in a local browser can still reach loopback, requests whose `Host` is not a
//!   loopback or configured name (DNS rebinding) and writes from another `Origin` (CSRF) are
//!   refused with 403.
//!
//! Open reads (GET/HEAD, never secrets): `/healthz`, `/metrics`, `/admin/routes`,
//! `/admin/services`, `/admin/plugins`, `/registry/services[/NAME]`, the dashboard `/` and
//! `/hystrix.stream`. Everything else, including any endpoint added later, is protected.

use std::net::IpAddr;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Config;

/// The environment variable read for the admin token when the config names none.
pub const TOKEN_ENV: &str = "SLUICE_ADMIN_TOKEN";

/// The admin listener's access rules, resolved at start.
#[derive(Debug)]
pub struct AdminAuth {
    /// SHA-256 of the admin token (compared in constant time, whatever its length).
    token: Option<[u8; 32]>,
    /// SHA-256 of the registration token.
    registration_token: Option<[u8; 32]>,
    /// Host names accepted without a token, besides loopback ones and the bind address.
    hosts: Vec<String>,
    bind: IpAddr,
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Open,
    Registration,
    Admin,
}

impl AdminAuth {
    /// The rules of a config: reads `token_file` or `SLUICE_ADMIN_TOKEN`, and refuses an admin
    /// listener reachable from other hosts without a token.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let admin = &config.admin;
        let token = match (&admin.token, &admin.token_file) {
            (Some(token), _) => Some(token.trim().to_owned()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("admin.token_file: cannot read {}", path.display()))?;
                let token = text.trim().to_owned();
                if token.len() < 16 {
                    bail!(
                        "admin.token_file: the token in {} must be at least 16 characters",
                        path.display()
                    );
                }
                Some(token)
            }
            (None, None) => match std::env::var(TOKEN_ENV) {
                Ok(token) if token.trim().len() >= 16 => Some(token.trim().to_owned()),
                Ok(token) if !token.trim().is_empty() => {
                    bail!("{TOKEN_ENV}: the admin token must be at least 16 characters")
                }
                _ => None,
            },
        };
        let bind = config.server.admin.ip();
        if token.is_none() && !bind.is_loopback() {
            bail!(
                "server.admin: {} is reachable from other hosts but the admin API has no token, \
                 so anyone who reaches it could read plugin secrets, register instances and \
                 reload plugins; set [admin] token or token_file (or {TOKEN_ENV}), or bind the \
                 admin listener to 127.0.0.1",
                config.server.admin
            );
        }
        if admin.registration_token.is_some() && token.is_none() {
            bail!(
                "admin.registration_token: needs an admin token too ([admin] token, token_file \
                 or {TOKEN_ENV}); without one the admin API is not authenticated at all"
            );
        }
        Ok(Self {
            token: token.as_deref().map(digest),
            registration_token: admin
                .registration_token
                .as_deref()
                .map(|t| digest(t.trim())),
            hosts: admin.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            bind,
        })
    }

    /// Whether the admin API needs a token.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// `Some(refusal)` when the request may not go on.
    fn check(&self, method: &Method, path: &str, headers: &HeaderMap) -> Option<Response> {
        let access = access_of(method, path);
        let Some(token) = &self.token else {
            return self.check_browser(method, headers);
        };
        if access == Access::Open {
            return None;
        }
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.split_once(' ')
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            })
            .map(|(_, t)| digest(t.trim()));
        let Some(presented) = presented else {
            return Some(unauthorized(
                "",
                "the admin API needs Authorization: Bearer TOKEN",
            ));
        };
        // Constant time: compare digests with `subtle`, so neither the token's bytes nor its
        // length show in the timing.
        let admin_ok = bool::from(presented.ct_eq(token));
        let registration_ok = access == Access::Registration
            && self
                .registration_token
                .is_some_and(|t| bool::from(presented.ct_eq(&t)));
        if admin_ok || registration_ok {
            None
        } else {
            Some(unauthorized(
                ", error=\"invalid_token\"",
                "the admin token is wrong (or only allows registrations)",
            ))
        }
    }

    /// Without a token: only loopback (or configured) Host names, and no cross-site writes.
    fn check_browser(&self, method: &Method, headers: &HeaderMap) -> Option<Response> {
        if let Some(host) = headers.get(header::HOST) {
            let host = host.to_str().unwrap_or("");
            if !self.host_allowed(host) {
                return Some(forbidden(&format!(
                    "Host `{host}` is not a loopback name or one of [admin] hosts (DNS rebinding \
                     protection; set [admin] token to use other names)"
                )));
            }
        }
        if method == Method::GET || method == Method::HEAD {
            return None;
        }
        let cross_site = headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes() == b"cross-site");
        let foreign_origin = headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|origin| {
                let host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
                origin == "null" || !self.host_allowed(host)
            });
        if cross_site || foreign_origin {
            return Some(forbidden(
                "cross-site admin writes are refused (CSRF protection)",
            ));
        }
        None
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = strip_port(host).to_ascii_lowercase();
        let name = name.trim_start_matches('[').trim_end_matches(']');
        if name == "localhost" || self.hosts.iter().any(|h| h == name) {
            return true;
        }
        match name.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback() || ip == self.bind,
            Err(_) => false,
        }
    }
}

/// axum middleware applying [`AdminAuth`] to every admin request.
pub async fn require(State(auth): State<Arc<AdminAuth>>, request: Request, next: Next) -> Response {
    match auth.check(request.method(), request.uri().path(), request.headers()) {
        None => next.run(request).await,
        Some(refusal) => refusal,
    }
}

fn access_of(method: &Method, path: &str) -> Access {
    let read = method == Method::GET || method == Method::HEAD;
    let open_read = matches!(
        path,
        "/" | "/healthz"
            | "/metrics"
            | "/hystrix.stream"
            | "/admin/routes"
            | "/admin/services"
            | "/admin/plugins"
            | "/registry/services"
    ) || path
        .strip_prefix("/registry/services/")
        .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'));
    if read && open_read {
        return Access::Open;
    }
    let instance = path
        .strip_prefix("/registry/services/")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(_, rest)| rest.starts_with("instances/"));
    if instance && (method == Method::PUT || method == Method::DELETE) {
        return Access::Registration;
    }
    Access::Admin
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..=h.len()]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

fn unauthorized(extra: &str, why: &str) -> Response {
    let challenge = format!("Bearer realm=\"sluice-admin\"{extra}");
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, challenge)],
        format!("{why}\n"),
    )
        .into_response()
}

fn forbidden(why: &str) -> Response {
    (StatusCode::FORBIDDEN, format!("{why}\n")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(token: Option<&str>, registration: Option<&str>) -> AdminAuth {
        AdminAuth {
            token: token.map(digest),
            registration_token: registration.map(digest),
            hosts: vec!["gw.internal".into()],
            bind: "127.0.0.1".parse().unwrap(),
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn status(a: &AdminAuth, m: Method, path: &str, h: &[(&str, &str)]) -> u16 {
        match a.check(&m, path, &headers(h)) {
            None => 200,
            Some(r) => r.status().as_u16(),
        }
    }

    #[test]
    fn endpoints_are_classified_open_registration_or_admin() {
        assert_eq!(access_of(&Method::GET, "/metrics"), Access::Open);
        assert_eq!(
            access_of(&Method::GET, "/registry/services/a"),
            Access::Open
        );
        assert_eq!(access_of(&Method::GET, "/admin/kv"), Access::Admin);
        assert_eq!(
            access_of(&Method::GET, "/admin/kv/auth/keys"),
            Access::Admin
        );
        assert_eq!(access_of(&Method::POST, "/admin/routes"), Access::Admin);
        assert_eq!(
            access_of(&Method::POST, "/admin/plugins/reload"),
            Access::Admin
        );
        assert_eq!(access_of(&Method::GET, "/admin/new-thing"), Access::Admin);
        assert_eq!(
            access_of(&Method::PUT, "/registry/services/a/instances/1"),
            Access::Registration
        );
        assert_eq!(
            access_of(&Method::DELETE, "/registry/services/a/instances/1"),
            Access::Registration
        );
    }

    #[test]
    fn with_a_token_protected_endpoints_need_the_right_one() {
        let a = auth(Some("admin-token-0123456789"), Some("reg-token-0123456789"));
        let bearer = |t: &str| format!("Bearer {t}");
        let admin = bearer("admin-token-0123456789");
        let reg = bearer("reg-token-0123456789");
        assert_eq!(status(&a, Method::GET, "/metrics", &[]), 200);
        assert_eq!(status(&a, Method::GET, "/admin/kv/k", &[]), 401);
        assert_eq!(
            status(
                &a,
                Method::GET,
                "/admin/kv/k",
                &[("authorization", "Bearer nope")]
            ),
            401
        );
        assert_eq!(
            status(&a, Method::GET, "/admin/kv/k", &[("authorization", &admin)]),
            200
        );
        assert_eq!(
            status(&a, Method::GET, "/admin/kv/k", &[("authorization", &reg)]),
            401
        );
        let put = "/registry/services/a/instances/1";
        assert_eq!(
            status(&a, Method::PUT, put, &[("authorization", &reg)]),
            200
        );
        assert_eq!(
            status(&a, Method::PUT, put, &[("authorization", &admin)]),
            200
        );
        assert_eq!(status(&a, Method::PUT, put, &[]), 401);
        // Any Host is fine with a token.
        assert_eq!(
            status(
                &a,
                Method::GET,
                "/admin/routes",
                &[("host", "evil.example")]
            ),
            200
        );
    }

    #[test]
    fn without_a_token_foreign_hosts_and_cross_site_writes_are_refused() {
        let a = auth(None, None);
        let ok_host = [("host", "127.0.0.1:9901")];
        assert_eq!(status(&a, Method::GET, "/admin/kv", &ok_host), 200);
        assert_eq!(
            status(&a, Method::GET, "/admin/kv", &[("host", "localhost:9901")]),
            200
        );
        assert_eq!(
            status(&a, Method::GET, "/admin/kv", &[("host", "[::1]:9901")]),
            200
        );
        assert_eq!(
            status(&a, Method::GET, "/admin/kv", &[("host", "gw.internal")]),
            200
        );
        assert_eq!(
            status(
                &a,
                Method::GET,
                "/admin/kv",
                &[("host", "rebind.evil.example:9901")]
            ),
            403
        );
        let reload = "/admin/plugins/reload";
        assert_eq!(status(&a, Method::POST, reload, &ok_host), 200);
        assert_eq!(
            status(
                &a,
                Method::POST,
                reload,
                &[
                    ("host", "127.0.0.1:9901"),
                    ("origin", "https://evil.example")
                ]
            ),
            403
        );
        assert_eq!(
            status(
                &a,
                Method::POST,
                reload,
                &[("host", "127.0.0.1:9901"), ("origin", "null")]
            ),
            403
        );
        assert_eq!(
            status(
                &a,
                Method::POST,
                reload,
                &[("host", "127.0.0.1:9901"), ("sec-fetch-site", "cross-site")]
            ),
            403
        );
        assert_eq!(
            status(
                &a,
                Method::POST,
                reload,
                &[
                    ("host", "127.0.0.1:9901"),
                    ("origin", "http://127.0.0.1:9901")
                ]
            ),
            200
        );
    }
}
