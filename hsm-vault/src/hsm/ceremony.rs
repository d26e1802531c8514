//! Master key creation and the key ceremony's steps on the token (see the
//! [module map](super)): each step opens its own logged-in session, as the
//! user or the security officer, does its one thing and logs what it did.

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};

use super::ceremony_text::{ImportRequest, WrappedMasterKey};
use super::sealer::{gcm_open, gcm_seal, PROBE_AAD, PROBE_PLAINTEXT};
use super::token::{
    ck_detail, find_master_key, find_one, hsm_err, read_bool, rsa_public_parts, TokenAccess,
};
use crate::config::HsmConfig;
use crate::seal::random_iv;
use crate::Error;

/// AES-256.
const MASTER_KEY_LEN: u64 = 32;
const IMPORT_KEY_BITS: u64 = 3072;

const NOT_APPROVED: &str =
    "not approved: run `hsm-vault keys approve` as the security officer first";

fn import_key_label(key_label: &str) -> String {
    format!("{key_label}-import")
}

fn approval_label(fingerprint: &str) -> String {
    format!("e2ebk-import-{fingerprint}")
}

/// The master key's attributes, whether generated or unwrapped: the
/// narrowest the token allows. AES-GCM encryption and decryption only
/// (`CKA_ALLOWED_MECHANISMS`), no wrapping, signing or derivation with it,
/// sensitive, and extractable only if `exportable`, and then only wrapped
/// for a key the security officer marked trusted (`CKA_WRAP_WITH_TRUSTED`).
/// [`lock_export`] ends exportability for good once every replica has it.
fn master_key_attributes(key_label: &str, exportable: bool) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(exportable),
        Attribute::WrapWithTrusted(true),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
        Attribute::AllowedMechanisms(vec![MechanismType::AES_GCM]),
        Attribute::Label(key_label.as_bytes().to_vec()),
    ]
}

/// Checked each time the vault opens its token: a master key whose value
/// the token would reveal is refused; one that is still exportable, or that
/// a token created without the mechanism restriction, is served with a
/// warning that says what to do.
pub(super) fn check_master_key(
    session: &Session,
    key: ObjectHandle,
    key_label: &str,
) -> Result<(), Error> {
    let attrs = session
        .get_attributes(
            key,
            &[
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::AllowedMechanisms,
            ],
        )
        .map_err(hsm_err("read master key attributes"))?;
    let (mut sensitive, mut extractable, mut mechanisms) = (None, None, None);
    for a in attrs {
        match a {
            Attribute::Sensitive(b) => sensitive = Some(b),
            Attribute::Extractable(b) => extractable = Some(b),
            Attribute::AllowedMechanisms(m) => mechanisms = Some(m),
            _ => {}
        }
    }
    if sensitive != Some(true) {
        return Err(Error::Ceremony(format!(
            "the master key {key_label:?} is not marked sensitive, so the token would reveal its \
             value; this vault will not use it (create the fleet's key with `hsm-vault init`)"
        )));
    }
    if extractable == Some(true) {
        tracing::warn!(
            key = %key_label,
            "the master key is still exportable for the key ceremony; once every replica's \
             token holds it, run `hsm-vault keys lock-export` on each"
        );
    }
    if mechanisms.as_deref() != Some(&[MechanismType::AES_GCM][..]) {
        tracing::warn!(
            key = %key_label,
            "the master key is not restricted to AES-GCM (it predates that rule, or the token \
             ignores CKA_ALLOWED_MECHANISMS)"
        );
    }
    Ok(())
}

/// Makes this token's master key non-extractable, for good: PKCS#11 lets
/// `CKA_EXTRACTABLE` go from true to false only. Run on every token once
/// every replica holds the key; a later replica then needs a new fleet.
/// Returns whether the key was exportable before.
pub fn lock_export(cfg: &HsmConfig, pin: &str) -> Result<bool, Error> {
    let (_token, session) = step_session(cfg, UserType::User, pin)?;
    let master = find_master_key(&session, &cfg.key_label)?;
    if read_bool(&session, master, AttributeType::Extractable)? != Some(true) {
        return Ok(false);
    }
    session
        .update_attributes(master, &[Attribute::Extractable(false)])
        .map_err(hsm_err("make the master key non-extractable"))?;
    if read_bool(&session, master, AttributeType::Extractable)? != Some(false) {
        return Err(Error::Hsm {
            op: "make the master key non-extractable",
            detail: "the token accepted the change but still reports the key extractable".into(),
        });
    }
    tracing::info!(
        token = %cfg.token_label,
        key = %cfg.key_label,
        "master key export locked"
    );
    Ok(true)
}

