//! The sealer on the serving path: [`Hsm`] seals and unseals records with
//! AES-GCM under the token's master key, through the session pool, with a
//! self-test that also tells a bad tag from a failing token.

use std::fmt;
use std::time::Instant;

use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectHandle;
use cryptoki::session::{Session, UserType};
use parking_lot::Mutex;
use zeroize::Zeroizing;

use super::pool::{session_lost, SessionPool};
use super::token::{ck_detail, find_master_key, hsm_err, TokenAccess};
use crate::config::HsmConfig;
use crate::seal::{random_iv, Sealer, SEAL_IV_LEN, SEAL_OVERHEAD, SEAL_TAG_LEN};
use crate::Error;

const GCM_TAG_BITS: u64 = (SEAL_TAG_LEN as u64) * 8;
/// Sealed by [`Hsm::self_test`]; only its round trip matters.
pub(super) const PROBE_AAD: &[u8] = b"e2ebk hsm self-test v1";
pub(super) const PROBE_PLAINTEXT: &[u8] = b"e2ebk hsm self-test";

/// AES-GCM with our IV and a 128-bit tag; returns the IV used (a module
/// that insists on its own IV writes it back) and ciphertext || tag.
pub(super) fn gcm_seal(
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

pub(super) fn gcm_open(
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
        if cfg.require_hardware {
            if let Some(why) = token.software_token()? {
                return Err(Error::SoftwareToken(why));
            }
        }
        let first = token.open_session()?;
        let master_key = find_master_key(&first, &cfg.key_label)?;
        super::ceremony::check_master_key(&first, master_key, &cfg.key_label)?;
        let pool = SessionPool::fill(token, cfg.sessions, first)?;
        let capacity = pool.capacity;
        let hsm = Hsm {
            pool,
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
