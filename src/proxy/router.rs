//! Step 1 of the request path: which route a (host, path) belongs to (data plane).
//!
//! A route's pattern matches its path and everything below it, by whole segments; `{name}`
//! matches any one segment. Routes are tried most specific first: a route bound to the host
//! before a host-less one, then more literal segments, then more segments, then the pattern
//! whose first difference is a literal.

use std::cmp::Reverse;

use crate::config::{self, Segment};

#[derive(Debug)]
pub struct Router {
    /// Indexes into `patterns`, most specific first.
    order: Vec<usize>,
    patterns: Vec<Pattern>,
}

/// What routing needs of one route.
#[derive(Debug, Clone)]
pub struct Pattern {
    pub host: Option<String>,
    pub segments: Vec<Segment>,
    /// Position of the segment that holds the customer id.
    pub customer_param: Option<usize>,
}

/// A matched route and the value of its customer segment, if it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matched<'p> {
    pub route: usize,
    pub customer: Option<&'p str>,
}

impl Router {
    pub fn new(routes: &[config::Route]) -> Self {
        Self::from_patterns(
            routes
                .iter()
                .map(|route| Pattern {
                    host: route.host.clone(),
                    segments: route.path.segments.clone(),
                    customer_param: route.customer_param,
                })
                .collect(),
        )
    }

    pub fn from_patterns(patterns: Vec<Pattern>) -> Self {
        let mut order: Vec<usize> = (0..patterns.len()).collect();
        order.sort_by_key(|&i| {
            let pattern = &patterns[i];
            let literals: Vec<bool> = pattern
                .segments
                .iter()
                .map(|s| matches!(s, Segment::Literal(_)))
                .collect();
            let literal_count = literals.iter().filter(|l| **l).count();
            (
                Reverse(pattern.host.is_some()),
                Reverse(literal_count),
                Reverse(literals.len()),
                Reverse(literals),
                i,
            )
        });
        Router { order, patterns }
    }

    /// The route for `host` (no port) and a normalized `path`.
    pub fn route<'p>(&self, host: Option<&str>, path: &'p str) -> Option<Matched<'p>> {
        self.order.iter().find_map(|&i| {
            let pattern = &self.patterns[i];
            let host_differs = |want: &String| host.is_none_or(|h| !h.eq_ignore_ascii_case(want));
            if pattern.host.as_ref().is_some_and(host_differs) {
                return None;
            }
            let mut customer = None;
            let mut parts = path.split('/').skip(1).filter(|part| !part.is_empty());
            for (position, segment) in pattern.segments.iter().enumerate() {
                let part = parts.next()?;
                match segment {
                    Segment::Literal(literal) if literal != part => return None,
                    _ if pattern.customer_param == Some(position) => customer = Some(part),
                    _ => {}
                }
            }
            Some(Matched { route: i, customer })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(path: &str) -> Vec<Segment> {
        path.split('/')
            .filter(|s| !s.is_empty())
            .map(|s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => Segment::Param(name.to_owned()),
                None => Segment::Literal(s.to_owned()),
            })
            .collect()
    }

    fn router(routes: &[(Option<&str>, &str)]) -> Router {
        Router::from_patterns(
            routes
                .iter()
                .map(|(host, path)| Pattern {
                    host: host.map(str::to_owned),
                    segments: pattern(path),
                    customer_param: path.contains("{customer}").then_some(2),
                })
                .collect(),
        )
    }

    #[test]
    fn the_most_specific_route_wins() {
        let r = router(&[
            (None, "/"),
            (None, "/v1/customers"),
            (None, "/v1/customers/{customer}"),
            (None, "/v1/{kind}/admin"),
            (None, "/v1/customers/admin"),
            (Some("api.example.com"), "/v1"),
        ]);
        for (host, path, route) in [
            (None, "/other", Some(0)),
            (None, "/v1/customers", Some(1)),
            (None, "/v1/customers/acme", Some(2)),
            (None, "/v1/customers/acme/orders/7", Some(2)),
            (None, "/v1/customers/admin", Some(4)),
            (None, "/v1/licenses/admin", Some(3)),
            (Some("API.example.com"), "/v1/customers/acme", Some(5)),
            (Some("other.example.com"), "/v1/customers/acme", Some(2)),
        ] {
            assert_eq!(r.route(host, path).map(|m| m.route), route, "{host:?} {path}");
        }
    }

    #[test]
    fn segments_match_whole_and_only_below() {
        let r = router(&[(None, "/v1/customers")]);
        for (path, matched) in [
            ("/v1/customers", true),
            ("/v1/customers/", true),
            ("/v1/customers/x", true),
            ("/v1/customersx", false),
            ("/v1", false),
            ("/", false),
        ] {
            assert_eq!(r.route(None, path).is_some(), matched, "{path}");
        }
    }

    #[test]
    fn the_customer_segment_is_captured() {
        let r = router(&[(None, "/v1/customers/{customer}")]);
        let matched = r.route(None, "/v1/customers/acme/orders").unwrap();
        assert_eq!(matched.customer, Some("acme"));
    }
}
