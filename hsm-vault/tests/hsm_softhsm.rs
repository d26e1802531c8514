//! The PKCS#11 layer against a real SoftHSM2. Every test makes its own
//! SoftHSM configuration and activates it before anything loads the module:
//! SoftHSM reads its configuration once per process (nextest gives each
//! test its own process).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use hsm_vault::config::HsmConfig;
use hsm_vault::hsm::{
    approve_import, export_master_key, import_master_key, import_request, init_master_key,
    lock_export, Hsm, ImportRequest, WrappedMasterKey,
};
use hsm_vault::seal::{random_iv, Sealer, SEAL_OVERHEAD};
use hsm_vault::Error;
use testkit::softhsm::{module_path, SoftHsm, Token};

const KEY: &str = "e2ebk-master-v1";

fn config(token: &Token) -> HsmConfig {
    HsmConfig {
        module: module_path(),
        token_label: token.label.clone(),
        key_label: KEY.into(),
        pin_file: None,
        so_pin_file: None,
        sessions: 2,
        require_hardware: false,
    }
}

/// One token, activated for this process.
fn one_token() -> (SoftHsm, Token, HsmConfig) {
    let softhsm = SoftHsm::new();
    let token = softhsm.init_token("vault-a");
    softhsm.activate();
    let cfg = config(&token);
    (softhsm, token, cfg)
}

/// One token with a master key, opened.
fn vault() -> (SoftHsm, Token, Hsm) {
    let (softhsm, token, cfg) = one_token();
    init_master_key(&cfg, &token.pin, false).unwrap();
    let hsm = Hsm::open(&cfg, &token.pin).unwrap();
    (softhsm, token, hsm)
}

/// A logged-in session through cryptoki directly, beside the vault's own
/// (the library is already initialised in this process).
fn raw_session(token: &Token) -> Session {
    let ctx = Pkcs11::new(module_path()).unwrap();
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => panic!("C_Initialize: {e}"),
    }
    let slot = ctx
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim() == token.label)
        .unwrap();
    let session = ctx.open_rw_session(slot).unwrap();
    match session.login(UserType::User, Some(&AuthPin::from(token.pin.as_str()))) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("C_Login: {e}"),
    }
    session
}

