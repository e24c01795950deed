//! A request's id (data plane): `X-Request-Id` as the client sent it, when it is sane, or a new
//! one. The upstream gets it, the client gets it back, and the access record names the request
//! by it; a bare refusal written in place of hyper's ([`super::wire`]) carries a new one too.

use std::cell::RefCell;

use bytes::BytesMut;
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

/// Each byte's two lower-case hex digits: one lookup a byte instead of two shifts and lookups.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        pairs[byte] = [HEX[byte >> 4], HEX[byte & 0xf]];
        byte += 1;
    }
    pairs
};

/// Ids made from one buffer before the next: one allocation for this many requests.
const IDS_PER_BUFFER: usize = 64;

/// Each thread's generator of ids and the buffer its ids are cut from.
struct Ids {
    rng: SmallRng,
    buffer: BytesMut,
}

thread_local! {
    /// Seeded from the thread-local CSPRNG (itself seeded by the OS) when the thread makes its
    /// first id. Ids need to be unique, not secret: a xoshiro step is a few instructions, where
    /// `rand::rng()` adds a ChaCha block every 64 words and its reseeding checks, on every
    /// request that brings no id.
    static IDS: RefCell<Ids> = RefCell::new(Ids {
        rng: SmallRng::from_rng(&mut rand::rng()),
        buffer: BytesMut::new(),
    });
}

/// 128 random bits in 32 lower-case hex digits: as unlikely to repeat across threads, processes
/// and replicas as any two 128-bit draws, each thread's generator being seeded apart. Cut from
/// a buffer shared by [`IDS_PER_BUFFER`] ids, so an id costs a reference count, not an
/// allocation of its own.
pub fn new() -> HeaderValue {
    IDS.with_borrow_mut(|ids| {
        let bits = ids.rng.random::<u128>();
        let mut id = [0; 32];
        for (digits, byte) in id.chunks_exact_mut(2).zip(bits.to_be_bytes()) {
            digits.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
        }
        if ids.buffer.capacity() < id.len() {
            ids.buffer = BytesMut::with_capacity(id.len() * IDS_PER_BUFFER);
        }
        ids.buffer.extend_from_slice(&id);
        HeaderValue::from_maybe_shared(ids.buffer.split().freeze()).expect("hex is a valid header value")
    })
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
    fn ids_cut_from_one_buffer_and_past_it_are_whole_and_distinct() {
        let ids: Vec<_> = (0..IDS_PER_BUFFER * 2 + 3).map(|_| new()).collect();
        for id in &ids {
            assert_eq!(id.len(), 32, "{id:?}");
        }
        let distinct: std::collections::HashSet<_> = ids.iter().map(|id| id.as_bytes()).collect();
        assert_eq!(distinct.len(), ids.len());
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
