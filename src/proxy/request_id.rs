//! A request's id (data plane): `X-Request-Id` as the client sent it, when it is sane, or a new
//! one. The upstream gets it, the client gets it back, and the access record names the request
//! by it; a bare refusal written in place of hyper's ([`super::wire`]) carries a new one too.

use http::header::{HeaderName, HeaderValue};
use http::Request;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The client's request id if it sent a sane one (1 to 128 visible ASCII characters), a new
/// one otherwise.
pub fn of<B>(request: &Request<B>) -> HeaderValue {
    request
        .headers()
        .get(X_REQUEST_ID)
        .filter(|v| (1..=128).contains(&v.len()) && v.as_bytes().iter().all(|b| b.is_ascii_graphic()))
        .cloned()
        .unwrap_or_else(new)
}

/// 128 random bits in 32 lower-case hex digits.
pub fn new() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = rand::random::<u128>();
    let mut id = [0; 32];
    for (i, digit) in id.iter_mut().enumerate() {
        *digit = HEX[(bits >> (4 * (31 - i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&id).expect("hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_id(id: &str) -> Request<()> {
        Request::builder().header(X_REQUEST_ID, id).body(()).unwrap()
    }

    #[test]
    fn a_sane_client_id_is_kept_and_any_other_replaced() {
        assert_eq!(of(&with_id("abc-123")), "abc-123");
        let long = "a".repeat(129);
        for replaced in [long.as_str(), "with space", "tab\there"] {
            let id = of(&with_id(replaced));
            assert_ne!(id, replaced);
            assert_eq!(id.len(), 32, "{replaced:?}");
        }
        assert_eq!(of(&Request::new(())).len(), 32);
    }

    #[test]
    fn a_new_id_is_32_lower_case_hex_digits() {
        let id = new();
        assert!(
            id.as_bytes().iter().all(|b| b"0123456789abcdef".contains(b)),
            "{id:?}"
        );
        assert_ne!(new(), id);
    }
}
