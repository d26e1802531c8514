//! The streaming backup decoder on arbitrary input split at arbitrary
//! points: no panic, bounded memory, and random bytes never decrypt.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol_spec::backup::{BackupDecoder, BackupEncoder};
use protocol_spec::root_key::RootKey;

fuzz_target!(|data: &[u8]| {
    let root = RootKey::from_entropy([7; 30]);
    let (step, body) = match data.split_first() {
        Some((s, rest)) => ((*s as usize).max(1) * 37, rest),
        None => (1, data),
    };
    // Half the runs start from a genuine header so chunk parsing is reached.
    let mut input = Vec::new();
    if step % 2 == 0 {
        let mut enc = BackupEncoder::new(&root, [9; 32], 12).unwrap();
        let mut genuine = Vec::new();
        enc.update(b"", &mut genuine).unwrap();
        input.extend_from_slice(&genuine[..60]);
    }
    input.extend_from_slice(body);
    let mut dec = BackupDecoder::new(&root);
    let mut out = Vec::new();
    for piece in input.chunks(step) {
        if dec.update(piece, &mut out).is_err() {
            return;
        }
    }
    assert!(dec.finish(&mut out).is_err(), "random bytes decrypted");
});
