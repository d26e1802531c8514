//! PKCS#11 custody of the vault master key.
//!
//! This module owns everything the vault does with its token:
//!
//! - [`Hsm`]: the logged-in session pool and the [`Sealer`] over the
//!   non-extractable AES-256 master key (AES-GCM inside the token, sealed
//!   format of [`crate::seal`]).
//! - [`init_master_key`]: creates the master key on the fleet's first token.
//! - The key ceremony that gives another replica's token the same master key
//!   without it ever existing in plaintext outside a token:
//!   1. new replica, user: [`import_request`] makes an RSA-3072 import key
//!      pair and prints its public half ([`ImportRequest`]);
//!   2. existing replica, security officer: [`approve_import`] stores that
//!      public key on the token marked `CKA_TRUSTED`, after the operators
//!      compared its [`ImportRequest::fingerprint`] out of band;
//!   3. existing replica, user: [`export_master_key`] wraps the master key
//!      for it (the token only wraps `CKA_WRAP_WITH_TRUSTED` keys for
//!      trusted keys) and destroys the approval, so it is single use;
//!   4. new replica, user: [`import_master_key`] unwraps it into a token
//!      master key and destroys the import key.
//!
//!   The security officer and the user cannot be logged in to one token in
//!   one process at once, so approval is its own step. The wrapped key is
//!   not authenticated (anyone may wrap a key for a public import key): the
//!   proof that the new token holds the fleet's key is that it opens the
//!   fleet's `fleet.sealed`, which the vault does at start-up.
//!
//! PKCS#11 allows one `C_Initialize` per process and keeps login state per
//! application and token, so loaded modules live in a process-wide registry
//! and "already logged in" counts as success.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use parking_lot::{Condvar, Mutex};
use zeroize::Zeroizing;

use crate::config::HsmConfig;
use crate::seal::{random_iv, Sealer, SEAL_IV_LEN, SEAL_OVERHEAD, SEAL_TAG_LEN};
use crate::Error;

/// AES-256.
const MASTER_KEY_LEN: u64 = 32;
const GCM_TAG_BITS: u64 = (SEAL_TAG_LEN as u64) * 8;
const IMPORT_KEY_BITS: u64 = 3072;
/// Sealed by [`Hsm::self_test`]; only its round trip matters.
const PROBE_AAD: &[u8] = b"e2ebk hsm self-test v1";
const PROBE_PLAINTEXT: &[u8] = b"e2ebk hsm self-test";

const REQUEST_HEADER: &str = "E2EBK-KEY-IMPORT-REQUEST v1";
const WRAPPED_HEADER: &str = "E2EBK-WRAPPED-MASTER-KEY v1";
/// Ceremony files are a few lines; anything bigger is not one.
const MAX_TEXT_LEN: usize = 16 * 1024;
/// The import key we make is 3072 bits; accept up to 8192 so a future
/// version may grow it, never less than 3072.
const MIN_MODULUS_LEN: usize = 384;
const MAX_MODULUS_LEN: usize = 1024;
const MAX_EXPONENT_LEN: usize = 8;
/// PKCS#11 token labels are 32 bytes.
const MAX_TOKEN_LABEL_LEN: usize = 32;

const NOT_APPROVED: &str =
    "not approved: run `hsm-vault keys approve` as the security officer first";

// --- module registry -------------------------------------------------------

/// Initialised PKCS#11 modules by path. Never finalised: other `Hsm`
/// values or ceremony steps in this process may still use them.
static CONTEXTS: Mutex<BTreeMap<PathBuf, Pkcs11>> = parking_lot::const_mutex(BTreeMap::new());

fn context(module: &Path) -> Result<Pkcs11, Error> {
    let mut contexts = CONTEXTS.lock();
    if let Some(ctx) = contexts.get(module) {
        return Ok(ctx.clone());
    }
    let fail = |reason: String| Error::HsmModule {
        path: module.to_path_buf(),
        reason,
    };
    if !module.is_file() {
        return Err(fail(
            "no such file; set hsm.module to the PKCS#11 library of your HSM \
             (SoftHSM2: /usr/lib/softhsm/libsofthsm2.so)"
                .into(),
        ));
    }
    let ctx = Pkcs11::new(module).map_err(|e| fail(format!("not a loadable library: {e}")))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Someone else in this process (another path to the same library)
        // initialised it already; the library is usable.
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(fail(format!("C_Initialize failed: {}", ck_detail(&e)))),
    }
    contexts.insert(module.to_path_buf(), ctx.clone());
    Ok(ctx)
}

