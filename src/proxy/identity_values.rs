//! The values of the identity headers the upstream gets (`X-Keygate-Key-Id`,
//! `X-Keygate-Customer`), kept per thread (data plane).
//!
//! A key's id written as a `HeaderValue` is a check of every byte and an allocation, freed once
//! the request is sent: on every admitted request, for a value that hardly ever changes. Each
//! worker thread keeps the last value it made in a slot chosen by the key's sequence number,
//! and hands out a clone (a reference count) while the slot still holds the same text. The
//! text is compared every time, so a slot another key took, or a key whose id or customer
//! changed, gets a fresh value: the cache can be wrong about nothing, only miss. The key table
//! holds no header values (it stays as small as it is).

use std::cell::RefCell;

use http::header::HeaderValue;

/// Slots per thread and per header: a few kilobytes a thread.
const SLOTS: usize = 64;

type Slots = [Option<HeaderValue>; SLOTS];

thread_local! {
    static KEY_IDS: RefCell<Slots> = const { RefCell::new([const { None }; SLOTS]) };
    static CUSTOMERS: RefCell<Slots> = const { RefCell::new([const { None }; SLOTS]) };
}

/// Key `seq`'s id as a header value; `None` if it cannot be one.
pub fn key_id(seq: u64, id: &[u8]) -> Option<HeaderValue> {
    KEY_IDS.with_borrow_mut(|slots| cached(slots, seq, id))
}

/// The customer id of key `seq` as a header value; `None` if it cannot be one.
pub fn customer(seq: u64, id: &[u8]) -> Option<HeaderValue> {
    CUSTOMERS.with_borrow_mut(|slots| cached(slots, seq, id))
}

/// `text` is the id's bytes ([`crate::proxy::table::Text::as_bytes`]): compared and made a
/// header value as bytes, so no request pays for a UTF-8 check of an id.
fn cached(slots: &mut Slots, seq: u64, text: &[u8]) -> Option<HeaderValue> {
    // The remainder is below SLOTS: the cast cannot truncate.
    let slot = &mut slots[(seq % SLOTS as u64) as usize];
    if let Some(value) = slot.as_ref().filter(|value| value.as_bytes() == text) {
        return Some(value.clone());
    }
    let value = HeaderValue::from_bytes(text).ok()?;
    *slot = Some(value.clone());
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_always_the_text_asked_for_whoever_held_the_slot() {
        assert_eq!(key_id(1, b"key_a").unwrap(), "key_a");
        assert_eq!(key_id(1, b"key_a").unwrap(), "key_a");
        // The same slot: another key (1 + SLOTS), then key 1 with a changed id.
        assert_eq!(key_id(1 + SLOTS as u64, b"key_b").unwrap(), "key_b");
        assert_eq!(key_id(1, b"key_c").unwrap(), "key_c");
        assert_eq!(customer(1, b"acme").unwrap(), "acme");
        assert_eq!(key_id(1, b"key_c").unwrap(), "key_c");
    }

    #[test]
    fn text_that_cannot_be_a_header_value_is_none_and_not_kept() {
        assert_eq!(customer(2, b"bad\nid"), None);
        assert_eq!(customer(2, b"ok").unwrap(), "ok");
        assert_eq!(customer(2, b"bad\rid"), None);
    }
}
