//! Short strings kept inline (data plane): the key id and the customer id a looked-up key
//! carries, copied out of the table on each lookup without touching the heap.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// A string of up to `N` bytes kept inline, a longer one shared. `N` is under 256.
#[derive(Clone)]
pub enum Text<const N: usize> {
    Inline { len: u8, bytes: [u8; N] },
    Shared(Arc<str>),
}

/// A key's id: `key_` and 20 characters fit inline.
pub type KeyId = Text<30>;
/// A customer id: up to 22 bytes inline (24 bytes in all), a longer one shared.
pub type CustomerId = Text<22>;

impl<const N: usize> Text<N> {
    pub fn new(text: &str) -> Self {
        match u8::try_from(text.len()) {
            Ok(len) if text.len() <= N => {
                let mut bytes = [0; N];
                bytes[..text.len()].copy_from_slice(text.as_bytes());
                Text::Inline { len, bytes }
            }
            _ => Text::Shared(Arc::from(text)),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            // Copied from a `str` whole: always UTF-8 (the fallback is never taken).
            Text::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Text::Shared(text) => text,
        }
    }

    /// The text's bytes, without [`Text::as_str`]'s UTF-8 check (a hundred-odd instructions
    /// for a short id): for hashing, comparing and header values on the request path.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Text::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Text::Shared(text) => text.as_bytes(),
        }
    }
}

impl<const N: usize> Deref for Text<N> {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl<const N: usize> From<&str> for Text<N> {
    fn from(text: &str) -> Self {
        Text::new(text)
    }
}

impl<const N: usize> From<String> for Text<N> {
    fn from(text: String) -> Self {
        Text::new(&text)
    }
}

impl<const N: usize> PartialEq for Text<N> {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl<const N: usize> Eq for Text<N> {}

impl<const N: usize> fmt::Debug for Text<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl<const N: usize> fmt::Display for Text<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_texts_stay_inline_and_long_ones_are_shared() {
        let id = KeyId::new("key_0123456789abcdefghij");
        assert!(matches!(id, Text::Inline { len: 24, .. }));
        assert_eq!(&*id, "key_0123456789abcdefghij");
        let long = CustomerId::new("a-customer-id-longer-than-22");
        assert!(matches!(long, Text::Shared(_)));
        assert_eq!(long.as_str(), "a-customer-id-longer-than-22");
        assert_eq!(&*CustomerId::new(""), "");
        assert_eq!(id.as_bytes(), b"key_0123456789abcdefghij");
        assert_eq!(long.as_bytes(), b"a-customer-id-longer-than-22");
    }

    #[test]
    fn the_views_stay_small() {
        assert_eq!(std::mem::size_of::<CustomerId>(), 24);
        assert_eq!(std::mem::size_of::<KeyId>(), 32);
    }
}
