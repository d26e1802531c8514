#![allow(clippy::unwrap_used)]
//! Property tests: every decoder refuses truncated, oversized and
//! trailing-garbage input with a typed error, and never panics on anything.

mod support;

use support::samples;

use proptest::prelude::*;
use protocol_spec::backup::{BackupDecoder, BackupEncoder};
use protocol_spec::ids::AccountId;
use protocol_spec::keys::StaticSecret;
use protocol_spec::messages::chatd::{ClientFrame, ClientHello, ServerFrame, ServerHello};
use protocol_spec::messages::link::{LinkFrame, LinkHello, LinkWelcome, VaultLinkFrame};
use protocol_spec::messages::vault::{TunnelHello, VaultHello, VaultRequest, VaultResponse};
use protocol_spec::messages::WireMessage;
use protocol_spec::noise::{Initiator, Responder};
use protocol_spec::root_key::RootKey;
use protocol_spec::Error;

/// Every message decoder, as "did it accept these bytes".
type Decoder = fn(&[u8]) -> Result<(), Error>;

fn decoders() -> Vec<(&'static str, Decoder)> {
    fn d<T: WireMessage>(b: &[u8]) -> Result<(), Error> {
        T::decode(b).map(|_| ())
    }
    vec![
        ("ClientHello", d::<ClientHello>),
        ("ServerHello", d::<ServerHello>),
        ("ClientFrame", d::<ClientFrame>),
        ("ServerFrame", d::<ServerFrame>),
        ("LinkHello", d::<LinkHello>),
        ("LinkWelcome", d::<LinkWelcome>),
        ("LinkFrame", d::<LinkFrame>),
        ("VaultLinkFrame", d::<VaultLinkFrame>),
        ("TunnelHello", d::<TunnelHello>),
        ("VaultHello", d::<VaultHello>),
        ("VaultRequest", d::<VaultRequest>),
        ("VaultResponse", d::<VaultResponse>),
    ]
}

#[test]
fn every_strict_prefix_is_refused() {
    for s in samples::all() {
        for cut in 0..s.encoded.len() {
            let r = (s.decode_matches)(&s.encoded[..cut]);
            assert!(
                matches!(r, Err(Error::Truncated)),
                "{} cut at {cut}: {r:?}",
                s.name
            );
        }
    }
}

#[test]
fn trailing_bytes_are_refused() {
    for s in samples::all() {
        for extra in [&[0u8][..], &[0x08, 0x01], &[0xff; 5]] {
            let mut b = s.encoded.clone();
            b.extend_from_slice(extra);
            let r = (s.decode_matches)(&b);
            assert!(matches!(r, Err(Error::TrailingBytes)), "{}: {r:?}", s.name);
        }
        // Extra protobuf fields inside the declared body (an unknown field
        // number 15, varint 1) are refused too.
        let mut b = s.encoded.clone();
        b.extend_from_slice(&[0x78, 0x01]);
        let len = u16::from_be_bytes([b[1], b[2]]) + 2;
        b[1..3].copy_from_slice(&len.to_be_bytes());
        let r = (s.decode_matches)(&b);
        assert!(
            matches!(r, Err(Error::TrailingBytes) | Err(Error::Malformed(_))),
            "{}: {r:?}",
            s.name
        );
    }
}

#[test]
fn non_canonical_encodings_are_refused() {
    // Found by the message_decoders fuzz target: a LinkWelcome whose `leader`
    // bool is the varint 32 and is written before `replica_id`. Same length
    // as the canonical form, different bytes.
    let b = [1, 0, 5, 0x10, 0x20, 0x0a, 0x01, 0x27];
    assert_eq!(LinkWelcome::decode(&b), Err(Error::NonCanonical));
    // A valid message, canonical, then the same fields reordered.
    let canonical = [1, 0, 7, 0x0a, 0x01, 0x27, 0x10, 0x01, 0x20, 0x01];
    let w = LinkWelcome::decode(&canonical).unwrap();
    assert_eq!(w.encode(), canonical);
    let reordered = [1, 0, 7, 0x20, 0x01, 0x0a, 0x01, 0x27, 0x10, 0x01];
    assert_eq!(LinkWelcome::decode(&reordered), Err(Error::NonCanonical));
    // An explicit default (ServerHello.enrolled_now = false written out).
    let mut hello = ServerHello {
        enrolled_now: false,
        max_frame_len: 1,
        max_tunnels: 1,
        idle_timeout_secs: 1,
    }
    .encode();
    hello.splice(3..3, [0x08, 0x00]);
    let len = (hello.len() - 3) as u16;
    hello[1..3].copy_from_slice(&len.to_be_bytes());
    assert_eq!(ServerHello::decode(&hello), Err(Error::TrailingBytes));
}

#[test]
fn oversize_and_unknown_versions_are_refused() {
    for s in samples::all() {
        let big = vec![1u8; s.max_len + 1];
        assert!(
            matches!((s.decode_matches)(&big), Err(Error::TooLarge { .. })),
            "{}",
            s.name
        );
        let mut v2 = s.encoded.clone();
        v2[0] = 2;
        assert_eq!(
            (s.decode_matches)(&v2).err(),
            Some(Error::UnsupportedVersion(2))
        );
    }
}

