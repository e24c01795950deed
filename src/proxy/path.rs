//! Request paths, made unambiguous before routing (data plane).
//!
//! The path the gateway authorizes must be the path the upstream serves, so it is put in one
//! normal form, used for both routing and forwarding: percent-encoded unreserved characters are
//! decoded (`%61` is `a`), other escapes are upper-cased. What could still be read two ways is
//! refused with 400: encoded `/`, `\` or NUL, dot segments (`.`, `..`, also when encoded), empty
//! segments (`//`), and a raw backslash. So are what common upstreams read as those: a dot
//! segment with path parameters (`..;x`, `.;`, which Tomcat and Spring read as `..` and `.`),
//! and the double-encoded `%252e`, `%252f`, `%255c`, `%2500`, which an upstream that decodes
//! twice reads as `.`, `/`, `\`, NUL.

use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmbiguousPath;

/// The normal form of `path` (the part of the URI before `?`).
pub fn normalize(path: &str) -> Result<Cow<'_, str>, AmbiguousPath> {
    if !path.starts_with('/') {
        return Err(AmbiguousPath);
    }
    let normalized = if path.contains('%') {
        let decoded = decode_unreserved(path)?;
        // Checked on the result, not the input: `%25` `2` `%65` decodes to `%252e` as well.
        if has_double_encoded(&decoded) {
            return Err(AmbiguousPath);
        }
        Cow::Owned(decoded)
    } else {
        Cow::Borrowed(path)
    };
    check_segments(&normalized)?;
    Ok(normalized)
}

/// Whether a normal form holds an encoded `%` that, decoded once more, is `.`, `/`, `\` or NUL.
fn has_double_encoded(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes
        .windows(3)
        .enumerate()
        .any(|(i, w)| w == b"%25" && is_double_encoded(&bytes[i + 3..]))
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}

/// By bytes: a path may hold raw UTF-8 (hyper lets it through), which must pass on as the
/// same bytes, never one character per byte.
fn decode_unreserved(path: &str) -> Result<String, AmbiguousPath> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let (Some(high), Some(low)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(AmbiguousPath);
        };
        let decoded = high << 4 | low;
        match decoded {
            b'/' | b'\\' | 0 => return Err(AmbiguousPath),
            b if is_unreserved(b) => out.push(b),
            b => out.extend_from_slice(&[
                b'%',
                b"0123456789ABCDEF"[usize::from(b >> 4)],
                b"0123456789ABCDEF"[usize::from(b & 15)],
            ]),
        }
        i += 3;
    }
    // Only `%XX` became ASCII; every other byte is the valid UTF-8 it came as.
    String::from_utf8(out).map_err(|_| AmbiguousPath)
}

/// Whether what follows an encoded `%` would decode, a second time, to `.`, `/`, `\` or NUL.
fn is_double_encoded(rest: &[u8]) -> bool {
    match rest {
        [high, low, ..] => matches!(
            (high, low.to_ascii_lowercase()),
            (b'2', b'e' | b'f') | (b'5', b'c') | (b'0', b'0')
        ),
        _ => false,
    }
}

/// A dot segment, also with path parameters (`..;jsessionid=x`), which some upstreams strip
/// before they resolve dot segments.
fn is_dot_segment(segment: &str) -> bool {
    if !segment.starts_with('.') {
        return false;
    }
    let name = segment.split_once(';').map_or(segment, |(name, _)| name);
    name == "." || name == ".."
}

fn check_segments(path: &str) -> Result<(), AmbiguousPath> {
    if path == "/" {
        return Ok(());
    }
    if path.contains('\\') {
        return Err(AmbiguousPath);
    }
    let body = &path[1..];
    // A single trailing slash is an ordinary, unambiguous path; anything else empty is not.
    let body = body.strip_suffix('/').unwrap_or(body);
    let bad = body
        .split('/')
        .any(|segment| segment.is_empty() || is_dot_segment(segment));
    if bad {
        Err(AmbiguousPath)
    } else {
        Ok(())
    }
}

/// Fully percent-decodes one path segment, for comparing a path parameter with a customer id.
pub fn decode_segment(segment: &str) -> Cow<'_, str> {
    if !segment.contains('%') {
        return Cow::Borrowed(segment);
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| Some(hex(*bytes.get(i + 1)?)? << 4 | hex(*bytes.get(i + 2)?)?))
            .flatten();
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_pass_unchanged_and_unborrowed() {
        for path in ["/", "/v1/customers/acme", "/v1/customers/acme/", "/a-b_c~d.e/f"] {
            assert!(
                matches!(normalize(path), Ok(Cow::Borrowed(p)) if p == path),
                "{path}"
            );
        }
    }

    #[test]
    fn escapes_are_put_in_one_form() {
        for (path, normal) in [
            ("/v1/%63ustomers/acme", "/v1/customers/acme"),
            ("/v1/customers/a%7ecme", "/v1/customers/a~cme"),
            ("/v1/customers/a%20b", "/v1/customers/a%20b"),
            ("/v1/customers/a%c3%a9", "/v1/customers/a%C3%A9"),
            ("/v1/customers/100%25", "/v1/customers/100%25"),
            ("/v1/customers/a%2541", "/v1/customers/a%2541"),
            ("/v1/customers/a;b", "/v1/customers/a;b"),
            ("/v1/customers/...;x", "/v1/customers/...;x"),
            // Raw UTF-8 beside an escape passes on as the same bytes (found by fuzzing: it
            // became one character per byte, and normalizing again changed it again).
            ("/v1/%63ustomers/ын", "/v1/customers/ын"),
            ("/%EEEEEt--ын", "/%EEEEEt--ын"),
        ] {
            assert_eq!(normalize(path).as_deref(), Ok(normal), "{path}");
            assert_eq!(
                normalize(normal).as_deref(),
                Ok(normal),
                "normal forms are fixed points"
            );
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for path in [
            "",
            "v1/customers",
            "//v1/customers",
            "/v1//customers",
            "/v1/./customers",
            "/v1/../admin",
            "/v1/customers/..",
            "/v1/%2e%2e/admin",
            "/v1/%2E/admin",
            "/v1/customers%2Facme",
            "/v1/customers%2facme",
            "/v1/customers%5cacme",
            "/v1/customers\\acme",
            "/v1/a%00b",
            "/v1/a%zz",
            "/v1/a%4",
            "/v1/..;/admin",
            "/v1/..;jsessionid=x/admin",
            "/v1/.;/admin",
            "/v1/customers/..;",
            "/v1/%2e%2e;x/admin",
            "/v1/%252e%252e/admin",
            // Found by fuzzing: the second digit encoded, so only the decoded form reads `%252e`.
            "/v1/%252%65%252%65/admin",
            "/%252%652|",
            "/v1/%25%32%65/admin",
            "/v1/%252E%252E/admin",
            "/v1/customers%252facme",
            "/v1/customers%252Facme",
            "/v1/customers%255cacme",
            "/v1/customers%255Cacme",
            "/v1/a%2500b",
        ] {
            assert_eq!(normalize(path), Err(AmbiguousPath), "{path}");
        }
    }

    #[test]
    fn segments_decode_fully_for_customer_comparison() {
        assert_eq!(decode_segment("acme"), "acme");
        assert_eq!(decode_segment("ac%20me"), "ac me");
        assert_eq!(decode_segment("100%"), "100%");
    }
}