fn find(session: &Session, class: ObjectClass, label: &str) -> Vec<ObjectHandle> {
    session
        .find_objects(&[
            Attribute::Class(class),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .unwrap()
}

fn assert_integrity<T: std::fmt::Debug>(r: Result<T, Error>) {
    assert!(matches!(r, Err(Error::Integrity)), "{r:?}");
}

fn assert_ceremony<T: std::fmt::Debug>(r: Result<T, Error>, needle: &str) {
    match r {
        Err(Error::Ceremony(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
        other => panic!("expected a ceremony error about {needle:?}, got {other:?}"),
    }
}

// --- opening the token -------------------------------------------------------

#[test]
fn wrong_pin_is_refused() {
    let (_softhsm, token, cfg) = one_token();
    init_master_key(&cfg, &token.pin, false).unwrap();
    let err = Hsm::open(&cfg, "not-the-pin").unwrap_err();
    assert!(
        matches!(&err, Error::WrongPin(l) if l == "vault-a"),
        "{err:?}"
    );
    assert!(!err.to_string().contains("not-the-pin"));
    assert!(matches!(
        init_master_key(&cfg, "not-the-pin", false),
        Err(Error::WrongPin(_))
    ));
    // The right PIN still works afterwards.
    Hsm::open(&cfg, &token.pin).unwrap();
}

#[test]
fn unknown_token_label_is_token_not_found() {
    let (_softhsm, token, mut cfg) = one_token();
    cfg.token_label = "no-such-token".into();
    let err = Hsm::open(&cfg, &token.pin).unwrap_err();
    assert!(
        matches!(&err, Error::TokenNotFound(l) if l == "no-such-token"),
        "{err:?}"
    );
}

#[test]
fn missing_or_bogus_module_is_hsm_module() {
    let (softhsm, token, mut cfg) = one_token();
    cfg.module = softhsm.dir().join("no-such-pkcs11.so");
    let err = Hsm::open(&cfg, &token.pin).unwrap_err();
    assert!(
        matches!(&err, Error::HsmModule { reason, .. } if reason.contains("no such file")),
        "{err:?}"
    );
    // A file that is not a shared library.
    cfg.module = softhsm.conf().to_path_buf();
    let err = init_master_key(&cfg, &token.pin, false).unwrap_err();
    assert!(
        matches!(&err, Error::HsmModule { reason, .. } if reason.contains("not a loadable library")),
        "{err:?}"
    );
}

#[test]
fn open_without_master_key_is_master_key_missing() {
    let (_softhsm, token, cfg) = one_token();
    let err = Hsm::open(&cfg, &token.pin).unwrap_err();
    assert!(
        matches!(&err, Error::MasterKeyMissing(l) if l == KEY),
        "{err:?}"
    );
}

#[test]
fn init_twice_is_master_key_exists() {
    let (_softhsm, token, cfg) = one_token();
    init_master_key(&cfg, &token.pin, false).unwrap();
    let err = init_master_key(&cfg, &token.pin, true).unwrap_err();
    assert!(
        matches!(&err, Error::MasterKeyExists(l) if l == KEY),
        "{err:?}"
    );
    let session = raw_session(&token);
    assert_eq!(find(&session, ObjectClass::SECRET_KEY, KEY).len(), 1);
}

// --- sealing -------------------------------------------------------------------

#[test]
fn seal_unseal_round_trip() {
    let (_softhsm, _token, hsm) = vault();
    for len in [0, 1, 15, 16, 17, 256, 65_536] {
        let plaintext: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        for aad in [&b""[..], b"account-1|v1"] {
            let sealed = hsm.seal(aad, random_iv().unwrap(), &plaintext).unwrap();
            assert_eq!(sealed.len(), len + SEAL_OVERHEAD);
            assert_eq!(&hsm.unseal(aad, &sealed).unwrap()[..], &plaintext[..]);
            // Fresh IV every time.
            assert_ne!(
                hsm.seal(aad, random_iv().unwrap(), &plaintext).unwrap(),
                sealed
            );
        }
    }
}

#[test]
fn wrong_aad_is_integrity() {
    let (_softhsm, _token, hsm) = vault();
    let sealed = hsm
        .seal(b"account-1|v1", random_iv().unwrap(), b"escrowed key")
        .unwrap();
    assert_integrity(hsm.unseal(b"account-2|v1", &sealed));
    assert_integrity(hsm.unseal(b"account-1|v2", &sealed));
    assert_integrity(hsm.unseal(b"", &sealed));
    // The token is fine after a failed tag check.
    assert_eq!(
        &hsm.unseal(b"account-1|v1", &sealed).unwrap()[..],
        b"escrowed key"
    );
}

#[test]
fn flipped_byte_is_integrity() {
    let (_softhsm, _token, hsm) = vault();
    let sealed = hsm
        .seal(b"ad", random_iv().unwrap(), b"escrowed key")
        .unwrap();
    // IV, ciphertext, tag.
    for i in [0, 11, 12, 18, sealed.len() - 16, sealed.len() - 1] {
        for bit in [0x01, 0x80] {
            let mut tampered = sealed.clone();
            tampered[i] ^= bit;
            assert_integrity(hsm.unseal(b"ad", &tampered));
        }
    }
    assert_eq!(&hsm.unseal(b"ad", &sealed).unwrap()[..], b"escrowed key");
}

#[test]
fn truncated_is_integrity() {
    let (_softhsm, _token, hsm) = vault();
    let sealed = hsm
        .seal(b"ad", random_iv().unwrap(), b"escrowed key")
        .unwrap();
    assert_integrity(hsm.unseal(b"ad", &[]));
    assert_integrity(hsm.unseal(b"ad", &sealed[..SEAL_OVERHEAD - 1]));
    assert_integrity(hsm.unseal(b"ad", &sealed[..SEAL_OVERHEAD]));
    assert_integrity(hsm.unseal(b"ad", &sealed[..sealed.len() - 1]));
    assert_integrity(hsm.unseal(b"ad", &sealed[1..]));
    let mut extended = sealed.clone();
    extended.push(0);
    assert_integrity(hsm.unseal(b"ad", &extended));
}

#[test]
fn sealed_under_another_master_key_is_integrity() {
    let softhsm = SoftHsm::new();
    let a = softhsm.init_token("vault-a");
    let b = softhsm.init_token("vault-b");
    softhsm.activate();
    init_master_key(&config(&a), &a.pin, false).unwrap();
    init_master_key(&config(&b), &b.pin, false).unwrap();
    let hsm_a = Hsm::open(&config(&a), &a.pin).unwrap();
    let hsm_b = Hsm::open(&config(&b), &b.pin).unwrap();
    let sealed = hsm_a
        .seal(b"ad", random_iv().unwrap(), b"escrowed key")
        .unwrap();
    assert_integrity(hsm_b.unseal(b"ad", &sealed));
    assert_eq!(&hsm_a.unseal(b"ad", &sealed).unwrap()[..], b"escrowed key");
}

#[test]
fn sealed_bytes_never_contain_the_plaintext() {
    let (softhsm, _token, hsm) = vault();
    let plaintext = b"correct horse battery staple ".repeat(8);
    for _ in 0..16 {
        let sealed = hsm.seal(b"ad", random_iv().unwrap(), &plaintext).unwrap();
        assert!(!sealed
            .windows(8)
            .any(|w| plaintext.windows(8).any(|p| p == w)));
        assert!(!hex::encode(&sealed).contains(&hex::encode(&plaintext[..8])));
    }
    // Nor does anything the token stored.
    for entry in walk(&softhsm.token_dir()) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(16).any(|w| w == &plaintext[..16]),
            "{entry:?}"
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn master_key_value_cannot_be_read() {
    let (_softhsm, token, hsm) = vault();
    let debug = format!("{hsm:?}");
    assert!(
        debug.contains("vault-a") && !debug.contains(&token.pin),
        "{debug}"
    );

    let session = raw_session(&token);
    let keys = find(&session, ObjectClass::SECRET_KEY, KEY);
    assert_eq!(keys.len(), 1);
    let attrs = session
        .get_attributes(
            keys[0],
            &[
                AttributeType::Value,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::WrapWithTrusted,
                AttributeType::Private,
                AttributeType::Token,
                AttributeType::ValueLen,
            ],
        )
        .unwrap();
    assert!(
        !attrs
            .iter()
            .any(|a| matches!(a, Attribute::Value(v) if !v.is_empty())),
        "CKA_VALUE readable: {attrs:?}"
    );
    for expected in [
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::WrapWithTrusted(true),
        Attribute::Private(true),
        Attribute::Token(true),
        Attribute::ValueLen(32.into()),
    ] {
        assert!(attrs.contains(&expected), "{expected:?} not in {attrs:?}");
    }
    assert_narrow(&session, keys[0]);
}

/// The master key does AES-GCM and nothing else: the token refuses it any
/// other mechanism and any use but encryption and decryption.
fn assert_narrow(session: &Session, key: ObjectHandle) {
    let attrs = session
        .get_attributes(
            key,
            &[
                AttributeType::AllowedMechanisms,
                AttributeType::Wrap,
                AttributeType::Unwrap,
                AttributeType::Sign,
                AttributeType::Verify,
                AttributeType::Derive,
            ],
        )
        .unwrap();
    for expected in [
        Attribute::AllowedMechanisms(vec![MechanismType::AES_GCM]),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
    ] {
        assert!(attrs.contains(&expected), "{expected:?} not in {attrs:?}");
    }
    // Enforced by the token, not only recorded: AES-CBC and AES-ECB with
    // the key are refused (either as the mechanism not allowed for it, or
    // at C_EncryptInit).
    for mechanism in [Mechanism::AesCbcPad([0; 16]), Mechanism::AesEcb] {
        let r = session.encrypt(&mechanism, key, &[0u8; 16]);
        assert!(
            matches!(
                r,
                Err(CkError::Pkcs11(
                    RvError::MechanismInvalid | RvError::KeyFunctionNotPermitted,
                    _
                ))
            ),
            "{mechanism:?} with the master key: {r:?}"
        );
    }
}

#[test]
fn seal_survives_a_lost_login() {
    let (_softhsm, token, hsm) = vault();
    let sealed = hsm
        .seal(b"ad", random_iv().unwrap(), b"escrowed key")
        .unwrap();
    // Login state is per application: this logs out the vault's sessions
    // too and invalidates their private object handles.
    let session = raw_session(&token);
    session.logout().unwrap();
    drop(session);
    assert_eq!(&hsm.unseal(b"ad", &sealed).unwrap()[..], b"escrowed key");
    for _ in 0..4 {
        let again = hsm.seal(b"ad", random_iv().unwrap(), b"more").unwrap();
        assert_eq!(&hsm.unseal(b"ad", &again).unwrap()[..], b"more");
    }
}

#[test]
fn eight_threads_share_two_sessions() {
    let (_softhsm, _token, hsm) = vault();
    std::thread::scope(|scope| {
        for t in 0..8u32 {
            let hsm = &hsm;
            scope.spawn(move || {
                for i in 0..100u32 {
                    let aad = format!("account-{t}|{i}");
                    let plaintext = format!("secret {t} {i}").repeat(10);
                    let sealed = hsm
                        .seal(aad.as_bytes(), random_iv().unwrap(), plaintext.as_bytes())
                        .unwrap();
                    let opened = hsm.unseal(aad.as_bytes(), &sealed).unwrap();
                    assert_eq!(&opened[..], plaintext.as_bytes());
                    if i % 10 == 0 {
                        assert_integrity(hsm.unseal(b"other", &sealed));
                    }
                }
            });
        }
    });
}

// --- key ceremony ---------------------------------------------------------------

/// Tokens A (existing replica) and B (new replica) in one SoftHSM.
fn two_tokens() -> (SoftHsm, Token, Token) {
    let softhsm = SoftHsm::new();
    let a = softhsm.init_token("vault-a");
    let b = softhsm.init_token("vault-b");
    softhsm.activate();
    (softhsm, a, b)
}

#[test]
fn ceremony_copies_the_master_key() {
    let (_softhsm, a, b) = two_tokens();
    let (cfg_a, cfg_b) = (config(&a), config(&b));
    init_master_key(&cfg_a, &a.pin, true).unwrap();

    // 1. The new replica asks; the request travels as text.
    let request = import_request(&cfg_b, &b.pin).unwrap();
    let text = request.to_text();
    assert!(text.starts_with("E2EBK-KEY-IMPORT-REQUEST v1\n"), "{text}");
    assert!(text.contains(&request.fingerprint()));
    let request = ImportRequest::from_text(&text).unwrap();
    assert_eq!(request.modulus.len(), 384);
    assert_eq!(request.exponent, [1, 0, 1]);
    assert_eq!(request.token_label, "vault-b");
    assert_ceremony(
        import_request(&cfg_b, &b.pin),
        "already holds an import key",
    );
    assert!(matches!(
        init_master_key(&cfg_b, &b.pin, true),
        Err(Error::Ceremony(_))
    ));
    assert!(matches!(
        Hsm::open(&cfg_b, &b.pin),
        Err(Error::MasterKeyMissing(_))
    ));
    let raw_b = raw_session(&b);
    assert_eq!(
        find(&raw_b, ObjectClass::PRIVATE_KEY, &format!("{KEY}-import")).len(),
        1
    );
    drop(raw_b);

    let (sealed, sealed_empty) = {
        let hsm_a = Hsm::open(&cfg_a, &a.pin).unwrap();
        // The user is logged in to A in this process, so the security
        // officer cannot be.
        let err = approve_import(&cfg_a, &a.so_pin, &request).unwrap_err();
        assert!(
            matches!(&err, Error::Hsm { detail, .. } if detail.contains("cannot be logged in at once")),
            "{err:?}"
        );
        (
            hsm_a
                .seal(b"account-1|v1", random_iv().unwrap(), b"escrowed key")
                .unwrap(),
            hsm_a.seal(b"", random_iv().unwrap(), b"").unwrap(),
        )
    };

    // 3 before 2: nothing approved yet.
    assert_ceremony(export_master_key(&cfg_a, &a.pin, &request), "not approved");

    // 2. The security officer of A approves (twice is still one approval).
    assert!(matches!(
        approve_import(&cfg_a, "wrong-so-pin", &request),
        Err(Error::WrongPin(_))
    ));
    approve_import(&cfg_a, &a.so_pin, &request).unwrap();
    approve_import(&cfg_a, &a.so_pin, &request).unwrap();
    let label = format!("e2ebk-import-{}", request.fingerprint());
    let raw_a = raw_session(&a);
    let approved = find(&raw_a, ObjectClass::PUBLIC_KEY, &label);
    assert_eq!(approved.len(), 1);
    assert!(raw_a
        .get_attributes(approved[0], &[AttributeType::Trusted])
        .unwrap()
        .contains(&Attribute::Trusted(true)));
    drop(raw_a);

    // 3. A exports, once.
    let wrapped = export_master_key(&cfg_a, &a.pin, &request).unwrap();
    assert_eq!(wrapped.fingerprint, request.fingerprint());
    assert_eq!(wrapped.wrapped.len(), 384);
    assert!(!format!("{wrapped:?}").contains(&hex::encode(&wrapped.wrapped[..8])));
    assert_ceremony(export_master_key(&cfg_a, &a.pin, &request), "not approved");
    let text = wrapped.to_text();
    assert!(text.starts_with("E2EBK-WRAPPED-MASTER-KEY v1\n"), "{text}");
    let wrapped = WrappedMasterKey::from_text(&text).unwrap();

    // 4. B refuses a file for another import key, or a damaged one, and
    // keeps its import key for the real thing.
    let other = WrappedMasterKey {
        fingerprint: "0000:1111:2222:3333:4444:5555:6666:7777".into(),
        wrapped: wrapped.wrapped.clone(),
    };
    assert_ceremony(
        import_master_key(&cfg_b, &b.pin, &other),
        "wrapped for import key",
    );
    let mut damaged = wrapped.clone();
    damaged.wrapped[100] ^= 1;
    assert_ceremony(
        import_master_key(&cfg_b, &b.pin, &damaged),
        "could not unwrap",
    );
    import_master_key(&cfg_b, &b.pin, &wrapped).unwrap();
    // Replaying the file into a token that has the key now.
    assert!(matches!(
        import_master_key(&cfg_b, &b.pin, &wrapped),
        Err(Error::MasterKeyExists(_))
    ));

    // B has the same key, as sensitive as A's, and no import key left.
    let raw_b = raw_session(&b);
    assert!(find(&raw_b, ObjectClass::PRIVATE_KEY, &format!("{KEY}-import")).is_empty());
    let keys = find(&raw_b, ObjectClass::SECRET_KEY, KEY);
    assert_eq!(keys.len(), 1);
    let attrs = raw_b
        .get_attributes(
            keys[0],
            &[
                AttributeType::Value,
                AttributeType::Sensitive,
                AttributeType::WrapWithTrusted,
                AttributeType::Token,
            ],
        )
        .unwrap();
    assert!(!attrs
        .iter()
        .any(|a| matches!(a, Attribute::Value(v) if !v.is_empty())));
    for expected in [
        Attribute::Sensitive(true),
        Attribute::WrapWithTrusted(true),
        Attribute::Token(true),
    ] {
        assert!(attrs.contains(&expected), "{expected:?} not in {attrs:?}");
    }
    assert_narrow(&raw_b, keys[0]);
    drop(raw_b);

    let hsm_b = Hsm::open(&cfg_b, &b.pin).unwrap();
    let hsm_a = Hsm::open(&cfg_a, &a.pin).unwrap();
    assert_eq!(
        &hsm_b.unseal(b"account-1|v1", &sealed).unwrap()[..],
        b"escrowed key"
    );
    assert!(hsm_b.unseal(b"", &sealed_empty).unwrap().is_empty());
    let from_b = hsm_b
        .seal(b"account-2|v1", random_iv().unwrap(), b"from b")
        .unwrap();
    assert_eq!(
        &hsm_a.unseal(b"account-2|v1", &from_b).unwrap()[..],
        b"from b"
    );
    assert_integrity(hsm_b.unseal(b"account-2|v1", &sealed));
}

#[test]
fn export_of_a_non_exportable_key_fails() {
    let (_softhsm, a, b) = two_tokens();
    let (cfg_a, cfg_b) = (config(&a), config(&b));
    init_master_key(&cfg_a, &a.pin, false).unwrap();
    let request = import_request(&cfg_b, &b.pin).unwrap();
    approve_import(&cfg_a, &a.so_pin, &request).unwrap();
    assert_ceremony(
        export_master_key(&cfg_a, &a.pin, &request),
        "non-exportable",
    );

    // The token itself refuses, not only our check.
    let session = raw_session(&a);
    let master = find(&session, ObjectClass::SECRET_KEY, KEY)[0];
    let approved = find(
        &session,
        ObjectClass::PUBLIC_KEY,
        &format!("e2ebk-import-{}", request.fingerprint()),
    )[0];
    let err = session.wrap_key(&oaep(), approved, master).unwrap_err();
    assert!(
        matches!(err, CkError::Pkcs11(RvError::KeyUnextractable, _)),
        "{err:?}"
    );
}

#[test]
fn lock_export_ends_the_ceremony_for_good() {
    let (_softhsm, a, b) = two_tokens();
    let (cfg_a, cfg_b) = (config(&a), config(&b));
    init_master_key(&cfg_a, &a.pin, true).unwrap();
    assert!(lock_export(&cfg_a, &a.pin).unwrap(), "it was exportable");
    assert!(
        !lock_export(&cfg_a, &a.pin).unwrap(),
        "a second lock is a no-op"
    );
    let request = import_request(&cfg_b, &b.pin).unwrap();
    approve_import(&cfg_a, &a.so_pin, &request).unwrap();
    assert_ceremony(
        export_master_key(&cfg_a, &a.pin, &request),
        "non-exportable",
    );
    // The token refuses to make it extractable again.
    let session = raw_session(&a);
    let master = find(&session, ObjectClass::SECRET_KEY, KEY)[0];
    assert!(session
        .update_attributes(master, &[Attribute::Extractable(true)])
        .is_err());
    assert!(session
        .get_attributes(master, &[AttributeType::Extractable])
        .unwrap()
        .contains(&Attribute::Extractable(false)));
    drop(session);
    // And the vault still serves with it.
    let hsm = Hsm::open(&cfg_a, &a.pin).unwrap();
    let sealed = hsm
        .seal(b"aad", random_iv().unwrap(), b"still works")
        .unwrap();
    assert_eq!(&hsm.unseal(b"aad", &sealed).unwrap()[..], b"still works");
}

#[test]
fn a_production_setting_refuses_a_software_token() {
    let (_softhsm, token, cfg) = one_token();
    init_master_key(&cfg, &token.pin, false).unwrap();
    let strict = HsmConfig {
        require_hardware: true,
        ..cfg.clone()
    };
    match Hsm::open(&strict, &token.pin) {
        Err(Error::SoftwareToken(why)) => {
            let message = Error::SoftwareToken(why.clone()).to_string();
            assert!(why.contains("SoftHSM") && why.contains("vault-a"), "{why}");
            assert!(message.contains("hsm.require_hardware"), "{message}");
        }
        other => panic!("expected SoftwareToken, got {other:?}"),
    }
    // The same token without the setting opens.
    Hsm::open(&cfg, &token.pin).unwrap();
}

#[test]
fn export_for_an_untrusted_key_fails() {
    let (_softhsm, a, b) = two_tokens();
    let (cfg_a, cfg_b) = (config(&a), config(&b));
    init_master_key(&cfg_a, &a.pin, true).unwrap();
    let request = import_request(&cfg_b, &b.pin).unwrap();

    // The user (not the security officer) plants a public key with the
    // approval label.
    let session = raw_session(&a);
    let planted = session
        .create_object(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(KeyType::RSA),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Modulus(request.modulus.clone()),
            Attribute::PublicExponent(request.exponent.clone()),
            Attribute::Wrap(true),
            Attribute::Label(format!("e2ebk-import-{}", request.fingerprint()).into_bytes()),
        ])
        .unwrap();
    // The user cannot mark it trusted...
    assert!(session
        .update_attributes(planted, &[Attribute::Trusted(true)])
        .is_err());
    // ...and the token will not wrap the master key for it.
    let master = find(&session, ObjectClass::SECRET_KEY, KEY)[0];
    let err = session.wrap_key(&oaep(), planted, master).unwrap_err();
    assert!(
        matches!(err, CkError::Pkcs11(RvError::KeyNotWrappable, _)),
        "{err:?}"
    );
    drop(session);
    assert_ceremony(
        export_master_key(&cfg_a, &a.pin, &request),
        "not marked trusted",
    );
    // The security officer will not approve over it either.
    assert_ceremony(approve_import(&cfg_a, &a.so_pin, &request), "did not store");
}

fn oaep() -> Mechanism<'static> {
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(
        MechanismType::SHA1,
        PkcsMgfType::MGF1_SHA1,
        PkcsOaepSource::empty(),
    ))
}

#[test]
fn import_request_on_a_token_with_a_master_key_fails() {
    let (_softhsm, token, cfg) = one_token();
    init_master_key(&cfg, &token.pin, true).unwrap();
    assert!(matches!(
        import_request(&cfg, &token.pin),
        Err(Error::MasterKeyExists(_))
    ));
}

// --- ceremony files -------------------------------------------------------------

fn sample_request() -> ImportRequest {
    let mut modulus = vec![0xa5; 384];
    modulus[383] = 0x01;
    ImportRequest {
        token_label: "vault-b".into(),
        modulus,
        exponent: vec![1, 0, 1],
    }
}

#[test]
fn request_text_is_strict() {
    let request = sample_request();
    let fingerprint = request.fingerprint();
    assert_eq!(fingerprint.len(), 39);
    assert_eq!(fingerprint.split(':').count(), 8);
    let text = request.to_text();
    assert_eq!(ImportRequest::from_text(&text).unwrap(), request);
    assert_eq!(
        ImportRequest::from_text(&text.replace('\n', "\r\n")).unwrap(),
        request
    );
    assert_eq!(ImportRequest::from_text(text.trim_end()).unwrap(), request);

    let rejected = [
        String::new(),
        text.replace("v1", "v2"),
        text.replace("E2EBK-KEY-IMPORT-REQUEST", "E2EBK-WRAPPED-MASTER-KEY"),
        format!("{text}extra: 00\n"),
        text.replace("exponent: 010001\n", ""),
        text.replace("exponent: 010001", "exponent: 010003"), // fingerprint mismatch
        text.replace("modulus: a5", "modulus: zz"),
        text.replace("token-label: vault-b", "label: vault-b"),
        text.replace("token-label: vault-b", "token-label: "),
        text.replacen(": ", ":", 1),
        format!("\n{text}"),
    ];
    for bad in rejected {
        assert!(
            matches!(ImportRequest::from_text(&bad), Err(Error::Ceremony(_))),
            "accepted {bad:?}"
        );
    }

    // Keys too weak or malformed, even with a matching fingerprint line.
    let mut weak = [
        sample_request(),
        sample_request(),
        sample_request(),
        sample_request(),
    ];
    weak[0].modulus.truncate(256);
    weak[0].modulus[255] = 1;
    weak[1].exponent = vec![1, 0, 0];
    weak[2].modulus[0] = 0;
    weak[3].exponent = vec![1];
    for req in weak {
        assert!(
            matches!(
                ImportRequest::from_text(&req.to_text()),
                Err(Error::Ceremony(_))
            ),
            "accepted {req:?}"
        );
    }
}

#[test]
fn wrapped_text_is_strict() {
    let wrapped = WrappedMasterKey {
        fingerprint: sample_request().fingerprint(),
        wrapped: vec![7; 384],
    };
    let text = wrapped.to_text();
    assert_eq!(WrappedMasterKey::from_text(&text).unwrap(), wrapped);
    let rejected = [
        text.replace("E2EBK-WRAPPED-MASTER-KEY v1", "E2EBK-KEY-IMPORT-REQUEST v1"),
        text.replace(&wrapped.fingerprint, &wrapped.fingerprint.to_uppercase()),
        text.replace(&wrapped.fingerprint, &wrapped.fingerprint.replace(':', "")),
        text.replace("wrapped: 07", "wrapped: 7"),
        text.replace(&hex::encode(vec![7u8; 384]), &hex::encode(vec![7u8; 16])),
        format!("{text}fingerprint: {}\n", wrapped.fingerprint),
    ];
    for bad in rejected {
        assert!(
            matches!(WrappedMasterKey::from_text(&bad), Err(Error::Ceremony(_))),
            "accepted {bad:?}"
        );
    }
}