/// RSA-OAEP with SHA-1 and MGF1-SHA-1, the only OAEP parameters SoftHSM
/// 2.6 wraps with (SHA-256 gives `CKR_ARGUMENTS_BAD`). Fine for key
/// transport: OAEP relies on the hash behaving as a random function, not on
/// collision resistance, which is what is broken in SHA-1.
fn oaep() -> Mechanism<'static> {
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(
        MechanismType::SHA1,
        PkcsMgfType::MGF1_SHA1,
        PkcsOaepSource::empty(),
    ))
}

/// Opens one logged-in session for a single ceremony step.
fn step_session(
    cfg: &HsmConfig,
    user: UserType,
    pin: &str,
) -> Result<(TokenAccess, Session), Error> {
    let token = TokenAccess::connect(&cfg.module, &cfg.token_label, user, pin)?;
    let session = token.open_session()?;
    Ok((token, session))
}

/// Creates the fleet's master key on the first replica's token.
/// `exportable` allows the key ceremony to copy it to other replicas'
/// tokens later (still only wrapped for a key the security officer
/// approved); without it this token is the only copy, ever.
pub fn init_master_key(cfg: &HsmConfig, pin: &str, exportable: bool) -> Result<(), Error> {
    let (_token, session) = step_session(cfg, UserType::User, pin)?;
    if find_one(&session, ObjectClass::SECRET_KEY, &cfg.key_label)?.is_some() {
        return Err(Error::MasterKeyExists(cfg.key_label.clone()));
    }
    let import_label = import_key_label(&cfg.key_label);
    if find_one(&session, ObjectClass::PRIVATE_KEY, &import_label)?.is_some() {
        // A second, independent master key would split the fleet.
        return Err(Error::Ceremony(format!(
            "token {:?} is waiting for the master key through the key ceremony (it holds the \
             import key {import_label:?}); finish the ceremony instead of creating a new key",
            cfg.token_label
        )));
    }
    let mut template = master_key_attributes(&cfg.key_label, exportable);
    template.push(Attribute::ValueLen(MASTER_KEY_LEN.into()));
    session
        .generate_key(&Mechanism::AesKeyGen, &template)
        .map_err(hsm_err("generate master key"))?;
    tracing::info!(
        token = %cfg.token_label,
        key = %cfg.key_label,
        exportable,
        "master key created"
    );
    Ok(())
}

/// Ceremony step 1, on the NEW replica's token (user): creates the RSA-3072
/// import key pair, its private half a non-extractable token object
/// labelled `{key_label}-import`, and returns the public half.
pub fn import_request(cfg: &HsmConfig, pin: &str) -> Result<ImportRequest, Error> {
    let (_token, session) = step_session(cfg, UserType::User, pin)?;
    if find_one(&session, ObjectClass::SECRET_KEY, &cfg.key_label)?.is_some() {
        return Err(Error::MasterKeyExists(cfg.key_label.clone()));
    }
    let label = import_key_label(&cfg.key_label);
    if find_one(&session, ObjectClass::PRIVATE_KEY, &label)?.is_some() {
        return Err(Error::Ceremony(format!(
            "token {:?} already holds an import key {label:?} from an earlier request: use that \
             request, or delete the key to start over",
            cfg.token_label
        )));
    }
    // The public half is a session object: only its numbers are needed,
    // and they leave in the request.
    let public_template = [
        Attribute::Token(false),
        Attribute::ModulusBits(IMPORT_KEY_BITS.into()),
        Attribute::PublicExponent(vec![1, 0, 1]),
        Attribute::Wrap(true),
        Attribute::Encrypt(true),
    ];
    let private_template = [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Unwrap(true),
        Attribute::Decrypt(true),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    let (public, _private) = session
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &public_template,
            &private_template,
        )
        .map_err(hsm_err("generate import key"))?;
    let (modulus, exponent) = rsa_public_parts(&session, public)?;
    let request = ImportRequest {
        token_label: cfg.token_label.clone(),
        modulus,
        exponent,
    };
    tracing::info!(
        token = %cfg.token_label,
        fingerprint = %request.fingerprint(),
        "key import request created"
    );
    Ok(request)
}

