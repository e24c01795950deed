//! A request's id (data plane): `X-Request-Id` as the client sent it, when it is sane, or a new
//! one. The upstream gets it, the client gets it back, and the access record names the request
//! by it; a bare refusal written in place of hyper's ([`super::wire`]) carries a new one too.

use std::cell::RefCell;

use http::header::{HeaderName, HeaderValue};
use http::Request;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

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

thread_local! {
    /// Each thread's generator of ids, seeded from the thread-local CSPRNG (itself seeded by
    /// the OS) when the thread makes its first id. Ids need to be unique, not secret: a
    /// xoshiro step is a few instructions, where `rand::rng()` adds a ChaCha block every 64
    /// words and its reseeding checks, on every request that brings no id.
    static IDS: RefCell<SmallRng> = RefCell::new(SmallRng::from_rng(&mut rand::rng()));
}

/// 128 random bits in 32 lower-case hex digits: as unlikely to repeat across threads, processes
/// and replicas as any two 128-bit draws, each thread's generator being seeded apart.
pub fn new() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = IDS.with_borrow_mut(|ids| ids.random::<u128>());
    let mut id = [0; 32];
    for (digits, byte) in id.chunks_exact_mut(2).zip(bits.to_be_bytes()) {
        digits[0] = HEX[usize::from(byte >> 4)];
        digits[1] = HEX[usize::from(byte & 0xf)];
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

    #[test]
    fn threads_draw_different_ids() {
        let here: Vec<_> = (0..4).map(|_| new()).collect();
        let there: Vec<_> = std::thread::spawn(|| (0..4).map(|_| new()).collect::<Vec<_>>())
            .join()
            .unwrap();
        assert!(here.iter().all(|id| !there.contains(id)), "{here:?} {there:?}");
    }
}
