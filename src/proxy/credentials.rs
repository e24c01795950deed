//! Step 2 of the request path: finding the API key in a request (data plane).
//!
//! Basic (the password is the key; the username is ignored, except that with an empty password
//! the username is the key, as `curl -u $KEY:` sends it), Bearer, and a dedicated header, each
//! switchable. More than one credential, or a repeated header, is refused as ambiguous: a
//! gateway and its upstream must never disagree about which key a request carries.

use http::header::{HeaderMap, HeaderName, AUTHORIZATION};

/// Which schemes the gateway accepts, from the `[auth]` config.
#[derive(Debug, Clone)]
pub struct Schemes {
    pub basic: bool,
    pub bearer: bool,
    pub header: Option<HeaderName>,
}

/// Where the key came from: decides which header is stripped before forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Authorization,
    Header,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialError {
    /// No credential at all.
    Missing,
    /// A credential that cannot be decoded.
    Malformed,
    /// Repeated or competing credentials: refused with 400.
    Ambiguous,
}

/// Longest credential header considered; a key is at most 256 characters.
const MAX_CREDENTIAL_LEN: usize = 1024;

/// Space for a decoded Basic credential, so decoding needs no allocation.
pub type DecodeBuf = [u8; MAX_CREDENTIAL_LEN];

/// Finds the key in `headers`. A Basic credential is decoded into `buf`.
pub fn extract<'a>(
    headers: &'a HeaderMap,
    schemes: &Schemes,
    buf: &'a mut DecodeBuf,
) -> Result<(&'a [u8], Source), CredentialError> {
    let from_authorization = authorization(headers, schemes, buf)?;
    let from_header = match &schemes.header {
        Some(name) => single(headers, name)?,
        None => None,
    };
    match (from_authorization, from_header) {
        (Some(key), None) => Ok((key, Source::Authorization)),
        (None, Some(key)) => Ok((key, Source::Header)),
        (Some(_), Some(_)) => Err(CredentialError::Ambiguous),
        (None, None) => Err(CredentialError::Missing),
    }
}

/// The one value of a header, if present; repeated headers are ambiguous.
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a [u8]>, CredentialError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(CredentialError::Ambiguous);
    }
    Ok(first.map(|value| value.as_bytes()))
}

/// The key in `Authorization`, if it uses an enabled scheme. Other schemes are left alone: that
/// header may be meant for the upstream.
fn authorization<'a>(
    headers: &'a HeaderMap,
    schemes: &Schemes,
    buf: &'a mut DecodeBuf,
) -> Result<Option<&'a [u8]>, CredentialError> {
    let Some(value) = single(headers, &AUTHORIZATION)? else {
        return Ok(None);
    };
    let Some((scheme, rest)) = split_scheme(value) else {
        return Ok(None);
    };
    if schemes.basic && scheme.eq_ignore_ascii_case(b"basic") {
        return basic_password(rest, buf).map(Some);
    }
    if schemes.bearer && scheme.eq_ignore_ascii_case(b"bearer") {
        return non_empty(rest).map(Some);
    }
    Ok(None)
}

fn split_scheme(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    Some((scheme, trim(rest)))
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

fn non_empty(bytes: &[u8]) -> Result<&[u8], CredentialError> {
    if bytes.is_empty() || bytes.len() > MAX_CREDENTIAL_LEN {
        Err(CredentialError::Malformed)
    } else {
        Ok(bytes)
    }
}

/// `base64(user:password)` → password; `base64(key:)` → key. Stripe and others take the key
/// as the username with no password, and clients written for them send it so. Whether the
/// username is shaped like a key is the format check's to say, as for any credential: a
/// username that is not one is malformed, one that is is looked up (and counted unknown).
fn basic_password<'a>(encoded: &[u8], buf: &'a mut DecodeBuf) -> Result<&'a [u8], CredentialError> {
    if encoded.len() > MAX_CREDENTIAL_LEN * 4 / 3 {
        return Err(CredentialError::Malformed);
    }
    let len = decode_base64(encoded, buf).ok_or(CredentialError::Malformed)?;
    let decoded = &buf[..len];
    let colon = decoded
        .iter()
        .position(|&b| b == b':')
        .ok_or(CredentialError::Malformed)?;
    let (user, password) = (&decoded[..colon], &decoded[colon + 1..]);
    match password.is_empty() {
        true => non_empty(user),
        false => non_empty(password),
    }
}

