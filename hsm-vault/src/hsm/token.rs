//! Access to one token: the process-wide registry of loaded PKCS#11
//! modules, [`TokenAccess`] (finding the slot by label, opening logged-in
//! sessions), the object lookup helpers every other part uses, and the
//! mapping of cryptoki errors to [`Error`] with log-safe detail.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use parking_lot::Mutex;

use crate::Error;

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
pub(super) fn ck_detail(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, function) => format!("C_{function:?} returned {rv:?}"),
        other => other.to_string(),
    }
}

pub(super) fn hsm_err(op: &'static str) -> impl FnOnce(CkError) -> Error {
    move |e| Error::Hsm {
        op,
        detail: ck_detail(&e),
    }
}

// --- token access ----------------------------------------------------------

/// What it takes to open a logged-in session on one token.
pub(super) struct TokenAccess {
    ctx: Pkcs11,
    slot: Slot,
    pub(super) label: String,
    /// Kept to log in again if the token drops our login (HSM restart,
    /// another session logging out); zeroized on drop.
    pin: AuthPin,
    user: UserType,
}

impl TokenAccess {
    pub(super) fn connect(
        module: &Path,
        label: &str,
        user: UserType,
        pin: &str,
    ) -> Result<Self, Error> {
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

    /// Why this token is a software token, or `None` if its slot says it
    /// is hardware. A slot without `CKF_HW_SLOT`, or SoftHSM under any
    /// flags, counts as software: its keys are files on this host's disk.
    pub(super) fn software_token(&self) -> Result<Option<String>, Error> {
        let slot = self
            .ctx
            .get_slot_info(self.slot)
            .map_err(hsm_err("slot info"))?;
        let token = self
            .ctx
            .get_token_info(self.slot)
            .map_err(hsm_err("token info"))?;
        let maker = token.manufacturer_id().trim().to_owned();
        if maker.to_ascii_lowercase().contains("softhsm") {
            return Ok(Some(format!(
                "token {:?} is a SoftHSM token (manufacturer {maker:?})",
                self.label
            )));
        }
        if !slot.hardware_slot() {
            return Ok(Some(format!(
                "the slot of token {:?} ({}, manufacturer {maker:?}) does not report itself as \
                 hardware (CKF_HW_SLOT)",
                self.label,
                slot.slot_description().trim()
            )));
        }
        Ok(None)
    }

    pub(super) fn open_session(&self) -> Result<Session, Error> {
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
pub(super) fn find_one(
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

pub(super) fn find_master_key(session: &Session, key_label: &str) -> Result<ObjectHandle, Error> {
    find_one(session, ObjectClass::SECRET_KEY, key_label)?
        .ok_or_else(|| Error::MasterKeyMissing(key_label.to_owned()))
}

pub(super) fn read_bool(
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
pub(super) fn rsa_public_parts(
    session: &Session,
    key: ObjectHandle,
) -> Result<(Vec<u8>, Vec<u8>), Error> {
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
