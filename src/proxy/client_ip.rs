//! The client's IP (data plane): the peer address, or, when the peer is a trusted proxy, the
//! nearest untrusted address in `X-Forwarded-For`, read from the right, since only the entries
//! our trusted proxies appended can be believed.

use std::net::IpAddr;

use http::header::HeaderMap;
use ipnet::IpNet;

pub const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// Whether `ip` is one of the trusted proxies.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| is_trusted(*ip, trusted);
    if trusted.is_empty() || !is_trusted(&peer) {
        return peer;
    }
    let mut nearest = peer;
    let values: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    for entry in values.iter().rev().flat_map(|value| value.rsplit(',')) {
        match entry.trim().parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip) => nearest = ip,
            Ok(ip) => return ip,
            Err(_) => return nearest,
        }
    }
    nearest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn run(peer: &str, xff: &[&str], trusted: &[&str]) -> IpAddr {
        let mut headers = HeaderMap::new();
        for value in xff {
            headers.append(X_FORWARDED_FOR, value.parse().unwrap());
        }
        let trusted: Vec<IpNet> = trusted.iter().map(|t| t.parse().unwrap()).collect();
        client_ip(ip(peer), &headers, &trusted)
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        for (peer, xff, trusted, client) in [
            ("203.0.113.9", vec!["198.51.100.1"], vec![], "203.0.113.9"),
            (
                "203.0.113.9",
                vec!["198.51.100.1"],
                vec!["10.0.0.0/8"],
                "203.0.113.9",
            ),
            (
                "10.0.0.2",
                vec!["198.51.100.1"],
                vec!["10.0.0.0/8"],
                "198.51.100.1",
            ),
            (
                "10.0.0.2",
                vec!["6.6.6.6, 198.51.100.1, 10.0.0.3"],
                vec!["10.0.0.0/8"],
                "198.51.100.1",
            ),
            (
                "10.0.0.2",
                vec!["6.6.6.6", "198.51.100.1"],
                vec!["10.0.0.0/8"],
                "198.51.100.1",
            ),
            (
                "10.0.0.2",
                vec!["garbage, 10.0.0.3"],
                vec!["10.0.0.0/8"],
                "10.0.0.3",
            ),
            ("10.0.0.2", vec![], vec!["10.0.0.0/8"], "10.0.0.2"),
            ("::1", vec!["2001:db8::1"], vec!["::1/128"], "2001:db8::1"),
        ] {
            assert_eq!(
                run(peer, &xff, &trusted),
                ip(client),
                "{peer} {xff:?} {trusted:?}"
            );
        }
    }
}
