//! Sealing: authenticated encryption of everything the vault stores, under
//! a master key that never leaves the HSM.
//!
//! Sealed bytes are `iv (12) || ciphertext || tag (16)`, AES-256-GCM with
//! the caller's associated data. The IV is random, 96 bits drawn by the
//! caller from its [`Entropy`] (the vault core's own source, so a seeded
//! test is seeded all the way down), so one master key must seal fewer than
//! 2^32 values; `vault_seal_operations_total` lets operators rotate well
//! before that (see the README).

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use zeroize::Zeroizing;

use crate::entropy::{Entropy, OsEntropy};
use crate::Error;

pub const SEAL_IV_LEN: usize = 12;
pub const SEAL_TAG_LEN: usize = 16;
pub const SEAL_OVERHEAD: usize = SEAL_IV_LEN + SEAL_TAG_LEN;

/// The HSM as the vault core sees it.
pub trait Sealer: Send + Sync {
    /// Encrypts `plaintext` bound to `aad` under `iv`, which the caller
    /// drew with [`draw_iv`]: an IV must never repeat under one master key.
    fn seal(&self, aad: &[u8], iv: [u8; SEAL_IV_LEN], plaintext: &[u8]) -> Result<Vec<u8>, Error>;

    /// Decrypts what [`Sealer::seal`] produced with the same `aad`. Returns
    /// [`Error::Integrity`] if the bytes or the `aad` differ, and another
    /// error only if the HSM itself failed.
    fn unseal(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error>;
}

/// A fresh random IV from `entropy`.
pub fn draw_iv(entropy: &dyn Entropy) -> Result<[u8; SEAL_IV_LEN], Error> {
    let mut iv = [0u8; SEAL_IV_LEN];
    entropy.fill(&mut iv)?;
    Ok(iv)
}

/// A fresh random IV from the operating system, for what runs outside the
/// core (start-up self-tests, tools, tests).
pub fn random_iv() -> Result<[u8; SEAL_IV_LEN], Error> {
    draw_iv(&OsEntropy)
}

/// A software sealer with the same format, holding its key in memory.
/// **Only for unit tests and fuzzing**: the real vault always seals through
/// the HSM ([`crate::hsm::Hsm`]).
pub struct SoftSealer {
    key: LessSafeKey,
}

impl SoftSealer {
    pub fn new(key: [u8; 32]) -> Self {
        let key = Zeroizing::new(key);
        let unbound = UnboundKey::new(&AES_256_GCM, &key[..])
            .unwrap_or_else(|_| unreachable!("32-byte AES-256 key"));
        SoftSealer {
            key: LessSafeKey::new(unbound),
        }
    }
}

impl std::fmt::Debug for SoftSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SoftSealer([redacted])")
    }
}

impl Sealer for SoftSealer {
    fn seal(&self, aad: &[u8], iv: [u8; SEAL_IV_LEN], plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(SEAL_OVERHEAD + plaintext.len());
        out.extend_from_slice(&iv);
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(iv),
                Aad::from(aad),
                &mut out[SEAL_IV_LEN..],
            )
            .map_err(|_| Error::Hsm {
                op: "soft seal",
                detail: "AES-GCM refused the input".into(),
            })?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    fn unseal(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(Error::Integrity);
        }
        let mut iv = [0u8; SEAL_IV_LEN];
        iv.copy_from_slice(&sealed[..SEAL_IV_LEN]);
        let mut buf = Zeroizing::new(sealed[SEAL_IV_LEN..].to_vec());
        let n = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(iv),
                Aad::from(aad),
                &mut buf[..],
            )
            .map_err(|_| Error::Integrity)?
            .len();
        buf.truncate(n);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_sealer_binds_aad() {
        let s = SoftSealer::new([1; 32]);
        let sealed = s.seal(b"ad", random_iv().unwrap(), b"secret").unwrap();
        assert_eq!(sealed.len(), 6 + SEAL_OVERHEAD);
        assert_eq!(&s.unseal(b"ad", &sealed).unwrap()[..], b"secret");
        assert!(matches!(s.unseal(b"other", &sealed), Err(Error::Integrity)));
        let mut t = sealed.clone();
        t[14] ^= 1;
        assert!(matches!(s.unseal(b"ad", &t), Err(Error::Integrity)));
        assert!(matches!(
            s.unseal(b"ad", &sealed[..10]),
            Err(Error::Integrity)
        ));
        assert!(!String::from_utf8_lossy(&sealed).contains("secret"));
    }
}