/// Log-safe description of a cryptoki error (return codes only).
fn ck_detail(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, function) => format!("C_{function:?} returned {rv:?}"),
        other => other.to_string(),
    }
}

fn hsm_err(op: &'static str) -> impl FnOnce(CkError) -> Error {
    move |e| Error::Hsm {
        op,
        detail: ck_detail(&e),
    }
}

// --- token access ----------------------------------------------------------

/// What it takes to open a logged-in session on one token.
struct TokenAccess {
    ctx: Pkcs11,
    slot: Slot,
    label: String,
    /// Kept to log in again if the token drops our login (HSM restart,
    /// another session logging out); zeroized on drop.
    pin: AuthPin,
    user: UserType,
}

impl TokenAccess {
    fn connect(module: &Path, label: &str, user: UserType, pin: &str) -> Result<Self, Error> {
        let ctx = context(module)?;
        let slot = find_slot(&ctx, label)?;
        Ok(TokenAccess {
            ctx,
            slot,
            label: label.to_owned(),
            pin: AuthPin::from(pin),
            user,
        })
    }

    fn open_session(&self) -> Result<Session, Error> {
        let session = self
            .ctx
            .open_rw_session(self.slot)
            .map_err(hsm_err("open session"))?;
        match session.login(self.user, Some(&self.pin)) {
            // Login is per application and token: a second session of a
            // logged-in application is logged in already.
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(CkError::Pkcs11(
                RvError::PinIncorrect | RvError::PinLenRange | RvError::PinLocked,
                _,
            )) => Err(Error::WrongPin(self.label.clone())),
            Err(CkError::Pkcs11(RvError::UserAnotherAlreadyLoggedIn, _)) => Err(Error::Hsm {
                op: "login",
                detail: format!(
                    "this process is logged in to token {:?} as the {}; the user and the \
                     security officer cannot be logged in at once (run `hsm-vault keys approve` \
                     in its own process, with no vault using the token there)",
                    self.label,
                    match self.user {
                        UserType::So => "user",
                        _ => "security officer",
                    }
                ),
            }),
            Err(e) => Err(hsm_err("login")(e)),
        }
    }
}

fn find_slot(ctx: &Pkcs11, label: &str) -> Result<Slot, Error> {
    let wanted = label.trim();
    let mut found = None;
    for slot in ctx
        .get_slots_with_initialized_token()
        .map_err(hsm_err("list slots"))?
    {
        let info = ctx.get_token_info(slot).map_err(hsm_err("token info"))?;
        if info.label().trim() == wanted {
            if found.is_some() {
                return Err(Error::Hsm {
                    op: "find token",
                    detail: format!(
                        "more than one token is labelled {wanted:?}; labels must be unique"
                    ),
                });
            }
            found = Some(slot);
        }
    }
    found.ok_or_else(|| Error::TokenNotFound(wanted.to_owned()))
}

/// The one object of `class` labelled `label`, if any.
fn find_one(
    session: &Session,
    class: ObjectClass,
    label: &str,
) -> Result<Option<ObjectHandle>, Error> {
    let found = session
        .find_objects(&[
            Attribute::Class(class),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(hsm_err("find objects"))?;
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        _ => Err(Error::Hsm {
            op: "find objects",
            detail: format!(
                "{} objects labelled {label:?}; expected one (remove the extra ones)",
                found.len()
            ),
        }),
    }
}

fn find_master_key(session: &Session, key_label: &str) -> Result<ObjectHandle, Error> {
    find_one(session, ObjectClass::SECRET_KEY, key_label)?
        .ok_or_else(|| Error::MasterKeyMissing(key_label.to_owned()))
}

fn import_key_label(key_label: &str) -> String {
    format!("{key_label}-import")
}

fn approval_label(fingerprint: &str) -> String {
    format!("e2ebk-import-{fingerprint}")
}

/// The master key's attributes, whether generated or unwrapped.
/// `WrapWithTrusted` is what makes the security officer's approval
/// mandatory for every export.
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
        Attribute::Label(key_label.as_bytes().to_vec()),
    ]
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

fn read_bool(
    session: &Session,
    object: ObjectHandle,
    attribute: AttributeType,
) -> Result<Option<bool>, Error> {
    let attrs = session
        .get_attributes(object, &[attribute])
        .map_err(hsm_err("read attribute"))?;
    Ok(attrs.into_iter().find_map(|a| match a {
        Attribute::Extractable(b) | Attribute::Trusted(b) | Attribute::Sensitive(b) => Some(b),
        _ => None,
    }))
}

