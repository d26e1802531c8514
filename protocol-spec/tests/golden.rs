#![allow(clippy::unwrap_used)]
//! Golden vectors: any change to bytes on the wire fails here. If a change
//! is intended, rerun with `E2EBK_BLESS=1` and review the diff in
//! `protocol-spec/vectors/`.

mod support;

use support::{samples, vectors as vectors_support};

use protocol_spec::backup::{BackupDecoder, BackupEncoder};
use protocol_spec::ids::AccountId;
use protocol_spec::keys::StaticSecret;
use protocol_spec::keywrap;
use protocol_spec::noise::{Channel, Initiator, Responder};
use protocol_spec::root_key::RootKey;

#[test]
fn every_message_matches_its_golden_bytes_and_round_trips() {
    let samples = samples::all();
    let actual: Vec<(String, Vec<u8>)> = samples
        .iter()
        .map(|s| (s.name.clone(), s.encoded.clone()))
        .collect();
    vectors_support::check(
        "messages.txt",
        "Encoded frames (version byte, u16 body length, protobuf body) of one sample\n\
         of every message type. Produced by protocol-spec/tests/samples.rs.",
        &actual,
    );
    // Decode the checked-in bytes, not just our own encoding.
    let golden = vectors_support::load("messages.txt");
    for s in &samples {
        let bytes = &golden[&s.name];
        assert!(
            (s.decode_matches)(bytes).unwrap(),
            "{} did not round-trip",
            s.name
        );
    }
}

fn key(seed: u8) -> StaticSecret {
    StaticSecret::from_bytes([seed; 32])
}

/// One full handshake and one transport frame each way with fixed static
/// and ephemeral keys, for each channel.
#[test]
fn noise_handshakes_with_fixed_keys() {
    let account = AccountId::new("+15551234567").unwrap();
    let mut actual = Vec::new();
    for (name, channel) in [
        ("ik_client_chatd", Channel::ClientChatd),
        ("kk_link", Channel::Link),
        ("nk_tunnel", Channel::Tunnel),
        ("kk_peer", Channel::Peer),
        ("kk_control", Channel::Control),
    ] {
        let initiator_static = key(0x11);
        let responder_static = key(0x22);
        let ie = [0x33u8; 32];
        let re = [0x44u8; 32];
        let (i_local, r_remote, acct) = match channel {
            Channel::ClientChatd => (Some(&initiator_static), None, None),
            Channel::Link | Channel::Peer | Channel::Control => (
                Some(&initiator_static),
                Some(initiator_static.public_key()),
                None,
            ),
            Channel::Tunnel => (None, None, Some(&account)),
        };
        let init = Initiator::for_test_vectors(
            channel,
            i_local,
            &responder_static.public_key(),
            acct,
            &ie,
        )
        .unwrap();
        let resp =
            Responder::for_test_vectors(channel, &responder_static, r_remote.as_ref(), acct, &re)
                .unwrap();
        let (m1, waiting) = init.write_first(b"hello from initiator").unwrap();
        let first = resp.read_first(&m1).unwrap();
        let (m2, mut r_t) = first.state.write_response(b"hello from responder").unwrap();
        let (_, mut i_t) = waiting.read_response(&m2).unwrap();
        let t1 = i_t
            .seal(b"first transport frame, initiator to responder")
            .unwrap();
        let t2 = r_t
            .seal(b"first transport frame, responder to initiator")
            .unwrap();
        assert_eq!(
            r_t.open(&t1, 100).unwrap(),
            b"first transport frame, initiator to responder"
        );
        assert_eq!(
            i_t.open(&t2, 100).unwrap(),
            b"first transport frame, responder to initiator"
        );
        actual.push((format!("{name}.initiator_static_private"), vec![0x11; 32]));
        actual.push((format!("{name}.responder_static_private"), vec![0x22; 32]));
        actual.push((format!("{name}.initiator_ephemeral_private"), ie.to_vec()));
        actual.push((format!("{name}.responder_ephemeral_private"), re.to_vec()));
        actual.push((format!("{name}.message_1"), m1));
        actual.push((format!("{name}.message_2"), m2));
        actual.push((
            format!("{name}.handshake_hash"),
            i_t.handshake_hash().to_vec(),
        ));
        actual.push((format!("{name}.transport_initiator_to_responder"), t1));
        actual.push((format!("{name}.transport_responder_to_initiator"), t2));
    }
    vectors_support::check(
        "noise.txt",
        "Noise handshakes with fixed keys. Static and ephemeral private keys are\n\
         listed; payloads are the ASCII strings 'hello from initiator' and\n\
         'hello from responder'; the tunnel prologue binds account +15551234567.\n\
         Handshake messages start with the version byte 0x01.",
        &actual,
    );
}

#[test]
fn backup_file_with_fixed_key_and_salt() {
    let root = RootKey::from_entropy([0x5a; 30]);
    let salt = [0xa5u8; 32];
    let plaintext: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let mut enc = BackupEncoder::new(&root, salt, 12).unwrap();
    let mut backup = Vec::new();
    enc.update(&plaintext, &mut backup).unwrap();
    enc.finish(&mut backup).unwrap();

    let mut dec = BackupDecoder::new(&root);
    let mut out = Vec::new();
    dec.update(&backup, &mut out).unwrap();
    dec.finish(&mut out).unwrap();
    assert_eq!(out, plaintext);

    vectors_support::check(
        "backup_v1.txt",
        "Backup format v1: K = 30 bytes 0x5a + check value, salt = 32 bytes 0xa5,\n\
         chunk_log2 = 12 (4096-byte chunks), plaintext = bytes i % 251 for\n\
         i in 0..10000 (three chunks, the last one short).",
        &[
            ("root_key".into(), root.expose().to_vec()),
            ("backup".into(), backup),
        ],
    );
}

#[test]
fn wrapped_key_and_root_key_text() {
    let root = RootKey::from_entropy([0x5a; 30]);
    let account = AccountId::new("+15551234567").unwrap();
    let export_key = [0x77u8; 64];
    let wrapped = keywrap::wrap(&export_key, &account, &root, [0x01; 12]).unwrap();
    assert_eq!(
        keywrap::unwrap(&export_key, &account, &wrapped).unwrap(),
        root
    );
    let text = root.to_text();
    assert_eq!(RootKey::parse_text(&text).unwrap(), root);
    vectors_support::check(
        "keys.txt",
        "wrapped_K for export_key = 64 bytes 0x77, account +15551234567,\n\
         nonce = 12 bytes 0x01, K as below; root_key_text is K's 64-digit form\n\
         as ASCII.",
        &[
            ("root_key".into(), root.expose().to_vec()),
            ("wrapped_key".into(), wrapped.as_bytes().to_vec()),
            ("root_key_text".into(), text.as_bytes().to_vec()),
        ],
    );
}
