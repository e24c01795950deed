//! Method overrides (data plane): the ways a client can ask an upstream framework to take a
//! request as another method than its own, so that a key allowed only `POST` would delete.
//!
//! - the headers `X-HTTP-Method-Override`, `X-Method-Override` and `X-HTTP-Method` (Symfony,
//!   ASP.NET, Google's APIs, Express's `method-override`);
//! - a `_method` query parameter (Laravel and Symfony read it for a `POST`; Express's
//!   `method-override` can be told to). Its name is found as those frameworks read it: in any
//!   case, percent-encoded or not (`%5Fmethod`), and as PHP reads a name, which drops leading
//!   spaces, turns a `.` or a `[` into `_` (`.method`, `[method`) and `_method[x]` into an
//!   array.
//!
//! A route without `allow_method_override` strips the headers and refuses (400) a request
//! with the query parameter, which cannot be taken out without rewriting the target. A route
//! with it lets them through, and the permission checked is that of the one method they all
//! name (anything else is 400).
//!
//! A `_method` field in a form body (Rails' `Rack::MethodOverride`, Laravel, Symfony: a `POST`
//! with an `application/x-www-form-urlencoded` or `multipart/form-data` body) is out of reach:
//! the gateway streams bodies and never reads them. In front of such an upstream, a route
//! must require for `POST` what the upstream can be made to do with one.

use http::header::{HeaderMap, HeaderName};
use http::Method;

use super::head::method_is_canonical;

/// Headers that ask an upstream to take the request as another method than its own.
static HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-method-override"),
    HeaderName::from_static("x-http-method"),
];

/// Whether `name` is one of the method-override headers.
pub fn is_header(name: &HeaderName) -> bool {
    HEADERS.contains(name)
}

/// Whether a query names a method with a `_method` parameter, under any of its spellings.
pub fn in_query(query: Option<&str>) -> bool {
    query.is_some_and(|query| parameters(query).next().is_some())
}

/// The method a request's overrides name, if any: one method, in canonical form, the same in
/// every override header and `_method` parameter it sends; anything else is not a method the
/// gateway can check, and is refused.
pub fn method_override(headers: &HeaderMap, query: Option<&str>) -> Result<Option<Method>, InvalidOverride> {
    let mut named: Option<Vec<u8>> = None;
    let headers = HEADERS
        .iter()
        .flat_map(|name| headers.get_all(name))
        .map(|value| Ok(value.as_bytes().trim_ascii().to_vec()));
    let parameters = parameters(query.unwrap_or("")).map(|parameter| match parameter {
        Parameter::Method(value) => Ok(decode(value).trim_ascii().to_vec()),
        Parameter::Nested => Err(InvalidOverride),
    });
    for value in headers.chain(parameters) {
        let value = value?;
        match &named {
            Some(earlier) if *earlier != value => return Err(InvalidOverride),
            _ => named = Some(value),
        }
    }
    let Some(named) = named else {
        return Ok(None);
    };
    let method = Method::from_bytes(&named).map_err(|_| InvalidOverride)?;
    if method_is_canonical(&method) {
        Ok(Some(method))
    } else {
        Err(InvalidOverride)
    }
}

/// Overrides that do not name one canonical method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidOverride;

/// A query parameter a framework reads as `_method`.
#[derive(Debug, PartialEq, Eq)]
enum Parameter<'q> {
    /// `_method=value`, the value as it stands in the query (still encoded).
    Method(&'q str),
    /// `_method[...]`, which PHP reads as an array, or a name cut by a NUL: no one method.
    Nested,
}

/// The `_method` parameters of a query. Pairs are split at `&` and at `;` (which older Rack
/// and Python also split at): a superset of what any upstream reads.
fn parameters(query: &str) -> impl Iterator<Item = Parameter<'_>> {
    query.split(['&', ';']).filter_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        // Most names are not it by their length or their first byte alone, so are not decoded.
        if !could_be_method(name) {
            return None;
        }
        let name = decode(name);
        let name = name.trim_ascii_start();
        let (head, rest) = name.split_at_checked(7)?;
        let head_is_method = head.iter().zip(b"_method").enumerate().all(|(i, (&got, &want))| {
            let got = if i == 0 && matches!(got, b' ' | b'.' | b'[') {
                b'_'
            } else {
                got
            };
            got.eq_ignore_ascii_case(&want)
        });
        match rest.first() {
            _ if !head_is_method => None,
            None => Some(Parameter::Method(value)),
            Some(b'[' | 0) => Some(Parameter::Nested),
            Some(_) => None,
        }
    })
}

