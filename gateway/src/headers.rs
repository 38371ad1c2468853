//! Header rules of a proxy: hop-by-hop headers stay on their hop (RFC 9110 §7.6.1), and the
//! upstream learns who the client was through `X-Forwarded-*` and a request id.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `x-request-id`: kept when the client sent one, generated otherwise.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Whether the headers say gRPC (`application/grpc`, `application/grpc+proto`, ...): here, not
/// in grpc.rs, so that the upstream pool can ask without depending on grpc.rs (which renders
/// error responses).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Headers that describe one connection, never the message (RFC 9110 §7.6.1, plus the
/// non-standard `Keep-Alive` and `Proxy-Connection` that old clients still send).
fn fixed_hop_by_hop() -> [&'static HeaderName; 9] {
    [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ]
}

/// Removes hop-by-hop headers, including every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Fast path: most requests carry none of these. One pass over the (few) names present
    // is cheaper than hashing nine lookups.
    let hop_by_hop = fixed_hop_by_hop();
    if !headers.keys().any(|name| hop_by_hop.contains(&name)) {
        return;
    }
    // `Connection` usually carries only `keep-alive` or `close` (an upstream's every
    // response does): options, or names already in the fixed list, so nothing to parse or
    // allocate for them.
    let mut named: Vec<HeaderName> = Vec::new();
    for token in headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
    {
        let fixed = token.eq_ignore_ascii_case("close")
            || hop_by_hop
                .iter()
                .any(|name| token.eq_ignore_ascii_case(name.as_str()));
        if !fixed && let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
            named.push(name);
        }
    }
    for name in named {
        headers.remove(name);
    }
    for name in hop_by_hop {
        headers.remove(name);
    }
}

/// Adds `X-Forwarded-For`, `-Proto` and `-Host`. `trusted`: the peer is one of
/// `[server] trusted_proxies`, so the list it sent is kept and the peer appended; from any
/// other peer the list (and `Forwarded`, `X-Real-IP`, which upstreams also read for the
/// client address) is the client's own claim and is replaced by the peer's address.
pub fn add_forwarded(headers: &mut HeaderMap, client: IpAddr, trusted: bool) {
    if !trusted {
        headers.remove(&FORWARDED);
        headers.remove(&X_REAL_IP);
    }
    let mut ip_buf = [0u8; 64];
    let ip = format_ip(client, &mut ip_buf);
    let prior = headers.get_all(&X_FORWARDED_FOR);
    // Several X-Forwarded-For lines from a trusted proxy are one list (RFC 9110 §5.3).
    let mut joined: Vec<u8> = Vec::new();
    if trusted {
        for line in prior
            .iter()
            .map(HeaderValue::as_bytes)
            .filter(|l| !l.is_empty())
        {
            joined.extend_from_slice(line);
            joined.extend_from_slice(b", ");
        }
    }
    // The usual case (no list to keep) formats the address on the stack: one allocation,
    // the header value's own.
    let value = if joined.is_empty() {
        HeaderValue::from_bytes(ip)
    } else {
        joined.extend_from_slice(ip);
        HeaderValue::from_bytes(&joined)
    };
    if let Ok(value) = value {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
}

/// `ip` written into `buf` (64 bytes hold any IPv6 text form).
fn format_ip(ip: IpAddr, buf: &mut [u8; 64]) -> &[u8] {
    use std::io::Write as _;
    let mut rest = &mut buf[..];
    let _ = write!(rest, "{ip}");
    let len = 64 - rest.len();
    &buf[..len]
}

/// Returns the client's request id, or sets a new one (128 random bits in hex).
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(&X_REQUEST_ID)
        && !id.is_empty()
        && id.len() <= 200
    {
        return id.clone();
    }
    let id = new_request_id();
    headers.insert(X_REQUEST_ID.clone(), id.clone());
    id
}

fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; 32];
    hex::encode_to_slice(fastrand::u128(..).to_le_bytes(), &mut buf)
        .expect("32 digits for 16 bytes");
    HeaderValue::from_bytes(&buf).expect("hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_fixed_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn connection_options_are_not_taken_for_header_names_and_any_case_matches() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Close ,  X-A,KEEP-ALIVE"),
        );
        h.append(header::CONNECTION, HeaderValue::from_static("x-b"));
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn forwarded_for_appends_from_a_trusted_proxy() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        h.insert("x-real-ip", HeaderValue::from_static("10.0.0.1"));
        h.insert(header::HOST, HeaderValue::from_static("api.example"));
        add_forwarded(&mut h, "127.0.0.1".parse().unwrap(), true);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 127.0.0.1");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-real-ip"], "10.0.0.1");
        assert_eq!(h["x-forwarded-host"], "api.example");
        assert_eq!(h["x-forwarded-proto"], "http");
    }

    #[test]
    fn forwarded_for_from_an_untrusted_peer_is_replaced() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        h.insert("forwarded", HeaderValue::from_static("for=10.0.0.1"));
        h.insert("x-real-ip", HeaderValue::from_static("10.0.0.1"));
        add_forwarded(&mut h, "192.0.2.7".parse().unwrap(), false);
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert!(!h.contains_key("forwarded"));
        assert!(!h.contains_key("x-real-ip"));
    }

    #[test]
    fn request_id_is_kept_or_made() {
        let mut h = HeaderMap::new();
        let made = ensure_request_id(&mut h);
        assert_eq!(made.len(), 32);
        assert!(
            made.as_bytes()
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)),
            "lower-case hex: {made:?}"
        );
        assert_ne!(ensure_request_id(&mut HeaderMap::new()), made, "random");
        assert_eq!(h["x-request-id"], made);
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc"));
        assert_eq!(ensure_request_id(&mut h), "abc");
    }
}