/// Each byte's six bits in the standard base64 alphabet; `INVALID` for a byte outside it (`=`
/// included, which only [`decode_base64`]'s last group may hold).
const BASE64: [u8; 256] = {
    let mut table = [INVALID; 256];
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut i = 0;
    while i < alphabet.len() {
        table[alphabet[i] as usize] = i as u8;
        i += 1;
    }
    table
};
const INVALID: u8 = 0xff;

/// Standard base64 with canonical padding, as the `base64` crate's `STANDARD` engine decodes it
/// (a length in whole groups of four, `=` only to end the last, no bits set past the data):
/// the decoded length, or `None`. By hand: a credential is a few dozen bytes, for which the
/// crate's general decoder, its estimate and its suffix handling cost twice this loop. `out`
/// must hold three bytes for every four of `encoded`.
fn decode_base64(encoded: &[u8], out: &mut [u8]) -> Option<usize> {
    if !encoded.len().is_multiple_of(4) || out.len() < encoded.len() / 4 * 3 {
        return None;
    }
    let (groups, last) = encoded.split_at(encoded.len().saturating_sub(4));
    let mut len = 0;
    for group in groups.chunks_exact(4) {
        let bits = sextets(group)?;
        out[len..len + 3].copy_from_slice(&bits.to_be_bytes()[1..]);
        len += 3;
    }
    if last.is_empty() {
        return Some(len);
    }
    let (data, padding) = match last {
        [a, b, b'=', b'='] => ([*a, *b, b'A', b'A'], 2),
        [a, b, c, b'='] => ([*a, *b, *c, b'A'], 1),
        _ => ([last[0], last[1], last[2], last[3]], 0),
    };
    let bits = sextets(&data)?;
    // The bits past the last whole byte must be zero: one encoding for one value.
    let spare = [0, 0xff, 0xffff][padding];
    if bits & spare != 0 {
        return None;
    }
    let kept = 3 - padding;
    out[len..len + kept].copy_from_slice(&bits.to_be_bytes()[1..1 + kept]);
    Some(len + kept)
}

