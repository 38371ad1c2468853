//! Which addresses a registered instance may have (`[registry] allow_addresses`,
//! docs/security.md). Whoever can register an instance decides where a service's traffic
//! goes; without a policy that includes the cloud metadata endpoint (169.254.169.254), the
//! gateway's own admin port and anything else only the gateway host can reach.
//!
//! Refused unless an `allow_addresses` network holds the address: link-local
//! (169.254.0.0/16, fe80::/10), unspecified (0.0.0.0, ::), multicast and broadcast, the
//! gateway's own listeners (data plane, admin) and, when the admin listener is reachable from
//! other hosts, loopback. With a loopback-only admin listener, whoever registers is already on
//! the gateway's host and can reach its loopback anyway, so loopback instances are allowed
//! (the gateway's own listeners still are not).
//!
//! Checked for `PUT /registry/...` (names resolved at registration; each address must pass)
//! and for registrations read from etcd (IP literals and `localhost`; names there are not
//! resolved: etcd write access is an operator's).

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use crate::config::{Cidr, Config};

/// The registration address policy.
#[derive(Debug)]
pub struct AddressPolicy {
    allow: Vec<Cidr>,
    allow_loopback: bool,
    /// The gateway's own listeners, known once they are bound.
    own: Mutex<Vec<SocketAddr>>,
}

impl AddressPolicy {
    /// The policy of a config.
    pub fn new(config: &Config) -> Self {
        Self {
            allow: config.registry.allow_addresses.clone(),
            allow_loopback: config.server.admin.ip().is_loopback(),
            own: Mutex::new(vec![config.server.listen, config.server.admin]),
        }
    }

    /// The listeners actually bound (ports chosen by the system included).
    pub fn set_own(&self, listeners: &[SocketAddr]) {
        let mut own = self.own.lock().expect("policy lock");
        own.extend_from_slice(listeners);
    }

    /// Checks one resolved address.
    pub fn check(&self, addr: SocketAddr) -> Result<(), String> {
        let ip = canonical_ip(addr.ip());
        if self.allow.iter().any(|net| net.contains(ip)) {
            return Ok(());
        }
        let allow = "allow it with [registry] allow_addresses";
        let why = if ip.is_unspecified() {
            Some("is unspecified")
        } else if ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255]) {
            Some("is multicast or broadcast")
        } else if is_link_local(ip) {
            Some("is link-local (where cloud metadata endpoints live)")
        } else if self.is_own(addr.port(), ip) {
            Some("is one of this gateway's own listeners")
        } else if ip.is_loopback() && !self.allow_loopback {
            Some("is loopback, and the admin listener is reachable from other hosts")
        } else {
            None
        };
        match why {
            Some(why) => Err(format!("{addr} {why}; {allow}")),
            None => Ok(()),
        }
    }

    /// Checks an address as registered (`host:port`) without resolving names: IP literals
    /// and `localhost` (which is loopback whatever DNS says).
    pub fn check_authority(&self, authority: &str) -> Result<(), String> {
        let Some((host, port)) = authority.rsplit_once(':') else {
            return Ok(());
        };
        let Ok(port) = port.parse::<u16>() else {
            return Ok(());
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let lower = host.to_ascii_lowercase();
        let lower = lower.trim_end_matches('.');
        if lower == "localhost" || lower.ends_with(".localhost") {
            return self.check(SocketAddr::from(([127, 0, 0, 1], port)));
        }
        match host.parse::<IpAddr>() {
            Ok(ip) => self.check(SocketAddr::new(ip, port)),
            Err(_) => Ok(()),
        }
    }

    /// Checks an address as registered, resolving a name: every address it resolves to must
    /// pass. A name that does not resolve is refused (it could not take traffic anyway).
    pub async fn check_resolved(&self, authority: &str) -> Result<(), String> {
        self.check_authority(authority)?;
        if authority.parse::<SocketAddr>().is_ok() {
            return Ok(());
        }
        let resolved = tokio::net::lookup_host(authority)
            .await
            .map_err(|e| format!("{authority} does not resolve: {e}"))?;
        for addr in resolved {
            self.check(addr)
                .map_err(|e| format!("{authority} resolves to {e}"))?;
        }
        Ok(())
    }

    fn is_own(&self, port: u16, ip: IpAddr) -> bool {
        self.own.lock().expect("policy lock").iter().any(|own| {
            own.port() == port
                && (canonical_ip(own.ip()) == ip
                    || own.ip().is_unspecified()
                    || ip.is_loopback()
                    || ip.is_unspecified())
        })
    }
}

/// IPv4-mapped IPv6 (`::ffff:169.254.169.254`) checked as the IPv4 address it is.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(admin: &str, allow: &[&str]) -> AddressPolicy {
        let allow = allow
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:8080\"\nadmin = \"{admin}\"\n[admin]\ntoken = \"0123456789abcdef\"\n[registry]\nallow_addresses = [{allow}]\n"
        );
        AddressPolicy::new(&Config::parse(&text, "t").unwrap())
    }

    #[test]
    fn metadata_multicast_unspecified_and_own_listeners_are_refused() {
        let p = policy("127.0.0.1:9901", &[]);
        for bad in [
            "169.254.169.254:80",
            "[::ffff:169.254.169.254]:80",
            "[fe80::1]:80",
            "0.0.0.0:80",
            "[::]:80",
            "224.0.0.1:80",
            "127.0.0.1:9901",
            "127.0.0.1:8080",
            "localhost:9901",
        ] {
            assert!(p.check_authority(bad).is_err(), "{bad}");
        }
        assert!(p.check_authority("127.0.0.1:9001").is_ok());
        assert!(p.check_authority("10.0.0.5:80").is_ok());
        assert!(p.check_authority("users.internal:80").is_ok());
        let e = p.check_authority("169.254.169.254:80").unwrap_err();
        assert!(
            e.contains("link-local") && e.contains("allow_addresses"),
            "{e}"
        );
    }

    #[test]
    fn loopback_is_refused_when_the_admin_listener_is_public() {
        let p = policy("0.0.0.0:9901", &[]);
        assert!(p.check_authority("127.0.0.1:9001").is_err());
        assert!(p.check_authority("localhost:9001").is_err());
        assert!(p.check_authority("[::1]:9001").is_err());
        assert!(
            p.check_authority("10.0.0.5:9901").is_err(),
            "own port on 0.0.0.0"
        );
        assert!(p.check_authority("10.0.0.5:80").is_ok());
    }

    #[test]
    fn allow_addresses_lets_a_network_in() {
        let p = policy("0.0.0.0:9901", &["127.0.0.0/8", "169.254.10.0/24"]);
        assert!(p.check_authority("127.0.0.1:9001").is_ok());
        assert!(p.check_authority("169.254.10.1:80").is_ok());
        assert!(p.check_authority("169.254.169.254:80").is_err());
    }

    #[tokio::test]
    async fn names_are_checked_by_what_they_resolve_to() {
        let p = policy("0.0.0.0:9901", &[]);
        // `localhost.` bypasses the literal check only if resolution is skipped.
        assert!(p.check_resolved("localhost:9001").await.is_err());
        assert!(p.check_resolved("no-such-host.invalid:80").await.is_err());
    }
}
