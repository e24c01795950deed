//! Path normalization (step 0): never a panic, and normalizing is idempotent, so the path that
//! is routed and checked is the one that is forwarded.
#![no_main]

use keygate::proxy::path::{decode_segment, normalize};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(path) = text.parse::<http::uri::PathAndQuery>() else {
        return;
    };
    if let Ok(normal) = normalize(path.path()) {
        assert!(normal.starts_with('/'), "{normal:?}");
        assert_eq!(normalize(&normal).ok().as_deref(), Some(&*normal), "not idempotent");
        for segment in normal.split('/') {
            let _ = decode_segment(segment);
        }
    }
});
