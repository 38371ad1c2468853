//! W3C Trace Context (`traceparent`, version 00) as the gateway sends it upstream.

use http::HeaderValue;

/// `traceparent`.
pub static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
/// `tracestate`.
pub static TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// `00-{trace id}-{span id}-{01|00}`.
pub fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> HeaderValue {
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex::encode_to_slice(trace_id, &mut out[3..35]).expect("32 digits for 16 bytes");
    hex::encode_to_slice(span_id, &mut out[36..52]).expect("16 digits for 8 bytes");
    if sampled {
        out[54] = b'1';
    }
    HeaderValue::from_bytes(&out).expect("traceparent is visible ASCII")
}

/// Replaces the incoming W3C pair with the gateway's: `traceparent` naming `span_id` as the
/// parent, and `tracestate` when the continued trace has one (an incoming `tracestate` of a
/// trace the gateway did not continue is removed). B3 headers that came in are rewritten the
/// same way, so a Zipkin-instrumented upstream also parents its spans to the gateway's and
/// follows its sampling decision; B3 is never added where there was none.
pub fn inject(
    headers: &mut http::HeaderMap,
    trace_id: &[u8; 16],
    span_id: &[u8; 8],
    sampled: bool,
    trace_state: &str,
) {
    headers.insert(TRACEPARENT.clone(), traceparent(trace_id, span_id, sampled));
    match HeaderValue::from_str(trace_state) {
        Ok(v) if !trace_state.is_empty() => {
            headers.insert(TRACESTATE.clone(), v);
        }
        _ => {
            headers.remove(&TRACESTATE);
        }
    }
    let (trace, span) = (hex(trace_id), hex(span_id));
    let flag = if sampled { "1" } else { "0" };
    if headers.contains_key("b3") {
        let single = format!("{trace}-{span}-{flag}");
        if let Ok(v) = HeaderValue::from_str(&single) {
            headers.insert("b3", v);
        }
    }
    if headers.contains_key("x-b3-traceid") {
        for (name, value) in [
            ("x-b3-traceid", trace.as_str()),
            ("x-b3-spanid", span.as_str()),
            ("x-b3-sampled", flag),
        ] {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(name, v);
            }
        }
        headers.remove("x-b3-parentspanid");
        headers.remove("x-b3-flags");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_version_00_lower_hex_with_flags() {
        let trace = [
            0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
            0x47, 0x36,
        ];
        let span = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];
        assert_eq!(
            traceparent(&trace, &span, true),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(
            traceparent(&trace, &span, false),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        );
    }

    #[test]
    fn inject_replaces_the_pair_and_rewrites_b3_it_found() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", HeaderValue::from_static("00-x-y-01"));
        headers.insert("tracestate", HeaderValue::from_static("old=1"));
        headers.insert("b3", HeaderValue::from_static("a-b-1"));
        inject(&mut headers, &[1; 16], &[2; 8], true, "");
        assert_eq!(
            headers["traceparent"],
            "00-01010101010101010101010101010101-0202020202020202-01"
        );
        assert!(headers.get("tracestate").is_none());
        assert_eq!(
            headers["b3"],
            "01010101010101010101010101010101-0202020202020202-1"
        );
        assert!(headers.get("x-b3-traceid").is_none(), "never added");
        headers.insert("x-b3-traceid", HeaderValue::from_static("a"));
        headers.insert("x-b3-parentspanid", HeaderValue::from_static("p"));
        inject(&mut headers, &[1; 16], &[2; 8], false, "k=v");
        assert_eq!(headers["tracestate"], "k=v");
        assert_eq!(headers["x-b3-spanid"], "0202020202020202");
        assert_eq!(headers["x-b3-sampled"], "0");
        assert!(headers.get("x-b3-parentspanid").is_none());
        assert_eq!(headers.get_all("traceparent").iter().count(), 1);
    }
}
