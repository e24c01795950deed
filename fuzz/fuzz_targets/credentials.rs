//! The credential parser (step 2) on any Authorization / X-API-Key bytes: never a panic, and a
//! key it finds is a slice of at most 1024 bytes.
#![no_main]

use http::header::{HeaderMap, HeaderName, HeaderValue};
use keygate::proxy::credentials::{extract, DecodeBuf, Schemes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the schemes and how the rest splits into header values.
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let schemes = Schemes {
        basic: control & 1 != 0,
        bearer: control & 2 != 0,
        header: (control & 4 != 0).then(|| HeaderName::from_static("x-api-key")),
    };
    let mut headers = HeaderMap::new();
    for (i, part) in rest.split(|&b| b == b'\n').enumerate() {
        let Ok(value) = HeaderValue::from_bytes(part) else {
            continue;
        };
        let name = if (usize::from(control >> 3) + i) % 2 == 0 { "authorization" } else { "x-api-key" };
        headers.append(name, value);
    }
    let mut buf: DecodeBuf = [0; 1024];
    if let Ok((key, _)) = extract(&headers, &schemes, &mut buf) {
        assert!(key.len() <= 1024);
    }
});
