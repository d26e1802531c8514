#![allow(clippy::unwrap_used)]
//! Golden vectors: any change to bytes on the wire fails here. If a change
//! is intended, rerun with `E2EBK_BLESS=1` and review the diff in
//! `protocol-spec/vectors/`.

mod support;

use support::{samples, vectors as vectors_support};

use protocol_spec::backup::{BackupDecoder, BackupEncoder};
use protocol_spec::error::PasswordError;
use protocol_spec::ids::AccountId;
use protocol_spec::keys::StaticSecret;
use protocol_spec::keywrap;
use protocol_spec::noise::{Channel, Initiator, Responder};
use protocol_spec::password::Password;
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

const PAYLOAD_1: &[u8] = b"hello from initiator";
const PAYLOAD_2: &[u8] = b"hello from responder";
const PLAINTEXT_I2R: &[u8] = b"first transport frame, initiator to responder";
const PLAINTEXT_R2I: &[u8] = b"first transport frame, responder to initiator";

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
        let (m1, waiting) = init.write_first(PAYLOAD_1).unwrap();
        let first = resp.read_first(&m1).unwrap();
        assert_eq!(first.payload, PAYLOAD_1);
        let (m2, mut r_t) = first.state.write_response(PAYLOAD_2).unwrap();
        let (payload_2, mut i_t) = waiting.read_response(&m2).unwrap();
        assert_eq!(payload_2, PAYLOAD_2);
        let t1 = i_t.seal(PLAINTEXT_I2R).unwrap();
        let t2 = r_t.seal(PLAINTEXT_R2I).unwrap();
        assert_eq!(r_t.open(&t1, 100).unwrap(), PLAINTEXT_I2R);
        assert_eq!(i_t.open(&t2, 100).unwrap(), PLAINTEXT_R2I);
        actual.push((format!("{name}.initiator_static_private"), vec![0x11; 32]));
        actual.push((format!("{name}.responder_static_private"), vec![0x22; 32]));
        actual.push((format!("{name}.initiator_ephemeral_private"), ie.to_vec()));
        actual.push((format!("{name}.responder_ephemeral_private"), re.to_vec()));
        actual.push((format!("{name}.payload_1"), PAYLOAD_1.to_vec()));
        actual.push((format!("{name}.message_1"), m1));
        actual.push((format!("{name}.payload_2"), PAYLOAD_2.to_vec()));
        actual.push((format!("{name}.message_2"), m2));
        actual.push((
            format!("{name}.handshake_hash"),
            i_t.handshake_hash().to_vec(),
        ));
        actual.push((
            format!("{name}.plaintext_initiator_to_responder"),
            PLAINTEXT_I2R.to_vec(),
        ));
        actual.push((format!("{name}.transport_initiator_to_responder"), t1));
        actual.push((
            format!("{name}.plaintext_responder_to_initiator"),
            PLAINTEXT_R2I.to_vec(),
        ));
        actual.push((format!("{name}.transport_responder_to_initiator"), t2));
    }
    vectors_support::check(
        "noise.txt",
        "Noise handshakes with fixed keys. Static and ephemeral private keys are\n\
         listed; payload_1 and payload_2 are the handshake payloads (the ASCII\n\
         strings 'hello from initiator' and 'hello from responder'); each\n\
         transport_* is the sealed form of the plaintext_* listed before it (the\n\
         first transport message each way). The tunnel prologue binds account\n\
         +15551234567. Handshake messages start with the version byte 0x01.",
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

/// Password preparation (SPEC 7.8): inputs a client must prepare to the
/// listed bytes, and inputs it must refuse before any attempt is spent.
#[test]
fn password_preparation_vectors() {
    let prepared = [
        ("nfc", "caf\u{e9}"),
        ("nfd", "cafe\u{301}"),
        ("hangul_jamo", "\u{1100}\u{1161}\u{11a8}"),
        ("no_break_space", "correct\u{a0}horse"),
        (
            "every_non_ascii_space",
            "a\u{a0}\u{1680}\u{2000}\u{2001}\u{2002}\u{2003}\u{2004}\u{2005}\u{2006}\u{2007}\u{2008}\u{2009}\u{200a}\u{202f}\u{205f}\u{3000}b",
        ),
        ("spaces_kept_at_both_ends", " secret "),
        ("case_kept", "Secret"),
        ("fullwidth_kept", "\u{ff50}\u{ff41}\u{ff53}\u{ff53}"),
        ("compatibility_ligature_kept", "\u{fb01}le"),
        ("emoji_with_variation_selector", "I\u{2764}\u{fe0f}you"),
        ("emoji_with_skin_tone", "ok\u{1f44d}\u{1f3fd}"),
        (
            "emoji_zwj_sequence",
            "\u{1f468}\u{200d}\u{1f469}\u{200d}\u{1f467}",
        ),
        ("private_use_kept", "apple\u{f8ff}"),
    ];
    let refused = [
        ("line_break.lf", "secret\n"),
        ("line_break.cr", "sec\rret"),
        ("line_break.nel", "sec\u{85}ret"),
        ("line_break.line_separator", "sec\u{2028}ret"),
        ("line_break.paragraph_separator", "sec\u{2029}ret"),
        ("control.tab", "sec\tret"),
        ("control.nul", "sec\u{0}ret"),
        ("control.escape", "\u{1b}secret"),
        ("control.delete", "secret\u{7f}"),
        ("control.c1", "sec\u{9b}ret"),
        ("byte_order_mark.leading", "\u{feff}secret"),
    ];
    let mut actual = Vec::new();
    for (name, input) in prepared {
        let p = Password::prepare(input).unwrap();
        actual.push((format!("{name}.input"), input.as_bytes().to_vec()));
        actual.push((format!("{name}.prepared"), p.as_bytes().to_vec()));
    }
    assert_eq!(
        Password::prepare("caf\u{e9}").unwrap(),
        Password::prepare("cafe\u{301}").unwrap()
    );
    for (name, input) in refused {
        let e = Password::prepare(input).unwrap_err();
        let expected = if name.starts_with("line_break") {
            PasswordError::LineBreak
        } else if name.starts_with("control") {
            PasswordError::ControlCharacter
        } else {
            PasswordError::ByteOrderMark
        };
        assert_eq!(e, expected, "{name}");
        actual.push((format!("refused.{name}.input"), input.as_bytes().to_vec()));
    }
    vectors_support::check(
        "passwords.txt",
        "Password preparation (SPEC 7.8), all as UTF-8. NAME.input prepares to\n\
         NAME.prepared, the exact bytes OPAQUE takes as the password.\n\
         refused.REASON.CASE.input must be refused before anything is sent;\n\
         REASON is line_break, control or byte_order_mark. The empty password is\n\
         refused too (not listed: a vector value cannot be empty).",
        &actual,
    );
}

/// Hands out a seeded ChaCha20 stream and records every draw, so the test
/// can name the random values opaque-ke consumed (blinds, nonces, key
/// share seeds) the way RFC 9807's own vectors do.
struct RecordingRng {
    inner: rand_chacha::ChaCha20Rng,
    draws: Vec<Vec<u8>>,
}

impl RecordingRng {
    fn new(seed: u8) -> Self {
        use rand_core::SeedableRng;
        RecordingRng {
            inner: rand_chacha::ChaCha20Rng::from_seed([seed; 32]),
            draws: Vec::new(),
        }
    }

    /// The index of the one draw equal to `bytes`.
    fn position(&self, bytes: &[u8]) -> usize {
        let found: Vec<usize> = (0..self.draws.len())
            .filter(|&i| self.draws[i] == bytes)
            .collect();
        assert_eq!(found.len(), 1, "{} drawn once", hex::encode(bytes));
        found[0]
    }
}

impl rand_core::RngCore for RecordingRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.inner.fill_bytes(dest);
        self.draws.push(dest.to_vec());
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for RecordingRng {}

/// One registration and one login with the real E2EBK OPAQUE
/// configuration (SPEC 7.1 to 7.5) and fixed randomness, from the typed
/// password to the session key. The NFD spelling of the password registers
/// byte for byte like the NFC one.
#[test]
fn opaque_registration_and_login_with_fixed_randomness() {
    use curve25519_dalek::Scalar;
    use opaque_ke::{
        ClientLogin, ClientLoginFinishParameters, ClientRegistration,
        ClientRegistrationFinishParameters, ServerLogin, ServerLoginParameters, ServerRegistration,
        ServerSetup,
    };
    use protocol_spec::ids::FleetId;
    use protocol_spec::opaque::{self, Suite};

    let account = AccountId::new("+15551234567").unwrap();
    let fleet = FleetId::new("e2ebk-vectors").unwrap();
    let input_nfc = "caf\u{e9} au lait";
    let input_nfd = "cafe\u{301} au\u{a0}lait";
    let password = Password::prepare(input_nfc).unwrap();
    assert_eq!(Password::prepare(input_nfd).unwrap(), password);
    let ksf = opaque::ksf();
    let registration_nonce = [0x42u8; 32];
    let cred_id = opaque::credential_identifier(&account, &registration_nonce);
    let root = RootKey::from_entropy([0x5a; 30]);
    let wrap_nonce = [0x0bu8; 12];

    // The server: a ServerSetup made from a seeded generator.
    let mut setup_rng = RecordingRng::new(0x53);
    let setup = ServerSetup::<Suite>::new(&mut setup_rng);
    let setup_bytes = setup.serialize().to_vec();
    let oprf_seed = setup_bytes[..64].to_vec();
    let server_private_key = setup_bytes[64..96].to_vec();
    let server_public_key = setup.keypair().public().serialize().to_vec();
    assert_eq!(
        Scalar::from_bytes_mod_order_wide(&setup_rng.draws[0].clone().try_into().unwrap())
            .to_bytes()
            .to_vec(),
        server_private_key,
        "the server key is the first draw, reduced"
    );
    assert_eq!(setup_rng.draws[1], oprf_seed, "then the OPRF seed");

    let register = |input: &str| {
        let password = Password::prepare(input).unwrap();
        let mut rng = RecordingRng::new(0xc1);
        let start = ClientRegistration::<Suite>::start(&mut rng, password.as_bytes()).unwrap();
        let blind = start.state.serialize()[..32].to_vec();
        assert_eq!(
            Scalar::from_bytes_mod_order_wide(&rng.draws[0].clone().try_into().unwrap())
                .to_bytes()
                .to_vec(),
            blind,
            "the blind is the first draw, reduced"
        );
        let request = start.message.serialize().to_vec();
        let server = ServerRegistration::<Suite>::start(&setup, start.message, &cred_id).unwrap();
        let response = server.message.serialize().to_vec();
        let finish = start
            .state
            .finish(
                &mut rng,
                password.as_bytes(),
                server.message,
                ClientRegistrationFinishParameters::new(
                    opaque::identifiers(&account, &fleet),
                    Some(&ksf),
                ),
            )
            .unwrap();
        let upload = finish.message.serialize().to_vec();
        // Envelope = nonce (32) || auth tag (64), after client_public_key
        // (32) and masking_key (64).
        let envelope_nonce = upload[96..128].to_vec();
        assert_eq!(rng.draws[1], envelope_nonce, "then the envelope nonce");
        (
            blind,
            request,
            response,
            envelope_nonce,
            upload,
            finish.export_key.to_vec(),
            finish.message,
        )
    };
    let (blind_registration, request, response, envelope_nonce, upload, export_key, message) =
        register(input_nfc);
    let nfd = register(input_nfd);
    assert_eq!(
        (&nfd.1, &nfd.2, &nfd.4, &nfd.5),
        (&request, &response, &upload, &export_key),
        "the NFD spelling registers exactly like the NFC one"
    );
    let wrapped = keywrap::wrap(&export_key, &account, &root, wrap_nonce).unwrap();
    let record = ServerRegistration::<Suite>::finish(message);

    // Login.
    let mut client_rng = RecordingRng::new(0xc2);
    let start = ClientLogin::<Suite>::start(&mut client_rng, password.as_bytes()).unwrap();
    let state = start.state.serialize().to_vec();
    let blind_login = state[..32].to_vec();
    let ke1 = start.message.serialize().to_vec();
    // KE1 = blinded element (32) || client_nonce (32) || client_keyshare (32).
    let client_nonce = ke1[32..64].to_vec();
    let nonce_draw = client_rng.position(&client_nonce);
    let client_keyshare_seed = client_rng.draws[nonce_draw - 1].clone();
    assert_eq!(client_keyshare_seed.len(), 32);
    let params = ServerLoginParameters {
        context: Some(opaque::CONTEXT),
        identifiers: opaque::identifiers(&account, &fleet),
    };
    let mut server_rng = RecordingRng::new(0x5e);
    let server = ServerLogin::start(
        &mut server_rng,
        &setup,
        Some(record),
        start.message,
        &cred_id,
        params.clone(),
    )
    .unwrap();
    let ke2 = server.message.serialize().to_vec();
    // KE2 = evaluated element (32) || masking_nonce (32) || masked response
    // (128) || server_nonce (32) || server_keyshare (32) || server MAC (64).
    let masking_nonce = ke2[32..64].to_vec();
    server_rng.position(&masking_nonce);
    let server_nonce = ke2[192..224].to_vec();
    let server_nonce_draw = server_rng.position(&server_nonce);
    let server_keyshare_seed = server_rng.draws[server_nonce_draw - 1].clone();
    let finish = start
        .state
        .finish(
            &mut client_rng,
            password.as_bytes(),
            server.message,
            ClientLoginFinishParameters::new(
                Some(opaque::CONTEXT),
                opaque::identifiers(&account, &fleet),
                Some(&ksf),
            ),
        )
        .unwrap();
    let ke3 = finish.message.serialize().to_vec();
    assert_eq!(finish.export_key.to_vec(), export_key, "same export key");
    let server_done = server.state.finish(finish.message, params).unwrap();
    assert_eq!(server_done.session_key, finish.session_key);
    assert_eq!(
        keywrap::unwrap(&finish.export_key, &account, &wrapped).unwrap(),
        root
    );

    let fixed = |name: &str, bytes: &[u8]| (name.to_owned(), bytes.to_vec());
    vectors_support::check(
        "opaque.txt",
        "OPAQUE (RFC 9807) with the E2EBK v1 configuration (SPEC 7.1 to 7.5):\n\
         ristretto255-SHA512 OPRF, 3DH over ristretto255 with SHA-512, Argon2id\n\
         (v0x13, m = 19456 KiB, t = 2, p = 1, 64-byte output, 16 zero bytes of\n\
         salt), context 'E2EBK OPAQUE v1', client identity = account, server\n\
         identity = fleet id. password_input_nfc and password_input_nfd both\n\
         prepare (SPEC 7.8) to password_prepared and register identically.\n\
         Randomness, named as in RFC 9807 appendix C: blinds are scalars (the\n\
         reduction of 64 drawn bytes), *_keyshare_seed feeds\n\
         DeriveDiffieHellmanKeyPair. The server's setup (oprf_seed, key pair) was\n\
         drawn from a seeded generator. wrapped_key wraps root_key under\n\
         export_key with wrap_nonce (SPEC 7.5). Identities, context and the\n\
         credential identifier are ASCII or bytes as listed.",
        &[
            fixed("account", account.as_bytes()),
            fixed("fleet_id", fleet.as_str().as_bytes()),
            fixed("context", opaque::CONTEXT),
            fixed("password_input_nfc", input_nfc.as_bytes()),
            fixed("password_input_nfd", input_nfd.as_bytes()),
            fixed("password_prepared", password.as_bytes()),
            fixed("registration_nonce", &registration_nonce),
            fixed("credential_identifier", &cred_id),
            fixed("oprf_seed", &oprf_seed),
            fixed("server_private_key", &server_private_key),
            fixed("server_public_key", &server_public_key),
            fixed("blind_registration", &blind_registration),
            fixed("registration_request", &request),
            fixed("registration_response", &response),
            fixed("envelope_nonce", &envelope_nonce),
            fixed("registration_upload", &upload),
            fixed("export_key", &export_key),
            fixed("root_key", root.expose()),
            fixed("wrap_nonce", &wrap_nonce),
            fixed("wrapped_key", wrapped.as_bytes()),
            fixed("blind_login", &blind_login),
            fixed("client_keyshare_seed", &client_keyshare_seed),
            fixed("client_nonce", &client_nonce),
            fixed("ke1", &ke1),
            fixed("masking_nonce", &masking_nonce),
            fixed("server_keyshare_seed", &server_keyshare_seed),
            fixed("server_nonce", &server_nonce),
            fixed("ke2", &ke2),
            fixed("ke3", &ke3),
            fixed("session_key", &finish.session_key),
        ],
    );
}
