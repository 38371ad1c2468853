//! The one canonical spelling of a request path, made once at the edge before routing; the
//! same form is what routes match, what plugins see and what goes upstream.
//!
//! Upstreams decode and resolve paths themselves (Go, Spring, Werkzeug, Tomcat…), so a route
//! or a plugin that looked at the raw spelling could be talked past: `/demo/%70rivate`,
//! `/demo/x/../private`, `/demo//private` and `/demo/./private` all reach `/demo/private`
//! upstream. Canonical form here:
//!
//! - percent-encoded unreserved characters (RFC 3986 §2.3: `A-Z a-z 0-9 - . _ ~`) decoded,
//!   other escapes kept with upper-case hex (§6.2.2.1);
//! - dot segments resolved (§5.2.4), so a path never climbs above `/`;
//! - repeated slashes merged (`[server] merge_slashes`, on by default);
//! - encoded slash and backslash (`%2F`, `%5C`) and a raw `\`: refused (default), kept as they
//!   are, or decoded to `/` and then resolved (`[server] escaped_slashes`);
//! - a dot segment with parameters (`..;x`, `.;x`, which Tomcat and Jetty treat as `..` and
//!   `.`) refused: there is no spelling of it that means the same to every upstream.
//!
//! Hand-written rather than a crate: the URL crates (`url`, `percent-encoding`) either
//! decode everything (turning `%2F` into a separator) or nothing, and none offers Envoy's
//! escaped-slash choices; the rules above fit in one pass and are unit-tested below.

use std::borrow::Cow;

use serde::Deserialize;

/// What happens to `%2F`, `%5C` and a raw `\` in a request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EscapedSlashes {
    /// The request is answered 400 (the default: the safe choice when upstreams differ).
    #[default]
    Reject,
    /// Left as they are (`%2F` stays an escape inside one segment, `\` a character).
    Keep,
    /// Decoded to `/` before dot segments are resolved and slashes merged.
    Decode,
}

/// How paths are made canonical (`[server] merge_slashes`, `escaped_slashes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathPolicy {
    /// Merge `//` into `/`.
    pub merge_slashes: bool,
    /// What to do with encoded slashes and backslashes.
    pub escaped_slashes: EscapedSlashes,
}

impl Default for PathPolicy {
    fn default() -> Self {
        Self {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
        }
    }
}

/// Why a path has no canonical form; the client gets 400 with this text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `%2F` or `%5C` with `escaped_slashes = "reject"`.
    #[error("encoded slash or backslash (%2F, %5C) in the path")]
    EscapedSlash,
    /// A raw `\` with `escaped_slashes = "reject"`.
    #[error("backslash in the path")]
    Backslash,
    /// `%` not followed by two hex digits.
    #[error("invalid percent-encoding in the path")]
    BadEscape,
    /// `..;x` or `.;x`.
    #[error("dot segment with parameters (`..;`) in the path")]
    DotSegmentParameters,
}

impl PathError {
    /// The same text, for [`crate::error::ProxyError::BadRequest`].
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EscapedSlash => "encoded slash or backslash (%2F, %5C) in the path",
            Self::Backslash => "backslash in the path",
            Self::BadEscape => "invalid percent-encoding in the path",
            Self::DotSegmentParameters => "dot segment with parameters (`..;`) in the path",
        }
    }
}

