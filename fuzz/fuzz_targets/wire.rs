//! The HTTP/1 framing scanner (src/proxy/wire.rs) reads every byte a client sends: never a
//! panic, and what it finds does not depend on how the bytes are cut into reads. Also hyper's
//! bare-refusal rewriter on the write side, on any bytes.
#![no_main]

use keygate::proxy::{bare, wire};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let whole = wire::scan([stream]);
    // Cut where the seed says: piece sizes 1 to 16, cycling through the seed's bits.
    let mut pieces = Vec::new();
    let mut rest = stream;
    let mut bits = u32::from(seed) | 0x100;
    while !rest.is_empty() {
        let size = ((bits & 0xf) as usize + 1).min(rest.len());
        bits = bits.rotate_right(3);
        let (piece, after) = rest.split_at(size);
        pieces.push(piece);
        rest = after;
    }
    assert_eq!(wire::scan(pieces), whole, "depends on where the reads are cut");
    let _ = bare::answer(stream, || "id".to_owned());
});
