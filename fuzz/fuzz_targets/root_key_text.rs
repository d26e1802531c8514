//! The 64-digit key parser on arbitrary text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol_spec::root_key::RootKey;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(k) = RootKey::parse_text(s) {
            assert_eq!(RootKey::parse_text(&k.to_text()).unwrap(), k);
        }
    }
});
