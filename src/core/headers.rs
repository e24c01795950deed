//! Header names with a fixed meaning to the gateway, shared by config validation (which keeps
//! `auth.header` off them) and forwarding (which strips them).

/// The hop-by-hop headers of RFC 9110 section 7.6.1, by their lower-case name.
pub fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection" | "keep-alive" | "proxy-connection" | "te" | "trailer" | "transfer-encoding" | "upgrade"
    )
}