/// Modulus and public exponent, big-endian without leading zeros.
fn rsa_public_parts(session: &Session, key: ObjectHandle) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let attrs = session
        .get_attributes(
            key,
            &[AttributeType::Modulus, AttributeType::PublicExponent],
        )
        .map_err(hsm_err("read RSA public key"))?;
    let (mut modulus, mut exponent) = (None, None);
    for a in attrs {
        match a {
            Attribute::Modulus(m) => modulus = Some(strip_zeros(m)),
            Attribute::PublicExponent(e) => exponent = Some(strip_zeros(e)),
            _ => {}
        }
    }
    match (modulus, exponent) {
        (Some(m), Some(e)) => Ok((m, e)),
        _ => Err(Error::Hsm {
            op: "read RSA public key",
            detail: "the token did not return the modulus and public exponent".into(),
        }),
    }
}

fn strip_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let zeros = v.iter().take_while(|b| **b == 0).count();
    v.drain(..zeros);
    v
}

/// AES-GCM with our IV and a 128-bit tag; returns the IV used (a module
/// that insists on its own IV writes it back) and ciphertext || tag.
fn gcm_seal(
    session: &Session,
    key: ObjectHandle,
    aad: &[u8],
    mut iv: [u8; SEAL_IV_LEN],
    plaintext: &[u8],
) -> cryptoki::error::Result<([u8; SEAL_IV_LEN], Vec<u8>)> {
    let ciphertext = session.encrypt(
        &Mechanism::AesGcm(GcmParams::new(&mut iv, aad, GCM_TAG_BITS.into())?),
        key,
        plaintext,
    )?;
    Ok((iv, ciphertext))
}

fn gcm_open(
    session: &Session,
    key: ObjectHandle,
    aad: &[u8],
    iv: &[u8],
    ciphertext: &[u8],
) -> cryptoki::error::Result<Zeroizing<Vec<u8>>> {
    let mut iv = iv.to_vec();
    session
        .decrypt(
            &Mechanism::AesGcm(GcmParams::new(&mut iv, aad, GCM_TAG_BITS.into())?),
            key,
            ciphertext,
        )
        .map(Zeroizing::new)
}

// --- session pool ----------------------------------------------------------

/// Logged-in sessions any thread may borrow for one PKCS#11 call.
/// Sessions found broken are dropped and reopened on demand, up to
/// `capacity`.
struct SessionPool {
    token: TokenAccess,
    capacity: usize,
    state: Mutex<PoolState>,
    returned: Condvar,
}

struct PoolState {
    idle: Vec<Session>,
    /// Sessions in existence, idle or lent.
    open: usize,
}

/// A borrowed session; goes back to the pool on drop. `session` is `None`
/// only inside [`Lease::renew`] after reopening failed.
struct Lease<'a> {
    pool: &'a SessionPool,
    session: Option<Session>,
}

impl SessionPool {
    fn borrow(&self) -> Result<Lease<'_>, Error> {
        let mut state = self.state.lock();
        loop {
            if let Some(session) = state.idle.pop() {
                return Ok(Lease {
                    pool: self,
                    session: Some(session),
                });
            }
            if state.open < self.capacity {
                state.open += 1;
                drop(state);
                // An empty lease gives the count back if opening fails.
                let mut lease = Lease {
                    pool: self,
                    session: None,
                };
                lease.session = Some(self.token.open_session()?);
                return Ok(lease);
            }
            self.returned.wait(&mut state);
        }
    }
}

impl Lease<'_> {
    fn session(&self) -> &Session {
        match &self.session {
            Some(s) => s,
            None => unreachable!("a lease handed out always holds a session"),
        }
    }

    /// Replaces a broken session with a newly opened, logged-in one.
    fn renew(mut self) -> Result<Self, Error> {
        drop(self.session.take());
        self.session = Some(self.pool.token.open_session()?);
        Ok(self)
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut state = self.pool.state.lock();
        match self.session.take() {
            Some(session) => state.idle.push(session),
            None => state.open -= 1,
        }
        drop(state);
        self.pool.returned.notify_one();
    }
}

/// PKCS#11 errors after which the session or its login is gone, but a new
/// session may work.
fn session_lost(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::KeyHandleInvalid
                | RvError::ObjectHandleInvalid
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent,
            _
        )
    )
}

