//! The escrow construction `wrapped_K` (SPEC.md section 7.5).
//!
//! ```text
//! wrap_key  = HKDF-SHA256(salt = "", ikm = export_key, info = "E2EBK key wrap v1", L = 32)
//! ad        = "E2EBK wrapped key v1" || len(account) || account || version
//! wrapped_K = version (0x01) || nonce (12) || AES-256-GCM(wrap_key, nonce, K, ad) (32 + 16)
//! ```
//!
//! The vault stores `wrapped_K` beside the OPAQUE record and releases it
//! only after a successful login; only the holder of the password (through
//! the OPAQUE export key) can open it.

use std::fmt;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use zeroize::Zeroizing;

use crate::ids::AccountId;
use crate::kdf::hkdf_sha256;
use crate::opaque::sizes::EXPORT_KEY;
use crate::root_key::{RootKey, ROOT_KEY_LEN};
use crate::Error;

/// Version byte of the wrap construction.
pub const WRAP_VERSION: u8 = 1;
/// Length of `wrapped_K`.
pub const WRAPPED_KEY_LEN: usize = 1 + 12 + ROOT_KEY_LEN + 16;

/// `wrapped_K` as stored by the vault. Opaque to everyone but the password
/// holder; still printed only by length.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey([u8; WRAPPED_KEY_LEN]);

impl WrappedKey {
    pub fn from_slice(b: &[u8]) -> Result<Self, Error> {
        let arr: [u8; WRAPPED_KEY_LEN] = b.try_into().map_err(|_| Error::InvalidField {
            field: "wrapped_key",
            reason: "must be 61 bytes",
        })?;
        if arr[0] != WRAP_VERSION {
            return Err(Error::InvalidField {
                field: "wrapped_key",
                reason: "unknown wrap version",
            });
        }
        Ok(WrappedKey(arr))
    }

    pub fn as_bytes(&self) -> &[u8; WRAPPED_KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WrappedKey([redacted])")
    }
}

fn wrap_key(export_key: &[u8]) -> Result<LessSafeKey, Error> {
    if export_key.len() != EXPORT_KEY {
        return Err(Error::InvalidField {
            field: "export_key",
            reason: "must be 64 bytes",
        });
    }
    let mut k = Zeroizing::new([0u8; 32]);
    hkdf_sha256(b"", export_key, b"E2EBK key wrap v1", &mut k[..]);
    let unbound = UnboundKey::new(&AES_256_GCM, &k[..])
        .unwrap_or_else(|_| unreachable!("32-byte key for AES-256-GCM"));
    Ok(LessSafeKey::new(unbound))
}

fn associated_data(account: &AccountId) -> Vec<u8> {
    let mut ad = b"E2EBK wrapped key v1".to_vec();
    ad.extend_from_slice(&account.length_prefixed());
    ad.push(WRAP_VERSION);
    ad
}

/// Wraps `K` under the OPAQUE export key. `nonce` must be fresh random
/// bytes (the export key already changes with every registration; the
/// nonce is defence in depth).
pub fn wrap(
    export_key: &[u8],
    account: &AccountId,
    key: &RootKey,
    nonce: [u8; 12],
) -> Result<WrappedKey, Error> {
    let aead = wrap_key(export_key)?;
    let mut in_out = Zeroizing::new(key.expose().to_vec());
    let tag = aead
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(associated_data(account)),
            &mut in_out[..],
        )
        .map_err(|_| Error::Malformed("key wrap"))?;
    let mut out = [0u8; WRAPPED_KEY_LEN];
    out[0] = WRAP_VERSION;
    out[1..13].copy_from_slice(&nonce);
    out[13..45].copy_from_slice(&in_out);
    out[45..].copy_from_slice(tag.as_ref());
    Ok(WrappedKey(out))
}

/// Opens `wrapped_K` with the export key from a successful OPAQUE login.
pub fn unwrap(
    export_key: &[u8],
    account: &AccountId,
    wrapped: &WrappedKey,
) -> Result<RootKey, Error> {
    let aead = wrap_key(export_key)?;
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&wrapped.0[1..13]);
    let mut in_out = Zeroizing::new(wrapped.0[13..].to_vec());
    let plain = aead
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(associated_data(account)),
            &mut in_out[..],
        )
        .map_err(|_| Error::Unwrap)?;
    let mut k = [0u8; ROOT_KEY_LEN];
    k.copy_from_slice(plain);
    RootKey::from_bytes(k).map_err(|_| Error::Unwrap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_unwrap_binds_account_and_export_key() {
        let k = RootKey::from_entropy([5u8; 30]);
        let export = [9u8; 64];
        let alice = AccountId::new("alice").unwrap();
        let bob = AccountId::new("bob").unwrap();
        let w = wrap(&export, &alice, &k, [1u8; 12]).unwrap();
        assert_eq!(unwrap(&export, &alice, &w).unwrap(), k);
        assert_eq!(unwrap(&export, &bob, &w), Err(Error::Unwrap));
        assert_eq!(unwrap(&[8u8; 64], &alice, &w), Err(Error::Unwrap));
        let mut tampered = *w.as_bytes();
        tampered[20] ^= 1;
        let t = WrappedKey::from_slice(&tampered).unwrap();
        assert_eq!(unwrap(&export, &alice, &t), Err(Error::Unwrap));
        assert!(WrappedKey::from_slice(&[0u8; 61]).is_err());
        assert!(WrappedKey::from_slice(&[1u8; 60]).is_err());
        assert_eq!(format!("{w:?}"), "WrappedKey([redacted])");
    }
}
