//! First and second handshake messages of all three channels.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol_spec::ids::AccountId;
use protocol_spec::keys::StaticSecret;
use protocol_spec::noise::{Initiator, Responder};

fuzz_target!(|data: &[u8]| {
    let key = StaticSecret::from_bytes([1; 32]);
    let account = AccountId::new("fuzz").unwrap();
    let _ = Responder::client_chatd(&key).unwrap().read_first(data);
    let _ = Responder::link(&key, &key.public_key())
        .unwrap()
        .read_first(data);
    let _ = Responder::tunnel(&key, &account).unwrap().read_first(data);
    let (_, waiting) = Initiator::client_chatd(&key, &key.public_key())
        .unwrap()
        .write_first(b"")
        .unwrap();
    let _ = waiting.read_response(data);
});