#[test]
fn largest_messages_fit_their_limits() {
    use protocol_spec::codes::TunnelCloseCode;
    use protocol_spec::ids::{EnrolmentCode, LinkTunnelId, TunnelId};
    use protocol_spec::limits::*;
    let long_account = AccountId::new("a".repeat(MAX_ACCOUNT_ID)).unwrap();
    let max_hello = ClientHello {
        account: long_account.clone(),
        enrolment_code: Some(EnrolmentCode::new("C".repeat(MAX_ENROLMENT_CODE)).unwrap()),
        client_software: "s".repeat(MAX_NAME),
    };
    assert!(max_hello.encode().len() <= MAX_HANDSHAKE_PAYLOAD);
    ClientHello::decode(&max_hello.encode()).unwrap();
    let welcome = LinkWelcome {
        replica_id: "r".repeat(MAX_NAME),
        leader: true,
        leader_hint: Some("h".repeat(MAX_LEADER_HINT)),
        max_tunnels: u32::MAX,
    };
    LinkWelcome::decode(&welcome.encode()).unwrap();
    let open = LinkFrame::Open {
        tunnel: LinkTunnelId::new(u64::MAX).unwrap(),
        account: long_account,
        handshake: vec![0xff; MAX_TUNNEL_PAYLOAD],
    };
    assert!(open.encode().len() <= MAX_FRAME);
    LinkFrame::decode(&open.encode()).unwrap();
    let data = ClientFrame::TunnelData {
        tunnel: TunnelId::new(u32::MAX).unwrap(),
        payload: vec![0xff; MAX_TUNNEL_PAYLOAD],
    };
    assert!(data.encode().len() <= MAX_FRAME);
    let close = ServerFrame::TunnelClose {
        tunnel: TunnelId::new(u32::MAX).unwrap(),
        code: TunnelCloseCode::InternalError,
    };
    ServerFrame::decode(&close.encode()).unwrap();
    // Every vault message sealed fits a tunnel payload; every tunnel
    // handshake message fits too.
    for s in samples::all() {
        assert!(s.encoded.len() <= s.max_len, "{}", s.name);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn message_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        for (_, decode) in decoders() {
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn message_decoders_never_panic_on_plausible_frames(
        body in proptest::collection::vec(any::<u8>(), 0..300)
    ) {
        // Right version and length, random protobuf: exercises the body
        // validation rather than the header checks.
        let mut b = vec![1u8];
        b.extend_from_slice(&(body.len() as u16).to_be_bytes());
        b.extend_from_slice(&body);
        for (_, decode) in decoders() {
            let _ = decode(&b);
        }
    }

    #[test]
    fn mutated_samples_never_panic(idx in any::<usize>(), pos in any::<usize>(), xor in 1u8..=255) {
        let samples = samples::all();
        let s = &samples[idx % samples.len()];
        let mut b = s.encoded.clone();
        let p = pos % b.len();
        b[p] ^= xor;
        let _ = (s.decode_matches)(&b);
    }

    #[test]
    fn handshake_readers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
        let k = StaticSecret::from_bytes([1; 32]);
        let a = AccountId::new("a").unwrap();
        let _ = Responder::client_chatd(&k).unwrap().read_first(&bytes);
        let _ = Responder::link(&k, &k.public_key()).unwrap().read_first(&bytes);
        let _ = Responder::tunnel(&k, &a).unwrap().read_first(&bytes);
        let (_, waiting) = Initiator::tunnel(&k.public_key(), &a).unwrap().write_first(b"").unwrap();
        let _ = waiting.read_response(&bytes);
    }

    #[test]
    fn transport_open_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
        let k = StaticSecret::from_bytes([1; 32]);
        let a = AccountId::new("a").unwrap();
        let (m1, w) = Initiator::tunnel(&k.public_key(), &a).unwrap().write_first(b"").unwrap();
        let first = Responder::tunnel(&k, &a).unwrap().read_first(&m1).unwrap();
        let (m2, mut server) = first.state.write_response(b"").unwrap();
        let (_, _client) = w.read_response(&m2).unwrap();
        prop_assert!(server.open(&bytes, 4096).is_err());
    }

    #[test]
    fn root_key_parser_never_panics(s in ".{0,120}") {
        let _ = RootKey::parse_text(&s);
    }

    #[test]
    fn backup_decoder_never_panics_and_refuses_any_single_byte_change(
        len in 0usize..9000,
        pos in any::<usize>(),
        xor in 1u8..=255,
        step in 1usize..5000,
    ) {
        let root = RootKey::from_entropy([3; 30]);
        let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let mut enc = BackupEncoder::new(&root, [4; 32], 12).unwrap();
        let mut backup = Vec::new();
        enc.update(&data, &mut backup).unwrap();
        enc.finish(&mut backup).unwrap();
        let p = pos % backup.len();
        backup[p] ^= xor;
        let mut dec = BackupDecoder::new(&root);
        let mut out = Vec::new();
        let mut result = Ok(());
        for piece in backup.chunks(step) {
            result = dec.update(piece, &mut out);
            if result.is_err() { break; }
        }
        if result.is_ok() {
            result = dec.finish(&mut out);
        }
        prop_assert!(result.is_err(), "byte {} changed but the backup still decrypted", p);
    }

    #[test]
    fn backup_decoder_never_panics_on_noise(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let root = RootKey::from_entropy([3; 30]);
        let mut dec = BackupDecoder::new(&root);
        let mut out = Vec::new();
        if dec.update(&bytes, &mut out).is_ok() {
            prop_assert!(dec.finish(&mut out).is_err());
        }
    }

    #[test]
    fn backup_truncation_is_always_refused(len in 0usize..9000, cut_frac in 0.0f64..1.0) {
        let root = RootKey::from_entropy([3; 30]);
        let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let mut enc = BackupEncoder::new(&root, [4; 32], 12).unwrap();
        let mut backup = Vec::new();
        enc.update(&data, &mut backup).unwrap();
        enc.finish(&mut backup).unwrap();
        let cut = ((backup.len() as f64) * cut_frac) as usize;
        let mut dec = BackupDecoder::new(&root);
        let mut out = Vec::new();
        let r = dec.update(&backup[..cut], &mut out).and_then(|_| dec.finish(&mut out));
        prop_assert!(r.is_err());
    }
}