/// The canonical form of an origin-form path (`/...`); borrowed when it already is canonical
/// (the common case: no allocation). Anything not starting with `/` (`*`) is returned as is.
pub fn canonicalize(path: &str, policy: PathPolicy) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Ok(Cow::Borrowed(path));
    }
    if is_canonical(path, policy) {
        return Ok(Cow::Borrowed(path));
    }
    // 1. Escapes: decode the unreserved ones, normalise the case of the rest.
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
                let mut value = [0u8];
                hex::decode_to_slice(hex, &mut value).map_err(|_| PathError::BadEscape)?;
                match value[0] {
                    b'/' | b'\\' => match policy.escaped_slashes {
                        EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                        EscapedSlashes::Keep => {
                            decoded.push('%');
                            decoded.push(char::from(hex[0].to_ascii_uppercase()));
                            decoded.push(char::from(hex[1].to_ascii_uppercase()));
                        }
                        EscapedSlashes::Decode => decoded.push('/'),
                    },
                    v if is_unreserved(v) => decoded.push(char::from(v)),
                    _ => {
                        decoded.push('%');
                        decoded.push(char::from(hex[0].to_ascii_uppercase()));
                        decoded.push(char::from(hex[1].to_ascii_uppercase()));
                    }
                }
                i += 3;
            }
            b'\\' => {
                match policy.escaped_slashes {
                    EscapedSlashes::Reject => return Err(PathError::Backslash),
                    EscapedSlashes::Keep => decoded.push('\\'),
                    EscapedSlashes::Decode => decoded.push('/'),
                }
                i += 1;
            }
            _ => {
                // Copy the run of ordinary bytes (a valid &str slice: it ends before an
                // ASCII byte or at the end).
                let start = i;
                while i < bytes.len() && bytes[i] != b'%' && bytes[i] != b'\\' {
                    i += 1;
                }
                decoded.push_str(&path[start..i]);
            }
        }
    }

    // 2. Segments: refuse dot segments with parameters, resolve `.` and `..`, merge slashes.
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for (n, segment) in segments.iter().enumerate() {
        if segment.starts_with(".;") || segment.starts_with("..;") {
            return Err(PathError::DotSegmentParameters);
        }
        match *segment {
            "." => {}
            ".." => {
                out.pop();
            }
            "" if n == last || policy.merge_slashes => {}
            s => out.push(s),
        }
    }
    // A path that ended in `/`, `/.` or `/..` names a directory: it keeps its trailing slash.
    let directory = matches!(segments[last], "" | "." | "..");
    let mut canonical = String::with_capacity(decoded.len());
    for segment in &out {
        canonical.push('/');
        canonical.push_str(segment);
    }
    if canonical.is_empty() || directory {
        canonical.push('/');
    }
    Ok(Cow::Owned(canonical))
}

