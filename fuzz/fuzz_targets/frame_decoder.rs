//! Sealed-frame decoding on an established Noise transport: chunk splitting,
//! size limits and decryption must refuse anything random without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol_spec::ids::AccountId;
use protocol_spec::keys::StaticSecret;
use protocol_spec::noise::{Initiator, Responder};

fuzz_target!(|data: &[u8]| {
    let key = StaticSecret::from_bytes([1; 32]);
    let account = AccountId::new("fuzz").unwrap();
    let (m1, waiting) = Initiator::tunnel(&key.public_key(), &account)
        .unwrap()
        .write_first(b"")
        .unwrap();
    let first = Responder::tunnel(&key, &account)
        .unwrap()
        .read_first(&m1)
        .unwrap();
    let (m2, mut server) = first.state.write_response(b"").unwrap();
    let (_, mut client) = waiting.read_response(&m2).unwrap();
    // The first bytes pick the size limit; the rest is the sealed frame.
    let (limit, frame) = match data.split_first() {
        Some((l, rest)) => ((*l as usize) * 512, rest),
        None => (0, data),
    };
    // A genuine frame round-trips...
    let sealed = client.seal(frame).unwrap();
    assert_eq!(server.open(&sealed, frame.len()).unwrap(), frame);
    // ...and random bytes in its place never open (and poison the session).
    assert!(server.open(frame, limit).is_err());
    assert!(server.seal(b"after a failure").is_err());
});