/// A group of four base64 characters as 24 bits.
fn sextets(group: &[u8]) -> Option<u32> {
    let mut bits = 0u32;
    for &byte in group {
        let value = BASE64[usize::from(byte)];
        if value == INVALID {
            return None;
        }
        bits = bits << 6 | u32::from(value);
    }
    Some(bits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;

    fn all_schemes() -> Schemes {
        Schemes {
            basic: true,
            bearer: true,
            header: Some(HeaderName::from_static("x-api-key")),
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn basic(user_pass: &str) -> String {
        format!("Basic {}", STANDARD.encode(user_pass))
    }

    fn run(pairs: &[(&str, &str)], schemes: &Schemes) -> Result<(Vec<u8>, Source), CredentialError> {
        let map = headers(pairs);
        let mut buf = [0; MAX_CREDENTIAL_LEN];
        extract(&map, schemes, &mut buf).map(|(key, source)| (key.to_vec(), source))
    }

    #[test]
    fn keys_are_found_in_every_enabled_scheme() {
        let basic_x = basic("X:secret-key");
        let basic_empty_user = basic(":secret-key");
        let basic_colon_in_key = basic("API:secret:key");
        let basic_key_as_user = basic("secret-key:");
        for (pairs, key, source) in [
            (
                vec![("authorization", basic_x.as_str())],
                "secret-key",
                Source::Authorization,
            ),
            (
                vec![("authorization", basic_empty_user.as_str())],
                "secret-key",
                Source::Authorization,
            ),
            (
                vec![("authorization", basic_colon_in_key.as_str())],
                "secret:key",
                Source::Authorization,
            ),
            (
                vec![("authorization", basic_key_as_user.as_str())],
                "secret-key",
                Source::Authorization,
            ),
            (
                vec![("authorization", "Bearer secret-key")],
                "secret-key",
                Source::Authorization,
            ),
            (
                vec![("authorization", "bearer  secret-key ")],
                "secret-key",
                Source::Authorization,
            ),
            (vec![("x-api-key", "secret-key")], "secret-key", Source::Header),
        ] {
            assert_eq!(
                run(&pairs, &all_schemes()),
                Ok((key.as_bytes().to_vec(), source)),
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn base64_decodes_as_the_base64_crate_does() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(22);
        let mut cases: Vec<Vec<u8>> = [
            "", "QQ==", "QR==", "QUI=", "QUJ=", "QUJD", "Q===", "QQ=A", "=QQQ", "QQ", "QUJDRA==", "QQ==QUJD",
            "QU JD",
        ]
        .iter()
        .map(|case| case.as_bytes().to_vec())
        .collect();
        for _ in 0..20_000 {
            let len = rng.random_range(0..24);
            let case = (0..len)
                .map(|_| b"ABCDQRSabcz0189+/=-_ "[rng.random_range(0..21)])
                .collect();
            cases.push(case);
        }
        for _ in 0..2_000 {
            let len = rng.random_range(0..60);
            let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            cases.push(STANDARD.encode(bytes).into_bytes());
        }
        for case in cases {
            let mut ours = [0; MAX_CREDENTIAL_LEN];
            let mut theirs = [0; MAX_CREDENTIAL_LEN];
            let got = decode_base64(&case, &mut ours).map(|len| ours[..len].to_vec());
            let expected = STANDARD
                .decode_slice(&case, &mut theirs)
                .ok()
                .map(|len| theirs[..len].to_vec());
            assert_eq!(got, expected, "{:?}", String::from_utf8_lossy(&case));
        }
    }

    #[test]
    fn broken_credentials_are_malformed() {
        let no_colon = format!("Basic {}", STANDARD.encode("no-colon"));
        let both_empty = basic(":");
        for value in ["Basic !!!", no_colon.as_str(), both_empty.as_str(), "Bearer "] {
            assert_eq!(
                run(&[("authorization", value)], &all_schemes()),
                Err(CredentialError::Malformed),
                "{value}"
            );
        }
    }

    #[test]
    fn repeated_or_competing_credentials_are_ambiguous() {
        for pairs in [
            vec![
                ("authorization", "Bearer a-key-000000000"),
                ("authorization", "Bearer b-key-000000000"),
            ],
            vec![("x-api-key", "a"), ("x-api-key", "b")],
            vec![("authorization", "Bearer a-key-000000000"), ("x-api-key", "b")],
        ] {
            assert_eq!(
                run(&pairs, &all_schemes()),
                Err(CredentialError::Ambiguous),
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn disabled_or_foreign_schemes_leave_authorization_alone() {
        let header_only = Schemes {
            basic: false,
            bearer: false,
            header: Some(HeaderName::from_static("x-api-key")),
        };
        assert_eq!(
            run(&[("authorization", "Bearer upstream-token")], &header_only),
            Err(CredentialError::Missing)
        );
        assert_eq!(
            run(
                &[("authorization", "Digest abc"), ("x-api-key", "secret-key")],
                &all_schemes()
            ),
            Ok((b"secret-key".to_vec(), Source::Header))
        );
        assert_eq!(run(&[], &all_schemes()), Err(CredentialError::Missing));
    }
}