/// Fast check: nothing to change (no `%`, no `\`, no dot segment, no `//` when merging).
fn is_canonical(path: &str, policy: PathPolicy) -> bool {
    let bytes = path.as_bytes();
    if bytes.iter().any(|&b| b == b'%' || b == b'\\') {
        return false;
    }
    if policy.merge_slashes && path.contains("//") {
        return false;
    }
    // Dot segments: `/.` followed by `/`, `;`, end, or `./`/`.;`/end.
    let mut rest = path;
    while let Some(at) = rest.find("/.") {
        let after = &rest[at + 2..];
        let after = after.strip_prefix('.').unwrap_or(after);
        if after.is_empty() || after.starts_with('/') || after.starts_with(';') {
            return false;
        }
        rest = &rest[at + 2..];
    }
    true
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(path: &str) -> Result<String, PathError> {
        canonicalize(path, PathPolicy::default()).map(Cow::into_owned)
    }

    fn with(path: &str, merge_slashes: bool, escaped_slashes: EscapedSlashes) -> String {
        let policy = PathPolicy {
            merge_slashes,
            escaped_slashes,
        };
        canonicalize(path, policy).unwrap().into_owned()
    }

    #[test]
    fn the_issue_bypasses_all_become_the_guarded_path() {
        for spelling in [
            "/demo/%70rivate/",
            "/demo/x/../private/",
            "/demo//private/",
            "/demo/./private/",
            "/demo/%2e/private/",
            "/demo/x/%2E%2E/private/",
            "/demo/private/.",
            "/demo/private/x/..",
            "/../demo/private/",
            "///demo///private//",
        ] {
            assert_eq!(canon(spelling).unwrap(), "/demo/private/", "{spelling}");
        }
    }

    #[test]
    fn canonical_paths_are_borrowed_unchanged() {
        for path in ["/", "/a", "/a/b/", "/a.b/.c/..d/c.", "/a;b=c/d"] {
            assert!(
                matches!(canonicalize(path, PathPolicy::default()), Ok(Cow::Borrowed(p)) if p == path),
                "{path}"
            );
        }
    }

    #[test]
    fn dot_segments_resolve_as_rfc_3986_5_2_4() {
        // RFC 3986 §5.2.4's own examples, applied to absolute paths.
        assert_eq!(canon("/a/b/c/./../../g").unwrap(), "/a/g");
        assert_eq!(canon("/mid/content=5/../6").unwrap(), "/mid/6");
        assert_eq!(canon("/..").unwrap(), "/");
        assert_eq!(canon("/../..").unwrap(), "/");
        assert_eq!(canon("/a/..").unwrap(), "/");
        assert_eq!(canon("/a/.").unwrap(), "/a/");
        assert_eq!(canon("/a/..b/c").unwrap(), "/a/..b/c");
        assert_eq!(canon("/a/b./c").unwrap(), "/a/b./c");
    }

    #[test]
    fn only_unreserved_escapes_are_decoded() {
        assert_eq!(canon("/%41%7a%2D%5f%7E%30").unwrap(), "/Az-_~0");
        assert_eq!(canon("/a%20b%3f%25").unwrap(), "/a%20b%3F%25");
        assert_eq!(canon("/%c3%a9").unwrap(), "/%C3%A9");
        assert_eq!(canon("/a%2").unwrap_err(), PathError::BadEscape);
        assert_eq!(canon("/a%zz").unwrap_err(), PathError::BadEscape);
        assert_eq!(canon("/a%g0").unwrap_err(), PathError::BadEscape);
        assert_eq!(canon("/a%+1").unwrap_err(), PathError::BadEscape);
        assert_eq!(canon("/a%\u{e9}").unwrap_err(), PathError::BadEscape);
    }

    #[test]
    fn escaped_slashes_and_backslashes_follow_the_policy() {
        assert_eq!(canon("/a%2fb").unwrap_err(), PathError::EscapedSlash);
        assert_eq!(canon("/a%2Fb").unwrap_err(), PathError::EscapedSlash);
        assert_eq!(canon("/a%5cb").unwrap_err(), PathError::EscapedSlash);
        assert_eq!(canon("/a\\b").unwrap_err(), PathError::Backslash);
        assert_eq!(
            with("/a%2fb/..%5c/c\\d", true, EscapedSlashes::Keep),
            "/a%2Fb/..%5C/c\\d"
        );
        assert_eq!(
            with("/a/b%2f..%2f..%2fc\\..\\d", true, EscapedSlashes::Decode),
            "/d"
        );
    }

    #[test]
    fn merging_slashes_can_be_turned_off() {
        assert_eq!(with("/a//b/", false, EscapedSlashes::Reject), "/a//b/");
        assert_eq!(with("//a/./b", false, EscapedSlashes::Reject), "//a/b");
        assert_eq!(with("/a//b/", true, EscapedSlashes::Reject), "/a/b/");
    }

    #[test]
    fn dot_segments_with_parameters_are_refused() {
        for path in [
            "/public/..;/private",
            "/public/..;x=1/private",
            "/a/.;/b",
            "/public/%2e%2e;/private",
        ] {
            assert_eq!(
                canon(path).unwrap_err(),
                PathError::DotSegmentParameters,
                "{path}"
            );
        }
        assert_eq!(canon("/a/..x;/b").unwrap(), "/a/..x;/b");
        assert_eq!(canon("/a/b;..").unwrap(), "/a/b;..");
    }

    #[test]
    fn non_origin_form_is_left_alone() {
        assert_eq!(canon("*").unwrap(), "*");
    }

    #[test]
    fn canonical_form_is_a_fixed_point() {
        for path in [
            "/demo/%70rivate/",
            "/a/b/c/./../../g",
            "/a%20b/%c3%a9/",
            "//x//y/..//",
        ] {
            let once = canon(path).unwrap();
            assert_eq!(canon(&once).unwrap(), once, "{path}");
        }
    }
}
