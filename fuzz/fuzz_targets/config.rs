//! Config parsing and validation (`keygate check`): any bytes give a config or problems with a
//! line, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(error) = keygate::config::parse(text, std::path::Path::new("/etc/keygate")) {
        assert!(!error.problems.is_empty());
        let _ = error.to_string();
    }
});
