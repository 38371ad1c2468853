//! Incoming trace context: W3C Trace Context (`traceparent` / `tracestate`) and B3 (the
//! single `b3` header and the `X-B3-*` headers). Pure functions, unit-tested natively.

/// What the caller sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A parent span to continue.
    Parent(Parent),
    /// B3 `b3: 0` (or `X-B3-Sampled: 0` without ids): no parent, but the caller says
    /// "do not sample".
    Deny,
}

/// A caller's span. Ids are lower-case hex, 32 and 16 digits, not all zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    /// Trace id (a 64-bit B3 id is left-padded with zeros).
    pub trace_id: String,
    /// The caller's span id.
    pub span_id: String,
    /// The caller's decision: `Some(true)` for sampled or B3 debug, `Some(false)` for
    /// denied, `None` when the caller deferred.
    pub sampled: Option<bool>,
    /// W3C `tracestate` (empty for B3).
    pub trace_state: String,
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn not_all_zero(s: &str) -> bool {
    s.bytes().any(|b| b != b'0')
}

/// A hex id of `len` digits, not all zero; B3 ids may be upper-case and trace ids 16
/// digits (then padded to 32).
fn id(s: &str, len: usize) -> Option<String> {
    let s = s.to_ascii_lowercase();
    (s.len() == len && is_lower_hex(&s) && not_all_zero(&s)).then_some(s)
}