/// Whether an encoded parameter name can decode to one read as `_method`: 7 bytes at least
/// (as short as `_method`), and one with a `%` or a `+` in it, or else whose first letter is
/// one a `_method` can start with.
fn could_be_method(name: &str) -> bool {
    name.len() >= 7 && (name.contains(['%', '+']) || matches!(name.as_bytes()[0], b'_' | b' ' | b'.' | b'['))
}

/// A query component, percent-decoded and with `+` read as a space, as bytes.
fn decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = match bytes[i] {
            b'%' => match (bytes.get(i + 1).and_then(hex), bytes.get(i + 2).and_then(hex)) {
                (Some(high), Some(low)) => {
                    i += 2;
                    (high << 4) | low
                }
                _ => b'%',
            },
            b'+' => b' ',
            byte => byte,
        };
        out.push(byte);
        i += 1;
    }
    out
}

fn hex(digit: &u8) -> Option<u8> {
    char::from(*digit).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn method_parameters_are_found_under_every_spelling_a_framework_reads() {
        for (query, found) in [
            ("", false),
            ("a=1&b=2", false),
            ("_method=DELETE", true),
            ("a=1&_method=DELETE", true),
            ("a=1;_method=DELETE", true),
            ("_METHOD=DELETE", true),
            ("_Method=DELETE", true),
            ("%5Fmethod=DELETE", true),
            ("%5fmethod=DELETE", true),
            ("_%6Dethod=DELETE", true),
            ("%5F%6D%65%74%68%6F%64=DELETE", true),
            (".method=DELETE", true),
            // PHP drops leading spaces before it turns the others into `_`.
            ("+method=DELETE", false),
            ("%20method=DELETE", false),
            ("[method=DELETE", true),
            ("++_method=DELETE", true),
            ("_method", true),
            ("_method=", true),
            ("_method[]=DELETE", true),
            ("_method%5B%5D=DELETE", true),
            ("_method%00x=DELETE", true),
            ("_methods=DELETE", false),
            ("x_method=DELETE", false),
            ("method=DELETE", false),
            ("_metho=DELETE", false),
            ("q=_method%3DDELETE", false),
            ("_method.x=DELETE", false),
            ("%=&%5=&%5F", false),
        ] {
            assert_eq!(in_query(Some(query)), found, "{query}");
        }
        assert!(!in_query(None));
    }

    #[test]
    fn an_override_names_one_canonical_method_or_is_invalid() {
        type Case = (
            &'static [(&'static str, &'static str)],
            &'static str,
            Result<Option<Method>, InvalidOverride>,
        );
        let cases: &[Case] = &[
            (&[], "", Ok(None)),
            (&[], "a=1", Ok(None)),
            (
                &[("x-http-method-override", "DELETE")],
                "",
                Ok(Some(Method::DELETE)),
            ),
            (&[("x-method-override", " PATCH ")], "", Ok(Some(Method::PATCH))),
            (
                &[("x-http-method", "DELETE"), ("x-http-method-override", "DELETE")],
                "",
                Ok(Some(Method::DELETE)),
            ),
            (
                &[("x-http-method", "DELETE"), ("x-http-method-override", "PUT")],
                "",
                Err(InvalidOverride),
            ),
            (
                &[
                    ("x-http-method-override", "GET"),
                    ("x-http-method-override", "POST"),
                ],
                "",
                Err(InvalidOverride),
            ),
            (&[("x-http-method-override", "delete")], "", Err(InvalidOverride)),
            (&[("x-http-method-override", "")], "", Err(InvalidOverride)),
            (&[("x-http-method-override", "DE LETE")], "", Err(InvalidOverride)),
            (&[], "_method=DELETE", Ok(Some(Method::DELETE))),
            (&[], "%5Fmethod=DEL%45TE", Ok(Some(Method::DELETE))),
            (&[], "_method=+DELETE+", Ok(Some(Method::DELETE))),
            (&[], "_method=DELETE&_method=DELETE", Ok(Some(Method::DELETE))),
            (&[], "_method=DELETE&_METHOD=PUT", Err(InvalidOverride)),
            (&[], "_method=delete", Err(InvalidOverride)),
            (&[], "_method=", Err(InvalidOverride)),
            (&[], "_method", Err(InvalidOverride)),
            (&[], "_method[]=DELETE", Err(InvalidOverride)),
            (
                &[("x-http-method-override", "DELETE")],
                "_method=DELETE",
                Ok(Some(Method::DELETE)),
            ),
            (
                &[("x-http-method-override", "GET")],
                "_method=DELETE",
                Err(InvalidOverride),
            ),
        ];
        for (fields, query, expected) in cases {
            let mut headers = HeaderMap::new();
            for (name, value) in *fields {
                headers.append(*name, HeaderValue::from_static(value));
            }
            assert_eq!(
                method_override(&headers, Some(query)),
                *expected,
                "{fields:?} {query}"
            );
        }
    }
}