// --- the sealer --------------------------------------------------------------

/// The vault's token: a pool of logged-in sessions and the master key.
pub struct Hsm {
    pool: SessionPool,
    key_label: String,
    /// Valid in every session of this application while logged in; found
    /// again after a re-login.
    master_key: Mutex<ObjectHandle>,
}

impl fmt::Debug for Hsm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hsm")
            .field("token_label", &self.pool.token.label)
            .field("key_label", &self.key_label)
            .field("sessions", &self.pool.capacity)
            .finish_non_exhaustive()
    }
}

impl Hsm {
    /// Loads the module, logs in to the token labelled `cfg.token_label`,
    /// opens `cfg.sessions` sessions and finds the master key, then seals
    /// and unseals a test value so a token that cannot do AES-GCM with it
    /// fails here rather than on the first request.
    pub fn open(cfg: &HsmConfig, pin: &str) -> Result<Hsm, Error> {
        let token = TokenAccess::connect(&cfg.module, &cfg.token_label, UserType::User, pin)?;
        let capacity = cfg.sessions.max(1);
        let first = token.open_session()?;
        let master_key = find_master_key(&first, &cfg.key_label)?;
        let mut idle = Vec::with_capacity(capacity);
        idle.push(first);
        while idle.len() < capacity {
            idle.push(token.open_session()?);
        }
        let hsm = Hsm {
            pool: SessionPool {
                token,
                capacity,
                state: Mutex::new(PoolState {
                    open: idle.len(),
                    idle,
                }),
                returned: Condvar::new(),
            },
            key_label: cfg.key_label.clone(),
            master_key: Mutex::new(master_key),
        };
        hsm.self_test()?;
        tracing::info!(
            token = %cfg.token_label,
            key = %cfg.key_label,
            sessions = capacity,
            "HSM ready"
        );
        Ok(hsm)
    }

    /// Seals and unseals a constant: `Ok` means the token and the master
    /// key work (for readiness checks).
    pub fn self_test(&self) -> Result<(), Error> {
        let sealed = self.encrypt("self-test", PROBE_AAD, random_iv()?, PROBE_PLAINTEXT)?;
        let opened = self.decrypt("self-test", PROBE_AAD, &sealed)?;
        if opened.as_slice() != PROBE_PLAINTEXT {
            return Err(Error::Hsm {
                op: "self-test",
                detail: "the token decrypted the test value to something else".into(),
            });
        }
        Ok(())
    }

    /// Runs `f` on a borrowed session with the master key. If the session
    /// or the login was lost, reopens a session, finds the key again and
    /// retries once.
    fn call<T>(
        &self,
        op: &'static str,
        f: impl Fn(&Session, ObjectHandle) -> cryptoki::error::Result<T>,
    ) -> Result<T, Error> {
        let lease = self.pool.borrow()?;
        let key = *self.master_key.lock();
        match f(lease.session(), key) {
            Err(e) if session_lost(&e) => {
                tracing::warn!(
                    token = %self.pool.token.label,
                    op,
                    error = %ck_detail(&e),
                    "PKCS#11 session lost; reopening and retrying once"
                );
                let lease = lease.renew()?;
                let key = find_master_key(lease.session(), &self.key_label)?;
                *self.master_key.lock() = key;
                f(lease.session(), key).map_err(hsm_err(op))
            }
            other => other.map_err(hsm_err(op)),
        }
    }

