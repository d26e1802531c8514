//! A genuine backup file, tampered with as the input says (bytes flipped,
//! inserted or deleted, the file cut short or grown, chunks swapped,
//! duplicated or dropped), then decoded in pieces of fuzzer-chosen size.
//! Whatever the damage, the decoder only ever releases a prefix of the
//! original plaintext, and it finishes successfully only on a file whose
//! bytes are exactly the genuine ones.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol_spec::backup::{BackupDecoder, BackupEncoder, HEADER_LEN, MIN_CHUNK_LOG2, TAG_LEN};
use protocol_spec::root_key::RootKey;

/// The smallest chunk the format allows, so a short input spans chunks.
const CHUNK_LOG2: u8 = MIN_CHUNK_LOG2;

fn genuine(len: usize) -> (Vec<u8>, Vec<u8>) {
    let root = RootKey::from_entropy([7; 30]);
    let plain: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
    let mut enc = BackupEncoder::new(&root, [9; 32], CHUNK_LOG2).unwrap();
    let mut file = Vec::new();
    enc.update(&plain, &mut file).unwrap();
    enc.finish(&mut file).unwrap();
    (plain, file)
}

fuzz_target!(|data: &[u8]| {
    let [a, b, step, rest @ ..] = data else {
        return;
    };
    let chunk = 1usize << CHUNK_LOG2;
    let len = usize::from(u16::from_le_bytes([*a, *b])) % (3 * chunk + 100);
    let (plain, original) = genuine(len);
    let mut file = original.clone();
    // Edits of four bytes each: what, where (two bytes), and a value.
    for e in rest.chunks_exact(4) {
        if file.is_empty() {
            break;
        }
        let at = usize::from(u16::from_le_bytes([e[1], e[2]])) % file.len();
        let sealed_chunk = chunk + TAG_LEN;
        match e[0] % 8 {
            0 => file[at] ^= e[3] | 1,
            1 => file.truncate(at),
            2 => file.insert(at, e[3]),
            3 => {
                file.remove(at);
            }
            4 => file.extend_from_slice(&original[at.min(original.len())..]),
            // Whole sealed chunks, counted from the header's end.
            5..=7 if file.len() > HEADER_LEN => {
                let chunks = (file.len() - HEADER_LEN).div_ceil(sealed_chunk);
                let i = at % chunks;
                let j = usize::from(e[3]) % chunks;
                let range = |k: usize| {
                    HEADER_LEN + k * sealed_chunk
                        ..(HEADER_LEN + (k + 1) * sealed_chunk).min(file.len())
                };
                let (ri, rj) = (range(i), range(j));
                let (ci, cj) = (file[ri.clone()].to_vec(), file[rj.clone()].to_vec());
                match e[0] % 8 {
                    5 if i != j && ci.len() == cj.len() => {
                        file[ri].copy_from_slice(&cj);
                        file[rj].copy_from_slice(&ci);
                    }
                    6 => {
                        let end = ri.end;
                        file.splice(end..end, ci);
                    }
                    _ => {
                        file.drain(ri);
                    }
                }
            }
            _ => {}
        }
    }
    let root = RootKey::from_entropy([7; 30]);
    let mut dec = BackupDecoder::new(&root);
    let mut out = Vec::new();
    let step = usize::from(*step).max(1) * 13;
    let mut failed = false;
    for piece in file.chunks(step) {
        if dec.update(piece, &mut out).is_err() {
            failed = true;
            break;
        }
        assert!(
            plain.starts_with(&out),
            "released bytes that are not the original's"
        );
    }
    if !failed {
        failed = dec.finish(&mut out).is_err();
    }
    assert!(
        plain.starts_with(&out),
        "released bytes that are not the original's"
    );
    if !failed {
        assert_eq!(file, original, "a tampered file decoded");
        assert_eq!(out, plain);
    }
});
