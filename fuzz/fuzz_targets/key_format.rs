//! The key-format check: never a panic; a key it accepts is one the store could hold (a
//! generated key of the characters keys use, or a printable imported one of 16 to 256 bytes).
#![no_main]

use keygate::core::secret::{check_format, Format};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match check_format(data) {
        Format::Generated(_) => {
            assert!(data.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_'));
        }
        Format::Imported => {
            assert!((16..=256).contains(&data.len()));
            assert!(data.iter().all(u8::is_ascii_graphic));
        }
        Format::Malformed => {}
    }
});