    fn encrypt(
        &self,
        op: &'static str,
        aad: &[u8],
        iv: [u8; SEAL_IV_LEN],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, Error> {
        // A retry in `call` reuses this IV, which is safe: same key, IV, aad
        // and plaintext give the same ciphertext.
        let (iv, ciphertext) = self.call(op, |session, key| {
            gcm_seal(session, key, aad, iv, plaintext)
        })?;
        metrics::counter!("vault_seal_operations_total").increment(1);
        if ciphertext.len() != plaintext.len() + SEAL_TAG_LEN {
            return Err(Error::Hsm {
                op,
                detail: format!(
                    "AES-GCM returned {} bytes for {} bytes of plaintext; expected a {}-byte tag",
                    ciphertext.len(),
                    plaintext.len(),
                    SEAL_TAG_LEN
                ),
            });
        }
        let mut sealed = Vec::with_capacity(SEAL_IV_LEN + ciphertext.len());
        sealed.extend_from_slice(&iv);
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    /// Any decryption failure comes back as [`Error::Hsm`]; telling a bad
    /// tag from a failing token is [`Sealer::unseal`]'s job.
    fn decrypt(
        &self,
        op: &'static str,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(Error::Integrity);
        }
        let (iv, ciphertext) = sealed.split_at(SEAL_IV_LEN);
        self.call(op, |session, key| {
            gcm_open(session, key, aad, iv, ciphertext)
        })
    }

    fn observe<T>(&self, op: &'static str, started: Instant, result: &Result<T, Error>) {
        metrics::histogram!("vault_hsm_call_seconds", "op" => op)
            .record(started.elapsed().as_secs_f64());
        // An integrity failure is the data's fault, not the token's.
        if matches!(result, Err(e) if !matches!(e, Error::Integrity)) {
            metrics::counter!("vault_hsm_errors_total", "op" => op).increment(1);
        }
    }
}

impl Sealer for Hsm {
    fn seal(&self, aad: &[u8], iv: [u8; SEAL_IV_LEN], plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        let started = Instant::now();
        let result = self.encrypt("seal", aad, iv, plaintext);
        self.observe("seal", started, &result);
        result
    }

    fn unseal(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        let started = Instant::now();
        let result = match self.decrypt("unseal", aad, sealed) {
            // Tokens report a bad tag differently (SoftHSM: CKR_GENERAL_ERROR,
            // others CKR_ENCRYPTED_DATA_INVALID), so ask the token whether it
            // still works: if it does, the data was at fault.
            Err(e @ Error::Hsm { .. }) => match self.self_test() {
                Ok(()) => Err(Error::Integrity),
                Err(probe) => {
                    tracing::warn!(
                        token = %self.pool.token.label,
                        error = %probe,
                        "HSM self-test failed after an unseal failure"
                    );
                    Err(e)
                }
            },
            other => other,
        };
        self.observe("unseal", started, &result);
        result
    }
}

// --- master key creation -----------------------------------------------------

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

// --- key ceremony ----------------------------------------------------------

/// The public half of a new replica's import key, carried to the existing
/// replica. Public data; its fingerprint is what operators compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRequest {
    /// Label of the requesting token (informational: replicas' tokens may
    /// share a label).
    pub token_label: String,
    /// RSA modulus, big-endian, no leading zeros.
    pub modulus: Vec<u8>,
    /// RSA public exponent, big-endian, no leading zeros.
    pub exponent: Vec<u8>,
}

impl ImportRequest {
    /// First 16 bytes of SHA-256(modulus || exponent) as eight groups of
    /// four hex digits, e.g. `1a2b:3c4d:…`.
    pub fn fingerprint(&self) -> String {
        let mut input = Vec::with_capacity(self.modulus.len() + self.exponent.len());
        input.extend_from_slice(&self.modulus);
        input.extend_from_slice(&self.exponent);
        let digest = ring::digest::digest(&ring::digest::SHA256, &input);
        let hex = hex::encode(&digest.as_ref()[..16]);
        hex.as_bytes()
            .chunks(4)
            .map(|group| String::from_utf8_lossy(group).into_owned())
            .collect::<Vec<_>>()
            .join(":")
    }

    pub fn to_text(&self) -> String {
        format!(
            "{REQUEST_HEADER}\ntoken-label: {}\nfingerprint: {}\nmodulus: {}\nexponent: {}\n",
            self.token_label,
            self.fingerprint(),
            hex::encode(&self.modulus),
            hex::encode(&self.exponent),
        )
    }

    /// Parses [`ImportRequest::to_text`]'s output, refusing anything else,
    /// including a fingerprint line that does not match the key (a damaged
    /// copy).
    pub fn from_text(text: &str) -> Result<Self, Error> {
        let [label, fingerprint, modulus, exponent] = parse_fields(
            text,
            REQUEST_HEADER,
            "key import request",
            ["token-label", "fingerprint", "modulus", "exponent"],
        )?;
        if label.is_empty()
            || label.len() > MAX_TOKEN_LABEL_LEN
            || label.chars().any(char::is_control)
        {
            return Err(Error::Ceremony(format!(
                "key import request: token-label must be 1 to {MAX_TOKEN_LABEL_LEN} printable bytes"
            )));
        }
        let request = ImportRequest {
            token_label: label.to_owned(),
            modulus: parse_hex("key import request", "modulus", modulus)?,
            exponent: parse_hex("key import request", "exponent", exponent)?,
        };
        request.check_key()?;
        if request.fingerprint() != fingerprint {
            return Err(Error::Ceremony(
                "key import request: the fingerprint line does not match the key (damaged copy?)"
                    .into(),
            ));
        }
        Ok(request)
    }