/// W3C `traceparent` (version 00 rules: `00-{32 hex}-{16 hex}-{2 hex}`, lower case, ids not
/// all zero, version `ff` invalid; a higher version is parsed by the 00 layout, ignoring
/// what follows, as the spec asks).
pub fn parse_traceparent(value: &str, trace_state: Option<&str>) -> Option<Parent> {
    let value = value.trim();
    let mut parts = value.splitn(5, '-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let span_id = parts.next()?;
    let flags = parts.next()?;
    let rest = parts.next();
    if version.len() != 2 || !is_lower_hex(version) || version == "ff" {
        return None;
    }
    if version == "00" && (rest.is_some() || flags.len() != 2) {
        return None;
    }
    // A later version may add fields, but only after a `-` (which `splitn` already took off):
    // the flags are exactly two characters in every version.
    if flags.len() != 2 {
        return None;
    }
    if trace_id.len() != 32
        || !is_lower_hex(trace_id)
        || !not_all_zero(trace_id)
        || span_id.len() != 16
        || !is_lower_hex(span_id)
        || !not_all_zero(span_id)
        || flags.len() != 2
        || !is_lower_hex(flags)
    {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(Parent {
        trace_id: trace_id.to_owned(),
        span_id: span_id.to_owned(),
        sampled: Some(flags & 1 == 1),
        trace_state: trace_state.map(str::trim).unwrap_or("").to_owned(),
    })
}

fn b3_trace_id(s: &str) -> Option<String> {
    match s.len() {
        16 => id(s, 16).map(|id| format!("{id:0>32}")),
        32 => id(s, 32),
        _ => None,
    }
}

/// `1`/`0`/`d` of B3 single; `1`/`0`/`true`/`false` of `X-B3-Sampled`.
fn b3_sampled(s: &str) -> Result<Option<bool>, ()> {
    match s {
        "1" | "d" | "true" => Ok(Some(true)),
        "0" | "false" => Ok(Some(false)),
        _ => Err(()),
    }
}

/// B3 single header: `{trace}-{span}[-{sampled}[-{parent span}]]`, or just `{sampled}`.
pub fn parse_b3_single(value: &str) -> Option<Incoming> {
    let value = value.trim();
    let parts: Vec<&str> = value.split('-').collect();
    match parts.as_slice() {
        [only] => match b3_sampled(only).ok()? {
            Some(false) => Some(Incoming::Deny),
            // `b3: 1` / `b3: d` without ids: nothing to continue; treat as absent.
            _ => None,
        },
        [trace, span, rest @ ..] if rest.len() <= 2 => {
            let sampled = match rest.first() {
                Some(s) => b3_sampled(s).ok()?,
                None => None,
            };
            if let Some(parent) = rest.get(1) {
                id(parent, 16)?;
            }
            Some(Incoming::Parent(Parent {
                trace_id: b3_trace_id(trace)?,
                span_id: id(span, 16)?,
                sampled,
                trace_state: String::new(),
            }))
        }
        _ => None,
    }
}

/// B3 multi headers: `X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled`, `X-B3-Flags` (`1` =
/// debug, which means sampled).
pub fn parse_b3_multi(
    trace_id: Option<&str>,
    span_id: Option<&str>,
    sampled: Option<&str>,
    flags: Option<&str>,
) -> Option<Incoming> {
    let debug = flags.map(str::trim) == Some("1");
    let sampled = match sampled.map(str::trim) {
        Some(s) => b3_sampled(&s.to_ascii_lowercase()).ok()?,
        None => None,
    };
    let sampled = if debug { Some(true) } else { sampled };
    match (trace_id, span_id) {
        (Some(t), Some(s)) => Some(Incoming::Parent(Parent {
            trace_id: b3_trace_id(t.trim())?,
            span_id: id(s.trim(), 16)?,
            sampled,
            trace_state: String::new(),
        })),
        (None, None) if sampled == Some(false) => Some(Incoming::Deny),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    #[test]
    fn w3c_valid() {
        let p = parse_traceparent(&format!("00-{TRACE}-{SPAN}-01"), Some("a=1,b=2")).unwrap();
        assert_eq!(p.trace_id, TRACE);
        assert_eq!(p.span_id, SPAN);
        assert_eq!(p.sampled, Some(true));
        assert_eq!(p.trace_state, "a=1,b=2");
        let p = parse_traceparent(&format!("00-{TRACE}-{SPAN}-00"), None).unwrap();
        assert_eq!(p.sampled, Some(false));
        // Other flag bits do not make it sampled.
        let p = parse_traceparent(&format!("00-{TRACE}-{SPAN}-02"), None).unwrap();
        assert_eq!(p.sampled, Some(false));
    }

    #[test]
    fn w3c_rejects_malformed() {
        for bad in [
            String::new(),
            format!("00-{TRACE}-{SPAN}"),
            format!("00-{}-{SPAN}-01", "0".repeat(32)),
            format!("00-{TRACE}-{}-01", "0".repeat(16)),
            format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
            format!("00-{}-{SPAN}-01", &TRACE[1..]),
            format!("00-{TRACE}-{SPAN}-1"),
            format!("00-{TRACE}-{SPAN}-01-extra"),
            format!("ff-{TRACE}-{SPAN}-01"),
            format!("0x-{TRACE}-{SPAN}-01"),
            format!("00-{TRACE}-{SPAN}-zz"),
        ] {
            assert_eq!(parse_traceparent(&bad, None), None, "{bad}");
        }
    }

    #[test]
    fn w3c_future_version_is_read_by_the_00_layout() {
        let p = parse_traceparent(&format!("01-{TRACE}-{SPAN}-01-more"), None).unwrap();
        assert_eq!(p.trace_id, TRACE); // ...but the flags still end at a `-`.
        assert!(parse_traceparent(&format!("01-{TRACE}-{SPAN}-01xyz"), None).is_none());
    }

    #[test]
    fn b3_single_forms() {
        let Some(Incoming::Parent(p)) = parse_b3_single(&format!("{TRACE}-{SPAN}-1")) else {
            panic!()
        };
        assert_eq!((p.trace_id.as_str(), p.sampled), (TRACE, Some(true)));
        let Some(Incoming::Parent(p)) =
            parse_b3_single(&format!("{TRACE}-{SPAN}-d-05e3ac9a4f6e3b90"))
        else {
            panic!()
        };
        assert_eq!(p.sampled, Some(true));
        let Some(Incoming::Parent(p)) = parse_b3_single(&format!("{TRACE}-{SPAN}")) else {
            panic!()
        };
        assert_eq!(p.sampled, None);
        let Some(Incoming::Parent(p)) = parse_b3_single(&format!("a3ce929d0e0e4736-{SPAN}-0"))
        else {
            panic!()
        };
        assert_eq!(p.trace_id, "0000000000000000a3ce929d0e0e4736");
        assert_eq!(p.sampled, Some(false));
        assert_eq!(parse_b3_single("0"), Some(Incoming::Deny));
        assert_eq!(parse_b3_single("1"), None);
    }

    #[test]
    fn b3_single_rejects_malformed() {
        for bad in [
            TRACE.to_string(),
            format!("{TRACE}-{SPAN}-x"),
            format!("{TRACE}-{}-1", "0".repeat(16)),
            format!("{}-{SPAN}-1", "0".repeat(32)),
            format!("abc-{SPAN}-1"),
            format!("{TRACE}-{SPAN}-1-nothex!!nothex!"),
            format!("{TRACE}-{SPAN}-1-{SPAN}-more"),
        ] {
            assert_eq!(parse_b3_single(&bad), None, "{bad}");
        }
    }

    #[test]
    fn b3_multi_forms() {
        let Some(Incoming::Parent(p)) = parse_b3_multi(Some(TRACE), Some(SPAN), Some("1"), None)
        else {
            panic!()
        };
        assert_eq!(p.sampled, Some(true));
        let Some(Incoming::Parent(p)) =
            parse_b3_multi(Some(&TRACE.to_uppercase()), Some(SPAN), None, Some("1"))
        else {
            panic!()
        };
        assert_eq!((p.trace_id.as_str(), p.sampled), (TRACE, Some(true)));
        let Some(Incoming::Parent(p)) = parse_b3_multi(Some(TRACE), Some(SPAN), Some("0"), None)
        else {
            panic!()
        };
        assert_eq!(p.sampled, Some(false));
        assert_eq!(
            parse_b3_multi(None, None, Some("0"), None),
            Some(Incoming::Deny)
        );
        assert_eq!(parse_b3_multi(Some(TRACE), None, Some("1"), None), None);
        assert_eq!(
            parse_b3_multi(Some(TRACE), Some(SPAN), Some("maybe"), None),
            None
        );
    }
}
