//! Finding a header's values in a request head (data plane), for the steps that each look for
//! one or two names: the credential, the host, the framing, the request id.
//!
//! `HeaderMap::get_all` hashes the name and probes the map, on every lookup. Most heads an API
//! gets are a handful of headers (a client library sends four or five), and for those a walk
//! over the values in order, comparing names (a tag for the standard ones, a few bytes for the
//! others), costs less than the hash alone. Larger heads are looked up by hash as before. Either
//! way the values come in the map's order, as `get_all` gives them.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Heads of at most this many values are walked; larger ones are looked up by hash.
const WALKED: usize = 8;

/// The values of `name` in `headers`, in order.
pub fn values<'h, 'n>(headers: &'h HeaderMap, name: &'n HeaderName) -> Values<'h, 'n> {
    if headers.len() <= WALKED {
        Values::Walk {
            all: headers.iter(),
            name,
        }
    } else {
        Values::Hashed(headers.get_all(name).iter())
    }
}

/// The first value of `name`, as `HeaderMap::get` gives it.
pub fn first<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h HeaderValue> {
    values(headers, name).next()
}

/// The values of one name (see [`values`]).
pub enum Values<'h, 'n> {
    Walk {
        all: header::Iter<'h, HeaderValue>,
        name: &'n HeaderName,
    },
    Hashed(header::ValueIter<'h, HeaderValue>),
}

impl<'h> Iterator for Values<'h, '_> {
    type Item = &'h HeaderValue;

    fn next(&mut self) -> Option<&'h HeaderValue> {
        match self {
            Values::Walk { all, name } => all.find(|(each, _)| *each == *name).map(|(_, value)| value),
            Values::Hashed(values) => values.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{AUTHORIZATION, HOST};

    fn head(count: usize) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.append(HOST, HeaderValue::from_static("api.test"));
        headers.append("x-api-key", HeaderValue::from_static("one"));
        for i in 0..count.saturating_sub(4) {
            headers.append(
                HeaderName::try_from(format!("x-filler-{i}")).unwrap(),
                HeaderValue::from_static("f"),
            );
        }
        headers.append(AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        headers.append("x-api-key", HeaderValue::from_static("two"));
        headers
    }

    #[test]
    fn small_and_large_heads_give_what_get_all_gives_in_its_order() {
        for count in [4, WALKED, WALKED + 1, 40] {
            let headers = head(count);
            assert_eq!(headers.len(), count.max(4));
            let custom = HeaderName::from_static("x-api-key");
            for name in [&HOST, &AUTHORIZATION, &custom, &HeaderName::from_static("x-absent")] {
                let found: Vec<_> = values(&headers, name).collect();
                let expected: Vec<_> = headers.get_all(name).iter().collect();
                assert_eq!(found, expected, "{name} in {count}");
                assert_eq!(first(&headers, name), headers.get(name), "{name} in {count}");
            }
        }
    }
}