    fn check_key(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::Ceremony(format!("key import request: {m}")));
        let (m, e) = (&self.modulus, &self.exponent);
        if m.first() == Some(&0) || e.first() == Some(&0) {
            return bad("modulus and exponent must not have leading zero bytes");
        }
        if !(MIN_MODULUS_LEN..=MAX_MODULUS_LEN).contains(&m.len()) {
            return bad("the RSA modulus must be 3072 to 8192 bits");
        }
        if m.last().is_some_and(|b| b & 1 == 0) {
            return bad("the RSA modulus is even");
        }
        let exponent_ok = !e.is_empty()
            && e.len() <= MAX_EXPONENT_LEN
            && e.last().is_some_and(|b| b & 1 == 1)
            && e.as_slice() != [1];
        if !exponent_ok {
            return bad("the RSA public exponent must be odd, at least 3 and at most 64 bits");
        }
        Ok(())
    }
}

/// The master key wrapped (RSA-OAEP) for one approved import key.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedMasterKey {
    /// [`ImportRequest::fingerprint`] of the key it is wrapped for.
    pub fingerprint: String,
    pub wrapped: Vec<u8>,
}

impl fmt::Debug for WrappedMasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedMasterKey")
            .field("fingerprint", &self.fingerprint)
            .field("wrapped_len", &self.wrapped.len())
            .finish()
    }
}

impl WrappedMasterKey {
    pub fn to_text(&self) -> String {
        format!(
            "{WRAPPED_HEADER}\nfingerprint: {}\nwrapped: {}\n",
            self.fingerprint,
            hex::encode(&self.wrapped)
        )
    }

    pub fn from_text(text: &str) -> Result<Self, Error> {
        let [fingerprint, wrapped] = parse_fields(
            text,
            WRAPPED_HEADER,
            "wrapped master key",
            ["fingerprint", "wrapped"],
        )?;
        let well_formed = fingerprint.len() == 39
            && fingerprint.split(':').count() == 8
            && fingerprint
                .split(':')
                .all(|g| g.len() == 4 && g.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        if !well_formed {
            return Err(Error::Ceremony(
                "wrapped master key: the fingerprint must be eight groups of four lowercase hex \
                 digits joined by ':'"
                    .into(),
            ));
        }
        let wrapped = parse_hex("wrapped master key", "wrapped", wrapped)?;
        if !(MIN_MODULUS_LEN..=MAX_MODULUS_LEN).contains(&wrapped.len()) {
            return Err(Error::Ceremony(
                "wrapped master key: the wrapped key has an impossible length".into(),
            ));
        }
        Ok(WrappedMasterKey {
            fingerprint: fingerprint.to_owned(),
            wrapped,
        })
    }
}

/// Splits a ceremony file into the values of exactly `keys`, in order.
fn parse_fields<'t, const N: usize>(
    text: &'t str,
    header: &str,
    what: &str,
    keys: [&str; N],
) -> Result<[&'t str; N], Error> {
    let bad = |m: String| Error::Ceremony(format!("{what}: {m}"));
    if text.len() > MAX_TEXT_LEN {
        return Err(bad("file too large".into()));
    }
    let mut lines = text.lines();
    if lines.next() != Some(header) {
        return Err(bad(format!("the first line must be `{header}`")));
    }
    let mut values = [""; N];
    for (value, key) in values.iter_mut().zip(keys) {
        let line = lines
            .next()
            .ok_or_else(|| bad(format!("missing `{key}:` line")))?;
        *value = line
            .strip_prefix(key)
            .and_then(|rest| rest.strip_prefix(": "))
            .ok_or_else(|| bad(format!("expected a `{key}: …` line")))?;
    }
    if lines.any(|line| !line.is_empty()) {
        return Err(bad("unexpected lines after the last field".into()));
    }
    Ok(values)
}

fn parse_hex(what: &str, key: &str, value: &str) -> Result<Vec<u8>, Error> {
    hex::decode(value).map_err(|_| Error::Ceremony(format!("{what}: `{key}` is not hex")))
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
            "token {:?} has no import key {import_label:?}; run `hsm-vault keys request` on this \
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