/// Ceremony step 2, on the EXISTING replica's token (security officer):
/// stores the request's public key as a trusted token object labelled
/// `e2ebk-import-{fingerprint}`, which is what allows one export. Compare
/// the fingerprint with the new replica's operator before calling this.
pub fn approve_import(cfg: &HsmConfig, so_pin: &str, req: &ImportRequest) -> Result<(), Error> {
    req.check_key()?;
    let fingerprint = req.fingerprint();
    let label = approval_label(&fingerprint);
    let (_token, session) = step_session(cfg, UserType::So, so_pin)?;
    let result = store_approval(&session, req, &label);
    // The security officer's login would block the user's in this process.
    if let Err(e) = session.logout() {
        tracing::warn!(token = %cfg.token_label, error = %ck_detail(&e), "security officer logout failed");
    }
    if result.is_ok() {
        tracing::info!(token = %cfg.token_label, %fingerprint, "import approved");
    }
    result
}

/// Idempotent: the same request approved twice is one approval.
fn store_approval(session: &Session, req: &ImportRequest, label: &str) -> Result<(), Error> {
    if let Some(existing) = find_one(session, ObjectClass::PUBLIC_KEY, label)? {
        let trusted = read_bool(session, existing, AttributeType::Trusted)? == Some(true);
        if trusted
            && rsa_public_parts(session, existing)? == (req.modulus.clone(), req.exponent.clone())
        {
            return Ok(());
        }
        // Only the user could have put it there: someone is trying to
        // steer the export. Refuse rather than tidy it away.
        return Err(Error::Ceremony(format!(
            "a public key labelled {label:?} that the security officer did not store is already \
             on the token; find out who created it and remove it before approving"
        )));
    }
    session
        .create_object(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(KeyType::RSA),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Modulus(req.modulus.clone()),
            Attribute::PublicExponent(req.exponent.clone()),
            Attribute::Wrap(true),
            Attribute::Encrypt(false),
            Attribute::Verify(false),
            Attribute::Trusted(true),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(hsm_err("store approved import key"))?;
    Ok(())
}

/// Ceremony step 3, on the EXISTING replica's token (user): wraps the
/// master key for the approved import key, then destroys the approval so it
/// cannot be used again.
pub fn export_master_key(
    cfg: &HsmConfig,
    pin: &str,
    req: &ImportRequest,
) -> Result<WrappedMasterKey, Error> {
    req.check_key()?;
    let fingerprint = req.fingerprint();
    let (_token, session) = step_session(cfg, UserType::User, pin)?;
    let master = find_master_key(&session, &cfg.key_label)?;
    let approved = find_one(
        &session,
        ObjectClass::PUBLIC_KEY,
        &approval_label(&fingerprint),
    )?
    .ok_or_else(|| Error::Ceremony(NOT_APPROVED.into()))?;
    // A user can create public objects too, but only the security officer
    // can mark one trusted; the token would refuse the wrap anyway, this
    // just says why.
    if read_bool(&session, approved, AttributeType::Trusted)? != Some(true) {
        return Err(Error::Ceremony(format!(
            "the import key labelled {:?} is not marked trusted, so the security officer did not \
             store it; {NOT_APPROVED}",
            approval_label(&fingerprint)
        )));
    }
    let (modulus, exponent) = rsa_public_parts(&session, approved)?;
    if modulus != req.modulus || exponent != req.exponent {
        return Err(Error::Ceremony(
            "the approved key with this fingerprint differs from the request".into(),
        ));
    }
    let not_exportable = || {
        Error::Ceremony(format!(
            "the master key {:?} was created non-exportable; it cannot be copied to another \
             token (create the fleet's key with exportable = true)",
            cfg.key_label
        ))
    };
    if read_bool(&session, master, AttributeType::Extractable)? != Some(true) {
        return Err(not_exportable());
    }
    let wrapped = session
        .wrap_key(&oaep(), approved, master)
        .map_err(|e| match e {
            CkError::Pkcs11(RvError::KeyUnextractable, _) => not_exportable(),
            CkError::Pkcs11(RvError::KeyNotWrappable, _) => Error::Ceremony(format!(
                "the token refused to wrap the master key for this import key; {NOT_APPROVED}"
            )),
            other => hsm_err("wrap master key")(other),
        })?;
    // Single use: a second export needs a second approval.
    session
        .destroy_object(approved)
        .map_err(hsm_err("destroy approved import key"))?;
    tracing::info!(
        token = %cfg.token_label,
        %fingerprint,
        "master key exported for an approved import key"
    );
    Ok(WrappedMasterKey {
        fingerprint,
        wrapped,
    })
}

/// Ceremony step 4, on the NEW replica's token (user): unwraps the master
/// key into a token object labelled `cfg.key_label` with the master key's
/// attributes, then destroys the import key.
pub fn import_master_key(
    cfg: &HsmConfig,
    pin: &str,
    wrapped: &WrappedMasterKey,
) -> Result<(), Error> {
    let (_token, session) = step_session(cfg, UserType::User, pin)?;
    if find_one(&session, ObjectClass::SECRET_KEY, &cfg.key_label)?.is_some() {
        return Err(Error::MasterKeyExists(cfg.key_label.clone()));
    }
    let import_label = import_key_label(&cfg.key_label);
    let import_key =
        find_one(&session, ObjectClass::PRIVATE_KEY, &import_label)?.ok_or_else(|| {
            Error::Ceremony(format!(
            "token {:?} has no import key {import_label:?}; run `hsm-vault keys import-request` on this \
             replica first",
            cfg.token_label
        ))
        })?;
    let (modulus, exponent) = rsa_public_parts(&session, import_key)?;
    let ours = ImportRequest {
        token_label: cfg.token_label.clone(),
        modulus,
        exponent,
    }
    .fingerprint();
    if ours != wrapped.fingerprint {
        return Err(Error::Ceremony(format!(
            "the master key was wrapped for import key {}, but this token's import key is {ours}",
            wrapped.fingerprint
        )));
    }
    // Imported keys stay exportable: the source was, and this replica may
    // seed the next one.
    let key = session
        .unwrap_key(
            &oaep(),
            import_key,
            &wrapped.wrapped,
            &master_key_attributes(&cfg.key_label, true),
        )
        .map_err(|e| match e {
            CkError::Pkcs11(
                RvError::EncryptedDataInvalid
                | RvError::WrappedKeyInvalid
                | RvError::WrappedKeyLenRange
                | RvError::GeneralError,
                _,
            ) => Error::Ceremony(
                "the token could not unwrap the master key: the file is damaged or was not \
                 wrapped for this token"
                    .into(),
            ),
            other => hsm_err("unwrap master key")(other),
        })?;
    if let Err(e) = check_unwrapped(&session, key) {
        // Do not leave a bad key where `open` would find it.
        if let Err(destroy) = session.destroy_object(key) {
            tracing::warn!(error = %ck_detail(&destroy), "could not remove the bad unwrapped key");
        }
        return Err(e);
    }
    // The master key is in; a leftover import key is only untidy.
    if let Err(e) = session.destroy_object(import_key) {
        tracing::warn!(
            token = %cfg.token_label,
            error = %ck_detail(&e),
            "could not destroy the import key; remove {import_label:?} by hand"
        );
    }
    tracing::info!(
        token = %cfg.token_label,
        key = %cfg.key_label,
        fingerprint = %wrapped.fingerprint,
        "master key imported"
    );
    Ok(())
}

/// SoftHSM leaves CKA_VALUE_LEN at 0 on unwrapped keys (and refuses it in
/// the unwrap template), so a reported length is checked when there is
/// one, and the key must round-trip AES-GCM either way.
fn check_unwrapped(session: &Session, key: ObjectHandle) -> Result<(), Error> {
    let len = session
        .get_attributes(key, &[AttributeType::ValueLen])
        .map_err(hsm_err("read master key length"))?
        .into_iter()
        .find_map(|a| match a {
            Attribute::ValueLen(n) => Some(usize::from(n)),
            _ => None,
        });
    if matches!(len, Some(n) if n != 0 && n as u64 != MASTER_KEY_LEN) {
        return Err(Error::Ceremony(
            "the unwrapped key is not a 256-bit AES key".into(),
        ));
    }
    let unusable = |_| Error::Ceremony("the unwrapped key cannot do AES-GCM".into());
    let (iv, ciphertext) =
        gcm_seal(session, key, PROBE_AAD, random_iv()?, PROBE_PLAINTEXT).map_err(unusable)?;
    let opened = gcm_open(session, key, PROBE_AAD, &iv, &ciphertext).map_err(unusable)?;
    if opened.as_slice() != PROBE_PLAINTEXT {
        return Err(Error::Ceremony(
            "the unwrapped key does not decrypt what it encrypted".into(),
        ));
    }
    Ok(())
}
